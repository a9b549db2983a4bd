"""The report's "Claims" section: each claim whose protocol the store holds trials of, with the paper, ours (mean ±
95% interval, n, links to the trials' rows), the verdict, and the verdict along training drawn as a strip per claim
(the same rule applied to the val curve at every evaluation step), so a reader sees where a claim starts to hold."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from harness.reporting.figures import _png, _text
from harness.reporting.labels import fmt
from harness.study.claims import CLAIMS_FILE, ClaimsFile, load_claims, protocol_grid
from harness.study.render import where
from harness.study.verdicts import (
    FAILS,
    HOLDS,
    INCOMPLETE,
    INCONCLUSIVE,
    NO_DATA,
    STOPPED,
    ClaimResult,
    along_training,
    evaluate,
    paper_text,
    stage_decisions,
    trial_table,
)

COLOURS = {
    HOLDS: "#1a7f37",
    FAILS: "#cf222e",
    INCONCLUSIVE: "#afb8c1",
    INCOMPLETE: "#d4a72c",
    STOPPED: "#6e7781",
    NO_DATA: "#ffffff",
}
CAPTION = (
    "Each claim of the paper, judged on the study's protocols by one rule: 95% t-intervals of each arm's mean over its "
    "protocol's seeds; holds when they are apart in the paper's order (by more than the claim's margin), does not "
    "hold when they are apart the other way, inconclusive when they overlap; within-claims hold when every point of "
    "one interval is within the stated distance of every point of the other. The claims and their protocols are "
    "harness/study/claims.yaml; `attnbench claims` prints the same table."
)


def _row(result: ClaimResult) -> dict:
    metric = result.claim.metric
    return {
        "id": result.claim.id,
        "sentence": result.claim.sentence,
        "source": result.claim.source,
        "where": f"{', '.join(result.claim.protocol)} · {where(result)}",
        "paper": paper_text(result.claim),
        "verdict": result.verdict,
        "detail": result.detail,
        "arms": [
            {
                "label": arm.label,
                "mean": fmt(metric, arm.mean) if arm.n else "–",
                "ci": "" if math.isnan(arm.half) else fmt(metric, arm.half),
                "n": arm.n,
                "trials": [{"id": t["id"], "seed": t["seed"], "value": fmt(metric, t["value"])} for t in arm.trials],
            }
            for arm in result.arms
        ],
    }


def strip_figure(strips: list[tuple[str, list[dict]]]) -> dict | None:
    """One horizontal strip per claim: a cell per evaluation step, coloured by the verdict at that step."""
    strips = [(name, points) for name, points in strips if points]
    if not strips:
        return None
    figure = Figure(figsize=(9.0, 0.9 + 0.32 * len(strips)), layout="constrained")
    ax = figure.subplots()
    for row, (_, points) in enumerate(strips):
        previous = 0
        for point in points:
            ax.broken_barh(
                [(previous, point["step"] - previous)],
                (row - 0.4, 0.8),
                facecolors=COLOURS[point["verdict"]],
                edgecolors="white",
            )
            previous = point["step"]
    ax.set_yticks(range(len(strips)), [_text(name) for name, _ in strips], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("training step (val curve)")
    figure.legend(  # outside the axes: constrained layout makes room below the axis label, whatever the strips
        handles=[Patch(facecolor=c, edgecolor="#8c959f", label=v) for v, c in COLOURS.items() if v != NO_DATA],
        fontsize=7,
        loc="outside lower center",
        ncols=len(COLOURS) - 1,
        frameon=False,
    )
    sns.despine(fig=figure, left=True)
    return {
        "png": _png(figure),
        "alt": "The verdict along training: per claim, the rule applied to the val curve at every evaluation step; "
        "each cell spans from the previous evaluation to the step it is read at.",
        "points": [{"claim": name, **point} for name, points in strips for point in points],
    }


def claims_section(frame: pd.DataFrame, claims_file: str | Path | None = None) -> dict | None:
    """The section, or None when the store holds no trial of any claim's protocol."""
    if frame.empty or "grid" not in frame:
        return None
    claims: ClaimsFile = load_claims(CLAIMS_FILE if claims_file is None else claims_file)
    stored = set(frame["grid"].dropna())
    relevant = [c for c in claims.claims if {protocol_grid(p).name for p in c.protocol} & stored]
    if not relevant:
        return None
    trials = trial_table(frame)
    decisions = stage_decisions(claims, frame, trials)
    results = [evaluate(claim, claims, frame, trials, decisions=decisions) for claim in relevant]
    strips = [(claim.id, along_training(claim, claims, frame, trials, decisions)) for claim in relevant]
    return {
        "kind": "claims",
        "id": "claims",
        "title": "Claims",
        "caption": CAPTION,
        "rows": [_row(r) for r in results],
        "figure": strip_figure(strips),
    }
