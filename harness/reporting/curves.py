"""Learning curves: each task's validation headline metric against the training step.

One panel per (task, context), one line per attention setting, the mean over seeds with a 95% t-interval band (the
same interval the tables use, so a band and a cell agree). The points come from the store's periodic rows (``split =
val``, ``step`` set), which ``train.eval_every`` produces; a task without them gets no panel.
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns

from harness.reporting.figures import _grid, _png, _text
from harness.reporting.labels import METRIC_LABEL, clipped_interval, context_captions, mean_ci, scaled


def curve_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The learning-curve rows of ok trials: ``split = val`` with a step."""
    if "step" not in frame:
        return frame.iloc[0:0]
    ok = frame[(frame["status"] == "ok") & frame["step"].notna() & (frame["split"] == "val")]
    return ok[["trial_id", "split", "metric", "value", "step"]]


def curves_figure(frame: pd.DataFrame, trials: pd.DataFrame) -> dict | None:
    """The "Learning curves" figure, or None when no trial stored periodic validation rows.

    A task's headline metric is the first metric after ``loss`` in its stored rows (the trainer writes ``loss``
    then the task's metrics in the task's order)."""
    rows = curve_rows(frame)
    info = trials.set_index("trial_id")
    rows = rows[rows["trial_id"].isin(info.index)]
    if rows.empty:
        return None
    rows = rows.assign(task=rows["trial_id"].map(info["task"]))
    named = rows[rows["metric"] != "loss"]
    headline = named.drop_duplicates("task").set_index("task")["metric"]
    rows = rows[rows["metric"] == rows["task"].map(headline).fillna("loss")]
    if rows.empty:
        return None
    rows = rows.assign(
        line=rows["trial_id"].map(info["label"]),
        context=rows["trial_id"].map(info["context"]),
        value=[scaled(m, v) for m, v in zip(rows["metric"], rows["value"], strict=True)],
    )
    captions = context_captions(sorted(rows["context"].unique()))
    panels = list(rows.groupby(["task", "context"], sort=True))
    figure, axes = _grid(len(panels), width=5.6, height=3.8, columns=2)
    points = []
    for ax, ((task, context), panel) in zip(axes, panels, strict=True):
        metric = panel["metric"].iloc[0]
        panel_points = []
        for (line, step), cell in panel.groupby(["line", "step"]):
            mean, half, n = mean_ci(cell["value"])
            panel_points.append(
                {"task": task, "line": line, "step": int(step), "mean": mean, "ci": half, "n": n, "metric": metric}
            )
        points.extend(panel_points)
        for line, drawn in pd.DataFrame(panel_points).groupby("line", sort=True):
            drawn = drawn.sort_values("step")
            ax.plot(drawn["step"], drawn["mean"], marker="o", markersize=3, label=_text(str(line)))
            # the band is cut to the values the metric can take (with 2 seeds a t-interval easily passes 100%)
            band = [clipped_interval(metric, m, h) for m, h in zip(drawn["mean"], drawn["ci"], strict=True)]
            ax.fill_between(drawn["step"], [b[0] for b in band], [b[1] for b in band], alpha=0.2)
        ax.set_title(_text(f"{task} · {captions[context]}"), fontsize=8, wrap=True)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"val {METRIC_LABEL.get(metric, metric)}")
        ax.legend(fontsize=7)
    sns.despine(fig=figure)
    return {
        "png": _png(figure),
        "alt": "Validation headline metric against training step, one line per attention setting, mean over seeds "
        "with a 95% t-interval band.",
        "points": points,
    }
