"""How the report sees the store: one record per trial with its label (as the paper writes it), the attributes a
paper row is matched on, its column setting and its context, plus the statistics and number formats of the cells.

A trial's *context* is everything in its config that is neither its attention, its seed nor a column setting (scale,
training, task parameters): seeds of different experiments must never be averaged together.
"""

from __future__ import annotations

import inspect
import json
import math
from functools import cache
from typing import Any

import pandas as pd
from scipy import stats

PRETTY = {
    "vanilla": "Transformer",
    "local": "Local Attention",
    "sparse": "Sparse Transformer",
    "sinkhorn": "Sinkhorn",
    "sortcut": "SortCut Sinkhorn",
    "sinkhorn_mixture": "Sinkhorn Mixture",
    "sinkformer": "Sinkformer",
    "routing": "Routing Transformer",
    "sbm": "SBM-Transformer",
}
LOWER_IS_BETTER = {"loss", "edit_distance", "perplexity", "bpc", "bpd"}
PERCENT = {"accuracy", "exact_match"}  # stored as fractions, shown in % as the paper prints them
METRIC_LABEL = {"exact_match": "EM (%)", "accuracy": "accuracy (%)", "edit_distance": "edit dist."}
DIGITS = {"edit_distance": 4, "loss": 4, "perplexity": 2, "bpc": 3, "bpd": 3, "accuracy": 2, "exact_match": 2}
LM_TASKS = {"lm_subword", "lm_char"}
LABELLED_TASKS = {"classify", "nli"}
SINKHORN_FAMILY = {"sinkhorn", "sortcut", "sinkhorn_mixture"}
SORTNET_VARIANT = {"relu_linear_relu_linear": 1, "linear_relu_linear": 2, "relu": 3, "linear": 4}  # Table 8 rows
MODEL_DIMS = ("layers", "dim", "heads", "mlp_dim")
SPEED_TASK = "speed_memory"
SPEED_LABEL = "speed and memory sweep (attnbench bench)"


def attention_label(attention: str, params: dict[str, Any], tie_kv: bool = False) -> str:
    """``sinkhorn`` with block_size 32 -> ``Sinkhorn (32)``, SortCut -> ``(budget x block)``; others in brackets."""
    name = PRETTY.get(attention, attention)
    block, budget = params.get("block_size"), params.get("budget")
    shown = {"block_size"}
    if block is not None and budget is not None:
        name += f" ({budget}x{block})"
        shown.add("budget")
    elif block is not None:
        name += f" ({block})"
    rest = [f"{k}={v}" for k, v in sorted(params.items()) if k not in shown]
    if tie_kv:
        rest.append("K=V")
    return f"{name} [{', '.join(rest)}]" if rest else name


@cache
def _plugin_defaults(attention: str) -> tuple[tuple[str, Any], ...]:
    try:
        import attentions

        found = attentions.parameters(attention)
    except ValueError:  # a plugin this process has not loaded (--plugins DIR): only its stored parameters are known
        return ()
    return tuple((k, p.default) for k, p in found.items() if p.default is not inspect.Parameter.empty)


def effective_params(attention: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters a trial ran with: the stored (grid) ones over the plugin's defaults (``sinkhorn: {}`` ran
    with ``block_size=32``). Defaults are the registered plugin's, so a plugin that is not loaded keeps its own."""
    return {**dict(_plugin_defaults(attention)), **params}


def shown_params(trials: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per trial (group, attention, stored params): what its label shows. The block size always (defaults included),
    every parameter the grid set, and every parameter whose effective value differs between trials of the same
    attention in the same group (one grid's experiment), so rows that differ never share a label and a default is
    never hidden behind a bare name."""
    effective = [effective_params(a, p) for _, a, p in trials]
    seen: dict[tuple[str, str], dict[str, set[str]]] = {}
    for (group, attention, _), values in zip(trials, effective, strict=True):
        for key, value in values.items():
            text = json.dumps(value, sort_keys=True, default=str)
            seen.setdefault((group, attention), {}).setdefault(key, set()).add(text)
    shown = []
    for (group, attention, params), values in zip(trials, effective, strict=True):
        varying = {k for k, v in seen.get((group, attention), {}).items() if len(v) > 1}
        keep = set(params) | varying | {"block_size", "budget"}
        shown.append({k: v for k, v in values.items() if k in keep})
    return shown


def metric_range(metric: str) -> tuple[float | None, float | None]:
    """The values a metric can take, as displayed (percent metrics in %): where a drawn interval is cut off."""
    if metric in PERCENT:
        return 0.0, 100.0
    if metric == "perplexity":
        return 1.0, None
    if metric in LOWER_IS_BETTER:  # losses, bits and edit distance are never negative
        return 0.0, None
    return None, None


def clipped_interval(metric: str, mean: float, half: float) -> tuple[float, float]:
    """``mean - half`` and ``mean + half`` cut to the metric's range (with 2 seeds a t-interval easily leaves it)."""
    low, high = metric_range(metric)
    lower, upper = mean - half, mean + half
    if low is not None:
        lower, upper = max(lower, low), max(upper, low)
    if high is not None:
        lower, upper = min(lower, high), min(upper, high)
    return lower, upper


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean, half-width of the 95% t-interval (nan for a single seed), and the count."""
    n = int(values.count())
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, n
    half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return mean, half, n


def fmt(metric: str, value: float | None) -> str:
    """A value as the paper prints its metric (percent for accuracy and exact match)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    digits = DIGITS.get(metric)
    text = f"{value:.{digits}f}" if digits is not None else f"{value:.4g}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # -0.00 reads as 0.00


def last_line(error: Any) -> str:
    """The last line of a stored traceback: usually the exception and its message."""
    lines = str(error or "").strip().splitlines()
    return lines[-1] if lines else ""


def scaled(metric: str, value: float) -> float:
    return value * 100 if metric in PERCENT else value


def dataset_name(data: Any) -> str:
    """The data set of a classify/nli trial, read from its ``data`` path (the tasks detect it from the layout)."""
    if data is None:
        return "embedded"
    path = str(data).lower()
    pairs = (("imdb", "imdb"), ("sst", "sst"), ("multinli", "mnli"), ("multi_nli", "mnli"), ("mnli", "mnli"))
    for needle, name in (*pairs, ("snli", "snli")):
        if needle in path:
            return name
    return str(data).rstrip("/").rsplit("/", 1)[-1] or str(data)


def model_dims(model: dict[str, Any]) -> str:
    parts = [
        f"{model[k]}{suffix}"
        for k, suffix in zip(MODEL_DIMS, ("L", "d", "h", "ff"), strict=True)
        if model.get(k) is not None
    ]
    return " ".join(parts) or "default"


def task_setting(task: str, task_params: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """What makes a column (beside split and metric): LM model size, data set and level, model dimensions."""
    setting: dict[str, Any] = {"task": task}
    if task in LM_TASKS:
        setting["size"] = task_params.get("size", "base")
    if task in LABELLED_TASKS:
        setting["dataset"] = dataset_name(task_params.get("data"))
        setting["level"] = task_params.get("level", "word")
    setting["model"] = model_dims(model)
    return setting


def context_of(config: dict[str, Any]) -> dict[str, Any]:
    """The experiment a trial belongs to, apart from its attention, seed and column setting."""
    model = config.get("model") or {}
    return {
        "scale": config.get("scale"),
        "task_params": {
            k: v for k, v in (config.get("task_params") or {}).items() if k not in ("size", "data", "level")
        },
        "model": {k: v for k, v in model.items() if k not in (*MODEL_DIMS, "tie_kv")},
        # where and how often a trial checkpointed cannot change its numbers: never a reason to split a table
        "train": {
            k: v for k, v in (config.get("train") or {}).items() if k not in ("checkpoint_every", "keep_checkpoints")
        },
    }


def row_attrs(attention: str, params: dict[str, Any], tie_kv: bool) -> dict[str, Any]:
    """What a paper row's ``match`` is compared with; ``variant`` numbers Table 8's rows (sinkhorn family only)."""
    variant = None
    if attention in SINKHORN_FAMILY:
        if tie_kv:
            variant = 5
        elif params.get("iterations") == 0:
            variant = 6
        else:
            variant = SORTNET_VARIANT.get(params.get("sortnet", "linear"))
    return {
        "attention": attention,
        "block_size": params.get("block_size"),
        "budget": params.get("budget"),
        "tie_kv": tie_kv,
        "variant": variant,
        "plain": not tie_kv and variant in (None, 4),
    }


def parse_json(text: Any) -> dict[str, Any]:
    """A stored JSON object (params, config); anything else reads as empty rather than failing the page."""
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def data_caption(data: Any) -> str | None:
    """The data a trial used, from the store's ``data`` column (JSON provenance); None when generated or unknown."""
    info = parse_json(data)
    source, size = info.get("source"), info.get("characters") or info.get("images")
    if source == "hf":
        revision = str(info.get("revision") or "")[:12]
        return f"hf:{info.get('id')}" + (f"@{revision}" if revision else "")
    if source == "path":
        return f"{info.get('path')} (sha256 {str(info.get('sha256'))[:12]})"
    if source == "embedded":
        unit = "chars" if info.get("characters") else "images"
        return f"{info.get('name')}" + (f" ({size:,} {unit})" if isinstance(size, int) else "")
    return None


def trial_info(frame: pd.DataFrame) -> pd.DataFrame:
    """One record per trial (ok or failed) with its parsed config, label, row attributes, setting and context."""
    records = []
    groups = list(frame.groupby("trial_id", sort=True))
    firsts = [group.iloc[0] for _, group in groups]
    contexts = []
    for first in firsts:
        context = context_of(parse_json(first["config"]))
        if (data := data_caption(first.get("data"))) is not None:
            context["data"] = data  # trials on different data are never pooled, and the setup line says which
        contexts.append(context)
    # an experiment: one grid's trials of one task and context (a sweep varies its parameters inside one grid)
    keys = [
        json.dumps([f["grid"], f["task"], c], sort_keys=True, default=str)
        for f, c in zip(firsts, contexts, strict=True)
    ]
    shown = shown_params([(k, str(f["attention"]), parse_json(f["params"])) for k, f in zip(keys, firsts, strict=True)])
    for (trial_id, group), first, label_params, context in zip(groups, firsts, shown, contexts, strict=True):
        config, params = parse_json(first["config"]), parse_json(first["params"])
        model = config.get("model") or {}
        tie_kv = bool(model.get("tie_kv", False))
        records.append(
            {
                "trial_id": trial_id,
                "status": first["status"],
                "error": first["error"],
                "grid": first["grid"],
                "task": first["task"],
                "scale": first["scale"],
                "seed": first["seed"],
                "attention": first["attention"],
                "params": params,
                "shown": label_params,  # what the label names: set by the grid, distinguishing, or the block size
                "config": config,
                "finished_at": first["finished_at"],
                "label": SPEED_LABEL
                if first["task"] == SPEED_TASK
                else attention_label(str(first["attention"]), label_params, tie_kv),
                "attrs": row_attrs(str(first["attention"]), effective_params(str(first["attention"]), params), tie_kv),
                "setting": task_setting(str(first["task"]), config.get("task_params") or {}, model),
                "context": json.dumps(context, sort_keys=True, default=str),
                "memory": group["peak_memory_bytes"].dropna().mean(),
                "speed": group["tokens_per_second"].dropna().mean(),
            }
        )
    return pd.DataFrame.from_records(
        records,
        columns=[
            "trial_id",
            "status",
            "error",
            "grid",
            "task",
            "scale",
            "seed",
            "attention",
            "params",
            "shown",
            "config",
            "finished_at",
            "label",
            "attrs",
            "setting",
            "context",
            "memory",
            "speed",
        ],
    )


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in sorted(value.items()):
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


SELECTED = {
    "last": "test metrics of the last step (train.select=last)",
    "best": "test metrics of the best validation step (train.select=best)",
}


def context_captions(contexts: list[str], only_differing: bool = False) -> dict[str, str]:
    """A short caption per context: scale, steps, batch, task parameters, and whatever differs between them (only
    that with ``only_differing``, for a legend that tells lines apart)."""
    flat = {c: flatten(json.loads(c)) for c in contexts}
    keys = {k for f in flat.values() for k in f}
    differing = {k for k in keys if len({json.dumps(f.get(k), default=str) for f in flat.values()}) > 1}
    always = [] if only_differing else ["data", "scale", "train.steps", "train.batch_size", "train.lr", "train.select"]
    captions = {}
    for context, items in flat.items():
        task_keys = [] if only_differing else sorted(k for k in items if k.startswith("task_params."))
        shown = always + task_keys + sorted(differing - set(always))
        parts = [
            SELECTED[items[k]] if k == "train.select" else f"{k}={items[k]}"
            for k in dict.fromkeys(shown)
            if k in items and items[k] not in (None, {}, [])
        ]
        captions[context] = ", ".join(parts)
    return captions
