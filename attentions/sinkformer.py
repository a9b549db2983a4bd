"""Sinkformer (Sander, Ablin, Blondel, Peyré 2022): dense attention made doubly stochastic.

The kernel exp(Q K^T / sqrt(d)) is balanced by ``iterations`` Sinkhorn normalizations in the log domain (the shared
``log_sinkhorn`` operator: rows first, then columns, alternating), replacing the row softmax of a Transformer.
``iterations=1`` is one row normalization, i.e. exactly softmax attention; with more iterations the matrix tends to a
doubly stochastic one (rows and columns sum to 1) whenever an odd number of steps ends on rows.

Padding: padded queries and padded keys are removed from every normalization (masked entries), so the real
sub-matrix is balanced on its own; padded query rows come out as zeros.

Causal (a variant, the paper balances non-causal attention only): entries j > i are masked and the column steps
use Causal Sinkhorn Balancing (a column is normalized over its prefix of rows, ``log_sinkhorn(causal=True)``), so
row i depends on rows <= i only and nothing leaks; columns are then balanced only up to each row, not globally.

Complexity: O(iterations * L^2) time. Two paths give the same values and gradients: the dense one builds the L x L
matrix and balances it (``log_sinkhorn``, the CPU's compiled kernel), O(L^2) memory; the chunked one keeps only
per-row and per-column vectors and recomputes the scores tile by tile in every pass (``_sinkformer_chunked``), O(L)
memory beyond a tile. The dense path runs on the CPU below ``CHUNKED_FROM_LENGTH``, the chunked one elsewhere; on
CUDA (with Triton installed) the non-causal path, forward and backward, runs as Triton kernels of the same recursion
(``_sinkformer_triton``), and the causal one too; ``ATTNBENCH_TRITON_CUDA=0`` keeps both on the chunked path.

Parameters: ``iterations`` (Sinkhorn normalization steps, >= 1; 1 = softmax attention).
"""

from __future__ import annotations

import torch

from attentions._blocks import key_valid
from attentions._registry import require_int
from attentions._sinkformer_chunked import chunked_sinkformer
from attentions.base import Attention, register_attention
from attentions.sinkhorn.balancing import log_sinkhorn

# On the CPU the dense path (compiled balancing kernel) is faster at short lengths; from this length on the chunked
# path is used there too (see docs/sinkformer-memory.md for the measurement). Off the CPU the chunked path (on CUDA its
# Triton kernels) always runs.
CHUNKED_FROM_LENGTH = 2048


@register_attention("sinkformer")
class SinkformerAttention(Attention):
    """Parameters: ``iterations`` (alternating row/column normalizations; 1 is a plain row softmax)."""

    def __init__(self, *, heads: int, head_dim: int, max_len: int, causal: bool = False, iterations: int = 3):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)
        require_int("sinkformer", "iterations", iterations)
        self.iterations = iterations
        self.chunked_from_length = CHUNKED_FROM_LENGTH  # per instance, so a test or an analysis can pick the path

    def attention_matrix(
        self, q: torch.Tensor, k: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, H, L, L) balanced attention weights; exposed so tests and analyses can check the balancing."""
        batch, _, length, dim = q.shape
        valid = key_valid(padding_mask, batch, length, length, q.device)  # (B, L)
        allowed = (valid[:, :, None] & valid[:, None, :])[:, None]  # (B, 1, L, L): real query and real key
        if self.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        scores = torch.einsum("bhid,bhjd->bhij", q, k) * dim**-0.5  # (B, H, L, L)
        log_p = log_sinkhorn(scores, self.iterations, mask=allowed, causal=self.causal)
        return log_p.exp().masked_fill(~allowed, 0.0)  # masked entries are exactly 0, fully masked rows too

    def forward(self, q, k, v, padding_mask=None):
        self.check_inputs(q, k, v, padding_mask)
        if q.device.type != "cpu" or q.shape[2] >= self.chunked_from_length:
            valid = None if padding_mask is None else padding_mask.to(device=q.device, dtype=torch.bool)
            if q.device.type == "cuda":
                from attentions import _sinkformer_triton  # imported here: Triton only matters on a GPU

                if _sinkformer_triton.available(q):
                    return _sinkformer_triton.triton_sinkformer(q, k, v, valid, self.iterations, causal=self.causal)
            return chunked_sinkformer(q, k, v, valid, self.iterations, causal=self.causal)
        return torch.einsum("bhij,bhjd->bhid", self.attention_matrix(q, k, padding_mask), v)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, iterations={self.iterations}"
