"""The Triton kernels of the Sinkformer (forward and backward, non-causal and causal): values and gradients against
the chunked path and against the dense balancing of the full score matrix. Under Triton's interpreter (no GPU) on CPU
tensors; on CUDA tensors where a GPU is present and ``TRITON_INTERPRET`` is not 1."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")  # tests/conftest.py sets TRITON_INTERPRET=1 before anything imports it

from attentions import _sinkformer_triton as kernels  # noqa: E402
from attentions._sinkformer_chunked import chunked_sinkformer  # noqa: E402
from attentions.sinkhorn.reference import reference_log_sinkhorn  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
# The interpreter evaluates in numpy, which warns where the kernels compute exp(-inf) and discard it.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def inputs(length: int, dim: int, heads: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, heads, length, dim, generator=g).to(DEVICE).requires_grad_() for _ in range(3)]


def padding_mask(length: int) -> torch.Tensor:
    """Sequence 0 padded from position 9 on, sequence 1 its first 3 positions."""
    valid = torch.ones(2, length, dtype=torch.bool, device=DEVICE)
    valid[0, 9:] = False
    valid[1, :3] = False
    return valid


def upstream_like(x: torch.Tensor) -> torch.Tensor:
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)


def dense_sinkformer(q, k, v, valid, steps, causal=False) -> torch.Tensor:
    """The definition: the full (L, L) score matrix balanced by the operator reference, exp, masked entries 0, @ V.
    Causal: keys j <= i only, and the column steps normalize each column over the rows up to each entry."""
    allowed = None if valid is None else (valid[:, :, None] & valid[:, None, :])[:, None]
    if causal:
        tri = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool, device=q.device).tril()
        allowed = tri if allowed is None else allowed & tri
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    p = reference_log_sinkhorn(scores, steps, mask=allowed, causal=causal).exp()
    return (p if allowed is None else p.masked_fill(~allowed, 0.0)) @ v


def values_and_grads(fn, q, k, v, upstream) -> list[torch.Tensor]:
    out = fn(q, k, v)
    return [out, *torch.autograd.grad(out, (q, k, v), upstream)]


def assert_tight(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """Float32 rounding only: within 2e-6 of the reference's largest entry plus 1e-5 of each entry."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got.to(want.dtype), want, atol=2e-6 * scale, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def check_against_chunked_and_dense(length, dim, heads, steps, padded, causal, **options) -> None:
    """Values and gradients of ``triton_sinkformer`` equal the chunked path's (tile 7, so its tiles and the kernels'
    differ) and the float64 dense reference's; exact zeros at padded positions."""
    q, k, v = inputs(length, dim, heads)
    valid = padding_mask(length) if padded else None
    upstream = upstream_like(q)
    got = values_and_grads(
        lambda *t: kernels.triton_sinkformer(*t, valid, steps, causal=causal, **options), q, k, v, upstream
    )
    chunked = values_and_grads(
        lambda *t: chunked_sinkformer(*t, valid, steps, causal=causal, tile=7), q, k, v, upstream
    )
    exact = values_and_grads(
        lambda *t: dense_sinkformer(*t, valid, steps, causal),
        *(t.detach().double().requires_grad_() for t in (q, k, v)), upstream.double(),
    )  # fmt: skip
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), got, chunked, exact, strict=True):
        assert_tight(a, b, f"{name} against the chunked path")
        assert_tight(a, c, f"{name} against the dense float64 reference")
    if padded:
        padding = ~valid[:, None, :, None].expand_as(q)
        for name, tensor in zip(("out", "dq", "dk", "dv"), got, strict=True):
            assert tensor[padding].abs().max() == 0, f"{name} is not exactly 0 at padded positions"


@pytest.mark.parametrize(("length", "dim", "heads"), [(16, 16, 2), (40, 24, 1)])
@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("padded", [False, True])
def test_values_and_gradients_equal_chunked_and_dense(length, dim, heads, steps, padded):
    """L = 40 is not a multiple of the 16-wide tile and D = 24 pads to 32 (one head there: the interpreter is slow).
    Padding: sequence 0 from position 9 on (at L = 40 its last two tiles hold no real token at all), sequence 1 its
    first 3 positions. The dense reference runs in float64, so it checks the kernels' float32 rounding, not only their
    agreement with the chunked path."""
    check_against_chunked_and_dense(length, dim, heads, steps, padded, causal=False)


CAUSAL_CASES = [
    (*sizes, steps, padded)
    for sizes in [(16, 16, 2), (40, 24, 1)]
    for steps in [1, 3, 4]
    for padded in [False, True]
    if not (sizes[0] == 40 and steps == 4 and not padded)  # the slowest case under the interpreter; padded it runs
]


@pytest.mark.parametrize(("length", "dim", "heads", "steps", "padded"), CAUSAL_CASES)
def test_causal_values_and_gradients_equal_chunked_and_dense(length, dim, heads, steps, padded):
    """The causal forward and backward kernels. Steps: rows only; a column step between two row steps; two column
    steps, the last one last. The checkpoint tile is one kernel tile (16), so at L = 40 there are 3 tiles and a
    checkpoint every 2: the backward recomputes the carries entering tile 1 from the checkpoint before tile 0, and
    walks two segments, the last one from the carries saved after 32 rows. At L = 16 the padded sequence 0 holds keys
    beyond its last real query."""
    check_against_chunked_and_dense(length, dim, heads, steps, padded, causal=True, tile=16)


def test_causal_gradients_with_a_wider_checkpoint_tile():
    """A checkpoint tile of 32 rows at L = 40: one segment of three 16-row kernel tiles in two 32-row tiles. The
    backward recomputes the carries entering the second 32-row tile from the checkpoint, then those entering each
    kernel tile of a 32-row tile from the carries entering it."""
    check_against_chunked_and_dense(40, 16, 1, 2, True, causal=True, tile=32)


def test_causal_checkpoints_equal_the_chunked_forward():
    """The carries the causal forward kernel saves (which its backward starts from) equal, in layout and value, those
    the chunked forward saves for its backward: two column steps, padding, checkpoints before rows 0 and 32."""
    q, k, v = (t.detach() for t in inputs(40, 16, heads=1))
    valid = padding_mask(40)
    _, saved, segment = kernels.triton_causal_forward(q, k, v, valid, 4, 16)
    chunked = chunked_sinkformer(*(t.clone().requires_grad_() for t in (q, k, v)), valid, 4, causal=True, tile=16)
    want = chunked.grad_fn.saved_tensors[-1]
    assert segment == 2 and saved.shape == want.shape == (2, 2, 2, 1, 40)
    floor = torch.finfo(want.dtype).min  # the carry of a column with nothing allowed above yet
    nothing_above = want == floor
    assert torch.equal(saved == floor, nothing_above)
    assert 0 < int((~nothing_above).sum()) < want.numel()
    assert_tight(saved[~nothing_above], want[~nothing_above], "saved carries")


@pytest.mark.parametrize("causal", [False, True])
def test_half_precision_inputs_follow_the_float32_chunked_path(causal):
    """float16 inputs (tile products in float16, the rest float32): values and gradients within float16 rounding of
    the chunked path's in float32, in the inputs' dtype."""
    q, k, v = (t.detach() for t in inputs(32, 16, heads=1))
    upstream = upstream_like(q)

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        return values_and_grads(fn, *leaves, upstream.to(dtype))

    got = run(lambda *t: kernels.triton_sinkformer(*t, None, 3, causal=causal, tile=16), torch.float16)
    want = run(lambda *t: chunked_sinkformer(*t, None, 3, causal=causal, tile=16), torch.float32)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert a.dtype == torch.float16, name
        torch.testing.assert_close(a.float(), b, atol=3e-3 * b.abs().max().item(), rtol=0, msg=name)


@pytest.mark.parametrize("causal", [False, True])
def test_fully_padded_sequence_gives_zeros(causal):
    """A sequence with no real token beside a real one: zeros out and zero gradients there, no NaN anywhere."""
    length, dim, steps = 16, 16, 3
    q, k, v = inputs(length, dim)
    valid = torch.ones(2, length, dtype=torch.bool, device=DEVICE)
    valid[1] = False
    upstream = upstream_like(q)
    got = values_and_grads(lambda *t: kernels.triton_sinkformer(*t, valid, steps, causal=causal), q, k, v, upstream)
    alone = values_and_grads(
        lambda *t: kernels.triton_sinkformer(*t, None, steps, causal=causal),
        *(t[:1].detach().requires_grad_() for t in (q, k, v)), upstream[:1],
    )  # fmt: skip
    for name, tensor, single in zip(("out", "dq", "dk", "dv"), got, alone, strict=True):
        assert torch.isfinite(tensor).all(), name
        assert tensor[1].abs().max() == 0, f"{name} of the padded sequence"
        assert_tight(tensor[:1], single, f"{name} of the real sequence beside a padded one")


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
        torch.testing.assert_close(p.sum(-2), torch.ones_like(p[..., 0]), atol=1e-5, rtol=0)
        row_error.append((p.sum(-1) - 1).abs().max())
    assert row_error[1] < row_error[0] / 4


def test_step_offsets_follow_the_alternation():
    """Step t's (r, c): the vector it wrote and the other one as the last step before it left it (c = 0 at first)."""
    vectors = torch.arange(1.0, 4.0)[:, None].expand(3, 5)  # steps 1 (rows), 2 (columns), 3 (rows)
    rows, cols = kernels.step_offsets(vectors)
    assert rows[:, 0].tolist() == [1.0, 1.0, 3.0]
    assert cols[:, 0].tolist() == [0.0, 2.0, 2.0]


def test_invalid_iterations_named():
    q, k, v = inputs(16, 16)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        kernels.triton_sinkformer(q, k, v, None, 0)


def test_causal_backward_tile_must_fit_the_kernel_tiles():
    q, k, v = inputs(16, 16)
    with pytest.raises(ValueError, match="multiple of 16, got 20"):
        kernels.triton_sinkformer(q, k, v, None, 2, causal=True, tile=20)


def test_switched_off_by_the_triton_switch(monkeypatch):
    """``ATTNBENCH_TRITON_CUDA=0`` turns these kernels off as it does the other Triton kernels (sinkformer then runs the
    chunked path); any other value leaves them on."""
    q = torch.zeros(1, 1, 16, 16, device=DEVICE)
    monkeypatch.setenv("TRITON_INTERPRET", "1" if DEVICE == "cpu" else "0")
    monkeypatch.setenv("ATTNBENCH_TRITON_CUDA", "1")
    assert kernels.available(q)
    monkeypatch.setenv("ATTNBENCH_TRITON_CUDA", "0")
    assert not kernels.available(q)
