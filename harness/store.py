"""The results store: a tidy Parquet dataset, one part file per trial, one row per (trial, split, metric).

Writes are atomic: rows go to a dot-prefixed temporary file in the store, which is fsynced and renamed onto
``part-<trial_id>.parquet``. Readers (pyarrow skips names starting with ``.`` or ``_``) never see a half-written
file, a crash leaves at most an ignored temporary, and because the file name is the trial id a trial can never appear
twice: re-running a failed trial replaces its ``failed`` row. ``pandas.read_parquet(store_dir)`` reads everything.

A part file that cannot be read (a partial copy from a cluster, a bad disk) is named in a warning and skipped by
``read`` and ``finished_ids``; ``skipped`` lists the parts the last read left out (its trials run again on the next
``attnbench run``, whose write replaces the bad part).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),
        ("grid", pa.string()),
        ("task", pa.string()),
        ("scale", pa.string()),
        ("attention", pa.string()),
        ("params", pa.string()),  # JSON of the attention's parameters
        ("config", pa.string()),  # JSON of the whole trial
        ("seed", pa.int64()),
        ("status", pa.string()),  # ok | failed
        ("error", pa.string()),
        ("split", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("step", pa.int64()),  # training step of a periodic row (split val, train_smoothed); null on final rows
        ("length", pa.int64()),  # sequence length of a speed/memory measurement; null for trained trials
        ("peak_memory_bytes", pa.int64()),
        ("tokens_per_second", pa.float64()),
        ("train_seconds", pa.float64()),
        ("steps", pa.int64()),
        ("num_parameters", pa.int64()),
        ("device", pa.string()),
        ("world_size", pa.int64()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("git_sha", pa.string()),
        ("versions", pa.string()),  # JSON: python, torch, ray, deepspeed, attnbench
        ("resumed_from_step", pa.int64()),  # 0 when the trial never resumed from a checkpoint
        ("selected_step", pa.int64()),  # the step whose checkpoint the final rows score (train.select)
        ("data", pa.string()),  # JSON provenance of the data the trial used (Hub id and revision, path and hash, ...)
    ]
)
COLUMNS = SCHEMA.names


class UnreadablePartWarning(UserWarning):
    """A part file of the store could not be read and was left out."""


class ResultStore:
    """A directory of Parquet part files (created on first write)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.skipped: list[Path] = []  # unreadable parts left out by the last read

    def _parts(self) -> list[Path]:
        return sorted(self.root.glob("part-*.parquet")) if self.root.is_dir() else []

    def _table(self, columns: list[str] | None = None) -> pa.Table | None:
        """Every readable part as one table (None when there is none); each unreadable part is warned about once per
        read and listed in ``skipped``. One read of the whole list first; part by part only when that fails."""
        parts, self.skipped = self._parts(), []
        if not parts:
            return None
        try:
            return pq.read_table(parts, columns=columns, schema=SCHEMA)
        except (OSError, pa.ArrowException):
            pass
        tables = []
        for part in parts:
            try:
                tables.append(pq.read_table(part, columns=columns, schema=SCHEMA))
            except (OSError, pa.ArrowException) as exc:
                self.skipped.append(part)
                warnings.warn(
                    f"{part}: unreadable part file skipped ({type(exc).__name__}: {exc})",
                    UnreadablePartWarning,
                    stacklevel=3,
                )
        return pa.concat_tables(tables) if tables else None

    def finished_ids(self) -> set[str]:
        """Ids of trials stored with status ``ok`` (failed ones, and those of unreadable parts, are run again)."""
        table = self._table(["trial_id", "status"])
        if table is None:
            return set()
        frame = table.to_pandas()
        return set(frame.loc[frame["status"] == "ok", "trial_id"])

    def write_trial(self, trial_id: str, rows: list[dict[str, Any]]) -> Path:
        """Atomically store (or replace) every row of one trial."""
        if not rows or any(row["trial_id"] != trial_id for row in rows):
            raise ValueError(f"store: rows for trial {trial_id} are empty or belong to another trial")
        self.root.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS} for row in rows], schema=SCHEMA)
        target = self.root / f"part-{trial_id}.parquet"
        handle, temporary = tempfile.mkstemp(prefix=f".part-{trial_id}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(handle, "wb") as sink:
                pq.write_table(table, sink)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target

    def read(self) -> pd.DataFrame:
        """Every stored row (an empty frame with the schema's columns when nothing is stored or readable)."""
        table = self._table()
        return (table if table is not None else SCHEMA.empty_table()).to_pandas()


def rows_for_trial(
    trial_id: str,
    config: dict[str, Any],
    *,
    metrics: list[tuple] | None,
    error: str | None,
    common: dict[str, Any],
) -> list[dict[str, Any]]:
    """Tidy rows of one trial: one per (split, metric[, step]), or a single ``failed`` row carrying the error.

    ``metrics`` holds ``(split, metric, value)`` or ``(split, metric, value, step)``; ``step`` is None on final rows
    and the training step on learning-curve rows.
    """
    base = {
        "trial_id": trial_id,
        "grid": config["grid"],
        "task": config["task"],
        "scale": config["scale"],
        "attention": config["attention"],
        "params": json.dumps(config["params"], sort_keys=True),
        "config": json.dumps(config, sort_keys=True),
        "seed": config["seed"],
        **common,
    }
    if error is not None:
        return [{**base, "status": "failed", "error": error, "split": None, "metric": None, "value": None}]
    return [
        {
            **base,
            "status": "ok",
            "error": None,
            "split": split,
            "metric": metric,
            "value": float(value),
            "step": step[0] if step else None,
        }
        for split, metric, value, *step in metrics or []
    ]
