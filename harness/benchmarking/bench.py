"""Speed and memory sweep of attention plugins: forward + backward of the attention alone, one row per measurement.

Every plugin runs on the same random q, k, v of shape (batch, heads, length, head_dim) in training mode (the state in
which its cost matters: Gumbel noise, saved activations). Three figures per (attention, length, dtype, device):

* ``seconds`` / ``seconds_min``: median and fastest wall time of a few forward+backward repeats after a warm-up;
* ``peak_memory_bytes``: ``harness.memory.measure_peak`` of one forward+backward (measured in a separate run, because
  the CPU tracker slows the work it watches);
* ``saved_bytes``: bytes of the distinct tensor storages autograd saves for backward, the activation memory a model
  keeps per layer between its forward and backward (``torch.autograd.graph.saved_tensors_hooks``).

On CUDA (``detailed``, the default there) a row says where the time goes (``measure_detailed``): the forward and the
forward+backward timed apart with CUDA events after warm-up runs, the L2 cache flushed before every repeat
(``harness.benchmarking.timing``); ``idle_share``, the share of a forward+backward's wall time in which the GPU runs no
kernel (``harness.benchmarking.idle``); and ``roofline_share``, the plugin's analytic FLOPs per second over the card's
dense bf16 peak (``harness.benchmarking.flops``).

Peers (code outside the registry, e.g. a public implementation) join with ``extra={"name": factory}`` where
``factory(length)`` returns a module taking (q, k, v). ``harness.stats.fit_exponent`` gives a column's growth order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import attentions
from harness.benchmarking import flops as flop_counts
from harness.benchmarking.idle import profile_device
from harness.benchmarking.timing import Timing, timing_for
from harness.memory import measure_peak
from harness.store import ResultStore, rows_for_trial

ModuleFactory = Callable[[int], nn.Module]


def default_configs() -> list[tuple[torch.device, torch.dtype]]:
    """float32 on CPU always; bf16 on CUDA when there is a GPU (the dtype models train in there)."""
    configs = [(torch.device("cpu"), torch.float32)]
    if torch.cuda.is_available():
        configs.append((torch.device("cuda"), torch.bfloat16))
    return configs


def build_plugin(
    name: str, length: int, *, heads: int = 4, head_dim: int = 64, block_size: int = 64, causal: bool = False
) -> nn.Module:
    """The plugin at the benchmark's configuration: ``block_size`` goes only to plugins that take one."""
    params = {"block_size": block_size} if "block_size" in attentions.parameters(name) else {}
    return attentions.build(name, heads=heads, head_dim=head_dim, max_len=length, causal=causal, **params)


def make_inputs(
    length: int, *, batch: int, heads: int, head_dim: int, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(  # type: ignore[return-value]
        torch.randn(batch, heads, length, head_dim, generator=g).to(device=device, dtype=dtype).requires_grad_()
        for _ in range(3)
    )


def forward_backward(module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """One training step of the attention alone, driven by a fixed upstream gradient (so no loss arithmetic is timed
    with it); gradients are cleared first so repeats do not accumulate."""
    for t in (q, k, v, *module.parameters()):
        t.grad = None
    out = module(q, k, v)
    out.backward(_upstream(out))


_UPSTREAM: dict[tuple, torch.Tensor] = {}


def _upstream(out: torch.Tensor) -> torch.Tensor:
    """A fixed random gradient per output shape/dtype/device, made once (not timed after the warm-up)."""
    key = (tuple(out.shape), out.dtype, out.device)
    if key not in _UPSTREAM:
        _UPSTREAM.clear()  # one shape at a time is all a sweep needs; do not hoard memory across lengths
        g = torch.Generator().manual_seed(1)
        _UPSTREAM[key] = torch.randn(out.shape, generator=g).to(device=out.device, dtype=out.dtype)
    return _UPSTREAM[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward_backward(module: nn.Module, q, k, v, repeats: int = 3) -> list[float]:
    """Seconds of each of ``repeats`` forward+backward passes after one warm-up pass."""
    forward_backward(module, q, k, v)
    times = []
    for _ in range(repeats):
        _sync(q.device)
        start = time.perf_counter()
        forward_backward(module, q, k, v)
        _sync(q.device)
        times.append(time.perf_counter() - start)
    return times


def saved_bytes(module: nn.Module, q, k, v) -> int:
    """Bytes of distinct storages saved for backward by one forward (shared storages and views counted once)."""
    seen: dict[tuple[int, torch.device], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.device)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(q, k, v)
    del out
    return sum(seen.values())


def measure(
    name: str,
    module: nn.Module,
    length: int,
    *,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    repeats: int = 3,
    detailed: bool | None = None,
    **detail: Any,
) -> dict[str, Any]:
    """One row of the sweep for an already built ``module``. ``detailed`` (default: on CUDA only) adds the forward
    time, the idle share and the roofline share (``measure_detailed``, which takes the ``detail`` keywords)."""
    device = torch.device(device)
    module = module.to(device).train()
    q, k, v = make_inputs(length, batch=batch, heads=heads, head_dim=head_dim, device=device, dtype=dtype)
    if detailed if detailed is not None else device.type == "cuda":
        return measure_detailed(name, module, q, k, v, repeats=repeats, **detail)
    times = time_forward_backward(module, q, k, v, repeats)
    _, peak = measure_peak(lambda: forward_backward(module, q, k, v), device)
    return {
        "attention": name,
        "length": length,
        "batch": batch,
        "dtype": str(dtype).removeprefix("torch."),
        "device": device.type,
        "seconds": statistics.median(times),
        "seconds_min": min(times),  # what regression checks compare: other work on the machine only adds time
        "peak_memory_bytes": int(peak),
        "saved_bytes": saved_bytes(module, q, k, v),
    }


def device_peak_flops(device: torch.device, dtype: torch.dtype, override_tflops: float | None = None) -> float | None:
    """The roofline a row is judged against: ``override_tflops``, else the card's dense bf16 peak when the sweep runs
    in bf16 on a GPU the table knows; None otherwise (the share is then left empty)."""
    if override_tflops is not None or (device.type == "cuda" and dtype == torch.bfloat16):
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        return flop_counts.bf16_peak(name, override_tflops)
    return None


def measure_detailed(
    name: str,
    module: nn.Module,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    repeats: int = 3,
    timing: Timing | None = None,
    peak_tflops: float | None = None,
    profile_steps: int = 3,
) -> dict[str, Any]:
    """Where the time of one case goes: forward and forward+backward timed apart (``timing``: the device's, from
    ``harness.benchmarking.timing``), peak and saved memory, the idle share of a profiled forward+backward, and
    the roofline share of each time (the fastest repeat's attained FLOP/s over the peak)."""
    device = q.device
    timing = timing or timing_for(device)
    batch, heads, length, head_dim = q.shape

    def forward() -> None:
        module(q, k, v)  # in training mode, recording the graph: the forward half of a training step

    forward_times = timing.repeats(forward, repeats)
    times = timing.repeats(lambda: forward_backward(module, q, k, v), repeats)
    _, peak = measure_peak(lambda: forward_backward(module, q, k, v), device)
    profiled = profile_device(lambda: forward_backward(module, q, k, v), device, profile_steps)
    counted = flop_counts.attention_flops(name, module, length, batch=batch, heads=heads, head_dim=head_dim)
    roof = device_peak_flops(device, q.dtype, peak_tflops)

    def share(work: float, seconds: float) -> float:
        return work / seconds / roof if roof and seconds > 0 else float("nan")

    return {
        "attention": name,
        "length": length,
        "batch": batch,
        "dtype": str(q.dtype).removeprefix("torch."),
        "device": device.type,
        "seconds": statistics.median(times),
        "seconds_min": min(times),
        "forward_seconds": statistics.median(forward_times),
        "forward_seconds_min": min(forward_times),
        "peak_memory_bytes": int(peak),
        "saved_bytes": saved_bytes(module, q, k, v),
        "idle_share": profiled.idle_share,
        "launches": profiled.launches,
        "flops_forward": float("nan") if counted is None else counted[0],
        "flops": float("nan") if counted is None else counted[1],
        "roofline_share_forward": float("nan") if counted is None else share(counted[0], min(forward_times)),
        "roofline_share": float("nan") if counted is None else share(counted[1], min(times)),
    }


def sweep(
    names: Sequence[str],
    lengths: Sequence[int],
    *,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    block_size: int = 64,
    causal: bool = False,
    repeats: int = 3,
    configs: Sequence[tuple[torch.device | str, torch.dtype]] | None = None,
    extra: Mapping[str, ModuleFactory] | None = None,
    case_limit: float | None = None,
    **detail: Any,
) -> list[dict[str, Any]]:
    """Measure every plugin in ``names`` (and every peer in ``extra``) at every length and (device, dtype);
    ``detail`` goes to ``measure`` (``detailed``, and ``measure_detailed``'s keywords). With ``case_limit``, a plugin
    whose case took longer than that many seconds is not measured at its further lengths (a warning names it), so one
    slow plugin cannot spend a sweep's time budget on its own.

    A case that runs out of memory is skipped with a warning that names it (Long Range Arena's tables mark such
    cells OOM), so one plugin's quadratic memory at the longest length does not lose the rest of the sweep."""
    rows = []
    builders: dict[str, ModuleFactory] = {
        name: (
            lambda length, name=name: build_plugin(
                name, length, heads=heads, head_dim=head_dim, block_size=block_size, causal=causal
            )
        )
        for name in names
    }
    builders.update(extra or {})
    for device, dtype in configs or default_configs():
        too_slow: set[str] = set()
        for length in lengths:
            for name, factory in builders.items():
                if name in too_slow:
                    continue
                torch.manual_seed(0)
                started = time.perf_counter()
                try:
                    row = measure(
                        name,
                        factory(length),
                        length,
                        batch=batch,
                        heads=heads,
                        head_dim=head_dim,
                        device=device,
                        dtype=dtype,
                        repeats=repeats,
                        **detail,
                    )
                except torch.OutOfMemoryError:
                    where = torch.device(device)
                    warnings.warn(
                        f"{name} at L={length} on {where}: out of memory, skipped (batch {batch})", stacklevel=2
                    )
                    if where.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                rows.append(row)
                spent = time.perf_counter() - started
                if case_limit is not None and spent > case_limit:
                    too_slow.add(name)
                    warnings.warn(
                        f"{name} at L={length} on {device}: took {spent:.0f} s (limit {case_limit:g} s), "
                        "its further lengths skipped",
                        stacklevel=2,
                    )
    return rows


def tile_bmm_flops(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    tile: int = 64,
    count: int = 256,
    operand_sets: int = 1,
) -> float:
    """FLOP/s of ``torch.bmm`` on ``count`` (tile x tile) @ (tile x tile) products, median of 9 rounds: the roofline
    of block attention, whose every product is such a tile (or a wider one).

    With ``operand_sets=1`` the same two operands are multiplied again and again, so they sit in cache: the peak.
    With more, each call takes the next of that many distinct operand pairs, so operands come from memory the way a
    model's activations do (8 sets of 256 tiles are 64 MiB of float32, twice this machine's last-level cache).
    """
    device = torch.device(device)
    sets = [
        tuple(torch.randn(count, tile, tile, device=device, dtype=dtype) for _ in range(2)) for _ in range(operand_sets)
    ]
    times = []
    for _ in range(10):
        _sync(device)
        start = time.perf_counter()
        for call in range(5):
            a, b = sets[call % operand_sets]
            torch.bmm(a, b)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 5 * count * 2 * tile**3 / statistics.median(times[1:])


def sinkhorn_flops(length: int, *, batch: int = 1, heads: int = 4, head_dim: int = 64, block_size: int = 64) -> float:
    """Matrix-product FLOPs of one ``sinkhorn`` forward + backward (the paper's method, nothing skipped).

    Forward: sorting K and V (two (n x n) @ (n x b*D) products per head) and, per query block, scores and outputs
    over the sorted and the own block (four (b x D) x (D x b) sized products). The backward is twice that: each
    product has two input gradients. Sort net and balancing, O(n^2 * D), are left out."""
    n = -(-length // block_size)
    sort = 2 * 2 * n * n * block_size * head_dim
    attend = 4 * 2 * n * block_size * block_size * head_dim
    return 3 * batch * heads * (sort + attend)


def roofline_lines(rows: Sequence[dict[str, Any]], **shape: int) -> list[str]:
    """``sinkhorn``'s attained FLOP/s at each measured length beside the 64-tile ``bmm`` throughput of the same
    device, measured now (so in the same run and under the same load). ``shape``: heads, head_dim, block_size (and
    batch, where a row does not say its own)."""
    lines = []
    for device, dtype in sorted({(r["device"], r["dtype"]) for r in rows if r["attention"] == "sinkhorn"}):
        peak = tile_bmm_flops(device, getattr(torch, dtype))
        cold = tile_bmm_flops(device, getattr(torch, dtype), operand_sets=8)
        lines.append(
            f"  64-tile bmm on {device}/{dtype}: {peak / 1e9:.1f} GFLOP/s in cache, {cold / 1e9:.1f} GFLOP/s "
            f"({cold / peak:.0%}) on operands from memory"
        )
        for row in (r for r in rows if r["attention"] == "sinkhorn" and r["device"] == device):
            size = {**shape, "batch": row.get("batch", shape.get("batch", 1))}
            attained = sinkhorn_flops(row["length"], **size) / row["seconds"]
            lines.append(
                f"  sinkhorn L={row['length']:<6} B={size['batch']:<3} {attained / 1e9:7.1f} GFLOP/s (median) = "
                f"{attained / peak:.0%} of the 64-tile bmm"
            )
    return lines


def row_line(row: dict[str, Any]) -> str:
    """One measured case as a line of text: fastest forward+backward, memory, and on a detailed row the fastest
    forward, the idle share and the roofline share of both."""
    line = (
        f"  {row['attention']:<18} L={row['length']:<6} B={row.get('batch', 1):<3} {row['device']:<5} "
        f"{row['seconds_min'] * 1e3:9.2f} ms  peak {row['peak_memory_bytes'] / 2**20:9.2f} MiB  "
        f"saved {row['saved_bytes'] / 2**20:9.2f} MiB"
    )
    if "forward_seconds_min" in row:
        line += (
            f"  fwd {row['forward_seconds_min'] * 1e3:8.2f} ms  idle {row['idle_share']:4.0%}  "
            f"launches {row['launches']:6.0f}  "
            f"roofline fwd {_percent(row['roofline_share_forward'])} fwd+bwd {_percent(row['roofline_share'])}"
        )
    return line


def _percent(share: float) -> str:
    return "    –" if share != share else f"{share:5.1%}"


def store_sweep(
    store_dir: str | Path, rows: Sequence[dict[str, Any]], config: dict[str, Any], *, model: bool = False
) -> int:
    """Write a sweep to the results store, one stored "trial" per (attention, length, device, dtype) of grid ``bench``,
    task ``speed_memory``: metrics ``seconds`` (median) and ``saved_bytes`` in split ``forward_backward``, the
    ``length`` and ``peak_memory_bytes`` columns set. ``config["run"]`` keeps runs apart. Returns the trial count.
    A detailed row (CUDA) adds ``seconds`` and ``roofline_share`` in split ``forward``, and ``idle_share``,
    ``launches`` (device work items per forward+backward), ``roofline_share`` and ``flops`` in split
    ``forward_backward`` (a share the row could not compute is left out).
    A row's ``batch`` is part of its trial (``config["batch"]`` may list several).
    ``model=True`` stores the model-level sweep (``harness.benchmarking.model_bench``) as task ``model_step``:
    metrics ``seconds`` and ``steps_per_second`` in split ``train_step``."""
    from harness.provenance import loaded_code_version, versions

    store, sha, found = ResultStore(store_dir), loaded_code_version(), json.dumps(versions(), sort_keys=True)
    now = dt.datetime.now(dt.UTC)
    for row in rows:
        params = {"block_size": config["block_size"]} if row["attention"] in config.get("block_plugins", ()) else {}
        trial = {
            **config,
            "grid": "bench",
            "task": "model_step" if model else "speed_memory",
            "scale": "bench",
            "seed": 0,
            "attention": row["attention"],
            "params": params,
            "length": row["length"],
            "dtype": row["dtype"],
            "device": row["device"],
            **({"batch": row["batch"]} if "batch" in row else {}),
        }
        trial_id = hashlib.sha256(json.dumps(trial, sort_keys=True, default=str).encode()).hexdigest()[:16]
        common = {
            "length": row["length"],
            "peak_memory_bytes": row["peak_memory_bytes"],
            "device": row["device"],
            "world_size": 1,
            "started_at": now,
            "finished_at": now,
            "git_sha": sha,
            "versions": found,
        }
        metrics = (
            [("train_step", "seconds", row["seconds"]), ("train_step", "steps_per_second", row["steps_per_second"])]
            if model
            else [
                ("forward_backward", "seconds", row["seconds"]),
                ("forward_backward", "saved_bytes", row["saved_bytes"]),
                *_detail_metrics(row),
            ]
        )
        store.write_trial(trial_id, rows_for_trial(trial_id, trial, metrics=metrics, error=None, common=common))
    return len(rows)


DETAIL_METRICS = (  # (split, metric, row field) of a detailed (CUDA) row
    ("forward", "seconds", "forward_seconds"),
    ("forward", "roofline_share", "roofline_share_forward"),
    ("forward_backward", "idle_share", "idle_share"),
    ("forward_backward", "launches", "launches"),
    ("forward_backward", "roofline_share", "roofline_share"),
    ("forward_backward", "flops", "flops"),
)


def _detail_metrics(row: dict[str, Any]) -> list[tuple[str, str, float]]:
    """The detailed row's extra metrics, those it has a finite value for."""
    return [
        (split, metric, float(row[field]))
        for split, metric, field in DETAIL_METRICS
        if field in row and row[field] == row[field]  # NaN: not computed (no FLOP count or unknown peak)
    ]
