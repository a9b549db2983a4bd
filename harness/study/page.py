"""Write the replication study's documentation page from the claims file and the study's store.

``python -m harness.study.page docs/replication.md [--results DIR]``. Every result number on the page is computed
here from the store; the paper's values come from the claims file and the protocol prose from its ``sections``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from harness.reporting.labels import METRIC_LABEL, attention_label, fmt
from harness.store import ResultStore
from harness.study.claims import CLAIMS_FILE, STUDY_DIR, STUDY_RESULTS, ClaimsFile, StoppingRule, load_claims
from harness.study.render import where
from harness.study.verdicts import (
    HOLDS,
    INCOMPLETE,
    INCONCLUSIVE,
    NO_DATA,
    STOPPED,
    ArmResult,
    ClaimResult,
    along_training,
    arm_text,
    evaluate,
    paper_text,
    read_arm,
    same_order_every_seed,
    stage_decisions,
    trial_table,
)

GPU_RESULTS = STUDY_DIR / "results" / "replication_gpu"
RULE = (
    "Every arm of a claim is summarised by its mean over the protocol's seeds and the 95% t-interval of that mean. "
    "A claim that one arm beats another *holds* when the two intervals are apart in the paper's order (by more than "
    "the claim's margin, if it names one), *does not hold* when they are apart the other way (or cannot reach the "
    "margin), and is *inconclusive* when they overlap. *Worst*, *best* and trend claims apply that rule to every pair "
    "they name: all hold, it holds; any does not, it does not; otherwise inconclusive. A *within* claim holds when "
    "every point of one interval lies within the stated distance of every point of the other. An *above* claim (a "
    "model learns the task: ahead of chance) holds when the whole interval is past the fixed value. A protocol with no "
    "trials yet reads *no data*, one with some of its seeds *incomplete*. A protocol run in stages by a stopping rule "
    "fixed before the run reads *stopped* when its first stage ended without any arm past the rule's value: its "
    "other seeds were never due, and the first stage's curve is the finding."
)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _claim_table(results: list[ClaimResult]) -> list[str]:
    lines = ["| claim | paper | ours (mean ± 95% interval, n) | verdict |", "| --- | --- | --- | --- |"]
    for r in results:
        verdict = f"**{r.verdict}**"
        if r.detail:
            verdict += f" ({r.detail})"
        elif r.verdict == INCONCLUSIVE and same_order_every_seed(r):
            verdict += " (the same order in every seed)"
        ours = "; ".join(arm_text(arm, r.claim.metric) for arm in r.arms)
        cells = [f"{r.claim.sentence} <br>`{r.claim.id}`, {where(r)}", paper_text(r.claim), ours, verdict]
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    return lines


def _along(claim_id: str, points: list[dict]) -> str | None:
    """``holds from step 1,500 on`` and the like, from the verdicts along the val curve."""
    if not points:
        return None
    verdicts = [p["verdict"] for p in points]
    if all(v == verdicts[-1] for v in verdicts):
        return f"`{claim_id}`: {verdicts[-1]} at every evaluation ({points[0]['step']:,}-{points[-1]['step']:,})"
    start = len(points)
    while start > 0 and verdicts[start - 1] == verdicts[-1]:
        start -= 1
    before = ", ".join(f"{p['step']:,} {p['verdict']}" for p in points[:start])
    return f"`{claim_id}`: {verdicts[-1]} from step {points[start]['step']:,} on (before: {before})"


def _grids(names: list[str]) -> str:
    return ", ".join(f"`{name}.yaml`" for name in names)


def _outcome(before: str, after: str) -> str:
    """How a retest came out, from the earlier verdict and this one."""
    if after == STOPPED:
        return "not tested: the protocol stopped"
    if after in (NO_DATA, INCOMPLETE):
        return "not known yet"
    if before in (NO_DATA, INCOMPLETE):
        return "nothing to compare with"
    return "the same verdict" if before == after else f"changed from {before} to {after}"


def _retested(chosen: list[ClaimResult], by_id: dict[str, ClaimResult]) -> list[str]:
    """A table of the section's claims that repeat another on a changed protocol (more seeds, another generator):
    both verdicts, and whether the finding stands."""
    rows = []
    for r in chosen:
        if r.claim.retests is None:
            continue
        old = by_id[r.claim.retests]
        cells = [
            f"`{r.claim.id}` on {_grids(r.claim.protocol)}",
            r.verdict,
            f"`{old.claim.id}` on {_grids(old.claim.protocol)}",
            old.verdict,
            _outcome(old.verdict, r.verdict),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "",
        "Findings retested on another protocol (the same sentence, read by the same rule):",
        "",
        "| claim | verdict | retests | its verdict | outcome |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ]


def _stopped_curves(
    chosen: list[ClaimResult], claims: ClaimsFile, frame: pd.DataFrame, trials: pd.DataFrame
) -> list[str]:
    """For a section with stopped claims: each stopping rule's first-stage curve, the evidence it decided on."""
    stopped = [
        rule
        for rule in claims.stopping
        if any(r.verdict == STOPPED and claims.stopping_rule(r.claim) == rule for r in chosen)
    ]
    return [line for rule in stopped for line in _first_stage_curve(rule, claims, frame, trials)]


def _first_stage_curve(rule: StoppingRule, claims: ClaimsFile, frame: pd.DataFrame, trials: pd.DataFrame) -> list[str]:
    """The rule's metric on its split at every evaluation of the first stage, per arm (mean over its seeds)."""

    def read(name: str, step: int | None = None) -> ArmResult:
        return read_arm(name, claims.arms[name], [rule.first], rule.metric, trials, frame, rule.split, step)

    final = [read(name) for name in rule.arms]
    ids = {t["id"] for arm in final for t in arm.trials}
    steps = frame.loc[frame["trial_id"].isin(ids) & (frame["split"] == rule.split) & frame["step"].notna(), "step"]
    lines = [
        "",
        f"The first stage (`{rule.first}.yaml`), {rule.split} {METRIC_LABEL.get(rule.metric, rule.metric)} at every "
        "evaluation (mean over its seeds): the curve the stopping rule decided on.",
        "",
        "| step | " + " | ".join(arm.label for arm in final) + " |",
        "| --- | " + " | ".join("---" for _ in final) + " |",
    ]
    for step in sorted(int(x) for x in steps.unique()):
        lines.append(
            f"| {step:,} | " + " | ".join(fmt(rule.metric, read(name, step).mean) for name in rule.arms) + " |"
        )
    return lines


def _protocol_facts(frame: pd.DataFrame, results: list[ClaimResult]) -> str:
    """Which grids the section's claims read, how many stored trials feed them and how long those trained."""
    files = list(dict.fromkeys(p for r in results for p in r.claim.protocol))
    fed = {t["id"] for r in results for arm in r.arms for t in arm.trials}
    minutes = frame[frame["trial_id"].isin(fed)].drop_duplicates("trial_id")["train_seconds"].dropna() / 60
    grids = _grids(files)
    if not fed:
        return f"Grids: {grids}; no trials stored yet."
    trials = "1 stored trial feeds" if len(fed) == 1 else f"{len(fed)} stored trials feed"
    if minutes.empty:
        return f"Grids: {grids}; {trials} these claims."
    low, high = f"{minutes.min():.1f}", f"{minutes.max():.1f}"
    span = f"{low} min of training" if low == high else f"{low}-{high} min of training each"
    return f"Grids: {grids}; {trials} these claims, {span} (one core)."


def _gpu_section(frame: pd.DataFrame) -> list[str]:
    """The one-GPU run of the char protocol (its own store): test bpc per attention, and the val curve."""
    if frame.empty:
        return []
    ok = frame[(frame["status"] == "ok") & (frame["metric"] == "bpc")]
    trials = trial_table(frame).set_index("trial_id")
    labels = {t: attention_label(r.attention, r.params, r.tie_kv) for t, r in trials.iterrows()}
    ok = ok.assign(label=ok["trial_id"].map(labels))
    final = ok[(ok["split"] == "test") & ok["step"].isna()].groupby("label")["value"].agg(["mean", "count"])
    curve = ok[(ok["split"] == "val") & ok["step"].notna()].groupby(["step", "label"])["value"].mean().unstack()
    lines = [
        "## Past the crossover on one GPU",
        "",
        "`table4_gpu.yaml` runs the char protocol for 5,000 steps in bf16 on one GPU (store "
        "`harness/study/results/replication_gpu/`). One seed per attention, so no interval and no verdict: it shows "
        "the order the CPU's own 4,000-step runs then confirmed with three seeds.",
        "",
        "| attention | test bpc | seeds |",
        "| --- | --- | --- |",
        *[f"| {label} | {fmt('bpc', row['mean'])} | {int(row['count'])} |" for label, row in final.iterrows()],
        "",
    ]
    if not curve.empty:
        lines += [
            "Val bpc along the run:",
            "",
            "| step | " + " | ".join(curve.columns) + " |",
            "| --- | " + " | ".join("---" for _ in curve.columns) + " |",
            *[f"| {int(step):,} | " + " | ".join(fmt("bpc", v) for v in row) + " |" for step, row in curve.iterrows()],
            "",
        ]
    return lines


def render(claims: ClaimsFile, frame: pd.DataFrame, gpu: pd.DataFrame | None = None) -> str:
    """The whole page as Markdown."""
    trials = trial_table(frame)
    decisions = stage_decisions(claims, frame, trials)
    results = [evaluate(claim, claims, frame, trials, decisions=decisions) for claim in claims.claims]
    by_id = {r.claim.id: r for r in results}
    counts = pd.Series([r.verdict for r in results]).value_counts()
    lines = [
        "# The replication study",
        "",
        "<!-- Generated by `python -m harness.study.page docs/replication.md` from harness/study/claims.yaml and "
        "the store harness/study/results/replication; edit those, not this page. -->",
        "",
        claims.intro.strip(),
        "",
        f"**{len(results)} claims:** "
        + ", ".join(f"{int(counts.get(v, 0))} {v}" for v in counts.index)
        + f". {frame['trial_id'].nunique()} trials in the store.",
        "",
        "## How a verdict is reached",
        "",
        RULE,
        "",
        "`attnbench claims` prints the same table from the store; "
        "`attnbench claims --check harness/study/expected_verdicts.yaml` fails when a verdict changes.",
        "",
    ]
    for section in claims.sections:
        chosen = [r for r in results if r.claim.id.split(".")[0] in section.claims]
        if not chosen:
            continue
        lines += [f"## {section.title}", "", section.text.strip(), "", _protocol_facts(frame, chosen), ""]
        lines += _claim_table(chosen)
        # a stopped claim reads "stopped" at every step; the first stage's curve below is what it was decided on
        along = [
            _along(r.claim.id, along_training(r.claim, claims, frame, trials, decisions))
            for r in chosen
            if r.verdict != STOPPED
        ]
        along = [a for a in along if a]
        if along:
            lines += ["", "The verdict along training (the same rule on the val curve at every evaluation):", ""]
            lines += [f"* {a}" for a in along]
        lines += _stopped_curves(chosen, claims, frame, trials)
        lines += _retested(chosen, by_id)
        lines.append("")
    if gpu is not None:
        lines += _gpu_section(gpu)
    held = sum(1 for r in results if r.verdict == HOLDS)
    lines += [f"<!-- {held} of {len(results)} claims hold on this store. -->", ""]
    return "\n".join(lines)


def write_page(
    out: str | Path,
    results: str | Path = STUDY_RESULTS,
    claims_file: str | Path = CLAIMS_FILE,
    gpu_results: str | Path | None = GPU_RESULTS,
) -> Path:
    frame = ResultStore(results).read()
    gpu = ResultStore(gpu_results).read() if gpu_results is not None else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(load_claims(claims_file), frame, gpu), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.study.page", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the Markdown page to write, e.g. docs/replication.md")
    parser.add_argument("--results", type=Path, default=STUDY_RESULTS, help="the study's store (default: %(default)s)")
    parser.add_argument("--claims", type=Path, default=CLAIMS_FILE, help="claims file (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        write_page(args.out, args.results, args.claims)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
