"""The log-domain Sinkhorn operator, shared by every plugin that balances a matrix (sinkhorn family, sinkformer).

``log_sinkhorn`` alternates normalizations of rows (last dim) and columns (second-to-last dim), starting with rows,
``steps`` times in all: Sinkhorn attention's ``iterations=k`` is ``steps=2k`` (the paper's S^k = F_c(F_r(S^{k-1}))),
Sinkformer's ``iterations=n`` is ``steps=n`` (so one step is exactly a row softmax).

``mask`` (bool, broadcastable; True = allowed) removes entries from every normalization. ``causal=True`` is Causal
Sinkhorn Balancing in a leak-free form: a column is normalized by its prefix over rows (logcumsumexp down the rows), so
row i never depends on any later row; row normalization only involves row i itself.

On the CPU the balancing runs in a compiled kernel (``csrc/log_sinkhorn.cpp``), on CUDA in two Triton kernels
(``triton_balancing``) up to their largest matrix. The operator form, ``reference_log_sinkhorn``, is the oracle of
both and the path elsewhere; its prefix normalization is ``prefix_logsumexp``,
since torch's CPU ``logcumsumexp`` costs about 0.4 ms on a 4 x 64 x 64 matrix (one exp and one log1p per element,
unvectorized) and with its backward was 94% of causal balancing in operators.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch.autograd.function import once_differentiable

from attentions import _fused_cpu
from attentions._blocks import kernel_mask


def log_sinkhorn(
    log_alpha: torch.Tensor, steps: int, *, mask: torch.Tensor | None = None, causal: bool = False
) -> torch.Tensor:
    """Return log of the balanced matrix; masked entries come back as the dtype's most negative finite value.

    On the CPU (float32, float64) it runs the compiled kernel (``csrc/log_sinkhorn.cpp``, through ``_LogSinkhorn``):
    the matrices of the sinkhorn family are small (blocks x blocks), so per-operator cost, not arithmetic, was most of
    their time in torch operators. On CUDA, for n up to ``triton_balancing.MAX_N``, it runs the two Triton kernels of
    ``triton_balancing`` (every step in one launch each way; ``ATTNBENCH_TRITON_CUDA=0`` switches them off).
    Elsewhere, or where a kernel cannot be used, it is ``reference_log_sinkhorn``.
    """
    if steps < 0:
        raise ValueError(f"log_sinkhorn: steps must be >= 0, got {steps}")
    if log_alpha.dim() < 2 or log_alpha.shape[-1] != log_alpha.shape[-2]:
        return reference_log_sinkhorn(log_alpha, steps, mask=mask, causal=causal)
    if log_alpha.device.type == "cpu":
        return _on_cpu(log_alpha, steps, mask, causal)
    if log_alpha.is_cuda and _triton_applies(log_alpha):
        from attentions.sinkhorn import triton_balancing

        return triton_balancing.triton_log_sinkhorn(log_alpha, steps, mask=mask, causal=causal)
    return reference_log_sinkhorn(log_alpha, steps, mask=mask, causal=causal)


def _triton_applies(x: torch.Tensor) -> bool:
    """Whether the Triton kernels take ``x``; triton is imported only here, on the first CUDA call (importing it
    earlier would fix its interpreter setting before a test can choose it)."""
    if os.environ.get("ATTNBENCH_TRITON_CUDA", "1") == "0" or importlib.util.find_spec("triton") is None:
        return False
    from attentions.sinkhorn import triton_balancing

    return triton_balancing.applies(x)


@torch.compiler.disable
def _on_cpu(log_alpha, steps, mask, causal) -> torch.Tensor:
    """The CPU kernel is opaque to ``torch.compile`` (and building it is no graph), so on the CPU a compiled model runs
    this eagerly, one clean graph break; on a GPU the reference's operators are compiled."""
    if _fused_cpu.usable(log_alpha) is None:
        return reference_log_sinkhorn(log_alpha, steps, mask=mask, causal=causal)
    record = torch.is_grad_enabled() and log_alpha.requires_grad  # (the forward below runs without grad mode)
    return _LogSinkhorn.apply(log_alpha, steps, mask, causal, record)


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


class _LogSinkhorn(torch.autograd.Function):
    """The CPU kernel as an autograd function: the forward keeps every step's output (and the causal prefixes) only
    when a gradient will be asked for; the backward runs the steps in reverse in the kernel."""

    @staticmethod
    def forward(ctx, log_alpha, steps, mask, causal, record):
        shape, n = log_alpha.shape, log_alpha.shape[-1]
        matrices = None if mask is None else kernel_mask(mask, tuple(shape[:-2]), (n, n))
        out, trace, prefix = _fused_cpu.kernel().log_sinkhorn_forward(
            log_alpha.reshape(-1, n, n).contiguous(), steps, matrices, causal, record
        )
        if record:
            ctx.save_for_backward(trace, prefix)
        ctx.mask, ctx.causal, ctx.shape = matrices, causal, shape
        return out.view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        trace, prefix = ctx.saved_tensors
        n = ctx.shape[-1]
        grad = grad.reshape(-1, n, n).contiguous()
        d_log_alpha = _fused_cpu.kernel().log_sinkhorn_backward(grad, trace, prefix, ctx.mask, ctx.causal)
        return d_log_alpha.view(ctx.shape), None, None, None, None


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
