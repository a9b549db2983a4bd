"""Speed and memory regression checks of a sweep (``harness.benchmarking.bench``) against a committed baseline.

Machines are noisy and differ, so time is never compared in seconds: each plugin's time is divided by ``vanilla``'s
time at the same length *in the same run*, and that ratio is compared with the baseline's ratio (so is a whole
training step's time in the model-level sweep, ``bench --model``, kept in the baseline's ``model`` section). Memory,
which the measurement makes deterministic, is compared in bytes. The complexity check fits the exponent of peak memory
against length for every plugin that declares ``linear_memory`` and fails one that drifts above ``MAX_LINEAR_EXPONENT``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import attentions
from harness.stats import fit_exponent

REFERENCE = "vanilla"
MAX_LINEAR_EXPONENT = 1.3
MEMORY_FIELDS = ("peak_memory_bytes", "saved_bytes")
Section = Literal["attention", "model"]  # the attention-alone sweep, or the model-level one (``bench --model``)


@dataclass(frozen=True)
class Tolerance:
    """How much worse than the baseline a plugin may get before the check fails."""

    time_ratio: float = 1.5  # its time / vanilla's time may grow to 1.5x the baseline's ratio
    memory: float = 0.10  # peak memory and bytes saved for backward may grow by 10% ...
    memory_slack_bytes: int = 64 * 1024  # ... plus 64 KiB, so tiny figures do not fail on allocator rounding


def time_ratios(rows: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """(attention, length) -> fastest time / vanilla's fastest time at that length, from one run."""
    reference = {row["length"]: row["seconds_min"] for row in rows if row["attention"] == REFERENCE}
    missing = sorted({row["length"] for row in rows} - set(reference))
    if missing:
        raise ValueError(f"the sweep needs {REFERENCE!r} at every length to judge time (missing at {missing})")
    return {(row["attention"], row["length"]): row["seconds_min"] / reference[row["length"]] for row in rows}


def make_baseline(
    rows: list[dict[str, Any]],
    config: dict[str, Any],
    tolerance: Tolerance = Tolerance(),
    *,
    again: list[dict[str, Any]] | None = None,
) -> dict:
    """The JSON-able baseline of a sweep: per plugin and length, its time ratio and memory figures (the model-level
    sweep has no ``saved_bytes``). With ``again`` (a second sweep of the same cases), each time ratio is the slower of
    the two runs': a baseline taken from one lucky run would fail later, ordinary runs."""
    ratios = time_ratios(rows)
    if again is not None:
        for case, ratio in time_ratios(again).items():
            ratios[case] = max(ratios.get(case, ratio), ratio)
    cases: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        cases.setdefault(row["attention"], {})[str(row["length"])] = {
            "time_ratio": ratios[(row["attention"], row["length"])],
            **{field: row[field] for field in MEMORY_FIELDS if field in row},
        }
    return {"config": config, "tolerance": asdict(tolerance), "cases": cases}


def save_baseline(path: str | Path, baseline: dict, section: Section = "attention") -> None:
    """Write one section: the attention sweep at the top level (as before), the model-level sweep under ``model``;
    the other section of an existing file is kept."""
    path = Path(path)
    old = json.loads(path.read_text()) if path.exists() else {}
    if section == "model":
        merged = {**old, "model": baseline}
    else:
        merged = {**baseline, **({"model": old["model"]} if "model" in old else {})}
    path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")


def load_baseline(path: str | Path, section: Section = "attention") -> dict:
    try:
        baseline = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{path}: baseline file not found (create one with `attnbench bench --save-baseline`)"
        ) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a valid baseline (JSON error: {exc})") from None
    if section == "model":
        if not isinstance(baseline, dict) or "model" not in baseline:
            raise ValueError(f"{path}: no model section (write one with `attnbench bench --model --save-baseline`)")
        baseline = baseline["model"]
    if not isinstance(baseline, dict) or "cases" not in baseline or "config" not in baseline:
        raise ValueError(f"{path}: not a baseline written by `attnbench bench --save-baseline` (no config/cases)")
    return baseline


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def compare(baseline: dict, rows: list[dict[str, Any]]) -> list[str]:
    """One message per regression: the plugin, the length, old versus new, and the limit it crossed."""
    return list(time_regressions(baseline, rows).values()) + memory_regressions(baseline, rows)


def time_regressions(baseline: dict, rows: list[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """(plugin, length) -> message, for every case slower relative to vanilla than the baseline allows."""
    tolerance = Tolerance(**baseline.get("tolerance", {}))
    ratios = time_ratios(rows)
    problems = {}
    for row, old in _with_baseline(baseline, rows):
        name, length = row["attention"], row["length"]
        if name == REFERENCE:
            continue
        ratio, limit = ratios[(name, length)], old["time_ratio"] * tolerance.time_ratio
        if ratio > limit:
            problems[(name, length)] = (
                f"{name} at L={length}: time {ratio:.3f}x vanilla, baseline {old['time_ratio']:.3f}x "
                f"(limit {limit:.3f}x)"
            )
    return problems


def _with_baseline(baseline: dict, rows: list[dict[str, Any]]):
    """(row, its baseline case) for every measured case the baseline holds; a new plugin or length has nothing to
    regress from."""
    for row in rows:
        old = baseline["cases"].get(row["attention"], {}).get(str(row["length"]))
        if old is not None:
            yield row, old


def memory_regressions(baseline: dict, rows: list[dict[str, Any]]) -> list[str]:
    """One message per case whose peak memory or saved activations exceed the baseline's bytes plus tolerance."""
    tolerance = Tolerance(**baseline.get("tolerance", {}))
    problems = []
    for row, old in _with_baseline(baseline, rows):
        name, length = row["attention"], row["length"]
        for field, label in (("peak_memory_bytes", "peak memory"), ("saved_bytes", "saved for backward")):
            if field not in old or field not in row:
                continue
            limit = old[field] * (1 + tolerance.memory) + tolerance.memory_slack_bytes
            if row[field] > limit:
                problems.append(
                    f"{name} at L={length}: {label} {_mib(row[field])}, baseline {_mib(old[field])} "
                    f"(limit {_mib(limit)}: +{tolerance.memory:.0%} + {tolerance.memory_slack_bytes // 1024} KiB)"
                )
    return problems


def memory_exponents(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Fitted exponent of peak memory against length, per plugin with at least two lengths."""
    by_name: dict[str, list[tuple[int, int]]] = {}
    for row in rows:
        by_name.setdefault(row["attention"], []).append((row["length"], max(row["peak_memory_bytes"], 1)))
    return {
        name: fit_exponent([length for length, _ in points], [value for _, value in points])
        for name, points in by_name.items()
        if len({length for length, _ in points}) >= 2
    }


def complexity(rows: list[dict[str, Any]], limit: float = MAX_LINEAR_EXPONENT) -> list[str]:
    """A message for every ``linear_memory`` plugin whose memory exponent exceeds ``limit``."""
    problems = []
    for name, exponent in sorted(memory_exponents(rows).items()):
        registered = name in attentions.names()
        if registered and attentions.get(name).linear_memory and exponent > limit:
            problems.append(f"{name}: peak memory grows as L^{exponent:.2f}, above L^{limit} for a block method")
    return problems
