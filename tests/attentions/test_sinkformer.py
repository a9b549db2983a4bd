"""Sinkformer: one step is softmax attention, many steps are doubly stochastic, padding and causality respected."""

from __future__ import annotations

import pytest
import torch

import attentions

HEADS, DIM, MAX_LEN = 2, 8, 64


def make(name: str = "sinkformer", causal: bool = False, **params) -> attentions.Attention:
    return attentions.build(name, heads=HEADS, head_dim=DIM, max_len=MAX_LEN, causal=causal, **params)


def qkv(length: int, batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, HEADS, length, DIM, generator=g) for _ in range(3)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [1, 7, 33])
def test_one_iteration_equals_vanilla(causal, length):
    q, k, v = qkv(length)
    torch.testing.assert_close(make(causal=causal, iterations=1)(q, k, v), make("vanilla", causal)(q, k, v))


@pytest.mark.parametrize("causal", [False, True])
def test_one_iteration_equals_vanilla_with_padding(causal):
    q, k, v = qkv(20)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, 13:] = False
    real = mask[:, None, :, None].expand_as(q)
    got = make(causal=causal, iterations=1)(q, k, v, padding_mask=mask)
    torch.testing.assert_close(got[real], make("vanilla", causal)(q, k, v, padding_mask=mask)[real])


def test_more_iterations_differ_from_softmax():
    """Guards against the balancing silently doing nothing."""
    q, k, v = qkv(16)
    assert not torch.allclose(make(iterations=5)(q, k, v), make("vanilla")(q, k, v), atol=1e-3)


@pytest.mark.parametrize("iterations", [21, 40])
def test_rows_and_columns_sum_to_one(iterations):
    q, k, _ = qkv(24)
    p = make(iterations=iterations).attention_matrix(q, k)
    ones = torch.ones(p.shape[:-1])
    torch.testing.assert_close(p.sum(-1), ones, atol=1e-3, rtol=0)
    torch.testing.assert_close(p.sum(-2), ones, atol=1e-3, rtol=0)
    # and softmax attention is not doubly stochastic on the same input, so the check above has teeth
    assert (make(iterations=1).attention_matrix(q, k).sum(-2) - 1).abs().max() > 0.1


def test_padding_excluded_from_balancing():
    """The real sub-matrix is doubly stochastic by itself; padded rows and columns are exactly zero."""
    length = 18
    q, k, _ = qkv(length)
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[0, 11:] = False
    mask[1, :3] = False
    p = make(iterations=31).attention_matrix(q, k, padding_mask=mask)
    for b in range(2):
        real = mask[b]
        sub = p[b][:, real][:, :, real]  # (H, n, n)
        torch.testing.assert_close(sub.sum(-1), torch.ones(sub.shape[:-1]), atol=1e-3, rtol=0)
        torch.testing.assert_close(sub.sum(-2), torch.ones(sub.shape[:-1]), atol=1e-3, rtol=0)
        assert p[b][:, ~real].abs().max() == 0 and p[b][:, :, ~real].abs().max() == 0
    # equal to balancing the real tokens alone
    alone = make(iterations=31).attention_matrix(q[:1, :, :11], k[:1, :, :11])
    torch.testing.assert_close(p[:1, :, :11, :11], alone)


def test_causal_matrix_is_lower_triangular_with_unit_rows():
    q, k, _ = qkv(15)
    p = make(causal=True, iterations=5).attention_matrix(q, k)
    assert p.triu(1).abs().max() == 0
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))  # odd step count ends on rows


@pytest.mark.parametrize("iterations", [2, 6])
def test_causal_rows_depend_on_the_prefix_only(iterations):
    """Causal balancing of a prefix equals the prefix rows of the balanced whole (global column sums would break it)."""
    q, k, _ = qkv(20)
    attn = make(causal=True, iterations=iterations)
    whole = attn.attention_matrix(q, k)
    for t in (1, 7, 19):
        torch.testing.assert_close(whole[:, :, :t, :t], attn.attention_matrix(q[:, :, :t], k[:, :, :t]))


def test_gradients_flow():
    q, k, v = (t.requires_grad_() for t in qkv(12))
    make(iterations=4)(q, k, v).square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_invalid_iterations_named(bad):
    with pytest.raises(ValueError, match="iterations"):
        make(iterations=bad)
