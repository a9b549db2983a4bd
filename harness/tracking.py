"""``--track KIND=TARGET``: mirror each stored trial to TensorBoard, MLflow or Weights & Biases.

The Parquet store stays the source of truth. Mirroring happens in the driver, from the very rows a trial stores, right
after they are written: it needs no tracker on the workers of a cluster, and a tracker that fails (a full disk, a
server down, a missing package) costs a warning, never the trial. Each tracker gets one run per trial, named by its
trial id, with the trial's config as parameters (flattened, ``train.steps``), the learning curve (``val/loss`` ...
at each step) and the final rows (``final/test/accuracy`` ...) as metrics; a failed trial is a failed run whose error
is kept. Each tracker's own client writes its own format:

* ``tensorboard=DIR``: ``torch.utils.tensorboard.SummaryWriter`` in ``DIR/<trial_id>/`` (config as HParams and as
  text). A trial stored again (a failed one re-run) replaces its folder.
* ``mlflow=URI``: ``mlflow.MlflowClient`` on a tracking URI: a local folder or ``file:`` URI is MLflow's file store
  (which MLflow 3 keeps in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, set here unless the environment says
  otherwise); ``sqlite:///runs.db`` or ``http://host:5000`` work too. Experiment = the grid's name; a trial stored
  again replaces its earlier run.
* ``wandb=PROJECT``: ``wandb.init`` in offline mode unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads
  later); files under ``WANDB_DIR`` (default ``./wandb``); group = the grid's name.

TensorBoard comes with ``make install``; MLflow and W&B are the ``track`` extra (``pip install 'attnbench[track]'``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = {"tensorboard": "DIR", "mlflow": "URI", "wandb": "PROJECT"}
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
MLFLOW_PARAM_CHARS = 6000  # MLflow's limit on a parameter value


class TrackError(ValueError):
    """A ``--track`` value that cannot work; the message names it."""


@dataclass(frozen=True)
class Target:
    kind: str
    target: str


def parse(items: Sequence[str]) -> list[Target]:
    """``["tensorboard=runs/tb", ...]`` -> targets, checking that each tracker's client is installed."""
    targets = []
    for item in items:
        kind, sep, target = item.partition("=")
        kind, target = kind.strip().lower(), target.strip()
        if not sep or kind not in KINDS:
            kinds = ", ".join(f"{k}={v}" for k, v in KINDS.items())
            raise TrackError(f"--track {item!r}: expected one of {kinds}")
        if not target:
            raise TrackError(f"--track {kind}: no {KINDS[kind]} after '='")
        if importlib.util.find_spec(PACKAGES[kind]) is None:
            extra = " (make install)" if kind == "tensorboard" else " (pip install 'attnbench[track]')"
            raise TrackError(f"--track {kind}: the {PACKAGES[kind]} package is not installed{extra}")
        targets.append(Target(kind, target))
    return targets


@dataclass
class TrialRecord:
    """What a tracker run holds, taken from the rows a trial stored."""

    trial_id: str
    grid: str
    label: str
    ok: bool
    error: str | None
    params: dict[str, Any]  # flattened config
    curve: list[tuple[str, float, int]]  # (key, value, step)
    final: dict[str, float]
    steps: int


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"train.steps": 2000, ...}``; lists and None become JSON text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = json.dumps(value, sort_keys=True, default=str)
    return out


def record(trial, rows: Sequence[dict[str, Any]]) -> TrialRecord:
    """The tracker's view of a stored trial: its config and its rows split into curve and final metrics."""
    curve, final = [], {}
    for row in rows:
        if row.get("status") != "ok" or row.get("metric") is None:
            continue
        key = f"{row['split']}/{row['metric']}"
        if row.get("step") is None:
            final[f"final/{key}"] = float(row["value"])
        else:
            curve.append((key, float(row["value"]), int(row["step"])))
    first = rows[0] if rows else {}
    return TrialRecord(
        trial_id=trial.trial_id,
        grid=trial.grid,
        label=trial.label,
        ok=first.get("status") == "ok",
        error=first.get("error"),
        params=flatten(trial.config()),
        curve=sorted(curve, key=lambda point: point[2]),
        final=final,
        steps=int(first.get("steps") or trial.train["steps"]),
    )


def _tensorboard(target: str, rec: TrialRecord) -> None:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    folder = Path(target) / rec.trial_id
    shutil.rmtree(folder, ignore_errors=True)  # a trial stored again: one run per trial
    with SummaryWriter(log_dir=str(folder)) as writer:
        metrics = rec.final or {"final/status_ok": 0.0}
        values = {k: v for k, v in rec.params.items() if isinstance(v, bool | int | float | str)}
        for summary in hparams(values, metrics):
            writer.file_writer.add_summary(summary)
        writer.add_text("config", "```\n" + json.dumps(rec.params, indent=1, sort_keys=True) + "\n```")
        if rec.error:
            writer.add_text("error", rec.error)
        for key, value, step in rec.curve:
            writer.add_scalar(key, value, step)
        for key, value in metrics.items():
            writer.add_scalar(key, value, rec.steps)


def _mlflow(target: str, rec: TrialRecord) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    if "://" not in target or target.startswith("file:"):
        # MLflow keeps its file store in maintenance mode behind this opt-in; a folder is what works with no server
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=target)
    experiment = client.get_experiment_by_name(rec.grid)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(rec.grid)
    for old in client.search_runs([experiment_id], filter_string=f"tags.`attnbench.trial_id` = '{rec.trial_id}'"):
        client.delete_run(old.info.run_id)  # a trial stored again: one run per trial
    tags = {"attnbench.trial_id": rec.trial_id, "attnbench.label": rec.label}
    if rec.error:
        tags["attnbench.error"] = rec.error[:MLFLOW_PARAM_CHARS]
    run_id = client.create_run(experiment_id, run_name=rec.trial_id, tags=tags).info.run_id
    now = int(time.time() * 1000)
    params = [Param(k, str(v)[:MLFLOW_PARAM_CHARS]) for k, v in rec.params.items()]
    metrics = [Metric(k, v, now, step) for k, v, step in rec.curve]
    metrics += [Metric(k, v, now, rec.steps) for k, v in rec.final.items()]
    for start in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
        client.log_batch(run_id, params=params[start : start + 100])
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    client.set_tag(run_id, "attnbench.status", "ok" if rec.ok else "failed")
    client.set_terminated(run_id, "FINISHED" if rec.ok else "FAILED")


def _wandb(target: str, rec: TrialRecord) -> None:
    import wandb

    settings = wandb.Settings(silent=True, console="off")
    run = wandb.init(
        project=target,
        name=rec.trial_id,
        group=rec.grid,
        config=rec.params,
        mode=os.environ.get("WANDB_MODE", "offline"),
        dir=os.environ.get("WANDB_DIR"),
        settings=settings,
        reinit="create_new",
    )
    try:
        by_step: dict[int, dict[str, float]] = {}
        for key, value, step in rec.curve:
            by_step.setdefault(step, {})[key] = value
        for step in sorted(by_step):
            run.log(by_step[step], step=step)
        if rec.final:
            run.log(rec.final, step=max([rec.steps, *by_step]))
        if rec.error:
            run.summary["error"] = rec.error
    finally:
        run.finish(exit_code=0 if rec.ok else 1)


WRITERS: dict[str, Callable[[str, TrialRecord], None]] = {
    "tensorboard": _tensorboard,
    "mlflow": _mlflow,
    "wandb": _wandb,
}


class Mirror:
    """Called by the driver with each trial's stored rows; writes one run per target, warning on any failure."""

    def __init__(self, targets: Sequence[Target], warn: Callable[[str], None]):
        self.targets, self.warn = list(targets), warn

    def __call__(self, trial, rows: Sequence[dict[str, Any]]) -> None:
        if not self.targets:
            return
        try:
            rec = record(trial, rows)
        except Exception as exc:  # never lose a trial to its mirror
            self.warn(f"--track: trial {trial.trial_id} not mirrored ({type(exc).__name__}: {exc}); the store has it")
            return
        for target in self.targets:
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the clients' chatter
                    WRITERS[target.kind](target.target, rec)
            except Exception as exc:
                self.warn(
                    f"--track {target.kind}={target.target}: trial {trial.trial_id} not mirrored "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); the store has it"
                )

    def close(self) -> None:
        """Flush what the trackers' background processes still hold (wandb writes its log from a service)."""
        if any(target.kind == "wandb" for target in self.targets):
            try:
                import wandb

                wandb.teardown()
            except Exception as exc:
                self.warn(f"--track wandb: closing: {type(exc).__name__}: {exc}")
