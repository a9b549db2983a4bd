"""Stored results as one plain table: a row per (grid, task, attention setting, split, metric) with the mean over
seeds, the half-width of its 95% t-interval and n, as the report's cells compute them.

``attnbench run`` prints the grid's rows when it ends (as lm-evaluation-harness ends with its table), and
``attnbench show`` lists or exports any part of the store as Markdown, CSV or JSON. Values are as the report shows
them: accuracy and exact match in %, the rest as stored. Pure pandas, plus rich for the terminal.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable
from typing import Any

import pandas as pd
from rich.table import Table

from harness.reporting.labels import PERCENT, fmt, mean_ci, scaled, trial_info
from harness.reporting.tables import headline_values

COLUMNS = ["grid", "task", "attention", "params", "split", "metric", "unit", "mean", "ci95", "n", "failed"]
FORMATS = ("markdown", "csv", "json")
FILTERS = ("grid", "task", "attention")
# the last validation score repeats the curve's last point, and ``eval`` holds a plugin's diagnostics (sort entropy):
# the table is the held-out results, as the report's headline figures are
HIDDEN_SPLITS = ("val", "eval")


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "–"


def _task_text(config: dict[str, Any], task: str) -> str:
    shown = {k: v for k, v in (config.get("task_params") or {}).items() if k != "data"}
    return task + "".join(f" {k}={v}" for k, v in sorted(shown.items()))


def _check_filter(name: str, wanted: Iterable[str] | None, stored: Iterable[str]) -> list[str] | None:
    """A filter's values, each of which must be in the store: a typo gets the names that are there."""
    if not wanted:
        return None
    wanted, stored = list(wanted), sorted(set(map(str, stored)))
    for value in wanted:
        if value not in stored:
            close = difflib.get_close_matches(value, stored, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"--{name} {value!r}: no such {name} in the store{hint} (stored: {', '.join(stored)})")
    return wanted


def summarize(
    frame: pd.DataFrame,
    *,
    grid: Iterable[str] | None = None,
    task: Iterable[str] | None = None,
    attention: Iterable[str] | None = None,
    trial_ids: Iterable[str] | None = None,
) -> pd.DataFrame:
    """The table (``COLUMNS``), filtered by grid, task and attention names and/or trial ids.

    Seeds are pooled only within one grid, task setting, attention setting and context (as the report pools them);
    a setting whose every trial failed keeps a row with n = 0 and its failed count."""
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    wanted = zip(FILTERS, (grid, task, attention), strict=True)
    picks = {name: _check_filter(name, want, frame[name].dropna()) for name, want in wanted}
    chosen = frame
    for name, values in picks.items():
        if values is not None:
            chosen = chosen[chosen[name].isin(values)]
    if trial_ids is not None:
        chosen = chosen[chosen["trial_id"].isin(set(trial_ids))]
    if chosen.empty:
        return pd.DataFrame(columns=COLUMNS)
    info = trial_info(chosen).set_index("trial_id")
    info["key"] = [
        json.dumps([r.grid, _task_text(r.config, r.task), r.attention, _params_text(r.shown), r.context], default=str)
        for r in info.itertuples()
    ]
    final = chosen["step"].isna() if "step" in chosen else True
    values = chosen.loc[(chosen["status"] == "ok") & final, ["trial_id", "split", "metric", "value"]].dropna(
        subset=["metric", "value"]
    )
    values = headline_values(values[~values["split"].isin(HIDDEN_SPLITS)])
    values = values.assign(key=values["trial_id"].map(info["key"]))
    failed = info[info["status"] == "failed"].groupby("key").size()
    rows = []
    for (key, split, metric), group in values.groupby(["key", "split", "metric"], sort=True):
        mean, ci, n = mean_ci(group["value"].map(lambda v, m=metric: scaled(m, v)))
        rows.append(_record(key, split, metric, mean, ci, n, int(failed.get(key, 0))))
    for key in sorted(set(failed.index) - set(values["key"])):
        rows.append(_record(key, "", "", math.nan, math.nan, 0, int(failed[key])))
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["grid", "task", "attention", "params", "split", "metric"], kind="stable").reset_index(
        drop=True
    )


def _record(key: str, split: str, metric: str, mean: float, ci: float, n: int, failed: int) -> dict[str, Any]:
    grid, task, attention, params, _ = json.loads(key)
    unit = "%" if metric in PERCENT else ""
    return {
        "grid": grid,
        "task": task,
        "attention": attention,
        "params": params,
        "split": split,
        "metric": metric,
        "unit": unit,
        "mean": mean,
        "ci95": ci,
        "n": n,
        "failed": failed,
    }


def _value_text(row: pd.Series) -> str:
    if not row["n"]:
        return "–"
    text = fmt(row["metric"], row["mean"])
    return text if math.isnan(row["ci95"]) else f"{text} ± {fmt(row['metric'], row['ci95'])}"


def rich_table(table: pd.DataFrame, title: str | None = None) -> Table:
    """The terminal table: task, attention, params, split, metric, mean ± 95% interval over seeds, n (and failed)."""
    grids = table["grid"].nunique() > 1
    failures = bool(table["failed"].any())
    out = Table(title=title, title_justify="left", show_lines=False)
    headers = [*(["grid"] if grids else []), "task", "attention", "params", "split", "metric", "mean ± 95%", "n"]
    for header in [*headers, *(["failed"] if failures else [])]:
        out.add_column(header, justify="right" if header in ("mean ± 95%", "n", "failed") else "left")
    for _, row in table.iterrows():
        metric = f"{row['metric']} ({row['unit']})" if row["unit"] else row["metric"]
        cells = [*([row["grid"]] if grids else []), row["task"], row["attention"], row["params"], row["split"]]
        cells += [metric or "–", _value_text(row), str(row["n"])]
        out.add_row(*cells, *([str(row["failed"])] if failures else []))
    return out


def _markdown(table: pd.DataFrame) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.6g}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for _, row in table.iterrows()]
    return "\n".join(lines) + "\n"


def export(table: pd.DataFrame, form: str) -> str:
    """The table as Markdown, CSV or JSON (records; a missing interval is null)."""
    if form == "markdown":
        return _markdown(table)
    if form == "csv":
        return table.to_csv(index=False)
    if form == "json":
        records = table.astype(object).where(table.notna(), None).to_dict("records")
        return json.dumps(records, indent=2) + "\n"
    raise ValueError(f"--format {form!r}: choose one of {', '.join(FORMATS)}")
