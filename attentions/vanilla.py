"""Dense softmax attention (Vaswani et al. 2017): the baseline and the test oracle. O(L^2) time; memory O(L^2) in
the math kernel, O(L) when PyTorch picks a flash kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attentions.base import Attention, register_attention


@register_attention("vanilla")
class VanillaAttention(Attention):
    """``torch.nn.functional.scaled_dot_product_attention`` with causal and key-padding masks."""

    def __init__(self, *, heads: int, head_dim: int, max_len: int, causal: bool = False):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)

    def forward(self, q, k, v, padding_mask=None):
        self.check_inputs(q, k, v, padding_mask)
        if padding_mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        allowed = padding_mask.bool()[:, None, None, :]  # (B, 1, 1, Lk)
        if self.causal:
            lq, lk = q.shape[2], k.shape[2]
            allowed = allowed & torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        # A row with no visible key (a padded query) would be NaN; let it see everything, its output is ignored.
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
