"""``--set KEY=VALUE``: change any key of a grid from the command line, without copying its YAML file.

A key is a dotted path into the grid as written (``train.steps``, ``seeds``, ``attentions.sinkhorn.temperature``); a
value is parsed as YAML (``2000`` is an int, ``[0, 1]`` a list, ``0.5`` a float, ``best`` a string). Overrides are
applied to the grid's mapping after its ``include:`` chain is merged and before it is validated, so they go through
the grid's own checks and reach every trial's config, and hence its id: a changed step count is a different trial.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

MISSING = object()


class OverrideError(ValueError):
    """A ``--set`` that cannot apply; the message names the key."""


@dataclass(frozen=True)
class Override:
    """One ``--set``: the dotted key, the parsed value and the text the user gave."""

    key: str
    value: Any
    text: str

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.key.split("."))


def parse(items: Sequence[str]) -> list[Override]:
    """``["train.steps=2000", ...]`` -> overrides; a later ``--set`` of the same key wins."""
    parsed: dict[str, Override] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OverrideError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=2000")
        if any(not part for part in key.split(".")):
            raise OverrideError(f"--set {key}: empty part in the dotted key")
        try:
            value = yaml.safe_load(text) if text.strip() else MISSING
        except yaml.YAMLError as exc:
            raise OverrideError(f"--set {key}: value {text!r} is not valid YAML ({exc.problem})") from None
        if value is MISSING:
            raise OverrideError(f"--set {key}: no value after '='")
        parsed[key] = Override(key, value, text.strip())
    return list(parsed.values())


def apply(data: dict[str, Any], overrides: Sequence[Override]) -> tuple[dict[str, Any], list[tuple[Override, Any]]]:
    """A copy of the grid mapping ``data`` with every override set, and (override, previous value or MISSING) pairs.

    Sections (``train``, ``model``, ``resources``) are created when the grid leaves them to their defaults; unknown
    keys are left for the grid's validation to name. An attention must already be in the grid: ``--set`` changes a
    sweep, it does not add a plugin to it."""
    out = _copy(data)
    changes = []
    for override in overrides:
        path = override.path
        if path[0] == "attentions" and len(path) > 1 and path[1] not in (out.get("attentions") or {}):
            names = ", ".join(sorted(out.get("attentions") or {})) or "none"
            raise OverrideError(
                f"--set {override.key}: attention {path[1]!r} is not in the grid (its attentions: {names})"
            )
        node = out
        for depth, part in enumerate(path[:-1]):
            child = node.get(part, MISSING)
            if child is MISSING or child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise OverrideError(
                    f"--set {override.key}: {where} is a {type(child).__name__}, not a mapping; set it whole "
                    f"(e.g. --set {where}=...)"
                )
            node = child
        changes.append((override, node.get(path[-1], MISSING)))
        node[path[-1]] = override.value
    return out, changes


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def blame(message: str, overrides: Sequence[Override]) -> str:
    """Append which ``--set`` a grid error is about, when the field it names is one the user set (or lies above or
    below one): the grid's messages read ``FILE: FIELD: problem``."""
    for length in range(max((len(o.path) for o in overrides), default=0), 0, -1):
        for override in overrides:
            prefix = ".".join(override.path[:length])
            if len(override.path) >= length and any(f": {prefix}{end}" in message for end in (":", ".", " ")):
                return f"{message} [from --set {override.key}={override.text}]"
    return message


def describe(changes: Sequence[tuple[Override, Any]]) -> list[str]:
    """One line per override for ``--dry-run``: the key, the grid's value and the new one."""
    lines = []
    for override, before in changes:
        was = "unset (default)" if before is MISSING else json.dumps(before, default=str)
        lines.append(f"--set {override.key}: {was} -> {override.text}")
    return lines
