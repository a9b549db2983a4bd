"""The Long Range Arena grids: every one loads, the paper-scale cells carry LRA's configs, the smoke grid runs."""

from __future__ import annotations

import math

import pytest

from harness.running.grid import load_trials, shipped_grids
from harness.running.trainer import run_trial

TASKS = ["listops", "lra_text", "lra_retrieval", "lra_image", "pathfinder", "pathx"]
# grid -> (layers, dim, heads, mlp_dim, steps, batch_size), from lra_benchmarks/*/configs/ (each grid cites its file)
LRA = {
    "listops": (4, 512, 8, 1024, 5000, 32),
    "lra_text": (4, 256, 4, 1024, 20000, 32),
    "lra_retrieval": (4, 128, 4, 512, 5000, 32),
    "lra_image": (1, 128, 8, 128, 35000, 256),
    "pathfinder": (4, 32, 4, 32, 62400, 512),
    "pathx": (1, 32, 2, 32, 500000, 64),
}


def test_every_task_ships_at_every_scale():
    assert {f"lra/{t}{s}" for t in TASKS for s in ("", "_small", "_smoke")} | {"lra/smoke"} <= set(shipped_grids())


@pytest.mark.parametrize("name", TASKS)
def test_paper_cells_are_lras_configs(name):
    parsed, trials = load_trials(f"lra/{name}")
    model = trials[0].model
    assert (model["layers"], model["dim"], model["heads"], model["mlp_dim"]) == LRA[name][:4]
    assert (parsed.train.steps, parsed.train.batch_size) == LRA[name][4:]
    assert {t.attention for t in trials} == {"vanilla", "local", "sparse", "sinkhorn"}
    for scale in ("small", "smoke"):
        scaled, cells = load_trials(f"lra/{name}_{scale}")
        assert scaled.scale == scale and {t.task for t in cells} == {t.task for t in trials}
        if scale == "smoke":  # offline and seconds: no data path, a few steps
            assert all("data" not in t.task_params for t in cells) and scaled.train.steps <= 5
    sizes = {t.task_params.get("size") for t in trials}
    assert sizes == ({128} if name == "pathx" else {32} if name == "pathfinder" else {None})


@pytest.mark.slow
def test_lra_smoke_grid_runs_every_task():
    _, trials = load_trials("lra/smoke")
    assert {t.task for t in trials} == {"listops", "lra_text", "lra_retrieval", "lra_image", "pathfinder"}
    for trial in trials:
        metrics = run_trial(trial.config()).final()
        for split in ("val", "test"):
            assert 0 <= metrics[(split, "accuracy")] <= 1 and math.isfinite(metrics[(split, "loss")])
