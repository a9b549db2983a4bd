"""The Triton forward of the non-causal Sinkformer, run on the CPU under Triton's interpreter, against the chunked and
dense paths (values, balancing vectors, and the gradient through its backward)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")  # tests/conftest.py sets TRITON_INTERPRET=1 before anything imports it

from attentions import _sinkformer_triton as kernels  # noqa: E402
from attentions._sinkformer_chunked import chunked_sinkformer  # noqa: E402

HEADS = 2


def inputs(length: int, dim: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, HEADS, length, dim, generator=g).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_triton_forward_equals_chunked_path(iterations, padded):
    """A length (21) that is not a multiple of the 16-wide tile and a head width (12) below the padded 16."""
    length, dim = 21, 12
    q, k, v = inputs(length, dim)
    mask = None
    if padded:
        mask = torch.ones(2, length, dtype=torch.bool)
        mask[0, 14:] = False
        mask[1, :3] = False
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    want = chunked_sinkformer(q, k, v, mask, iterations, causal=False, tile=7)
    got = kernels.triton_sinkformer(q, k, v, mask, iterations)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    for a, b in zip(
        torch.autograd.grad(got, (q, k, v), upstream), torch.autograd.grad(want, (q, k, v), upstream), strict=True
    ):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    if padded:
        assert got[~mask[:, None, :, None].expand_as(q)].abs().max() == 0


def test_vectors_balance_the_matrix():
    """Steps ending on columns: exp(S - r - c) from the kernel's vectors has unit column sums, and the rows are closer
    to unit sums than after one column step."""
    length, dim = 18, 16
    q, k, _ = (t.detach() for t in inputs(length, dim))
    scores = q @ k.transpose(-1, -2) * dim**-0.5
    row_error = []
    for steps in (2, 8):
        _, vectors = kernels.triton_forward(q, k, q, None, steps)
        p = torch.exp(scores - vectors[-2][..., :, None] - vectors[-1][..., None, :])
        torch.testing.assert_close(p.sum(-2), torch.ones(p.shape[:-1]), atol=1e-5, rtol=0)
        row_error.append((p.sum(-1) - 1).abs().max())
    assert row_error[1] < row_error[0] / 4
