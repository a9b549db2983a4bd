"""harness.running.metrics on cases whose answer is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tasks
from harness.running.metrics import bits_per_token, evaluate, normalized_edit_distance, perplexity


def test_uniform_over_256_values_is_8_bits_per_dim():
    tokens = 3 * 3072
    assert bits_per_token(tokens * math.log(256), tokens) == pytest.approx(8.0)
    assert bits_per_token(0.0, 10) == 0.0


def test_perplexity_is_exp_of_the_mean_loss():
    assert perplexity(10 * math.log(32_768), 10) == pytest.approx(32_768)
    assert perplexity(6.0, 4) == pytest.approx(math.exp(1.5))


def test_edit_distance_is_normalised_by_the_target():
    assert normalized_edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert normalized_edit_distance([1, 9, 3, 4], [1, 2, 3]) == pytest.approx(2 / 3)


class Fixed(nn.Module):
    """A stand-in model whose predictions are chosen by the test (``logits_for(tokens) -> logits``)."""

    def __init__(self, kind: str, logits_for):
        super().__init__()
        self.kind, self.logits_for = kind, logits_for

    def predictions(self, batch):
        if self.kind == "lm":
            tokens, mask = batch["tokens"], batch["mask"]
            return self.logits_for(tokens[:, :-1]), tokens[:, 1:], mask[:, 1:]
        return self.logits_for(batch["tokens"]), batch["label"], torch.ones_like(batch["label"], dtype=torch.bool)


def rows(model, task, batch_size=16):
    return {(split, metric): value for split, metric, value in evaluate(model, task, batch_size, torch.device("cpu"))}


def test_evaluate_gives_8_bpd_for_a_uniform_pixel_model():
    task = tasks.build("image_gen")
    task.prepare()

    def uniform_pixels(tokens):
        logits = torch.zeros(*tokens.shape, task.spec.vocab_size)
        logits[..., :2] = -torch.inf  # PAD and BOS get no mass: uniform over the 256 pixel values
        return logits

    result = rows(Fixed("lm", uniform_pixels), task, batch_size=7)  # a batch size that leaves a ragged last batch
    assert result[("test", "bpd")] == pytest.approx(8.0, rel=1e-6)  # float32 logits
    assert result[("test", "loss")] == pytest.approx(math.log(256))


def test_evaluate_perplexity_is_exp_of_the_mean_token_loss():
    task = tasks.build("lm_subword")
    task.prepare()
    vocab = task.spec.vocab_size
    torch.manual_seed(0)
    table = torch.randn(vocab, vocab)  # a bigram model: logits depend on the previous token only
    result = rows(Fixed("lm", lambda tokens: table[tokens]), task)
    nll, count = 0.0, 0
    for batch in task.eval_splits(16)["test"]:
        logp = torch.log_softmax(table[batch["tokens"][:, :-1]], -1)
        picked = logp.gather(-1, batch["tokens"][:, 1:, None])[..., 0]
        nll -= picked[batch["mask"][:, 1:]].sum().item()
        count += int(batch["mask"][:, 1:].sum())
    assert result[("test", "loss")] == pytest.approx(nll / count)
    assert result[("test", "perplexity")] == pytest.approx(math.exp(nll / count))
    uniform = rows(Fixed("lm", lambda tokens: torch.zeros(*tokens.shape, vocab)), task)
    assert uniform[("test", "perplexity")] == pytest.approx(vocab, rel=1e-5)


def test_evaluate_accuracy_counts_correct_sequences():
    task = tasks.build("classify", level="char")
    task.prepare()
    always_zero = rows(Fixed("classify", lambda tokens: torch.tensor([1.0, 0.0]).expand(len(tokens), 2)), task)
    labels = torch.cat([b["label"] for b in task.eval_splits(16)["test"]])
    assert always_zero[("test", "accuracy")] == pytest.approx((labels == 0).float().mean().item())
    assert 0 < always_zero[("test", "accuracy")] < 1
