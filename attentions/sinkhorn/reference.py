"""The operator form of log-domain Sinkhorn balancing: the oracle of every kernel of ``log_sinkhorn`` (the CPU's C++
kernel, CUDA's Triton kernels) and the path wherever none applies. See ``balancing`` for what the steps are.

Its prefix normalization is ``prefix_logsumexp``, since torch's CPU ``logcumsumexp`` costs about 0.4 ms on a
4 x 64 x 64 matrix (one exp and one log1p per element, unvectorized) and with its backward was 94% of causal balancing
in operators.
"""

from __future__ import annotations

import torch


def reference_log_sinkhorn(
    log_alpha: torch.Tensor, steps: int, *, mask: torch.Tensor | None = None, causal: bool = False
) -> torch.Tensor:
    """``log_sinkhorn`` in autograd operators (the test oracle of the kernel, and the path off it)."""
    floor = torch.finfo(log_alpha.dtype).min
    x = log_alpha if mask is None else log_alpha.masked_fill(~mask, floor)
    reachable = None if mask is None or not causal else _reachable(mask)
    for step in range(steps):
        if step % 2 == 0:
            x = x - torch.logsumexp(x, dim=-1, keepdim=True)
        elif causal:
            x = x - prefix_logsumexp(x, reachable)
        else:
            x = x - torch.logsumexp(x, dim=-2, keepdim=True)
        if mask is not None:  # keep masked entries at the floor (a fully masked row would otherwise drift)
            x = x.masked_fill(~mask, floor)
    return x


def _reachable(mask: torch.Tensor) -> torch.Tensor:
    """True where the prefix of rows up to here (per column) holds an allowed entry."""
    return mask.to(torch.uint8).cummax(dim=-2).values.bool()


UNDERFLOW = 1e-280  # a float64 prefix sum below this has lost digits: its prefix sits ~645 below the column's maximum


def prefix_logsumexp(x: torch.Tensor, reachable: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.logcumsumexp(x, dim=-2)``, about 4x faster on CPU with its backward, to float32 rounding.

    Each column is shifted by its maximum and summed in float64 (exp, cumsum, log: vectorized operators whose
    backward autograd derives). A prefix whose entries all sit more than ~645 below the column's maximum would
    underflow; if any prefix that holds a finite-sized entry does, the call falls back to ``logcumsumexp``. Prefixes of
    masked entries only (the dtype's most negative value, as ``log_sinkhorn`` writes them) come back as the shift;
    their value is never used, because the caller masks those entries again. ``reachable`` (``_reachable`` of the
    mask) says which prefixes hold an allowed entry, saving the check its own pass. Off the CPU it is
    ``logcumsumexp``.
    """
    if x.device.type != "cpu":
        return torch.logcumsumexp(x, dim=-2)
    shift = x.detach().amax(dim=-2, keepdim=True).double()
    sums = (x.double() - shift).exp().cumsum(dim=-2)
    fine = sums > UNDERFLOW
    if not bool(fine.all()):
        if reachable is None:
            floor = torch.finfo(x.dtype).min / 2
            reachable = torch.cummax(x.detach(), dim=-2).values > floor  # the prefix holds an entry not masked
        if bool((reachable & ~fine).any()):
            return torch.logcumsumexp(x, dim=-2)
        sums = torch.where(fine, sums, 1.0)  # unreachable prefixes: their value is never used
    return (sums.log() + shift).to(x.dtype)
