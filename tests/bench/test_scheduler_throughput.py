"""Scheduler throughput (issue 5): Ray's overhead per trial, and 8 equal trials concurrent versus one by one.

Measured in one run, as ratios and differences of the same machine's wall clock:
* overhead per trial = (wall time of the serial grid - sum of the trials' own durations) / trials;
* concurrency ratio = wall time with Ray placing trials on every core / wall time with ``max_concurrent=1``.
"""

from __future__ import annotations

import textwrap

import pandas as pd

from harness.running.grid import load_trials
from harness.running.scheduler import run_grid
from harness.store import ResultStore

TRIALS = 8


def trials(tmp_path, name: str):
    path = tmp_path / f"{name}.yaml"
    seeds = list(range(TRIALS))
    path.write_text(
        textwrap.dedent(
            f"""
            name: {name}
            tasks: [{{sort: {{train_size: 512, test_size: 16}}}}]
            seeds: {seeds}
            attentions: {{vanilla: {{}}}}
            train: {{steps: 600, batch_size: 16}}
            resources: {{cpus: 1}}
            """
        )
    )
    return load_trials(path)[1]


def own_seconds(store: ResultStore) -> float:
    frame = store.read().groupby("trial_id")[["started_at", "finished_at"]].first()
    return float((frame["finished_at"] - frame["started_at"]).dt.total_seconds().sum())


def test_overhead_and_concurrency(benchmark, tmp_path):
    serial_store, parallel_store = ResultStore(tmp_path / "serial"), ResultStore(tmp_path / "parallel")

    def measure():
        serial = run_grid(trials(tmp_path, "serial"), serial_store, max_concurrent=1)
        parallel = run_grid(trials(tmp_path, "parallel"), parallel_store)
        return serial, parallel

    serial, parallel = benchmark.pedantic(measure, rounds=1, iterations=1)
    assert len(serial.ok) == len(parallel.ok) == TRIALS
    overhead = (serial.seconds - own_seconds(serial_store)) / TRIALS
    ratio = parallel.seconds / serial.seconds
    benchmark.extra_info.update(
        serial_seconds=serial.seconds, parallel_seconds=parallel.seconds, ratio=ratio, overhead_per_trial=overhead
    )
    print(pd.Series(benchmark.extra_info).to_string())
    assert overhead < 1.0, f"Ray overhead {overhead:.2f}s per trial"
    assert ratio <= 0.6, f"8 trials on all cores took {ratio:.2f} of running them one by one"
