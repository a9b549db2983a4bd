"""Sparse Transformer, fixed pattern (Child et al. 2019).

Each query attends to its own block (causal inside it when causal) and to the last ``stride`` positions ("summary"
positions) of every other block (non-causal) or of every earlier block (causal). The summary keys are gathered into
one (L / block_size * stride)-long tensor, so memory is O(L * (block_size + L * stride / block_size)) and no L x L
score matrix is formed.
"""

from __future__ import annotations

import torch

from attentions._blocks import causal_block_mask, key_valid, masked_softmax, pad_length, to_blocks
from attentions._registry import require_int
from attentions.base import Attention, register_attention


@register_attention("sparse")
class SparseAttention(Attention):
    """Parameters: ``block_size`` (local block), ``stride`` (summary positions per block, at most block_size)."""

    def __init__(
        self,
        *,
        heads: int,
        head_dim: int,
        max_len: int,
        causal: bool = False,
        block_size: int = 32,
        stride: int = 4,
    ):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)
        require_int("sparse", "block_size", block_size)
        if not isinstance(stride, int) or isinstance(stride, bool) or not 0 < stride <= block_size:
            raise ValueError(f"sparse: stride must be an int in [1, block_size={block_size}], got {stride!r}")
        self.block_size, self.stride = block_size, stride

    def forward(self, q, k, v, padding_mask=None):
        self.check_inputs(q, k, v, padding_mask)
        batch, heads, length, dim = q.shape
        block = min(self.block_size, length)
        stride = min(self.stride, block)
        qb, kb, vb = (to_blocks(pad_length(t, block), block) for t in (q, k, v))  # (B, H, n, b, D)
        n = qb.shape[2]
        valid = key_valid(padding_mask, batch, length, n * block, q.device).view(batch, n, block)

        # Summary keys: the last `stride` positions of every block, flattened to (B, H, n * s, D).
        k_sum = kb[:, :, :, block - stride :].reshape(batch, heads, n * stride, dim)
        v_sum = vb[:, :, :, block - stride :].reshape(batch, heads, n * stride, dim)
        sum_valid = valid[:, :, block - stride :].reshape(batch, 1, 1, 1, n * stride)
        source_block = torch.arange(n, device=q.device).repeat_interleave(stride)  # block of each summary key
        query_block = torch.arange(n, device=q.device)[:, None]
        # Own block's summary keys are already in the local part; causal also drops later blocks.
        sum_allowed = (source_block < query_block) if self.causal else (source_block != query_block)
        sum_allowed = sum_valid & sum_allowed[None, None, :, None, :]  # (B, 1, n, 1, n * s)

        local_allowed = valid.view(batch, 1, n, 1, block)
        if self.causal:
            local_allowed = local_allowed & causal_block_mask(block, q.device)
        allowed = torch.cat(
            [local_allowed.expand(-1, -1, -1, block, -1), sum_allowed.expand(-1, -1, -1, block, -1)], dim=-1
        )  # (B, 1, n, b, b + n * s)

        local_scores = torch.einsum("bhnid,bhnjd->bhnij", qb, kb)  # (B, H, n, b, b)
        sum_scores = torch.einsum("bhnid,bhjd->bhnij", qb, k_sum)  # (B, H, n, b, n * s)
        weights = masked_softmax(torch.cat([local_scores, sum_scores], -1) * dim**-0.5, allowed)
        out = torch.einsum("bhnij,bhnjd->bhnid", weights[..., :block], vb)
        out = out + torch.einsum("bhnij,bhjd->bhnid", weights[..., block:], v_sum)
        return out.reshape(batch, heads, n * block, dim)[:, :, :length]
