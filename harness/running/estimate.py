"""What a grid will cost before it is submitted: device-hours and peak memory per trial, and where each came from.

Sources, best first, for each trial (figures of one trial come from one source):

* ``store: trial ID``: an earlier trial in the results store with the same task, model, plugin and parameters, batch
  size and workers, on the same kind of device (a shorter run of the same cell, a stored trial of another grid or
  seed): its ``train_seconds / steps`` and ``peak_memory_bytes``.
* ``store: bench --model``: a ``bench --model`` row of the same plugin (and block size) at the trial's length on the
  same kind of device, scaled to the trial's model (batch x layers x width^2 for time, batch x layers x width for
  memory): a rough figure.
* ``measured``: ``--estimate`` trains the trial's model for a few steps on random tokens of its shape on this machine
  (no Ray, no DeepSpeed, no data download): its median step and ``harness.memory.measure_peak`` of one step.
* ``unknown``.

Peak memory is the measured working peak of one training step plus 16 bytes per parameter (weights, gradients and
AdamW's two moments, in fp32) that exist for the whole run. Device-hours count the training steps only (evaluation
and checkpoints come on top), multiplied by the devices a trial holds (``workers`` x ``gpus``, at least one); a
figure measured on one device is divided among a trial's workers as if data parallelism were free.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_BYTES_PER_PARAMETER = 16
MEASURED_STEPS = 3


@dataclass(frozen=True)
class Figure:
    """One estimated number and where it came from."""

    value: float | None
    source: str


@dataclass(frozen=True)
class Cost:
    """Estimated cost of one trial."""

    trial_id: str
    device: str
    steps: int
    devices: float
    seconds_per_step: Figure  # wall seconds of one optimizer step (of the global batch, on all its workers)
    memory_bytes: Figure  # peak bytes on one device
    device_memory: int | None  # bytes the device holds, None if unknown

    @property
    def device_hours(self) -> float | None:
        if self.seconds_per_step.value is None:
            return None
        return self.seconds_per_step.value * self.steps * self.devices / 3600

    @property
    def over_memory(self) -> bool:
        mem = self.memory_bytes.value
        return mem is not None and self.device_memory is not None and mem > self.device_memory


def trial_device(trial) -> str:
    """The kind of device a trial trains on: ``cuda`` when it asks for GPUs (the trainer's rule), else ``cpu``."""
    return "cuda" if trial.resources.get("gpus", 0) > 0 else "cpu"


def _devices(trial) -> float:
    gpus = trial.resources.get("gpus", 0)
    return trial.resources.get("workers", 1) * (gpus if gpus > 0 else 1)


def _cell(config: dict[str, Any]) -> str:
    """What decides the cost of a step: everything but the seed, step count, schedule and bookkeeping."""
    train, resources = config["train"], config["resources"]
    keys = ("task", "task_params", "scale", "attention", "params", "model")
    cell = {k: config[k] for k in keys} | {
        "batch_size": train["batch_size"],
        "compile": train.get("compile", False),
        "workers": resources.get("workers", 1),
    }
    return json.dumps(cell, sort_keys=True, default=str)


def device_memory(device: str, gib: float | None = None) -> int | None:
    """Bytes of memory of the device a trial would use: ``gib`` if given, else this machine's first GPU (for
    ``cuda``) or its physical memory (for ``cpu``); None when unknown (a driver without the trials' GPU)."""
    if gib is not None:
        return int(gib * 2**30)
    if device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class _Specs:
    """Task specs and parameter counts, computed once per task and model (no data is loaded)."""

    def __init__(self) -> None:
        self.specs: dict[str, Any] = {}
        self.counts: dict[str, int | None] = {}

    def spec(self, trial):
        import tasks

        key = json.dumps([trial.task, trial.scale, trial.task_params], sort_keys=True)
        if key not in self.specs:
            self.specs[key] = tasks.build(trial.task, scale=trial.scale, seed=0, **trial.task_params).spec
        return self.specs[key]

    def model_config(self, trial):
        from harness.model import ModelConfig

        spec = self.spec(trial)
        return ModelConfig(
            kind=spec.kind,
            vocab_size=spec.vocab_size,
            max_len=spec.max_len,
            num_classes=spec.num_classes,
            attention=trial.attention,
            attention_params=trial.params,
            **trial.model,
        )

    def parameters(self, trial) -> int | None:
        """Parameter count of the trial's model, built on the meta device (no memory, no time)."""
        import torch

        from harness.model import Transformer

        key = _cell(trial.config())
        if key not in self.counts:
            try:
                with torch.device("meta"):
                    self.counts[key] = Transformer(self.model_config(trial)).num_parameters()
            except Exception:  # a plugin that cannot be built on meta: the static part stays unknown
                self.counts[key] = None
        return self.counts[key]


def _with_state(peak: float | None, parameters: int | None) -> float | None:
    if peak is None or parameters is None:
        return None
    return float(peak) + STATE_BYTES_PER_PARAMETER * parameters


def _stored_trials(frame) -> dict[tuple[str, str], dict[str, Any]]:
    """(cell, device) -> the newest ok trial's timing and memory, from the store's final rows."""
    if frame.empty:
        return {}
    rows = frame[(frame["status"] == "ok") & (frame["grid"] != "bench") & frame["train_seconds"].notna()]
    rows = rows[rows["steps"].fillna(0) > 0].sort_values("finished_at").drop_duplicates("trial_id", keep="last")
    found = {}
    for row in rows.itertuples(index=False):
        try:
            config = json.loads(row.config)
            cell = _cell(config)
        except (TypeError, KeyError, ValueError):  # a row of another kind (or older layout) than a trial's
            continue
        found[(cell, row.device)] = {
            "trial_id": row.trial_id,
            "seconds_per_step": row.train_seconds / row.steps,
            "peak": None if row.peak_memory_bytes != row.peak_memory_bytes else row.peak_memory_bytes,
        }
    return found


def _bench_rows(frame) -> list[dict[str, Any]]:
    """``bench --model`` rows: one dict per stored (plugin, length, device) with its config and median step."""
    if frame.empty:
        return []
    rows = frame[(frame["grid"] == "bench") & (frame["task"] == "model_step") & (frame["metric"] == "seconds")]
    out = []
    for row in rows.sort_values("finished_at").itertuples(index=False):
        config = json.loads(row.config)
        out.append({"config": config, "seconds": row.value, "peak": row.peak_memory_bytes, "device": row.device})
    return out


def _from_bench(trial, device: str, benches: list[dict[str, Any]], specs: _Specs) -> tuple[Figure, Figure] | None:
    spec = specs.spec(trial)
    matches = [
        b
        for b in benches
        if b["config"].get("attention") == trial.attention
        and b["config"].get("length") == spec.max_len
        and b["device"] == device
        and b["config"].get("params", {}).get("block_size") == trial.params.get("block_size")
        and bool(b["config"].get("model", {}).get("compile")) == bool(trial.train.get("compile"))
    ]
    if not matches:
        return None
    bench = matches[-1]  # the newest run
    config, model = bench["config"], bench["config"].get("model", {})
    stacks = 2 if spec.kind == "seq2seq" else 1
    batch = trial.train["batch_size"] / config["batch"]
    layers = trial.model["layers"] * stacks / model["layers"]
    width = trial.model["dim"] / model["dim"]
    where = f"store: bench --model, L={spec.max_len} batch {config['batch']} {model['layers']}x{model['dim']}, scaled"
    workers = trial.resources.get("workers", 1)  # the global batch is split across them
    seconds = Figure(bench["seconds"] * batch * layers * width**2 / workers, where)
    peak = None if bench["peak"] != bench["peak"] else bench["peak"] * batch * layers * width
    return seconds, Figure(_with_state(peak, specs.parameters(trial)), where)


def random_batch(spec, batch_size: int, device) -> dict[str, Any]:
    """A batch of random tokens with the shapes a task of ``spec`` feeds the model, at its ``max_len`` (an upper
    bound for tasks that evaluate longer than they train)."""
    import torch

    g = torch.Generator().manual_seed(0)

    def tokens(length: int):
        return torch.randint(2, spec.vocab_size, (batch_size, length), generator=g).to(device)

    def ones(t):
        return torch.ones_like(t, dtype=torch.bool)

    if spec.kind == "lm":
        t = tokens(spec.max_len + 1)  # max_len inputs and their next tokens
        return {"tokens": t, "mask": ones(t)}
    if spec.kind == "classify":
        t = tokens(spec.max_len)
        label = torch.randint(0, spec.num_classes, (batch_size,), generator=g).to(device)
        return {"tokens": t, "mask": ones(t), "label": label}
    src, tgt = tokens(spec.max_len), tokens(spec.max_len)
    return {"src": src, "src_mask": ones(src), "tgt": tgt, "tgt_mask": ones(tgt)}


def measure(trial, specs: _Specs | None = None, steps: int = MEASURED_STEPS) -> tuple[float, int, int]:
    """Train the trial's model for a few steps on this machine: (median seconds per step, working peak bytes,
    parameters). CUDA in bfloat16 when the trial asks for a GPU and one is here; the CPU with the trial's threads
    otherwise."""
    import torch

    from harness.memory import measure_peak
    from harness.model import Transformer

    specs = specs or _Specs()
    spec = specs.spec(trial)
    use_cuda = trial_device(trial) == "cuda" and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    threads = torch.get_num_threads()
    if not use_cuda:
        torch.set_num_threads(max(1, int(trial.resources.get("cpus", 1))))
    try:
        torch.manual_seed(trial.seed)
        model = Transformer(specs.model_config(trial)).to(device=device, dtype=torch.bfloat16 if use_cuda else None)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=trial.train["lr"])
        batch = random_batch(spec, trial.train["batch_size"], device)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            model(batch).backward()
            optimizer.step()
            if use_cuda:
                torch.cuda.synchronize(device)

        step()  # warm-up: the optimizer state, the allocator, kernel choices
        _, peak = measure_peak(step, device)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return statistics.median(times), int(peak), model.num_parameters()
    finally:
        torch.set_num_threads(threads)


def estimate(
    trials: Sequence,
    results: str | Path | None,
    *,
    quick: bool = False,
    memory_gib: float | None = None,
    on_measure=None,
) -> list[Cost]:
    """A ``Cost`` per trial from the store at ``results`` (earlier trials, then ``bench --model`` rows); with
    ``quick`` a few measured steps for trials the store does not cover; else ``unknown``. ``on_measure(trial)`` is
    called before each measurement (progress). Trials that differ only in seed, steps or schedule share a figure."""
    import torch

    from harness.store import ResultStore

    frame = ResultStore(results).read() if results is not None and Path(results).exists() else None
    stored = _stored_trials(frame) if frame is not None else {}
    benches = _bench_rows(frame) if frame is not None else []
    specs, measured, memories = _Specs(), {}, {}
    costs = []
    for trial in trials:
        device = trial_device(trial)
        if device not in memories:
            memories[device] = device_memory(device, memory_gib)
        cell = _cell(trial.config())
        seconds, memory = Figure(None, "unknown"), Figure(None, "unknown")
        if (cell, device) in stored:
            found = stored[(cell, device)]
            where = f"store: trial {found['trial_id']}"
            seconds = Figure(found["seconds_per_step"], where)
            memory = Figure(_with_state(found["peak"], specs.parameters(trial)), where)
        elif (scaled := _from_bench(trial, device, benches, specs)) is not None:
            seconds, memory = scaled
        elif quick:
            here = "cuda" if torch.cuda.is_available() else "cpu"
            if here != device:
                seconds = memory = Figure(None, f"unknown (the trial wants {device}; this machine has {here} only)")
            else:
                if cell not in measured:
                    if on_measure is not None:
                        on_measure(trial)
                    measured[cell] = measure(trial, specs)
                step_seconds, peak, parameters = measured[cell]
                where = f"measured: {MEASURED_STEPS} steps here ({device})"
                seconds = Figure(step_seconds / trial.resources.get("workers", 1), where)
                memory = Figure(_with_state(peak, parameters), where)
        if memory.value is None and memory.source == "unknown" and seconds.source != "unknown":
            memory = Figure(None, f"unknown ({seconds.source} has no memory figure)")
        costs.append(
            Cost(
                trial_id=trial.trial_id,
                device=device,
                steps=trial.train["steps"],
                devices=_devices(trial),
                seconds_per_step=seconds,
                memory_bytes=memory,
                device_memory=memories[device],
            )
        )
    return costs


def size(nbytes: float | None) -> str:
    if nbytes is None:
        return "?"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 2**10:.0f} KiB"


def hours(value: float | None) -> str:
    return "?" if value is None else f"{value:.3g}"


def cell_text(cost: Cost) -> str:
    """A trial's cost for its dry-run line: device-hours, peak memory, each with its source (once when shared)."""
    time_part = f"{hours(cost.device_hours)} dev-h"
    memory_part = f"{size(cost.memory_bytes.value)} peak"
    if cost.seconds_per_step.source == cost.memory_bytes.source:
        text = f"{time_part}, {memory_part} [{cost.seconds_per_step.source}]"
    else:
        text = f"{time_part} [{cost.seconds_per_step.source}], {memory_part} [{cost.memory_bytes.source}]"
    if cost.over_memory:
        text += f" OVER {cost.device} memory of {size(cost.device_memory)}"
    return text


def total_text(costs: Sequence[Cost]) -> str:
    """Device-hours and the largest peak over ``costs`` (the trials to run), saying how many are unknown."""
    known = [c.device_hours for c in costs if c.device_hours is not None]
    memory = [c.memory_bytes.value for c in costs if c.memory_bytes.value is not None]
    unknown = len(costs) - len(known)
    text = f"~{hours(sum(known)) if known else '?'} device-hours"
    if unknown:
        text += f" ({unknown} of {len(costs)} trials unknown)"
    text += f", peak memory up to {size(max(memory)) if memory else '?'}"
    over = sum(c.over_memory for c in costs)
    if over:
        text += f", {over} over their device's memory"
    return text
