"""The published numbers of the Sparse Sinkhorn Attention paper, kept once as data (harness/data/paper_results.yaml).

The report puts a paper value beside one of ours when the paper column's ``where`` matches our column (split, metric,
task and the task's setting) and the paper row's ``match`` matches our row (attention, block size, budget, variant).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

SectionKind = Literal["table", "ablation", "sweep", "speed"]
KINDS = ("table", "ablation", "sweep", "speed")


@dataclass(frozen=True)
class PaperColumn:
    """One column of a paper table; ``where`` selects the column of ours it stands beside."""

    id: str
    label: str
    where: dict[str, Any]


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table as the paper writes it; ``match`` selects the rows of ours it stands beside."""

    label: str
    match: dict[str, Any]
    values: dict[str, float]


@dataclass(frozen=True)
class Section:
    """A section of the report: a paper table, figure, or one of our own (ListOps, speed and memory)."""

    id: str
    kind: SectionKind
    title: str
    caption: str
    tasks: tuple[str, ...] = ()
    param: str | None = None
    columns: tuple[PaperColumn, ...] = ()
    rows: tuple[PaperRow, ...] = ()
    setup: tuple[tuple[str, str], ...] = ()  # the paper's (length, steps, data), shown beside the run's


def matches(selector: dict[str, Any], attrs: dict[str, Any]) -> bool:
    """True when every key of ``selector`` has the same value in ``attrs`` (a key left out matches anything)."""
    return all(attrs.get(key) == value for key, value in selector.items())


def _section(entry: dict[str, Any], source: str) -> Section:
    where = f"{source}: section {entry.get('id', '?')!r}"
    if entry.get("kind") not in KINDS:
        raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}, got {entry.get('kind')!r}")
    columns = tuple(PaperColumn(c["id"], c["label"], dict(c["where"])) for c in entry.get("columns") or [])
    ids = {c.id for c in columns}
    rows = []
    for row in entry.get("rows") or []:
        unknown = set(row["values"]) - ids
        if unknown:
            raise ValueError(f"{where}: row {row['label']!r} has values for unknown columns {sorted(unknown)}")
        rows.append(PaperRow(row["label"], dict(row["match"]), {k: float(v) for k, v in row["values"].items()}))
    return Section(
        id=entry["id"],
        kind=entry["kind"],
        title=entry["title"],
        caption=" ".join(str(entry.get("caption", "")).split()),
        tasks=tuple(entry.get("tasks") or ()),
        param=entry.get("param"),
        columns=columns,
        rows=tuple(rows),
        setup=_setup(entry.get("setup"), where),
    )


SETUP_FIELDS = ("length", "steps", "data")


def _setup(setup: Any, where: str) -> tuple[tuple[str, str], ...]:
    if setup is None:
        return ()
    if not isinstance(setup, dict) or set(setup) - set(SETUP_FIELDS):
        raise ValueError(f"{where}: setup must be a mapping of {', '.join(SETUP_FIELDS)}, got {setup!r}")
    return tuple((k, " ".join(str(setup[k]).split())) for k in SETUP_FIELDS if k in setup)


def load_sections(path: str | Path | None = None) -> tuple[Section, ...]:
    """The report's sections in order, with the paper's values; ``path`` overrides the shipped YAML (tests)."""
    if path is None:
        return _shipped()
    return _parse(Path(path).read_text(), str(path))


@cache
def _shipped() -> tuple[Section, ...]:
    text = resources.files("harness").joinpath("data", "paper_results.yaml").read_text(encoding="utf-8")
    return _parse(text, "harness/data/paper_results.yaml")


def _parse(text: str, source: str) -> tuple[Section, ...]:
    data = yaml.safe_load(text)
    sections = tuple(_section(entry, source) for entry in data["sections"])
    seen: set[str] = set()
    for section in sections:
        if section.id in seen:
            raise ValueError(f"{source}: section id {section.id!r} appears twice")
        seen.add(section.id)
    return sections
