"""Log-domain Sinkhorn balancing on CUDA as two Triton kernels: every step in one launch forward, one launch backward.

Written in operators, ten balancing steps forward and backward are about a hundred small kernels per layer on the
sinkhorn family's (blocks x blocks) sort matrices, so on a GPU their time is launch overhead. Here one program balances
one matrix with the whole matrix in registers (n up to ``MAX_N``; ``triton_tiled_balancing`` streams larger ones through
global memory in tiles, sharing this module's jit helpers).

The forward keeps only what each step subtracted (its normalizer): a vector per row or column step, and for a causal
(prefix) step its (n, n) prefix logsumexps. The backward replays the step matrices from the masked input and those
normalizers, in the forward's order of operations (so it sees the forward's values bit for bit), and runs each step's
backward in reverse: a row or column step's is ``g - exp(y) * sum(g)`` over the row or column; a prefix step's is
``g - exp(y) * A`` with ``A_r = g_r + exp(P_r - P_{r+1}) * A_{r+1}`` up each column (one reverse associative scan). The
replay costs O(steps^2) subtractions per entry, no exponentials, which on such small matrices is cheaper than storing
every step's matrix.

Masked entries are -inf while the kernels work (and their gradient is 0); they come back as the dtype's most negative
finite value, as ``reference_log_sinkhorn`` writes them. A row, column or prefix with nothing allowed is shifted by 0.
Arithmetic is float32 whatever the input dtype; the output has the input's dtype.

Off a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set before triton is imported) on CPU
tensors, which is how the tests pin them against the reference. ``ATTNBENCH_TRITON_CUDA=0`` switches them off.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from attentions._blocks import kernel_mask

MAX_N = 128  # one program holds the whole (tile x tile) matrix; beyond this the registers would spill (tiled kernels)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def enabled() -> bool:
    return os.environ.get("ATTNBENCH_TRITON_CUDA", "1") != "0"


def applies(x: torch.Tensor) -> bool:
    """Whether ``log_sinkhorn`` takes the kernels for ``x`` (..., n, n): on CUDA, switched on, n <= ``MAX_N``, a
    float dtype the kernels load."""
    return x.is_cuda and enabled() and x.dim() >= 2 and x.shape[-1] <= MAX_N and x.dtype in _DTYPES


@triton.jit
def _lse_combine(m1, s1, m2, s2):
    """Two (max, scaled sum) pairs of an online logsumexp into one; a pair of nothing is (-inf, 0)."""
    m = tl.maximum(m1, m2)
    shift = tl.where(m == float("-inf"), 0.0, m)
    return m, s1 * tl.exp(m1 - shift) + s2 * tl.exp(m2 - shift)


@triton.jit
def _affine_combine(c1, a1, c2, a2):
    """Affine maps A -> a + c * A of two row ranges, composed for a scan run from the last row up: ``(c1, a1)`` is
    the range below (applied first), ``(c2, a2)`` the range above."""
    return c1 * c2, a2 + c2 * a1


@triton.jit
def _lse_partial(x, axis: tl.constexpr):
    """logsumexp of ``x`` along ``axis`` as an online pair (max, sum of exp(x - max)); (-inf, 0) where all is -inf."""
    top = tl.max(x, axis=axis)
    shift = tl.where(top == float("-inf"), 0.0, top)
    return top, tl.sum(tl.exp(x - tl.expand_dims(shift, axis)), axis=axis)


@triton.jit
def _lse_value(top, total):
    """The logsumexp an online pair stands for; 0 (not -inf) for a pair of nothing, so subtracting it changes
    nothing."""
    return tl.where(total > 0, top + tl.log(total), 0.0)


@triton.jit
def _safe_lse(x, axis: tl.constexpr):
    """logsumexp of ``x`` along ``axis``; 0 (not -inf) where everything is -inf, so subtracting it changes nothing."""
    top, total = _lse_partial(x, axis)
    return _lse_value(top, total)


@triton.jit
def _prefix_pairs(x):
    """Per entry, the online pair of its column's rows up to and including it ((-inf, 0) while nothing is allowed)."""
    top, total = tl.associative_scan((x, tl.where(x == float("-inf"), 0.0, 1.0)), 0, _lse_combine)
    return top, total


@triton.jit
def _prefix_lse(x):
    """Per entry, the logsumexp of its column over the rows up to and including it (-inf while nothing is allowed)."""
    top, total = _prefix_pairs(x)
    return top + tl.log(total)


@triton.jit
def _load_input(x_ptr, mask_ptr, at, inside, HAS_MASK: tl.constexpr):
    """The input at offsets ``at`` in float32, -inf outside the matrix and where the mask forbids; and where it is
    allowed (``x_ptr`` and ``mask_ptr`` point at this matrix's first entry)."""
    allowed = inside
    if HAS_MASK:
        allowed = allowed & (tl.load(mask_ptr + at, mask=inside, other=0) != 0)
    x = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32)
    return tl.where(allowed, x, float("-inf")), allowed


@triton.jit
def _replay(y, rows_ptr, cols_ptr, prefix_ptr, m, n, steps, s, rr, cc, at, inside, CAUSAL: tl.constexpr):
    """Step ``s``'s output on the rows ``rr`` and columns ``cc`` (offsets ``at``) of matrix ``m``: the masked input
    ``y`` less the normalizers of steps 0..s, subtracted one by one as the forward did (so bit for bit its values)."""
    row_steps = (steps + 1) // 2
    pair_steps = steps // 2
    for u in range(s + 1):
        if u % 2 == 0:
            y = y - tl.load(rows_ptr + (m * row_steps + u // 2) * n + rr, mask=rr < n, other=0.0)[:, None]
        else:
            if CAUSAL:
                prefix = tl.load(prefix_ptr + (m * pair_steps + u // 2) * n * n + at, mask=inside, other=0.0)
                y = y - tl.where(prefix == float("-inf"), 0.0, prefix)
            else:
                y = y - tl.load(cols_ptr + (m * pair_steps + u // 2) * n + cc, mask=cc < n, other=0.0)[None, :]
    return y


@triton.jit
def _prefix_carry(prefix_ptr, at, inside, r, n):
    """exp(P_r - P_{r+1}) at offsets ``at`` (rows ``r``) of one recorded prefix matrix: how much of row r+1's
    accumulated gradient carries up into row r in a prefix step's backward. P only grows down a column; nothing
    carries up into a prefix of nothing or past the last row."""
    here = tl.load(prefix_ptr + at, mask=inside, other=float("-inf"))
    below = tl.load(prefix_ptr + at + n, mask=inside & (r + 1 < n), other=float("-inf"))
    return tl.where((here == float("-inf")) | (r + 1 >= n), 0.0, tl.exp(here - below))


@triton.jit
def _forward(
    x_ptr,
    mask_ptr,
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
    i = tl.arange(0, TILE)
    r, c = i[:, None], i[None, :]
    inside = (r < n) & (c < n)
    at = r * n + c
    nn = n * n
    x, _ = _load_input(x_ptr + m * nn, mask_ptr + m * mask_stride, at, inside, HAS_MASK)
    row_steps = (steps + 1) // 2
    pair_steps = steps // 2
    for s in range(steps):
        t = s // 2
        if s % 2 == 0:
            norm = _safe_lse(x, 1)
            x = x - norm[:, None]
            if RECORD:
                tl.store(rows_ptr + (m * row_steps + t) * n + i, norm, mask=i < n)
        else:
            if CAUSAL:
                prefix = _prefix_lse(x)
                x = x - tl.where(prefix == float("-inf"), 0.0, prefix)
                if RECORD:
                    tl.store(prefix_ptr + (m * pair_steps + t) * nn + at, prefix, mask=inside)
            else:
                norm = _safe_lse(x, 0)
                x = x - norm[None, :]
                if RECORD:
                    tl.store(cols_ptr + (m * pair_steps + t) * n + i, norm, mask=i < n)
    x = tl.where(x == float("-inf"), floor, x)
    tl.store(out_ptr + m * nn + at, x.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _backward(
    grad_ptr,
    x_ptr,
    mask_ptr,
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
    i = tl.arange(0, TILE)
    r, c = i[:, None], i[None, :]
    inside = (r < n) & (c < n)
    at = r * n + c
    nn = n * n
    x0, allowed = _load_input(x_ptr + m * nn, mask_ptr + m * mask_stride, at, inside, HAS_MASK)
    g = tl.where(allowed, tl.load(grad_ptr + m * nn + at, mask=inside, other=0.0).to(tl.float32), 0.0)
    pair_steps = steps // 2
    for back in range(steps):
        s = steps - 1 - back
        y = _replay(x0, rows_ptr, cols_ptr, prefix_ptr, m, n, steps, s, i, i, at, inside, CAUSAL)
        p = tl.exp(y)  # 0 where masked
        if s % 2 == 0:
            g = g - p * tl.sum(g, axis=1)[:, None]
        else:
            if CAUSAL:
                carry = _prefix_carry(prefix_ptr + (m * pair_steps + s // 2) * nn, at, inside, r, n)
                _, acc = tl.associative_scan((carry, g), 0, _affine_combine, reverse=True)
                g = g - p * acc
            else:
                g = g - p * tl.sum(g, axis=0)[None, :]
    g = tl.where(allowed, g, 0.0)
    tl.store(d_ptr + m * nn + at, g.to(d_ptr.dtype.element_ty), mask=inside)


def flat_kernel_mask(mask: torch.Tensor | None, shape: torch.Size) -> tuple[torch.Tensor | None, int]:
    """``mask`` as the kernels read it: uint8 (1 or matrices, n, n), and the stride between matrices (0: shared)."""
    if mask is None:
        return None, 0
    n = shape[-1]
    flat = kernel_mask(mask, tuple(shape[:-2]), (n, n)).view(torch.uint8)
    return flat, 0 if flat.shape[0] == 1 else n * n


def normalizer_buffers(
    x: torch.Tensor, steps: int, causal: bool, kept: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the forward records for the backward of ``x`` (matrices, n, n), float32: each row step's (n,) normalizer,
    each column step's (n,) or each prefix step's (n, n) prefix logsumexps; empty where nothing is kept."""
    matrices, n = x.shape[0], x.shape[-1]
    rows = x.new_empty((matrices, (steps + 1) // 2, n) if kept else (0,), dtype=torch.float32)
    cols = x.new_empty((matrices, steps // 2, n) if kept and not causal else (0,), dtype=torch.float32)
    prefix = x.new_empty((matrices, steps // 2, n, n) if kept and causal else (0,), dtype=torch.float32)
    return rows, cols, prefix


def _launch_shape(n: int) -> tuple[int, int]:
    """The power-of-two tile that holds an (n, n) matrix, and the warps that share it."""
    tile = max(2, triton.next_power_of_2(n))
    return tile, 4 if tile <= 64 else 8


class _TritonLogSinkhorn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_alpha, steps, mask, causal, record):
        shape, n = log_alpha.shape, log_alpha.shape[-1]
        x = log_alpha.reshape(-1, n, n).contiguous()
        matrices = x.shape[0]
        flat_mask, mask_stride = flat_kernel_mask(mask, shape)
        out = torch.empty_like(x)
        kept = record and steps > 0
        rows, cols, prefix = normalizer_buffers(x, steps, causal, kept)
        tile, warps = _launch_shape(n)
        if matrices:
            _forward[(matrices,)](
                x,
                x if flat_mask is None else flat_mask,
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
                num_warps=warps,
            )
        if record:
            ctx.save_for_backward(x, rows, cols, prefix)
            ctx.mask, ctx.mask_stride = flat_mask, mask_stride
        ctx.steps, ctx.causal, ctx.shape = steps, causal, shape
        return out.view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, rows, cols, prefix = ctx.saved_tensors
        n = ctx.shape[-1]
        grad = grad.reshape(-1, n, n).contiguous()
        d_x = torch.empty_like(x)
        tile, warps = _launch_shape(n)
        if x.shape[0]:
            _backward[(x.shape[0],)](
                grad,
                x,
                x if ctx.mask is None else ctx.mask,
                d_x,
                rows,
                cols,
                prefix,
                n,
                ctx.steps,
                ctx.mask_stride,
                CAUSAL=ctx.causal,
                HAS_MASK=ctx.mask is not None,
                TILE=tile,
                num_warps=warps,
            )
        return d_x.view(ctx.shape), None, None, None, None


@torch.compiler.disable
def triton_log_sinkhorn(
    log_alpha: torch.Tensor, steps: int, *, mask: torch.Tensor | None = None, causal: bool = False
) -> torch.Tensor:
    """``log_sinkhorn`` in the two kernels, for (..., n, n) with n <= ``MAX_N`` (opaque to ``torch.compile``: a
    compiled model runs it eagerly, one graph break)."""
    n = log_alpha.shape[-1]
    if log_alpha.dim() < 2 or log_alpha.shape[-2] != n or n > MAX_N:
        raise ValueError(f"triton_log_sinkhorn: expected (..., n, n) with n <= {MAX_N}, got {tuple(log_alpha.shape)}")
    if steps < 0:
        raise ValueError(f"triton_log_sinkhorn: steps must be >= 0, got {steps}")
    record = torch.is_grad_enabled() and log_alpha.requires_grad
    return _TritonLogSinkhorn.apply(log_alpha, steps, mask, causal, record)
