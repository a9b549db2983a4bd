"""Block-local attention: each query attends only to keys of its own block (causal inside the block when causal).

Computed block by block with batched matmuls: time and memory O(L * block_size), never an L x L tensor.
"""

from __future__ import annotations

import torch

from attentions._blocks import causal_block_mask, key_valid, masked_softmax, pad_length, to_blocks
from attentions._registry import require_int
from attentions.base import Attention, register_attention


@register_attention("local")
class LocalAttention(Attention):
    """Parameters: ``block_size`` (keys visible to a query: its own block of this many positions)."""

    linear_memory = True

    def __init__(self, *, heads: int, head_dim: int, max_len: int, causal: bool = False, block_size: int = 32):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)
        require_int("local", "block_size", block_size)
        self.block_size = block_size

    def forward(self, q, k, v, padding_mask=None):
        self.check_inputs(q, k, v, padding_mask)
        batch, _, length, dim = q.shape
        block = min(self.block_size, length)  # one block covering everything is exactly dense attention
        qb, kb, vb = (to_blocks(pad_length(t, block), block) for t in (q, k, v))  # (B, H, n, b, D)
        n = qb.shape[2]
        valid = key_valid(padding_mask, batch, length, n * block, q.device).view(batch, 1, n, 1, block)
        allowed = valid & causal_block_mask(block, q.device) if self.causal else valid
        scores = torch.einsum("bhnid,bhnjd->bhnij", qb, kb) * dim**-0.5  # (B, H, n, b, b)
        out = torch.einsum("bhnij,bhnjd->bhnid", masked_softmax(scores, allowed), vb)
        return out.reshape(batch, self.heads, n * block, dim)[:, :, :length]
