"""Train and evaluate one trial with a DeepSpeed engine.

Every trial, on one process or many, goes through ``deepspeed.initialize``: gloo on CPU, nccl and bf16 on GPU, the
grid's ``train.deepspeed`` section merged over the defaults here. Peak memory is measured on one training step
(forward, backward, optimizer) after the optimizer state exists, the same way for every plugin (harness.memory);
throughput is tokens per second over the other steps.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

import tasks
from harness.memory import measure_peak
from harness.model import ModelConfig, Transformer, compile_in_place, compile_mode, dense_masks
from harness.running.checkpoints import TrialCheckpoints, rng_state, set_rng_state
from harness.running.grid import deep_merge
from harness.running.metrics import evaluate, headline, improves
from harness.running.pending_losses import PendingLosses


@dataclass
class TrialResult:
    """What a trial hands back to the driver (plain data, so it crosses Ray and process boundaries).

    ``metrics`` rows are ``(split, metric, value, step)``: ``step`` is None on final rows and the training step on the
    rows of the learning curve (``val`` metrics and the smoothed ``train`` loss every ``train.eval_every`` steps).
    """

    metrics: list[tuple[str, str, float, int | None]]
    peak_memory_bytes: int
    tokens_per_second: float
    train_seconds: float
    steps: int
    device: str
    world_size: int
    num_parameters: int
    resumed_from_step: int = 0
    selected_step: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def final(self) -> dict[tuple[str, str], float]:
        """{(split, metric): value} of the final rows (the learning curve left out)."""
        return {(split, name): value for split, name, value, step in self.metrics if step is None}


@dataclass
class TrainingState:
    """Everything the loop carries from step to step besides the engine; saved in every checkpoint."""

    step: int = 0
    smoothed: float = 0.0  # exponential moving average of the training loss (debiased when read)
    curve: list[tuple[str, str, float, int]] = field(default_factory=list)
    best_value: tuple[float, float] | None = None  # (headline metric, loss) on val
    best_step: int | None = None
    best_tag: str | None = None
    peak: int | None = None
    timed_tokens: int = 0
    timed_seconds: float = 0.0
    train_seconds: float = 0.0

    def smooth(self, loss: float) -> None:
        self.smoothed = SMOOTHING * self.smoothed + (1 - SMOOTHING) * loss

    @property
    def smoothed_loss(self) -> float:
        return self.smoothed / (1 - SMOOTHING**self.step) if self.step else float("nan")


SMOOTHING = 0.98  # the training loss is reported as an EMA over about 50 steps, not as the last batch's loss
PROGRESS_SECONDS = 2.0  # how often a running trial tells the driver where it is


SHM_COMM_OP = "deepspeed_shm_comm"  # DeepSpeed's ShareMemCommBuilder.NAME


def skip_shm_comm_build() -> None:
    """Stop DeepSpeed from compiling its CPU shared-memory all-reduce in every trial.

    DeepSpeed's torch backend builds ``deepspeed_shm_comm`` (a C++ op, JIT-compiled into the torch extensions cache
    under torch's owner-less ``lock`` file) whenever the op is listed as compatible in ``deepspeed.ops.
    __compatible_ops__``. The op serves only ``inference_all_reduce`` (tensor-parallel inference), which training
    never calls; without it that call falls back to ``torch.distributed.all_reduce``. Marking it incompatible skips a
    35-90 s build on a fresh cache and the stale lock a worker killed during that build would leave behind."""
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible[SHM_COMM_OP] = False


def init_distributed(backend: str) -> None:
    """Join (or create, for a single process) the torch.distributed group DeepSpeed trains on.

    A process on its own gets a world of one over an in-memory store: no TCP port to pick, so nothing can collide
    with another trial or program on the machine. Multi-worker trials arrive with RANK set by Ray Train."""
    import deepspeed

    skip_shm_comm_build()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_backend() == backend or torch.distributed.get_world_size() > 1:
            return
        torch.distributed.destroy_process_group()  # a world of one made for another device: remake it
    if "RANK" not in os.environ or os.environ.get("WORLD_SIZE") == "1":
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
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


Progress = Callable[[dict[str, Any]], None]


def run_trial(
    config: dict[str, Any], *, checkpoints: str | None = None, progress: Progress | None = None
) -> TrialResult:
    """Train and evaluate the trial described by ``config`` (``Trial.config()``); raises on failure.

    ``checkpoints`` is the root (folder or pyarrow URI) under which this trial keeps ``<trial_id>/``: the trial
    resumes from its latest checkpoint there if one exists. Without it, checkpoints (``select: best`` needs one) go
    to a temporary folder that dies with the trial. ``progress`` receives a small dict every few seconds.
    """
    import deepspeed

    from harness.running.grid import trial_id_of

    use_cuda = config["resources"].get("gpus", 0) > 0 and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    init_distributed(backend)
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    else:
        # The trial's CPUs are its intra-op threads wherever it runs (a Ray worker, or run_trial in a notebook), so a
        # re-run reduces in the same order and gets the same bits.
        torch.set_num_threads(max(1, int(config["resources"].get("cpus", 1))))
    torch.manual_seed(config["seed"])

    task = tasks.build(config["task"], scale=config["scale"], seed=config["seed"], **config["task_params"])
    task.prepare()
    spec = task.spec
    model_cfg = ModelConfig(
        kind=spec.kind,
        vocab_size=spec.vocab_size,
        max_len=spec.max_len,
        num_classes=spec.num_classes,
        towers=spec.towers,
        attention=config["attention"],
        attention_params=config["params"],
        **config["model"],
    )
    model = Transformer(model_cfg)
    num_parameters = model.num_parameters()
    train = config["train"]
    if train.get("compile"):
        compile_in_place(model, compile_mode(train["compile"]))
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
    steps, eval_every, checkpoint_every = train["steps"], train.get("eval_every", 0), train.get("checkpoint_every", 0)
    select, metric = train.get("select", "last"), headline(spec.metrics)

    scratch = None if checkpoints else tempfile.TemporaryDirectory(prefix="attnbench-trial-")
    store = TrialCheckpoints(checkpoints or scratch.name, trial_id_of(config))
    state = TrainingState()
    restored = store.restore_latest(engine)
    if restored is not None:
        state = TrainingState(**restored["training_state"])
        set_rng_state(restored["rng"])
        store.drop_best_except(state.best_tag)
    resumed_from_step = state.step

    def step(index: int) -> tuple[torch.Tensor, int]:
        """One optimizer step; returns the loss (on the device, unread) and the real tokens of the global batch."""
        # Each rank takes its own slice of the global batch, so any world size sees the same global batch.
        batch = task.train_batch(train["batch_size"], index)
        tokens = sum(int(v.sum()) for k, v in batch.items() if k.endswith("mask"))
        batch = {k: v[rank * micro : (rank + 1) * micro] for k, v in batch.items()}
        dense = dense_masks(batch)  # on the host batch: the step reads no mask back from the device
        loss = engine({k: v.to(device) for k, v in batch.items()}, dense=dense)
        engine.backward(loss)
        engine.step()
        return loss, tokens

    pending = PendingLosses()

    def read_losses() -> None:
        """Fold the parked losses into the smoothed loss (the one host sync of the training loop)."""
        for value in pending.drain():
            state.smooth(value)

    def tell(final: bool = False) -> None:
        if progress is None or rank != 0:
            return
        read_losses()
        elapsed = time.perf_counter() - attempt_started
        progress(
            {
                "step": state.step,
                "steps": steps,
                "loss": state.smoothed_loss,
                "tokens_per_second": state.timed_tokens / state.timed_seconds if state.timed_seconds else None,
                "steps_per_second": (state.step - resumed_from_step) / elapsed if elapsed > 0 else None,
                "resumed_from_step": resumed_from_step,
                "final": final,
            }
        )

    memory_step = min(1, steps - 1)  # after step 0 the optimizer state exists
    attempt_started = last_told = time.perf_counter()
    tell()
    for index in range(state.step, steps):
        tick = time.perf_counter()
        if index == memory_step:
            (loss, _), state.peak = measure_peak(lambda i=index: step(i), device)
        else:
            loss, tokens = step(index)
            state.timed_seconds += time.perf_counter() - tick
            state.timed_tokens += tokens
        state.train_seconds += time.perf_counter() - tick
        state.step = index + 1
        pending.add(index, loss)
        if pending.due():
            read_losses()
        if eval_every and state.step % eval_every == 0:
            read_losses()
            scored = evaluate(engine.module, task, train["eval_batch_size"], device, splits=("val",))
            state.curve.append(("train", "loss", state.smoothed_loss, state.step))
            state.curve.extend((split, name, value, state.step) for split, name, value in scored)
            if not scored:
                raise ValueError(f"task {task.name!r} has no 'val' split, which train.eval_every scores")
            value = tuple(next(v for _, name, v in scored if name == wanted) for wanted in (metric, "loss"))
            if select == "best" and improves(metric, value, state.best_value):
                state.best_tag = store.save_best(engine, state.step)
                state.best_value, state.best_step = value, state.step
            tell()
            last_told = time.perf_counter()
        if checkpoint_every and state.step % checkpoint_every == 0 and state.step < steps:
            read_losses()  # a checkpoint never holds a state past a non-finite loss
            store.save(engine, state.step, {"training_state": asdict(state), "rng": rng_state()})
        if time.perf_counter() - last_told > PROGRESS_SECONDS:
            tell()
            last_told = time.perf_counter()
    read_losses()
    trained = plugin_metrics(engine.module)  # plugin statistics of the last training step ...

    selected_step = steps
    if select == "best" and state.best_tag is not None:
        store.load_weights(engine, state.best_tag)
        selected_step = state.best_step
    metrics: list[tuple[str, str, float, int | None]] = [
        (split, name, value, None)
        for split, name, value in evaluate(engine.module, task, train["eval_batch_size"], device)
    ]
    metrics.append(("train", "loss", state.smoothed_loss, None))
    metrics.extend(("train", name, value, None) for name, value in trained.items())
    # ... and of the last evaluation batch (eval mode: e.g. sbm's deterministic graph)
    metrics.extend(("eval", name, value, None) for name, value in plugin_metrics(engine.module).items())
    metrics.extend(state.curve)
    tell(final=True)
    if scratch is not None:
        scratch.cleanup()
    return TrialResult(
        metrics=metrics,
        peak_memory_bytes=int(state.peak) if state.peak is not None else 0,
        tokens_per_second=state.timed_tokens / state.timed_seconds if state.timed_seconds > 0 else float("nan"),
        train_seconds=state.train_seconds,
        steps=steps,
        device=str(device.type),
        world_size=world_size,
        num_parameters=num_parameters,
        resumed_from_step=resumed_from_step,
        selected_step=selected_step,
        data=task.provenance(),
    )


def plugin_metrics(model: torch.nn.Module) -> dict[str, float]:
    """Mean over layers of each statistic the plugins report (``Attention.trial_metrics``) for the last forward."""
    from attentions import Attention

    collected: dict[str, list[float]] = {}
    for module in model.modules():
        if isinstance(module, Attention):
            for name, value in module.trial_metrics().items():
                if math.isfinite(value):  # a layer with nothing to say (e.g. too few blocks to sort) stays out
                    collected.setdefault(name, []).append(float(value))
    return {name: sum(values) / len(values) for name, values in collected.items()}
