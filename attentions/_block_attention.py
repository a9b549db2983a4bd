"""Sinkhorn block attention (sort K and V, then "sorted block + own block" attention) with a hand-written backward.

Query block i attends, in one softmax, to sorted block i (row i of the sort matrix applied to the key and value blocks)
and to its own block. Written with autograd operators this joins two (b x b) score blocks, splits the weights again and
adds up gradient contributions in extra passes, which on CPU costs about as much as the matrix products themselves.
Here each query block's [sorted block; own block] keys and values are written straight into one (2b x D) matrix, so
scores and outputs are one batched product each; the forward keeps those matrices, the weights and the output; the
backward uses dS = P * (dP - rowsum(dO * O)): eight batched matrix products and a few in-place passes. ``reference``
is the same computation in plain autograd operators (the test oracle).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def reference(q, kb, vb, sort, sorted_ok=None, local_ok=None) -> torch.Tensor:
    """q, kb, vb: (B, H, n, b, D); sort: (B, H, n, n); masks broadcast to (B, H, n, b, b), True = visible."""
    batch, heads, n, block, dim = kb.shape
    ks, vs = (
        torch.matmul(sort.to(t.dtype), t.reshape(batch, heads, n, block * dim)).view_as(t) for t in (kb, vb)
    )  # (B, H, n, b, D): sorted block i = sum_j sort[i, j] * block j
    floor = torch.finfo(q.dtype).min
    q = q * dim**-0.5
    s1, s2 = torch.matmul(q, ks.transpose(-1, -2)), torch.matmul(q, kb.transpose(-1, -2))
    if sorted_ok is not None:
        s1 = s1.masked_fill(~sorted_ok, floor)
    if local_ok is not None:
        s2 = s2.masked_fill(~local_ok, floor)
    p1, p2 = torch.softmax(torch.cat([s1, s2], dim=-1), dim=-1).split(block, dim=-1)
    return torch.matmul(p1, vs) + torch.matmul(p2, vb)


class _SinkhornBlockAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, kb, vb, sort, sorted_ok, local_ok):
        shape = q.shape  # (B, H, n, b, D)
        batch, heads, n, block, dim = shape
        scale = dim**-0.5
        rows = (batch * heads, n, block * dim)  # one row per block: sorting is a (n x n) @ (n x b*D) product
        sort = sort.to(q.dtype).reshape(batch * heads, n, n)
        kb, vb, q = kb.reshape(rows), vb.reshape(rows), q.reshape(-1, block, dim)
        # Query block i reads [sorted block i; own block i]: both halves are written straight into one (2b x D)
        # matrix per block, so scores, outputs and every gradient are single batched products with no concatenation.
        # The keys carry 1/sqrt(D) (on the small sort matrix and in the copy), so no pass over q or the scores does.
        keys, values = (q.new_empty(batch * heads, n, 2, block * dim) for _ in range(2))
        torch.bmm(sort * scale, kb, out=keys[:, :, 0])
        torch.mul(kb, scale, out=keys[:, :, 1])
        torch.bmm(sort, vb, out=values[:, :, 0])
        values[:, :, 1].copy_(vb)
        keys, values = keys.view(-1, 2 * block, dim), values.view(-1, 2 * block, dim)  # (N, 2b, D), N = B * H * n
        scores = torch.bmm(q, keys.transpose(1, 2))  # (N, b, 2b): sorted half, then own half
        floor = torch.finfo(q.dtype).min  # finite: a row with nothing visible comes out uniform, not NaN
        _mask_halves_(scores, shape, sorted_ok, local_ok, floor)
        p = torch.softmax(scores, dim=-1)
        out = torch.bmm(p, values)
        ctx.save_for_backward(q, keys, values, sort, p, out)
        ctx.masks, ctx.shape = (sorted_ok, local_ok), shape
        return out.view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        q, keys, values, sort, p, out = ctx.saved_tensors
        shape = ctx.shape
        batch, heads, n, block, dim = shape
        scale = dim**-0.5
        halves = (batch * heads, n, 2, block * dim)  # the [sorted; own] matrices seen as per-block rows
        d_out = d_out.reshape(out.shape)
        delta = (d_out * out).sum(dim=-1, keepdim=True)  # rowsum(P * dP) from D columns, not 2b
        d_scores = torch.bmm(d_out, values.transpose(1, 2)).sub_(delta).mul_(p)  # (N, b, 2b)
        _mask_halves_(d_scores, shape, *ctx.masks, 0.0)  # masked scores were constants: no gradient
        d_q = torch.bmm(d_scores, keys)  # both halves of the keys already carry the scale
        d_keys = torch.bmm(d_scores.transpose(1, 2), q).view(halves)  # w.r.t. the scaled [sorted; own] keys
        d_values = torch.bmm(p.transpose(1, 2), d_out).view(halves)
        d_ks, d_vs = d_keys[:, :, 0], d_values[:, :, 0]  # sorted halves, (B*H, n, b*D) strided rows
        kb_scaled, vb = keys.view(halves)[:, :, 1], values.view(halves)[:, :, 1]
        d_sort = torch.bmm(d_vs, vb.transpose(1, 2)).baddbmm_(d_ks, kb_scaled.transpose(1, 2))  # (B*H, n, n)
        sort_t = sort.transpose(1, 2)
        d_kb = torch.baddbmm(d_keys[:, :, 1], sort_t, d_ks, beta=scale, alpha=scale)
        d_vb = torch.baddbmm(d_values[:, :, 1], sort_t, d_vs)
        return d_q.view(shape), d_kb.view(shape), d_vb.view(shape), d_sort.view(*shape[:3], -1), None, None


def _mask_halves_(scores: torch.Tensor, shape, sorted_ok, local_ok, fill: float) -> None:
    """Fill, in place, the (N, b, 2b) scores' sorted half where ``sorted_ok`` is False and own half where
    ``local_ok`` is; the masks broadcast to (B, H, n, b, b)."""
    block = shape[-2]
    view = scores.view(*shape[:-1], 2 * block)
    for half, mask in ((view[..., :block], sorted_ok), (view[..., block:], local_ok)):
        if mask is not None:
            half.masked_fill_(~mask, fill)


def sinkhorn_block_attention(q, kb, vb, sort, sorted_ok=None, local_ok=None) -> torch.Tensor:
    """Same result and gradients as ``reference``; masks broadcast to (B, H, n, b, b) and are never materialized."""
    return _SinkhornBlockAttention.apply(q, kb, vb, sort, sorted_ok, local_ok)
