"""The share of a step's wall time in which the GPU runs nothing: time it waits for the host to launch work.

``torch.profiler`` records, on one timeline, the host range of the step (a ``record_function`` that ends after the
device has finished) and every kernel, copy and fill the device ran. The device is busy on the union of those
intervals (kernels of several streams may overlap, and count once); the idle share is the rest of the step's window,
divided by the window. Kernels that start before or end after the window count only inside it.

The same trace counts the device's work items per step (``launches_per_step``: kernels, copies and fills on a GPU,
operators when the CPU is the device): a step bound by its launches shows it as a high idle share and a high count.

The arithmetic is a pure function of intervals (``idle_share``, ``launches_per_step``); ``profile_device`` collects
them. The profiler itself slows the host a little, so the share it reports is an upper bound of the unprofiled step's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

Interval = tuple[float, float]  # (start, end), any one time unit
STEP = "attnbench.step"


def busy_time(intervals: Iterable[Interval], window: Interval) -> float:
    """Length of the union of ``intervals`` clipped to ``window``."""
    lo, hi = window
    clipped = sorted((max(s, lo), min(e, hi)) for s, e in intervals if min(e, hi) > max(s, lo))
    total, end = 0.0, lo
    for start, stop in clipped:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def idle_share(intervals: Iterable[Interval], windows: Sequence[Interval]) -> float:
    """Idle time over wall time, summed over the steps' ``windows`` (each clipped on its own)."""
    intervals = list(intervals)
    wall = sum(hi - lo for lo, hi in windows)
    if wall <= 0:
        raise ValueError("idle share: the steps' windows have no length")
    return 1 - sum(busy_time(intervals, w) for w in windows) / wall


def launches_per_step(intervals: Iterable[Interval], windows: Sequence[Interval]) -> float:
    """Device work items that start inside a step's window, per step."""
    if not windows:
        raise ValueError("launches per step: no step windows in the trace")
    starts = [start for start, _ in intervals]
    return sum(lo <= s < hi for s in starts for lo, hi in windows) / len(windows)


@dataclass(frozen=True)
class DeviceProfile:
    """What the profiler says of a step: the device's idle share and its work items (launches) per step."""

    idle_share: float
    launches: float


def trace_intervals(
    events: Iterable, *, device_type: torch.autograd.DeviceType, step: str = STEP
) -> tuple[list[Interval], list[Interval]]:
    """(busy intervals of ``device_type``, windows of the host ranges named ``step``) in microseconds, from a
    profiler's ``events()``. On a GPU the profiler mirrors each host ``record_function`` range as an annotation on
    the device timeline under the same name: those spans are not work, so a device event named like a host event is
    left out (kernel, copy and fill names never are host names). Profiling the CPU as the device, its operators are
    the work."""
    events = list(events)
    cpu = torch.autograd.DeviceType.CPU
    host_names = {event.name for event in events if event.device_type == cpu} if device_type != cpu else set()
    busy, windows = [], []
    for event in events:
        span = (float(event.time_range.start), float(event.time_range.end))
        if event.name == step:
            if event.device_type == cpu:
                windows.append(span)
        elif event.device_type == device_type and event.name not in host_names:
            busy.append(span)
    return busy, windows


def profile_device(step: Callable[[], None], device: torch.device | str, steps: int = 3) -> DeviceProfile:
    """Idle share and launches per step of the device over ``steps`` profiled runs of ``step`` (after one untimed
    run). Each run ends with a device synchronize inside its range, so the window closes when the device's last kernel
    has finished."""
    device = torch.device(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    step()
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(steps):
            with torch.profiler.record_function(STEP):
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
    kind = torch.autograd.DeviceType.CUDA if device.type == "cuda" else torch.autograd.DeviceType.CPU
    busy, windows = trace_intervals(profile.events(), device_type=kind)
    return DeviceProfile(idle_share(busy, windows), launches_per_step(busy, windows))
