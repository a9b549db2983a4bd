"""The Triton kernels of ``log_sinkhorn`` (``attentions/sinkhorn/triton_balancing.py``) against the operator reference,
run on CPU tensors under Triton's interpreter: values and gradients of plain and causal balancing, masks with rows and
columns of no mass, matrix sizes that are no power of two, several batch shapes and step counts. The tiled kernels
(``triton_tiled_balancing.py``, for matrices above one program's registers) are pinned the same way with 16-wide tiles,
so that matrices of 20 to 64 cross several tiles in both directions cheaply.

Without a GPU, ``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before triton is first imported (it is read then, and
when a kernel is decorated); with one, the same tests run the compiled kernels on CUDA tensors.
"""

from __future__ import annotations

import functools
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
def tiled():
    """The tiled kernels' module, on the same terms as ``kernels``."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1: the Triton kernels cannot run here")
    from attentions.sinkhorn import triton_tiled_balancing

    return triton_tiled_balancing


@pytest.fixture(scope="module")
def device() -> str:
    return "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def lower(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril(-1)


def padding(n: int, real: tuple[int, ...]) -> torch.Tensor:
    """(B, 1, n, n) mask of B sequences with ``real[b]`` live blocks each: the rest are rows and columns of no mass."""
    live = torch.arange(n)[None, :] < torch.tensor(real)[:, None]
    return (live[:, :, None] & live[:, None, :])[:, None]


def holes(n: int, rows: tuple[int, ...], cols: tuple[int, ...]) -> torch.Tensor:
    """(n, n) mask allowing all but some whole rows and columns: rows and columns of no mass inside the matrix."""
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[list(rows)] = False
    mask[:, list(cols)] = False
    return mask


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


TILE = 16
TILED_CASES = {  # name: (shape, steps, causal, mask), balanced in 16 x 16 tiles
    "plain_n20_0": ((2, 20, 20), 0, False, holes(20, (3,), (17,))),
    "plain_n20_1": ((2, 20, 20), 1, False, None),
    "plain_n48_4": ((1, 2, 48, 48), 4, False, None),
    "plain_n64_3": ((64, 64), 3, False, None),
    "holes_n48_5": ((2, 48, 48), 5, False, holes(48, (5, 40), (17, 47))),
    "padded_n40_4": ((2, 1, 40, 40), 4, False, padding(40, (40, 23))),
    "padded_n20_3": ((2, 1, 20, 20), 3, False, padding(20, (9, 0))),
    "causal_n20_1": ((2, 20, 20), 1, True, lower(20)),
    "causal_n48_4": ((48, 48), 4, True, lower(48)),
    "causal_n64_2": ((64, 64), 2, True, lower(64)),
    "causal_nomask_n33_3": ((1, 33, 33), 3, True, None),
    "causal_padded_n40_5": ((2, 1, 40, 40), 5, True, padding(40, (40, 18)) & lower(40)),
    "causal_holes_n48_6": ((48, 48), 6, True, holes(48, (16, 31), (20,)) & lower(48)),
}


def run(fn, x, steps, causal, mask, weights):
    x = x.clone().requires_grad_()
    out = fn(x, steps, mask=mask, causal=causal)
    (out.exp() * weights).sum().backward()
    return out.detach(), x.grad


def check_against_reference(fn, device, case, shape, steps, causal, mask):
    """fp32 values to 2e-6 and gradients (those of the unrolled steps) to 1e-5; masked entries exactly the floor."""
    g = torch.Generator().manual_seed(sum(map(ord, case)))
    x = (torch.randn(*shape, generator=g) * 3).to(device)
    weights = torch.randn(*shape, generator=g).to(device)
    mask = None if mask is None else mask.to(device)
    ours, our_grad = run(fn, x, steps, causal, mask, weights)
    theirs, their_grad = run(reference_log_sinkhorn, x, steps, causal, mask, weights)
    floor = torch.finfo(x.dtype).min
    assert torch.equal(ours == floor, theirs == floor)
    torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-5)
    if mask is not None:
        assert (our_grad.masked_select(~mask.expand(shape)) == 0).all()


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_the_reference(kernels, device, case):
    check_against_reference(kernels.triton_log_sinkhorn, device, case, *CASES[case])


@pytest.mark.parametrize("case", list(TILED_CASES))
def test_tiled_values_and_gradients_match_the_reference(tiled, device, case):
    """Sizes that are and are not multiples of the tile, rows, columns and causal prefixes of no mass that begin and
    end inside a tile and across tile borders."""
    check_against_reference(functools.partial(tiled.tiled_log_sinkhorn, tile=TILE), device, case, *TILED_CASES[case])


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


def test_sizes_beyond_one_tile_are_refused_by_name(kernels, tiled):
    n = kernels.MAX_N + 1
    with pytest.raises(ValueError, match=rf"triton_log_sinkhorn: expected \(\.\.\., n, n\) with n <= {n - 1}"):
        kernels.triton_log_sinkhorn(torch.zeros(n, n), 2)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        kernels.triton_log_sinkhorn(torch.zeros(4, 4), -1)
    n = tiled.MAX_TILED_N + 1
    with pytest.raises(ValueError, match=rf"tiled_log_sinkhorn: expected \(\.\.\., n, n\) with n <= {n - 1}"):
        tiled.tiled_log_sinkhorn(torch.zeros(1, n, n), 2)
    with pytest.raises(ValueError, match="tiled_log_sinkhorn: steps must be >= 0"):
        tiled.tiled_log_sinkhorn(torch.zeros(4, 4), -1)
    with pytest.raises(ValueError, match="tiled_log_sinkhorn: tile must be a power of two from 16 to 128, got 24"):
        tiled.tiled_log_sinkhorn(torch.zeros(4, 4), 2, tile=24)


def test_cuda_takes_the_kernel_that_fits_and_can_switch_them_off(kernels, tiled, monkeypatch):
    """``log_sinkhorn`` takes the one-program kernels for CUDA tensors of at most ``MAX_N``, the tiled ones above that
    up to ``MAX_TILED_N`` (larger ones keep the operator reference), and neither with ``ATTNBENCH_TRITON_CUDA=0``; the
    CPU keeps its C++ kernel."""
    assert balancing._triton_kernel(torch.zeros(8, 8)) is None
    assert balancing._triton_kernel(torch.zeros(kernels.MAX_N + 1, kernels.MAX_N + 1)) is None
    if torch.cuda.is_available():
        for n, want in (
            (8, kernels.triton_log_sinkhorn),
            (kernels.MAX_N, kernels.triton_log_sinkhorn),
            (kernels.MAX_N + 1, tiled.tiled_log_sinkhorn),
            (tiled.MAX_TILED_N, tiled.tiled_log_sinkhorn),
            (tiled.MAX_TILED_N + 1, None),
        ):
            assert balancing._triton_kernel(torch.empty(1, n, n, device="cuda")) is want, n
        monkeypatch.setenv("ATTNBENCH_TRITON_CUDA", "0")
        assert balancing._triton_kernel(torch.zeros(8, 8, device="cuda")) is None
        assert balancing._triton_kernel(torch.zeros(200, 200, device="cuda")) is None
