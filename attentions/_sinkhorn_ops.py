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
from torch.autograd.function import once_differentiable


def log_sinkhorn(
    log_alpha: torch.Tensor, steps: int, *, mask: torch.Tensor | None = None, causal: bool = False
) -> torch.Tensor:
    """Return log of the balanced matrix; masked entries come back as the dtype's most negative finite value.

    On the CPU the backward is written by hand (``_LogSinkhorn``): the matrices of the sinkhorn family are small
    (blocks x blocks), so autograd's per-operator cost, not arithmetic, was most of their time. Elsewhere it is
    ``reference_log_sinkhorn``, whose forward is the same sequence of operators.
    """
    if steps < 0:
        raise ValueError(f"log_sinkhorn: steps must be >= 0, got {steps}")
    if log_alpha.device.type != "cpu" or not torch.is_grad_enabled() or not log_alpha.requires_grad:
        return reference_log_sinkhorn(log_alpha, steps, mask=mask, causal=causal)
    return _LogSinkhorn.apply(log_alpha, steps, mask, causal)


def reference_log_sinkhorn(
    log_alpha: torch.Tensor, steps: int, *, mask: torch.Tensor | None = None, causal: bool = False
) -> torch.Tensor:
    """``log_sinkhorn`` in autograd operators (the test oracle of ``_LogSinkhorn``, and the path off the CPU)."""
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


class _LogSinkhorn(torch.autograd.Function):
    """Forward: ``reference_log_sinkhorn``'s operators without autograd, keeping each step's output. Backward, step by
    step in reverse, with g the gradient of a step's output y (zero on masked entries, which stay constants):
    a row step y = x - logsumexp_row(x) gives g - exp(y) * rowsum(g), a column step the same with column sums, and a
    prefix step y = x - log(sum_{i<=r} exp(x_i)) gives g_j - exp(x_j - m) * sum_{r>=j} g_r / S_r, where m is the
    column's shift and S the float64 prefix sums of the forward. A prefix step that fell back to ``logcumsumexp`` is
    differentiated by autograd again."""

    @staticmethod
    def forward(ctx, log_alpha, steps, mask, causal):
        floor = torch.finfo(log_alpha.dtype).min
        x = log_alpha if mask is None else log_alpha.masked_fill(~mask, floor)
        reachable = None if mask is None or not causal else _reachable(mask)
        saved = []
        for step in range(steps):
            if step % 2 == 0 or not causal:
                x = x - torch.logsumexp(x, dim=-1 if step % 2 == 0 else -2, keepdim=True)
                kind = "row" if step % 2 == 0 else "column"
            else:
                parts = _prefix_parts(x, reachable)
                if parts is None:  # underflow: the exact operator, differentiated by autograd in backward
                    saved.append(("exact", x))
                    x = x - torch.logcumsumexp(x, dim=-2)
                else:
                    shift, weights, sums = parts
                    saved.append(("prefix", weights, sums))
                    x = x - (sums.log() + shift).to(x.dtype)
                kind = None
            if mask is not None:
                x = x.masked_fill(~mask, floor)
            if kind is not None:
                saved.append((kind, x))
        ctx.saved, ctx.mask = saved, mask
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        mask = ctx.mask
        g = grad if mask is None else grad.masked_fill(~mask, 0)
        for kind, *tensors in reversed(ctx.saved):
            if kind == "row" or kind == "column":
                dim = -1 if kind == "row" else -2
                g = g - tensors[0].exp() * g.sum(dim=dim, keepdim=True)
            elif kind == "prefix":
                weights, sums = tensors
                later = (g.double() / sums).flip(-2).cumsum(-2).flip(-2)  # sum over r >= j of g_r / S_r
                g = g - (weights * later).to(g.dtype)
            else:
                with torch.enable_grad():
                    x = tensors[0].detach().requires_grad_()
                    (g,) = torch.autograd.grad(x - torch.logcumsumexp(x, dim=-2), x, g)
            # g stays 0 on masked entries without a pass: their weights exp(y), exp(x - m) are exactly 0
        return g, None, None, None


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
    parts = None if x.device.type != "cpu" else _prefix_parts(x, reachable)
    if parts is None:
        return torch.logcumsumexp(x, dim=-2)
    shift, _, sums = parts
    return (sums.log() + shift).to(x.dtype)


def _prefix_parts(
    x: torch.Tensor, reachable: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(shift, exp(x - shift), prefix sums) in float64, the sums of unreachable prefixes set to 1; None on underflow."""
    shift = x.detach().amax(dim=-2, keepdim=True).double()
    weights = (x.double() - shift).exp()
    sums = weights.cumsum(dim=-2)
    fine = sums > UNDERFLOW
    if not bool(fine.all()):
        if reachable is None:
            floor = torch.finfo(x.dtype).min / 2
            reachable = torch.cummax(x.detach(), dim=-2).values > floor  # the prefix holds an entry not masked
        if bool((reachable & ~fine).any()):
            return None
        sums = torch.where(fine, sums, 1.0)
    return shift, weights, sums
