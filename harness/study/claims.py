"""The replication study's claims as data: each is a paper sentence, the protocol (grid) that tests it, the metric and
split it is read on, and a comparison between named arms (trial selectors).

The file is ``harness/study/claims.yaml``; ``load_claims`` validates it with pydantic so a typo fails with the file,
the claim and the field, before any verdict is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

STUDY_DIR = Path(__file__).parent
CLAIMS_FILE = STUDY_DIR / "claims.yaml"
EXPECTED_FILE = STUDY_DIR / "expected_verdicts.yaml"
STUDY_RESULTS = STUDY_DIR / "results" / "replication"
PROTOCOL_DIR = STUDY_DIR.parent / "grids" / "replication"
METRICS = ("accuracy", "exact_match", "edit_distance", "perplexity", "bpc", "bpd", "loss")


class ClaimsError(ValueError):
    """A claims file that cannot be used: the message names the file, the claim and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Arm(_Strict):
    """Which trials of a protocol form one side of a comparison: the attention, its parameters exactly as the grid
    spells them (a trial whose parameters differ in any key is another arm), and whether K = V is tied."""

    attention: str
    params: dict[str, Any] = {}
    tie_kv: bool = False
    label: str | None = Field(None, description="how tables name the arm (default: the report's label)")


class Claim(_Strict):
    """One sentence of the paper, tested on one protocol.

    compare:
      better    ``a`` beats ``b`` (by at least ``margin``, in the units shown: percent for accuracy and exact match);
      worst     ``a`` is behind every arm of ``of``;  best: ``a`` is ahead of every arm of ``of``;
      within    ``a`` is within ``delta`` of ``b`` either way;
      above     ``a`` is ahead of the fixed ``value`` (chance, for instance) by at least ``margin``;
      monotone  the metric ``improves`` (or ``worsens``) from each arm of ``along`` to the next.
    """

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    source: str = Field(description="where the paper states it: Table 1, Figure 3, ...")
    sentence: str
    paper: dict[str, float | str] = Field({}, description="the paper's values, as it prints them, by its row names")
    protocol: list[str] = Field(min_length=1, description="grids: names under harness/grids/replication, or paths")
    task: str | None = Field(None, description="read only this task's trials, where a protocol grid runs several")
    metric: Literal[METRICS]  # type: ignore[valid-type]
    split: str = "test"
    step: int | None = Field(None, description="read the periodic row of this step (split val) instead of the final")
    compare: Literal["better", "worst", "best", "within", "monotone", "above"]
    a: str | None = None
    b: str | None = None
    of: list[str] = []
    along: list[str] = []
    direction: Literal["improves", "worsens"] = "improves"
    margin: float = Field(0.0, ge=0)
    delta: float | None = Field(None, gt=0)
    value: float | None = Field(None, description="above: the fixed value in the units shown (chance: 50 of 2 classes)")
    retests: str | None = Field(
        None, description="the id of a claim this one repeats on another protocol (more seeds, another data generator)"
    )
    note: str = ""

    @model_validator(mode="after")
    def _fields_of_the_comparison(self) -> Claim:
        needs = {
            "better": ("a", "b"),
            "within": ("a", "b", "delta"),
            "worst": ("a", "of"),
            "best": ("a", "of"),
            "monotone": ("along",),
            "above": ("a", "value"),
        }[self.compare]
        for field in needs:
            if getattr(self, field) in (None, []):
                raise ValueError(f"compare: {self.compare} needs `{field}`")
        if self.compare == "monotone" and len(self.along) < 2:
            raise ValueError("along: a trend needs at least two arms")
        return self

    def arm_names(self) -> list[str]:
        """The arms the comparison reads, in the order tables list them."""
        if self.compare == "monotone":
            return list(self.along)
        if self.compare in ("worst", "best"):
            return [self.a, *self.of]  # type: ignore[list-item]
        if self.compare == "above":
            return [self.a]  # type: ignore[list-item]
        return [self.a, self.b]  # type: ignore[list-item]


class Section(_Strict):
    """A part of the study's documentation page: the protocol prose, and the claims (by id prefix) it tabulates."""

    title: str
    claims: list[str] = Field(min_length=1, description="id prefixes: `table1` takes table1.local-worst, ...")
    text: str = ""


class StoppingRule(_Strict):
    """A protocol run in two stages, by a rule fixed before the run: the seeds of ``first`` run first, and the rest
    of ``protocol``'s seeds only if some arm of ``arms`` ends a first-stage trial past ``above`` (units shown) on
    ``metric`` and ``split``. A claim the rule leaves short of seeds reads *stopped*, not *incomplete*."""

    protocol: str = Field(description="the claims' protocol, every seed")
    first: str = Field(description="the grid of the first stage: the same grid name, a subset of the seeds")
    arms: list[str] = Field(min_length=1)
    metric: Literal[METRICS]  # type: ignore[valid-type]
    split: str = "val"
    above: float


class ClaimsFile(_Strict):
    intro: str = ""
    sections: list[Section] = []
    arms: dict[str, Arm] = Field(min_length=1)
    claims: list[Claim] = Field(min_length=1)
    stopping: list[StoppingRule] = []

    def stopping_rule(self, claim: Claim) -> StoppingRule | None:
        """The stopping rule of the claim's protocol, if it has one."""
        return next((rule for rule in self.stopping if rule.protocol in claim.protocol), None)


@dataclass(frozen=True)
class Protocol:
    """What a claim needs of its grid: the name its trials are stored under and the seeds it runs."""

    name: str
    seeds: tuple[int, ...]


def _grid_keys(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A grid file's top-level keys with its ``include:`` chain applied (the later file wins), read without the
    harness's grid module so that claims and reports never load torch."""
    if path.resolve() in chain or not path.exists():
        raise ClaimsError(f"{path}: " + ("include cycle" if path.exists() else "no such grid file"))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ClaimsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ClaimsError(f"{path}: a grid must be a mapping")
    include = data.pop("include", None)
    return {**_grid_keys(path.parent / include, (*chain, path.resolve())), **data} if include else data


@cache
def protocol_grid(name: str) -> Protocol:
    """A protocol's grid name and seeds, from harness/grids/replication/NAME.yaml (or NAME itself when it is a path
    ending in .yaml)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROTOCOL_DIR / f"{name}.yaml"
    data = _grid_keys(path)
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ClaimsError(f"protocol {name}: {path}: seeds: expected a list of integers")
    return Protocol(name=str(data.get("name", path.stem)), seeds=tuple(seeds))


def _where(data: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """``claims.3.metric`` -> ``claim table1-... (claims[3]): metric``."""
    if len(loc) >= 2 and loc[0] == "claims" and isinstance(loc[1], int):
        claims = data.get("claims") or []
        ident = claims[loc[1]].get("id", "?") if loc[1] < len(claims) and isinstance(claims[loc[1]], dict) else "?"
        rest = ".".join(str(p) for p in loc[2:] if not str(p).startswith("function-"))
        return f"claim {ident} (claims[{loc[1]}])" + (f": {rest}" if rest else "")
    return ".".join(str(p) for p in loc) or "(top level)"


def _read_yaml(path: Path, what: str) -> Any:
    """The parsed YAML of ``path``; a missing file or a syntax error is one ClaimsError naming the file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ClaimsError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ClaimsError(f"{path}: not valid YAML: {exc}") from None


def load_claims(path: str | Path = CLAIMS_FILE) -> ClaimsFile:
    """Read and validate a claims file; every arm a claim names must exist and every protocol must be a grid."""
    path = Path(path)
    data = _read_yaml(path, "the claims file")
    if not isinstance(data, dict):
        raise ClaimsError(f"{path}: expected a mapping with `arms` and `claims`")
    try:
        parsed = ClaimsFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_where(data, tuple(e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise ClaimsError(f"{path}: {problems}") from None
    seen: set[str] = set()
    ids = {claim.id for claim in parsed.claims}
    for claim in parsed.claims:
        if claim.id in seen:
            raise ClaimsError(f"{path}: claim {claim.id}: id: used twice")
        seen.add(claim.id)
        for arm in claim.arm_names():
            if arm not in parsed.arms:
                raise ClaimsError(f"{path}: claim {claim.id}: arm `{arm}` is not defined under `arms`")
        if claim.retests is not None and (claim.retests == claim.id or claim.retests not in ids):
            raise ClaimsError(f"{path}: claim {claim.id}: retests: `{claim.retests}` is not another claim of the file")
        for name in claim.protocol:
            try:
                protocol_grid(name)
            except ClaimsError as exc:
                raise ClaimsError(f"{path}: claim {claim.id}: protocol {name}: {exc}") from None
    for index, rule in enumerate(parsed.stopping):
        where = f"{path}: stopping[{index}] ({rule.protocol})"
        for arm in rule.arms:
            if arm not in parsed.arms:
                raise ClaimsError(f"{where}: arm `{arm}` is not defined under `arms`")
        try:
            whole, first = protocol_grid(rule.protocol), protocol_grid(rule.first)
        except ClaimsError as exc:
            raise ClaimsError(f"{where}: {exc}") from None
        if first.name != whole.name or not set(first.seeds) < set(whole.seeds):
            raise ClaimsError(
                f"{where}: first: {rule.first} must run the same grid ({whole.name}) on fewer of its seeds "
                f"(it runs {first.name}, seeds {list(first.seeds)}; the protocol's are {list(whole.seeds)})"
            )
    return parsed


def load_expected(path: str | Path = EXPECTED_FILE) -> dict[str, str]:
    """A committed expectation: claim id -> verdict."""
    path = Path(path)
    data = _read_yaml(path, "the expected verdicts")
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ClaimsError(f"{path}: expected a mapping of claim id to verdict")
    return {str(k): v for k, v in data.items()}
