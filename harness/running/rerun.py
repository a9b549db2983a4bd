"""Re-run a stored trial from its stored config and compare every stored value: is a result reproducible?

The trial runs in this process through ``harness.trainer.run_trial`` (no Ray), with the threads its ``resources.cpus``
gave it when it was stored, so on the same kind of machine and software a CPU trial reproduces bit for bit. Compared:
every ``ok`` row's value by (split, metric, step), learning curve included, for exact equality.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from harness.store import ResultStore


@dataclass
class Rerun:
    trial_id: str
    label: str
    compared: int
    differences: list[tuple[tuple, float, float | None]]  # (split, metric, step), stored, fresh

    @property
    def identical(self) -> bool:
        return not self.differences


def _key(split: str, metric: str, step) -> tuple:
    return split, metric, None if step is None or (isinstance(step, float) and math.isnan(step)) else int(step)


def rerun(results: str | Path, trial_id: str) -> Rerun:
    """Re-run the stored ``ok`` trial whose id is, or uniquely starts with, ``trial_id``; raise ValueError if none."""
    from harness.trainer import run_trial

    frame = ResultStore(results).read()
    ok = frame[frame["status"] == "ok"]
    ids = sorted({i for i in ok["trial_id"] if i.startswith(trial_id)})
    if len(ids) != 1:
        found = "no" if not ids else f"{len(ids)}"
        raise ValueError(f"{results}: {found} ok trials with an id starting with {trial_id!r}")
    rows = ok[ok["trial_id"] == ids[0]]
    config = json.loads(rows["config"].iloc[0])
    stored = {_key(r.split, r.metric, r.step): r.value for r in rows.itertuples()}
    fresh = {_key(split, metric, step): value for split, metric, value, step in run_trial(config).metrics}
    differences = [
        (key, value, fresh.get(key)) for key, value in sorted(stored.items(), key=str) if fresh.get(key) != value
    ]
    label = (
        f"{config['task']}:{config['attention']}({json.dumps(config['params'], sort_keys=True)}):seed={config['seed']}"
    )
    return Rerun(ids[0], label, len(stored), differences)
