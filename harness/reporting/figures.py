"""The report's figures (seaborn on matplotlib's Agg canvas), embedded in the page as base64 PNG.

Every table's headline metrics per attention (points with 95% intervals), Figures 3 and 4 of the paper (a sinkhorn
parameter against each headline metric) and the speed and memory sweep of ``attnbench bench`` (seconds and peak memory
against length, log-log). Each figure also returns the points it plots,
with the trials behind them, so the page can list them. No pyplot: figures never touch global backend state.
"""

from __future__ import annotations

import base64
import io
import math

import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.reporting.labels import (
    METRIC_LABEL,
    SPEED_TASK,
    attention_label,
    clipped_interval,
    context_captions,
    fmt,
    mean_ci,
    parse_json,
    scaled,
)
from harness.reporting.tables import headline_values
from harness.stats import fit_exponent


def _text(label: str) -> str:
    """Plain text for matplotlib: a ``$`` in a plugin's name must not start mathtext (or fail to parse)."""
    return label.replace("$", r"\$")


def _png(figure: Figure) -> str:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _grid(panels: int, width: float = 4.8, height: float = 3.4, columns: int = 3) -> tuple[Figure, list]:
    ncols = min(columns, panels)
    nrows = math.ceil(panels / ncols)
    figure = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


def _error_bar(metric: str, means: list[float], halves: list[float]) -> list[list[float]]:
    """Asymmetric error-bar lengths for matplotlib: each interval cut to the values the metric can take."""
    cut = [clipped_interval(metric, m, h) for m, h in zip(means, halves, strict=True)]
    below = [m - low for m, (low, _) in zip(means, cut, strict=True)]
    above = [high - m for m, (_, high) in zip(means, cut, strict=True)]
    return [below, above]


def headline_figure(points: pd.DataFrame, order: list[str] | None = None) -> dict | None:
    """One panel per column (setting · split · metric): each attention's mean over seeds with its 95% t-interval, and
    the seeds themselves as small dots. ``points`` holds final rows: ``facet, label, metric, value`` (as displayed),
    plus ``seed`` and ``trial_id``; ``order`` fixes the attentions' order (default: as they come). None when empty."""
    points = points.dropna(subset=["value"])
    if points.empty:
        return None
    labels = [label for label in order or [] if label in set(points["label"])]
    labels += [label for label in dict.fromkeys(points["label"]) if label not in labels]
    data = points.assign(line=points["label"].map(_text))
    lines = [_text(label) for label in labels]
    palette = dict(zip(lines, sns.color_palette("colorblind", len(lines)), strict=True))
    facets = list(dict.fromkeys(data["facet"]))
    summary = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        figure, axes = _grid(len(facets), width=4.8, height=0.9 + 0.42 * len(lines))
        for ax, facet in zip(axes, facets, strict=True):
            part = data[data["facet"] == facet]
            sns.stripplot(
                data=part, x="value", y="line", order=lines, hue="line", palette=palette, size=4, alpha=0.45,
                jitter=0.12, legend=False, ax=ax,
            )  # fmt: skip
            for y, line in enumerate(lines):
                got = part.loc[part["line"] == line, "value"]
                if got.empty:
                    continue
                mean, ci, n = mean_ci(got)
                half = 0.0 if math.isnan(ci) else ci
                ax.errorbar([mean], [y], xerr=_error_bar(part["metric"].iloc[0], [mean], [half]), fmt="D",
                            color=palette[line], markersize=6, capsize=4)  # fmt: skip
                summary.append({"facet": facet, "label": labels[y], "mean": mean, "ci": half, "n": n})
            ax.set_title(_text(facet), fontsize=9)
            ax.set_xlabel("mean over seeds, 95% CI (dots: seeds)")
            ax.set_ylabel("")
            ax.set_yticks(range(len(lines)), [line if len(line) <= 60 else line[:59] + "…" for line in lines])
            if ax.get_subplotspec().colspan.start:  # the same attentions on every row: name them once, at the left
                ax.tick_params(labelleft=False)
        png = _png(figure)
    return {"png": png, "alt": "headline metrics per attention: " + "; ".join(facets), "points": summary}


def sweep_figure(param: str, trials: pd.DataFrame, values: pd.DataFrame) -> dict | None:
    """Headline metrics against ``param`` for trials that set it explicitly; None when no line has two x values."""
    chosen = trials[(trials["status"] == "ok") & trials["params"].map(lambda p: param in p)].set_index("trial_id")
    got = headline_values(values[values["trial_id"].isin(chosen.index)])
    if got.empty:
        return None
    points = []
    for (trial_id, split, metric), rows in got.groupby(["trial_id", "split", "metric"]):
        trial = chosen.loc[trial_id]
        setting = {k: v for k, v in trial["setting"].items() if k != "task"}
        others = {k: v for k, v in trial["shown"].items() if k != param}
        line = attention_label(str(trial["attention"]), others, bool(trial["attrs"]["tie_kv"]))
        points.append(
            {
                "facet": " · ".join(
                    [str(trial["task"]), *map(str, setting.values()), split, METRIC_LABEL.get(metric, metric)]
                ),
                "line": line,
                "context": trial["context"],
                "x": float(trial["params"][param]),
                "metric": metric,
                "seed": trial["seed"],
                "value": scaled(metric, float(rows["value"].iloc[0])),
                "trial_id": trial_id,
            }
        )
    frame = pd.DataFrame(points)
    spread = frame.groupby(["facet", "line", "context"])["x"].nunique()
    keep = spread[spread >= 2].index
    keys = zip(frame["facet"], frame["line"], frame["context"], strict=True)
    frame = frame[pd.Series([k in keep for k in keys], index=frame.index)]
    if frame.empty:
        return None
    # only the lines drawn decide whether a legend entry needs its context, and then only what tells them apart
    captions = context_captions(sorted(frame["context"].unique()), only_differing=True)
    if len(captions) > 1:
        frame = frame.assign(line=frame["line"] + " · " + frame["context"].map(captions))
    summary = []
    for (facet, line, x), rows in frame.groupby(["facet", "line", "x"], sort=True):
        mean, ci, n = mean_ci(rows["value"])
        metric = rows["metric"].iloc[0]
        summary.append(
            {
                "facet": facet,
                "line": line,
                "x": x,
                "metric": metric,
                "mean": mean,
                "ci": 0.0 if math.isnan(ci) else ci,
                "text": fmt(metric, mean),
                "ci_text": "" if math.isnan(ci) else fmt(metric, ci),
                "n": n,
                "trials": [{"id": t, "seed": s} for t, s in zip(rows["trial_id"], rows["seed"], strict=True)],
            }
        )
    table = pd.DataFrame(summary)
    facets = list(dict.fromkeys(table["facet"]))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        figure, axes = _grid(len(facets))
        for ax, facet in zip(axes, facets, strict=True):
            data = table[table["facet"] == facet].assign(line=lambda d: d["line"].map(_text))
            lines = list(dict.fromkeys(data["line"]))
            palette = dict(zip(lines, sns.color_palette("colorblind", len(lines)), strict=True))
            sns.lineplot(data=data, x="x", y="mean", hue="line", palette=palette, marker="o", ax=ax, errorbar=None)
            for line, part in data.groupby("line"):
                bars = _error_bar(part["metric"].iloc[0], part["mean"].tolist(), part["ci"].tolist())
                ax.errorbar(part["x"], part["mean"], yerr=bars, fmt="none", ecolor=palette[line], capsize=3)
            ax.set_title(_text(facet), fontsize=9)
            ax.set_xlabel("τ (temperature)" if param == "temperature" else _text(param))
            ax.set_ylabel("mean over seeds, 95% CI")
            ax.legend(fontsize=7, title=None)
        png = _png(figure)
    return {"png": png, "alt": f"{param} sweep: " + "; ".join(facets), "points": summary}


def latest_speed_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Forward+backward rows of ``attnbench bench``, keeping the latest run per (attention, length, device, metric);
    a batch other than 1 is part of the line's label (B=8), so sweeps over several batches draw one line each."""
    rows = frame[(frame["task"] == SPEED_TASK) & (frame["status"] == "ok") & frame["length"].notna()]
    rows = rows[rows["split"] == "forward_backward"].copy()  # the forward-only times of a GPU sweep are tabled apart
    if rows.empty:
        return rows.assign(label=pd.Series(dtype=str))
    batches = rows["config"].map(lambda c: parse_json(c).get("batch", 1))
    rows["label"] = [
        attention_label(str(a), parse_json(p)) + (f" (B={b})" if isinstance(b, int) and b != 1 else "")
        for a, p, b in zip(rows["attention"], rows["params"], batches, strict=True)
    ]
    rows["device"] = rows["device"].fillna("unknown")
    rows = rows.sort_values("finished_at", kind="stable", na_position="first")
    return rows.drop_duplicates(["label", "length", "device", "metric"], keep="last")


def speed_figure(frame: pd.DataFrame) -> dict | None:
    """Seconds, peak memory and saved-for-backward bytes against length, log-log, one line per attention."""
    rows = latest_speed_rows(frame)
    if rows.empty:
        return None
    keys = ["label", "device", "length"]
    seconds = rows[rows["metric"] == "seconds"].set_index(keys)["value"].rename("seconds")
    saved = rows[rows["metric"] == "saved_bytes"].set_index(keys)["value"].rename("saved")
    peak = rows.sort_values("finished_at", kind="stable").groupby(keys)["peak_memory_bytes"].last().rename("peak")
    trial = rows.groupby(keys)["trial_id"].last().rename("trial_id")
    data = pd.concat([seconds, peak, saved, trial], axis=1).reset_index().sort_values(keys)
    quantities = [
        (c, t)
        for c, t in (("seconds", "time (s)"), ("peak", "peak memory (MiB)"), ("saved", "saved for backward (MiB)"))
        if data[c].notna().any()
    ]
    devices = sorted(data["device"].unique())
    lines = list(dict.fromkeys(data["label"]))
    palette = dict(zip(map(_text, lines), sns.color_palette("colorblind", len(lines)), strict=True))
    slopes = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        figure, axes = _grid(len(devices) * len(quantities), columns=len(quantities))
        for index, (device, (column, title)) in enumerate((d, q) for d in devices for q in quantities):
            ax = axes[index]
            part = data[(data["device"] == device) & data[column].notna()].copy()
            part["y"] = part[column] / (1 if column == "seconds" else 2**20)
            part["line"] = part["label"].map(_text)
            if not part.empty:
                sns.lineplot(
                    data=part, x="length", y="y", hue="line", palette=palette, marker="o", ax=ax, errorbar=None
                )
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.legend(fontsize=7, title=None)
            ax.set_title(f"{_text(device)}: {title}", fontsize=9)
            ax.set_xlabel("sequence length")
            ax.set_ylabel(title)
        png = _png(figure)
    for (label, device), part in data.groupby(["label", "device"], sort=False):
        slope = {"label": label, "device": device}
        for column, _ in quantities:
            valid = part[part[column].notna() & (part[column] > 0)]
            fit = fit_exponent(valid["length"].tolist(), valid[column].tolist()) if len(valid) >= 2 else None
            slope[column] = "–" if fit is None else f"{fit:.2f}"
        slopes.append(slope)
    points = [
        {
            "label": r.label,
            "device": r.device,
            "length": int(r.length),
            "trial_id": r.trial_id,
            "seconds": "–" if pd.isna(r.seconds) else f"{r.seconds:.4g}",
            "peak": "–" if pd.isna(r.peak) else f"{r.peak / 2**20:.4g}",
            "saved": "–" if pd.isna(r.saved) else f"{r.saved / 2**20:.4g}",
        }
        for r in data.itertuples()
    ]
    return {
        "png": png,
        "alt": "speed and memory against length: " + ", ".join(lines),
        "slopes": slopes,
        "quantities": quantities,
        "points": points,
    }
