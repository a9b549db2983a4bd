"""The report's tables: one row per attention (named as the paper writes it), one column per setting, split and metric.

Trials are first grouped into *contexts*: everything in a trial's config that is neither its attention, its seed nor
a column setting (scale, training, task parameters), because seeds of different experiments must never be averaged
together; a section holds one table per context. A cell is the mean over seeds with a 95% t-interval, and keeps the
trials behind it so the page can link every number to its configs. Pure pandas; no Jinja2 or seaborn here.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pandas as pd

from harness.reporting.labels import (
    LOWER_IS_BETTER,
    METRIC_LABEL,
    PRETTY,
    attention_label,
    fmt,
    last_line,
    mean_ci,
    scaled,
)
from harness.reporting.paper import PaperColumn, PaperRow, Section, matches


def _natural(label: str) -> tuple:
    """``[iterations=2]`` before ``[iterations=10]``."""
    parts = re.split(r"(\d+(?:\.\d+)?)", label)
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts))


def _order(attrs: dict[str, Any], label: str, ablation: bool) -> tuple:
    family = list(PRETTY).index(attrs["attention"]) if attrs.get("attention") in PRETTY else len(PRETTY)
    key = (family, attrs.get("block_size") or 0, attrs.get("budget") or 0, _natural(label))
    return (attrs.get("variant") or 99, *key) if ablation else key


def _paper_row(rows: tuple[PaperRow, ...], attrs: dict[str, Any]) -> PaperRow | None:
    """The first paper row that matches; rows without a ``variant`` only match plain (non-ablated) attentions."""
    for row in rows:
        if matches(row.match, attrs) and ("variant" in row.match or attrs.get("plain", True)):
            return row
    return None


def headline_values(values: pd.DataFrame) -> pd.DataFrame:
    """Evaluation splits only, and ``loss`` only where a split has no other metric (the paper reports none)."""
    values = values[values["split"].notna() & (values["split"] != "train")]
    other = values[values["metric"] != "loss"].groupby(["trial_id", "split"]).size()
    keep = [
        m != "loss" or (t, s) not in other.index
        for t, s, m in zip(values["trial_id"], values["split"], values["metric"], strict=True)
    ]
    return values[pd.Series(keep, index=values.index, dtype=bool)]  # a bare empty list would select no columns


def build_table(section: Section, trials: pd.DataFrame, values: pd.DataFrame, ablation: bool = False) -> dict:
    """One table of a section: ``trials`` (from ``trial_info``) of one context, ``values`` their ok metric rows."""
    info = trials.set_index("trial_id")
    rows_of = {t: _row_label(section, r, ablation) for t, r in info.iterrows()}
    values = headline_values(values[values["trial_id"].isin(info.index)]).copy()
    values["row"] = values["trial_id"].map(rows_of)
    values["column"] = [
        json.dumps({**info.at[t, "setting"], "split": s, "metric": m}, sort_keys=True)
        for t, s, m in zip(values["trial_id"], values["split"], values["metric"], strict=True)
    ]
    columns = _columns(section.columns, sorted(values["column"].unique()))
    row_labels = {rows_of[t]: info.at[t, "attrs"] for t in info.index}
    body = []
    for label, attrs in row_labels.items():
        in_row = values[values["row"] == label]
        row_trials = info[[rows_of[t] == label for t in info.index]].reset_index()
        paper = _paper_row(section.rows, attrs)
        body.append(_row(label, attrs, paper, columns, in_row, row_trials))
    matched = {id(r["paper_row"]) for r in body if r["paper_row"] is not None}
    for paper in section.rows:
        if id(paper) not in matched:
            body.append(
                _row(
                    paper.label,
                    {**paper.match, "plain": "variant" not in paper.match},
                    paper,
                    columns,
                    values.iloc[0:0],
                    info.iloc[0:0].reset_index(),
                    paper_only=True,
                )
            )
    body.sort(key=lambda r: _order(r["attrs"], r["label"], ablation))
    _mark_best(columns, body)
    headers = _headers(columns)
    ours = [f"{h['top']} · {h['metric']}" for h in headers if h["kind"] == "ours"]
    facet = dict(zip([c["key"] for c in columns if c["key"] is not None], ours, strict=True))
    points = pd.DataFrame(
        {
            "facet": values["column"].map(facet),
            "label": values["row"],
            "metric": values["metric"],
            "value": [scaled(m, v) for m, v in zip(values["metric"], values["value"], strict=True)],
            "seed": values["seed"],
            "trial_id": values["trial_id"],
        }
    )
    return {"columns": headers, "rows": body, "points": points}


def _row_label(section: Section, trial: pd.Series, ablation: bool) -> str:
    if not ablation:
        return trial["label"]
    variant = trial["attrs"]["variant"]
    names = [r.label for r in section.rows if r.match.get("variant") == variant]
    # the variant's name says what is ablated; the label adds what the grid set beside it, and the block that ran
    shown = {"block_size": trial["shown"].get("block_size"), **trial["params"]}
    params = {k: v for k, v in shown.items() if k != "sortnet" and not (k == "iterations" and v == 0) and v is not None}
    base = attention_label(str(trial["attention"]), params)
    return f"{names[0] if names else f'variant {variant}'} · {base}"


def _columns(paper_columns: tuple[PaperColumn, ...], keys: list[str]) -> list[dict]:
    """Our columns (each with the paper column it stands beside), then paper columns nothing of ours matched."""
    columns = []
    for key in keys:
        attrs = json.loads(key)
        paper = next((c for c in paper_columns if matches(c.where, attrs)), None)
        columns.append({"key": key, "attrs": attrs, "metric": attrs["metric"], "paper": paper})
    # columns of one setting stay together (IMDb word test, then its other splits), settings in the paper's order
    order = {c.id: i for i, c in enumerate(paper_columns)}
    rank = [order[c["paper"].id] if c["paper"] else len(order) for c in columns]
    groups = [json.dumps({k: v for k, v in c["attrs"].items() if k not in ("split", "metric")}) for c in columns]
    first = {g: min(r for r, h in zip(rank, groups, strict=True) if h == g) for g in groups}
    keyed = sorted(zip(columns, rank, groups, strict=True), key=lambda x: (first[x[2]], x[2], x[1], x[0]["key"]))
    columns = [c for c, _, _ in keyed]
    used = {c["paper"].id for c in columns if c["paper"]}
    for paper in paper_columns:
        if paper.id not in used:
            columns.append({"key": None, "attrs": paper.where, "metric": paper.where.get("metric", ""), "paper": paper})
    return columns


def _headers(columns: list[dict]) -> list[dict]:
    ours = [c["attrs"] for c in columns if c["key"] is not None]
    # size, data set and level always show (they name the paper's columns); task and model only when they vary
    shown = [
        k
        for k in ("task", "size", "dataset", "level", "model")
        if len({str(a.get(k)) for a in ours}) > 1 or (k in ("size", "dataset", "level") and any(k in a for a in ours))
    ]
    headers = []
    for column in columns:
        attrs, paper = column["attrs"], column["paper"]
        if column["key"] is not None:
            parts = [str(attrs[k]) for k in shown if k in attrs] + [attrs["split"]]
            metric = METRIC_LABEL.get(attrs["metric"], attrs["metric"])
            headers.append({"kind": "ours", "top": " · ".join(parts), "metric": metric})
        if paper is not None:
            headers.append({"kind": "paper", "top": "paper", "metric": paper.label})
    return headers


def _row(
    label: str,
    attrs: dict,
    paper: PaperRow | None,
    columns: list[dict],
    values: pd.DataFrame,
    trials: pd.DataFrame,
    paper_only: bool = False,
) -> dict:
    cells = []
    for column in columns:
        metric = column["metric"]
        if column["key"] is not None:
            got = values[values["column"] == column["key"]].sort_values("seed")
            if len(got):
                mean, ci, n = mean_ci(got["value"].map(lambda v, m=metric: scaled(m, v)))
                runs = [
                    {"id": t, "seed": s, "value": fmt(metric, scaled(metric, v))}
                    for t, s, v in zip(got["trial_id"], got["seed"], got["value"], strict=True)
                ]
                cells.append(
                    {
                        "kind": "ours",
                        "mean": mean,
                        "text": fmt(metric, mean),
                        "ci": None if math.isnan(ci) else fmt(metric, ci),
                        "n": n,
                        "trials": runs,
                        "lower": metric in LOWER_IS_BETTER,
                        "best": False,
                    }
                )
            else:
                cells.append({"kind": "ours", "mean": None, "text": "–", "n": 0, "trials": [], "best": False})
        if column["paper"] is not None:
            value = paper.values.get(column["paper"].id) if paper is not None else None
            cells.append(
                {
                    "kind": "paper",
                    "mean": value,
                    "text": fmt(metric, value),
                    "row": paper.label if paper else "",
                    "lower": metric in LOWER_IS_BETTER,
                    "best": False,
                }
            )
    failed = trials[trials["status"] == "failed"] if len(trials) else trials
    ok = trials[trials["status"] == "ok"] if len(trials) else trials
    return {
        "label": label,
        "attrs": attrs,
        "paper_row": paper,
        "paper_only": paper_only,
        "cells": cells,
        "failed": [{"id": r.trial_id, "seed": r.seed, "error": last_line(r.error)} for r in failed.itertuples()],
        "memory_mib": fmt("", ok["memory"].mean() / 2**20) if len(ok) and ok["memory"].notna().any() else "–",
        "tokens_per_second": f"{ok['speed'].mean():.0f}" if len(ok) and ok["speed"].notna().any() else "–",
    }


def _mark_best(columns: list[dict], body: list[dict]) -> None:
    """Best mean per column (ours and the paper's separately). Ties are all marked, and a tie is what the page shows:
    every cell that reads as the best does (0.00 beside 0.00 both get the star, whatever the digits beyond)."""
    width = len(body[0]["cells"]) if body else 0
    for index in range(width):
        cells = [row["cells"][index] for row in body if row["cells"][index]["mean"] is not None]
        if not cells:
            continue
        pick = min if cells[0].get("lower") else max
        best = pick(cells, key=lambda c: c["mean"])
        for cell in cells:
            cell["best"] = cell["mean"] == best["mean"] or cell["text"] == best["text"]
