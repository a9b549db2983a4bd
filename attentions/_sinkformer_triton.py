"""Triton kernels of the chunked Sinkformer (``_sinkformer_chunked``) without the L x L matrix: every pass recomputes
its score tiles in SRAM from q and k and keeps only per-row or per-column vectors (non-causal) or per-column carries
(causal). Both variants: forward and backward.

Forward, one launch per balancing step: a row step reduces each query tile over all key tiles (``r_i = LSE_j (S_ij -
c_j)``), a column step each key tile over all query tiles (``c_j = LSE_i (S_ij - r_i)``), both with an online
log-sum-exp; a last launch forms ``exp(S - r - c) V`` flash-style.

Backward, ``steps + 2`` launches, the recursion of ``_NonCausalSinkformer.backward`` on the same vectors: one launch
over the key tiles forms ``dV = P^T dO`` and the last column offsets' adjoint ``-rowdot(V, dV)`` (the last row
offsets' adjoint, ``-rowdot(dO, O)``, is one torch reduction of size L x D); each balancing step t > 1
is one launch passing ``-sum(adjoint_t * W_t)`` along its axis to the vector it read (a row step sums over query tiles,
a column step over key tiles); then ``dS = P * dP + sum_t adjoint_t * W_t`` is recomputed tile by tile into dQ (one
launch over query tiles) and dK (one over key tiles), so neither needs atomics. Every kernel builds its score tile
with the one helper ``_scores``.

Exponentials, reductions and the vectors are float32 whatever the input dtype; the tile products take the inputs'
dtype (P and dS are cast to it) and accumulate in float32, float32 inputs in full float32 (not TF32), as the chunked
path's ``torch.matmul``.

Causal forward, one launch, one program per (batch, head): a causal column step of row i reads the rows above it, and
a row step of row i reads its whole row after the column steps before it, whose per-entry offsets no vector holds.
So each program walks down the query tiles in order and runs every step on a tile before the next. Per column step it
keeps a carry per column in global memory (the log-sum of the rows above, as the chunked path's carries); a column
step of a tile is a prefix scan down the tile started from that carry. Each row step of a tile is one sweep over the
key tiles up to the diagonal, replaying each key tile through the earlier steps (O(steps^2) subtractions and scans
per entry, one score product per sweep); a last sweep forms ``exp(x) V`` and moves the carries past the tile. Before
every checkpoint tile of the chunked backward the carries are copied out, in the layout ``_CausalSinkformer.forward``
saves (``triton_causal_forward`` hands them over in its dtype, so the chunked backward can run on them). The
parallelism is batch * heads programs only: the walk down the tiles is sequential by the definition of the causal
column step.

Causal backward, one launch, one program per (batch, head), computing what ``_CausalSinkformer.backward`` computes from
the same checkpoints (kept in float32): it walks up the query tiles. Per segment of tiles between two checkpoints, last
first, it runs the segment's forward again from its checkpoint, storing the tiles' row offsets and the carries entering
each of the chunked path's tiles (``tile`` rows) in a scratch buffer in global memory; per such tile, last first, it
recomputes from those the carries entering each of its 16-row kernel tiles. Then per kernel tile, last first, from
``g = P * dP`` each step is undone in reverse on each key tile: a row step's ``g - W * rowsum(g)`` needs its row sums
over all key tiles, so every row step costs one sweep over the key tiles that stores them; a column step's is a
reverse scan up the tile's rows (``A_i = sum_{i' >= i} a_i' exp(P_i - P_i')``, ``a = -g`` plus the adjoint of the
carry leaving the tile on its last row), which also gives the adjoint of the carry entering the tile. A last sweep
forms ``dS`` per key tile into dQ (registers), dK and dV (float32 in global memory, added to across query tiles; only
this program writes this head's rows, so no atomics). Each sweep replays each key tile through the steps, O(steps^3)
subtractions and scans per entry in all. Scratch per (batch, head): ``segment + tile / 16`` sets of ``steps // 2``
carries of length L, the row offsets and row sums (O(steps * L)), two sets of carry adjoints; the segment's forward
runs twice (once per level).

``ATTNBENCH_TRITON_CUDA=0`` switches these kernels off with the other Triton kernels (``sinkformer`` then runs the
chunked path). The kernels are tested on the CPU under ``TRITON_INTERPRET=1`` only; none of them has run compiled on
a GPU (the interpreter ignores the barriers between the causal kernels' sweeps and has no register limit).
"""

from __future__ import annotations

import os

import torch
from torch.autograd.function import once_differentiable

from attentions._sinkformer_chunked import DEFAULT_TILE, checkpoint_segment

try:
    import triton
    import triton.language as tl
except ImportError:  # the chunked torch path runs instead
    triton = None

BLOCK = 16  # rows and columns of a score tile (tl.dot needs at least 16)


def available(q: torch.Tensor) -> bool:
    """True where these kernels run: Triton importable, not switched off (``ATTNBENCH_TRITON_CUDA=0``, as the other
    Triton kernels; then the chunked path runs), and a CUDA tensor (or the interpreter, for tests)."""
    if triton is None or os.environ.get("ATTNBENCH_TRITON_CUDA", "1") == "0":
        return False
    return q.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:
    from attentions.sinkhorn.triton_balancing import _lse_combine, _lse_partial, _lse_value, _prefix_pairs

    @triton.jit
    def _load_rows(ptr, base, rows, length, D: tl.constexpr, BD: tl.constexpr):
        """(rows, BD) tile of the (length, D) matrix at ``base``; rows past the end and the dims past D are 0."""
        dims = tl.arange(0, BD)
        return tl.load(
            ptr + base + rows[:, None] * D + dims[None, :], (rows[:, None] < length) & (dims[None, :] < D), 0.0
        )

    @triton.jit
    def _store_rows(ptr, base, rows, length, tile, D: tl.constexpr, BD: tl.constexpr):
        """Writes the (rows, BD) ``tile`` into the (length, D) matrix at ``base`` in its dtype, dropping the padding."""
        dims = tl.arange(0, BD)
        mask = (rows[:, None] < length) & (dims[None, :] < D)
        tl.store(ptr + base + rows[:, None] * D + dims[None, :], tile.to(ptr.dtype.element_ty), mask)

    @triton.jit
    def _add_rows(ptr, base, rows, length, tile, D: tl.constexpr, BD: tl.constexpr):
        """Adds the (rows, BD) ``tile`` to the (length, D) matrix at ``base`` (read, add, write: one program only)."""
        _store_rows(ptr, base, rows, length, _load_rows(ptr, base, rows, length, D, BD) + tile, D, BD)

    @triton.jit
    def _load_vector(ptr, base, index, length):
        """Entries ``index`` of the float32 vector at ``base``; 0 past the end."""
        return tl.load(ptr + base + index, index < length, 0.0)

    @triton.jit
    def _scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID: tl.constexpr, PRECISION: tl.constexpr):
        """Scaled scores ``q_i . k_j / sqrt(d)`` of the rows x cols tile; -inf outside the sequence and wherever the
        query or the key is padding (``valid`` 0)."""
        s = tl.dot(qt, tl.trans(kt), input_precision=PRECISION) * scale
        allowed = (rows[:, None] < length) & (cols[None, :] < length)
        if HAS_VALID:
            valid_row = tl.load(valid_ptr + vbase + rows, rows < length, 0)
            valid_col = tl.load(valid_ptr + vbase + cols, cols < length, 0)
            allowed = allowed & (valid_row[:, None] != 0) & (valid_col[None, :] != 0)
        return tl.where(allowed, s, float("-inf"))

    @triton.jit
    def _finite_lse(m, total):
        """The log-sum of an online reduction; 0 where nothing was allowed (offset 0 keeps S - r - c at -inf)."""
        return tl.where(total > 0, m + tl.log(tl.where(total > 0, total, 1.0)), 0.0)

    # ----------------------------------------------------------------------------------------- forward

    @triton.jit
    def _row_step(q_ptr, k_ptr, valid_ptr, c_ptr, r_ptr, heads, length, scale, HAS_VALID: tl.constexpr,
                  D: tl.constexpr, BD: tl.constexpr, BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """r_i = LSE_j (S_ij - c_j) for one query tile."""
        rows = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        bh = tl.program_id(1)
        base, vbase, obase = bh * length * D, (bh // heads) * length, bh * length
        qt = _load_rows(q_ptr, base, rows, length, D, BD)
        m = tl.full((BLOCK_SIZE,), -1.0e30, tl.float32)
        total = tl.zeros((BLOCK_SIZE,), tl.float32)
        for start in range(0, length, BLOCK_SIZE):
            cols = start + tl.arange(0, BLOCK_SIZE)
            kt = _load_rows(k_ptr, base, cols, length, D, BD)
            s = _scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID, PRECISION)
            x = s - _load_vector(c_ptr, obase, cols, length)[None, :]
            m_new = tl.maximum(m, tl.max(x, 1))
            total = total * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), 1)
            m = m_new
        tl.store(r_ptr + obase + rows, _finite_lse(m, total), rows < length)

    @triton.jit
    def _column_step(q_ptr, k_ptr, valid_ptr, r_ptr, c_ptr, heads, length, scale, HAS_VALID: tl.constexpr,
                     D: tl.constexpr, BD: tl.constexpr, BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """c_j = LSE_i (S_ij - r_i) for one key tile."""
        cols = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        bh = tl.program_id(1)
        base, vbase, obase = bh * length * D, (bh // heads) * length, bh * length
        kt = _load_rows(k_ptr, base, cols, length, D, BD)
        m = tl.full((BLOCK_SIZE,), -1.0e30, tl.float32)
        total = tl.zeros((BLOCK_SIZE,), tl.float32)
        for start in range(0, length, BLOCK_SIZE):
            rows = start + tl.arange(0, BLOCK_SIZE)
            qt = _load_rows(q_ptr, base, rows, length, D, BD)
            s = _scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID, PRECISION)
            x = s - _load_vector(r_ptr, obase, rows, length)[:, None]
            m_new = tl.maximum(m, tl.max(x, 0))
            total = total * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[None, :]), 0)
            m = m_new
        tl.store(c_ptr + obase + cols, _finite_lse(m, total), cols < length)

    @triton.jit
    def _output(q_ptr, k_ptr, v_ptr, valid_ptr, r_ptr, c_ptr, o_ptr, heads, length, scale, HAS_VALID: tl.constexpr,
                D: tl.constexpr, BD: tl.constexpr, BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """O = exp(S - r - c) V for one query tile."""
        rows = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        bh = tl.program_id(1)
        base, vbase, obase = bh * length * D, (bh // heads) * length, bh * length
        qt = _load_rows(q_ptr, base, rows, length, D, BD)
        r = _load_vector(r_ptr, obase, rows, length)
        acc = tl.zeros((BLOCK_SIZE, BD), tl.float32)
        for start in range(0, length, BLOCK_SIZE):
            cols = start + tl.arange(0, BLOCK_SIZE)
            kt = _load_rows(k_ptr, base, cols, length, D, BD)
            s = _scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID, PRECISION)
            p = tl.exp(s - r[:, None] - _load_vector(c_ptr, obase, cols, length)[None, :])
            vt = _load_rows(v_ptr, base, cols, length, D, BD)
            acc += tl.dot(p.to(vt.dtype), vt, input_precision=PRECISION)
        _store_rows(o_ptr, base, rows, length, acc, D, BD)

    # ----------------------------------------------------------------------------------------- backward

    @triton.jit
    def _value_grad(q_ptr, k_ptr, v_ptr, do_ptr, valid_ptr, r_ptr, c_ptr, dv_ptr, adjoint_ptr, heads, length, scale,
                    HAS_VALID: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                    BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """For one key tile: dV = P^T dO, and the adjoint of the last column offsets, -rowdot(V, dV)."""
        cols = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        bh = tl.program_id(1)
        base, vbase, obase = bh * length * D, (bh // heads) * length, bh * length
        kt = _load_rows(k_ptr, base, cols, length, D, BD)
        c = _load_vector(c_ptr, obase, cols, length)
        acc = tl.zeros((BLOCK_SIZE, BD), tl.float32)
        for start in range(0, length, BLOCK_SIZE):
            rows = start + tl.arange(0, BLOCK_SIZE)
            qt = _load_rows(q_ptr, base, rows, length, D, BD)
            s = _scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID, PRECISION)
            p = tl.exp(s - _load_vector(r_ptr, obase, rows, length)[:, None] - c[None, :])
            grad_o = _load_rows(do_ptr, base, rows, length, D, BD)
            acc += tl.dot(tl.trans(p).to(grad_o.dtype), grad_o, input_precision=PRECISION)
        vt = _load_rows(v_ptr, base, cols, length, D, BD).to(tl.float32)
        tl.store(adjoint_ptr + obase + cols, -tl.sum(vt * acc, 1), cols < length)
        _store_rows(dv_ptr, base, cols, length, acc, D, BD)

    @triton.jit
    def _row_adjoint(q_ptr, k_ptr, valid_ptr, r_ptr, c_ptr, a_ptr, target_ptr, heads, length, scale,
                     HAS_VALID: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                     BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """A column step's adjoint ``a`` (per column) into the row offsets it read: target_i -= sum_j W_ij a_j, with
        W = exp(S - r - c) the matrix after that step. One query tile."""
        rows = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        bh = tl.program_id(1)
        base, vbase, obase = bh * length * D, (bh // heads) * length, bh * length
        qt = _load_rows(q_ptr, base, rows, length, D, BD)
        r = _load_vector(r_ptr, obase, rows, length)
        passed = tl.zeros((BLOCK_SIZE,), tl.float32)
        for start in range(0, length, BLOCK_SIZE):
            cols = start + tl.arange(0, BLOCK_SIZE)
            kt = _load_rows(k_ptr, base, cols, length, D, BD)
            s = _scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID, PRECISION)
            w = tl.exp(s - r[:, None] - _load_vector(c_ptr, obase, cols, length)[None, :])
            passed += tl.sum(w * _load_vector(a_ptr, obase, cols, length)[None, :], 1)
        target = _load_vector(target_ptr, obase, rows, length)
        tl.store(target_ptr + obase + rows, target - passed, rows < length)

    @triton.jit
    def _column_adjoint(q_ptr, k_ptr, valid_ptr, r_ptr, c_ptr, a_ptr, target_ptr, heads, length, scale,
                        HAS_VALID: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                        BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """A row step's adjoint ``a`` (per row) into the column offsets it read: target_j -= sum_i a_i W_ij. One key
        tile."""
        cols = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        bh = tl.program_id(1)
        base, vbase, obase = bh * length * D, (bh // heads) * length, bh * length
        kt = _load_rows(k_ptr, base, cols, length, D, BD)
        c = _load_vector(c_ptr, obase, cols, length)
        passed = tl.zeros((BLOCK_SIZE,), tl.float32)
        for start in range(0, length, BLOCK_SIZE):
            rows = start + tl.arange(0, BLOCK_SIZE)
            qt = _load_rows(q_ptr, base, rows, length, D, BD)
            s = _scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID, PRECISION)
            w = tl.exp(s - _load_vector(r_ptr, obase, rows, length)[:, None] - c[None, :])
            passed += tl.sum(_load_vector(a_ptr, obase, rows, length)[:, None] * w, 0)
        target = _load_vector(target_ptr, obase, cols, length)
        tl.store(target_ptr + obase + cols, target - passed, cols < length)

    @triton.jit
    def _score_grad(s, dp, rows, cols, r_ptr, c_ptr, ar_ptr, ac_ptr, obase, plane, length, steps):
        """dS of one tile: ``P * dP + sum_t (ar_t[i] + ac_t[j]) * W_t[i, j]``, where ``W_t = exp(S - r_t - c_t)`` is
        the matrix after step t, ``P = W_steps``, and ``ar_t`` / ``ac_t`` the step's adjoint on its axis (0 on the
        other). The four vectors are (steps, batch * heads, length) float32; ``plane`` is a step's stride."""
        last = (steps - 1) * plane + obase
        weight = _load_vector(ar_ptr, last, rows, length)[:, None] + _load_vector(ac_ptr, last, cols, length)[None, :]
        w = tl.exp(
            s - _load_vector(r_ptr, last, rows, length)[:, None] - _load_vector(c_ptr, last, cols, length)[None, :]
        )
        grad = w * (dp + weight)
        for t in range(0, steps - 1):
            at = t * plane + obase
            weight = _load_vector(ar_ptr, at, rows, length)[:, None] + _load_vector(ac_ptr, at, cols, length)[None, :]
            w = tl.exp(
                s - _load_vector(r_ptr, at, rows, length)[:, None] - _load_vector(c_ptr, at, cols, length)[None, :]
            )
            grad += weight * w
        return grad

    @triton.jit
    def _query_grad(q_ptr, k_ptr, v_ptr, do_ptr, valid_ptr, r_ptr, c_ptr, ar_ptr, ac_ptr, dq_ptr, heads, length,
                    steps, scale, HAS_VALID: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                    BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """dQ = dS K / sqrt(d) for one query tile."""
        rows = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        bh = tl.program_id(1)
        base, vbase, obase = bh * length * D, (bh // heads) * length, bh * length
        plane = tl.num_programs(1) * length
        qt = _load_rows(q_ptr, base, rows, length, D, BD)
        grad_o = _load_rows(do_ptr, base, rows, length, D, BD)
        acc = tl.zeros((BLOCK_SIZE, BD), tl.float32)
        for start in range(0, length, BLOCK_SIZE):
            cols = start + tl.arange(0, BLOCK_SIZE)
            kt = _load_rows(k_ptr, base, cols, length, D, BD)
            s = _scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID, PRECISION)
            dp = tl.dot(grad_o, tl.trans(_load_rows(v_ptr, base, cols, length, D, BD)), input_precision=PRECISION)
            ds = _score_grad(s, dp, rows, cols, r_ptr, c_ptr, ar_ptr, ac_ptr, obase, plane, length, steps)
            acc += tl.dot(ds.to(kt.dtype), kt, input_precision=PRECISION)
        _store_rows(dq_ptr, base, rows, length, acc * scale, D, BD)

    @triton.jit
    def _key_grad(q_ptr, k_ptr, v_ptr, do_ptr, valid_ptr, r_ptr, c_ptr, ar_ptr, ac_ptr, dk_ptr, heads, length,
                  steps, scale, HAS_VALID: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                  BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """dK = dS^T Q / sqrt(d) for one key tile."""
        cols = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        bh = tl.program_id(1)
        base, vbase, obase = bh * length * D, (bh // heads) * length, bh * length
        plane = tl.num_programs(1) * length
        kt = _load_rows(k_ptr, base, cols, length, D, BD)
        vt = _load_rows(v_ptr, base, cols, length, D, BD)
        acc = tl.zeros((BLOCK_SIZE, BD), tl.float32)
        for start in range(0, length, BLOCK_SIZE):
            rows = start + tl.arange(0, BLOCK_SIZE)
            qt = _load_rows(q_ptr, base, rows, length, D, BD)
            s = _scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID, PRECISION)
            dp = tl.dot(_load_rows(do_ptr, base, rows, length, D, BD), tl.trans(vt), input_precision=PRECISION)
            ds = _score_grad(s, dp, rows, cols, r_ptr, c_ptr, ar_ptr, ac_ptr, obase, plane, length, steps)
            acc += tl.dot(tl.trans(ds).to(qt.dtype), qt, input_precision=PRECISION)
        _store_rows(dk_ptr, base, cols, length, acc * scale, D, BD)

    # ----------------------------------------------------------------------------------------- causal forward

    @triton.jit
    def _causal_scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID: tl.constexpr,
                       PRECISION: tl.constexpr):  # fmt: skip
        """``_scores`` with the causal triangle: -inf also where the key comes after the query (j > i)."""
        s = _scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID, PRECISION)
        return tl.where(cols[None, :] <= rows[:, None], s, float("-inf"))

    @triton.jit
    def _carried_prefix(x, carry):
        """Per entry of the tile ``x``, the log-sum of its column over the rows above the tile (``carry``, -inf while
        nothing above is allowed) and the tile's rows up to it; -inf while nothing is allowed."""
        carried = tl.where(carry == float("-inf"), 0.0, 1.0)
        top, total = _prefix_pairs(x)
        top, total = _lse_combine(carry[None, :], carried[None, :], top, total)
        return top + tl.log(total)

    @triton.jit
    def _causal_balance(x, rows, cols, norm_ptr, carry_ptr, obase, plane, length, upto, UPDATE: tl.constexpr):
        """The (rows, cols) tile ``x`` of masked scores after balancing steps 0..upto-1 (-inf where not allowed).
        A row step subtracts its stored row offsets; a column step subtracts, per entry, the log-sum of its column over
        the rows up to it: a scan inside the tile started from the carry of the rows above. ``norm_ptr`` is
        (steps, batch * heads, length) float32 (row step s at s), ``carry_ptr`` (steps // 2, batch * heads, length)
        (column step s at s // 2), ``plane`` a step's stride. With ``UPDATE`` each column step's carry moves past this
        tile's rows."""
        for step in range(0, upto):
            if step % 2 == 0:
                x = x - _load_vector(norm_ptr, step * plane + obase, rows, length)[:, None]
            else:
                at = (step // 2) * plane + obase
                carry = tl.load(carry_ptr + at + cols, cols < length, float("-inf"))
                prefix = _carried_prefix(x, carry)
                if UPDATE:
                    tile_top, tile_total = _lse_partial(x, 0)
                    carried = tl.where(carry == float("-inf"), 0.0, 1.0)
                    leaving_top, leaving_total = _lse_combine(carry, carried, tile_top, tile_total)
                    tl.store(carry_ptr + at + cols, leaving_top + tl.log(leaving_total), cols < length)
                x = x - tl.where(prefix == float("-inf"), 0.0, prefix)
        return x

    @triton.jit
    def _copy_vectors(src_ptr, dst_ptr, count, plane, obase, length, BLOCK_SIZE: tl.constexpr):
        """Copies this (batch, head)'s entries of ``count`` (batch * heads, length) planes, ``plane`` apart."""
        for m in range(0, count):
            for start in range(0, length, BLOCK_SIZE):
                cols = start + tl.arange(0, BLOCK_SIZE)
                at = m * plane + obase + cols
                tl.store(dst_ptr + at, tl.load(src_ptr + at, cols < length), cols < length)

    @triton.jit
    def _causal_row_steps(qt, rows, first, k_ptr, valid_ptr, norm_ptr, carry_ptr, base, vbase, obase, plane, length,
                          steps, scale, HAS_VALID: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                          BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """The row offsets of the query tile ``rows`` (from ``first``), every row step's into ``norm_ptr``: each one
        online log-sum-exp over the key tiles up to the diagonal, each key tile replayed through the earlier steps
        from the carries entering the tile (``carry_ptr``)."""
        for step in range(0, steps, 2):  # row steps: r_i = LSE_j x_ij after the steps before
            top = tl.full((BLOCK_SIZE,), float("-inf"), tl.float32)
            total = tl.zeros((BLOCK_SIZE,), tl.float32)
            for start in range(0, first + BLOCK_SIZE, BLOCK_SIZE):
                cols = start + tl.arange(0, BLOCK_SIZE)
                kt = _load_rows(k_ptr, base, cols, length, D, BD)
                s = _causal_scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID, PRECISION)
                x = _causal_balance(s, rows, cols, norm_ptr, carry_ptr, obase, plane, length, step, False)
                part_top, part_total = _lse_partial(x, 1)
                top, total = _lse_combine(top, total, part_top, part_total)
            tl.store(norm_ptr + step * plane + obase + rows, _lse_value(top, total), rows < length)
            tl.debug_barrier()  # the next sweep reads, in other threads, the offsets just stored

    @triton.jit
    def _causal_last_sweep(qt, rows, first, k_ptr, v_ptr, valid_ptr, norm_ptr, carry_ptr, base, vbase, obase, plane,
                           length, steps, scale, HAS_VALID: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                           BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr, OUTPUT: tl.constexpr):  # fmt: skip
        """After ``_causal_row_steps``: moves the carries at ``carry_ptr`` past the query tile and, with ``OUTPUT``,
        returns its rows of ``exp(x) V`` (zeros without)."""
        acc = tl.zeros((BLOCK_SIZE, BD), tl.float32)
        for start in range(0, first + BLOCK_SIZE, BLOCK_SIZE):
            cols = start + tl.arange(0, BLOCK_SIZE)
            kt = _load_rows(k_ptr, base, cols, length, D, BD)
            s = _causal_scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID, PRECISION)
            x = _causal_balance(s, rows, cols, norm_ptr, carry_ptr, obase, plane, length, steps, True)
            if OUTPUT:
                vt = _load_rows(v_ptr, base, cols, length, D, BD)
                acc += tl.dot(tl.exp(x).to(vt.dtype), vt, input_precision=PRECISION)
        tl.debug_barrier()  # the next query tile reads the carries this one moved
        return acc

    @triton.jit
    def _causal_forward(q_ptr, k_ptr, v_ptr, valid_ptr, norm_ptr, carry_ptr, saved_ptr, o_ptr, heads, length, steps,
                        every, scale, HAS_VALID: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                        BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """Causal Sinkformer output of one (batch, head), walking down the query tiles in order (a column step of a
        row reads the rows above it). Per query tile: the row steps' offsets (``_causal_row_steps``), then one more
        sweep forms ``exp(x) V`` and moves the column steps' carries past the tile. Before every ``every``-th tile the
        carries are copied to ``saved`` ((checkpoints, steps // 2, batch * heads, length)) for the backward."""
        bh = tl.program_id(0)
        base, vbase, obase = bh * length * D, (bh // heads) * length, bh * length
        plane = tl.num_programs(0) * length
        columns = steps // 2
        for first in range(0, length, BLOCK_SIZE):
            tile = first // BLOCK_SIZE
            if tile % every == 0:
                checkpoint = saved_ptr + (tile // every) * columns * plane
                _copy_vectors(carry_ptr, checkpoint, columns, plane, obase, length, BLOCK_SIZE)
            rows = first + tl.arange(0, BLOCK_SIZE)
            qt = _load_rows(q_ptr, base, rows, length, D, BD)
            _causal_row_steps(qt, rows, first, k_ptr, valid_ptr, norm_ptr, carry_ptr, base, vbase, obase, plane, length,
                              steps, scale, HAS_VALID, D, BD, BLOCK_SIZE, PRECISION)  # fmt: skip
            acc = _causal_last_sweep(qt, rows, first, k_ptr, v_ptr, valid_ptr, norm_ptr, carry_ptr, base, vbase,
                                     obase, plane, length, steps, scale, HAS_VALID, D, BD, BLOCK_SIZE, PRECISION,
                                     True)  # fmt: skip
            _store_rows(o_ptr, base, rows, length, acc, D, BD)

    # ----------------------------------------------------------------------------------------- causal backward

    @triton.jit
    def _suffix_combine(p_below, s_below, p_above, s_above):
        """Two row ranges of the sum ``sum_i a_i exp(P_first - P_i)`` (P a column's prefix log-sums, so it never
        falls down the column): ``(P_first, sum)`` of the range below and of the range above, composed for a scan run
        from the last row up. A range that starts on a prefix of nothing passes nothing up."""
        factor = tl.where(p_above == float("-inf"), 0.0, tl.exp(p_above - p_below))
        return p_above, s_above + factor * s_below

    @triton.jit
    def _causal_unwind(s, dp, rows, cols, norm_ptr, carry_ptr, sums_ptr, leaving_ptr, entering_ptr, obase, plane,
                       length, steps, downto, STORE: tl.constexpr):  # fmt: skip
        """The gradient of the loss with respect to the tile ``x`` after steps 0..downto-1 (``s``: the masked scores,
        ``dp = dO V^T``), and ``P = exp(x)`` after all steps. From ``g = P * dp`` each step is undone in reverse: a row
        step's ``g - W * rowsum(g)`` reads the row sums from ``sums_ptr`` (a whole row spans every key tile, so an
        earlier sweep stored them); a column step's is ``g + W * A`` with ``A_i = sum_{i' >= i} a_i' exp(P_i - P_i')``
        up the tile's rows, ``a = -g`` plus, on the last row, the adjoint of the carry leaving the tile
        (``leaving_ptr``). ``W`` is the matrix after the step. With ``STORE`` the adjoint of the carry entering the
        tile, ``exp(carry - P_first) * A_first``, goes to ``entering_ptr``. Buffers as ``_causal_balance``'s (the sums
        as the offsets, the adjoints as the carries)."""
        p = tl.exp(_causal_balance(s, rows, cols, norm_ptr, carry_ptr, obase, plane, length, steps, False))
        g = p * dp
        for back in range(0, steps - downto):
            step = steps - 1 - back
            x = _causal_balance(s, rows, cols, norm_ptr, carry_ptr, obase, plane, length, step, False)
            if step % 2 == 0:
                at = step * plane + obase
                w = tl.exp(x - _load_vector(norm_ptr, at, rows, length)[:, None])
                g = g - w * _load_vector(sums_ptr, at, rows, length)[:, None]
            else:
                at = (step // 2) * plane + obase
                carry = tl.load(carry_ptr + at + cols, cols < length, float("-inf"))
                prefix = _carried_prefix(x, carry)
                w = tl.exp(x - tl.where(prefix == float("-inf"), 0.0, prefix))
                last = (rows == tl.max(rows, 0))[:, None]
                a = tl.where(last, _load_vector(leaving_ptr, at, cols, length)[None, :], 0.0) - g
                _, up = tl.associative_scan((prefix, a), 0, _suffix_combine, reverse=True)
                g = g + w * up
                if STORE:
                    head = rows == tl.min(rows, 0)
                    passed = tl.where(
                        carry == float("-inf"),
                        0.0,
                        tl.exp(carry - tl.max(tl.where(head[:, None], prefix, float("-inf")), 0)),
                    )
                    entered = passed * tl.sum(tl.where(head[:, None], up, 0.0), 0)
                    tl.store(entering_ptr + at + cols, entered, cols < length)
        return g, p

    @triton.jit
    def _causal_tile_backward(q_ptr, k_ptr, v_ptr, do_ptr, valid_ptr, norm_ptr, sums_ptr, carry_ptr, leaving_ptr,
                              entering_ptr, dq_ptr, dk_ptr, dv_ptr, first, base, vbase, obase, plane, length, steps,
                              scale, HAS_VALID: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                              BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """The backward of the query tile from row ``first``, given the carries entering it (``carry_ptr``), its row
        offsets and the adjoint of the carries leaving it (``leaving_ptr``): one sweep over the key tiles per row step
        stores the row sums that step's backward needs, then a last sweep forms ``dS`` per key tile into dQ (registers,
        stored at the end) and dK, dV (float32 in global memory, added to: only this program writes this head's rows),
        and the adjoint of the carries entering the tile (``entering_ptr``)."""
        rows = first + tl.arange(0, BLOCK_SIZE)
        qt = _load_rows(q_ptr, base, rows, length, D, BD)
        grad_o = _load_rows(do_ptr, base, rows, length, D, BD)
        for back_step in range(0, (steps + 1) // 2):  # row steps, last first: their row sums
            step = steps - 1 - (steps - 1) % 2 - 2 * back_step
            total = tl.zeros((BLOCK_SIZE,), tl.float32)
            for start in range(0, first + BLOCK_SIZE, BLOCK_SIZE):
                cols = start + tl.arange(0, BLOCK_SIZE)
                kt = _load_rows(k_ptr, base, cols, length, D, BD)
                vt = _load_rows(v_ptr, base, cols, length, D, BD)
                s = _causal_scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID, PRECISION)
                dp = tl.dot(grad_o, tl.trans(vt), input_precision=PRECISION)
                g, _ = _causal_unwind(s, dp, rows, cols, norm_ptr, carry_ptr, sums_ptr, leaving_ptr, entering_ptr,
                                      obase, plane, length, steps, step + 1, False)  # fmt: skip
                total += tl.sum(g, 1)
            tl.store(sums_ptr + step * plane + obase + rows, total, rows < length)
            tl.debug_barrier()
        acc = tl.zeros((BLOCK_SIZE, BD), tl.float32)
        for start in range(0, first + BLOCK_SIZE, BLOCK_SIZE):
            cols = start + tl.arange(0, BLOCK_SIZE)
            kt = _load_rows(k_ptr, base, cols, length, D, BD)
            vt = _load_rows(v_ptr, base, cols, length, D, BD)
            s = _causal_scores(qt, kt, valid_ptr, vbase, rows, cols, length, scale, HAS_VALID, PRECISION)
            dp = tl.dot(grad_o, tl.trans(vt), input_precision=PRECISION)
            ds, p = _causal_unwind(s, dp, rows, cols, norm_ptr, carry_ptr, sums_ptr, leaving_ptr, entering_ptr, obase,
                                   plane, length, steps, 0, True)  # fmt: skip
            acc += tl.dot(ds.to(kt.dtype), kt, input_precision=PRECISION)
            grad_k = tl.dot(tl.trans(ds).to(qt.dtype), qt, input_precision=PRECISION) * scale
            _add_rows(dk_ptr, base, cols, length, grad_k, D, BD)
            grad_v = tl.dot(tl.trans(p).to(grad_o.dtype), grad_o, input_precision=PRECISION)
            _add_rows(dv_ptr, base, cols, length, grad_v, D, BD)
        _store_rows(dq_ptr, base, rows, length, acc * scale, D, BD)
        tl.debug_barrier()  # the tile above reads the carries' adjoints and adds to dK, dV

    @triton.jit
    def _causal_backward(q_ptr, k_ptr, v_ptr, do_ptr, valid_ptr, saved_ptr, norm_ptr, sums_ptr, carry_ptr, tile_ptr,
                         adjoint_ptr, dq_ptr, dk_ptr, dv_ptr, heads, length, steps, every, group, slot, scale,
                         HAS_VALID: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                         PRECISION: tl.constexpr):  # fmt: skip
        """dQ, dK, dV of one (batch, head), walking up the query tiles, as ``_CausalSinkformer.backward`` does, with
        the carries checkpointed on two levels. Per segment of ``every`` kernel tiles (last first), the segment's
        forward runs again from its checkpoint in ``saved``: the row offsets of all its tiles, and the carries
        entering each group of ``group`` kernel tiles (the chunked path's tiles) into ``carry_ptr``. Per group (last
        first), the carries entering each of its kernel tiles are recomputed into ``tile_ptr``; then its tiles are
        differentiated, last first (``_causal_tile_backward``). Each set of carries is ``slot`` floats; the carries'
        adjoints alternate between two sets at ``adjoint_ptr`` (the set a tile writes is the one the tile above reads;
        zero before the last tile)."""
        bh = tl.program_id(0)
        base, vbase, obase = bh * length * D, (bh // heads) * length, bh * length
        plane = tl.num_programs(0) * length
        columns = steps // 2
        tiles = tl.cdiv(length, BLOCK_SIZE)
        segments = tl.cdiv(tiles, every)
        for back_segment in range(0, segments):
            low = (segments - 1 - back_segment) * every
            count = tl.minimum(every, tiles - low)
            _copy_vectors(saved_ptr + (low // every) * columns * plane, tile_ptr, columns, plane, obase, length,
                          BLOCK_SIZE)  # fmt: skip
            tl.debug_barrier()
            for index in range(0, count):  # the segment's forward again: row offsets, the carries entering each group
                if index % group == 0:
                    _copy_vectors(tile_ptr, carry_ptr + (index // group) * slot, columns, plane, obase, length,
                                  BLOCK_SIZE)  # fmt: skip
                first = (low + index) * BLOCK_SIZE
                rows = first + tl.arange(0, BLOCK_SIZE)
                qt = _load_rows(q_ptr, base, rows, length, D, BD)
                _causal_row_steps(qt, rows, first, k_ptr, valid_ptr, norm_ptr, tile_ptr, base, vbase, obase, plane,
                                  length, steps, scale, HAS_VALID, D, BD, BLOCK_SIZE, PRECISION)  # fmt: skip
                if index + 1 < count:
                    _causal_last_sweep(qt, rows, first, k_ptr, v_ptr, valid_ptr, norm_ptr, tile_ptr, base, vbase,
                                       obase, plane, length, steps, scale, HAS_VALID, D, BD, BLOCK_SIZE, PRECISION,
                                       False)  # fmt: skip
            groups = tl.cdiv(count, group)
            for back_group in range(0, groups):
                start = (groups - 1 - back_group) * group
                size = tl.minimum(group, count - start)
                _copy_vectors(carry_ptr + (start // group) * slot, tile_ptr, columns, plane, obase, length, BLOCK_SIZE)
                tl.debug_barrier()
                for index in range(0, size - 1):  # the group's forward again: the carries entering each tile
                    first = (low + start + index) * BLOCK_SIZE
                    rows = first + tl.arange(0, BLOCK_SIZE)
                    qt = _load_rows(q_ptr, base, rows, length, D, BD)
                    entering = tile_ptr + (index + 1) * slot
                    _copy_vectors(entering - slot, entering, columns, plane, obase, length, BLOCK_SIZE)
                    tl.debug_barrier()
                    _causal_last_sweep(qt, rows, first, k_ptr, v_ptr, valid_ptr, norm_ptr, entering, base, vbase,
                                       obase, plane, length, steps, scale, HAS_VALID, D, BD, BLOCK_SIZE, PRECISION,
                                       False)  # fmt: skip
                for back in range(0, size):
                    index = size - 1 - back
                    tile = low + start + index
                    _causal_tile_backward(q_ptr, k_ptr, v_ptr, do_ptr, valid_ptr, norm_ptr, sums_ptr,
                                          tile_ptr + index * slot, adjoint_ptr + (tile % 2) * slot,
                                          adjoint_ptr + ((tile + 1) % 2) * slot, dq_ptr, dk_ptr, dv_ptr,
                                          tile * BLOCK_SIZE, base, vbase, obase, plane, length, steps, scale,
                                          HAS_VALID, D, BD, BLOCK_SIZE, PRECISION)  # fmt: skip


def _launch_settings(q: torch.Tensor, valid: torch.Tensor | None) -> tuple[tuple[int, int], dict, torch.Tensor]:
    """Grid (tiles, batch * heads), the kernels' constexpr arguments and the padding mask as int8 (a dummy if none)."""
    batch, heads, length, dim = q.shape
    flat_valid = valid.to(torch.int8).contiguous() if valid is not None else q.new_zeros(1, dtype=torch.int8)
    grid = (triton.cdiv(length, BLOCK), batch * heads)
    common = dict(
        HAS_VALID=valid is not None,
        D=dim,
        BD=max(16, triton.next_power_of_2(dim)),
        BLOCK_SIZE=BLOCK,
        # float32 products in full float32, as torch.matmul (the chunked path) computes them, not TF32
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return grid, common, flat_valid


def triton_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, H, L, D) and the balancing vectors (steps, B, H, L), float32, as the chunked path defines them."""
    batch, heads, length, dim = q.shape
    q, k, v = (t.contiguous() for t in (q, k, v))
    grid, common, flat_valid = _launch_settings(q, valid)
    vectors = torch.zeros(steps, batch, heads, length, device=q.device, dtype=torch.float32)
    zeros = torch.zeros(batch, heads, length, device=q.device, dtype=torch.float32)
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


def step_offsets(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_t, c_t) of the matrix after each step t, both (steps, B, H, L): step t replaces one of the two (odd steps,
    counted from 1, are rows) and keeps the other; before the first column step c is 0."""
    rows, cols, r, c = [], [], torch.zeros_like(vectors[0]), torch.zeros_like(vectors[0])
    for step, vector in enumerate(vectors):
        r, c = (vector, c) if step % 2 == 0 else (r, vector)
        rows.append(r)
        cols.append(c)
    return torch.stack(rows), torch.stack(cols)


def triton_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    valid: torch.Tensor | None,
    vectors: torch.Tensor,
    grad_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV of the Sinkformer output, from the forward's output and float32 balancing vectors."""
    steps, (batch, heads, length, dim) = vectors.shape[0], q.shape
    q, k, v, grad_out = (t.contiguous() for t in (q, k, v, grad_out))
    grid, common, flat_valid = _launch_settings(q, valid)
    scale = dim**-0.5
    r, c = step_offsets(vectors)
    # adjoints[t]: of the vector of step t (1-based); adjoints[0] is of the constant c = 0 before any column step.
    adjoints = torch.zeros(steps + 1, batch, heads, length, device=q.device, dtype=torch.float32)
    row_total = -(grad_out.float() * out.float()).sum(-1)
    col_total = torch.empty_like(row_total)
    grad_v = torch.empty_like(v)
    _value_grad[grid](q, k, v, grad_out, flat_valid, r[-1], c[-1], grad_v, col_total, heads, length, scale, **common)
    adjoints[steps] = row_total if steps % 2 == 1 else col_total
    adjoints[steps - 1] = col_total if steps % 2 == 1 else row_total
    for t in range(steps, 1, -1):  # step t read the other vector of step t - 1
        kernel = _column_adjoint if t % 2 == 1 else _row_adjoint
        kernel[grid](q, k, flat_valid, r[t - 1], c[t - 1], adjoints[t], adjoints[t - 1], heads, length, scale, **common)
    on_rows = (torch.arange(steps, device=q.device) % 2 == 0)[:, None, None, None]
    row_adjoints = torch.where(on_rows, adjoints[1:], 0.0).contiguous()
    col_adjoints = torch.where(on_rows, 0.0, adjoints[1:]).contiguous()
    grad_q, grad_k = torch.empty_like(q), torch.empty_like(k)
    shared = (grad_out, flat_valid, r, c, row_adjoints, col_adjoints)
    _query_grad[grid](q, k, v, *shared, grad_q, heads, length, steps, scale, **common)
    _key_grad[grid](q, k, v, *shared, grad_k, heads, length, steps, scale, **common)
    return grad_q, grad_k, grad_v


class TritonSinkformer(torch.autograd.Function):
    """Non-causal Sinkformer attention, forward and backward in the Triton kernels above."""

    @staticmethod
    def forward(ctx, q, k, v, valid, steps):
        out, vectors = triton_forward(q, k, v, valid, steps)
        ctx.save_for_backward(q, k, v, out, valid, vectors)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, valid, vectors = ctx.saved_tensors
        return (*triton_backward(q, k, v, out, valid, vectors, grad_out), None, None)


def _causal_settings(q: torch.Tensor, steps: int, tile: int) -> tuple[int, int]:
    """The chunked path's checkpoint ``segment`` (in tiles of ``tile`` rows) and the kernel tiles between two
    checkpoints."""
    if tile % BLOCK:
        raise ValueError(f"sinkformer: the causal checkpoint tile must be a multiple of {BLOCK}, got {tile}")
    segment = checkpoint_segment(triton.cdiv(q.shape[2], tile))
    return segment, segment * (tile // BLOCK)


def _causal_kernel_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, steps: int, every: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal output, and the float32 carries (-inf where nothing allowed is above) entering every ``every``-th kernel
    tile, (checkpoints, max(steps // 2, 1), B, H, L): at least one column step's room, since a launch on CUDA may
    refuse an empty tensor's null pointer."""
    batch, heads, length, dim = q.shape
    _, common, flat_valid = _launch_settings(q, valid)
    columns = steps // 2
    work = dict(device=q.device, dtype=torch.float32)
    norms = torch.zeros(steps, batch * heads, length, **work)
    carries = torch.full((max(columns, 1), batch * heads, length), float("-inf"), **work)
    saved = torch.empty(triton.cdiv(triton.cdiv(length, BLOCK), every), max(columns, 1), batch, heads, length, **work)
    out = torch.empty_like(q)
    _causal_forward[(batch * heads,)](
        q, k, v, flat_valid, norms, carries, saved, out, heads, length, steps, every, dim**-0.5, **common
    )
    return out, saved


def triton_causal_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, steps: int, tile: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Causal output (B, H, L, D), and the column steps' carries entering every ``segment``-th ``tile`` of query rows
    with that ``segment``, in the layout and dtype ``_CausalSinkformer.forward`` saves them (masked carries at the
    dtype's floor; an empty tensor without column steps)."""
    q, k, v = (t.contiguous() for t in (q, k, v))
    segment, every = _causal_settings(q, steps, tile)
    out, saved = _causal_kernel_forward(q, k, v, valid, steps, every)
    if steps < 2:
        return out, q.new_zeros(0), segment
    floor = torch.finfo(q.dtype).min  # what the chunked forward holds where no allowed entry is above yet
    return out, torch.where(saved == float("-inf"), floor, saved).to(q.dtype), segment


def triton_causal_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    valid: torch.Tensor | None,
    saved: torch.Tensor,
    steps: int,
    every: int,
    group: int,
    grad_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV of the causal output, from the float32 carries ``_causal_kernel_forward`` saved every ``every``-th
    kernel tile; ``group``: the kernel tiles per tile of the checkpoints (so per segment the carries are recomputed
    into one set per group and one per kernel tile of a group, not one per kernel tile of the segment)."""
    batch, heads, length, dim = q.shape
    q, k, v, grad_out = (t.contiguous() for t in (q, k, v, grad_out))
    _, common, flat_valid = _launch_settings(q, valid)
    width, planes = max(steps // 2, 1), batch * heads
    work = dict(device=q.device, dtype=torch.float32)
    norms = torch.zeros(steps, planes, length, **work)
    sums = torch.zeros(steps, planes, length, **work)
    # the carries entering each group of a segment, then each kernel tile of a group
    carries = torch.empty(triton.cdiv(every, group) + group, width, planes, length, **work)
    adjoints = torch.zeros(2, width, planes, length, **work)
    grad_q = torch.empty(q.shape, **work)
    grad_k, grad_v = torch.zeros(k.shape, **work), torch.zeros(v.shape, **work)
    _causal_backward[(planes,)](
        q, k, v, grad_out, flat_valid, saved, norms, sums, carries, carries[triton.cdiv(every, group) :], adjoints,
        grad_q, grad_k, grad_v, heads, length, steps, every, group, width * planes * length, dim**-0.5, **common,
    )  # fmt: skip
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)


class TritonCausalSinkformer(torch.autograd.Function):
    """Causal Sinkformer attention, forward and backward in the Triton kernels above; the backward computes what
    ``_CausalSinkformer.backward`` does, from the same checkpoints (kept in float32)."""

    @staticmethod
    def forward(ctx, q, k, v, valid, steps, tile):
        q, k, v = (t.contiguous() for t in (q, k, v))
        _, every = _causal_settings(q, steps, tile)
        out, saved = _causal_kernel_forward(q, k, v, valid, steps, every)
        ctx.save_for_backward(q, k, v, valid, saved)
        ctx.steps, ctx.every, ctx.group = steps, every, tile // BLOCK
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, valid, saved = ctx.saved_tensors
        grads = triton_causal_backward(q, k, v, valid, saved, ctx.steps, ctx.every, ctx.group, grad_out)
        return (*grads, None, None, None)


def triton_sinkformer(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    valid: torch.Tensor | None,
    steps: int,
    *,
    causal: bool = False,
    tile: int = DEFAULT_TILE,
) -> torch.Tensor:
    """Sinkformer for (B, H, L, D) inputs, ``valid`` (B, L) bool marking real tokens (None = all real); the chunked
    path's values and gradients, in Triton kernels (causal: with the chunked path's carry checkpoints, every
    ~sqrt(tiles) tiles of ``tile`` rows, a multiple of ``BLOCK``)."""
    if steps < 1:
        raise ValueError(f"sinkformer: iterations must be >= 1, got {steps}")
    if causal:
        return TritonCausalSinkformer.apply(q, k, v, valid, steps, tile)
    return TritonSinkformer.apply(q, k, v, valid, steps)
