"""One driver per store: a lock file in the store that names its owner, so a second driver refuses with a clear line.

Two drivers on one store and one grid would both see the same trials as not yet stored and run each of them twice.
The driver that runs a grid therefore holds ``<store>/.driver.lock`` (pyarrow skips dot-files, so readers never see
it): JSON with the owner's pid, host, grid and start time, created atomically (``O_EXCL``) and refreshed while the
grid runs. A second driver reads it and refuses (``StoreBusy``, a ``ValueError``: the CLI prints it and exits 2).

A lock whose owner is gone is stale and taken over with a warning: on the owner's host when its pid no longer runs
(or now runs another program, which its start time shows), from any other host when its refresh is older than
``ATTNBENCH_LOCK_STALE_S`` seconds (default 300).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

LOCK_NAME = ".driver.lock"
STALE_ENV, DEFAULT_STALE_S = "ATTNBENCH_LOCK_STALE_S", 300.0
REFRESH_S = 30.0


class StoreBusy(ValueError):
    """Another live driver holds the store."""


def _process_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _owner_alive(owner: dict[str, Any], age_s: float, stale_s: float) -> bool:
    """Whether the lock's owner may still be running (the cautious answer when it cannot be known)."""
    if owner.get("host") != socket.gethostname():
        return age_s < stale_s
    started = _process_start(int(owner.get("pid", -1)))
    if started is None:
        return False
    recorded = owner.get("pid_started")
    return recorded is None or abs(started - float(recorded)) < 1.0  # a reused pid started later


def describe(owner: dict[str, Any]) -> str:
    return (
        f"pid {owner.get('pid')} on host {owner.get('host')}, running grid {owner.get('grid')!r} "
        f"since {owner.get('since', '?')}"
    )


class DriverLock:
    """Hold a store's driver lock: ``acquire`` (raises ``StoreBusy``), ``refresh`` while running, ``release``."""

    def __init__(self, store_root: str | Path, grid: str, *, warn: Callable[[str], None] = print):
        self.path = Path(store_root) / LOCK_NAME
        self.grid, self.warn = grid, warn
        self.held = False
        self._refreshed = 0.0

    def _owner(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "pid": pid,
            "pid_started": _process_start(pid),
            "host": socket.gethostname(),
            "grid": self.grid,
            "since": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        }

    def _create(self) -> bool:
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as out:
            json.dump(self._owner(), out)
        return True

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stale_s = float(os.environ.get(STALE_ENV, DEFAULT_STALE_S))
        for _ in range(3):  # another driver may take over a stale lock at the same moment: look again
            if self._create():
                self.held, self._refreshed = True, time.monotonic()
                return
            try:
                owner = json.loads(self.path.read_text() or "{}")
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:  # released between our attempt and our look
                continue
            except (OSError, ValueError):  # a lock written half by a driver killed at that instant
                owner, age = {}, float("inf")
            if owner and _owner_alive(owner, age, stale_s):
                raise StoreBusy(
                    f"{self.path.parent}: another driver is running on this store ({describe(owner)}); wait for it "
                    f"to finish, or use another --results. If that driver is gone, delete {self.path}"
                )
            self.warn(f"taking over a stale driver lock in {self.path.parent} ({describe(owner)}; that driver is gone)")
            self.path.unlink(missing_ok=True)
        raise StoreBusy(
            f"{self.path.parent}: could not take the driver lock {self.path} (other drivers keep taking it)"
        )

    def refresh(self) -> None:
        """Touch the lock (at most every ``REFRESH_S`` s), so that drivers on other hosts see its owner is alive."""
        if self.held and time.monotonic() - self._refreshed >= REFRESH_S:
            self._refreshed = time.monotonic()
            try:
                os.utime(self.path)
            except FileNotFoundError:  # removed by hand: take it again
                self._create()

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> DriverLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
