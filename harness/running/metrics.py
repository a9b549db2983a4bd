"""Evaluation metrics, computed exactly from a task's splits.

Bits per char/dim are summed natural-log losses over every evaluated token divided by (tokens * ln 2); perplexity
is exp(mean loss). Sorting is scored on greedy decodes: exact match is the fraction of sequences decoded entirely
right, edit distance is the Levenshtein distance divided by the target length, averaged over sequences.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from rapidfuzz.distance import Levenshtein

from tasks.base import Task


def bits_per_token(nll_sum: float, tokens: int) -> float:
    return nll_sum / (tokens * math.log(2))


def perplexity(nll_sum: float, tokens: int) -> float:
    return math.exp(nll_sum / tokens)


def normalized_edit_distance(prediction: list[int], target: list[int]) -> float:
    return Levenshtein.distance(prediction, target) / max(len(target), 1)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


# Metrics where a larger value is better; every other metric (loss, bpc, bpd, perplexity, edit distance) is smaller.
HIGHER_IS_BETTER = frozenset({"accuracy", "exact_match"})


def headline(metrics: tuple[str, ...]) -> str:
    """The metric a task is judged by (its first), which ``train.select: best`` optimises on the val split."""
    return metrics[0]


def improves(metric: str, value: tuple[float, float], best: tuple[float, float] | None) -> bool:
    """Is ``value`` = (headline, loss) strictly better than ``best`` (None: nothing yet)? The loss breaks ties of
    coarse metrics (exact match stays 0 for a long time early in sorting)."""
    if best is None:
        return True
    sign = -1 if metric in HIGHER_IS_BETTER else 1
    return (sign * value[0], value[1]) < (sign * best[0], best[1])


@torch.no_grad()
def evaluate(
    model, task: Task, batch_size: int, device: torch.device, splits: tuple[str, ...] | None = None
) -> list[tuple[str, str, float]]:
    """(split, metric, value) for every split of ``task`` (or only ``splits``): ``loss`` plus the headline metrics."""
    spec = task.spec
    was_training = model.training
    model.eval()
    rows: list[tuple[str, str, float]] = []
    try:
        for split, batches in task.eval_splits(batch_size).items():
            if splits is not None and split not in splits:
                continue
            nll_sum, tokens, correct, sequences, edit_sum = 0.0, 0, 0, 0, 0.0
            for batch in batches:
                batch = _to(batch, device)
                logits, targets, mask = model.predictions(batch)
                nll_sum += F.cross_entropy(logits[mask].float(), targets[mask], reduction="sum").item()
                tokens += int(mask.sum())
                if spec.kind == "classify":
                    correct += int((logits.argmax(-1) == targets).sum())
                    sequences += targets.shape[0]
                elif spec.kind == "seq2seq":
                    decoded = model.generate(batch["src"], batch["src_mask"], batch["tgt"].shape[1])
                    for pred, tgt, tmask in zip(
                        decoded.tolist(), batch["tgt"].tolist(), batch["tgt_mask"].tolist(), strict=True
                    ):
                        target = [t for t, keep in zip(tgt, tmask, strict=True) if keep]
                        prediction = pred[: len(target)]
                        correct += prediction == target
                        edit_sum += normalized_edit_distance(prediction, target)
                        sequences += 1
            rows.append((split, "loss", nll_sum / tokens))
            for metric in spec.metrics:
                if metric in ("bpc", "bpd"):
                    value = bits_per_token(nll_sum, tokens)
                elif metric == "perplexity":
                    value = perplexity(nll_sum, tokens)
                elif metric in ("accuracy", "exact_match"):
                    value = correct / sequences
                elif metric == "edit_distance":
                    value = edit_sum / sequences
                else:
                    raise ValueError(f"task {task.name!r}: unknown metric {metric!r}")
                rows.append((split, metric, value))
    finally:
        model.train(was_training)
    return rows
