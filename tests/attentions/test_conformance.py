"""One suite over every registered attention: a new plugin is tested the moment it registers."""

from __future__ import annotations

import math

import pytest
import torch

import attentions

HEADS, DIM, MAX_LEN = 2, 8, 96
# Small values for whichever of these a plugin takes, so short test sequences still span several blocks/clusters.
SMALL = {"block_size": 8, "stride": 2, "budget": 2, "clusters": 3, "window": 8}


def make(name: str, causal: bool = False, **override) -> attentions.Attention:
    accepted = attentions.parameters(name)
    params = {k: v for k, v in SMALL.items() if k in accepted} | override
    torch.manual_seed(0)
    return attentions.build(name, heads=HEADS, head_dim=DIM, max_len=MAX_LEN, causal=causal, **params)


def qkv(length: int, batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, HEADS, length, DIM, generator=g) for _ in range(3)]


def modes(name: str) -> list[bool]:
    return [False, True] if attentions.get(name).supports_causal else [False]


CASES = [(n, c) for n in attentions.names() for c in modes(n)]
CAUSAL = [n for n in attentions.names() if attentions.get(n).supports_causal]


@pytest.mark.parametrize("name,causal", CASES)
@pytest.mark.parametrize("length", [1, 13, 40])
def test_shape_and_finite_gradients(name, causal, length):
    attn = make(name, causal).train()
    q, k, v = (t.requires_grad_() for t in qkv(length))
    y = attn(q, k, v)
    assert y.shape == q.shape
    assert torch.isfinite(y).all()
    loss = y.square().mean() + (attn.extra_loss if attn.extra_loss is not None else 0)
    loss.backward()
    for t in (q, k, v, *attn.parameters()):
        assert t.grad is None or torch.isfinite(t.grad).all()
    assert torch.isfinite(q.grad).all() and v.grad.abs().sum() > 0
    if length > 1:  # with one key the softmax is constant in q
        assert q.grad.abs().sum() > 0


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("length", [5, 16, 37, 64])
@pytest.mark.parametrize("block", [4, 8])
def test_no_causal_leak(name, length, block):
    """Changing anything at positions > t never changes the output at t (eval mode)."""
    override = {"block_size": block} if "block_size" in attentions.parameters(name) else {}
    attn = make(name, causal=True, **override).eval()
    q, k, v = qkv(length)
    y = attn(q, k, v)
    for t in sorted({0, length // 3, length // 2, length - 2}):
        if t < 0 or t >= length - 1:
            continue
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :]) * 3
        y2 = attn(q2, k2, v2)
        torch.testing.assert_close(y2[:, :, : t + 1], y[:, :, : t + 1], msg=f"{name}: leak into position {t}")


@pytest.mark.parametrize("name,causal", CASES)
def test_padding_is_ignored(name, causal):
    """Outputs at real positions do not depend on anything at padded positions."""
    attn = make(name, causal).eval()
    length = 29
    q, k, v = qkv(length)
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[0, 21:] = False
    mask[1, 9:] = False
    y = attn(q, k, v, padding_mask=mask)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x.masked_scatter_(~mask[:, None, :, None].expand_as(x), torch.randn_like(x) * 5)
    y2 = attn(q2, k2, v2, padding_mask=mask)
    real = mask[:, None, :, None].expand_as(y)
    torch.testing.assert_close(y2[real], y[real])
    assert torch.isfinite(y2).all()


@pytest.mark.parametrize("name", attentions.names())
def test_eval_is_deterministic_and_extra_loss_resets(name):
    attn = make(name).eval()
    q, k, v = qkv(24)
    torch.testing.assert_close(attn(q, k, v), attn(q, k, v), rtol=0, atol=0)
    assert attn.extra_loss is None or attn.extra_loss.dim() == 0


@pytest.mark.parametrize("name", attentions.names())
def test_unknown_parameter_is_named(name):
    with pytest.raises(ValueError, match="no_such_param"):
        attentions.build(name, heads=HEADS, head_dim=DIM, max_len=MAX_LEN, no_such_param=1)


def dense_reference(q, k, v, allowed: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over ``allowed`` (L x L bool), computed the plain way."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_vanilla_equals_softmax_reference(causal):
    q, k, v = qkv(33)
    allowed = torch.ones(33, 33, dtype=torch.bool)
    if causal:
        allowed = allowed.tril()
    torch.testing.assert_close(make("vanilla", causal)(q, k, v), dense_reference(q, k, v, allowed))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [10, 40])
def test_local_with_whole_sequence_block_equals_vanilla(causal, length):
    q, k, v = qkv(length)
    torch.testing.assert_close(make("local", causal, block_size=64)(q, k, v), make("vanilla", causal)(q, k, v))


def pattern(name: str, length: int, block: int, stride: int, causal: bool) -> torch.Tensor:
    """The attention pattern each baseline promises, written position by position."""
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    same_block = (i // block) == (j // block)
    allowed = same_block
    if name == "sparse":
        summary = (j % block) >= block - stride
        allowed = allowed | (summary & ((j // block) < (i // block) if causal else torch.ones_like(same_block)))
    return allowed & (j <= i) if causal else allowed


@pytest.mark.parametrize("name", ["local", "sparse"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [16, 27])
def test_block_baselines_equal_their_dense_pattern(name, causal, length):
    q, k, v = qkv(length)
    expected = dense_reference(q, k, v, pattern(name, length, block=8, stride=2, causal=causal))
    torch.testing.assert_close(make(name, causal)(q, k, v), expected)
