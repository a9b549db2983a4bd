"""Multi-worker trials: one trial on ``workers`` processes through a Ray Train ``TorchTrainer``.

Ray Train starts the workers and their torch.distributed group (gloo on CPU, nccl on GPU); each worker then runs the
same ``run_trial`` as a one-process trial, so DeepSpeed (ZeRO stage from the grid) sees a world of ``workers`` ranks
and each rank trains on its slice of the same global batch. Rank 0 sends its result back through a Ray queue:
``Result.metrics`` is empty when no checkpoint is reported, so it is not used as the channel.

Ray Train itself never retries (``max_failures=0``): the driver owns retries. A trial whose worker process died or
stopped answering raises ``WorkerLost``, which the driver retries from the last checkpoint within ``max_retries``; an
exception raised by the training code fails the trial, as it does for one-process trials (tagged when it was an
out-of-memory error).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from typing import Any


class WorkerLost(RuntimeError):
    """A worker process of a multi-worker trial died or stopped answering (a lost node, a kill): another attempt,
    resumed from the last checkpoint, may well succeed."""


def _worker_failure(exc: Exception) -> Exception:
    """What a failed ``trainer.fit()`` means for the trial: ``WorkerLost`` when Ray reports a worker process itself
    failed (dead, or failing Ray Train's health check; its peers' collectives then fail too, which says nothing new),
    else the workers' own exception (``out_of_memory`` set when one ran out of memory)."""
    from ray.exceptions import RayError

    from harness.running.faults import out_of_memory_kind

    try:
        from ray.train.v2._internal.exceptions import RayTrainError
    except ImportError:  # Ray Train v1: its own errors are RayErrors
        RayTrainError = RayError  # noqa: N806

    failures = getattr(exc, "worker_failures", None) or {}  # rank -> the worker's own exception, or Ray's about it
    for rank, error in sorted(failures.items()):  # out of memory first: Ray's memory monitor kills are RayErrors too
        kind = out_of_memory_kind(error)
        if kind is not None:
            failed = RuntimeError(f"worker {rank}: {type(error).__name__}: {error}")
            failed.out_of_memory = kind
            return failed
    lost = {rank: error for rank, error in failures.items() if isinstance(error, (RayError, RayTrainError))}
    if lost:
        rank, error = sorted(lost.items())[0]
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:500]
        return WorkerLost(f"worker {rank} of {len(failures)} was lost: {type(error).__name__}: {first}")
    return exc


def _with_placement_group(progress):
    """Rank 0's progress reports, each naming the placement group that holds the trial's workers (hex id).

    A driver that cancels a hung multi-worker trial kills its coordinating task, but Ray Train's controller leaves the
    workers' placement group behind when it dies that way (its own cleaner needs the dashboard, which the embedded Ray
    does not run), so the workers' CPUs and GPUs would stay reserved for good. With the id in the last report, the
    driver removes the group, and with it the workers (``release_placement_group``)."""
    import ray

    group = ray.util.get_current_placement_group()
    if progress is None or group is None:
        return progress
    group_id = group.id.hex()
    return lambda info: progress({**info, "placement_group": group_id})


def release_placement_group(group_id: str | None) -> None:
    """Remove the placement group ``group_id`` (a hex id from a trial's progress report) and every actor in it; an
    unknown or already removed group is left alone."""
    if not group_id:
        return
    import ray
    from ray.util.placement_group import PlacementGroup

    try:
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id))))
    except Exception:  # noqa: BLE001 - already gone (the trial ended on its own meanwhile): nothing to free
        pass


def _train_loop(loop_config: dict[str, Any]) -> None:
    import torch.distributed as dist

    import attentions
    from harness.running.trainer import run_trial

    for folder in loop_config["plugin_dirs"]:
        attentions.load_plugin_dir(folder)
    progress = _with_placement_group(loop_config["progress"])
    result = run_trial(loop_config["trial"], checkpoints=loop_config["checkpoints"], progress=progress)
    if dist.get_rank() == 0:
        loop_config["results"].put(asdict(result))


def run_multiworker(
    config: dict[str, Any], plugin_dirs: list[str], *, checkpoints: str | None = None, progress=None
) -> dict[str, Any]:
    """Train one trial on ``config['resources']['workers']`` Ray Train workers; returns rank 0's result dict.

    Every rank saves and restores its part of the DeepSpeed checkpoint under ``checkpoints``, so a retried
    multi-worker trial resumes too (the folder must be reachable from every worker's node); rank 0 reports progress."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    resources = config["resources"]
    use_gpu = resources["gpus"] > 0
    per_worker = {"CPU": resources["cpus"]} | ({"GPU": resources["gpus"]} if use_gpu else {})
    results = Queue(maxsize=1, actor_options={"num_cpus": 0})
    try:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={
                "trial": config,
                "plugin_dirs": plugin_dirs,
                "results": results,
                "checkpoints": checkpoints,
                "progress": progress,
            },
            scaling_config=ScalingConfig(
                num_workers=resources["workers"], use_gpu=use_gpu, resources_per_worker=per_worker
            ),
            run_config=RunConfig(
                name=f"attnbench-{config['grid']}",
                storage_path=tempfile.gettempdir(),
                failure_config=FailureConfig(max_failures=0),  # the scheduler owns retries
            ),
        )
        try:
            trainer.fit()
        except Exception as exc:  # noqa: BLE001 - Ray Train's errors: a lost worker, or one that raised
            failure = _worker_failure(exc)
            if failure is exc:
                raise
            raise failure from exc
        if results.empty():
            raise RuntimeError("multi-worker trial finished without a result from rank 0")
        return results.get(timeout=30)
    finally:
        results.shutdown()
