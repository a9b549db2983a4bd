"""The Parquet store: round trip, one trial never twice, atomic writes, unreadable parts, one driver per store."""

from __future__ import annotations

import json
import os
import socket
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest

from harness.running.driver_lock import DriverLock, StoreBusy
from harness.store import COLUMNS, ResultStore, UnreadablePartWarning, rows_for_trial

CONFIG = {"grid": "g", "task": "sort", "scale": "smoke", "attention": "local", "params": {"block_size": 4}, "seed": 3}


def rows(trial_id: str, value: float = 0.5, error: str | None = None):
    metrics = [("test", "exact_match", value), ("test", "loss", 1.25)]
    common = {"peak_memory_bytes": 1024, "device": "cpu", "world_size": 1}
    return rows_for_trial(trial_id, CONFIG, metrics=metrics, error=error, common=common)


def test_round_trip_and_pandas_reads_the_directory(tmp_path):
    store = ResultStore(tmp_path)
    store.write_trial("a1", rows("a1"))
    store.write_trial("b2", rows("b2", 0.75))
    (tmp_path / "_README.md").write_text("layout notes")  # the store's own README must not break readers
    frame = pd.read_parquet(tmp_path)
    assert set(COLUMNS) <= set(frame.columns)
    assert len(frame) == 4
    got = frame.set_index(["trial_id", "metric"])["value"]
    assert got[("b2", "exact_match")] == 0.75 and got[("a1", "loss")] == 1.25
    assert frame["params"].iloc[0] == '{"block_size": 4}'
    assert store.finished_ids() == {"a1", "b2"}
    pd.testing.assert_frame_equal(
        store.read().sort_values(["trial_id", "metric"]).reset_index(drop=True),
        frame[store.read().columns].sort_values(["trial_id", "metric"]).reset_index(drop=True),
    )


def test_failed_trial_is_one_row_with_its_error_and_a_rerun_replaces_it(tmp_path):
    store = ResultStore(tmp_path)
    store.write_trial("c3", rows("c3", error="RuntimeError: boom"))
    frame = store.read()
    assert len(frame) == 1
    assert frame.loc[0, "status"] == "failed" and frame.loc[0, "error"] == "RuntimeError: boom"
    assert pd.isna(frame.loc[0, "value"]) and pd.isna(frame.loc[0, "metric"])
    assert store.finished_ids() == set()  # failed trials are run again
    store.write_trial("c3", rows("c3"))
    frame = store.read()
    assert list(frame["status"].unique()) == ["ok"] and len(frame) == 2 and frame["trial_id"].nunique() == 1


def test_a_crash_mid_write_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.write_trial("d4", rows("d4", 0.5))
    before = (tmp_path / "part-d4.parquet").read_bytes()

    def half_write(table, sink, **kwargs):
        sink.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_write)
    with pytest.raises(OSError, match="disk full"):
        store.write_trial("d4", rows("d4", 0.9))
    with pytest.raises(OSError):
        store.write_trial("e5", rows("e5"))
    monkeypatch.undo()
    assert (tmp_path / "part-d4.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-d4.parquet"]
    # A temporary file left by a killed process (no chance to clean up) is invisible to readers.
    (tmp_path / ".part-f6.123.tmp").write_bytes(b"garbage")
    assert len(pd.read_parquet(tmp_path)) == 2 and store.finished_ids() == {"d4"}


def test_rows_must_belong_to_the_trial(tmp_path):
    with pytest.raises(ValueError, match="another trial"):
        ResultStore(tmp_path).write_trial("x", rows("y"))


# -- unreadable parts --------------------------------------------------------------------------------------------
def corrupt_part(root, trial_id: str, good: bytes) -> None:
    """A part cut short, as a partial copy from a cluster leaves it (a Parquet header and half a file)."""
    (root / f"part-{trial_id}.parquet").write_bytes(good[: len(good) // 2])


def test_an_unreadable_part_is_named_in_a_warning_and_skipped(tmp_path):
    store = ResultStore(tmp_path)
    store.write_trial("a1", rows("a1"))
    store.write_trial("b2", rows("b2", 0.75))
    corrupt_part(tmp_path, "c3", (tmp_path / "part-a1.parquet").read_bytes())
    (tmp_path / "part-d4.parquet").write_bytes(b"")  # an empty file, as a full disk leaves it
    with pytest.warns(UnreadablePartWarning) as caught:
        frame = store.read()
    assert sorted(frame["trial_id"].unique()) == ["a1", "b2"] and len(frame) == 4
    assert [p.name for p in store.skipped] == ["part-c3.parquet", "part-d4.parquet"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "part-c3.parquet: unreadable part file skipped" in messages[0]
    with pytest.warns(UnreadablePartWarning):
        assert store.finished_ids() == {"a1", "b2"}  # the bad parts' trials run again
    store.write_trial("c3", rows("c3"))  # ... and their new result replaces the bad part
    with pytest.warns(UnreadablePartWarning, match="part-d4"):
        assert sorted(store.read()["trial_id"].unique()) == ["a1", "b2", "c3"]


def test_the_report_renders_a_store_with_an_unreadable_part_and_says_so(tmp_path):
    from test_report import write

    from harness.reporting.report import write_report

    store = ResultStore(tmp_path / "results")
    write(store, task="sort", attention="vanilla", params={}, seed=0, metrics=[("test", "exact_match", 0.5)])
    good = next((tmp_path / "results").glob("part-*.parquet"))
    corrupt_part(tmp_path / "results", "ffff", good.read_bytes())
    with pytest.warns(UnreadablePartWarning, match="part-ffff.parquet"):
        page = write_report(tmp_path / "results", tmp_path / "report.html").read_text()
    assert "1 trials in the store" in page and "1 unreadable part file skipped" in page


# -- one driver per store ----------------------------------------------------------------------------------------
def dead_pid() -> int:
    """The pid of a process that has exited (a driver killed with its lock still in the store)."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_driver_on_a_store_refuses_and_names_the_first(tmp_path):
    first = DriverLock(tmp_path, "smoke")
    first.acquire()
    lock = json.loads((tmp_path / ".driver.lock").read_text())
    assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname() and lock["grid"] == "smoke"
    with pytest.raises(StoreBusy, match=rf"another driver is running on this store \(pid {os.getpid()} on host "):
        DriverLock(tmp_path, "other").acquire()
    first.release()
    assert not (tmp_path / ".driver.lock").exists()
    with DriverLock(tmp_path, "other") as second:
        assert second.held


def test_a_stale_lock_of_a_dead_driver_or_a_silent_host_is_taken_over(tmp_path, monkeypatch):
    said = []
    path = tmp_path / ".driver.lock"
    path.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "grid": "smoke"}))
    with DriverLock(tmp_path, "smoke", warn=said.append):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert len(said) == 1 and "taking over a stale driver lock" in said[0] and "that driver is gone" in said[0]

    # Another host's driver cannot be asked: its lock is alive while it is refreshed, stale once it is not.
    path.write_text(json.dumps({"pid": 1, "host": "node-7", "grid": "smoke"}))
    with pytest.raises(StoreBusy, match="pid 1 on host node-7"):
        DriverLock(tmp_path, "smoke").acquire()
    monkeypatch.setenv("ATTNBENCH_LOCK_STALE_S", "60")
    os.utime(path, (time.time() - 120, time.time() - 120))
    with DriverLock(tmp_path, "smoke", warn=said.append) as lock:
        assert lock.held and "node-7" in said[-1]

    # A reused pid: the recorded start time is not that of the process now holding the pid.
    path.write_text(json.dumps({"pid": os.getpid(), "pid_started": 1.0, "host": socket.gethostname()}))
    with DriverLock(tmp_path, "smoke", warn=said.append) as lock:
        assert lock.held
