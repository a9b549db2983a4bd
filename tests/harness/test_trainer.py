"""One trial through DeepSpeed; peak memory measurement."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tasks
from harness.memory import measure_peak
from harness.running.grid import Trial
from harness.running.pending_losses import FLUSH_STEPS, NonFiniteLoss, PendingLosses
from harness.running.trainer import deepspeed_config, run_trial


def trial(attention: str, params: dict, steps: int = 40, **train) -> dict:
    spec = tasks.build("sort", scale="smoke").spec
    base = dict(
        steps=steps, batch_size=16, lr=2e-3, warmup=0, weight_decay=0.0, grad_clip=1.0, eval_batch_size=64, deepspeed={}
    )
    return Trial(
        grid="t",
        task="sort",
        task_params={"train_size": 512, "test_size": 32},
        scale="smoke",
        seed=0,
        attention=attention,
        params=params,
        model=dataclasses.asdict(spec.model),
        train=base | train,
        resources=dict(cpus=1, gpus=0, workers=1, max_retries=0),
    ).config()


def test_trial_trains_and_reports_everything():
    result = run_trial(trial("local", {"block_size": 4}, steps=60))
    metrics = result.final()
    assert {("test", "exact_match"), ("test", "edit_distance"), ("test_2x", "loss"), ("train", "loss")} <= set(metrics)
    assert 0 <= metrics[("test", "exact_match")] <= 1 and 0 <= metrics[("test", "edit_distance")] <= 1
    assert metrics[("test", "loss")] < 2.0  # uniform over 8 symbols is ln 8 = 2.08: it learned something
    assert result.peak_memory_bytes > 0 and result.tokens_per_second > 0
    assert result.device == "cpu" and result.world_size == 1 and result.num_parameters > 0


def test_same_seed_same_result():
    a, b = run_trial(trial("vanilla", {}, steps=10)), run_trial(trial("vanilla", {}, steps=10))
    assert a.metrics == b.metrics


def test_grid_deepspeed_section_wins():
    cfg = deepspeed_config(
        {"batch_size": 8, "grad_clip": 1.0, "deepspeed": {"gradient_clipping": 0.5, "zero_optimization": {"stage": 2}}},
        world_size=2,
        bf16=False,
    )
    assert cfg["gradient_clipping"] == 0.5 and cfg["zero_optimization"] == {"stage": 2}
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["bf16"] == {"enabled": False}
    with pytest.raises(ValueError, match="not divisible"):
        deepspeed_config({"batch_size": 5, "grad_clip": 1.0}, world_size=2, bf16=False)


def test_non_finite_loss_fails_the_trial():
    with pytest.raises(RuntimeError, match="non-finite"):
        run_trial(trial("vanilla", {}, steps=5, lr=1e30, grad_clip=0.0))


def test_losses_are_read_back_in_batches_not_once_a_step(monkeypatch):
    """The loop reads the device's losses once per FLUSH_STEPS steps (or evaluation), not after every step, and reads
    every step's loss exactly once."""
    drained: list[int] = []
    original = PendingLosses.drain

    def counting(self):
        values = original(self)
        drained.append(len(values))
        return values

    monkeypatch.setattr(PendingLosses, "drain", counting)
    steps = 2 * FLUSH_STEPS + 5
    run_trial(trial("vanilla", {}, steps=steps))
    assert sum(drained) == steps  # every step's loss is read exactly once ...
    assert len([n for n in drained if n]) <= 3  # ... in three reads: two full buffers and the tail
    assert max(drained) == FLUSH_STEPS


def test_pending_losses_name_the_first_non_finite_step():
    pending = PendingLosses()
    for step, value in enumerate([1.0, 2.0, float("nan"), float("inf")]):
        pending.add(step, torch.tensor(value))
    with pytest.raises(NonFiniteLoss, match="nan at step 2"):
        pending.drain()
    for step, value in enumerate([3.0, 1.5]):
        pending.add(10 + step, torch.tensor([value]))
    assert pending.drain() == [3.0, 1.5] and pending.drain() == []


def test_peak_memory_sees_a_planted_square_allocation():
    x = torch.randn(256, 64, requires_grad=True)

    def attention(extra: bool):
        scores = x @ x.T
        planted = scores * 2 if extra else None  # an extra L x L float32 buffer, alive through backward
        (scores.softmax(-1) @ x).sum().backward()
        return planted

    _, base = measure_peak(lambda: attention(False))
    _, planted = measure_peak(lambda: attention(True))
    assert planted - base >= 256 * 256 * 4


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (the CPU path is test_trial_trains_and_reports_everything)"
)
def test_gpu_trial_trains_on_cuda_in_bf16_over_nccl():
    config = trial("local", {"block_size": 4}, steps=20)
    config["resources"]["gpus"] = 1
    result = run_trial(config)
    assert result.device == "cuda" and torch.distributed.get_backend() == "nccl"
    assert result.peak_memory_bytes > 0
    assert deepspeed_config(config["train"], world_size=1, bf16=True)["bf16"] == {"enabled": True}


def test_train_compile_compiles_the_model_before_deepspeed_wraps_it(monkeypatch):
    import harness.running.trainer as trainer

    compiled = []
    monkeypatch.setattr(
        trainer, "compile_in_place", lambda model, mode=None: compiled.append((type(model).__name__, mode)) or model
    )
    run_trial(trial("local", {"block_size": 4}, steps=2))
    assert compiled == []
    run_trial(trial("local", {"block_size": 4}, steps=2, compile=True))
    assert compiled == [("Transformer", None)]
    run_trial(trial("local", {"block_size": 4}, steps=2, compile="reduce-overhead"))  # CUDA graphs on a GPU
    assert compiled[-1] == ("Transformer", "reduce-overhead")


def test_the_training_step_decides_padding_on_the_host_batch(monkeypatch):
    """The masks are judged on the CPU batch before it moves to the device, and the model's training forward then
    never reads a mask's values (on a GPU that read is a host sync in every step)."""
    import harness.model as model
    import harness.running.trainer as trainer

    judged, passed = [], []
    real_dense, real_forward = model.dense_masks, model.Transformer.forward

    def dense_masks(batch):
        judged.append({key: value.device.type for key, value in batch.items()})
        return real_dense(batch)

    def forward(self, batch, dense=None):
        passed.append(dense)
        return real_forward(self, batch, dense)

    def padding_or_none(mask):
        assert not torch.is_grad_enabled(), "a training forward read a mask's values"  # evaluation may
        return None if mask is None or bool(mask.all()) else mask

    monkeypatch.setattr(trainer, "dense_masks", dense_masks)
    monkeypatch.setattr(model.Transformer, "forward", forward)
    monkeypatch.setattr(model, "padding_or_none", padding_or_none)
    run_trial(trial("local", {"block_size": 4}, steps=3))
    assert len(judged) == 3 and all(set(devices.values()) == {"cpu"} for devices in judged)
    assert passed == [frozenset({"src_mask", "tgt_mask"})] * 3  # sort's sequences fill their length


def test_plugin_statistics_are_stored_for_training_and_evaluation():
    result = run_trial(trial("sbm", {"clusters": 2}, steps=4))
    fractions = {split: value for (split, name), value in result.final().items() if name == "edge_fraction"}
    assert set(fractions) == {"train", "eval"}
    assert all(0.0 < value <= 1.0 for value in fractions.values())


def test_deepspeed_initialises_without_building_its_shm_comm_op(tmp_path):
    """Every trial initialises DeepSpeed's torch backend; it must not compile ``deepspeed_shm_comm`` on the way."""
    import os
    import subprocess
    import sys

    probe = (
        "import deepspeed.comm.comm as comm\n"
        "from harness.running.trainer import init_distributed\n"
        "init_distributed('gloo')\n"
        "print('shm op:', comm.cdb.shm_comm_op)\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "shm op: None" in out.stdout
    assert not list(tmp_path.rglob("*shm_comm*")), "nothing is built in the extensions cache"
