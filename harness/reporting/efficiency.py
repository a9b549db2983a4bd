"""The model-level efficiency table (``attnbench bench --model``): Long Range Arena's speed and memory table here.

Training steps per second and peak memory of the whole model with each plugin, per device and length, and both
relative to vanilla in the same run (steps/s: higher is better; memory: lower is better).
"""

from __future__ import annotations

import pandas as pd

from harness.reporting.labels import attention_label, parse_json

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
        compiled=configs.map(lambda c: bool((c.get("model") or {}).get("compile", False))),
    ).sort_values("finished_at", kind="stable")
    rows = measured.drop_duplicates(["attention", "length", "device", "compiled"], keep="last")
    base = measured[measured["attention"] == "vanilla"].drop_duplicates(["run", "device", "length"], keep="last")
    base = base.set_index(["run", "device", "length"])
    out = []
    for row in rows.sort_values(["device", "compiled", "length", "attention"]).itertuples():
        key = (row.run, row.device, row.length)
        ref = base.loc[key] if key in base.index else None
        out.append(
            {
                "label": attention_label(str(row.attention), parse_json(row.params)),
                "device": f"{row.device}, compiled" if row.compiled else row.device,
                "length": int(row.length),
                "steps": f"{row.value:.3f}",
                "speed": "–" if ref is None else f"{row.value / ref['value']:.2f}x",
                "peak": f"{row.peak_memory_bytes / 2**20:.1f}",
                "memory": "–" if ref is None else f"{row.peak_memory_bytes / max(ref['peak_memory_bytes'], 1):.2f}x",
            }
        )
    return out
