"""Placement checks: a trial that no node (or the whole cluster) can ever hold fails at once, naming what it asked for
and what there is; with an autoscaler it only warns, after a wait. One real embedded-Ray run through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pandas as pd
import pytest

from harness.running.grid import Trial
from harness.running.placement import autoscaling, check_placement, has_autoscaler, unplaceable

TWO_CPUS = [{"CPU": 2.0, "memory": 8e9}]
CLUSTER = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 4.0}]


def trial(cpus: float = 1, gpus: float = 0, workers: int = 1, seed: int = 0) -> Trial:
    return Trial(
        grid="g",
        task="sort",
        task_params={},
        scale="smoke",
        seed=seed,
        attention="vanilla",
        params={},
        model={},
        train={},
        resources={"cpus": cpus, "gpus": gpus, "workers": workers, "max_retries": 2},
    )


@pytest.mark.parametrize(
    "resources,nodes",
    [
        ({"cpus": 1}, TWO_CPUS),
        ({"cpus": 2}, TWO_CPUS),
        ({"cpus": 8, "gpus": 1}, CLUSTER),
        ({"cpus": 4, "gpus": 1, "workers": 2}, CLUSTER),  # one worker on each GPU node
        ({"cpus": 4, "workers": 5}, CLUSTER),  # 20 CPUs of 20, spread
        ({"cpus": 0.5, "workers": 4}, TWO_CPUS),  # fractions: four halves on two CPUs
    ],
)
def test_trials_that_fit_somewhere_pass(resources, nodes):
    assert check_placement([trial(**resources)], nodes) == []


@pytest.mark.parametrize(
    "resources,nodes,asked,offered",
    [
        ({"cpus": 64}, TWO_CPUS, "asks for CPU 64", "at most CPU 2 on one node and CPU 2 in all"),
        ({"cpus": 1, "gpus": 1}, TWO_CPUS, "asks for CPU 1, GPU 1", "at most CPU 2, GPU 0 on one node"),
        ({"cpus": 9}, CLUSTER, "asks for CPU 9", "(3 nodes) offers at most CPU 8 on one node and CPU 20 in all"),
        ({"cpus": 1, "gpus": 1, "workers": 3}, CLUSTER, "GPU 1 per worker x 3 workers", "GPU 2 in all"),
        ({"cpus": 2, "gpus": 2}, CLUSTER, "GPU 2", "at most CPU 8, GPU 1 on one node"),
        ({"cpus": 5, "workers": 2}, [{"CPU": 8.0}, {"CPU": 2.0}], "CPU 5 per worker x 2", "CPU 10 in all"),  # packing
    ],
)
def test_trials_that_can_never_fit_name_the_request_and_what_is_available(resources, nodes, asked, offered):
    ((got, message),) = check_placement([trial(**resources), trial(cpus=0.5)], nodes)
    assert got.resources["cpus"] == resources["cpus"]
    assert message.startswith("cannot be placed") and asked in message and offered in message, message


def test_without_an_autoscaler_they_fail_now_and_with_one_only_a_late_warning():
    trials = [trial(cpus=64), trial(cpus=1, seed=1)]
    nodes = lambda: TWO_CPUS  # noqa: E731
    embedded = unplaceable(trials, embedded=True, warn=pytest.fail, nodes=nodes, autoscaler=lambda: True)
    assert [t.resources["cpus"] for t, _ in embedded] == [64]
    fixed = unplaceable(trials, embedded=False, warn=pytest.fail, nodes=nodes, autoscaler=lambda: False)
    assert [t.resources["cpus"] for t, _ in fixed] == [64]

    warned, done = [], threading.Event()
    autoscaled = unplaceable(
        trials,
        embedded=False,
        warn=lambda m: (warned.append(m), done.set()),
        nodes=nodes,
        autoscaler=lambda: True,
        wait_s=0.2,
    )
    assert autoscaled == [] and warned == []  # submitted: the cluster may still grow
    assert done.wait(5)
    assert len(warned) == 1 and "asks for CPU 64" in warned[0] and "after 0.2s" in warned[0]

    grown, quiet = [], threading.Event()
    sizes = iter([TWO_CPUS, [{"CPU": 64.0}]])  # the autoscaler added a big node during the wait
    unplaceable(
        trials, embedded=False, warn=grown.append, nodes=lambda: next(sizes), autoscaler=lambda: True, wait_s=0.1
    )
    quiet.wait(0.5)
    assert grown == []


def test_autoscaler_detection_from_rays_status():
    readonly = {"autoscaler_report": {"node_type_mapping": {"17c1": "node_17c1", "9a0e": "node_9a0e"}}}
    assert not autoscaling(readonly)  # `ray start` nodes, no autoscaling config: fixed
    configured = {"autoscaler_report": {"node_type_mapping": {"17c1": "ray.head.default", "9a0e": "cpu_worker"}}}
    assert autoscaling(configured)
    assert autoscaling(None)  # nothing published: may grow, so only a warning


@pytest.mark.slow
def test_a_real_local_ray_has_no_autoscaler():
    import ray
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    from harness.running.scheduler import connect

    started = connect(None)
    try:
        deadline, status = time.time() + 30, {}
        while not (status.get("autoscaler_report") or {}).get("node_type_mapping") and time.time() < deadline:
            time.sleep(0.5)  # the monitor publishes its first full status a few seconds after start
            status = json.loads(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) or b"{}")
        assert not autoscaling(status), status
        assert has_autoscaler() is False
    finally:
        if started:
            ray.shutdown()


@pytest.mark.slow
def test_embedded_ray_fails_an_impossible_trial_fast_and_stores_why(tmp_path):
    grid = tmp_path / "huge.yaml"
    grid.write_text(
        textwrap.dedent(
            """
            name: huge
            tasks: [{sort: {train_size: 200, test_size: 16}}]
            scale: smoke
            attentions: {vanilla: {}}
            train: {steps: 5, batch_size: 8}
            resources: {cpus: 64}
            """
        )
    )
    results = tmp_path / "results"
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(grid), "--results", str(results)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    seconds = time.perf_counter() - started
    assert run.returncode == 1, run.stderr
    assert seconds < 90, f"took {seconds:.0f}s: the trial was queued instead of failing"
    said = " ".join(run.stderr.split())
    assert "cannot be placed: it asks for CPU 64" in said and "offers at most CPU" in said
    frame = pd.read_parquet(results)
    assert len(frame) == 1 and frame["status"].item() == "failed"
    assert "asks for CPU 64" in frame["error"].item() and "on one node" in frame["error"].item()
    assert "0 ok, 1 failed" in run.stdout
