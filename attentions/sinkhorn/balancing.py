"""The log-domain Sinkhorn operator, shared by every plugin that balances a matrix (sinkhorn family, sinkformer).

``log_sinkhorn`` alternates normalizations of rows (last dim) and columns (second-to-last dim), starting with rows,
``steps`` times in all: Sinkhorn attention's ``iterations=k`` is ``steps=2k`` (the paper's S^k = F_c(F_r(S^{k-1}))),
Sinkformer's ``iterations=n`` is ``steps=n`` (so one step is exactly a row softmax).

``mask`` (bool, broadcastable; True = allowed) removes entries from every normalization. ``causal=True`` is Causal
Sinkhorn Balancing in a leak-free form: a column is normalized by its prefix over rows (logcumsumexp down the rows), so
row i never depends on any later row; row normalization only involves row i itself.

Here ``log_sinkhorn`` picks the path: on the CPU a compiled kernel (``cpu``), on CUDA two Triton kernels
(``triton_balancing`` for matrices that fit one program's registers, ``triton_tiled_balancing`` for larger ones up to
its largest), elsewhere the operator form (``reference``), which is the oracle of all of them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

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
    their time in torch operators. On CUDA it runs two Triton kernels, every step in one launch each way: for n up to
    ``triton_balancing.MAX_N`` those of ``triton_balancing`` (the matrix in registers), above that up to
    ``triton_tiled_balancing.MAX_TILED_N`` those of ``triton_tiled_balancing`` (the matrix streamed in tiles);
    ``ATTNBENCH_TRITON_CUDA=0`` switches both off.
    Elsewhere, or where a kernel cannot be used, it is ``reference_log_sinkhorn``.
    """
    if steps < 0:
        raise ValueError(f"log_sinkhorn: steps must be >= 0, got {steps}")
    if log_alpha.dim() < 2 or log_alpha.shape[-1] != log_alpha.shape[-2]:
        return reference_log_sinkhorn(log_alpha, steps, mask=mask, causal=causal)
    if log_alpha.device.type == "cpu":
        return cpu_log_sinkhorn(log_alpha, steps, mask, causal)
    kernel = _triton_kernel(log_alpha) if log_alpha.is_cuda else None
    if kernel is not None:
        return kernel(log_alpha, steps, mask=mask, causal=causal)
    return reference_log_sinkhorn(log_alpha, steps, mask=mask, causal=causal)


def _triton_kernel(x: torch.Tensor) -> Callable[..., torch.Tensor] | None:
    """The Triton balancing that takes ``x``, or None: the one-program kernels up to ``triton_balancing.MAX_N``, the
    tiled ones up to ``triton_tiled_balancing.MAX_TILED_N``. triton is imported only here, on the first CUDA call
    (importing it earlier would fix its interpreter setting before a test can choose it)."""
    if os.environ.get("ATTNBENCH_TRITON_CUDA", "1") == "0" or importlib.util.find_spec("triton") is None:
        return None
    from attentions.sinkhorn import triton_balancing, triton_tiled_balancing

    if triton_balancing.applies(x):
        return triton_balancing.triton_log_sinkhorn
    if triton_tiled_balancing.applies(x):
        return triton_tiled_balancing.tiled_log_sinkhorn
    return None
