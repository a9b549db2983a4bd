"""``log_sinkhorn`` on the CPU: the compiled kernel (``csrc/log_sinkhorn.cpp``, built by ``attentions._fused_cpu``)
as an autograd function. The matrices of the sinkhorn family are small (blocks x blocks), so per-operator cost, not
arithmetic, was most of their time in torch operators.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from attentions import _fused_cpu
from attentions._blocks import kernel_mask
from attentions.sinkhorn.reference import reference_log_sinkhorn


@torch.compiler.disable
def cpu_log_sinkhorn(log_alpha, steps, mask, causal) -> torch.Tensor:
    """``log_sinkhorn`` in the CPU kernel (float32, float64; the reference where it cannot be used). The kernel is
    opaque to ``torch.compile`` (and building it is no graph), so a compiled model runs this eagerly, one clean graph
    break."""
    if _fused_cpu.usable(log_alpha) is None:
        return reference_log_sinkhorn(log_alpha, steps, mask=mask, causal=causal)
    record = torch.is_grad_enabled() and log_alpha.requires_grad  # (the forward below runs without grad mode)
    return _LogSinkhorn.apply(log_alpha, steps, mask, causal, record)


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
