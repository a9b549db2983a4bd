"""``attnbench run --dry-run``: each trial's device-hours and peak memory, and where each figure came from."""

from __future__ import annotations

import json
import textwrap

import pytest

from harness.cli import main
from harness.running.estimate import STATE_BYTES_PER_PARAMETER, _Specs, estimate
from harness.running.grid import load_trials
from harness.store import ResultStore, rows_for_trial

GRID = """
name: cost
tasks: [{{lm_char: {{length: 32}}}}]
scale: smoke
seeds: [0, 1]
attentions:
  vanilla: {{}}
  local: {{block_size: 8}}
model: {{layers: 1, dim: 32, heads: 2, mlp_dim: 64}}
train: {{steps: {steps}, batch_size: 4}}
resources: {{cpus: 1, gpus: {gpus}}}
"""


def grid_file(tmp_path, steps: int = 1000, gpus: int = 0):
    path = tmp_path / f"cost_{steps}_{gpus}.yaml"
    path.write_text(textwrap.dedent(GRID.format(steps=steps, gpus=gpus)))
    return path


def store_trial(results, trial, *, seconds: float, steps: int, peak: int, device: str = "cpu") -> None:
    """A finished trial as the scheduler stores it (final rows carry the timing and memory columns)."""
    common = {"train_seconds": seconds, "steps": steps, "peak_memory_bytes": peak, "device": device, "world_size": 1}
    rows = rows_for_trial(trial.trial_id, trial.config(), metrics=[("test", "bpc", 2.0)], error=None, common=common)
    ResultStore(results).write_trial(trial.trial_id, rows)


def store_bench(results, attention: str, length: int, *, seconds: float, peak: int, block_size=None) -> None:
    """A ``bench --model`` row (grid bench, task model_step), laid out as ``bench.store_sweep`` writes it."""
    config = {
        "grid": "bench",
        "task": "model_step",
        "scale": "bench",
        "seed": 0,
        "attention": attention,
        "params": {"block_size": block_size} if block_size else {},
        "length": length,
        "batch": 2,
        "device": "cpu",
        "dtype": "float32",
        "model": {"kind": "lm", "layers": 2, "dim": 64, "optimizer": "AdamW"},
    }
    trial_id = f"bench-{attention}-{length}-{block_size}"
    common = {"length": length, "peak_memory_bytes": peak, "device": "cpu", "world_size": 1}
    metrics = [("train_step", "seconds", seconds), ("train_step", "steps_per_second", 1 / seconds)]
    rows = rows_for_trial(trial_id, config, metrics=metrics, error=None, common=common)
    ResultStore(results).write_trial(trial_id, rows)


def test_a_stored_trial_of_the_same_cell_prices_every_seed_and_step_count(tmp_path):
    results = tmp_path / "results"
    short = load_trials(grid_file(tmp_path, steps=100))[1]
    vanilla = next(t for t in short if t.attention == "vanilla" and t.seed == 0)
    store_trial(results, vanilla, seconds=20.0, steps=100, peak=3 * 2**20)  # 0.2 s per step
    trials = load_trials(grid_file(tmp_path, steps=36_000))[1]
    costs = {t.trial_id: c for t, c in zip(trials, estimate(trials, results), strict=True)}
    params = _Specs().parameters(vanilla)
    for trial in trials:
        cost = costs[trial.trial_id]
        if trial.attention == "vanilla":  # both seeds, 360x the steps: 0.2 s * 36,000 = 2 hours
            assert cost.seconds_per_step.source == f"store: trial {vanilla.trial_id}"
            assert cost.device_hours == pytest.approx(2.0)
            assert cost.memory_bytes.value == 3 * 2**20 + STATE_BYTES_PER_PARAMETER * params
        else:  # another plugin: nothing stored, no bench row, no --estimate
            assert cost.seconds_per_step.source == cost.memory_bytes.source == "unknown"
            assert cost.device_hours is None
    # a GPU trial is not priced by a CPU one
    gpu = load_trials(grid_file(tmp_path, steps=36_000, gpus=1))[1]
    assert {c.seconds_per_step.source for c in estimate(gpu, results, memory_gib=80)} == {"unknown"}


def test_bench_model_rows_are_scaled_to_the_trial(tmp_path):
    results = tmp_path / "results"
    store_bench(results, "local", 32, seconds=0.5, peak=2**20, block_size=8)
    store_bench(results, "local", 32, seconds=9.0, peak=2**20, block_size=16)  # another block size: not this cell
    store_bench(results, "vanilla", 64, seconds=9.0, peak=2**20)  # another length
    trials = load_trials(grid_file(tmp_path, steps=7200))[1]
    costs = dict(zip((t.attention for t in trials), estimate(trials, results), strict=False))
    local = costs["local"]
    assert local.seconds_per_step.source.startswith("store: bench --model, L=32")
    # batch 4/2, layers 1/2, width (32/64)^2: 0.5 s * 2 * 0.5 * 0.25 = 0.125 s per step, 7200 steps = 0.25 h
    assert local.device_hours == pytest.approx(0.25)
    assert costs["vanilla"].seconds_per_step.source == "unknown"


def test_estimate_measures_a_few_steps_here_and_flags_memory_over_the_device(tmp_path, capsys):
    grid, results = grid_file(tmp_path), tmp_path / "results"
    assert main(["run", str(grid), "--results", str(results), "--dry-run", "--estimate"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 5 and captured.err.count("measuring a few steps") == 2  # one per cell, not per seed
    for line in lines[:-1]:
        assert "[measured: 3 steps here (cpu)]" in line and line.split()[-2:] == ["to", "run"]
        hours = float(line.split("dev-h")[0].split()[-1])
        assert 0 < hours < 5  # 1000 steps of a 1-layer 32-wide model
    assert "device-hours" in lines[-1] and "unknown" not in lines[-1] and not results.exists()

    # the same figures from the store need no --estimate; a device smaller than the estimate is flagged
    trials = load_trials(grid)[1]
    store_trial(results, trials[0], seconds=1.0, steps=10, peak=2**30)
    assert main(["run", str(grid), "--results", str(results), "--dry-run", "--device-memory", "0.5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    priced = [line for line in lines if f"[store: trial {trials[0].trial_id}]" in line]
    assert len(priced) == 2 and all("OVER cpu memory of 512.0 MiB" in line for line in priced)
    # the total is what the 3 trials still to run cost: the stored one is not counted
    assert "3 to run (~" in lines[-1] and "(2 of 3 trials unknown)" in lines[-1]
    assert "1 over their device's memory" in lines[-1]


def test_estimate_without_dry_run_is_refused(tmp_path, capsys):
    assert main(["run", str(grid_file(tmp_path)), "--estimate", "--results", str(tmp_path / "r")]) == 2
    assert "--estimate" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_a_gpu_trial_is_not_measured_on_a_cpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the trial would be measured on it")
    trials = load_trials(grid_file(tmp_path, gpus=1))[1][:1]
    (cost,) = estimate(trials, None, quick=True, memory_gib=80)
    assert cost.device_hours is None and "wants cuda" in cost.seconds_per_step.source
    assert json.loads(json.dumps(cost.device_memory)) == 80 * 2**30
