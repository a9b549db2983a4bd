"""Cluster scale: a real `ray start` head and second node, `ray job submit`, multi-worker trials, faults, safety."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import psutil
import pytest

from harness.running.grid import load_trials
from harness.running.scheduler import connect, run_grid
from harness.store import ResultStore

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def cluster_env() -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # set by an embedded head; a multi-node cluster refuses it
    env.pop("RAY_ADDRESS", None)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def grid(tmp_path: Path, name: str, attentions: str, *, seeds="[0]", steps=20, resources="{}", train="") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: {name}
            tasks: [{{sort: {{train_size: 256, test_size: 16}}}}]
            seeds: {seeds}
            attentions: {attentions}
            train: {{steps: {steps}, batch_size: 8{train}}}
            resources: {resources}
            """
        )
    )
    return path


@contextmanager
def ray_node(*args: str, log: Path):
    """`ray start ... --block` in its own session, so killing the session kills the node and its workers."""
    # Free ports for the per-node agents: their fixed defaults may still be held by a Ray that another test killed.
    agent_ports = [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]
    with open(log, "w") as out:
        node = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", *agent_ports, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cluster_env(),
            start_new_session=True,
        )
    try:
        yield node
    finally:
        kill_session(node)


def kill_session(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def alive_nodes(address: str) -> int:
    code = (
        f"import ray; ray.init(address={address!r}, log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cluster_env(), timeout=120)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


def wait_for_nodes(address: str, count: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if alive_nodes(address) >= count:
            return
        time.sleep(1)
    raise AssertionError(f"cluster at {address} never reached {count} alive nodes")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A real head: `ray start --head` on 127.0.0.1 with one CPU and the job server (dashboard) on loopback."""
    port, dashboard = free_port(), free_port()
    log = tmp_path_factory.mktemp("head") / "head.log"
    args = [
        "--head",
        f"--port={port}",
        "--num-cpus=1",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
    ]
    with ray_node(*args, log=log):
        address = f"127.0.0.1:{port}"
        wait_for_nodes(address, 1)
        yield {"address": address, "dashboard": f"http://127.0.0.1:{dashboard}"}


def test_ray_job_submit_runs_a_grid_on_the_cluster(head, tmp_path):
    results = tmp_path / "results"
    path = grid(tmp_path, "jobs", "{vanilla: {}, local: {block_size: 4}}")
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        head["dashboard"],
        "--",
        sys.executable,
        "-m",
        "harness.cli",
        "run",
        str(path),
        "--results",
        str(results),
    ]
    deadline = time.time() + 180
    while True:  # the head's job agent comes up a little after the node itself
        job = subprocess.run(command, capture_output=True, text=True, env=cluster_env(), timeout=300)
        if "No available agent" not in job.stderr + job.stdout or time.time() > deadline:
            break
        time.sleep(2)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    frame = pd.read_parquet(results)
    assert frame["trial_id"].nunique() == 2 and (frame["status"] == "ok").all()


def test_grid_survives_losing_a_node_mid_grid(head, tmp_path):
    with ray_node(f"--address={head['address']}", "--num-cpus=1", log=tmp_path / "node2.log") as node2:
        wait_for_nodes(head["address"], 2)
        results = tmp_path / "results"
        path = grid(
            tmp_path,
            "nodeloss",
            "{vanilla: {}, local: {block_size: 4}}",
            seeds="[0, 1, 2]",
            steps=150,
            resources="{cpus: 1, max_retries: 3}",
        )
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.cli",
                "run",
                str(path),
                "--address",
                head["address"],
                "--results",
                str(results),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=cluster_env(),
        )
        # Kill the second node while it is running a trial.
        deadline, running_there = time.time() + 180, False
        while time.time() < deadline and not running_there:
            procs = psutil.Process(node2.pid).children(recursive=True)
            running_there = any("execute_trial" in " ".join(p.cmdline()) for p in procs if p.is_running())
            time.sleep(0.2)
        assert running_there, "no trial was ever scheduled on the second node"
        kill_session(node2)
        output, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, output[-4000:]
    frame = pd.read_parquet(results)
    assert frame["trial_id"].nunique() == 6 and (frame["status"] == "ok").all(), output[-4000:]
    assert (
        not frame.groupby("trial_id")
        .apply(lambda g: g[["split", "metric"]].duplicated().any(), include_groups=False)
        .any()
    )


def test_embedded_head_binds_loopback_only_with_token_auth(monkeypatch):
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")  # restored afterwards; connect() overrides it
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. this module's `ray start` head
    assert connect(None) is True
    try:
        assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
        assert is_token_auth_enabled()
        ray_pids = {p.pid for p in psutil.Process().children(recursive=True)} - before
        listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in ray_pids]
        assert listening, "expected Ray's servers to be listening"
        assert {c.laddr.ip for c in listening} <= LOOPBACK, {c.laddr for c in listening}
        assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())
    finally:
        ray.shutdown()


def test_two_worker_trial_matches_one_worker_with_the_same_global_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    one = grid(tmp_path, "w1", "{local: {block_size: 4}}", steps=40, resources="{workers: 1}")
    two = grid(
        tmp_path,
        "w2",
        "{local: {block_size: 4}}",
        steps=40,
        resources="{workers: 2}",
        train=", deepspeed: {zero_optimization: {stage: 2}}",
    )
    trials = load_trials(one)[1] + load_trials(two)[1]
    store = ResultStore(tmp_path / "results")
    summary = run_grid(trials, store)
    assert len(summary.ok) == 2, store.read()["error"].dropna().tolist()
    frame = store.read()
    loss = frame[(frame.split == "test") & (frame.metric == "loss")].set_index("grid")["value"]
    sizes = frame.groupby("grid")["world_size"].first()
    assert sizes["w1"] == 1 and sizes["w2"] == 2
    # Same seed, same global batch, gradients averaged over ranks (ZeRO 2): the same model up to float rounding.
    assert loss["w2"] == pytest.approx(loss["w1"], rel=1e-3)


DYING = '''
import os
from pathlib import Path
from attentions import Attention, register_attention

@register_attention("dying")
class DyingAttention(Attention):
    """Kills its own worker process, as a segfault or the kernel's OOM killer would."""
    def __init__(self, *, heads: int, head_dim: int, max_len: int, causal: bool = False):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)
    def forward(self, q, k, v, padding_mask=None):
        with open(os.environ["ATTNBENCH_TEST_ATTEMPTS"], "a") as log:
            log.write("attempt\\n")
        os._exit(3)

@register_attention("oom")
class OutOfMemoryAttention(Attention):
    """Raises the allocator's out-of-memory error."""
    def __init__(self, *, heads: int, head_dim: int, max_len: int, causal: bool = False):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)
    def forward(self, q, k, v, padding_mask=None):
        raise MemoryError("cannot allocate 64 GiB for the attention matrix")
'''


def test_dead_workers_are_retried_then_stored_as_failed_and_the_grid_goes_on(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "faulty.py").write_text(DYING)
    attempts = tmp_path / "attempts.log"
    path = grid(tmp_path, "faults", "{dying: {}, oom: {}, vanilla: {}}", resources="{max_retries: 1}")
    env = {**cluster_env(), "ATTNBENCH_TEST_ATTEMPTS": str(attempts)}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "run",
            str(path),
            "--results",
            str(tmp_path / "r"),
            "--plugins",
            str(plugins),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 1, run.stderr[-3000:]
    frame = pd.read_parquet(tmp_path / "r").set_index("attention")
    assert frame.loc["vanilla", "status"].unique().tolist() == ["ok"]
    assert frame.loc["oom", "status"] == "failed" and "MemoryError: cannot allocate" in frame.loc["oom", "error"]
    assert frame.loc["dying", "status"] == "failed" and "died" in frame.loc["dying", "error"].lower()
    assert attempts.read_text().count("attempt") == 2  # the first try and max_retries = 1 retry


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available() or __import__("torch").cuda.device_count() < 2,
    reason="needs 2 GPUs (the CPU path is test_two_worker_trial_matches_one_worker_with_the_same_global_batch)",
)
def test_two_gpu_workers_train_one_trial(tmp_path):
    path = grid(tmp_path, "gpu2", "{local: {block_size: 4}}", steps=20, resources="{workers: 2, gpus: 1}")
    store = ResultStore(tmp_path / "results")
    summary = run_grid(load_trials(path)[1], store)
    assert len(summary.ok) == 1
    frame = store.read()
    assert (frame["device"] == "cuda").all() and (frame["world_size"] == 2).all()


def test_a_two_worker_trial_killed_after_a_checkpoint_resumes_and_ends_as_an_uninterrupted_one(
    tmp_path, monkeypatch, dying_plugins
):
    """Rank 1 dies in step 7, past the checkpoint at step 4: the driver retries the trial, which resumes there."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    marker = tmp_path / "died.marker"
    monkeypatch.setenv("ATTNBENCH_TEST_MARKER", str(marker))
    monkeypatch.setenv("ATTNBENCH_TEST_DIE_AT", "7")
    monkeypatch.setenv("ATTNBENCH_TEST_DIE_RANK", "1")
    plugins = dying_plugins
    path = grid(
        tmp_path,
        "w2resume",
        "{dies_once: {}}",
        steps=10,
        resources="{workers: 2, max_retries: 1}",
        train=", checkpoint_every: 4, eval_every: 5",
    )
    trials = load_trials(path)[1]
    killed = ResultStore(tmp_path / "killed")
    summary = run_grid(trials, killed, plugin_dirs=[str(plugins)])
    assert marker.exists(), "rank 1 should have died once"
    assert len(summary.ok) == 1, killed.read()["error"].dropna().tolist()
    resumed = killed.read()
    assert (resumed["resumed_from_step"] == 4).all() and (resumed["world_size"] == 2).all()

    reference = ResultStore(tmp_path / "reference")  # the marker exists now: nothing dies
    assert len(run_grid(trials, reference, plugin_dirs=[str(plugins)]).ok) == 1
    expected = reference.read()
    assert (expected["resumed_from_step"] == 0).all()

    def values(frame):
        rows = frame[frame["split"] != "eval"]
        return {(r.split, r.metric, None if pd.isna(r.step) else int(r.step)): r.value for r in rows.itertuples()}

    assert values(resumed) == values(expected)
