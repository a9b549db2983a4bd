"""The chunked Sinkformer path: the dense path's values and gradients without L x L memory."""

from __future__ import annotations

import pytest
import torch

import attentions
from attentions._sinkformer_chunked import chunked_sinkformer
from harness.memory import measure_peak

HEADS, DIM = 2, 8


def qkv(length: int, batch: int = 2, seed: int = 0, dim: int = DIM) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, HEADS, length, dim, generator=g).requires_grad_() for _ in range(3)]


def padding(length: int) -> torch.Tensor:
    """Sequence 0 padded at the end, sequence 1 at the start (causal rows then start on a padded key)."""
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[0, (2 * length) // 3 :] = False
    mask[1, :2] = False
    return mask


def dense(causal: bool, iterations: int, length: int, dim: int = DIM) -> attentions.Attention:
    attn = attentions.build(
        "sinkformer", heads=HEADS, head_dim=dim, max_len=length, causal=causal, iterations=iterations
    )
    attn.chunked_from_length = length + 1  # the dense path at this length
    return attn


def values_and_grads(fn, q, k, v, upstream) -> list[torch.Tensor]:
    out = fn(q, k, v)
    return [out, *torch.autograd.grad(out, (q, k, v), upstream)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
@pytest.mark.parametrize("padded", [False, True])
def test_equals_dense_path(causal, iterations, padded):
    """Values and gradients wrt q, k, v, with a length (23) that is not a multiple of the tile (5)."""
    length = 23
    q, k, v = qkv(length)
    mask = padding(length) if padded else None
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    want = values_and_grads(lambda *t: dense(causal, iterations, length)(*t, padding_mask=mask), q, k, v, upstream)
    got = values_and_grads(
        lambda *t: chunked_sinkformer(*t, mask, iterations, causal=causal, tile=5), q, k, v, upstream
    )
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
    if padded:
        assert got[0][~mask[:, None, :, None].expand_as(q)].abs().max() == 0  # padded query rows are zero


@pytest.mark.parametrize("causal", [False, True])
def test_plugin_dispatches_to_the_chunked_path_at_long_lengths(causal):
    """At and above ``chunked_from_length`` the plugin gives the chunked path's output (and the dense one below)."""
    length = 12
    q, k, v = qkv(length)
    attn = dense(causal, 3, length)
    want = attn(q, k, v)
    attn.chunked_from_length = length
    torch.testing.assert_close(attn(q, k, v), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(q, k, v), chunked_sinkformer(q, k, v, None, 3, causal=causal), atol=0, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_memory_grows_linearly_in_length(causal):
    """Peak memory of forward + backward at 2L is about twice that at L for a fixed tile (the dense path: ~4x)."""

    def peak(length: int, chunked: bool) -> int:
        q, k, v = qkv(length, batch=1, dim=16)
        upstream = torch.ones(q.shape)

        def step():
            if chunked:
                out = chunked_sinkformer(q, k, v, None, 3, causal=causal, tile=16)
            else:
                out = dense(causal, 3, length, dim=16)(q, k, v)
            out.backward(upstream)

        return measure_peak(step)[1]

    chunked = peak(192, True) / peak(96, True)
    assert chunked < 2.4, f"chunked peak memory grew {chunked:.2f}x from L=96 to 192"
    assert peak(192, False) / peak(96, False) > 3.0  # the measurement sees quadratic memory where there is some


def test_invalid_arguments_named():
    q, k, v = qkv(4)
    with pytest.raises(ValueError, match="iterations"):
        chunked_sinkformer(q, k, v, None, 0, causal=False)
    with pytest.raises(ValueError, match="tile"):
        chunked_sinkformer(q, k, v, None, 2, causal=True, tile=0)
