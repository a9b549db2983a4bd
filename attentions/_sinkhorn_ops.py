"""The log-domain Sinkhorn operator, shared by every plugin that balances a matrix (sinkhorn family, sinkformer).

``log_sinkhorn`` alternates normalizations of rows (last dim) and columns (second-to-last dim), starting with rows,
``steps`` times in all: Sinkhorn attention's ``iterations=k`` is ``steps=2k`` (the paper's S^k = F_c(F_r(S^{k-1}))),
Sinkformer's ``iterations=n`` is ``steps=n`` (so one step is exactly a row softmax).

``mask`` (bool, broadcastable; True = allowed) removes entries from every normalization. ``causal=True`` is Causal
Sinkhorn Balancing in a leak-free form: a column is normalized by its prefix over rows (logcumsumexp down the rows), so
row i never depends on any later row; row normalization only involves row i itself.

The prefix normalization is ``prefix_logsumexp``: torch's CPU ``logcumsumexp`` costs about 0.4 ms on a 4 x 64 x 64
matrix (one exp and one log1p per element, unvectorized), and with its backward it was 94% of causal balancing.
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
            x = x - prefix_logsumexp(x)
        else:
            x = x - torch.logsumexp(x, dim=-2, keepdim=True)
        if mask is not None:  # keep masked entries at the floor (a fully masked row would otherwise drift)
            x = x.masked_fill(~mask, floor)
    return x


UNDERFLOW = 1e-280  # a float64 prefix sum below this has lost digits: its prefix sits ~645 below the column's maximum


def prefix_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``torch.logcumsumexp(x, dim=-2)``, about 4x faster on CPU with its backward, to float32 rounding.

    Each column is shifted by its maximum and summed in float64 (exp, cumsum, log: vectorized operators whose
    backward autograd derives). A prefix whose entries all sit more than ~645 below the column's maximum would
    underflow; if any prefix that holds a finite-sized entry does, the call falls back to ``logcumsumexp``. Prefixes of
    masked entries only (the dtype's most negative value, as ``log_sinkhorn`` writes them) come back as the shift;
    their value is never used, because the caller masks those entries again. Off the CPU it is ``logcumsumexp``.
    """
    if x.device.type != "cpu":
        return torch.logcumsumexp(x, dim=-2)
    shift = x.detach().amax(dim=-2, keepdim=True).double()
    sums = (x.double() - shift).exp().cumsum(dim=-2)
    fine = sums > UNDERFLOW
    if not bool(fine.all()):
        floor = torch.finfo(x.dtype).min / 2
        reachable = torch.cummax(x.detach(), dim=-2).values > floor  # the prefix holds an entry that is not masked
        if bool((reachable & ~fine).any()):
            return torch.logcumsumexp(x, dim=-2)
        sums = torch.where(fine, sums, 1.0)
    return (sums.log() + shift).to(x.dtype)
