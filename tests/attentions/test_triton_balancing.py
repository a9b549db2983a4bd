"""The Triton kernels of ``log_sinkhorn`` (``attentions/sinkhorn/triton_balancing.py``) against the operator reference,
run on CPU tensors under Triton's interpreter: values and gradients of plain and causal balancing, masks with rows and
columns of no mass, matrix sizes that are no power of two, several batch shapes and step counts.

Without a GPU, ``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before triton is first imported (it is read then, and
when a kernel is decorated); with one, the same tests run the compiled kernels on CUDA tensors.
"""

from __future__ import annotations

import os

import pytest
import torch

from attentions.sinkhorn import balancing
from attentions.sinkhorn.balancing import reference_log_sinkhorn

pytest.importorskip("triton")
# The interpreter evaluates in numpy, which warns where the kernels compute exp(-inf) or -inf - (-inf) and discard it.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def kernels():
    """The kernels' module: on CUDA where a GPU is present, else interpreted on the CPU (``tests/conftest.py`` sets
    ``TRITON_INTERPRET=1`` before anything imports triton)."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1: the Triton kernels cannot run here")
    from attentions.sinkhorn import triton_balancing

    return triton_balancing


@pytest.fixture(scope="module")
def device() -> str:
    return "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def lower(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril(-1)


def padding(n: int, real: tuple[int, ...]) -> torch.Tensor:
    """(B, 1, n, n) mask of B sequences with ``real[b]`` live blocks each: the rest are rows and columns of no mass."""
    live = torch.arange(n)[None, :] < torch.tensor(real)[:, None]
    return (live[:, :, None] & live[:, None, :])[:, None]


CASES = {  # name: (shape, steps, causal, mask)
    "plain_n7_0": ((2, 3, 7, 7), 0, False, None),
    "plain_n7_1": ((2, 3, 7, 7), 1, False, None),
    "plain_n7_4": ((2, 3, 7, 7), 4, False, None),
    "plain_n7_5": ((2, 3, 7, 7), 5, False, None),
    "plain_2d_n5_3": ((5, 5), 3, False, None),
    "plain_n16_6": ((1, 2, 16, 16), 6, False, None),
    "plain_n1_2": ((2, 1, 1), 2, False, None),
    "padded_n6_4": ((2, 2, 6, 6), 4, False, padding(6, (6, 3))),
    "padded_n6_7": ((2, 2, 6, 6), 7, False, padding(6, (4, 0))),
    "causal_n7_0": ((2, 2, 7, 7), 0, True, lower(7)),
    "causal_n7_2": ((2, 2, 7, 7), 2, True, lower(7)),
    "causal_n7_5": ((2, 2, 7, 7), 5, True, lower(7)),
    "causal_n9_10": ((1, 2, 9, 9), 10, True, lower(9)),
    "causal_nomask_n5_3": ((3, 5, 5), 3, True, None),
    "causal_padded_n6_6": ((2, 1, 6, 6), 6, True, padding(6, (6, 4)) & lower(6)),
}


def run(fn, x, steps, causal, mask, weights):
    x = x.clone().requires_grad_()
    out = fn(x, steps, mask=mask, causal=causal)
    (out.exp() * weights).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_the_reference(kernels, device, case):
    """fp32 values to 2e-6 and gradients (those of the unrolled steps) to 1e-5; masked entries exactly the floor."""
    shape, steps, causal, mask = CASES[case]
    g = torch.Generator().manual_seed(sum(map(ord, case)))
    x = (torch.randn(*shape, generator=g) * 3).to(device)
    weights = torch.randn(*shape, generator=g).to(device)
    mask = None if mask is None else mask.to(device)
    ours, our_grad = run(kernels.triton_log_sinkhorn, x, steps, causal, mask, weights)
    theirs, their_grad = run(reference_log_sinkhorn, x, steps, causal, mask, weights)
    floor = torch.finfo(x.dtype).min
    assert torch.equal(ours == floor, theirs == floor)
    torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-5)
    if mask is not None:
        assert (our_grad.masked_select(~mask.expand(shape)) == 0).all()


def test_balanced_rows_and_columns_sum_to_one(kernels, device):
    """The property the design asks of balancing, on the kernel's own output (an even count ends on columns)."""
    x = torch.randn(3, 12, 12, generator=torch.Generator().manual_seed(5)).to(device)
    p = kernels.triton_log_sinkhorn(x, 40).exp()
    torch.testing.assert_close(p.sum(-2).cpu(), torch.ones(3, 12), atol=1e-5, rtol=0)
    torch.testing.assert_close(p.sum(-1).cpu(), torch.ones(3, 12), atol=1e-3, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_evaluation_keeps_nothing_and_gives_the_training_values(kernels, device, causal):
    x = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(6)).to(device)
    mask = lower(6).to(device) if causal else None
    with torch.no_grad():
        plain = kernels.triton_log_sinkhorn(x, 5, mask=mask, causal=causal)
    recorded = kernels.triton_log_sinkhorn(x.clone().requires_grad_(), 5, mask=mask, causal=causal)
    assert torch.equal(plain, recorded.detach())


def test_sizes_beyond_one_tile_are_refused_by_name(kernels):
    n = kernels.MAX_N + 1
    with pytest.raises(ValueError, match=rf"triton_log_sinkhorn: expected \(\.\.\., n, n\) with n <= {n - 1}"):
        kernels.triton_log_sinkhorn(torch.zeros(n, n), 2)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        kernels.triton_log_sinkhorn(torch.zeros(4, 4), -1)


def test_the_kernels_are_for_cuda_up_to_one_tile_and_can_be_switched_off(kernels, monkeypatch):
    """``log_sinkhorn`` takes the kernels only for CUDA tensors of at most ``MAX_N`` (larger ones keep the operator
    reference), and never with ``ATTNBENCH_TRITON_CUDA=0``; the CPU keeps its C++ kernel."""
    assert not balancing._triton_applies(torch.zeros(8, 8))
    if torch.cuda.is_available():
        assert balancing._triton_applies(torch.zeros(8, 8, device="cuda"))
        big = kernels.MAX_N + 1
        assert not balancing._triton_applies(torch.zeros(big, big, device="cuda"))
        monkeypatch.setenv("ATTNBENCH_TRITON_CUDA", "0")
        assert not balancing._triton_applies(torch.zeros(8, 8, device="cuda"))
