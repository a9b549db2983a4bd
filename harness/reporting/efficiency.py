"""The efficiency tables of ``attnbench bench``.

The model-level table (``bench --model``), Long Range Arena's speed and memory table here: training steps per second
and peak memory of the whole model with each plugin, per device, batch and length, and both relative to vanilla in
the same run (steps/s: higher is better; memory: lower is better). The attention-level table (``bench --device
cuda``): where each plugin's time goes, forward and forward+backward apart, the GPU's idle share and the share of the
bf16 roofline.
"""

from __future__ import annotations

import pandas as pd

from harness.reporting.labels import SPEED_TASK, attention_label, parse_json

MODEL_TASK = "model_step"


def model_table(frame: pd.DataFrame) -> list[dict]:
    """One record per (attention, device, compiled or not, length) of the latest stored model-level run measuring it,
    in length order. Ratios are to vanilla of that same run (every run measures vanilla), never to another run's, so a
    later run of a few plugins, or a compiled run, does not skew an earlier run's rows."""
    ok = (frame["task"] == MODEL_TASK) & (frame["status"] == "ok")
    measured = frame[ok & (frame["metric"] == "steps_per_second")]
    if measured.empty:
        return []
    configs = measured["config"].map(parse_json)
    measured = measured.assign(
        run=configs.map(lambda c: str(c.get("run", ""))),
        compiled=configs.map(lambda c: _compiled_label((c.get("model") or {}).get("compile", False))),
        batch=configs.map(_batch),
    ).sort_values("finished_at", kind="stable")
    rows = measured.drop_duplicates(["attention", "length", "device", "compiled", "batch"], keep="last")
    keys = ["run", "device", "batch", "length"]
    base = measured[measured["attention"] == "vanilla"].drop_duplicates(keys, keep="last").set_index(keys)
    out = []
    for row in rows.sort_values(["device", "compiled", "batch", "length", "attention"]).itertuples():
        key = (row.run, row.device, row.batch, row.length)
        ref = base.loc[key] if key in base.index else None
        out.append(
            {
                "label": attention_label(str(row.attention), parse_json(row.params)),
                "device": f"{row.device}, {row.compiled}" if row.compiled else row.device,
                "batch": int(row.batch),
                "length": int(row.length),
                "steps": f"{row.value:.3f}",
                "speed": "–" if ref is None else f"{row.value / ref['value']:.2f}x",
                "peak": f"{row.peak_memory_bytes / 2**20:.1f}",
                "memory": "–" if ref is None else f"{row.peak_memory_bytes / max(ref['peak_memory_bytes'], 1):.2f}x",
            }
        )
    return out


def _compiled_label(value: bool | str) -> str:
    """How a stored run was compiled, as the table says it: "" (eager), "compiled", "CUDA graphs"."""
    if value == "reduce-overhead":
        return "CUDA graphs"
    return "compiled" if value else ""


def _batch(config: dict) -> int:
    """The batch of one stored case (each case stores its own; cases stored before batches were swept, the run's)."""
    batch = config.get("batch", 1)
    return batch if isinstance(batch, int) else 1


def attention_table(frame: pd.DataFrame) -> list[dict]:
    """One record per (attention, device, batch, length) of the latest detailed attention-level run measuring it
    (``bench --device cuda``): fastest forward and forward+backward in milliseconds, forward+backward relative to
    vanilla of the same run, the GPU's idle share and the roofline share of each time. Runs without the detailed
    figures (the CPU sweep) are not in it."""
    ok = frame[(frame["task"] == SPEED_TASK) & (frame["status"] == "ok")]
    detailed = ok[(ok["split"] == "forward") & (ok["metric"] == "seconds")]
    if detailed.empty:
        return []
    trials = ok[ok["trial_id"].isin(set(detailed["trial_id"]))]
    wide = trials.pivot_table(index="trial_id", columns=["split", "metric"], values="value", aggfunc="last")
    first = trials.sort_values("finished_at", kind="stable").drop_duplicates("trial_id", keep="last")
    first = first.set_index("trial_id")
    configs = first["config"].map(parse_json)
    cases = pd.DataFrame(
        {
            "attention": first["attention"],
            "params": first["params"],
            "device": first["device"],
            "length": first["length"].astype(int),
            "batch": configs.map(_batch),
            "run": configs.map(lambda c: str(c.get("run", ""))),
            "finished_at": first["finished_at"],
        }
    )

    def column(split: str, metric: str) -> pd.Series:
        return wide[(split, metric)] if (split, metric) in wide.columns else pd.Series(float("nan"), index=wide.index)

    cases = cases.assign(
        forward=column("forward", "seconds"),
        both=column("forward_backward", "seconds"),
        idle=column("forward_backward", "idle_share"),
        launches=column("forward_backward", "launches"),
        roof_forward=column("forward", "roofline_share"),
        roof=column("forward_backward", "roofline_share"),
    ).sort_values("finished_at", kind="stable")
    cases = cases.drop_duplicates(["attention", "device", "batch", "length"], keep="last")
    base = cases[cases["attention"] == "vanilla"].set_index(["run", "device", "batch", "length"])["both"]

    def pct(value: float) -> str:
        return "–" if pd.isna(value) else f"{value:.1%}"

    out = []
    for row in cases.sort_values(["device", "batch", "length", "attention"]).itertuples():
        ref = base.get((row.run, row.device, row.batch, row.length))
        out.append(
            {
                "label": attention_label(str(row.attention), parse_json(row.params)),
                "device": row.device,
                "batch": int(row.batch),
                "length": int(row.length),
                "forward_ms": f"{row.forward * 1e3:.3f}",
                "ms": f"{row.both * 1e3:.3f}",
                "vs_vanilla": "–" if ref is None or pd.isna(ref) else f"{row.both / ref:.2f}x",
                "idle": pct(row.idle),
                "launches": "–" if pd.isna(row.launches) else f"{row.launches:.0f}",
                "roofline_forward": pct(row.roof_forward),
                "roofline": pct(row.roof),
            }
        )
    return out
