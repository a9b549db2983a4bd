"""Long Range Arena's tables beside ours: accuracy per task with the average, and the model-level efficiency table.

The published numbers live once in harness/data/lra_results.yaml (with their source). Our accuracy of a cell is the
mean test accuracy (in %) over the seeds of an attention setting on an LRA task; a cell whose every trial failed shows
FAIL with the error's last line, as LRA's table shows FAIL where a model could not run or learn. Our average is taken,
as LRA's is, over the five tasks other than Path-X, and only where all five have a value. The efficiency table is the
``attnbench bench --model`` table (steps/s and peak memory relative to vanilla in the same run) at LRA's lengths 1K-4K,
followed by LRA's published rows for the attentions measured.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import pandas as pd
import yaml

from harness.reporting.efficiency import MODEL_TASK, model_table
from harness.reporting.labels import attention_label, last_line, parse_json

FAIL = "FAIL"


@cache
def published() -> dict[str, Any]:
    """The parsed harness/data/lra_results.yaml."""
    text = resources.files("harness").joinpath("data/lra_results.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def column_of(task: str, config: dict[str, Any]) -> str | None:
    """The LRA column (``listops`` ... ``pathx``) a trial of ``task`` with ``config`` belongs to, or None."""
    size = (config.get("task_params") or {}).get("size", 32)
    for column, where in published()["tasks"].items():
        if where["task"] == task and where.get("size", size) == size:
            return column
    return None


def _average(values: dict[str, Any]) -> float | None:
    numbers = [values.get(c) for c in published()["average_over"]]
    return sum(numbers) / len(numbers) if all(isinstance(n, int | float) for n in numbers) else None


def _text(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else ("–" if value is None else str(value))


def accuracy_rows(frame: pd.DataFrame) -> list[dict]:
    """Our rows (one per attention setting with an LRA trial), each followed by LRA's row for that attention."""
    data = published()
    first = frame.drop_duplicates("trial_id")
    cells: dict[str, dict[str, Any]] = {}
    attention_of: dict[str, str] = {}
    for trial in first.itertuples():
        column = column_of(str(trial.task), parse_json(trial.config))
        if column is None:
            continue
        label = attention_label(str(trial.attention), parse_json(trial.params))
        attention_of[label] = str(trial.attention)
        cell = cells.setdefault(label, {}).setdefault(column, {"ok": [], "errors": []})
        if trial.status == "ok":
            rows = frame[
                (frame["trial_id"] == trial.trial_id) & (frame["split"] == "test") & (frame["metric"] == "accuracy")
            ]
            rows = rows[rows["step"].isna()] if "step" in rows else rows
            cell["ok"].extend(100 * rows["value"].dropna())
        else:
            cell["errors"].append(last_line(trial.error) or "failed")
    out = []
    columns = list(data["tasks"])
    for label in sorted(cells):
        values: dict[str, Any] = {}
        for column in columns:
            cell = cells[label].get(column)
            if cell is None:
                values[column] = None
            elif cell["ok"]:
                values[column] = sum(cell["ok"]) / len(cell["ok"])
            else:
                values[column] = f"{FAIL} ({cell['errors'][0]})"
        out.append(
            {"label": label, "ours": True, "cells": [_text(values[c]) for c in columns], "avg": _text(_average(values))}
        )
        for row in data["accuracy"]:
            if row.get("attention") == attention_of[label]:
                out.append(
                    {
                        "label": f"{row['model']} (LRA)",
                        "ours": False,
                        "cells": [_text(row[c]) for c in columns],
                        "avg": _text(row["avg"]) + ("*" if "avg_note" in row else ""),
                    }
                )
    return out


def efficiency_rows(frame: pd.DataFrame) -> list[dict]:
    """Our model-level efficiency rows at LRA's lengths (the ``bench --model`` table, filtered), then LRA's published
    rows for the attentions ours measure."""
    data = published()
    lengths = set(data["efficiency_lengths"])
    ours = [
        {**row, "peak": f"{row['peak']} MiB", "ours": True} for row in model_table(frame) if row["length"] in lengths
    ]
    if not ours or data.get("efficiency") is None:
        return ours
    measured = set(frame.loc[(frame["task"] == MODEL_TASK) & (frame["status"] == "ok"), "attention"])
    table = data["efficiency"]
    transformer_peak = {r["length"]: r["peak_gb"] for r in table["rows"] if r["attention"] == "vanilla"}
    theirs = [
        {
            "label": f"{row['model']} (LRA)",
            "device": table["device"],
            "length": row["length"],
            "steps": str(row["steps"]),
            "speed": f"{row['speed']}x",
            "peak": f"{row['peak_gb']} GB",
            "memory": f"{row['peak_gb'] / transformer_peak[row['length']]:.2f}x",
            "ours": False,
        }
        for row in table["rows"]
        if row["attention"] in measured
    ]
    return ours + theirs


def section(frame: pd.DataFrame) -> dict | None:
    """The report section of LRA's tables, or None when the store has no LRA trial and no model-level bench."""
    rows, efficiency = accuracy_rows(frame), efficiency_rows(frame)
    if not rows and not efficiency:
        return None
    data = published()
    return {
        "kind": "lra",
        "id": "long-range-arena",
        "title": "Long Range Arena",
        "caption": (
            "Test accuracy in % per LRA task (mean over seeds), our rows first, LRA's published row for the same "
            f"attention after each (source: {data['source']}). Avg: over the five tasks other than Path-X. FAIL: "
            "every trial of the cell failed (the reason follows), or, in LRA's rows, no model learned the task. "
            "*: the average as LRA prints it, which is not the mean of the five values beside it."
        ),
        "columns": [where["label"] for where in data["tasks"].values()],
        "rows": rows,
        "efficiency": efficiency,
        "efficiency_note": _efficiency_note(data, efficiency),
    }


def _efficiency_note(data: dict[str, Any], efficiency: list[dict]) -> str:
    """Where LRA's efficiency rows come from and what they cover (nothing without an efficiency table)."""
    if not efficiency:
        return ""
    if data.get("efficiency") is None:
        return "LRA's published efficiency table (its Table 2) was not available to type in; ours is shown alone."
    lengths = ", ".join(str(n) for n in sorted({r["length"] for r in data["efficiency"]["rows"]}))
    return (
        f"LRA's rows: {data['efficiency']['source']}, at length {lengths} only (its other lengths were not in any "
        "source available to type in); speed as LRA prints it, memory relative to LRA's Transformer row."
    )
