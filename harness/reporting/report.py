"""Render the results store as one self-contained HTML page beside the paper (reads only the store).

Sections follow ``harness/data/paper_results.yaml`` (Tables 1, 2, 4-8, Figures 3 and 4, ListOps, the speed and memory
sweep) and appear only when the store holds trials for them; a task no section names gets a table of its own, so
nothing stored is left out. Failed trials are counted in their row and listed at the end, and every trial's config is
in the page, linked from the cells it feeds. Jinja2 lives here only (autoescaped: every stored string is text).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from harness.reporting import figures, lra
from harness.reporting.curves import curves_figure
from harness.reporting.efficiency import MODEL_TASK, attention_table, model_table
from harness.reporting.labels import LM_TASKS, SPEED_TASK, context_captions, last_line, trial_info
from harness.reporting.paper import Section, load_sections
from harness.reporting.setup import setup_rows
from harness.reporting.tables import build_table
from harness.store import ResultStore
from harness.study.section import claims_section


def slug(text: Any) -> str:
    """An id/anchor safe in HTML and URLs whatever the stored name is."""
    return re.sub(r"[^a-z0-9_]+", "-", str(text).lower()).strip("-") or "x"


def _table_section(section: Section, trials: pd.DataFrame, values: pd.DataFrame, ablation: bool) -> dict:
    captions = context_captions(sorted(trials["context"].unique()))
    tables = []
    for context, caption in captions.items():
        in_context = trials[trials["context"] == context]
        table = build_table(section, in_context, values, ablation=ablation)
        table["setup"] = setup_rows(section, in_context, json.loads(context).get("data"))
        table["caption"] = f"length={table['setup'][-1]['length']}, {caption}"
        order = [row["label"] for row in table["rows"] if not row["paper_only"]]
        table["figure"] = figures.headline_figure(table.pop("points"), order)
        tables.append(table)
    failed = int((trials["status"] == "failed").sum())
    return {
        "kind": "table",
        "id": slug(section.id),
        "title": section.title,
        "caption": section.caption,
        "tables": tables,
        "trials": len(trials),
        "failed": failed,
    }


def _ablation_trials(trials: pd.DataFrame, tasks: tuple[str, ...]) -> pd.DataFrame:
    """Table 8's trials: sinkhorn on the LM tasks that are ablations (rows 1-3, 5, 6), and the plain linear SortNet
    (row 4) at the same other settings as some ablation, so temperature and iteration sweeps stay in their figures."""
    picked = trials[trials["task"].isin(tasks or LM_TASKS) & (trials["attention"] == "sinkhorn")]
    ablated = picked["attrs"].map(lambda a: not a["plain"])
    if not ablated.any():
        return picked.iloc[0:0]

    def others(params: dict) -> str:
        kept = {k: v for k, v in params.items() if k != "sortnet" and not (k == "iterations" and v == 0)}
        return json.dumps(kept, sort_keys=True, default=str)

    settings = {(t, others(p)) for t, p in zip(picked.loc[ablated, "task"], picked.loc[ablated, "params"], strict=True)}
    baseline = [(t, others(p)) in settings for t, p in zip(picked["task"], picked["params"], strict=True)]
    return picked[ablated | pd.Series(baseline, index=picked.index)]


def build_sections(
    frame: pd.DataFrame,
    sections: tuple[Section, ...] | None = None,
    trials: pd.DataFrame | None = None,
    claims_file: str | Path | None = None,
) -> list[dict]:
    """Every section the store has data for, in the paper's order, then tasks no section names; the Claims section
    judges ``claims_file`` (default: the replication study's)."""
    sections = load_sections() if sections is None else sections
    trials = trial_info(frame) if trials is None else trials
    final = frame["step"].isna() if "step" in frame else True  # learning-curve rows feed the curves, not the tables
    values = frame.loc[(frame["status"] == "ok") & final, ["trial_id", "split", "metric", "value"]]
    values = values.dropna(subset=["metric"])
    values = values.merge(trials[["trial_id", "seed"]], on="trial_id")
    everything = trials[~trials["task"].isin([SPEED_TASK, MODEL_TASK])]
    run = everything  # what the plain tables show: ablated variants are Table 8's rows, not rows of Tables 2 and 4
    for ablation in (s for s in sections if s.kind == "ablation"):
        shown = _ablation_trials(everything, ablation.tasks)
        run = run[~run["trial_id"].isin(shown.loc[shown["attrs"].map(lambda a: not a["plain"]), "trial_id"])]
    claims = claims_section(frame, claims_file)  # opens the page when the store holds a protocol of the claims
    out = [claims] if claims is not None else []
    covered = {SPEED_TASK, MODEL_TASK}
    for section in sections:
        if section.kind == "table":
            covered.update(section.tasks)
            picked = run[run["task"].isin(section.tasks)]
            if len(picked):
                out.append(_table_section(section, picked, values, ablation=False))
        elif section.kind == "ablation":
            picked = _ablation_trials(everything, section.tasks)
            if len(picked):
                out.append(_table_section(section, picked, values, ablation=True))
        elif section.kind == "sweep":
            figure = figures.sweep_figure(section.param or "", everything, values)
            if figure is not None:
                swept = everything[everything["params"].map(lambda p, k=section.param: k in p)]
                failed = swept[swept["status"] == "failed"]
                out.append(
                    {
                        "kind": "sweep",
                        "id": slug(section.id),
                        "title": section.title,
                        "caption": section.caption,
                        "figure": figure,
                        "param": section.param,
                        "failed": _failed_records(failed),
                    }
                )
        elif section.kind == "speed":
            figure = figures.speed_figure(frame)
            bench, model = trials[trials["task"] == SPEED_TASK], model_table(frame)
            attention = attention_table(frame)
            if figure is not None or len(bench) or model or attention:
                out.append(
                    {
                        "kind": "speed",
                        "id": slug(section.id),
                        "title": section.title,
                        "caption": section.caption,
                        "figure": figure,
                        "model": model,
                        "attention": attention,
                        "failed": _failed_records(bench[bench["status"] == "failed"]),
                    }
                )
    curves = learning_curves(frame, everything)
    if curves is not None:
        out.append(curves)
    long_range = lra.section(frame)
    if long_range is not None:
        out.append(long_range)
    for task in sorted(set(everything["task"]) - covered):
        own = Section(
            id=f"task-{task}",
            kind="table",
            title=f"Task {task} (not in the paper)",
            caption="A task no paper table covers.",
            tasks=(task,),
        )
        out.append(_table_section(own, run[run["task"] == task], values, ablation=False))
    return out


def learning_curves(frame: pd.DataFrame, trials: pd.DataFrame) -> dict | None:
    """The "Learning curves" section, when some trial stored periodic validation rows."""
    figure = curves_figure(frame, trials)
    if figure is None:
        return None
    return {
        "kind": "curves",
        "id": "learning-curves",
        "title": "Learning curves",
        "caption": "Validation headline metric against training step (train.eval_every), one line per attention "
        "setting, mean over seeds with a 95% band. The tables show test metrics of the step their setup line names.",
        "figure": figure,
    }


def _failed_records(trials: pd.DataFrame) -> list[dict]:
    return [
        {"id": r.trial_id, "label": r.label, "seed": r.seed, "error": last_line(r.error)} for r in trials.itertuples()
    ]


def _appendix(trials: pd.DataFrame) -> list[dict]:
    """Every trial once, with its full config: the target of every cell's links."""
    return [
        {
            "id": r.trial_id,
            "anchor": "trial-" + slug(r.trial_id),
            "status": r.status,
            "grid": r.grid,
            "task": r.task,
            "label": r.label,
            "seed": r.seed,
            "error": r.error,
            "finished": "" if pd.isna(r.finished_at) else str(r.finished_at)[:19],
            "config": json.dumps(r.config, indent=2, sort_keys=True, default=str),
        }
        for r in trials.sort_values(["task", "grid", "label", "seed", "trial_id"]).itertuples()
    ]


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("harness.reporting", "templates"), autoescape=select_autoescape(["html"]))
    env.filters["slug"] = slug
    return env


def render(
    frame: pd.DataFrame,
    title: str = "attnbench report",
    sections: tuple[Section, ...] | None = None,
    skipped_parts: int = 0,
    claims_file: str | Path | None = None,
) -> str:
    """The whole page as a string: sections, failed trials, the trial appendix (``skipped_parts``: unreadable part
    files the store left out, said on the page)."""
    failed = frame[frame["status"] == "failed"].drop_duplicates("trial_id")
    trials = trial_info(frame)
    built = build_sections(frame, sections, trials, claims_file)
    return (
        _environment()
        .get_template("report.html")
        .render(
            title=title,
            sections=built,
            failed=failed[["trial_id", "grid", "task", "attention", "params", "error"]].to_dict("records"),
            trials=_appendix(trials),
            counts={"trials": frame["trial_id"].nunique(), "failed": len(failed), "skipped_parts": skipped_parts},
        )
    )


def write_report(results: str | Path, out: str | Path, claims_file: str | Path | None = None) -> Path:
    """Read the store at ``results`` and write the HTML page to ``out`` (its Claims section judges ``claims_file``,
    by default the replication study's)."""
    store = ResultStore(results)
    frame = store.read()  # unreadable part files are warned about and skipped
    if frame.empty:
        raise ValueError(f"{results}: the results store is empty or missing (run a grid first)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render(frame, skipped_parts=len(store.skipped), claims_file=claims_file)
    out.write_text(page, encoding="utf-8")
    return out
