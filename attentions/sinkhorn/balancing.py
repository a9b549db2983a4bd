"""The log-domain Sinkhorn operator, shared by every plugin that balances a matrix (sinkhorn family, sinkformer).

``log_sinkhorn`` alternates normalizations of rows (last dim) and columns (second-to-last dim), starting with rows,
``steps`` times in all: Sinkhorn attention's ``iterations=k`` is ``steps=2k`` (the paper's S^k = F_c(F_r(S^{k-1}))),
Sinkformer's ``iterations=n`` is ``steps=n`` (so one step is exactly a row softmax).

``mask`` (bool, broadcastable; True = allowed) removes entries from every normalization. ``causal=True`` is Causal
Sinkhorn Balancing in a leak-free form: a column is normalized by its prefix over rows (logcumsumexp down the rows), so
row i never depends on any later row; row normalization only involves row i itself.

Here ``log_sinkhorn`` picks the path: on the CPU a compiled kernel (``cpu``), on CUDA two Triton kernels
(``triton_balancing``) up to their largest matrix, elsewhere the operator form (``reference``), which is the oracle of
both.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from attentions.sinkhorn.cpu import cpu_log_sinkhorn
from attentions.sinkhorn.reference import prefix_logsumexp, reference_log_sinkhorn

__all__ = ["log_sinkhorn", "prefix_logsumexp", "reference_log_sinkhorn"]


def log_sinkhorn(
    log_alpha: torch.Tensor, steps: int, *, mask: torch.Tensor | None = None, causal: bool = False
) -> torch.Tensor:
    """Return log of the balanced matrix; masked entries come back as the dtype's most negative finite value.

    On the CPU (float32, float64) it runs the compiled kernel (``csrc/log_sinkhorn.cpp``, module ``cpu``):
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
        return cpu_log_sinkhorn(log_alpha, steps, mask, causal)
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
