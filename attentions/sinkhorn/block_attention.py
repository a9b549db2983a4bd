"""Sinkhorn block attention (sort K and V, then "sorted block + own block" attention) with a hand-written backward.

Query block i attends, in one softmax, to sorted block i (row i of the sort matrix applied to the key and value blocks)
and to its own block. Written with autograd operators this joins two (b x b) score blocks, splits the weights again and
adds up gradient contributions in extra passes, which on CPU costs about as much as the matrix products themselves.
Here the forward keeps only the weights, the output and the sorted blocks; the backward uses
dS = P * (dP - rowsum(dO * O)) and accumulates every gradient in place (``baddbmm_``): ten batched matrix products and
a few in-place passes. ``reference`` is the same computation in plain autograd operators (the test oracle).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from attentions import _fused_cpu
from attentions._blocks import causal_block_mask, kernel_mask


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
        flat = (-1, block, dim)  # one matrix per block: attention is a batch of (b x D) products
        # The 1/sqrt(D) of the scores rides on the small sort matrix (sorted keys) and on the matrix product's
        # alpha (own block), so no pass over q or the scores is spent on it.
        sort = sort.to(q.dtype).reshape(batch * heads, n, n)
        kb, vb, q = kb.reshape(rows).contiguous(), vb.reshape(rows).contiguous(), q.reshape(flat).contiguous()
        ks = torch.bmm(sort * scale, kb)  # scaled sorted keys
        vs = torch.bmm(sort, vb)
        fused = _fused_cpu.usable(q)
        if fused is not None:  # one query block at a time, its tiles in cache (csrc/sinkhorn_block.cpp)
            masks = (_per_block(sorted_ok, shape), _per_block(local_ok, shape), _is_causal_triangle(local_ok, block))
            out, p = fused.forward(q, ks.view(flat), kb.view(flat), vs.view(flat), vb.view(flat), scale, *masks)
            ctx.fused, ctx.dead = masks, None
        else:
            out, p = _attend_batched(
                q, ks.view(flat), kb.view(flat), vs.view(flat), vb.view(flat), shape, sorted_ok, local_ok
            )
            ctx.fused, ctx.dead = None, _dead_rows(sorted_ok, local_ok)
        ctx.save_for_backward(q, kb, vb, sort, ks, vs, p, out)
        ctx.shape = shape
        return out.view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        q, kb, vb, sort, ks, vs, p, out = ctx.saved_tensors
        shape = ctx.shape
        block, dim = shape[-2], shape[-1]
        scale = dim**-0.5
        flat = (-1, block, dim)
        d_out = d_out.reshape(out.shape).contiguous()
        if ctx.fused is not None:  # d_q, d_kb, d_vb come in the inputs' shape (not views: see the kernel)
            d_q, d_ks, d_vs, d_kb, d_vb = _fused_cpu.kernel().backward(
                d_out, q, ks.view(flat), kb.view(flat), vs.view(flat), vb.view(flat), p, out, scale, *ctx.fused, shape
            )
            own = 1.0  # the kernel's own-block key gradient already carries the scale
        else:
            d_q, d_ks, d_vs, d_kb, d_vb = _attend_batched_backward(
                d_out, q, ks.view(flat), kb.view(flat), vs.view(flat), vb.view(flat), p, out, shape, ctx.dead
            )
            d_q, d_kb, d_vb = (t.view(shape) for t in (d_q, d_kb, d_vb))
            own = scale
        d_ks, d_vs = d_ks.view(ks.shape), d_vs.view(vs.shape)  # w.r.t. the scaled sorted keys, (B*H, n, b*D)
        d_sort = torch.bmm(d_vs, vb.transpose(1, 2)).baddbmm_(d_ks, kb.transpose(1, 2), alpha=scale)  # (B*H, n, n)
        sort_t = sort.transpose(1, 2)
        d_kb.view(kb.shape).baddbmm_(sort_t, d_ks, beta=own, alpha=scale)  # in place, through a passing view
        d_vb.view(vb.shape).baddbmm_(sort_t, d_vs)
        return d_q, d_kb, d_vb, d_sort.view(*shape[:3], -1), None, None


def _attend_batched(q, ks, kb, vs, vb, shape, sorted_ok, local_ok):
    """Scores, one softmax over [sorted; own] and the output as batched products over all N = B*H*n query blocks:
    the path off the fused kernel (GPU, bfloat16, or where it cannot be built). Returns out and the weights p."""
    block, scale = shape[-2], shape[-1] ** -0.5
    floor = torch.finfo(q.dtype).min  # finite: a row with nothing visible comes out uniform, not NaN
    s1 = torch.bmm(q, ks.transpose(1, 2))  # (N, b, b), N = B * H * n
    _mask_scores_(s1.view(*shape[:-1], block), sorted_ok, floor)
    # A mask the same for every block (causal, no padding) rides on the product as an additive bias: floor + a
    # score rounds to floor, so this is the masked_fill's result for the cost of the product alone.
    bias = _block_bias(local_ok, q.dtype)
    s2 = torch.empty_like(s1)  # (matrix products into a strided half of one buffer fall back to a slow loop)
    if bias is None:
        torch.baddbmm(s2, q, kb.transpose(1, 2), beta=0, alpha=scale, out=s2)
        _mask_scores_(s2.view(*shape[:-1], block), local_ok, floor)
    else:
        torch.baddbmm(bias, q, kb.transpose(1, 2), alpha=scale, out=s2)
    p = torch.softmax(torch.cat([s1, s2], dim=-1), dim=-1)  # (N, b, 2b)
    out = torch.bmm(p[..., :block], vs).baddbmm_(p[..., block:], vb)  # strided halves
    return out, p


def _attend_batched_backward(d_out, q, ks, kb, vs, vb, p, out, shape, dead):
    """d_q, d_ks, d_vs and the own block's d_kb (unscaled) and d_vb, as batched products."""
    block, scale = shape[-2], shape[-1] ** -0.5
    p1, p2 = p[..., :block], p[..., block:]
    delta = (d_out * out).sum(dim=-1, keepdim=True)  # rowsum(P * dP) from D columns, not 2b
    ds1 = torch.bmm(d_out, vs.transpose(1, 2)).sub_(delta).mul_(p1)  # (N, b, b) score gradients
    ds2 = torch.bmm(d_out, vb.transpose(1, 2)).sub_(delta).mul_(p2)
    # Masked scores are constants. Where a row sees something, their weights are exactly 0 and so is their
    # gradient; a row that sees nothing has uniform weights, and its whole gradient is zeroed here.
    if dead is not None:
        for ds in (ds1, ds2):
            ds.view(*shape[:-1], block).masked_fill_(dead, 0)
    d_q = torch.bmm(ds1, ks).baddbmm_(ds2, kb, alpha=scale)  # ks already carries scale
    d_ks = torch.bmm(ds1.transpose(1, 2), q)
    d_vs = torch.bmm(p1.transpose(1, 2), d_out)
    d_kb = torch.bmm(ds2.transpose(1, 2), q)
    d_vb = torch.bmm(p2.transpose(1, 2), d_out)
    return d_q, d_ks, d_vs, d_kb, d_vb


def _same_for_every_block(mask: torch.Tensor | None) -> bool:
    """Whether ``mask`` (broadcasting to (B, H, n, b, b)) is one (b', b) pattern shared by every block."""
    return mask is not None and mask.dim() >= 2 and all(size == 1 for size in mask.shape[:-2])


def _is_causal_triangle(mask: torch.Tensor | None, block: int) -> bool:
    """Whether ``mask`` is the causal triangle of every block (the fused kernel then skips its structural zeros)."""
    if not _same_for_every_block(mask) or mask.shape[-2:] != (block, block):
        return False
    return bool(torch.equal(mask.reshape(block, block), causal_block_mask(block, mask.device)))


def _per_block(mask: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    """A mask that broadcasts to (B, H, n, b, b) as the fused kernel reads it: (B*H*n or 1, b or 1, b)."""
    return None if mask is None else kernel_mask(mask, tuple(shape[:3]), (mask.shape[-2], shape[3]))


def _mask_scores_(scores: torch.Tensor, mask: torch.Tensor | None, floor: float) -> None:
    """Fill ``scores`` (B, H, n, b, b) with ``floor`` where ``mask`` is False, touching only the blocks that hide
    something (a causal sorted half hides only block 0's: there is no earlier block to read)."""
    if mask is None:
        return
    mask = mask.reshape((1,) * (5 - mask.dim()) + mask.shape)
    hiding = ~mask.all(dim=-1).all(dim=-1)  # (B', H', n'): blocks with some masked entry
    if bool(hiding.all()):
        scores.masked_fill_(~mask, floor)
        return
    index = hiding.expand(scores.shape[:3]).nonzero(as_tuple=True)
    if index[0].numel():
        scores[index] = scores[index].masked_fill(~mask.expand(*scores.shape[:3], *mask.shape[3:])[index], floor)


def _block_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A (b', b) additive bias (0 visible, floor hidden) when ``mask`` is the same for every block, else None."""
    if not _same_for_every_block(mask):
        return None
    mask = mask.reshape(mask.shape[-2:])
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def _dead_rows(sorted_ok: torch.Tensor | None, local_ok: torch.Tensor | None) -> torch.Tensor | None:
    """(B', H', n', b', 1) True for query rows with nothing visible in either half, or None when there are none
    (a half without a mask sees everything)."""
    if sorted_ok is None or local_ok is None:
        return None
    dead = ~(sorted_ok.any(dim=-1, keepdim=True) | local_ok.any(dim=-1, keepdim=True))
    return dead if bool(dead.any()) else None


def sinkhorn_block_attention(q, kb, vb, sort, sorted_ok=None, local_ok=None) -> torch.Tensor:
    """Same result and gradients as ``reference``; masks broadcast to (B, H, n, b, b) and are never materialized."""
    if q.device.type == "cpu":
        return _on_cpu(q, kb, vb, sort, sorted_ok, local_ok)
    return _SinkhornBlockAttention.apply(q, kb, vb, sort, sorted_ok, local_ok)


@torch.compiler.disable
def _on_cpu(q, kb, vb, sort, sorted_ok, local_ok) -> torch.Tensor:
    """The CPU kernel is opaque to ``torch.compile`` (and building it is no graph), so on the CPU a compiled model runs
    this eagerly, one clean graph break; on a GPU the batched-product path is compiled as ordinary operators."""
    return _SinkhornBlockAttention.apply(q, kb, vb, sort, sorted_ok, local_ok)
