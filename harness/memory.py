"""Peak memory of one piece of work, measured the same way for every plugin.

CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated when the work began.
CPU: PyTorch keeps no allocator statistics on CPU, so a ``TorchDispatchMode`` watches every tensor storage that an
operator (forward, backward, optimizer) creates, adds its bytes when it appears and subtracts them when the storage is
freed (weak references; PyTorch keeps one Python object per storage). The peak of that running sum is the figure:
bytes of tensor storage live at once above the starting point, which is what CUDA's counter reports too. Scratch
buffers that a kernel allocates and frees internally (not operator outputs) are not seen on CPU.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary


class _StorageTracker(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                if storage not in self._seen:
                    nbytes = storage.nbytes()
                    self._seen[storage] = nbytes
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, nbytes)
        return out


def measure_peak(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, int]:
    """Run ``fn()``; return its result and the peak bytes it allocated above the starting point."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - start
    tracker = _StorageTracker()
    with tracker:
        result = fn()
    return result, tracker.peak
