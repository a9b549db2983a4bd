"""Live progress of a running grid: what each running trial is doing, not only how many trials are done.

Trials report to a ``ProgressBoard`` (a zero-CPU Ray actor) every few seconds: step, smoothed loss, tokens per second
and step rate. The driver polls the board between ``ray.wait`` calls and shows, per running trial, step/steps, loss,
tokens/s and ETA: as a live table when stderr is a terminal, and as plain periodic lines otherwise (CI logs, ``ray
job submit``). A trial that has reported before and then says nothing for ``stall_after`` seconds is named in a
warning (a hung collective, a swapping node); trials still waiting for resources have not reported and are not
warned about.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table


class ProgressBoard:
    """Latest report of every trial, keyed by trial id (runs as a Ray actor; plain class for tests)."""

    def __init__(self) -> None:
        self.reports: dict[str, dict[str, Any]] = {}

    def update(self, trial_id: str, report: dict[str, Any]) -> None:
        """Keep ``report`` as the trial's latest, numbered (``seq``), with ``starts``: how many start reports (phase
        ``starting``, sent once by every attempt) the trial has sent, which a later report must not hide."""
        previous = self.reports.get(trial_id, {})
        starts = previous.get("starts", 0) + (report.get("phase") == "starting")
        self.reports[trial_id] = {**report, "seq": previous.get("seq", 0) + 1, "starts": starts}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return dict(self.reports)


def reporter(board, trial_id: str, attempt: int = 0):
    """The ``progress`` callback a trial gets: fire-and-forget reports to the board actor, tagged with the attempt
    (the driver's count of resubmissions) so that a late report of a cancelled attempt is not taken for progress."""

    def report(info: dict[str, Any]) -> None:
        try:
            board.update.remote(trial_id, {**info, "attempt": attempt})
        except Exception:  # the driver's board is gone (driver lost or restarted): training goes on regardless
            pass

    return report


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class _Running:
    label: str
    report: dict[str, Any] | None = None
    seq: int = 0
    changed_at: float = field(default_factory=time.monotonic)
    warned: bool = False


class GridProgress:
    """Driver-side view: trials done/failed/left plus one line per running trial; live or plain."""

    def __init__(self, console: Console, total: int, *, plain_every: float = 30.0, stall_after: float = 600.0):
        self.console, self.total = console, total
        self.plain_every, self.stall_after = plain_every, stall_after
        self.ok = self.failed = 0
        self.running: dict[str, _Running] = {}
        self.started = time.monotonic()
        self._last_plain = self.started
        self._live: Live | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> GridProgress:
        if self.console.is_terminal:
            self._live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)

    def print(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True)

    # -- events ------------------------------------------------------------------------------------------------
    def submitted(self, trial_id: str, label: str) -> None:
        self.running[trial_id] = _Running(label)

    def finished(self, trial_id: str, ok: bool) -> None:
        self.running.pop(trial_id, None)
        if ok:
            self.ok += 1
        else:
            self.failed += 1

    def refresh(self, snapshot: dict[str, dict[str, Any]]) -> None:
        now = time.monotonic()
        for trial_id, state in self.running.items():
            report = snapshot.get(trial_id)
            if report is not None and report["seq"] != state.seq:
                state.report, state.seq, state.changed_at, state.warned = report, report["seq"], now, False
            elif state.report is not None and not state.warned and now - state.changed_at > self.stall_after:
                state.warned = True
                where = state.report.get("step")
                where = "before its first step" if where is None else f"last at step {where}/{state.report['steps']}"
                self.print(
                    f"[yellow]warning:[/yellow] {state.label} has reported no progress for "
                    f"{duration(now - state.changed_at)} ({where})"
                )
        if self._live is not None:
            self._live.update(self._render())
        elif now - self._last_plain >= self.plain_every:
            self._last_plain = now
            for line in self.lines():
                self.print(line)

    # -- rendering ---------------------------------------------------------------------------------------------
    def summary(self) -> str:
        active = sum(state.report is not None for state in self.running.values())
        return (
            f"trials: {self.ok + self.failed}/{self.total} done (ok {self.ok}, failed {self.failed}), "
            f"{active} running, {self.total - self.ok - self.failed - active} waiting, "
            f"elapsed {duration(time.monotonic() - self.started)}"
        )

    def _active(self) -> list[_Running]:
        return [state for state in self.running.values() if state.report is not None]

    @staticmethod
    def describe(report: dict[str, Any]) -> tuple[str, str, str, str]:
        """(step/steps, loss, tokens/s, ETA) of one trial's latest report."""
        if report.get("step") is None:  # started, still loading data and building the model
            return ("starting", "", "", "?")
        rate, left = report.get("steps_per_second"), report["steps"] - report["step"]
        eta = duration(left / rate) if rate else "?"
        loss = report.get("loss")
        tokens = report.get("tokens_per_second")
        resumed = f" (resumed at {report['resumed_from_step']})" if report.get("resumed_from_step") else ""
        return (
            f"{report['step']}/{report['steps']}{resumed}",
            f"{loss:.4g}" if loss is not None and loss == loss else "",
            f"{tokens:,.0f}" if tokens else "",
            eta,
        )

    def lines(self) -> list[str]:
        out = [self.summary()]
        for state in self._active():
            step, loss, tokens, eta = self.describe(state.report)
            details = f"step {step}" + (f"  loss {loss}" if loss else "") + (f"  {tokens} tok/s" if tokens else "")
            out.append(f"  {state.label}: {details}" + (f"  ETA {eta}" if eta else ""))
        return out

    def _render(self) -> Group:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for column in ("running trial", "step", "loss", "tok/s", "ETA"):
            table.add_column(column, justify="left" if column == "running trial" else "right")
        for state in self._active():
            table.add_row(state.label, *self.describe(state.report))
        return Group(self.summary(), table)
