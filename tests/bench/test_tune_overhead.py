"""Scheduler design (issue 11): per-trial overhead of Ray Tune's ``Tuner`` against the scheduler's plain Ray tasks.

Both run the same 8 trials of ``WORK`` seconds, each reporting progress ``REPORTS`` times (Tune through
``tune.report``, the tasks through a zero-CPU progress actor, as ``harness.running.scheduler`` does), two at a time,
in one Ray instance and one run. Overhead per trial = (wall time - ideal time) * concurrency / trials.
"""

from __future__ import annotations

import time

import pytest

TRIALS, WORK, REPORTS, CONCURRENT = 8, 0.5, 10, 2


def body(report) -> None:
    for index in range(REPORTS):
        time.sleep(WORK / REPORTS)
        report(index)


def with_tasks(ray) -> float:
    from harness.running.progress import ProgressBoard

    board = ray.remote(num_cpus=0)(ProgressBoard).remote()

    @ray.remote(num_cpus=1)
    def trial(key, board):
        body(lambda index: board.update.remote(str(key), {"step": index}))

    started = time.perf_counter()
    pending = [trial.remote(key, board) for key in range(TRIALS)]
    while pending:
        _, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        ray.get(board.snapshot.remote())
    return time.perf_counter() - started


def with_tune(storage) -> float:
    from ray import tune

    def trainable(config):
        body(lambda index: tune.report({"step": index}))

    started = time.perf_counter()
    tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"key": tune.grid_search(list(range(TRIALS)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=CONCURRENT),
        run_config=tune.RunConfig(storage_path=str(storage), verbose=0),
    ).fit()
    return time.perf_counter() - started


@pytest.mark.slow
def test_tune_versus_tasks_overhead_per_trial(tmp_path):
    import ray

    ray.init(address="local", num_cpus=CONCURRENT, include_dashboard=False, log_to_driver=False)
    try:
        ideal = TRIALS * WORK / CONCURRENT
        walls = {"tasks": [], "tune": []}
        for _ in range(2):  # interleaved
            walls["tasks"].append(with_tasks(ray))
            walls["tune"].append(with_tune(tmp_path / "tune"))
    finally:
        ray.shutdown()
    for name, seconds in walls.items():
        overhead = [(wall - ideal) * CONCURRENT / TRIALS for wall in seconds]
        print(
            f"{name}: wall {', '.join(f'{w:.2f}s' for w in seconds)}; overhead per trial "
            f"{', '.join(f'{o:.2f}s' for o in overhead)}"
        )
    assert min(walls["tasks"]) >= ideal and min(walls["tune"]) >= ideal
