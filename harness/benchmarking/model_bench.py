"""Model-level efficiency: training steps per second and peak memory of the whole model with each plugin.

Long Range Arena's speed and memory table (its Table 2) is what users compare: the same model and task with every
attention, at several lengths, relative to vanilla. This is its equivalent here: the shared Transformer as a causal
LM (``lm`` head, 2 layers, dim 256, 4 heads, the model's default MLP width) takes one full training step (forward, loss,
backward, AdamW update) on random tokens at each length. Steps of every plugin at one length are interleaved (round r
of every plugin before round r + 1 of any), so machine load hits all of them alike; the median and the fastest step
are kept. Peak memory is ``harness.memory.measure_peak`` of one further step (the optimizer state exists by then, so
it is activations, gradients and temporaries: what grows with length).

Only torch, ``attentions``, ``harness.model`` and ``harness.memory`` are imported (no Ray, no DeepSpeed), so this runs
on a bare GPU machine; on CUDA the model runs in bfloat16.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

import attentions
from harness.memory import measure_peak
from harness.model import ModelConfig, Transformer, compile_in_place, compile_mode, dense_masks

VOCAB = 256  # byte-level, as a char LM task


def causal_plugins() -> list[str]:
    """Every registered plugin with a causal form (the LM is causal; ``sortcut`` is encoder only)."""
    return [name for name in attentions.names() if attentions.get(name).supports_causal]


def model_config(
    name: str, length: int, *, block_size: int = 64, dim: int = 256, heads: int = 4, layers: int = 2
) -> ModelConfig:
    """The benchmark model with plugin ``name``; ``block_size`` goes only to plugins that take one."""
    params = {"block_size": block_size} if "block_size" in attentions.parameters(name) else {}
    return ModelConfig(
        kind="lm",
        vocab_size=VOCAB,
        max_len=length,
        attention=name,
        attention_params=params,
        layers=layers,
        dim=dim,
        heads=heads,  # mlp_dim: the shared model's default
    )


class _Trainee:
    """One model, its AdamW optimizer and a fixed batch: ``step()`` is one training step."""

    def __init__(
        self, cfg: ModelConfig, batch: int, device: torch.device, dtype: torch.dtype, compile: bool | str = False
    ):
        torch.manual_seed(0)
        self.model = Transformer(cfg).to(device=device, dtype=dtype).train()
        if compile:  # the warm-up step compiles, before any step is timed
            compile_in_place(self.model, compile_mode(compile))
        # Fused AdamW (one kernel for all parameters) keeps the optimizer, which is the same for every plugin, from
        # diluting the differences between them with per-parameter overhead.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(2, VOCAB, (batch, cfg.max_len + 1), generator=g)  # L inputs, L targets
        host = {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}
        self.dense = dense_masks(host)  # decided on the host, as the trainer does: no sync inside the step
        self.batch = {key: value.to(device) for key, value in host.items()}
        self.device = device
        self.graphs = compile_mode(compile) == "reduce-overhead"

    def step(self) -> None:
        if self.graphs:  # a new step: the CUDA graphs' previous outputs are done with (torch.compile's graph trees)
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        self.model(self.batch, dense=self.dense).backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def model_sweep(
    names: Sequence[str],
    lengths: Sequence[int],
    *,
    batch: int = 1,
    block_size: int = 64,
    dim: int = 256,
    heads: int = 4,
    layers: int = 2,
    repeats: int = 3,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    compile: bool | str = False,
) -> list[dict[str, Any]]:
    """One row per (plugin, length): ``seconds`` (median step), ``seconds_min``, ``steps_per_second`` (1 / median)
    and ``peak_memory_bytes``. The max_len of the model is the length itself. ``compile``: every model goes through
    ``torch.compile`` first (``harness.model.compile_in_place``; ``"reduce-overhead"``: CUDA graphs on a GPU); the
    compile is not timed. ``batch`` is per row as ``batch`` (the rows of several batch sizes can share a table)."""
    device = torch.device(device)
    rows = []
    for length in lengths:
        trainees = {
            name: _Trainee(
                model_config(name, length, block_size=block_size, dim=dim, heads=heads, layers=layers),
                batch,
                device,
                dtype,
                compile,
            )
            for name in names
        }
        times: dict[str, list[float]] = {name: [] for name in names}
        for trainee in trainees.values():
            trainee.step()  # warm-up: allocator, optimizer state
        for _ in range(repeats):
            for name, trainee in trainees.items():
                start = time.perf_counter()
                trainee.step()
                times[name].append(time.perf_counter() - start)
        for name, trainee in trainees.items():
            _, peak = measure_peak(trainee.step, device)
            median = statistics.median(times[name])
            rows.append(
                {
                    "attention": name,
                    "length": length,
                    "batch": batch,
                    "dtype": str(dtype).removeprefix("torch."),
                    "device": device.type,
                    "seconds": median,
                    "seconds_min": min(times[name]),
                    "steps_per_second": 1 / median,
                    "peak_memory_bytes": int(peak),
                }
            )
        del trainees
    return rows


def relative_to_vanilla(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int, str], tuple[float, float]]:
    """(attention, length, device) -> (steps/s over vanilla's, peak memory over vanilla's), from the same run."""
    base = {(r["length"], r["device"]): r for r in rows if r["attention"] == "vanilla"}
    out = {}
    for r in rows:
        ref = base.get((r["length"], r["device"]))
        if ref is not None:
            out[(r["attention"], r["length"], r["device"])] = (
                ref["seconds"] / r["seconds"],
                r["peak_memory_bytes"] / max(ref["peak_memory_bytes"], 1),
            )
    return out


def table_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The efficiency table as text: per device, batch and length, each plugin's steps/s and peak memory, and both
    relative to vanilla at the same batch (speed: higher is better; memory: lower is better)."""
    columns = ("steps/s", "x vanilla", "peak MiB", "x vanilla")
    lines = [f"  {'attention':<18} {'L':>6} {'B':>3} {'device':<6} " + " ".join(f"{c:>9}" for c in columns)]
    for batch in sorted({r.get("batch", 1) for r in rows}):
        same = [r for r in rows if r.get("batch", 1) == batch]
        relative = relative_to_vanilla(same)
        for r in sorted(same, key=lambda r: (r["device"], r["length"])):
            speed, memory = relative.get((r["attention"], r["length"], r["device"]), (float("nan"), float("nan")))
            lines.append(
                f"  {r['attention']:<18} {r['length']:>6} {batch:>3} {r['device']:<6} {r['steps_per_second']:>9.3f} "
                f"{speed:>9.2f} {r['peak_memory_bytes'] / 2**20:>9.1f} {memory:>9.2f}"
            )
    return lines
