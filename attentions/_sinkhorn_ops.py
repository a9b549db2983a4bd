"""The log-domain Sinkhorn operator, shared by every plugin that balances a matrix (sinkhorn family, sinkformer).

``log_sinkhorn`` alternates normalizations of rows (last dim) and columns (second-to-last dim), starting with rows,
``steps`` times in all: Sinkhorn attention's ``iterations=k`` is ``steps=2k`` (the paper's S^k = F_c(F_r(S^{k-1}))),
Sinkformer's ``iterations=n`` is ``steps=n`` (so one step is exactly a row softmax).

``mask`` (bool, broadcastable; True = allowed) removes entries from every normalization. ``causal=True`` is Causal
Sinkhorn Balancing in a leak-free form: a column is normalized by its prefix over rows (logcumsumexp down the rows), so
row i never depends on any later row; row normalization only involves row i itself.
"""

from __future__ import annotations

import torch


def log_sinkhorn(
    log_alpha: torch.Tensor, steps: int, *, mask: torch.Tensor | None = None, causal: bool = False
) -> torch.Tensor:
    """Return log of the balanced matrix; masked entries come back as the dtype's most negative finite value."""
    if steps < 0:
        raise ValueError(f"log_sinkhorn: steps must be >= 0, got {steps}")
    floor = torch.finfo(log_alpha.dtype).min
    x = log_alpha if mask is None else log_alpha.masked_fill(~mask, floor)
    for step in range(steps):
        if step % 2 == 0:
            x = x - torch.logsumexp(x, dim=-1, keepdim=True)
        elif causal:
            x = x - torch.logcumsumexp(x, dim=-2)
        else:
            x = x - torch.logsumexp(x, dim=-2, keepdim=True)
        if mask is not None:  # keep masked entries at the floor (a fully masked row would otherwise drift)
            x = x.masked_fill(~mask, floor)
    return x
