"""Hung and out-of-memory trials: when to cancel a running trial, and how to word what killed it.

``Watchdog`` reads the step reports the trials send to the progress board (``progress.py``) and tells the driver which
trials to cancel: one whose step has not moved for ``resources.stall_minutes`` (a hung collective, a lock that never
frees, a swapping node), and one still running ``resources.timeout_minutes`` after it started. Both clocks run on the
driver's clock, which is injectable, and both start when an attempt reports that it has started (a trial waiting for
resources is not running); the stall clock starts at the attempt's first step report, so loading data and building
the model count against the timeout only. Each attempt (a retry from the last checkpoint) gets fresh clocks.

Out-of-memory errors become one readable line with what sized the trial: its sequence length, batch and plugin.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STARTING = "starting"  # the ``phase`` of the report a trial sends before anything else


@dataclass
class _Attempt:
    stall_s: float | None
    timeout_s: float | None
    attempt: int
    seq: int = 0  # the board's sequence number of the last report seen
    started_at: float | None = None
    step: int | None = None
    progress_at: float | None = None
    resumed_from_step: int = 0
    starts: int = 0  # the board's count of this trial's starts, all attempts (Ray's retries of a dead worker too)


def _minutes(value: float) -> str:
    return f"{value:g} min"


class Watchdog:
    """Which running trials to cancel, from the board's snapshots; ``clock`` returns seconds (monotonic)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.trials: dict[str, _Attempt] = {}

    def submitted(self, trial_id: str, resources: dict[str, Any], attempt: int) -> None:
        """A new attempt of ``trial_id`` was submitted; its reports carry ``attempt``."""
        stall, timeout = resources.get("stall_minutes") or 0, resources.get("timeout_minutes") or 0
        previous = self.trials.get(trial_id)
        self.trials[trial_id] = _Attempt(
            stall_s=stall * 60 if stall else None,
            timeout_s=timeout * 60 if timeout else None,
            attempt=attempt,
            seq=previous.seq if previous else 0,
            starts=previous.starts if previous else 0,
        )

    def forget(self, trial_id: str) -> None:
        self.trials.pop(trial_id, None)

    def starts(self, trial_id: str) -> int:
        """How many times the trial has started so far (each attempt, and each of Ray's retries of a dead worker)."""
        state = self.trials.get(trial_id)
        return state.starts if state else 0

    def resumed_from_step(self, trial_id: str) -> int:
        state = self.trials.get(trial_id)
        return state.resumed_from_step if state else 0

    def observe(self, snapshot: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
        """Take in the board's latest reports; return ``(trial_id, reason)`` for each trial to cancel now (once)."""
        now = self.clock()
        doomed = []
        for trial_id, state in self.trials.items():
            report = snapshot.get(trial_id)
            if report is not None and report.get("attempt") == state.attempt and report.get("seq", 0) != state.seq:
                state.seq = report.get("seq", 0)
                if report.get("starts", 0) != state.starts or state.started_at is None:  # (re)started: fresh clocks
                    state.starts = report.get("starts", 0)
                    state.started_at, state.step, state.progress_at = now, None, None
                step = report.get("step")
                if step is not None and step != state.step:
                    state.step, state.progress_at = int(step), now
                    state.resumed_from_step = int(report.get("resumed_from_step") or 0)
            reason = self._overdue(state, now)
            if reason is not None:
                doomed.append((trial_id, reason))
        for trial_id, _ in doomed:
            self.trials[trial_id].stall_s = self.trials[trial_id].timeout_s = None  # cancelled once per attempt
        return doomed

    @staticmethod
    def _overdue(state: _Attempt, now: float) -> str | None:
        at = f"at step {state.step:,}" if state.step is not None else "before its first step"
        if state.stall_s is not None and state.progress_at is not None and now - state.progress_at >= state.stall_s:
            return f"no progress for {_minutes(state.stall_s / 60)} {at} (stall_minutes)"
        if state.timeout_s is not None and state.started_at is not None and now - state.started_at >= state.timeout_s:
            return f"still running after {_minutes(state.timeout_s / 60)} {at} (timeout_minutes)"
        return None


def gave_up(reason: str, attempts: int, resumed_from_step: int) -> str:
    """The error stored for a trial cancelled on its last allowed attempt."""
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    resumed = f", the last resumed from step {resumed_from_step:,}" if resumed_from_step else ""
    return f"cancelled: {reason}; {tries}{resumed}, no retries left (max_retries)"


# -- out of memory --------------------------------------------------------------------------------------------------
def out_of_memory_kind(exc: BaseException | None) -> str | None:
    """``"GPU"``, ``"host"`` or None: which memory ran out, for an exception from a trial (or from ``ray.get``).

    A CUDA allocator failure is ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` is the same class), or a
    ``RuntimeError`` saying "CUDA out of memory" where a library re-raised it; a host allocation failure is
    ``MemoryError`` or the ``RuntimeError`` of torch's CPU allocator; Ray's memory monitor kills the worker and
    ``ray.get`` raises ``ray.exceptions.OutOfMemoryError``. Causes and contexts are followed."""
    import torch

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if _is_ray_oom(exc) or isinstance(exc, MemoryError):
            return "host"
        if isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in text:
            return "host"
        if isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "CUDA out of memory" in text):
            return "GPU"
        exc = exc.__cause__ or exc.__context__
    return None


def _is_ray_oom(exc: BaseException) -> bool:
    from ray.exceptions import OutOfMemoryError as RayOutOfMemoryError

    return isinstance(exc, RayOutOfMemoryError)


def trial_size(config: dict[str, Any]) -> str:
    """``length L, batch B, plugin NAME(params)`` of a trial's config (the length is the task's ``max_len``)."""
    try:
        import tasks

        length: Any = tasks.build(config["task"], scale=config["scale"], seed=0, **config["task_params"]).spec.max_len
    except Exception:  # a task that cannot be built here (a missing data path): say what is known
        length = "?"
    params = ",".join(f"{k}={v}" for k, v in sorted(config["params"].items()))
    plugin = config["attention"] + (f"({params})" if params else "")
    return f"length {length}, batch {config['train']['batch_size']}, plugin {plugin}"


def out_of_memory_error(config: dict[str, Any], kind: str, detail: str) -> str:
    """The stored error of a trial that ran out of memory: what ran out, the trial's size, then the raw error."""
    where = "GPU" if kind == "GPU" else "host"
    return f"out of memory ({where}) with {trial_size(config)}: {detail}"
