"""What ran beside what the paper ran: sequence length, training steps and data, one row each, above every table.

A smoke run sorts length-8 sequences for 300 steps where the paper sorted length 256 for 200K; a caption that gives
only the paper's setup misleads. The paper's side is typed in once (``setup`` in harness/data/paper_results.yaml);
ours is read from the trials' configs and stored data provenance, and the length from the task's spec (cheap: no
data is read), so it holds for stores written before the length was shown.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pandas as pd

from harness.reporting.paper import SETUP_FIELDS, Section

FIELDS = SETUP_FIELDS
GENERATED = "generated from the seed"


@cache
def _lengths(task: str, scale: str, task_params: str) -> tuple[int | None, int | None]:
    """(train length, longest evaluated length) of a task at a scale; None where the task cannot be built here."""
    try:
        import tasks

        built = tasks.build(task, scale=scale, seed=0, **json.loads(task_params))
        longest = built.spec.max_len
    except (ValueError, TypeError, KeyError):  # a task this process does not know, or parameters it no longer takes
        return None, None
    train = getattr(built, "length", None)
    return (train if isinstance(train, int) else longest), longest


def length_text(task: str, scale: str | None, task_params: dict[str, Any]) -> str | None:
    """``8 (evaluated at 16 too)`` for sorting; ``256`` where training and evaluation share one length."""
    if scale is None:
        return None
    train, longest = _lengths(task, str(scale), json.dumps(task_params, sort_keys=True, default=str))
    if train is None:
        return None
    return f"{train}" if longest in (None, train) else f"{train} (evaluated at {longest} too)"


def _one(values: list[str]) -> str:
    distinct = list(dict.fromkeys(v for v in values if v))
    return " / ".join(distinct) if distinct else "–"


def run_setup(trials: pd.DataFrame, data: str | None) -> dict[str, str]:
    """This run's length, steps and data, for the trials of one table (one context: one steps value, one data)."""
    lengths, steps = [], []
    for row in trials.itertuples():
        config = row.config if isinstance(row.config, dict) else {}
        lengths.append(length_text(str(row.task), row.scale, config.get("task_params") or {}) or "")
        count = (config.get("train") or {}).get("steps")
        steps.append(f"{count:,}" if isinstance(count, int) else "")
    return {"length": _one(lengths), "steps": _one(steps), "data": data or GENERATED}


def paper_setup(section: Section) -> dict[str, str] | None:
    """The paper's length, steps and data for a section, or None where the paper has no such table."""
    given = dict(section.setup)
    if not given:
        return None
    return {field: given.get(field, "not stated") for field in FIELDS}


def setup_rows(section: Section, trials: pd.DataFrame, data: str | None) -> list[dict[str, str]]:
    """The rows of the small setup table: the paper's (when it has one), then this run's."""
    rows = []
    if (paper := paper_setup(section)) is not None:
        rows.append({"who": "paper", **paper})
    rows.append({"who": "this run", **run_setup(trials, data)})
    return rows
