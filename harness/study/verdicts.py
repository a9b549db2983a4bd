"""Verdicts of the study's claims, computed from a results store.

The rule (the study's, stated once): each arm is summarised by its mean over seeds and the 95% t-interval of that
mean (``harness.reporting.labels.mean_ci``), in the units the report shows (percent for accuracy and exact match) and
oriented by the metric's direction (lower is better for bpc, perplexity, edit distance, loss).

* ``a`` beats ``b`` by ``margin`` *holds* when a's worst interval end is ahead of b's best end by more than the margin
  (with margin 0: the intervals are apart, in the paper's order); it *does not hold* when even a's best end is not
  ahead of b's worst end by the margin (with margin 0: apart in the opposite order); otherwise *inconclusive*.
* worst / best / monotone are that pairwise rule over their pairs: all pairs hold -> holds; any pair does not hold ->
  does not hold; otherwise inconclusive.
* ``a`` above ``value`` by ``margin`` is the beats rule against a fixed point: *holds* when a's worst interval end is
  ahead of the value by more than the margin, *does not hold* when even its best end is not.
* ``a`` within ``delta`` of ``b`` *holds* when every point of one interval is within delta of every point of the
  other; *does not hold* when the intervals are more than delta apart; otherwise *inconclusive*.

Before a rule is applied: an arm with no stored value gives *no data*; an arm with fewer seeds than its protocol
names gives *incomplete* (the values so far are still shown); a single seed has no interval, so its pairs are
inconclusive. A protocol run in stages (a stopping rule of the claims file) whose first stage ended without any arm
past the rule's value gives *stopped*: its other seeds were never due.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import pandas as pd

from harness.reporting.labels import LOWER_IS_BETTER, PERCENT, attention_label, fmt, mean_ci, parse_json
from harness.study.claims import Arm, Claim, ClaimsFile, StoppingRule, protocol_grid

HOLDS, FAILS, INCONCLUSIVE, NO_DATA, INCOMPLETE = "holds", "does not hold", "inconclusive", "no data", "incomplete"
STOPPED = "stopped"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NO_DATA, INCOMPLETE, STOPPED)


@dataclass
class ArmResult:
    """One arm of a claim as read from the store: its label, the paper's value, the seeds' values and the interval."""

    name: str
    label: str
    mean: float
    half: float
    n: int
    expected: int
    trials: list[dict] = field(default_factory=list)  # {id, seed, value}

    @property
    def interval(self) -> tuple[float, float]:
        return self.mean - self.half, self.mean + self.half


@dataclass
class ClaimResult:
    claim: Claim
    verdict: str
    arms: list[ArmResult]
    detail: str = ""


def trial_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per stored trial: grid, seed, status, attention, params and whether K = V is tied."""
    if frame.empty:
        return pd.DataFrame(columns=["trial_id", "grid", "task", "seed", "status", "attention", "params", "tie_kv"])
    first = frame.drop_duplicates("trial_id")
    configs = first["config"].map(parse_json)
    return pd.DataFrame(
        {
            "trial_id": first["trial_id"].to_numpy(),
            "grid": first["grid"].to_numpy(),
            "task": first["task"].to_numpy(),
            "seed": first["seed"].to_numpy(),
            "status": first["status"].to_numpy(),
            "attention": first["attention"].to_numpy(),
            "params": first["params"].map(parse_json).to_numpy(),
            "tie_kv": configs.map(lambda c: bool((c.get("model") or {}).get("tie_kv", False))).to_numpy(),
        }
    )


def _arm_trials(trials: pd.DataFrame, protocols: list[str], arm: Arm, task: str | None = None) -> pd.DataFrame:
    grids = {protocol_grid(name).name for name in protocols}
    seeds = {seed for name in protocols for seed in protocol_grid(name).seeds}
    chosen = (
        trials["grid"].isin(grids)
        & trials["seed"].isin(seeds)
        & (trials["attention"] == arm.attention)
        & (trials["tie_kv"] == arm.tie_kv)
    )
    picked = trials[chosen & (trials["task"] == task)] if task is not None else trials[chosen]
    same = [params == arm.params for params in picked["params"]]
    return picked.loc[pd.Series(same, index=picked.index, dtype=bool)]


def _expected_seeds(protocols: list[str]) -> int:
    return len({seed for name in protocols for seed in protocol_grid(name).seeds})


def arm_result(
    name: str, arm: Arm, claim: Claim, trials: pd.DataFrame, frame: pd.DataFrame, split: str, step: int | None
) -> ArmResult:
    """The arm's values on ``split`` (the final rows, or the periodic rows of ``step``) over its protocol's seeds."""
    return read_arm(name, arm, claim.protocol, claim.metric, trials, frame, split, step, claim.task)


def read_arm(
    name: str,
    arm: Arm,
    protocols: list[str],
    metric: str,
    trials: pd.DataFrame,
    frame: pd.DataFrame,
    split: str,
    step: int | None = None,
    task: str | None = None,
) -> ArmResult:
    """An arm's values of ``metric`` on ``split`` (final rows, or the periodic rows of ``step``) over the seeds of
    ``protocols`` (and of ``task`` alone, if given), in the units shown."""
    picked = _arm_trials(trials, protocols, arm, task)
    rows = frame[
        frame["trial_id"].isin(picked.loc[picked["status"] == "ok", "trial_id"])
        & (frame["status"] == "ok")
        & (frame["split"] == split)
        & (frame["metric"] == metric)
    ]
    rows = rows[rows["step"].isna()] if step is None else rows[rows["step"] == step]
    rows = rows.drop_duplicates("trial_id").merge(picked[["trial_id", "seed"]], on="trial_id", suffixes=("_row", ""))
    rows = rows.sort_values("seed")
    values = rows["value"].astype(float) * (100.0 if metric in PERCENT else 1.0)
    mean, half, n = mean_ci(values) if len(values) else (math.nan, math.nan, 0)
    return ArmResult(
        name=name,
        label=arm.label or attention_label(arm.attention, arm.params, arm.tie_kv),
        mean=mean,
        half=half,
        n=n,
        expected=_expected_seeds(protocols),
        trials=[
            {"id": t, "seed": int(s), "value": float(v)}
            for t, s, v in zip(rows["trial_id"], rows["seed"], values, strict=True)
        ],
    )


def _oriented(arm: ArmResult, metric: str) -> tuple[float, float]:
    """The interval with "higher is better" whatever the metric."""
    low, high = arm.interval
    return (-high, -low) if metric in LOWER_IS_BETTER else (low, high)


def beats(a: ArmResult, b: ArmResult, metric: str, margin: float = 0.0) -> str:
    """Does ``a`` beat ``b`` by ``margin``? The pairwise rule every comparison kind is made of."""
    if a.n < 2 or b.n < 2:
        return INCONCLUSIVE
    (a_low, a_high), (b_low, b_high) = _oriented(a, metric), _oriented(b, metric)
    if a_low - b_high > margin:
        return HOLDS
    if a_high - b_low < margin:
        return FAILS
    return INCONCLUSIVE


def above(a: ArmResult, value: float, metric: str, margin: float = 0.0) -> str:
    """Is ``a`` ahead of the fixed ``value`` by ``margin``?"""
    if a.n < 2:
        return INCONCLUSIVE
    low, high = _oriented(a, metric)
    point = -value if metric in LOWER_IS_BETTER else value
    if low - point > margin:
        return HOLDS
    if high - point < margin:
        return FAILS
    return INCONCLUSIVE


def within(a: ArmResult, b: ArmResult, delta: float) -> str:
    if a.n < 2 or b.n < 2:
        return INCONCLUSIVE
    (a_low, a_high), (b_low, b_high) = a.interval, b.interval
    if max(a_high - b_low, b_high - a_low) <= delta:
        return HOLDS
    if max(a_low - b_high, b_low - a_high) > delta:
        return FAILS
    return INCONCLUSIVE


def combine(pairs: list[str]) -> str:
    if all(p == HOLDS for p in pairs):
        return HOLDS
    return FAILS if FAILS in pairs else INCONCLUSIVE


def rule(claim: Claim, arms: dict[str, ArmResult]) -> str:
    """The claim's verdict from its arms' intervals (the arms all have data)."""
    m = claim.metric
    if claim.compare == "better":
        return beats(arms[claim.a], arms[claim.b], m, claim.margin)
    if claim.compare == "above":
        return above(arms[claim.a], claim.value, m, claim.margin)  # type: ignore[arg-type]
    if claim.compare == "within":
        return within(arms[claim.a], arms[claim.b], claim.delta)  # type: ignore[arg-type]
    if claim.compare == "worst":
        return combine([beats(arms[o], arms[claim.a], m) for o in claim.of])
    if claim.compare == "best":
        return combine([beats(arms[claim.a], arms[o], m) for o in claim.of])
    steps = list(itertools.pairwise(claim.along))
    if claim.direction == "improves":
        return combine([beats(arms[after], arms[before], m) for before, after in steps])
    return combine([beats(arms[before], arms[after], m) for before, after in steps])


@dataclass(frozen=True)
class StageDecision:
    """What a stopping rule decided once its first stage had run: whether the other seeds are due, and why."""

    go_on: bool
    detail: str


def evaluate(
    claim: Claim,
    claims: ClaimsFile,
    frame: pd.DataFrame,
    trials: pd.DataFrame | None = None,
    split: str | None = None,
    step: int | None = None,
    decisions: dict[str, StageDecision | None] | None = None,
) -> ClaimResult:
    """One claim's verdict: on its own split and step, or (``split``/``step`` given) at another evaluation.
    ``decisions`` (from ``stage_decisions``) saves working out the stopping rules again for every claim."""
    trials = trial_table(frame) if trials is None else trials
    split = split or claim.split
    step = claim.step if split == claim.split and step is None else step
    arms = {name: arm_result(name, claims.arms[name], claim, trials, frame, split, step) for name in claim.arm_names()}
    listed = [arms[name] for name in claim.arm_names()]
    missing = [a.label for a in listed if a.n == 0]
    if missing:
        return ClaimResult(claim, NO_DATA, listed, "no stored value for " + ", ".join(missing))
    short = [f"{a.label} {a.n} of {a.expected} seeds" for a in listed if a.n < a.expected]
    if short:
        stopping = claims.stopping_rule(claim)
        decision = None
        if stopping is not None:
            decision = (
                decisions[stopping.protocol] if decisions is not None else first_stage(stopping, claims, frame, trials)
            )
        if decision is not None and not decision.go_on:
            return ClaimResult(claim, STOPPED, listed, decision.detail)
        detail = "; ".join(short) + (f"; {decision.detail}" if decision is not None else "")
        return ClaimResult(claim, INCOMPLETE, listed, detail)
    return ClaimResult(claim, rule(claim, arms), listed)


def first_stage(
    stopping: StoppingRule, claims: ClaimsFile, frame: pd.DataFrame, trials: pd.DataFrame
) -> StageDecision | None:
    """The rule's decision from the first stage's stored trials; None while some arm's first-stage seeds are missing
    (the decision is not due yet). Every arm's trials count, the failed ones as not past the value."""
    arms = [
        read_arm(name, claims.arms[name], [stopping.first], stopping.metric, trials, frame, stopping.split)
        for name in stopping.arms
    ]
    done = [len(_arm_trials(trials, [stopping.first], claims.arms[name])) for name in stopping.arms]
    if any(n < arm.expected for n, arm in zip(done, arms, strict=True)):
        return None
    sign = -1.0 if stopping.metric in LOWER_IS_BETTER else 1.0
    scored = [(sign * t["value"], t["value"], arm.label) for arm in arms for t in arm.trials]
    _, best_value, best_label = max(scored) if scored else (0.0, math.nan, "none")
    go_on = bool(scored) and sign * (best_value - stopping.above) > 0
    unit = "%" if stopping.metric in PERCENT else ""
    past = "below" if sign < 0 else "above"
    best = f"best: {best_label} {fmt(stopping.metric, best_value)}{unit}"
    if go_on:
        return StageDecision(True, f"the stopping rule goes on ({best} {stopping.split} {stopping.metric})")
    return StageDecision(
        False,
        f"stopping rule of {stopping.protocol}.yaml: no arm ended {stopping.first}.yaml "
        f"{past} {stopping.above:g}{unit} {stopping.split} {stopping.metric} ({best})",
    )


def stage_decisions(claims: ClaimsFile, frame: pd.DataFrame, trials: pd.DataFrame) -> dict[str, StageDecision | None]:
    """Every stopping rule's decision, by protocol: it depends only on the rule and the store, so it is worked out
    once per store, not once per claim and evaluation step."""
    return {rule.protocol: first_stage(rule, claims, frame, trials) for rule in claims.stopping}


def evaluate_all(claims: ClaimsFile, frame: pd.DataFrame) -> list[ClaimResult]:
    trials = trial_table(frame)
    decisions = stage_decisions(claims, frame, trials)
    return [evaluate(claim, claims, frame, trials, decisions=decisions) for claim in claims.claims]


def along_training(
    claim: Claim,
    claims: ClaimsFile,
    frame: pd.DataFrame,
    trials: pd.DataFrame,
    decisions: dict[str, StageDecision | None] | None = None,
) -> list[dict]:
    """The claim's rule at every evaluation step of the val curve: [{step, verdict}], empty without curve rows."""
    decisions = stage_decisions(claims, frame, trials) if decisions is None else decisions
    arm_trials = set()
    for name in claim.arm_names():
        arm_trials.update(_arm_trials(trials, claim.protocol, claims.arms[name], claim.task)["trial_id"])
    curve = frame[
        frame["trial_id"].isin(arm_trials)
        & (frame["split"] == "val")
        & (frame["metric"] == claim.metric)
        & frame["step"].notna()
    ]
    return [
        {"step": int(step), "verdict": evaluate(claim, claims, frame, trials, "val", int(step), decisions).verdict}
        for step in sorted(curve["step"].unique())
    ]


def arm_text(arm: ArmResult, metric: str) -> str:
    """``Sinkhorn (8) 99.69 ± 1.35 (n=3)``."""
    if arm.n == 0:
        return f"{arm.label}: no data"
    half = "" if math.isnan(arm.half) else f" ± {fmt(metric, arm.half)}"
    return f"{arm.label} {fmt(metric, arm.mean)}{half} (n={arm.n})"


def paper_text(claim: Claim) -> str:
    return ", ".join(f"{k} {v}" for k, v in claim.paper.items()) or "–"


def same_order_every_seed(result: ClaimResult) -> bool:
    """For a two-arm claim: do the arms keep one order (either way) in every seed they share? The test for whether
    more seeds could settle an inconclusive verdict."""
    if result.claim.compare not in ("better", "within") or len(result.arms) != 2:
        return False
    a, b = ({t["seed"]: t["value"] for t in arm.trials} for arm in result.arms)
    differences = [a[seed] - b[seed] for seed in sorted(set(a) & set(b))]
    return len(differences) >= 2 and (all(d > 0 for d in differences) or all(d < 0 for d in differences))
