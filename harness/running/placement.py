"""Can a trial ever be placed? Check each trial's resources against what the cluster can offer, before submitting.

Ray queues a task that asks for more than any node has and waits forever; its only message goes to its own log. So
the driver asks first. A trial needs ``workers`` bundles of ``{CPU: cpus, GPU: gpus}``: every bundle must fit one
node, and all of them the cluster together. On the embedded Ray the node is all there will ever be, and on a joined
cluster without an autoscaler so are its nodes: a trial that does not fit fails at once, with a message naming the
request and what is available. A cluster with an autoscaler may still grow, so such a trial is submitted and a
warning follows if it still cannot fit after a wait (``ATTNBENCH_PLACEMENT_WAIT`` seconds, default 300).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from harness.running.grid import Trial

WAIT_ENV, DEFAULT_WAIT_S = "ATTNBENCH_PLACEMENT_WAIT", 300.0
AUTOSCALER_ENV = "ATTNBENCH_AUTOSCALER"  # 1 or 0: overrides the detection on a joined cluster
KINDS = {"cpus": "CPU", "gpus": "GPU"}


def bundle(resources: dict[str, Any]) -> tuple[dict[str, float], int]:
    """One worker's Ray resources (only those asked for) and the number of workers."""
    need = {kind: float(resources[key]) for key, kind in KINDS.items() if resources.get(key)}
    return need, int(resources.get("workers", 1))


def _fits(node: dict[str, float], need: dict[str, float]) -> int:
    """How many bundles ``need`` one node can hold at once."""
    return min(math.floor(node.get(kind, 0.0) / amount + 1e-9) for kind, amount in need.items())


def _show(resources: dict[str, float]) -> str:
    return ", ".join(f"{kind} {value:g}" for kind, value in sorted(resources.items())) or "nothing"


def _problem(resources: dict[str, Any], nodes: Sequence[dict[str, float]]) -> str | None:
    need, workers = bundle(resources)
    if not need:
        return None
    if sum(_fits(node, need) for node in nodes) >= workers:  # identical bundles: counting per node is exact
        return None
    total = {kind: sum(node.get(kind, 0.0) for node in nodes) for kind in need}
    largest = {kind: max((node.get(kind, 0.0) for node in nodes), default=0.0) for kind in need}
    asked = f"{_show(need)}" + (f" per worker x {workers} workers" if workers > 1 else "")
    where = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}"
    return (
        f"cannot be placed: it asks for {asked} (resources: {json.dumps(resources, sort_keys=True)}), "
        f"but the cluster ({where}) offers at most {_show(largest)} on one node and {_show(total)} in all"
    )


def check_placement(trials: Sequence[Trial], nodes: Sequence[dict[str, float]]) -> list[tuple[Trial, str]]:
    """The trials that can never fit ``nodes`` (each node's total Ray resources), each with its message."""
    found = []
    for trial in trials:
        message = _problem(trial.resources, nodes)
        if message is not None:
            found.append((trial, message))
    return found


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of each live node of the connected Ray cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def autoscaling(status: dict[str, Any] | None) -> bool:
    """Whether Ray's autoscaling status (what ``ray status`` reads) comes from an autoscaler that can add nodes.

    Without an autoscaling config Ray's monitor still reports, through a read-only provider that names each node's
    type after the node (``node_<id>``); an autoscaler names them after its config's node types. No status at all
    (an autoscaler that does not publish one, or none yet) counts as one that may: the cautious side only warns."""
    if not status:
        return True
    mapping = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return not mapping or any(kind != f"node_{node}" for node, kind in mapping.items())


def has_autoscaler() -> bool:
    """Whether the joined cluster runs Ray's autoscaler, from the status its monitor publishes in the GCS."""
    if os.environ.get(AUTOSCALER_ENV) in ("0", "1"):
        return os.environ[AUTOSCALER_ENV] == "1"
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return autoscaling(json.loads(raw) if raw else None)
    except Exception:  # a Ray without that key or format: assume the cluster may grow, so only warn
        return True


def wait_seconds() -> float:
    return float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))


def unplaceable(
    trials: Sequence[Trial],
    *,
    embedded: bool,
    warn: Callable[[str], None],
    nodes: Callable[[], list[dict[str, float]]] = cluster_nodes,
    autoscaler: Callable[[], bool] = has_autoscaler,
    wait_s: float | None = None,
) -> list[tuple[Trial, str]]:
    """Trials that must fail now. With an autoscaler none do: after ``wait_s`` a background check calls ``warn``
    once for each trial that still cannot fit (the grid goes on; Ray keeps it queued)."""
    found = check_placement(trials, nodes())
    if not found or embedded or not autoscaler():
        return found
    wait_s = wait_seconds() if wait_s is None else wait_s

    def recheck() -> None:
        try:
            still = check_placement([trial for trial, _ in found], nodes())
        except Exception:  # the grid finished and Ray shut down before the wait ran out
            return
        for trial, message in still:
            warn(f"{trial.label} {message}; still waiting for the autoscaler after {wait_s:g}s")

    timer = threading.Timer(wait_s, recheck)
    timer.daemon = True
    timer.start()
    return []
