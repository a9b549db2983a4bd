"""Long trials: learning curves, best/last selection, checkpoints and exact resume, live progress."""

from __future__ import annotations

import copy
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from rich.console import Console

from harness.running import trainer as trainer_module
from harness.running.checkpoints import TrialCheckpoints
from harness.running.grid import GridError, load, load_trials
from harness.running.progress import GridProgress, ProgressBoard
from harness.store import ResultStore, rows_for_trial
from harness.trainer import run_trial

TRAIN = "{steps: %d, batch_size: 8, eval_every: %d, checkpoint_every: %d, select: %s%s}"


def grid_file(
    tmp_path: Path,
    *,
    attention: str = "{local: {block_size: 4}}",
    steps: int = 12,
    eval_every: int = 4,
    checkpoint_every: int = 4,
    select: str = "last",
    extra_train: str = "",
    resources: str = "{max_retries: 1}",
    name: str = "long",
    dropout: float = 0.1,
) -> Path:
    path = tmp_path / f"{name}.yaml"
    train = TRAIN % (steps, eval_every, checkpoint_every, select, extra_train)
    path.write_text(
        textwrap.dedent(
            f"""
            name: {name}
            tasks: [{{sort: {{train_size: 256, test_size: 16}}}}]
            scale: smoke
            attentions: {attention}
            model: {{dropout: {dropout}}}
            train: {train}
            resources: {resources}
            """
        )
    )
    return path


def only_config(path: Path) -> dict:
    (trial,) = load_trials(path)[1]
    return trial.config()


def final_and_curve(metrics) -> tuple[dict, dict]:
    final = {(s, m): v for s, m, v, step in metrics if step is None}
    curve = {(s, m, step): v for s, m, v, step in metrics if step is not None}
    return final, curve


# -- 1. validation and curves ------------------------------------------------------------------------------------
def test_eval_every_stores_val_and_smoothed_train_loss_with_their_step(tmp_path):
    config = only_config(grid_file(tmp_path, steps=12, eval_every=4, checkpoint_every=0))
    result = run_trial(config)
    final, curve = final_and_curve(result.metrics)
    assert {step for (_, _, step) in curve} == {4, 8, 12}
    for step in (4, 8, 12):
        assert {("val", "loss", step), ("val", "exact_match", step), ("train", "loss", step)} <= set(curve)
    # the last curve point is the final val score (select: last), and the final train loss is the smoothed one
    assert final[("val", "loss")] == curve[("val", "loss", 12)]
    assert final[("train", "loss")] == curve[("train", "loss", 12)]
    assert ("test", "loss") in final and result.resumed_from_step == 0 and result.selected_step == 12

    rows = rows_for_trial("t1", config, metrics=result.metrics, error=None, common={"resumed_from_step": 0})
    store = ResultStore(tmp_path / "store")
    store.write_trial("t1", rows)
    frame = pd.read_parquet(tmp_path / "store")
    periodic = frame[frame["step"].notna()]
    assert sorted(periodic.loc[periodic["split"] == "val", "step"].unique()) == [4, 8, 12]
    assert frame.loc[frame["split"] == "test", "step"].isna().all()
    assert (frame["resumed_from_step"] == 0).all()


def test_every_shipped_task_has_a_val_split_apart_from_test():
    import tasks

    for name in ("sort", "listops"):
        task = tasks.build(name, scale="smoke", seed=0)
        task.prepare()
        splits = task.eval_splits(8)
        assert "val" in splits and "test" in splits
        val, test = next(iter(splits["val"])), next(iter(splits["test"]))
        key = "src" if "src" in val else "tokens"
        assert not torch.equal(val[key], test[key])


# -- 2. selection ------------------------------------------------------------------------------------------------
def test_select_best_tests_the_weights_of_the_best_val_step(tmp_path, monkeypatch):
    """Scripted val scores make step 8 the best of 4, 8, 12, 16: the final evaluation must see step 8's weights."""
    scripted = {4: 3.0, 8: 1.0, 12: 2.0, 16: 2.5}  # val loss; exact match stays 0, so the loss decides
    real_evaluate = trainer_module.evaluate
    snapshots: dict[int, dict] = {}
    final_weights: list[dict] = []
    steps_seen: list[int] = []

    def fake_evaluate(model, task, batch_size, device, splits=None):
        weights = copy.deepcopy(model.state_dict())
        if splits == ("val",):
            step = (len(steps_seen) + 1) * 4
            steps_seen.append(step)
            snapshots[step] = weights
            return [("val", "loss", scripted[step]), ("val", "exact_match", 0.0), ("val", "edit_distance", 0.5)]
        final_weights.append(weights)
        return real_evaluate(model, task, batch_size, device, splits)

    monkeypatch.setattr(trainer_module, "evaluate", fake_evaluate)
    for select, expected in (("best", 8), ("last", 16)):
        steps_seen.clear()
        final_weights.clear()
        config = only_config(grid_file(tmp_path, steps=16, eval_every=4, checkpoint_every=0, select=select))
        result = run_trial(config, checkpoints=str(tmp_path / f"ck-{select}"))
        assert result.selected_step == expected
        (weights,) = final_weights
        for name, tensor in weights.items():
            assert torch.equal(tensor, snapshots[expected][name]), name
        assert not any(torch.equal(weights[n], snapshots[12][n]) for n in weights if "weight" in n)


def test_select_best_needs_eval_every(tmp_path):
    path = grid_file(tmp_path, eval_every=0, select="best")
    with pytest.raises(GridError, match=r"long.yaml: train: .*select: best needs eval_every"):
        load(path)


def test_checkpoint_settings_do_not_change_the_trial_id(tmp_path):
    a = load_trials(grid_file(tmp_path, checkpoint_every=4, name="a"))[1][0]
    b = load_trials(grid_file(tmp_path, checkpoint_every=0, extra_train=", keep_checkpoints: true", name="a"))[1][0]
    c = load_trials(grid_file(tmp_path, eval_every=2, name="a"))[1][0]
    assert a.trial_id == b.trial_id != c.trial_id


# -- 3. checkpoints and resume -----------------------------------------------------------------------------------
class Crash(Exception):
    pass


def crash_at(step: int):
    def progress(report):
        if report["step"] == step:
            raise Crash(f"crash at step {step}")

    return progress


@pytest.mark.parametrize("uri", [False, True], ids=["folder", "pyarrow-uri"])
def test_a_trial_resumed_from_its_checkpoint_ends_exactly_as_an_uninterrupted_one(tmp_path, uri):
    """Dropout and Gumbel noise on, select: best: every RNG, the optimizer, the schedule and the curve resume."""
    config = only_config(
        grid_file(tmp_path, attention="{sinkhorn: {block_size: 4}}", steps=16, eval_every=4, select="best")
    )
    reference = run_trial(config)
    root = f"file://{tmp_path / 'remote'}" if uri else str(tmp_path / "ck")
    with pytest.raises(Crash):
        run_trial(config, checkpoints=root, progress=crash_at(12))  # past the checkpoints at 4 and 8
    resumed = run_trial(config, checkpoints=root)
    assert resumed.resumed_from_step == 8
    assert final_and_curve(resumed.metrics) == final_and_curve(reference.metrics)
    assert resumed.selected_step == reference.selected_step
    store = TrialCheckpoints(root, load_trials(grid_file(tmp_path, name="x"))[1][0].trial_id)
    store.remove()  # a missing trial folder is fine


def cli_env(tmp_path: Path, die_at: int) -> dict[str, str]:
    return {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "ATTNBENCH_TEST_MARKER": str(tmp_path / "died.marker"),
        "ATTNBENCH_TEST_DIE_AT": str(die_at),
    }


@pytest.mark.slow
def test_a_worker_killed_past_its_second_checkpoint_resumes_and_matches(tmp_path, monkeypatch, dying_plugins):
    plugins = dying_plugins
    # Each plugin instance (encoder and decoder hold one each) counts its own training forwards, one per step: the
    # 11th is step 11, past the checkpoints at steps 4 and 8.
    path = grid_file(tmp_path, attention="{dies_once: {}}", steps=16, eval_every=4, checkpoint_every=4)
    results = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(path), "--results", str(results), "--plugins", str(plugins)],
        capture_output=True,
        text=True,
        env=cli_env(tmp_path, die_at=11),
        timeout=400,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "died.marker").exists(), "the worker should have died once"
    frame = pd.read_parquet(results)
    assert (frame["status"] == "ok").all() and (frame["resumed_from_step"] == 8).all()
    trial_id = frame["trial_id"].iloc[0]
    assert not (results / "checkpoints" / trial_id).exists(), "checkpoints are removed once the result is stored"

    monkeypatch.setenv("ATTNBENCH_TEST_MARKER", str(tmp_path / "died.marker"))  # exists: the reference never dies
    monkeypatch.setenv("ATTNBENCH_TEST_DIE_AT", "11")
    reference = run_trial(only_config(path))
    stored = {
        (r.split, r.metric, None if pd.isna(r.step) else int(r.step)): r.value
        for r in frame.itertuples()
        if r.split not in ("eval",)
    }
    expected = {(s, m, step): v for s, m, v, step in reference.metrics if s != "eval"}
    assert stored == expected


@pytest.mark.slow
def test_a_driver_killed_mid_trial_resumes_the_trial_from_its_checkpoint(tmp_path):
    path = grid_file(tmp_path, steps=400, eval_every=50, checkpoint_every=25, extra_train=", keep_checkpoints: true")
    trial_id = load_trials(path)[1][0].trial_id
    results = tmp_path / "results"
    command = [sys.executable, "-m", "harness.cli", "run", str(path), "--results", str(results)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    driver = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    latest = results / "checkpoints" / trial_id / "_deepspeed" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and not latest.exists():
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its embedded Ray, mid-trial
    driver.wait(timeout=30)
    assert latest.exists() and not list(results.glob("part-*.parquet")), "the driver should die mid-trial"

    rerun = subprocess.run([*command, "--progress-every", "0.5"], capture_output=True, text=True, env=env, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    frame = pd.read_parquet(results)  # the kept checkpoints beside the Parquet parts do not disturb readers
    resumed = int(frame["resumed_from_step"].iloc[0])
    assert resumed > 0 and resumed % 25 == 0
    assert (results / "checkpoints" / trial_id / "_deepspeed").is_dir(), "keep_checkpoints: true keeps them"
    assert f"(resumed from step {resumed})" in rerun.stderr and "trials: 0/1 done" in rerun.stderr

    reference = run_trial(only_config(path))
    stored = {(r.split, r.metric): r.value for r in frame.itertuples() if pd.isna(r.step)}
    assert stored == reference.final()


# -- 4. live progress --------------------------------------------------------------------------------------------
def test_progress_names_step_loss_speed_eta_and_warns_about_a_silent_trial():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    board = ProgressBoard()
    with GridProgress(console, total=2, plain_every=0.0, stall_after=0.2) as progress:
        progress.submitted("a", "sort:sinkhorn(block_size=4):seed=0")
        progress.submitted("b", "sort:local(block_size=4):seed=0")
        board.update(
            "a", {"step": 50, "steps": 200, "loss": 1.234, "tokens_per_second": 4321.0, "steps_per_second": 10.0}
        )
        progress.refresh(board.snapshot())
        text = out.getvalue()
        assert "1 running, 1 waiting" in text
        assert "sort:sinkhorn(block_size=4):seed=0: step 50/200  loss 1.234  4,321 tok/s  ETA 15s" in text
        assert "sort:local" not in text  # not started yet: no line, no stall warning
        time.sleep(0.3)
        progress.refresh(board.snapshot())
        assert "warning: sort:sinkhorn(block_size=4):seed=0 has reported no progress" in out.getvalue()
        progress.finished("a", ok=True)
        assert "1/2 done (ok 1, failed 0)" in progress.summary()


@pytest.mark.slow
def test_a_second_driver_on_the_same_store_and_grid_refuses_and_the_first_runs_each_trial_once(tmp_path):
    path = grid_file(tmp_path, steps=150, eval_every=50, checkpoint_every=50)
    results = tmp_path / "results"
    command = [sys.executable, "-m", "harness.cli", "run", str(path), "--results", str(results)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lock = results / ".driver.lock"
    deadline = time.time() + 240
    while time.time() < deadline and not lock.exists() and first.poll() is None:
        time.sleep(0.1)
    assert lock.exists(), "the first driver should hold the store's lock while it runs"
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"another driver is running on this store (pid {first.pid} on host" in " ".join(second.stderr.split())
    out, err = first.communicate(timeout=400)
    assert first.returncode == 0, err[-3000:]
    assert not lock.exists(), "the lock goes with the driver"
    frame = pd.read_parquet(results)
    assert frame["trial_id"].nunique() == 1 and not frame.duplicated(["split", "metric", "step"]).any()
