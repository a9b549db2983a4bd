"""The project's CPU kernels (``csrc/``), compiled on first use into one extension: the sinkhorn family's fused block
attention (``sinkhorn_block.cpp``) and log-domain Sinkhorn balancing (``log_sinkhorn.cpp``), and the drawing of
``sbm``'s attention graph (``sbm_sample.cpp``).

It is built once per content of ``csrc/`` (about 30 s on 2 cores, cached under ``~/.cache/torch_extensions`` or
``TORCH_EXTENSIONS_DIR`` in a folder named by the sources' hash, see ``_kernel_build``): every checkout with the same
sources shares it, a killed builder blocks no one, and a process that waits too long for another's build falls back.
Where it cannot be built or loaded (no compiler, a torch without the BLAS symbols it calls) or in time, ``kernel()``
returns None after one warning; ``sinkhorn.block_attention`` then keeps its batched-product path,
``sinkhorn.balancing`` its autograd operators and ``sbm`` its drawing in torch operators, which give the same results.
``ATTNBENCH_FUSED_CPU=0`` switches the kernels off.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).parent / "csrc"
SOURCES = [CSRC / name for name in ("bindings.cpp", "sinkhorn_block.cpp", "log_sinkhorn.cpp", "sbm_sample.cpp")]


def enabled() -> bool:
    return os.environ.get("ATTNBENCH_FUSED_CPU", "1") != "0"


def build_args() -> dict:
    """What ``_kernel_build.load_extension`` builds the kernels from: every file of ``csrc/``, the translation units,
    the flags (the build folder's name hashes them all)."""
    flags = ["-O3", "-fopenmp"]
    avx2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    if avx2:  # 256-bit vectors for the tile products and ATen's vectorized exp (AVX-512 code measured slower here)
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return {
        "base": "attnbench_sinkhorn_cpu" + ("_avx2" if avx2 else ""),
        "files": sorted(path for path in CSRC.iterdir() if path.suffix in (".cpp", ".h")),
        "compiled": [path.name for path in SOURCES],
        "cflags": flags,
        "ldflags": ["-fopenmp"],
    }


@functools.cache
def kernel() -> ModuleType | None:
    """The compiled module (``forward``, ``backward``, ``log_sinkhorn_forward``, ``log_sinkhorn_backward``,
    ``sbm_draw_rows``), or None where it cannot be built here."""
    from attentions._kernel_build import KernelBuildTimeout, load_extension

    try:
        return load_extension(**build_args())
    except KernelBuildTimeout as exc:
        warnings.warn(
            f"attnbench: gave up waiting for the CPU kernels ({exc}); using torch operators, which are slower but "
            "give the same results",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    except Exception as exc:  # noqa: BLE001 - any build or load failure means the batched path
        warnings.warn(
            f"attnbench: the CPU kernels of the sinkhorn family could not be built ({exc}); "
            "using torch operators, which are slower but give the same results",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def usable(x: torch.Tensor) -> ModuleType | None:
    """The kernel when it applies to tensors like ``x`` (CPU, float32 or float64, switched on), else None."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or not enabled():
        return None
    return kernel()
