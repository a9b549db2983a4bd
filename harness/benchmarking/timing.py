"""How one case is timed on a device: warm-up runs, then repeats each preceded by an L2 flush and timed by a clock.

On CUDA the clock is a pair of CUDA events around the work (the GPU's own timestamps: no host round trip inside the
measurement) and the flush zeroes a buffer larger than the L2 cache, so a repeat does not find the previous repeat's
operands already on chip. On the CPU the clock is ``time.perf_counter`` around the work and a synchronizing no-op, and
there is no flush (the CPU sweep's figures stay comparable with its committed baseline). Both pieces are plain
callables, so the order of flush, warm-up and timed work is testable without a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

Work = Callable[[], None]
Clock = Callable[[Work], float]  # seconds the work took

MIN_FLUSH_BYTES = 256 * 2**20  # when the driver reports no L2 size: above every current GPU's L2 (H100: 50 MiB)


def l2_flush_bytes(l2_bytes: int) -> int:
    """Size of the buffer whose zeroing evicts the L2 cache: twice the cache (the replacement policy is not LRU, so a
    buffer of exactly its size leaves some lines), and never less than ``MIN_FLUSH_BYTES`` when the size is unknown."""
    return 2 * l2_bytes if l2_bytes > 0 else MIN_FLUSH_BYTES


def wall_clock(work: Work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def cuda_event_clock(device: torch.device) -> Clock:
    """Seconds between two CUDA events recorded around the work on the current stream of ``device``."""

    def clock(work: Work) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    return clock


def cuda_l2_flush(device: torch.device) -> Work:
    """Zero a buffer larger than ``device``'s L2 cache (allocated once); the flush itself is never inside a timing."""
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
    buffer = torch.empty(l2_flush_bytes(int(l2)), dtype=torch.uint8, device=device)
    return buffer.zero_


@dataclass(frozen=True)
class Timing:
    """The clock, the flush and the warm-up count of one device."""

    clock: Clock
    flush: Work = lambda: None  # noqa: E731
    warmup: int = 1

    def repeats(self, work: Work, count: int) -> list[float]:
        """Seconds of each of ``count`` runs of ``work`` after ``warmup`` untimed runs; each run follows a flush."""
        for _ in range(self.warmup):
            work()
        times = []
        for _ in range(count):
            self.flush()
            times.append(self.clock(work))
        return times


def timing_for(device: torch.device | str) -> Timing:
    """CUDA events, an L2 flush and three warm-up runs on CUDA (the first runs pick kernels and grow the allocator's
    pools); a wall clock, no flush and one warm-up run elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return Timing(clock=cuda_event_clock(device), flush=cuda_l2_flush(device), warmup=3)
    return Timing(clock=wall_clock)
