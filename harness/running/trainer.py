"""Train and evaluate one trial with a DeepSpeed engine.

Every trial, on one process or many, goes through ``deepspeed.initialize``: gloo on CPU, nccl and bf16 on GPU, the
grid's ``train.deepspeed`` section merged over the defaults here. Peak memory is measured on one training step
(forward, backward, optimizer) after the optimizer state exists, the same way for every plugin (harness.memory);
throughput is tokens per second over the other steps.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import torch

import tasks
from harness.memory import measure_peak
from harness.model import ModelConfig, Transformer
from harness.running.grid import deep_merge
from harness.running.metrics import evaluate


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclass
class TrialResult:
    """What a trial hands back to the driver (plain data, so it crosses Ray and process boundaries)."""

    metrics: list[tuple[str, str, float]]
    peak_memory_bytes: int
    tokens_per_second: float
    train_seconds: float
    steps: int
    device: str
    world_size: int
    num_parameters: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed(backend: str) -> None:
    """Join (or create, for a single process) the torch.distributed group DeepSpeed trains on."""
    import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    if "RANK" not in os.environ:  # one process on its own: a world of one on loopback
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def deepspeed_config(train: dict[str, Any], world_size: int, bf16: bool) -> dict[str, Any]:
    """Defaults for one trial; the grid's ``train.deepspeed`` wins on every key it sets."""
    if train["batch_size"] % world_size:
        raise ValueError(f"train.batch_size={train['batch_size']} is not divisible by {world_size} workers")
    config = {
        "train_batch_size": train["batch_size"],
        "train_micro_batch_size_per_gpu": train["batch_size"] // world_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": train["grad_clip"],
        "zero_optimization": {"stage": 0},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return deep_merge(config, train.get("deepspeed") or {})


def _schedule(train: dict[str, Any]):
    warmup, steps = train["warmup"], train["steps"]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def run_trial(config: dict[str, Any]) -> TrialResult:
    """Train and evaluate the trial described by ``config`` (``Trial.config()``); raises on failure."""
    import deepspeed

    use_cuda = config["resources"].get("gpus", 0) > 0 and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    init_distributed(backend)
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(config["seed"])

    task = tasks.build(config["task"], scale=config["scale"], seed=config["seed"], **config["task_params"])
    task.prepare()
    spec = task.spec
    model_cfg = ModelConfig(
        kind=spec.kind,
        vocab_size=spec.vocab_size,
        max_len=spec.max_len,
        num_classes=spec.num_classes,
        attention=config["attention"],
        attention_params=config["params"],
        **config["model"],
    )
    model = Transformer(model_cfg)
    num_parameters = model.num_parameters()
    train = config["train"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(train))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(train, world_size, bf16=use_cuda),
        dist_init_required=False,
    )
    micro = train["batch_size"] // world_size

    def step(index: int) -> tuple[float, int]:
        """One optimizer step; returns the loss and the real tokens of the global batch."""
        # Each rank takes its own slice of the global batch, so any world size sees the same global batch.
        batch = task.train_batch(train["batch_size"], index)
        tokens = sum(int(v.sum()) for k, v in batch.items() if k.endswith("mask"))
        batch = {k: v[rank * micro : (rank + 1) * micro].to(device) for k, v in batch.items()}
        loss = engine(batch)
        engine.backward(loss)
        engine.step()
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(f"non-finite training loss {value} at step {index}")
        return value, tokens

    memory_step = min(1, train["steps"] - 1)  # after step 0 the optimizer state exists
    timed_tokens, timed_seconds, last_loss = 0, 0.0, float("nan")
    started = time.perf_counter()
    for index in range(train["steps"]):
        if index == memory_step:
            (last_loss, _), peak = measure_peak(lambda i=index: step(i), device)
            continue
        tick = time.perf_counter()
        last_loss, tokens = step(index)
        timed_seconds += time.perf_counter() - tick
        timed_tokens += tokens
    train_seconds = time.perf_counter() - started
    trained = plugin_metrics(engine.module)  # plugin statistics of the last training step ...

    metrics = evaluate(engine.module, task, train["eval_batch_size"], device)
    metrics.append(("train", "loss", last_loss))
    metrics.extend(("train", name, value) for name, value in trained.items())
    # ... and of the last evaluation batch (eval mode: e.g. sbm's deterministic graph)
    metrics.extend(("eval", name, value) for name, value in plugin_metrics(engine.module).items())
    return TrialResult(
        metrics=metrics,
        peak_memory_bytes=int(peak),
        tokens_per_second=timed_tokens / timed_seconds if timed_seconds > 0 else float("nan"),
        train_seconds=train_seconds,
        steps=train["steps"],
        device=str(device.type),
        world_size=world_size,
        num_parameters=num_parameters,
    )


def plugin_metrics(model: torch.nn.Module) -> dict[str, float]:
    """Mean over layers of each statistic the plugins report (``Attention.trial_metrics``) for the last forward."""
    from attentions import Attention

    collected: dict[str, list[float]] = {}
    for module in model.modules():
        if isinstance(module, Attention):
            for name, value in module.trial_metrics().items():
                collected.setdefault(name, []).append(float(value))
    return {name: sum(values) / len(values) for name, values in collected.items()}
