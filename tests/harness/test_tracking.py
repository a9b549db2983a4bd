"""``--track``: each stored trial mirrored to TensorBoard, MLflow and W&B, read back with the trackers' own readers."""

from __future__ import annotations

import textwrap

import pytest

from harness.cli import main
from harness.running.grid import load_trials
from harness.store import rows_for_trial
from harness.tracking import Mirror, TrackError, parse

GRID = """
name: tracked
tasks: [sort]
scale: smoke
attentions: {local: {block_size: 4}}
train: {steps: 30, batch_size: 4, eval_every: 10}
"""
CURVE = [
    ("train", "loss", 2.5, 10),
    ("val", "loss", 2.4, 10),
    ("val", "exact_match", 0.0, 10),
    ("val", "loss", 1.9, 20),
]
FINAL = [("test", "exact_match", 0.25, None), ("test", "loss", 1.5, None)]


@pytest.fixture
def stored(tmp_path):
    """A trial and the rows the scheduler stores for it: final rows and learning-curve rows."""
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(GRID))
    trial = load_trials(path)[1][0]
    common = {"steps": 30, "device": "cpu", "train_seconds": 1.0}
    rows = rows_for_trial(trial.trial_id, trial.config(), metrics=FINAL + CURVE, error=None, common=common)
    return trial, rows


def failed_rows(trial):
    return rows_for_trial(trial.trial_id, trial.config(), metrics=None, error="RuntimeError: boom", common={})


def mirror(*targets: str) -> tuple[Mirror, list[str]]:
    warnings: list[str] = []
    return Mirror(parse(list(targets)), warn=warnings.append), warnings


def test_tensorboard_run_holds_config_curve_and_final_metrics(tmp_path, stored):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    trial, rows = stored
    write, warnings = mirror(f"tensorboard={tmp_path / 'tb'}")
    write(trial, rows)
    write(trial, rows)  # stored again (a re-run): still one run, not doubled points
    assert not warnings and [p.name for p in (tmp_path / "tb").iterdir()] == [trial.trial_id]
    events = EventAccumulator(str(tmp_path / "tb" / trial.trial_id), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val/loss")] == [
        (10, pytest.approx(2.4)),
        (20, pytest.approx(1.9)),
    ]
    assert [(e.step, e.value) for e in events.Scalars("final/test/exact_match")] == [(30, 0.25)]
    assert "train/loss" in events.Tags()["scalars"] and "final/train/loss" not in events.Tags()["scalars"]
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    session = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert session.hparams["train.steps"].number_value == 30
    assert session.hparams["attention"].string_value == "local"
    assert session.hparams["params.block_size"].number_value == 4


def test_mlflow_run_per_trial_named_by_its_id(tmp_path, stored):
    pytest.importorskip("mlflow", reason="the track extra (pip install 'attnbench[track]') is not installed")
    from mlflow import MlflowClient

    trial, rows = stored
    uri = (tmp_path / "mlruns").as_uri()
    write, warnings = mirror(f"mlflow={uri}")
    write(trial, failed_rows(trial))  # a failed trial, later re-run and stored ok: one run remains
    write(trial, rows)
    assert not warnings
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == trial.trial_id and run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "30" and run.data.params["params.block_size"] == "4"
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert sorted((m.step, m.value) for m in history) == [(10, 2.4), (20, 1.9)]
    assert run.data.metrics["final/test/exact_match"] == 0.25


def test_mlflow_failed_trial_is_a_failed_run(tmp_path, stored):
    pytest.importorskip("mlflow", reason="the track extra (pip install 'attnbench[track]') is not installed")
    from mlflow import MlflowClient

    trial, _ = stored
    uri = str(tmp_path / "mlruns")  # a plain folder works as well as a file: URI
    write, warnings = mirror(f"mlflow={uri}")
    write(trial, failed_rows(trial))
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["attnbench.error"] == "RuntimeError: boom"


def test_wandb_offline_run_per_trial(tmp_path, stored, monkeypatch):
    """wandb (0.31) ships no Python reader of its offline ``.wandb`` transaction log (its Go core reads them, e.g. for
    ``wandb sync``), so the run is checked as far as the files allow: one offline run per trial whose log holds the
    trial id, the flattened config keys and the metric names (protobuf keeps strings as they are)."""
    pytest.importorskip("wandb", reason="the track extra (pip install 'attnbench[track]') is not installed")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    trial, rows = stored
    write, warnings = mirror("wandb=attnbench-test")
    write(trial, rows)
    assert not warnings
    import wandb

    wandb.teardown()  # wandb's service writes the log behind finish(); at exit, or here, it flushes
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    log = run_file.read_bytes()
    for text in (trial.trial_id, "attnbench-test", "tracked", "train.steps", "val/loss", "final/test/exact_match"):
        assert text.encode() in log, text


def test_a_tracker_that_fails_warns_and_never_raises(tmp_path, stored):
    trial, rows = stored
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    write, warnings = mirror(f"tensorboard={blocker}", f"tensorboard={tmp_path / 'tb'}")
    write(trial, rows)
    assert len(warnings) == 1 and f"tensorboard={blocker}: trial {trial.trial_id} not mirrored" in warnings[0]
    assert (tmp_path / "tb" / trial.trial_id).is_dir()  # the other tracker still got its run


@pytest.mark.parametrize(
    "value,expected",
    [
        ("tensorbord=runs", "--track 'tensorbord=runs': expected one of tensorboard=DIR, mlflow=URI, wandb=PROJECT"),
        ("tensorboard", "expected one of"),
        ("mlflow=", "--track mlflow: no URI after '='"),
    ],
)
def test_a_bad_track_value_exits_2_with_one_clear_line(tmp_path, capsys, value, expected):
    with pytest.raises(TrackError, match="--track"):
        parse([value])
    code = main(["run", "smoke", "--track", value, "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and expected in " ".join(err.split()) and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_run_mirrors_each_stored_trial_and_a_broken_tracker_loses_nothing(tmp_path, capsys):
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(GRID))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    results, board = tmp_path / "results", tmp_path / "tb"
    code = main(["run", str(path), "--results", str(results), "--track", f"tensorboard={board}", "--track",
                 f"tensorboard={blocker}"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    stored = pd.read_parquet(results)
    (trial_id,) = set(stored["trial_id"])
    assert "not mirrored" in err and set(stored["status"]) == {"ok"}
    events = EventAccumulator(str(board / trial_id), size_guidance={"scalars": 0})
    events.Reload()
    curve = stored[stored["step"].notna() & (stored["split"] == "val") & (stored["metric"] == "loss")]
    assert sorted((e.step, e.value) for e in events.Scalars("val/loss")) == sorted(
        (int(s), pytest.approx(v)) for s, v in zip(curve["step"], curve["value"], strict=True)
    )
