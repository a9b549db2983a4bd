"""The Parquet store: round trip, one trial never twice, atomic writes."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from harness.store import COLUMNS, ResultStore, rows_for_trial

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
