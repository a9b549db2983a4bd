"""A test plugin: dense attention whose worker process dies once mid-trial, as an OOM kill or a lost node would.

The process of rank ``ATTNBENCH_TEST_DIE_RANK`` (default 0) exits in its training forward number
``ATTNBENCH_TEST_DIE_AT``, unless the marker file ``ATTNBENCH_TEST_MARKER`` exists: dying writes it, so the retried
attempt, and any reference run made after it, never dies.
"""

import os
from pathlib import Path

import torch.distributed as dist
import torch.nn.functional as F

from attentions import Attention, register_attention


@register_attention("dies_once")
class DiesOnceAttention(Attention):
    supports_causal = True

    def __init__(self, *, heads: int, head_dim: int, max_len: int, causal: bool = False):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)
        self.forwards = 0

    def forward(self, q, k, v, padding_mask=None):
        if self.training:
            self.forwards += 1
            marker = Path(os.environ["ATTNBENCH_TEST_MARKER"])
            rank = dist.get_rank() if dist.is_initialized() else 0
            dies_here = rank == int(os.environ.get("ATTNBENCH_TEST_DIE_RANK", "0"))
            if dies_here and self.forwards == int(os.environ["ATTNBENCH_TEST_DIE_AT"]) and not marker.exists():
                marker.write_text("died")
                os._exit(9)
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
