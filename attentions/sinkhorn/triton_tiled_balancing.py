"""Log-domain Sinkhorn balancing on CUDA for matrices too large for one program's registers (n > ``MAX_N`` of
``triton_balancing``), still every step in one launch forward and one launch backward.

At 64K tokens and block 64 the sort matrices are 1024 x 1024; in operators, ten steps forward and backward are about a
hundred launches per layer. Here one program still balances one matrix, but the matrix lives in a float32 scratch copy
in global memory and every step streams it in (tile x tile) pieces (``tile`` a power of two from 16 to 128):

* a row step reduces each band of ``tile`` rows across its column tiles (an online logsumexp), then subtracts;
* a column step does the same down each band of ``tile`` columns;
* a causal (prefix) step runs down each band of columns tile by tile, a scan inside the tile and the running
  logsumexp of the rows above carried from one tile to the next.

The semantics are those of ``triton_balancing`` (and so of ``reference_log_sinkhorn``): masked entries are -inf while
the kernels work and come back as the dtype's most negative finite value with a zero gradient; a row, column or prefix
with nothing allowed is shifted by 0; arithmetic is float32; the gradient is that of the unrolled steps. As there, the
forward records only each step's normalizer and the backward replays a step's matrix from the masked input and those
normalizers, tile by tile, in the forward's order of operations, then applies the step's backward: ``g - exp(y) *
sum(g)`` over a row or column (a reduction pass, then an update pass), and for a prefix step ``g - exp(y) * A`` with
``A`` accumulated up each band of columns from the last tile to the first (a reverse scan inside the tile, the carry of
the tile below added through the scan's product of weights).

Memory besides the output and the gradient (float32, per matrix): the working copy, n^2 (none for float32 inputs,
which work in the output's and the gradient's own buffers); with gradients recorded, n per row or column step and,
for causal balancing, n^2 per prefix step (about steps / 2 * n^2 in all, as the one-program kernel). The replay costs
O(steps^2) subtractions per entry; a causal replay reads the recorded prefix matrices again for each step (about
steps^2 / 4 reads of n^2 floats per matrix in the backward), which is the price of not storing every step's matrix.

Off a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors, which is how the tests
pin them against the reference with small tiles. ``ATTNBENCH_TRITON_CUDA=0`` switches them off with the others.
These kernels have not yet run on a GPU, only under the interpreter (where the barriers between steps do nothing and
registers are no limit): compiling them, their register use at the default tile and their speed are unchecked.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from attentions.sinkhorn.triton_balancing import (
    _DTYPES,
    MAX_N,
    _affine_combine,
    _load_input,
    _lse_combine,
    _lse_partial,
    _lse_value,
    _prefix_carry,
    _prefix_pairs,
    _replay,
    enabled,
    flat_kernel_mask,
    normalizer_buffers,
)

MAX_TILED_N = 4096  # the largest matrix log_sinkhorn sends here; above it the operators take over
DEFAULT_TILE = 64  # a (64 x 64) float32 tile and the few others live beside it fit 8 warps' registers


def applies(x: torch.Tensor) -> bool:
    """Whether ``log_sinkhorn`` takes the tiled kernels for ``x`` (..., n, n): on CUDA, switched on,
    ``MAX_N`` < n <= ``MAX_TILED_N``, a float dtype the kernels load."""
    return x.is_cuda and enabled() and x.dim() >= 2 and MAX_N < x.shape[-1] <= MAX_TILED_N and x.dtype in _DTYPES


@triton.jit
def _tile(a, b, n, TILE: tl.constexpr):
    """Rows, columns, offsets and in-matrix flags of tile (a, b) of an (n, n) row-major matrix."""
    i = tl.arange(0, TILE)
    rr = a * TILE + i
    cc = b * TILE + i
    return rr, cc, rr[:, None] * n + cc[None, :], (rr[:, None] < n) & (cc[None, :] < n)


@triton.jit
def _tiled_forward(
    x_ptr,
    mask_ptr,
    work_ptr,
    out_ptr,
    rows_ptr,
    cols_ptr,
    prefix_ptr,
    n,
    steps,
    mask_stride,
    floor,
    CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    RECORD: tl.constexpr,
    TILE: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64)
    nn = n * n
    x_ptr += m * nn
    mask_ptr += m * mask_stride
    work_ptr += m * nn
    out_ptr += m * nn
    tiles = tl.cdiv(n, TILE)
    i = tl.arange(0, TILE)
    last_row = (i == TILE - 1)[:, None]
    row_steps = (steps + 1) // 2
    pair_steps = steps // 2
    for a in range(tiles):  # the masked input, -inf where not allowed, into the working copy
        for b in range(tiles):
            _, _, at, inside = _tile(a, b, n, TILE)
            x, _ = _load_input(x_ptr, mask_ptr, at, inside, HAS_MASK)
            tl.store(work_ptr + at, x, mask=inside)
    tl.debug_barrier()
    for s in range(steps):
        t = s // 2
        if s % 2 == 0:  # rows: a logsumexp across the band's column tiles, then the subtraction
            for a in range(tiles):
                top = tl.full([TILE], float("-inf"), tl.float32)
                total = tl.zeros([TILE], tl.float32)
                for b in range(tiles):
                    _, _, at, inside = _tile(a, b, n, TILE)
                    part_top, part_total = _lse_partial(tl.load(work_ptr + at, mask=inside, other=float("-inf")), 1)
                    top, total = _lse_combine(top, total, part_top, part_total)
                norm = _lse_value(top, total)
                for b in range(tiles):
                    _, _, at, inside = _tile(a, b, n, TILE)
                    x = tl.load(work_ptr + at, mask=inside, other=float("-inf"))
                    tl.store(work_ptr + at, x - norm[:, None], mask=inside)
                if RECORD:
                    rr = a * TILE + i
                    tl.store(rows_ptr + (m * row_steps + t) * n + rr, norm, mask=rr < n)
        else:
            if CAUSAL:  # prefixes: down each band of columns, the logsumexp of the rows above carried along
                for b in range(tiles):
                    top = tl.full([TILE], float("-inf"), tl.float32)
                    total = tl.zeros([TILE], tl.float32)
                    for a in range(tiles):
                        _, _, at, inside = _tile(a, b, n, TILE)
                        x = tl.load(work_ptr + at, mask=inside, other=float("-inf"))
                        part_top, part_total = _prefix_pairs(x)
                        part_top, part_total = _lse_combine(top[None, :], total[None, :], part_top, part_total)
                        prefix = part_top + tl.log(part_total)
                        tl.store(work_ptr + at, x - tl.where(prefix == float("-inf"), 0.0, prefix), mask=inside)
                        if RECORD:
                            tl.store(prefix_ptr + (m * pair_steps + t) * nn + at, prefix, mask=inside)
                        # rows past n are (-inf, 0), so the tile's last row holds the prefix through its last real row
                        top = tl.max(tl.where(last_row, part_top, float("-inf")), axis=0)
                        total = tl.sum(tl.where(last_row, part_total, 0.0), axis=0)
            else:  # columns: a logsumexp down the band's row tiles, then the subtraction
                for b in range(tiles):
                    top = tl.full([TILE], float("-inf"), tl.float32)
                    total = tl.zeros([TILE], tl.float32)
                    for a in range(tiles):
                        _, _, at, inside = _tile(a, b, n, TILE)
                        part_top, part_total = _lse_partial(tl.load(work_ptr + at, mask=inside, other=float("-inf")), 0)
                        top, total = _lse_combine(top, total, part_top, part_total)
                    norm = _lse_value(top, total)
                    for a in range(tiles):
                        _, _, at, inside = _tile(a, b, n, TILE)
                        x = tl.load(work_ptr + at, mask=inside, other=float("-inf"))
                        tl.store(work_ptr + at, x - norm[None, :], mask=inside)
                    if RECORD:
                        cc = b * TILE + i
                        tl.store(cols_ptr + (m * pair_steps + t) * n + cc, norm, mask=cc < n)
        tl.debug_barrier()  # the next step reads, in other threads, what this one wrote
    for a in range(tiles):
        for b in range(tiles):
            _, _, at, inside = _tile(a, b, n, TILE)
            x = tl.load(work_ptr + at, mask=inside, other=0.0)
            x = tl.where(x == float("-inf"), floor, x)
            tl.store(out_ptr + at, x.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _tiled_backward(
    grad_ptr,
    x_ptr,
    mask_ptr,
    work_ptr,
    d_ptr,
    rows_ptr,
    cols_ptr,
    prefix_ptr,
    n,
    steps,
    mask_stride,
    CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    TILE: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64)
    nn = n * n
    grad_ptr += m * nn
    x_ptr += m * nn
    mask_ptr += m * mask_stride
    work_ptr += m * nn
    d_ptr += m * nn
    tiles = tl.cdiv(n, TILE)
    first_row = (tl.arange(0, TILE) == 0)[:, None]
    pair_steps = steps // 2
    for a in range(tiles):  # the output's gradient on allowed entries into the working copy
        for b in range(tiles):
            _, _, at, inside = _tile(a, b, n, TILE)
            _, allowed = _load_input(x_ptr, mask_ptr, at, inside, HAS_MASK)
            g = tl.load(grad_ptr + at, mask=inside, other=0.0).to(tl.float32)
            tl.store(work_ptr + at, tl.where(allowed, g, 0.0), mask=inside)
    tl.debug_barrier()
    for back in range(steps):
        s = steps - 1 - back
        if s % 2 == 0:  # rows: g - exp(y) * (row sum of g)
            for a in range(tiles):
                total = tl.zeros([TILE], tl.float32)
                for b in range(tiles):
                    _, _, at, inside = _tile(a, b, n, TILE)
                    total += tl.sum(tl.load(work_ptr + at, mask=inside, other=0.0), axis=1)
                for b in range(tiles):
                    rr, cc, at, inside = _tile(a, b, n, TILE)
                    x0, _ = _load_input(x_ptr, mask_ptr, at, inside, HAS_MASK)
                    y = _replay(x0, rows_ptr, cols_ptr, prefix_ptr, m, n, steps, s, rr, cc, at, inside, CAUSAL)
                    g = tl.load(work_ptr + at, mask=inside, other=0.0)
                    tl.store(work_ptr + at, g - tl.exp(y) * total[:, None], mask=inside)
        else:
            if CAUSAL:  # prefixes: g - exp(y) * A, A accumulated up each band of columns from its last tile
                recorded = prefix_ptr + (m * pair_steps + s // 2) * nn
                for b in range(tiles):
                    incoming = tl.zeros([TILE], tl.float32)  # A of the first row below the tile
                    for up in range(tiles):
                        a = tiles - 1 - up
                        rr, cc, at, inside = _tile(a, b, n, TILE)
                        x0, _ = _load_input(x_ptr, mask_ptr, at, inside, HAS_MASK)
                        y = _replay(x0, rows_ptr, cols_ptr, prefix_ptr, m, n, steps, s, rr, cc, at, inside, CAUSAL)
                        g = tl.load(work_ptr + at, mask=inside, other=0.0)
                        carry = _prefix_carry(recorded, at, inside, rr[:, None], n)
                        weight, acc = tl.associative_scan((carry, g), 0, _affine_combine, reverse=True)
                        acc = acc + weight * incoming[None, :]
                        incoming = tl.sum(tl.where(first_row, acc, 0.0), axis=0)
                        tl.store(work_ptr + at, g - tl.exp(y) * acc, mask=inside)
            else:  # columns: g - exp(y) * (column sum of g)
                for b in range(tiles):
                    total = tl.zeros([TILE], tl.float32)
                    for a in range(tiles):
                        _, _, at, inside = _tile(a, b, n, TILE)
                        total += tl.sum(tl.load(work_ptr + at, mask=inside, other=0.0), axis=0)
                    for a in range(tiles):
                        rr, cc, at, inside = _tile(a, b, n, TILE)
                        x0, _ = _load_input(x_ptr, mask_ptr, at, inside, HAS_MASK)
                        y = _replay(x0, rows_ptr, cols_ptr, prefix_ptr, m, n, steps, s, rr, cc, at, inside, CAUSAL)
                        g = tl.load(work_ptr + at, mask=inside, other=0.0)
                        tl.store(work_ptr + at, g - tl.exp(y) * total[None, :], mask=inside)
        tl.debug_barrier()
    for a in range(tiles):
        for b in range(tiles):
            _, _, at, inside = _tile(a, b, n, TILE)
            _, allowed = _load_input(x_ptr, mask_ptr, at, inside, HAS_MASK)
            g = tl.where(allowed, tl.load(work_ptr + at, mask=inside, other=0.0), 0.0)
            tl.store(d_ptr + at, g.to(d_ptr.dtype.element_ty), mask=inside)


def _work(like: torch.Tensor) -> torch.Tensor:
    """The float32 working copy: ``like`` itself when it is float32 (the kernels then work in place)."""
    return like if like.dtype == torch.float32 else torch.empty(like.shape, dtype=torch.float32, device=like.device)


def _warps(tile: int) -> int:
    return 4 if tile <= 32 else 8


class _TiledLogSinkhorn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_alpha, steps, mask, causal, record, tile):
        shape, n = log_alpha.shape, log_alpha.shape[-1]
        x = log_alpha.reshape(-1, n, n).contiguous()
        flat_mask, mask_stride = flat_kernel_mask(mask, shape)
        out = torch.empty_like(x)
        kept = record and steps > 0
        rows, cols, prefix = normalizer_buffers(x, steps, causal, kept)
        if x.shape[0]:
            _tiled_forward[(x.shape[0],)](
                x,
                x if flat_mask is None else flat_mask,
                _work(out),
                out,
                rows,
                cols,
                prefix,
                n,
                steps,
                mask_stride,
                torch.finfo(x.dtype).min,
                CAUSAL=causal,
                HAS_MASK=flat_mask is not None,
                RECORD=kept,
                TILE=tile,
                num_warps=_warps(tile),
            )
        if record:
            ctx.save_for_backward(x, rows, cols, prefix)
            ctx.mask, ctx.mask_stride = flat_mask, mask_stride
        ctx.steps, ctx.causal, ctx.shape, ctx.tile = steps, causal, shape, tile
        return out.view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, rows, cols, prefix = ctx.saved_tensors
        n = ctx.shape[-1]
        grad = grad.reshape(-1, n, n).contiguous()
        d_x = torch.empty_like(x)
        if x.shape[0]:
            _tiled_backward[(x.shape[0],)](
                grad,
                x,
                x if ctx.mask is None else ctx.mask,
                _work(d_x),
                d_x,
                rows,
                cols,
                prefix,
                n,
                ctx.steps,
                ctx.mask_stride,
                CAUSAL=ctx.causal,
                HAS_MASK=ctx.mask is not None,
                TILE=ctx.tile,
                num_warps=_warps(ctx.tile),
            )
        return d_x.view(ctx.shape), None, None, None, None, None


@torch.compiler.disable
def tiled_log_sinkhorn(
    log_alpha: torch.Tensor,
    steps: int,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    tile: int = DEFAULT_TILE,
) -> torch.Tensor:
    """``log_sinkhorn`` in the two tiled kernels, for (..., n, n) with n <= ``MAX_TILED_N`` (any n works; below
    ``MAX_N`` the one-program kernel is the faster choice). ``tile`` is the side of the pieces each step streams, a
    power of two from 16 to 128. Opaque to ``torch.compile``: a compiled model runs it eagerly, one graph break."""
    n = log_alpha.shape[-1]
    if log_alpha.dim() < 2 or log_alpha.shape[-2] != n or n > MAX_TILED_N:
        raise ValueError(
            f"tiled_log_sinkhorn: expected (..., n, n) with n <= {MAX_TILED_N}, got {tuple(log_alpha.shape)}"
        )
    if steps < 0:
        raise ValueError(f"tiled_log_sinkhorn: steps must be >= 0, got {steps}")
    if tile not in (16, 32, 64, 128):
        raise ValueError(f"tiled_log_sinkhorn: tile must be a power of two from 16 to 128, got {tile}")
    record = torch.is_grad_enabled() and log_alpha.requires_grad
    return _TiledLogSinkhorn.apply(log_alpha, steps, mask, causal, record, tile)
