"""``attnbench claims``: every claim's verdict computed from a store, printed; ``--check`` compares them with a
committed expectation and fails (exit 1) on any difference, so a change that flips a finding is caught."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from harness.store import ResultStore
from harness.study.claims import CLAIMS_FILE, ClaimsError, load_claims, load_expected
from harness.study.render import csv_text, differences, markdown
from harness.study.verdicts import ClaimResult, evaluate_all

EXIT_DIFFERS = 1


def compute(results: str | Path, claims_file: str | Path = CLAIMS_FILE) -> list[ClaimResult]:
    """Every claim of ``claims_file`` judged on the store at ``results``."""
    results = Path(results)
    if not results.is_dir():
        raise ClaimsError(f"{results}: no results store there")
    return evaluate_all(load_claims(claims_file), ResultStore(results).read())


def run(
    results: str | Path,
    *,
    claims_file: str | Path = CLAIMS_FILE,
    form: str = "markdown",
    check: str | Path | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the table to ``out``; with ``check``, list the claims whose verdict differs on ``err`` and return 1."""
    out, err = out or sys.stdout, err or sys.stderr
    computed = compute(results, claims_file)
    out.write(csv_text(computed) if form == "csv" else markdown(computed))
    if check is None:
        return 0
    differing = differences(computed, load_expected(check))
    for line in differing:
        err.write(f"verdict differs: {line}\n")
    if differing:
        err.write(f"{len(differing)} verdict(s) differ from {check}\n")
        return EXIT_DIFFERS
    return 0
