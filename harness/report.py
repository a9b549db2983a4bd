"""Render the results store as one self-contained HTML page (reads only the store; Jinja2 lives here only).

One section per task: attentions as rows (named as the paper writes them, ``Sinkhorn (32)``), one column per
(split, metric), each cell the mean over seeds with a 95% t-interval and the number of seeds. Failed trials are
counted and listed with their errors, never dropped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from scipy import stats

from harness.store import ResultStore

PRETTY = {
    "vanilla": "Transformer",
    "local": "Local Attention",
    "sparse": "Sparse Transformer",
    "sinkhorn": "Sinkhorn",
    "sortcut": "SortCut Sinkhorn",
    "sinkhorn_mixture": "Sinkhorn Mixture",
    "sinkformer": "Sinkformer",
    "routing": "Routing Transformer",
    "sbm": "SBM-Transformer",
}
LOWER_IS_BETTER = {"loss", "edit_distance", "perplexity", "bpc", "bpd"}


def attention_label(attention: str, params: dict) -> str:
    """``sinkhorn`` with block_size 32 -> ``Sinkhorn (32)``; other parameters follow in brackets."""
    name = PRETTY.get(attention, attention)
    if "block_size" in params:
        name += f" ({params['block_size']})"
    rest = ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "block_size")
    return f"{name} [{rest}]" if rest else name


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean, half-width of the 95% t-interval (nan for a single seed), and the count."""
    n = int(values.count())
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, n
    half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return mean, half, n


def task_tables(frame: pd.DataFrame) -> list[dict]:
    """One table per task, rows = attention labels, columns = split/metric."""
    ok = frame[frame["status"] == "ok"].copy()
    ok["label"] = [attention_label(a, json.loads(p)) for a, p in zip(ok["attention"], ok["params"])]
    tables = []
    for task, rows in ok.groupby("task", sort=True):
        columns = sorted({(s, m) for s, m in zip(rows["split"], rows["metric"]) if s != "train"})
        body = []
        for label, group in rows.groupby("label", sort=True):
            cells = []
            for split, metric in columns:
                values = group.loc[(group["split"] == split) & (group["metric"] == metric), "value"]
                cells.append(dict(zip(("mean", "ci", "n"), mean_ci(values))) if len(values) else None)
            memory = group.groupby("trial_id")["peak_memory_bytes"].first().mean()
            speed = group.groupby("trial_id")["tokens_per_second"].first().mean()
            body.append({"label": label, "cells": cells, "memory_mb": memory / 2**20, "tokens_per_second": speed})
        for index, (_, metric) in enumerate(columns):
            scored = [row["cells"][index]["mean"] for row in body if row["cells"][index]]
            if scored:
                best = min(scored) if metric in LOWER_IS_BETTER else max(scored)
                for row in body:
                    cell = row["cells"][index]
                    if cell:
                        cell["best"] = cell["mean"] == best
        tables.append({"task": task, "columns": [f"{s} {m}" for s, m in columns], "rows": body})
    return tables


def render(frame: pd.DataFrame, title: str = "attnbench report") -> str:
    env = Environment(loader=PackageLoader("harness", "templates"), autoescape=select_autoescape(["html"]))
    failed = frame[frame["status"] == "failed"][["trial_id", "grid", "task", "attention", "params", "error"]]
    return env.get_template("report.html").render(
        title=title,
        tables=task_tables(frame),
        failed=failed.to_dict("records"),
        trials=frame["trial_id"].nunique(),
    )


def write_report(results: str | Path, out: str | Path) -> Path:
    """Read the store at ``results`` and write the HTML page to ``out``."""
    frame = ResultStore(results).read()
    if frame.empty:
        raise ValueError(f"{results}: the results store is empty or missing (run a grid first)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(frame))
    return out
