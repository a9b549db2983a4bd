"""Hung and out-of-memory trials: the watchdog's decisions on an injected clock, the wording of out-of-memory rows,
and (slow) a real grid where one plugin hangs and two run out of memory while the grid goes on."""

from __future__ import annotations

import io
import re
import textwrap
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

from harness.running.faults import Watchdog, gave_up, out_of_memory_kind
from harness.running.grid import NOT_IN_ID, load_trials
from harness.running.progress import ProgressBoard
from harness.running.scheduler import execute_trial, failure_of
from harness.store import ResultStore


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += minutes * 60


def grid_file(tmp_path: Path, attentions_yaml: str, resources: str, *, steps: int = 12, checkpoint_every: int = 2):
    path = tmp_path / "faults.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: faults
            tasks: [{{sort: {{train_size: 256, test_size: 16}}}}]
            attentions: {attentions_yaml}
            model: {{dropout: 0.0}}
            train: {{steps: {steps}, batch_size: 8, checkpoint_every: {checkpoint_every}}}
            resources: {resources}
            """
        )
    )
    return path


# -- the watchdog, on a clock the test moves -------------------------------------------------------------------------
def start(board: ProgressBoard, trial_id: str, attempt: int = 0) -> None:
    board.update(trial_id, {"phase": "starting", "step": None, "steps": 100, "attempt": attempt})


def step(board: ProgressBoard, trial_id: str, at: int, attempt: int = 0, resumed: int = 0) -> None:
    board.update(trial_id, {"step": at, "steps": 100, "attempt": attempt, "resumed_from_step": resumed})


def test_a_trial_whose_step_stops_moving_is_cancelled_once_with_the_step_and_the_silence():
    clock, board = ManualClock(), ProgressBoard()
    watchdog = Watchdog(clock)
    watchdog.submitted("t", {"stall_minutes": 30, "timeout_minutes": 0}, attempt=0)
    clock.advance(500)  # waiting for resources: no report, never a stall
    assert watchdog.observe(board.snapshot()) == []
    start(board, "t")
    clock.advance(45)  # loading data and building the model count against the timeout only
    assert watchdog.observe(board.snapshot()) == []
    for at in range(0, 12346, 1000):
        step(board, "t", at)
        clock.advance(10)
        assert watchdog.observe(board.snapshot()) == []
    step(board, "t", 12345)
    assert watchdog.observe(board.snapshot()) == []
    clock.advance(29.9)
    board.update("t", {"step": 12345, "steps": 100, "attempt": 0})  # a report without a new step is no progress
    assert watchdog.observe(board.snapshot()) == []
    clock.advance(0.2)
    assert watchdog.observe(board.snapshot()) == [("t", "no progress for 30 min at step 12,345 (stall_minutes)")]
    clock.advance(60)
    assert watchdog.observe(board.snapshot()) == [], "an attempt is cancelled once"


def test_the_timeout_counts_from_the_start_of_each_attempt_and_fractions_of_a_minute_work():
    clock, board = ManualClock(), ProgressBoard()
    watchdog = Watchdog(clock)
    watchdog.submitted("t", {"stall_minutes": 0, "timeout_minutes": 0.5}, attempt=0)
    clock.advance(10)  # queued for ten minutes: not running yet
    assert watchdog.observe(board.snapshot()) == []
    start(board, "t")
    watchdog.observe(board.snapshot())
    for at in range(5):
        clock.advance(0.09)
        step(board, "t", at)
        assert watchdog.observe(board.snapshot()) == []
    clock.advance(0.1)
    assert watchdog.observe(board.snapshot()) == [("t", "still running after 0.5 min at step 4 (timeout_minutes)")]
    assert watchdog.starts("t") == 1

    # The retry: a late report of the cancelled attempt is ignored; the new attempt gets a fresh clock.
    watchdog.submitted("t", {"stall_minutes": 0, "timeout_minutes": 0.5}, attempt=1)
    step(board, "t", 5, attempt=0)
    clock.advance(0.4)
    assert watchdog.observe(board.snapshot()) == []
    start(board, "t", attempt=1)
    assert watchdog.observe(board.snapshot()) == []
    step(board, "t", 4, attempt=1, resumed=4)
    clock.advance(0.45)
    assert watchdog.observe(board.snapshot()) == []
    assert watchdog.starts("t") == 2 and watchdog.resumed_from_step("t") == 4
    clock.advance(0.1)
    assert [reason for _, reason in watchdog.observe(board.snapshot())] == [
        "still running after 0.5 min at step 4 (timeout_minutes)"
    ]


def test_without_limits_nothing_is_ever_cancelled_and_the_limits_stay_out_of_the_trial_id(tmp_path):
    clock, board = ManualClock(), ProgressBoard()
    watchdog = Watchdog(clock)
    watchdog.submitted("t", {"stall_minutes": 0, "timeout_minutes": 0}, attempt=0)
    start(board, "t")
    step(board, "t", 3)
    watchdog.observe(board.snapshot())
    clock.advance(10**6)
    assert watchdog.observe(board.snapshot()) == []
    plain = load_trials(grid_file(tmp_path, "{vanilla: {}}", "{}"))[1][0]
    watched = load_trials(grid_file(tmp_path, "{vanilla: {}}", "{stall_minutes: 0.25, timeout_minutes: 90}"))[1][0]
    assert watched.resources["stall_minutes"] == 0.25 and plain.trial_id == watched.trial_id
    assert {"stall_minutes", "timeout_minutes"} <= set(NOT_IN_ID["resources"])


def test_a_start_report_hidden_by_a_later_step_report_still_counts():
    board = ProgressBoard()
    start(board, "t")
    step(board, "t", 0)
    assert board.snapshot()["t"]["starts"] == 1 and board.snapshot()["t"]["seq"] == 2


def test_the_final_error_names_the_reason_the_attempts_and_the_resume():
    message = gave_up("no progress for 30 min at step 12,345 (stall_minutes)", 3, 12000)
    assert message == (
        "cancelled: no progress for 30 min at step 12,345 (stall_minutes); 3 attempts, the last resumed from step "
        "12,000, no retries left (max_retries)"
    )


# -- out of memory --------------------------------------------------------------------------------------------------
def test_out_of_memory_errors_are_told_apart_from_other_errors():
    import ray.exceptions

    assert out_of_memory_kind(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")) == "GPU"
    assert out_of_memory_kind(torch.cuda.OutOfMemoryError("CUDA out of memory")) == "GPU"
    assert out_of_memory_kind(MemoryError()) == "host"
    try:
        torch.empty(1 << 62, dtype=torch.uint8)  # more than any address space: torch's CPU allocator refuses
    except RuntimeError as exc:
        assert out_of_memory_kind(exc) == "host"
    monitor = ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
    assert out_of_memory_kind(monitor) == "host"
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as outer:
        assert out_of_memory_kind(outer) == "GPU"
    assert out_of_memory_kind(RuntimeError("shape mismatch")) is None
    assert out_of_memory_kind(ValueError("out of memory? no: a bad value")) is None


def test_a_trial_killed_by_rays_memory_monitor_is_stored_as_out_of_memory_with_its_size(tmp_path):
    import ray.exceptions

    trial = load_trials(grid_file(tmp_path, "{local: {block_size: 4}}", "{}"))[1][0]
    monitor = ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
    error = failure_of(trial, monitor)
    assert error.startswith("out of memory (host) with length 16, batch 8, plugin local(block_size=4): ")
    assert error.endswith("OutOfMemoryError: Task was killed due to the node running low on memory.")
    assert failure_of(trial, RuntimeError("worker died")) == "RuntimeError: worker died"


OOM_PLUGINS = '''
import resource

import psutil
import torch
import torch.nn.functional as F

from attentions import Attention, register_attention


@register_attention("cuda_oom")
class CudaOutOfMemoryAttention(Attention):
    """Fails as the CUDA allocator does when a batch does not fit the GPU."""
    supports_causal = True
    def __init__(self, *, heads: int, head_dim: int, max_len: int, causal: bool = False):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)
    def forward(self, q, k, v, padding_mask=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")


@register_attention("capped")
class CappedAttention(Attention):
    """Caps its process's address space 256 MiB above what it uses, then allocates 1 GiB: past the cap."""
    supports_causal = True
    def __init__(self, *, heads: int, head_dim: int, max_len: int, causal: bool = False):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)
    def forward(self, q, k, v, padding_mask=None):
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (psutil.Process().memory_info().vms + (256 << 20), hard))
        try:
            torch.empty(1 << 30, dtype=torch.uint8)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
'''


@pytest.fixture
def plugins(tmp_path, register_plugins):
    """The test plugins, registered in this process too (on a copy of the registry, restored afterwards)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "oom.py").write_text(OOM_PLUGINS)
    (folder / "blocks.py").write_text(BLOCKS)
    return register_plugins(folder)


def test_a_trial_out_of_cuda_memory_is_stored_as_out_of_memory_with_length_batch_and_plugin(tmp_path, plugins):
    (cuda,) = load_trials(grid_file(tmp_path, "{cuda_oom: {}}", "{}"))[1]
    outcome = execute_trial(cuda.config(), [str(plugins)])
    assert outcome["result"] is None and "retry" not in outcome
    assert outcome["error"].startswith("out of memory (GPU) with length 16, batch 8, plugin cuda_oom: ")
    assert "OutOfMemoryError: CUDA out of memory. Tried to allocate 64.00 GiB" in outcome["error"]


def test_a_trial_that_allocates_past_its_memory_cap_is_stored_as_out_of_host_memory(tmp_path, plugins):
    (capped,) = load_trials(grid_file(tmp_path, "{capped: {}}", "{}"))[1]
    outcome = execute_trial(capped.config(), [str(plugins)])
    assert outcome["error"].startswith("out of memory (host) with length 16, batch 8, plugin capped: ")
    assert "DefaultCPUAllocator: can't allocate memory" in outcome["error"]
    torch.empty(1 << 30, dtype=torch.uint8)  # the cap is gone again


# -- a real grid -----------------------------------------------------------------------------------------------------
BLOCKS = '''
import threading

import torch.nn.functional as F

from attentions import Attention, register_attention


@register_attention("blocks")
class BlocksAttention(Attention):
    """Dense attention that blocks forever in its process's training forward number ``at``, as a hung collective
    would (each attempt is a new process, so a retry blocks again, ``at`` forwards after its checkpoint)."""
    supports_causal = True
    def __init__(self, *, heads: int, head_dim: int, max_len: int, causal: bool = False, at: int = 5):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)
        self.at, self.forwards = at, 0
    def forward(self, q, k, v, padding_mask=None):
        if self.training:
            self.forwards += 1
            if self.forwards == self.at:
                threading.Event().wait()
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
'''


def run_on_a_fast_clock(trials, tmp_path: Path, plugins: Path, **options):
    """Run ``trials`` with the test plugins on a driver clock where one minute passes in 5 real seconds; returns the
    summary, the stored rows by attention and the driver's log."""
    from harness.running.scheduler import run_grid

    out = io.StringIO()
    store = ResultStore(tmp_path / "results")
    summary = run_grid(
        trials,
        store,
        plugin_dirs=[str(plugins)],
        console=Console(file=out, width=250),
        clock=lambda: time.monotonic() * 12,
        **options,
    )
    return summary, store.read().set_index("attention"), out.getvalue()


@pytest.mark.slow
def test_a_hung_trial_is_cancelled_retried_from_its_checkpoint_then_failed_and_the_grid_goes_on(
    tmp_path, plugins, monkeypatch
):
    """One minute of the driver's clock passes in 5 real seconds: ``stall_minutes: 1`` is 5 s without a step."""

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    path = grid_file(
        tmp_path, "{blocks: {at: 5}, cuda_oom: {}, vanilla: {}}", "{max_retries: 1, stall_minutes: 1}", steps=12
    )
    started = time.monotonic()
    summary, frame, log = run_on_a_fast_clock(load_trials(path)[1], tmp_path, plugins)
    assert len(summary.ok) == 1 and len(summary.failed) == 2, log
    assert frame.loc["vanilla", "status"].unique().tolist() == ["ok"]
    assert frame.loc["cuda_oom", "error"].startswith("out of memory (GPU) with length 16, batch 8, plugin cuda_oom")
    error = frame.loc["blocks", "error"]
    # Attempt 1 checkpoints at steps 2 and 4 and hangs in its 5th training forward (step 5 of 12); attempt 2 resumes
    # at 4 and hangs in its own 5th forward (step 9). Steps are reported every few seconds, so the last one said is
    # between the resume and the hang.
    found = re.fullmatch(
        r"cancelled: no progress for 1 min at step (\d+) \(stall_minutes\); 2 attempts, the last resumed from step 4, "
        r"no retries left \(max_retries\)",
        error,
    )
    assert found and 4 <= int(found[1]) <= 8, error
    assert re.search(r"cancelled sort:blocks\(at=5\):seed=0: no progress for 1 min at step \d+ .*retry 1 of 1", log)
    assert time.monotonic() - started < 240


@pytest.mark.slow
@pytest.mark.timeout(600)  # a leaked worker would keep the next trial waiting for CPUs forever
def test_a_hung_two_worker_trial_is_cancelled_and_frees_its_workers_for_the_next_trial(tmp_path, plugins, monkeypatch):
    """Both workers of a 2-worker trial hang in step 5; cancelling the coordinating task must take its Ray Train
    workers down too. They hold both of this machine's CPUs, so the next 2-worker trial can only start (and the grid
    only end) if they are gone."""

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    hung = load_trials(grid_file(tmp_path, "{blocks: {at: 5}}", "{workers: 2, max_retries: 0, stall_minutes: 1}"))[1]
    # the next trial has no stall limit: on a busy machine its final evaluation may well take 5 s
    trials = hung + load_trials(grid_file(tmp_path, "{vanilla: {}}", "{workers: 2, max_retries: 0}"))[1]
    summary, frame, log = run_on_a_fast_clock(trials, tmp_path, plugins, max_concurrent=1)
    assert len(summary.ok) == 1 and len(summary.failed) == 1, log
    assert frame.loc["vanilla", "status"].unique().tolist() == ["ok"]
    assert (frame.loc["vanilla", "world_size"] == 2).all()
    assert frame.loc["blocks", "error"].startswith("cancelled: no progress for 1 min at step")


def test_a_multi_worker_failure_is_a_lost_worker_an_out_of_memory_error_or_the_trials_own():
    import ray.exceptions
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    from harness.running.multiworker import WorkerLost, _worker_failure

    class Failed(Exception):
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors")
            self.worker_failures = failures

    peer = RuntimeError("[gloo/transport/tcp/pair.cc:537] Connection closed by peer")
    dead = WorkerHealthCheckFailedError("worker health check failed", ray.exceptions.ActorDiedError())
    lost = _worker_failure(Failed({0: peer, 1: dead}))
    assert isinstance(lost, WorkerLost) and str(lost).startswith("worker 1 of 2 was lost: WorkerHealthCheckFailed")
    own = Failed({0: ValueError("bad batch"), 1: ValueError("bad batch")})
    assert _worker_failure(own) is own  # the training code's own error: not retried
    oom = _worker_failure(Failed({0: peer, 1: torch.OutOfMemoryError("CUDA out of memory")}))
    assert oom.out_of_memory == "GPU" and "worker 1: OutOfMemoryError: CUDA out of memory" in str(oom)
    killed = _worker_failure(Failed({1: ray.exceptions.OutOfMemoryError("killed by the memory monitor")}))
    assert killed.out_of_memory == "host"
