"""The claims table as text: Markdown for reading, CSV (one row per claim and arm) for tools."""

from __future__ import annotations

import csv
import io
import math

from harness.study.verdicts import ClaimResult, arm_text, paper_text


def where(result: ClaimResult) -> str:
    """``test exact_match`` or ``val exact_match at step 500``."""
    claim = result.claim
    step = f" at step {claim.step}" if claim.step is not None else ""
    return f"{claim.split} {claim.metric}{step}"


def ours_text(result: ClaimResult) -> str:
    return "; ".join(arm_text(arm, result.claim.metric) for arm in result.arms)


def verdict_text(result: ClaimResult) -> str:
    return f"{result.verdict} ({result.detail})" if result.detail else result.verdict


def markdown(results: list[ClaimResult]) -> str:
    """One row per claim: the claim, the paper's values, ours (mean ± 95% half-width, n), the verdict."""
    lines = [
        "| claim | source | protocol | paper | ours (mean ± 95% interval, n) | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        cells = [
            f"`{r.claim.id}`: {r.claim.sentence}",
            r.claim.source,
            f"{', '.join(r.claim.protocol)} ({where(r)})",
            paper_text(r.claim),
            ours_text(r),
            f"**{verdict_text(r)}**",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(results: list[ClaimResult]) -> str:
    """Long form: one row per (claim, arm), so a tool never parses "mean ± half"."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["claim", "source", "verdict", "protocol", "split", "metric", "step", "arm", "label", "mean", "ci95", "n"]
    )
    for r in results:
        for arm in r.arms:
            writer.writerow(
                [
                    r.claim.id,
                    r.claim.source,
                    r.verdict,
                    " ".join(r.claim.protocol),
                    r.claim.split,
                    r.claim.metric,
                    "" if r.claim.step is None else r.claim.step,
                    arm.name,
                    arm.label,
                    "" if math.isnan(arm.mean) else f"{arm.mean:.6g}",
                    "" if math.isnan(arm.half) else f"{arm.half:.6g}",
                    arm.n,
                ]
            )
    return out.getvalue()


def differences(results: list[ClaimResult], expected: dict[str, str]) -> list[str]:
    """Every claim whose verdict is not the expected one, and every expectation naming no claim."""
    found = {r.claim.id: r.verdict for r in results}
    lines = [
        f"{claim}: expected {expected[claim]!r}, computed {verdict!r}"
        if claim in expected
        else f"{claim}: computed {verdict!r}, no expectation"
        for claim, verdict in found.items()
        if expected.get(claim) != verdict
    ]
    lines += [f"{claim}: expected {expected[claim]!r}, no such claim" for claim in expected if claim not in found]
    return lines
