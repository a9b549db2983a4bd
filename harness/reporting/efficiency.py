"""The model-level efficiency table (``attnbench bench --model``): Long Range Arena's speed and memory table here.

Training steps per second and peak memory of the whole model with each plugin, per device and length, and both
relative to vanilla in the same run (steps/s: higher is better; memory: lower is better).
"""

from __future__ import annotations

import pandas as pd

from harness.reporting.labels import attention_label, parse_json

MODEL_TASK = "model_step"


def model_table(frame: pd.DataFrame) -> list[dict]:
    """One record per (attention, device, length) of the latest stored model-level run, in length order."""
    rows = frame[(frame["task"] == MODEL_TASK) & (frame["status"] == "ok") & (frame["metric"] == "steps_per_second")]
    if rows.empty:
        return []
    rows = rows.sort_values("finished_at", kind="stable").drop_duplicates(
        ["attention", "length", "device"], keep="last"
    )
    base = rows[rows["attention"] == "vanilla"].set_index(["device", "length"])
    out = []
    for row in rows.sort_values(["device", "length", "attention"]).itertuples():
        ref = base.loc[(row.device, row.length)] if (row.device, row.length) in base.index else None
        out.append(
            {
                "label": attention_label(str(row.attention), parse_json(row.params)),
                "device": row.device,
                "length": int(row.length),
                "steps": f"{row.value:.3f}",
                "speed": "–" if ref is None else f"{row.value / ref['value']:.2f}x",
                "peak": f"{row.peak_memory_bytes / 2**20:.1f}",
                "memory": "–" if ref is None else f"{row.peak_memory_bytes / max(ref['peak_memory_bytes'], 1):.2f}x",
            }
        )
    return out
