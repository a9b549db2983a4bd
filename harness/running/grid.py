"""Grid files: load YAML, validate into frozen config objects, expand into trials with stable ids.

Every problem is a ``GridError`` whose message names the file and the field (``smoke.yaml: attentions.local.blok_size:
...``), raised before anything runs or is stored. Lists in an attention's parameters are swept as a cartesian product;
scalars are fixed. ``include: other.yaml`` loads another grid and overrides it key by key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

import attentions
import tasks
from harness.model import COMPILE_MODES
from harness.running.overrides import Override, blame
from harness.running.overrides import apply as apply_overrides

GRIDS_DIR = Path(__file__).parent.parent / "grids"
# Fields of a trial's config that cannot change its result, left out of the trial id (section -> keys): where and how
# often a trial checkpoints does not change its metrics, because a resumed trial ends exactly as an uninterrupted one.
NOT_IN_ID = {
    "resources": ("cpus", "max_retries", "stall_minutes", "timeout_minutes"),
    "train": ("checkpoint_every", "keep_checkpoints"),
}
# Fields added after results were stored, left out of the trial id while at their default: a stored trial keeps its id
# (and a re-run grid finds it) when such a field appears; setting one makes a new trial.
ID_DEFAULTS: dict[str, dict[str, Any]] = {"train": {"compile": False}}


class GridError(ValueError):
    """A grid that cannot run; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelOverrides(_Strict):
    """Overrides of the task's model size at its scale; unset fields keep the task's value."""

    layers: int | None = Field(None, gt=0, description="Transformer blocks per stack")
    dim: int | None = Field(None, gt=0, description="model width")
    heads: int | None = Field(None, gt=0, description="attention heads")
    mlp_dim: int | None = Field(None, gt=0, description="hidden width of the MLP")
    dropout: float | None = Field(None, ge=0, lt=1, description="dropout rate")
    tie_kv: bool = Field(False, description="K = V: one projection serves as keys and values (Table 8)")


class TrainConfig(_Strict):
    steps: int = Field(100, gt=0, description="optimizer steps")
    batch_size: int = Field(16, gt=0, description="global batch size (split across workers)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    warmup: int = Field(0, ge=0, description="linear warm-up steps, then cosine decay to 10%")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="gradient norm clipping (0 = off)")
    eval_batch_size: int = Field(64, gt=0)
    eval_every: int = Field(0, ge=0, description="score the val split every N steps (0 = only at the end)")
    checkpoint_every: int = Field(0, ge=0, description="save the whole training state every N steps (0 = never)")
    select: Literal["last", "best"] = Field("last", description="test the last step, or the best val step")
    keep_checkpoints: bool = Field(False, description="keep a trial's checkpoints after its result is stored")
    deepspeed: dict[str, Any] = Field(default_factory=dict, description="merged into the DeepSpeed config")
    compile: bool | str = Field(
        False,
        description="torch.compile the model (static shapes) to fuse small operators; each new shape pays a compile, "
        "and at batch 1 on an H200 it sped sinkhorn up 1.12x but slowed vanilla and local (README). "
        "'reduce-overhead': the same, each compiled graph replayed as a CUDA graph on a GPU",
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_mode(cls, value: Any) -> bool | str:
        if not (isinstance(value, bool) or value in COMPILE_MODES[1:]):
            raise ValueError(f"must be true, false or 'reduce-overhead' (CUDA graphs), got {value!r}")
        return value

    @model_validator(mode="after")
    def _best_needs_validation(self) -> TrainConfig:
        if self.select == "best" and not self.eval_every:
            raise ValueError("select: best needs eval_every > 0 (the steps at which val picks the checkpoint)")
        return self


class Resources(_Strict):
    cpus: float = Field(1, gt=0, description="Ray CPUs per trial (per worker when workers > 1)")
    gpus: float = Field(0, ge=0, description="Ray GPUs per trial (per worker)")
    workers: int = Field(1, gt=0, description="processes per trial; > 1 runs a Ray Train TorchTrainer")
    max_retries: int = Field(
        2, ge=0, description="retries (from the last checkpoint) of a trial whose worker died or that was cancelled"
    )
    stall_minutes: float = Field(
        0, ge=0, description="cancel a trial whose step has not moved for this long (0 = never); then retry it"
    )
    timeout_minutes: float = Field(
        0, ge=0, description="cancel an attempt of a trial still running after this long (0 = never); then retry it"
    )


class Grid(_Strict):
    name: str
    tasks: list[str | dict[str, dict[str, Any]]] = Field(min_length=1)
    scale: Literal["smoke", "small", "paper"] = "smoke"
    seeds: list[int] = Field([0], min_length=1)
    attentions: dict[str, dict[str, Any]] = Field(min_length=1)
    model: ModelOverrides = ModelOverrides()
    train: TrainConfig = TrainConfig()
    resources: Resources = Resources()
    exclude: list[dict[Literal["task", "attention"], str]] = Field(
        [], description="cells left out of the product: {task: NAME, attention: NAME}, either key alone matches all"
    )


@dataclass(frozen=True)
class Trial:
    """One cell of a grid: everything that defines a run. ``trial_id`` is a stable hash of ``config()``."""

    grid: str
    task: str
    task_params: dict[str, Any]
    scale: str
    seed: int
    attention: str
    params: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    resources: dict[str, Any]

    def config(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def trial_id(self) -> str:
        identity = self.config()
        for section, keys in NOT_IN_ID.items():
            identity[section] = {k: v for k, v in identity[section].items() if k not in keys}
        for section, defaults in ID_DEFAULTS.items():
            identity[section] = {k: v for k, v in identity[section].items() if not (k in defaults and defaults[k] == v)}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.task}:{self.attention}" + (f"({params})" if params else "") + f":seed={self.seed}"


def trial_id_of(config: dict[str, Any]) -> str:
    """The id of a trial given its ``config()`` (what a worker receives and the store keeps as JSON)."""
    return Trial(**config).trial_id


def resolve_path(grid: str | Path) -> Path:
    """A grid argument is a path, or the name of a shipped grid (``smoke`` -> harness/grids/smoke.yaml)."""
    path = Path(grid)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = GRIDS_DIR / f"{grid}.yaml"
    if shipped.exists():
        return shipped
    raise GridError(f"{grid}: no such grid file, and no shipped grid of that name (see `attnbench list`)")


def shipped_grids() -> list[str]:
    return sorted(str(p.relative_to(GRIDS_DIR).with_suffix("")) for p in GRIDS_DIR.rglob("*.yaml"))


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` wins key by key; nested mappings are merged, not replaced (grid includes, DeepSpeed sections)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in chain:
        raise GridError(f"{path}: include: cycle through {' -> '.join(str(p) for p in chain)}")
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise GridError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise GridError(f"{path}: a grid must be a mapping of keys (name, tasks, attentions, ...)")
    include = data.pop("include", None)
    if include is None:
        return data
    if not isinstance(include, str):
        raise GridError(f"{path}: include: must be a file path, got {include!r}")
    base = _read_yaml(path.parent / include, chain + (path.resolve(),))
    merged = deep_merge(base, data)
    return _drop_nulled_attentions(merged, base, data)


def _drop_nulled_attentions(merged: dict, base: dict, override: dict) -> dict:
    """``attentions: {sparse: null}`` in an including grid removes the included grid's ``sparse`` row: merging key by
    key could otherwise only add rows, never run a subset of them."""
    nulled = override.get("attentions")
    inherited = base.get("attentions")
    if not (isinstance(nulled, dict) and isinstance(inherited, dict)):
        return merged
    drop = {name for name, params in nulled.items() if params is None and name in inherited}
    if drop:
        merged["attentions"] = {name: params for name, params in merged["attentions"].items() if name not in drop}
    return merged


def _where(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith(("str", "dict[")))


def load(grid: str | Path, overrides: Sequence[Override] = ()) -> Grid:
    """Read and validate a grid file (or shipped grid name) with ``--set`` ``overrides`` applied; raises
    ``GridError`` naming file and field (and the ``--set`` it came from)."""
    path = resolve_path(grid)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    try:
        data, _ = apply_overrides(data, overrides)
        return _validate(path, data)
    except GridError as exc:
        raise GridError(blame(str(exc), overrides)) from None


def override_changes(grid: str | Path, overrides: Sequence[Override]) -> list[tuple[Override, Any]]:
    """(override, the grid's value before it) pairs, for ``--dry-run`` to show what ``--set`` changed."""
    path = resolve_path(grid)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    return apply_overrides(data, overrides)[1]


def _validate(path: Path, data: dict[str, Any]) -> Grid:
    try:
        parsed = Grid.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        value = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
        raise GridError(f"{path}: {_where(err['loc'])}: {err['msg']}{value}{more}") from None
    _check_names(path, parsed)
    _check_exclude(path, parsed)
    return parsed


def _task_entries(grid: Grid) -> list[tuple[str, dict[str, Any]]]:
    entries = []
    for entry in grid.tasks:
        if isinstance(entry, str):
            entries.append((entry, {}))
        else:
            entries.extend((name, params or {}) for name, params in entry.items())
    return entries


def _check_names(path: Path, grid: Grid) -> None:
    for name, params in _task_entries(grid):
        try:
            tasks.check_params(name, params)
        except ValueError as exc:
            raise GridError(f"{path}: tasks.{name}: {exc}") from None
    for name, params in grid.attentions.items():
        try:
            attentions.check_params(name, params)
        except ValueError as exc:
            raise GridError(f"{path}: attentions.{name}: {exc}") from None
        signature = attentions.parameters(name)
        for key, value in params.items():
            annotation = signature[key].annotation
            for item in value if isinstance(value, list) else [value]:
                try:
                    TypeAdapter(annotation).validate_python(item, strict=True)
                except ValidationError as exc:
                    raise GridError(
                        f"{path}: attentions.{name}.{key}: {exc.errors()[0]['msg']} (got {item!r})"
                    ) from None


def _check_exclude(path: Path, grid: Grid) -> None:
    """Each ``exclude`` entry names a task and/or an attention of this grid (a typo must not exclude nothing)."""
    known = {"task": {name for name, _ in _task_entries(grid)}, "attention": set(grid.attentions)}
    for index, entry in enumerate(grid.exclude):
        if not entry:
            raise GridError(f"{path}: exclude.{index}: name a task, an attention or both")
        for key, name in entry.items():
            if name not in known[key]:
                raise GridError(f"{path}: exclude.{index}.{key}: {name!r} is not one of the grid's {key}s")


def _excluded(grid: Grid, task: str, attention: str) -> bool:
    cell = {"task": task, "attention": attention}
    return any(all(cell[k] == v for k, v in entry.items()) for entry in grid.exclude)


def _sweep(params: dict[str, Any]) -> list[dict[str, Any]]:
    keys = sorted(params)
    values = [params[k] if isinstance(params[k], list) else [params[k]] for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def expand(grid: Grid, path: str | Path = "<grid>") -> list[Trial]:
    """All trials of a grid, each checked by building its plugin(s) once (so invalid cells fail before running).
    A cell that runs but probably not as meant (a block as long as the sequence) raises a ``GridWarning``."""
    trials = []
    overrides = grid.model.model_dump(exclude_none=True)
    for task_name, task_params in _task_entries(grid):
        try:
            spec = tasks.build(task_name, scale=grid.scale, seed=0, **task_params).spec
        except ValueError as exc:
            raise GridError(f"{path}: tasks.{task_name}: {exc}") from None
        model = {**asdict(spec.model), **overrides}
        for name, swept in grid.attentions.items():
            if _excluded(grid, task_name, name):
                continue
            for params in _sweep(swept):
                _check_cell(path, task_name, spec, model, name, params)
                _warn_oversized_block(path, task_name, spec, name, params)
                for seed in grid.seeds:
                    trials.append(
                        Trial(
                            grid=grid.name,
                            task=task_name,
                            task_params=dict(task_params),
                            scale=grid.scale,
                            seed=seed,
                            attention=name,
                            params=params,
                            model=model,
                            train=grid.train.model_dump(),
                            resources=grid.resources.model_dump(),
                        )
                    )
    return trials


class GridWarning(UserWarning):
    """A grid cell that runs, but probably not as its author meant (reported, never fatal)."""


def _warn_oversized_block(path, task: str, spec: tasks.TaskSpec, name: str, params: dict[str, Any]) -> None:
    """A block that holds the task's longest sequence makes a block method dense there: Sinkhorn has one block to
    sort, local attention is vanilla. Easy to miss when the block size is the plugin's default (``sinkhorn: {}``)."""
    declared = attentions.parameters(name).get("block_size")
    block = params.get("block_size", None if declared is None else declared.default)
    if not isinstance(block, int) or isinstance(block, bool) or block < spec.max_len:
        return
    origin = "" if "block_size" in params else " (the plugin's default)"
    warnings.warn(
        GridWarning(
            f"{path}: attentions.{name}: block_size={block}{origin} on task {task} covers its longest sequence "
            f"({spec.max_len}) in one block, so the attention is dense there; set a smaller block_size"
        ),
        stacklevel=3,
    )


def _check_cell(
    path, task: str, spec: tasks.TaskSpec, model: dict[str, Any], name: str, params: dict[str, Any]
) -> None:
    """Build the plugin in every causal mode the task's model needs; a ValueError becomes a GridError."""
    modes = {"lm": [True], "classify": [False], "seq2seq": [False, True]}[spec.kind]
    if model["dim"] % model["heads"]:
        raise GridError(f"{path}: model: dim={model['dim']} is not divisible by heads={model['heads']}")
    for causal in modes:
        try:
            attentions.build(
                name,
                heads=model["heads"],
                head_dim=model["dim"] // model["heads"],
                max_len=spec.max_len,
                causal=causal,
                **params,
            )
        except ValueError as exc:
            raise GridError(f"{path}: attentions.{name} {params or ''} on task {task} ({spec.kind}): {exc}") from None


def load_trials(grid: str | Path, overrides: Sequence[Override] = ()) -> tuple[Grid, list[Trial]]:
    """``load`` then ``expand``: what ``attnbench run`` does before touching Ray or the store."""
    path = resolve_path(grid)
    parsed = load(path, overrides)
    try:
        return parsed, expand(parsed, path)
    except GridError as exc:
        raise GridError(blame(str(exc), overrides)) from None
