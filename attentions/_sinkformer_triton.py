"""Triton forward of the non-causal chunked Sinkformer (``_sinkformer_chunked``): the balancing vectors and the output
without the L x L matrix, the scores recomputed in SRAM tiles in every pass.

One launch per balancing step: a row step reduces each query tile over all key tiles (``r_i = LSE_j (S_ij - c_j)``),
a column step each key tile over all query tiles (``c_j = LSE_i (S_ij - r_i)``), both with an online log-sum-exp; a
last launch forms ``exp(S - r - c) V`` flash-style. The backward is the chunked path's (torch operators on tiles), so
the gradient is the same exact one; the causal variant runs the chunked path. Tested under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os

import torch

from attentions._sinkformer_chunked import DEFAULT_TILE, _NonCausalSinkformer

try:
    import triton
    import triton.language as tl
except ImportError:  # the chunked torch path runs instead
    triton = None

BLOCK = 16  # rows and columns of a score tile (tl.dot needs at least 16)


def available(q: torch.Tensor) -> bool:
    """True where these kernels run: Triton importable and a CUDA tensor (or the interpreter, for tests)."""
    if triton is None:
        return False
    return q.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _row_step(q_ptr, k_ptr, valid_ptr, c_ptr, r_ptr, heads, length, scale, HAS_VALID: tl.constexpr,
                  D: tl.constexpr, BD: tl.constexpr, BLOCK_SIZE: tl.constexpr):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        bh = tl.program_id(1)
        dims = tl.arange(0, BD)
        base = bh * length * D
        m = tl.full((BLOCK_SIZE,), -1.0e30, tl.float32)
        total = tl.zeros((BLOCK_SIZE,), tl.float32)
        for start in range(0, length, BLOCK_SIZE):
            cols = start + tl.arange(0, BLOCK_SIZE)
            # scaled scores of rows x cols, masked entries -inf (inline: a nested jit helper is not always interpreted)
            in_d = dims[None, :] < D
            qt = tl.load(q_ptr + base + rows[:, None] * D + dims[None, :], (rows[:, None] < length) & in_d, 0.0)
            kt = tl.load(k_ptr + base + cols[:, None] * D + dims[None, :], (cols[:, None] < length) & in_d, 0.0)
            s = tl.dot(qt, tl.trans(kt)) * scale
            allowed = (rows[:, None] < length) & (cols[None, :] < length)
            if HAS_VALID:
                vr = tl.load(valid_ptr + (bh // heads) * length + rows, rows < length, 0)
                vc = tl.load(valid_ptr + (bh // heads) * length + cols, cols < length, 0)
                allowed = allowed & (vr[:, None] != 0) & (vc[None, :] != 0)
            s = tl.where(allowed, s, float("-inf"))
            c = tl.load(c_ptr + bh * length + cols, cols < length, 0.0)
            x = s - c[None, :]
            m_new = tl.maximum(m, tl.max(x, 1))
            total = total * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), 1)
            m = m_new
        r = tl.where(
            total > 0, m + tl.log(tl.where(total > 0, total, 1.0)), 0.0
        )  # a row with nothing allowed: offset 0, never read
        tl.store(r_ptr + bh * length + rows, r, rows < length)

    @triton.jit
    def _column_step(q_ptr, k_ptr, valid_ptr, r_ptr, c_ptr, heads, length, scale, HAS_VALID: tl.constexpr,
                     D: tl.constexpr, BD: tl.constexpr, BLOCK_SIZE: tl.constexpr):  # fmt: skip
        cols = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        bh = tl.program_id(1)
        dims = tl.arange(0, BD)
        base = bh * length * D
        m = tl.full((BLOCK_SIZE,), -1.0e30, tl.float32)
        total = tl.zeros((BLOCK_SIZE,), tl.float32)
        for start in range(0, length, BLOCK_SIZE):
            rows = start + tl.arange(0, BLOCK_SIZE)
            # scaled scores of rows x cols, masked entries -inf (inline: a nested jit helper is not always interpreted)
            in_d = dims[None, :] < D
            qt = tl.load(q_ptr + base + rows[:, None] * D + dims[None, :], (rows[:, None] < length) & in_d, 0.0)
            kt = tl.load(k_ptr + base + cols[:, None] * D + dims[None, :], (cols[:, None] < length) & in_d, 0.0)
            s = tl.dot(qt, tl.trans(kt)) * scale
            allowed = (rows[:, None] < length) & (cols[None, :] < length)
            if HAS_VALID:
                vr = tl.load(valid_ptr + (bh // heads) * length + rows, rows < length, 0)
                vc = tl.load(valid_ptr + (bh // heads) * length + cols, cols < length, 0)
                allowed = allowed & (vr[:, None] != 0) & (vc[None, :] != 0)
            s = tl.where(allowed, s, float("-inf"))
            r = tl.load(r_ptr + bh * length + rows, rows < length, 0.0)
            x = s - r[:, None]
            m_new = tl.maximum(m, tl.max(x, 0))
            total = total * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[None, :]), 0)
            m = m_new
        c = tl.where(total > 0, m + tl.log(tl.where(total > 0, total, 1.0)), 0.0)
        tl.store(c_ptr + bh * length + cols, c, cols < length)

    @triton.jit
    def _output(q_ptr, k_ptr, v_ptr, valid_ptr, r_ptr, c_ptr, o_ptr, heads, length, scale, HAS_VALID: tl.constexpr,
                D: tl.constexpr, BD: tl.constexpr, BLOCK_SIZE: tl.constexpr):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        bh = tl.program_id(1)
        dims = tl.arange(0, BD)
        base = bh * length * D
        r = tl.load(r_ptr + bh * length + rows, rows < length, 0.0)
        acc = tl.zeros((BLOCK_SIZE, BD), tl.float32)
        for start in range(0, length, BLOCK_SIZE):
            cols = start + tl.arange(0, BLOCK_SIZE)
            # scaled scores of rows x cols, masked entries -inf (inline: a nested jit helper is not always interpreted)
            in_d = dims[None, :] < D
            qt = tl.load(q_ptr + base + rows[:, None] * D + dims[None, :], (rows[:, None] < length) & in_d, 0.0)
            kt = tl.load(k_ptr + base + cols[:, None] * D + dims[None, :], (cols[:, None] < length) & in_d, 0.0)
            s = tl.dot(qt, tl.trans(kt)) * scale
            allowed = (rows[:, None] < length) & (cols[None, :] < length)
            if HAS_VALID:
                vr = tl.load(valid_ptr + (bh // heads) * length + rows, rows < length, 0)
                vc = tl.load(valid_ptr + (bh // heads) * length + cols, cols < length, 0)
                allowed = allowed & (vr[:, None] != 0) & (vc[None, :] != 0)
            s = tl.where(allowed, s, float("-inf"))
            c = tl.load(c_ptr + bh * length + cols, cols < length, 0.0)
            p = tl.exp(s - r[:, None] - c[None, :])
            vt = tl.load(
                v_ptr + bh * length * D + cols[:, None] * D + dims[None, :],
                (cols[:, None] < length) & (dims[None, :] < D),
                0.0,
            )
            acc += tl.dot(p.to(vt.dtype), vt)
        tl.store(
            o_ptr + bh * length * D + rows[:, None] * D + dims[None, :],
            acc.to(o_ptr.dtype.element_ty),
            (rows[:, None] < length) & (dims[None, :] < D),
        )


def triton_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, H, L, D) and the balancing vectors (steps, B, H, L), float32, as the chunked path defines them."""
    batch, heads, length, dim = q.shape
    q, k, v = (t.contiguous() for t in (q, k, v))
    flat_valid = valid.to(torch.int8).contiguous() if valid is not None else q.new_zeros(1, dtype=torch.int8)
    vectors = torch.zeros(steps, batch, heads, length, device=q.device, dtype=torch.float32)
    zeros = torch.zeros(batch, heads, length, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(length, BLOCK), batch * heads)
    common = dict(HAS_VALID=valid is not None, D=dim, BD=max(16, triton.next_power_of_2(dim)), BLOCK_SIZE=BLOCK)
    scale = dim**-0.5
    r, c = zeros, zeros
    for step in range(steps):
        if step % 2 == 0:
            _row_step[grid](q, k, flat_valid, c, vectors[step], heads, length, scale, **common)
            r = vectors[step]
        else:
            _column_step[grid](q, k, flat_valid, r, vectors[step], heads, length, scale, **common)
            c = vectors[step]
    out = torch.empty_like(q)
    _output[grid](q, k, v, flat_valid, r, c, out, heads, length, scale, **common)
    return out, vectors


class TritonForwardSinkformer(_NonCausalSinkformer):
    """The Triton forward with the chunked path's backward (same saved tensors, same gradient)."""

    @staticmethod
    def forward(ctx, q, k, v, valid, steps, tile):
        out, vectors = triton_forward(q, k, v, valid, steps)
        ctx.save_for_backward(q, k, v, out, valid, vectors.to(q.dtype))
        ctx.steps, ctx.tile = steps, tile
        return out


def triton_sinkformer(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, steps: int
) -> torch.Tensor:
    """Non-causal Sinkformer with the Triton forward; the backward is the chunked path's."""
    if steps < 1:
        raise ValueError(f"sinkformer: iterations must be >= 1, got {steps}")
    return TritonForwardSinkformer.apply(q, k, v, valid, steps, DEFAULT_TILE)
