"""Sinkformer attention without its L x L matrices: the scores are recomputed in row tiles for every balancing pass.

Non-causal: after any number of Sinkhorn steps the log matrix is ``S_ij - r_i - c_j`` (``S = Q K^T / sqrt(d)``, masked
entries at -inf), so the forward keeps only the vectors: a row step sets ``r_i = LSE_j (S_ij - c_j)``, a column step
``c_j = LSE_i (S_ij - r_i)``, each one pass over the score tiles, and the output is ``exp(S - r - c) V``. The exact
gradient of the unrolled steps runs the same recursion backwards on vectors: the last matrix gives the adjoints of the
last ``r`` and ``c`` as ``-rowdot(dO, O)`` and ``-rowdot(V, dV)`` (the flash-attention identity), each step ``t``
passes ``-sum(adjoint_t * W_t)`` to the vector it read (``W_t`` is the matrix after step t, recomputed per tile), and
one last pass accumulates ``dS = P * dP + sum_t adjoint_t * W_t`` into dQ and dK tile by tile.

Causal: a column step divides each entry by the log-sum over the rows above it in its column (Causal Sinkhorn
Balancing, ``log_sinkhorn(causal=True)``). That is not rank one, but it streams over row tiles in order: a column step
only needs, per column, the log-sum of the rows already seen (a carry per column step). The backward walks the row
tiles in reverse, recomputing each tile's forward from the carries that entered it and differentiating it with the
adjoints of the carries that left it. Carries are kept at every ``segment``-th tile only (about sqrt(tiles) of them);
a segment's other carries are recomputed when the backward reaches it.

Memory: O(tile * L) working memory per (batch, head), O(steps * L) saved vectors (non-causal), O(sqrt(L / tile) *
column steps * L) saved carries (causal); nothing of size L x L.

Where it runs: both variants on the CPU from ``sinkformer.CHUNKED_FROM_LENGTH`` on. On CUDA the non-causal one runs as
Triton kernels of the same forward and backward (``_sinkformer_triton``), and the causal one as Triton kernels that
save the same carry checkpoints and compute what ``_CausalSinkformer.backward`` computes; the tests pin the kernels to
this module.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from attentions.sinkhorn.reference import prefix_logsumexp

DEFAULT_TILE = 128  # query rows per tile: working memory is tile x L per (batch, head)


def chunked_sinkformer(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    valid: torch.Tensor | None,
    steps: int,
    *,
    causal: bool,
    tile: int = DEFAULT_TILE,
) -> torch.Tensor:
    """Sinkformer output for (B, H, L, D) inputs; ``valid`` (B, L) bool marks real tokens (None = all real).

    Equal to ``exp(log_sinkhorn(S, steps, mask, causal)) V`` with padded query rows exactly zero."""
    if steps < 1:
        raise ValueError(f"sinkformer: iterations must be >= 1, got {steps}")
    if tile < 1:
        raise ValueError(f"sinkformer: tile must be >= 1, got {tile}")
    function = _CausalSinkformer if causal else _NonCausalSinkformer
    return function.apply(q, k, v, valid, steps, tile)


def _spans(length: int, tile: int) -> list[tuple[int, int]]:
    return [(start, min(start + tile, length)) for start in range(0, length, tile)]


def _allowed(valid: torch.Tensor | None, start: int, end: int, keys: int, causal: bool, device) -> torch.Tensor | None:
    """(B or 1, 1, end - start, keys) bool of the tile's allowed entries; None when everything is allowed."""
    mask = None
    if valid is not None:
        mask = valid[:, None, start:end, None] & valid[:, None, None, :keys]
    if causal:
        rows = torch.arange(start, end, device=device)[:, None]
        tri = (torch.arange(keys, device=device)[None, :] <= rows)[None, None]
        mask = tri if mask is None else mask & tri
    return mask


def _scores(q: torch.Tensor, k: torch.Tensor, start: int, end: int, keys: int) -> torch.Tensor:
    """(B, H, end - start, keys) scaled scores of query rows start:end against the first ``keys`` keys."""
    return torch.matmul(q[:, :, start:end], k[:, :, :keys].transpose(-1, -2)) * q.shape[-1] ** -0.5


# --------------------------------------------------------------------------------------------- non-causal


def _masked_scores(q, k, valid, start, end) -> torch.Tensor:
    scores = _scores(q, k, start, end, k.shape[2])
    allowed = _allowed(valid, start, end, k.shape[2], False, q.device)
    return scores if allowed is None else scores.masked_fill(~allowed, -math.inf)


def _finite(x: torch.Tensor) -> torch.Tensor:
    """Offsets of rows/columns with no allowed entry are -inf; 0 keeps ``S - r - c`` at -inf there, never NaN."""
    return torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _offsets(vectors: list[torch.Tensor], t: int, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, c) of the matrix after step ``t`` (1-based; odd steps are rows). ``vectors[t - 1]`` is step t's vector."""
    current = vectors[t - 1]
    previous = vectors[t - 2] if t >= 2 else zeros
    return (current, previous) if t % 2 == 1 else (previous, current)


class _NonCausalSinkformer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, valid, steps, tile):
        batch, heads, length, _ = q.shape
        spans = _spans(length, tile)
        zeros = q.new_zeros(batch, heads, length)
        vectors: list[torch.Tensor] = []
        r, c = zeros, zeros
        for step in range(steps):
            if step % 2 == 0:  # rows: r_i = LSE_j (S_ij - c_j)
                r = torch.empty_like(zeros)
                for start, end in spans:
                    x = _masked_scores(q, k, valid, start, end) - c[:, :, None, :]
                    r[:, :, start:end] = torch.logsumexp(x, dim=-1)
                r = _finite(r)
                vectors.append(r)
            else:  # columns: c_j = LSE_i (S_ij - r_i), a running log-sum over the row tiles
                c = torch.full_like(zeros, -math.inf)
                for start, end in spans:
                    x = _masked_scores(q, k, valid, start, end) - r[:, :, start:end, None]
                    c = torch.logaddexp(c, torch.logsumexp(x, dim=-2))
                c = _finite(c)
                vectors.append(c)
        out = torch.empty_like(q)
        for start, end in spans:
            p = torch.exp(_masked_scores(q, k, valid, start, end) - r[:, :, start:end, None] - c[:, :, None, :])
            out[:, :, start:end] = torch.matmul(p, v)
        ctx.save_for_backward(q, k, v, out, valid, torch.stack(vectors))
        ctx.steps, ctx.tile = steps, tile
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, valid, stacked = ctx.saved_tensors
        steps, spans = ctx.steps, _spans(q.shape[2], ctx.tile)
        vectors = list(stacked.unbind(0))
        zeros = torch.zeros_like(vectors[0])
        scale = q.shape[-1] ** -0.5

        def weights(t: int, start: int, end: int, scores: torch.Tensor) -> torch.Tensor:
            r, c = _offsets(vectors, t, zeros)
            return torch.exp(scores - r[:, :, start:end, None] - c[:, :, None, :])

        # dV = P^T dO; the adjoints of the last r and c from the row and column sums of P * dP.
        grad_v = torch.zeros_like(v)
        for start, end in spans:
            p = weights(steps, start, end, _masked_scores(q, k, valid, start, end))
            grad_v += torch.matmul(p.transpose(-1, -2), grad_out[:, :, start:end])
        row_total = -(grad_out * out).sum(-1)
        col_total = -(v * grad_v).sum(-1)
        adjoints = [zeros] * (steps + 1)  # adjoints[t]: of vectors[t - 1]; adjoints[0] is of the constant c = 0
        adjoints[steps] = row_total if steps % 2 == 1 else col_total
        adjoints[steps - 1] = col_total if steps % 2 == 1 else row_total
        # Step t read the other vector of step t - 1: pass it -sum(adjoint_t * W_t) along step t's axis.
        for t in range(steps, 1, -1):
            passed = torch.zeros_like(zeros)
            for start, end in spans:
                w = weights(t, start, end, _masked_scores(q, k, valid, start, end))
                if t % 2 == 1:  # a row step read c
                    passed -= (adjoints[t][:, :, start:end, None] * w).sum(-2)
                else:  # a column step read r
                    passed[:, :, start:end] -= (w * adjoints[t][:, :, None, :]).sum(-1)
            adjoints[t - 1] = adjoints[t - 1] + passed
        # dS = P * dP + sum_t adjoint_t * W_t, tile by tile, into dQ and dK.
        grad_q, grad_k = torch.zeros_like(q), torch.zeros_like(k)
        for start, end in spans:
            scores = _masked_scores(q, k, valid, start, end)
            grad_p = torch.matmul(grad_out[:, :, start:end], v.transpose(-1, -2))
            grad_s = weights(steps, start, end, scores) * grad_p
            for t in range(1, steps + 1):
                if t % 2 == 1:
                    grad_s += adjoints[t][:, :, start:end, None] * weights(t, start, end, scores)
                else:
                    grad_s += weights(t, start, end, scores) * adjoints[t][:, :, None, :]
            grad_q[:, :, start:end] = torch.matmul(grad_s, k) * scale
            grad_k += torch.matmul(grad_s.transpose(-1, -2), q[:, :, start:end]) * scale
        return grad_q, grad_k, grad_v, None, None, None


# --------------------------------------------------------------------------------------------- causal


def checkpoint_segment(tiles: int) -> int:
    """Tiles per saved carry checkpoint in the causal forward: about sqrt(tiles), so the checkpoints and one segment's
    recomputed carries both cost about sqrt(tiles) carries."""
    return math.isqrt(tiles - 1) + 1


def _causal_tile(
    q_rows: torch.Tensor,
    k_keys: torch.Tensor,
    v_keys: torch.Tensor,
    valid: torch.Tensor | None,
    start: int,
    carries: list[torch.Tensor],
    steps: int,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output of query rows ``start:end`` (``q_rows``) and the carries after them; ``k_keys``, ``v_keys`` are the
    keys < end, the only ones these rows see. ``carries[m]`` (B, H, >= end): per column, the log-sum of the rows above
    ``start`` before column step m. In the operators of ``reference_log_sinkhorn`` (masked entries held at the dtype's
    floor), so autograd differentiates a tile."""
    end = start + q_rows.shape[2]
    floor = torch.finfo(q_rows.dtype).min
    allowed = _allowed(valid, start, end, end, True, q_rows.device)
    scores = torch.matmul(q_rows, k_keys.transpose(-1, -2)) * q_rows.shape[-1] ** -0.5
    x = scores.masked_fill(~allowed, floor)
    leaving = []
    for step in range(steps):
        if step % 2 == 0:
            x = x - torch.logsumexp(x, dim=-1, keepdim=True)
        else:
            above = carries[step // 2][:, :, None, :end]
            prefix = prefix_logsumexp(torch.cat([above, x], dim=-2))[:, :, 1:]
            leaving.append(prefix[:, :, -1])
            x = x - prefix
        x = x.masked_fill(~allowed, floor)
    p = x.exp().masked_fill(~allowed, 0.0)
    return torch.matmul(p, v_keys), leaving


def _advance(carries: list[torch.Tensor], leaving: list[torch.Tensor]) -> list[torch.Tensor]:
    """The carries after a tile: its last prefix on the keys it saw, unchanged beyond (no row yet reaches them)."""
    return [torch.cat([new, old[:, :, new.shape[-1] :]], dim=-1) for new, old in zip(leaving, carries, strict=True)]


class _CausalSinkformer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, valid, steps, tile):
        batch, heads, length, _ = q.shape
        spans = _spans(length, tile)
        segment = checkpoint_segment(len(spans))
        columns = steps // 2
        carries = [q.new_full((batch, heads, length), torch.finfo(q.dtype).min) for _ in range(columns)]
        checkpoints = []
        out = torch.empty_like(q)
        for index, (start, end) in enumerate(spans):
            if index % segment == 0 and columns:
                checkpoints.append(torch.stack(carries))
            y, leaving = _causal_tile(q[:, :, start:end], k[:, :, :end], v[:, :, :end], valid, start, carries, steps)
            out[:, :, start:end] = y
            carries = _advance(carries, leaving)
        saved = torch.stack(checkpoints) if columns else q.new_zeros(0)
        ctx.save_for_backward(q, k, v, valid, saved)
        ctx.steps, ctx.tile, ctx.segment = steps, tile, segment
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, valid, saved = ctx.saved_tensors
        steps, segment, spans = ctx.steps, ctx.segment, _spans(q.shape[2], ctx.tile)
        columns = steps // 2
        grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        adjoint = [torch.zeros_like(q[..., 0]) for _ in range(columns)]  # of the carries leaving the current tile
        for first in reversed(range(0, len(spans), segment)):
            chunk = spans[first : first + segment]
            entering = [list(saved[first // segment].unbind(0)) if columns else []]  # carries entering each tile
            for start, end in chunk[:-1]:
                _, leaving = _causal_tile(
                    q[:, :, start:end], k[:, :, :end], v[:, :, :end], valid, start, entering[-1], steps
                )
                entering.append(_advance(entering[-1], leaving))
            for (start, end), carries in reversed(list(zip(chunk, entering, strict=True))):
                with torch.enable_grad():
                    inputs = [q[:, :, start:end], k[:, :, :end], v[:, :, :end], *(c[:, :, :end] for c in carries)]
                    leaves = [t.detach().requires_grad_() for t in inputs]
                    y, leaving = _causal_tile(*leaves[:3], valid, start, leaves[3:], steps)
                    upstream = [grad_out[:, :, start:end], *(a[:, :, :end] for a in adjoint)]
                    grads = torch.autograd.grad([y, *leaving], leaves, upstream, allow_unused=True)
                rows = ((start, end), (0, end), (0, end))  # the q, k, v rows this tile read
                for total, g, (low, high) in zip((grad_q, grad_k, grad_v), grads[:3], rows, strict=True):
                    if g is not None:
                        total[:, :, low:high] += g
                for m in range(columns):  # the adjoint of the carries entering this tile, beyond it unchanged
                    g = grads[3 + m]
                    adjoint[m][:, :, :end] = 0.0 if g is None else g
        return grad_q, grad_k, grad_v, None, None, None
