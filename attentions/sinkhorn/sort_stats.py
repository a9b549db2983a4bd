"""How far a learned sort is from trivial: the Sinkhorn plugins' per-trial diagnostics (``trial_metrics``).

Without them a Sinkhorn result cannot say whether it came from sorting at all: a sort matrix near the identity makes
Sinkhorn attention local attention with a second copy of the local block.

* ``sort_entropy``: mean normalized entropy of the sort matrix's rows, H(row) / log(allowed entries): 0 is a hard
  permutation, 1 a uniform (maximally soft) row.
* ``sort_nontrivial``: fraction of query blocks whose strongest sorted block is not the trivial one: their own block
  (non-causal), or the block just before (causal, where a block may only read earlier blocks and its own block is
  the local half of the attention already).

Rows with fewer than two allowed entries (a causal first or second block, padding-only blocks) say nothing and are
left out.
"""

from __future__ import annotations

import torch


def sort_statistics(sort: torch.Tensor, causal: bool, live: torch.Tensor | None = None) -> dict[str, float]:
    """``sort``: (B, H, n, n) relaxed permutation, row i = where block i reads from (zeros outside the pattern);
    ``live``: (B, n), the blocks holding real tokens (default: all)."""
    sort = sort.detach().float()
    batch, _, n, _ = sort.shape
    if live is None:
        live = torch.ones(batch, n, dtype=torch.bool, device=sort.device)
    # The pattern, not the values (a hard row underflows to a single non-zero entry).
    allowed = (live[:, :, None] & live[:, None, :])[:, None]  # (B, 1, n, n)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=sort.device).tril(-1)
    entries = allowed.sum(-1).expand(sort.shape[:3])  # (B, H, n)
    informative = entries >= 2
    if not informative.any():
        return {"sort_entropy": float("nan"), "sort_nontrivial": float("nan")}
    rows = sort / sort.sum(-1, keepdim=True).clamp_min(1e-30)
    entropy = -(rows * rows.clamp_min(1e-30).log()).sum(-1)  # (B, H, n)
    normalized = entropy / entries.clamp_min(2).float().log()
    trivial = torch.arange(n, device=sort.device) - (1 if causal else 0)
    strongest = sort.argmax(-1)
    off = strongest != trivial
    return {
        "sort_entropy": float(normalized[informative].mean()),
        "sort_nontrivial": float(off[informative].float().mean()),
    }
