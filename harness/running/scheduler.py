"""Run a grid's trials as Ray tasks and store each one the moment it finishes.

With no address an embedded Ray starts on this machine, bound to 127.0.0.1, without dashboard or usage stats; with
``--address`` (or ``RAY_ADDRESS``) the driver joins an existing cluster. Each trial is one Ray task with the grid's
resources. A trial that raises comes back as a ``failed`` result (no retry: the same config would fail again); a
trial whose worker process dies is retried by Ray up to ``max_retries`` times and then stored as failed. A trial that
stops making progress (``resources.stall_minutes``) or runs too long (``resources.timeout_minutes``) is cancelled
(``ray.cancel(force=True)`` kills its worker) and submitted again, within the same ``max_retries``; so is a
multi-worker trial that lost a worker. Every retry resumes from the trial's last checkpoint. Out-of-memory errors
are stored as "out of memory" with the trial's length, batch and plugin. Trials already stored as ``ok`` are skipped,
so an interrupted grid resumes where it stopped. One driver at a time runs on a store (``driver_lock``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from harness.provenance import code_version, loaded_code_version, versions
from harness.running.grid import Trial
from harness.running.multiworker import release_placement_group
from harness.running.placement import unplaceable
from harness.store import ResultStore, rows_for_trial

LOCAL_HOST = "127.0.0.1"
# Ray reads these once, when it is imported; the CLI imports this module first. Usage stats off; token
# authentication on (a client must ask for it to send the token in ~/.ray/auth_token to a cluster).
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("RAY_AUTH_MODE", "token")
SINGLE_MACHINE_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
POLL_SECONDS = 1.0  # how often the driver wakes to refresh the progress of running trials


@dataclass
class GridSummary:
    """What a run did: counts, and the ids of the trials it stored."""

    total: int
    skipped: int
    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def execute_trial(
    config: dict[str, Any], plugin_dirs: list[str], checkpoints: str | None = None, board=None, attempt: int = 0
) -> dict[str, Any]:
    """Body of the Ray task: run one trial, turning any exception into a failed result (never raises).

    ``checkpoints`` is the root under which the trial keeps (and resumes from) ``<trial_id>/``; ``board`` is the
    driver's ``ProgressBoard`` actor, told first that the attempt started; ``attempt`` counts the driver's
    resubmissions. A retried task (a dead worker, a cancelled attempt) resumes from the trial's latest checkpoint.
    An outcome with ``retry`` set failed in a way another attempt may not (a multi-worker trial lost a worker)."""
    import attentions
    from harness.running.faults import STARTING, out_of_memory_error, out_of_memory_kind
    from harness.running.grid import trial_id_of
    from harness.running.multiworker import WorkerLost, run_multiworker
    from harness.running.progress import reporter
    from harness.running.trainer import run_trial

    started = _now()
    outcome: dict[str, Any] = {"result": None, "error": None, "versions": versions(), "git_sha": loaded_code_version()}
    try:
        progress = reporter(board, trial_id_of(config), attempt) if board is not None else None
        if progress is not None:
            progress({"phase": STARTING, "step": None, "steps": config["train"]["steps"]})
        if config["resources"]["workers"] > 1:
            outcome["result"] = run_multiworker(config, plugin_dirs, checkpoints=checkpoints, progress=progress)
        else:
            for folder in plugin_dirs:
                attentions.load_plugin_dir(folder)
            outcome["result"] = asdict(run_trial(config, checkpoints=checkpoints, progress=progress))
    except Exception as exc:  # stored with the trial, the grid goes on
        tail = "".join(traceback.format_exception(exc)[-3:]).strip()
        outcome["error"] = f"{type(exc).__name__}: {exc}\n{tail}"
        kind = out_of_memory_kind(exc) or getattr(exc, "out_of_memory", None)
        if kind is not None:
            outcome["error"] = out_of_memory_error(config, kind, outcome["error"])
        elif isinstance(exc, WorkerLost):
            outcome["retry"] = True
    outcome["started_at"], outcome["finished_at"] = started, _now()
    return outcome


def failure_of(trial: Trial, exc: BaseException) -> str:
    """The stored error of a trial whose ``ray.get`` raised: its worker died (after Ray's retries), Ray's memory
    monitor killed it (out of memory), or it was cancelled."""
    from harness.running.faults import out_of_memory_error, out_of_memory_kind

    error = f"{type(exc).__name__}: {str(exc).strip()[:2000]}"
    kind = out_of_memory_kind(exc)
    return out_of_memory_error(trial.config(), kind, error) if kind else error


def prebuild_kernels(console: Console) -> None:
    """Build (or find) the project's CPU kernels once in the driver, before any trial, so that trials on this machine
    load a finished build instead of racing to compile it (``attentions._kernel_build``)."""
    from attentions import _fused_cpu

    if _fused_cpu.enabled():
        with console.status("CPU kernels: building or loading the cached build"):
            _fused_cpu.kernel()


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``) or start an embedded one; True if we started it."""
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        os.environ.pop(SINGLE_MACHINE_FLAG, None)
        ray_constants.ENABLE_RAY_CLUSTER = True
        ray.init(address=address, log_to_driver=False)
        return False
    # Ray maps a loopback node address to the machine's routable IP and listens on every interface unless it runs
    # in single-machine mode. Selecting that mode makes the embedded head and its workers bind 127.0.0.1 only: the
    # variable reaches Ray's processes, the constant this process (Ray may have been imported already).
    os.environ[SINGLE_MACHINE_FLAG] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    # address="local": always a new instance, never a stale cluster that `ray start` left in /tmp/ray.
    ray.init(
        address="local",
        include_dashboard=False,
        _node_ip_address=LOCAL_HOST,
        log_to_driver=False,
        configure_logging=False,
    )
    return True


def _task_options(resources: dict[str, Any], retries: int | None = None) -> dict[str, Any]:
    """Ray options of a trial's task (``retries``: what is left of ``max_retries``). A multi-worker trial's task only
    coordinates: its Ray Train workers hold the CPUs and GPUs, so it asks for none (asking would deadlock a machine
    with exactly workers * cpus cores)."""
    retries = resources["max_retries"] if retries is None else max(0, retries)
    if resources["workers"] > 1:
        return {"num_cpus": 0, "num_gpus": 0, "max_retries": retries}
    return {"num_cpus": resources["cpus"], "num_gpus": resources["gpus"], "max_retries": retries}


def _rows(trial: Trial, outcome: dict[str, Any], sha: str | None) -> list[dict[str, Any]]:
    result = outcome.get("result") or {}
    common = {
        "peak_memory_bytes": result.get("peak_memory_bytes"),
        "tokens_per_second": result.get("tokens_per_second"),
        "train_seconds": result.get("train_seconds"),
        "steps": result.get("steps"),
        "num_parameters": result.get("num_parameters"),
        "device": result.get("device"),
        "world_size": result.get("world_size"),
        "started_at": outcome.get("started_at"),
        "finished_at": outcome.get("finished_at") or _now(),
        "git_sha": outcome.get("git_sha") or sha,  # the code the worker loaded; the driver's HEAD if unknown
        "versions": json.dumps(outcome.get("versions") or versions(), sort_keys=True),
        "resumed_from_step": result.get("resumed_from_step"),
        "selected_step": result.get("selected_step"),
        "data": json.dumps(result["data"], sort_keys=True) if result.get("data") else None,
    }
    metrics = [tuple(m) for m in result.get("metrics", [])]
    return rows_for_trial(trial.trial_id, trial.config(), metrics=metrics, error=outcome.get("error"), common=common)


def _headline(outcome: dict[str, Any]) -> str:
    if outcome.get("error"):
        return outcome["error"].splitlines()[0][:120]
    result = outcome["result"]
    metrics = result["metrics"]
    resumed = f"(resumed from step {result['resumed_from_step']}) " if result.get("resumed_from_step") else ""
    shown = [
        f"{split}/{name}={value:.4g}"
        for split, name, value, step in metrics
        if step is None and split not in ("train", "eval", "val") and name != "loss"
    ]
    return resumed + " ".join(shown[:3])


def _progress_board(ray):
    """The progress actor, pinned (softly) to the driver's node so that losing a worker node does not take it along;
    trials that still hold a lost board's handle keep training, their reports simply go nowhere."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from harness.running.progress import ProgressBoard

    options: dict[str, Any] = {"num_cpus": 0, "max_restarts": -1}
    try:
        node = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
    except Exception:  # a Ray client driver is on no node of the cluster
        pass
    return ray.remote(**options)(ProgressBoard).remote()


def default_checkpoints(results: str | Path) -> str:
    """Where trials checkpoint unless ``--checkpoints`` says otherwise: ``<results>/checkpoints``."""
    return str(Path(results).resolve() / "checkpoints")


def run_grid(
    trials: list[Trial],
    store: ResultStore,
    *,
    address: str | None = None,
    max_concurrent: int | None = None,
    plugin_dirs: list[str] | None = None,
    console: Console | None = None,
    checkpoints: str | None = None,
    progress_every: float = 30.0,
    stall_after: float = 600.0,
    on_stored: Callable[[Trial, list[dict[str, Any]]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> GridSummary:
    """Run every trial not already stored as ok; write each to ``store`` as soon as it finishes.

    Trials checkpoint under ``checkpoints`` (default ``<store>/checkpoints``) and resume from there when they start
    again: after Ray retries a dead worker, after a cancelled attempt, and when a killed driver runs the grid again.
    A trial's checkpoints are removed once its result is stored, unless its ``train.keep_checkpoints`` is set.
    ``progress_every`` is the period of the plain progress lines when stderr is not a terminal; ``stall_after`` the
    silence that is warned of; ``clock`` (seconds) times ``stall_minutes`` and ``timeout_minutes``. The store is
    locked for this driver while trials run; another live driver's lock raises ``StoreBusy``. ``on_stored(trial,
    rows)`` is called after each trial's rows are written (``--track`` mirrors them); whatever it raises is a
    warning, never a lost trial.
    """
    import ray

    from harness.running.checkpoints import TrialCheckpoints
    from harness.running.driver_lock import DriverLock
    from harness.running.faults import Watchdog, gave_up
    from harness.running.progress import GridProgress

    console = console or Console(stderr=True)
    unique = list({trial.trial_id: trial for trial in trials}.values())
    finished = store.finished_ids()
    pending = [trial for trial in unique if trial.trial_id not in finished]
    summary = GridSummary(total=len(unique), skipped=len(unique) - len(pending))
    if summary.skipped:
        console.print(f"[dim]{summary.skipped} of {len(unique)} trials already stored; skipping them[/dim]")
    if not pending:
        return summary
    lock = DriverLock(store.root, pending[0].grid, warn=lambda m: console.print(f"[yellow]{m}", soft_wrap=True))
    lock.acquire()  # before Ray starts: a second driver refuses at once
    finished = store.finished_ids()  # what a driver that held the lock until now has stored meanwhile
    pending = [trial for trial in pending if trial.trial_id not in finished]
    summary.skipped = len(unique) - len(pending)
    if not pending:
        lock.release()
        return summary
    checkpoints = checkpoints or default_checkpoints(store.root)
    sha, dirs = code_version(), [str(Path(d).resolve()) for d in plugin_dirs or []]
    clock_started = time.perf_counter()
    errors: list[str] = []  # of this run's failed trials, for the end-of-run summary of shared causes
    started_ray = False
    try:
        if not (address or os.environ.get("RAY_ADDRESS") or "").startswith("ray://"):  # workers share this machine
            prebuild_kernels(console)
        started_ray = connect(address)
        for trial, message in unplaceable(pending, embedded=started_ray, warn=lambda m: console.print(f"[yellow]{m}")):
            rows = _rows(trial, {"error": f"{trial.label} {message}"}, sha)
            store.write_trial(trial.trial_id, rows)
            _stored(on_stored, trial, rows, console)
            summary.failed.append(trial.trial_id)
            errors.append(message)
            console.print(f"[red]failed[/red] {trial.label} {message}", highlight=False)
        pending = [trial for trial in pending if trial.trial_id not in summary.failed]
        remote = ray.remote(execute_trial)
        board = _progress_board(ray)
        watchdog = Watchdog(clock)
        cap = max_concurrent or len(pending) or 1
        queue: list[tuple[Trial, int]] = [(trial, 0) for trial in pending]
        in_flight: dict[Any, tuple[Trial, int]] = {}
        cancelled: dict[Any, str] = {}  # ref -> why the driver cancelled it
        with GridProgress(console, len(pending), plain_every=progress_every, stall_after=stall_after) as progress:
            while queue or in_flight:
                while queue and len(in_flight) < cap:
                    trial, attempt = queue.pop(0)
                    # Retries left for Ray (a dead worker): max_retries less the starts so far (each a try, the
                    # first included, so a resubmission counts as one of the retries).
                    left = trial.resources["max_retries"] - max(attempt, watchdog.starts(trial.trial_id))
                    options = _task_options(trial.resources, retries=left)
                    ref = remote.options(**options).remote(trial.config(), dirs, checkpoints, board, attempt)
                    in_flight[ref] = (trial, attempt)
                    watchdog.submitted(trial.trial_id, trial.resources, attempt)
                    if attempt == 0:
                        progress.submitted(trial.trial_id, trial.label)
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    trial, attempt = in_flight.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as exc:  # the worker died (after Ray's retries), or the driver cancelled it
                        outcome = {"error": failure_of(trial, exc)}
                        if ref in cancelled:
                            outcome = {"error": cancelled[ref], "retry": True, "cancelled": True}
                    cancelled.pop(ref, None)
                    if outcome.get("retry"):
                        starts = max(watchdog.starts(trial.trial_id), attempt + 1)
                        if starts <= trial.resources["max_retries"]:
                            queue.insert(0, (trial, attempt + 1))
                            what = "cancelled" if outcome.get("cancelled") else "failed"
                            why = escape(outcome["error"].splitlines()[0])
                            progress.print(
                                f"[yellow]{what}[/yellow] {trial.label}: {why}; retrying from its last checkpoint "
                                f"(retry {starts} of {trial.resources['max_retries']})"
                            )
                            continue
                        resumed = watchdog.resumed_from_step(trial.trial_id)
                        if outcome.get("cancelled"):
                            outcome["error"] = gave_up(outcome["error"], starts, resumed)
                        else:
                            outcome["error"] += f"\n({starts} attempts, no retries left: max_retries)"
                    watchdog.forget(trial.trial_id)
                    rows = _rows(trial, outcome, sha)
                    store.write_trial(trial.trial_id, rows)
                    _stored(on_stored, trial, rows, console)
                    if not outcome.get("error") and not trial.train.get("keep_checkpoints"):
                        TrialCheckpoints(checkpoints, trial.trial_id).remove()
                    (summary.failed if outcome.get("error") else summary.ok).append(trial.trial_id)
                    if outcome.get("error"):
                        errors.append(outcome["error"])
                    progress.finished(trial.trial_id, ok=not outcome.get("error"))
                    status = "[red]failed[/red]" if outcome.get("error") else "[green]ok[/green]"
                    progress.print(f"{status} {trial.label} {escape(_headline(outcome))}")
                try:
                    snapshot = ray.get(board.snapshot.remote(), timeout=30)
                except (ray.exceptions.RayError, TimeoutError):  # progress is a view: losing it never stops a grid
                    board = _progress_board(ray)
                    snapshot = {}
                progress.refresh(snapshot)
                for trial_id, reason in watchdog.observe(snapshot):
                    for ref, (trial, _) in in_flight.items():
                        if trial.trial_id == trial_id and ref not in cancelled:
                            cancelled[ref] = reason
                            ray.cancel(ref, force=True)
                            # a multi-worker trial's workers sit in a placement group that outlives the cancel
                            release_placement_group(snapshot.get(trial_id, {}).get("placement_group"))
                lock.refresh()
    finally:
        if started_ray:
            ray.shutdown()
        lock.release()
    summary.seconds = time.perf_counter() - clock_started
    _say_shared_causes(errors, console)
    return summary


def _stored(on_stored, trial: Trial, rows: list[dict[str, Any]], console: Console) -> None:
    """Hand a stored trial's rows to ``on_stored``; the trial is safe in the store whatever happens here."""
    if on_stored is None:
        return
    try:
        on_stored(trial, rows)
    except Exception as exc:
        console.print(f"[yellow]after storing {trial.trial_id}: {type(exc).__name__}: {exc}[/yellow]", highlight=False)


def _say_shared_causes(errors: list[str], console: Console) -> None:
    """One line per data set that several trials failed to load (``hf:ID: not found``), with the count and what to
    do, instead of leaving a user to read the same error N times."""
    from tasks._hub import failure_key

    if len(errors) < 2:
        return
    causes: dict[str, list[str]] = {}
    for error in errors:
        key = failure_key(error)
        if key is not None:
            causes.setdefault(key, []).append(str(error).splitlines()[0])
    for key, messages in causes.items():
        console.print(
            f"[red]{len(messages)} trials failed on {key}[/red]: {messages[0]}", highlight=False, soft_wrap=True
        )
