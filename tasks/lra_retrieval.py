"""Long Range Arena's document retrieval (Tay et al. 2021, "Retrieval"): does one paper cite the other?

Two documents per example, each read as UTF-8 bytes (token = byte + 2) and truncated to 4,000 bytes
(``lra_benchmarks/matching/configs/base_match_config.py``: ``max_length = 4000``, byte tokenizer). The model encodes
each document separately with the same encoder (two towers; ``TaskSpec.towers = 2``) and classifies the pair from
[u, v, u * v, u - v] of the two pooled encodings, LRA's dual-encoder head. Binary, accuracy. LRA's model
(``base_match_config.py``): 4 layers, 128 wide, 4 heads, MLP 512.

Real data: the ACL Anthology Network pairs of LRA's release, ``lra_release/tsv_data/new_aan_pairs.train.tsv``,
``.eval.tsv`` and ``.test.tsv``: tab-separated without a header, columns ``label`` (``0``/``1``, possibly written
``1.0``), ``id1``, ``id2``, ``text1``, ``text2``, no quoting (as ``matching/input_pipeline.py`` reads them). ``data``
names the folder holding them (or ``lra_release`` above it). ``eval`` is the validation split (``val``). No Hub copy of
these files is known to us, so there is no ``hf:`` form.

Embedded default (offline), derived from real text: pairs of passages of the Python reference-manual topics
(``tasks._text``); label 1 if both passages come from one topic, else 0, half of each. Topics with index 9 mod 10
give the test pairs, 4 mod 10 the validation pairs, the rest the training pairs, so no passage is shared between
splits. Fixed (not drawn from the seed): the data set is the same for every trial.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attentions._registry import require_int
from tasks._hub import path_provenance
from tasks._text import BYTE_VOCAB, byte_ids, data_error, default_corpus, pad, passages, require_dir, step_rng
from tasks.base import Batch, ModelSize, Task, TaskSpec, register_task

FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}
DEFAULT_PAIRS = {"train": 2_000, "val": 128, "test": 256}
# scale -> (bytes per document, evaluation pairs per split; None = all, model)
SCALES = {
    "smoke": (256, 128, ModelSize(layers=1, dim=32, heads=2, mlp_dim=64)),
    "small": (1_000, 2_000, ModelSize(layers=2, dim=64, heads=4, mlp_dim=256)),
    "paper": (4_000, None, ModelSize(layers=4, dim=128, heads=4, mlp_dim=512, dropout=0.1)),
}
Pairs = dict[str, tuple[list[tuple[str, str]], list[int]]]


class PairSplit:
    """Labelled document pairs, batched by padding each tower on its own."""

    def __init__(self, first: list[np.ndarray], second: list[np.ndarray], labels: Sequence[int]):
        if not (len(first) == len(second) == len(labels)) or not labels:
            raise ValueError(f"a pair split needs as many labels as pairs (>0), got {len(labels)}")
        self.first, self.second = first, second
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: Sequence[int]) -> Batch:
        rows = list(rows)
        tokens, mask = pad([self.first[r] for r in rows])
        pair_tokens, pair_mask = pad([self.second[r] for r in rows])
        return {
            "tokens": tokens,
            "mask": mask,
            "pair_tokens": pair_tokens,
            "pair_mask": pair_mask,
            "label": self.labels[rows],
        }

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        count = len(self) if limit is None else min(limit, len(self))
        for start in range(0, count, batch_size):
            yield self.batch(range(start, min(start + batch_size, count)))


def aan_folder(path: str | Path, task: str = "lra_retrieval") -> Path:
    """The folder holding ``new_aan_pairs.{train,eval,test}.tsv`` (``path``, or ``tsv_data`` under it)."""
    folder = require_dir(task, path, "LRA's new_aan_pairs.{train,eval,test}.tsv")
    for root in (folder, folder / "tsv_data", folder / "lra_release" / "tsv_data"):
        if (root / FILES["train"]).is_file():
            return root
    raise data_error(task, folder, "LRA's new_aan_pairs.train.tsv, .eval.tsv, .test.tsv (lra_release/tsv_data/)")


def read_aan(folder: Path, task: str = "lra_retrieval") -> Pairs:
    """split -> (document pairs, labels) of LRA's AAN files (module doc)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a line holds two whole papers
    out: Pairs = {}
    for split, name in FILES.items():
        path = folder / name
        if not path.is_file():
            raise data_error(task, folder, f"the file {name} beside {FILES['train']}")
        pairs, labels = [], []
        with path.open(encoding="utf-8", newline="") as handle:
            for line, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
                if not row:
                    continue
                try:
                    label = float(row[0])
                    if len(row) != 5 or label not in (0.0, 1.0):
                        raise ValueError
                except ValueError:
                    raise data_error(
                        task, f"{path}:{line}", "5 tab-separated fields: label (0 or 1), id1, id2, text1, text2"
                    ) from None
                pairs.append((row[3], row[4]))
                labels.append(int(label))
        if not pairs:
            raise data_error(task, path, "at least one labelled pair")
        out[split] = (pairs, labels)
    return out


def default_pairs() -> Pairs:
    """split -> (passage pairs, labels) of the embedded same-topic task (module doc)."""
    groups: dict[str, list[list[str]]] = {"train": [], "val": [], "test": []}
    for index, (_, _, body) in enumerate(default_corpus()):
        split = "test" if index % 10 == 9 else "val" if index % 10 == 4 else "train"
        groups[split].append(passages(body))
    rng = np.random.default_rng(1234)
    out: Pairs = {}
    for split, topics in groups.items():
        several = [t for t in range(len(topics)) if len(topics[t]) >= 2]
        pairs, labels = [], []
        for label in rng.permutation(np.arange(DEFAULT_PAIRS[split]) % 2):
            if label:
                t = int(rng.choice(several))
                i, j = rng.choice(len(topics[t]), 2, replace=False)
                pairs.append((topics[t][i], topics[t][j]))
            else:
                t, u = rng.choice(len(topics), 2, replace=False)
                pairs.append(
                    (topics[t][int(rng.integers(len(topics[t])))], topics[u][int(rng.integers(len(topics[u])))])
                )
            labels.append(int(label))
        out[split] = (pairs, labels)
    return out


@register_task("lra_retrieval")
class LRARetrievalTask(Task):
    """Parameters: ``data`` (folder with LRA's AAN tsv files; None = embedded passage pairs), ``max_tokens`` (bytes
    per document; paper 4000), ``eval_examples`` (cap per split). Unset parameters take the scale's values."""

    def __init__(
        self,
        *,
        scale: str = "smoke",
        seed: int = 0,
        data: str | None = None,
        max_tokens: int | None = None,
        eval_examples: int | None = None,
    ):
        super().__init__(scale=scale, seed=seed)
        default_tokens, default_eval, self.model_size = SCALES[scale]
        self.data = data
        self.max_tokens = max_tokens if max_tokens is not None else default_tokens
        self.eval_examples = eval_examples if eval_examples is not None else default_eval
        require_int("task 'lra_retrieval'", "max_tokens", self.max_tokens)
        require_int("task 'lra_retrieval'", "eval_examples", self.eval_examples, optional=True)
        self._splits: dict[str, PairSplit] = {}
        self._provenance: dict[str, Any] = {}

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(
            kind="classify",
            vocab_size=BYTE_VOCAB,
            max_len=self.max_tokens,
            metrics=("accuracy",),
            num_classes=2,
            model=self.model_size,
            towers=2,
        )

    def prepare(self) -> None:
        if self.data is None:
            raw = default_pairs()
            chars = sum(len(a) + len(b) for pairs, _ in raw.values() for a, b in pairs)
            self._provenance = {"source": "embedded", "name": "pydoc_data.topics passage pairs", "characters": chars}
        else:
            folder = aan_folder(self.data, self.name)
            raw = read_aan(folder, self.name)
            self._provenance = path_provenance(folder, [folder / name for name in FILES.values()])
        self._splits = {}
        for name, (pairs, labels) in raw.items():
            order = np.random.default_rng(0).permutation(len(pairs))  # a capped evaluation still sees both classes
            first = [byte_ids(pairs[i][0], self.max_tokens) for i in order]
            second = [byte_ids(pairs[i][1], self.max_tokens) for i in order]
            self._splits[name] = PairSplit(first, second, [labels[i] for i in order])

    def provenance(self) -> dict[str, Any]:
        return dict(self._provenance) if self._provenance else super().provenance()

    def train_batch(self, batch_size: int, step: int) -> Batch:
        if not self._splits:
            raise RuntimeError("task 'lra_retrieval': call prepare() before train_batch()")
        train = self._splits["train"]
        return train.batch(step_rng(self.seed, step).integers(0, len(train), batch_size).tolist())

    def eval_splits(self, batch_size: int) -> dict[str, Iterator[Batch]]:
        if not self._splits:
            raise RuntimeError("task 'lra_retrieval': call prepare() before eval_splits()")
        return {name: self._splits[name].batches(batch_size, self.eval_examples) for name in ("val", "test")}
