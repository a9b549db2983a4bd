"""Sparse Sinkhorn Attention (Tay et al. 2020): ``sinkhorn``, ``sortcut`` and ``sinkhorn_mixture``.

The sequence is cut into blocks of ``block_size``. Each head sums the keys of every block (eq. 2; padded tokens are
zeroed first so they never reach the sort net), its SortNet maps a pooled block i to one logit per block (R_i = P(X'_i),
eq. 3), and Gumbel-Sinkhorn turns R into a relaxed permutation S = Sinkhorn((R + eps) / tau) with ``iterations`` rounds
of row and column normalization in the log domain (``balancing.log_sinkhorn``; eps only in training). Row i of S
mixes the key and value blocks (the same S for both, section 3.2) into sorted block i; the queries of block i attend, in
one softmax, to sorted block i and to their own block (section 3.2). Keys are pooled rather than queries because the
sort decides which keys a block reads; both are (B, H, L, D) here, so the choice costs nothing.

Causal (section 3.3): block i is pooled as the sum of every key before block i plus its first key (eq. 5, the first
token is the block's representative), so its logits see nothing a query of block i may not see; S is balanced by
Causal Sinkhorn Balancing restricted to the strictly lower triangle (block i mixes only blocks j < i, and column
normalization runs over prefixes of rows, so row i never depends on a later row); inside the own block the usual causal
mask applies. Block 0 has no earlier block, so its sorted part is masked out entirely.

SortCut (section 3.4, encoder only): every query attends to the first ``budget`` sorted blocks and nothing else.

Cost per head: Sinkhorn O(L * block_size * D + (L / block_size)^2 * block_size * D) time (attention plus block mixing)
and O(L * block_size) memory for scores, never an L x L tensor (the sort-and-attend step has a hand-written backward,
``block_attention``; on a GPU one FlexAttention call, ``flex``); SortCut O(L * budget * block_size);
the mixture adds dense attention and is O(L^2) time like ``vanilla``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from attentions._blocks import causal_block_mask, key_valid, pad_length, to_blocks
from attentions._registry import require_int
from attentions.base import Attention, register_attention
from attentions.sinkhorn import flex
from attentions.sinkhorn.balancing import log_sinkhorn
from attentions.sinkhorn.block_attention import sinkhorn_block_attention
from attentions.sinkhorn.sort_stats import sort_statistics
from attentions.sinkhorn.sortnet import SortNet, SortNetKind, gumbel_like
from attentions.vanilla import VanillaAttention


def sort_blocks(sort: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Sorted block i = sum_j sort[i, j] * block j: (B, H, n', n) x (B, H, n, b, D) -> (B, H, n', b, D).

    A permutation matrix gives exactly the permuted blocks; nothing of size L x L is formed. (``sinkhorn`` itself sorts
    inside ``block_attention``, which fuses this product with its backward; SortCut keeps only n' rows and uses this.)
    """
    batch, heads, n, block, dim = blocks.shape
    mixed = torch.matmul(sort.to(blocks.dtype), blocks.reshape(batch, heads, n, block * dim))  # (B, H, n', b * D)
    return mixed.view(batch, heads, -1, block, dim)


def sorted_slot_valid(sort: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, H, n', b) bool: slot s of sorted block i holds some real token (a row with no mass holds nothing)."""
    return torch.einsum("bhij,bjs->bhis", sort.detach().float(), valid.float()) > 0


def unbalanced_sort(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Nk = 0 (Table 8 row 6, "no Sinkhorn"): exp(R / tau) divided by each row's largest allowed entry.

    The paper's S^0 = exp(R) is unbounded: a sort net's logits of a few tens (block sums of 32 keys reach that at
    initialization) overflow float32 or make the sorted keys so large that the first step's loss is not finite, which
    is what the literal form did in our Figure 4 runs. Dividing a row by its maximum keeps every ratio within the row
    (the relative weights the ablation is about), leaves rows unnormalized (the row sums range over [1, n], nothing is
    balanced), and agrees with Sinkhorn at the hard-permutation limit, where both give the chosen block weight 1.
    Masked entries are exactly 0; a row with no allowed entry (causal block 0) is all 0.
    """
    floor = torch.finfo(logits.dtype).min
    x = logits if mask is None else logits.masked_fill(~mask, floor)
    x = x - x.amax(dim=-1, keepdim=True)
    if mask is not None:
        x = x.masked_fill(~mask, floor)
    return x.exp()


@register_attention("sinkhorn")
class SinkhornAttention(Attention):
    """Parameters: ``block_size`` (tokens per block), ``temperature`` (tau of Gumbel-Sinkhorn, > 0), ``iterations``
    (row+column normalization rounds; 0 = no balancing, Table 8 row 6: S = exp(R / tau) over its row maximum, see
    ``unbalanced_sort``), ``sortnet`` (Table 8 rows 4, 3, 2, 1), ``gumbel`` (add Gumbel noise to R while training)."""

    linear_memory = True

    def __init__(
        self,
        *,
        heads: int,
        head_dim: int,
        max_len: int,
        causal: bool = False,
        block_size: int = 32,
        temperature: float = 0.75,
        iterations: int = 5,
        sortnet: SortNetKind = "linear",
        gumbel: bool = True,
    ):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)
        name = self.name or type(self).__name__
        require_int(name, "block_size", block_size)
        require_int(name, "iterations", iterations, minimum=0)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
            raise ValueError(f"{name}: temperature must be a number > 0, got {temperature!r}")
        if not isinstance(gumbel, bool):
            raise ValueError(f"{name}: gumbel must be a bool, got {gumbel!r}")
        self.block_size, self.iterations, self.gumbel = block_size, iterations, gumbel
        self.temperature = float(temperature)
        self.max_blocks = -(-max_len // block_size)
        try:
            self.sortnet = SortNet(heads, head_dim, self.max_blocks, sortnet)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, block_size={self.block_size}, temperature={self.temperature}, "
            f"iterations={self.iterations}, gumbel={self.gumbel}"
        )

    def _blocks(self, q, k, v, padding_mask):
        """Pad to a block multiple and cut into blocks; padded keys/values are zeroed so soft sorting cannot carry
        them anywhere. Returns qb, kb, vb (B, H, n, b, D), valid (B, n, b) and whether any position is padding."""
        batch, _, length, _ = q.shape
        block = min(self.block_size, length)  # one block then covers everything
        qb, kb, vb = (to_blocks(pad_length(t, block), block) for t in (q, k, v))  # (B, H, n, b, D)
        n = qb.shape[2]
        valid = key_valid(padding_mask, batch, length, n * block, q.device).view(batch, n, block)
        if padding_mask is not None:
            keep = valid[:, None, :, :, None]
            kb, vb = kb.masked_fill(~keep, 0), vb.masked_fill(~keep, 0)
        return qb, kb, vb, valid, padding_mask is not None or n * block != length

    def sort_matrix(self, kb: torch.Tensor, valid: torch.Tensor, padded: bool) -> torch.Tensor:
        """(B, H, n, n) float32 relaxed permutation; entries outside the allowed pattern are exactly 0."""
        n = kb.shape[2]
        sums = kb.sum(dim=3, dtype=torch.float32)  # (B, H, n, D), eq. 2 (padding is already zero)
        if self.causal:  # eq. 5: every key before the block plus the block's first key, exclusive cumsum kept exact
            before = F.pad(torch.cumsum(sums[:, :, :-1], dim=2), (0, 0, 1, 0))
            sums = before + kb[:, :, :, 0].float()
        logits = self.sortnet(sums, out=n)  # (B, H, n, n): row i = where block i reads from
        if self.training and self.gumbel:
            logits = logits + gumbel_like(logits)
        logits = logits / self.temperature
        mask = None
        if padded:  # blocks with no real token neither read nor get read, and stay out of the balancing
            live = valid.any(dim=-1)  # (B, n)
            mask = (live[:, :, None] & live[:, None, :])[:, None]  # (B, 1, n, n)
        if self.causal:
            lower = torch.ones(n, n, dtype=torch.bool, device=kb.device).tril(-1)
            mask = lower if mask is None else mask & lower
        if self.iterations == 0:
            sort = unbalanced_sort(logits, mask)
        else:
            sort = log_sinkhorn(logits, 2 * self.iterations, mask=mask, causal=self.causal).exp()
        self._last_sort = (sort.detach(), valid.any(dim=-1))  # for trial_metrics: how far from trivial it sorts
        return sort

    def trial_metrics(self) -> dict[str, float]:
        """``sort_entropy`` and ``sort_nontrivial`` of the last forward's sort matrix (``sort_stats``)."""
        last = getattr(self, "_last_sort", None)
        return {} if last is None else sort_statistics(last[0], self.causal, last[1])

    def forward(self, q, k, v, padding_mask=None):
        self.check_inputs(q, k, v, padding_mask)
        batch, heads, length, dim = q.shape
        qb, kb, vb, valid, padded = self._blocks(q, k, v, padding_mask)
        n, block = qb.shape[2], qb.shape[3]
        sort = self.sort_matrix(kb, valid, padded)
        if not padded and flex.enabled(q):  # GPUs: one fused FlexAttention forward and backward
            out = flex.flex_block_attention(qb, kb, vb, sort, causal=self.causal)
            return out.reshape(batch, heads, n * block, dim)
        sorted_ok = local_ok = None
        if padded or self.causal:
            sorted_ok = sorted_slot_valid(sort, valid)[:, :, :, None, :]  # (B, H, n, 1, b)
            local_ok = valid[:, None, :, None, :] if padded else None  # (B, 1, n, 1, b)
            if self.causal:  # without padding, one (b, b) mask for every block (it becomes an additive bias)
                triangle = causal_block_mask(block, q.device)
                local_ok = triangle if local_ok is None else local_ok & triangle
        # Sorted block i = sum_j sort[i, j] * block j for K and V alike, then one softmax over it and block i.
        out = sinkhorn_block_attention(qb, kb, vb, sort, sorted_ok, local_ok)  # (B, H, n, b, D)
        return out.reshape(batch, heads, n * block, dim)[:, :, :length]


@register_attention("sortcut")
class SortCutAttention(SinkhornAttention):
    """SortCut Sinkhorn: sinkhorn's parameters plus ``budget`` (sorted blocks every query attends to, 1 to
    ceil(max_len / block_size); shorter inputs use min(budget, blocks)). Encoder only."""

    supports_causal = False
    causal_refusal = (
        "SortCut truncates to the first `budget` sorted blocks, which mix blocks from the whole sequence, so every "
        "query would read future tokens (the paper restricts it to the encoder, section 3.4)"
    )

    def __init__(self, *, budget: int = 2, **params: Any):
        super().__init__(**params)
        require_int(self.name, "budget", budget)
        if budget > self.max_blocks:
            raise ValueError(
                f"{self.name}: budget must be an int in [1, ceil(max_len / block_size) = {self.max_blocks}], "
                f"got {budget!r}"
            )
        self.budget = budget

    def forward(self, q, k, v, padding_mask=None):
        self.check_inputs(q, k, v, padding_mask)
        batch, heads, length, dim = q.shape
        qb, kb, vb, valid, padded = self._blocks(q, k, v, padding_mask)
        n = qb.shape[2]
        top = self.sort_matrix(kb, valid, padded)[:, :, : min(self.budget, n)]  # (B, H, n', n): the kept rows
        keys = sort_blocks(top, kb).flatten(2, 3)  # (B, H, n' * b, D), shared by every query
        values = sort_blocks(top, vb).flatten(2, 3)
        mask = None
        if padded:
            mask = sorted_slot_valid(top, valid).flatten(2)[:, :, None, :]  # (B, H, 1, n' * b)
            mask = mask | ~mask.any(dim=-1, keepdim=True)
        out = F.scaled_dot_product_attention(qb.flatten(2, 3), keys, values, attn_mask=mask)  # (B, H, n * b, D)
        return out[:, :, :length]


@register_attention("sinkhorn_mixture")
class SinkhornMixtureAttention(SinkhornAttention):
    """Sinkhorn attention plus dense attention, outputs summed (section 3.2.3); sinkhorn's parameters. O(L^2)."""

    linear_memory = False  # its dense half is quadratic in theory (linear only where SDPA runs a flash kernel)

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.dense = VanillaAttention(
            heads=self.heads, head_dim=self.head_dim, max_len=self.max_len, causal=self.causal
        )

    def forward(self, q, k, v, padding_mask=None):
        return super().forward(q, k, v, padding_mask) + self.dense(q, k, v, padding_mask=padding_mask)
