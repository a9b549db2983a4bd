"""Collects every speed/memory row of the benchmark session and prints them as one table with the ratios and fitted
memory exponents at the end (``pytest tests/bench --benchmark-only -s`` or ``make bench``)."""

from __future__ import annotations

import pytest

from harness.stats import fit_exponent

# (attention, length, device) -> row; filled by the benchmark tests in collection order, read by later tests and the
# end-of-session summary.
RESULTS: dict[tuple[str, int, str], dict] = {}


def ratio_lines() -> list[str]:
    lines = []
    for length, device in sorted({(n, d) for _, n, d in RESULTS}):
        base = RESULTS.get(("sinkhorn", length, device))
        for other in ("vanilla", "sinkhorn_transformer"):
            row = RESULTS.get((other, length, device))
            if base and row:
                fastest = base["min_seconds"] / row["min_seconds"]
                median = base["seconds"] / row["seconds"]
                saved = base["saved_bytes"] / row["saved_bytes"]
                lines.append(
                    f"{device} L={length:>6}  sinkhorn / {other:<21} time {fastest:6.3f} (median {median:6.3f})"
                    f"  saved {saved:5.2f}"
                )
    return lines


def exponents(device: str, name: str) -> dict[str, float]:
    """Fitted growth order in length of each measured column, for one attention on one device."""
    rows = sorted((r for (n, _, d), r in RESULTS.items() if n == name and d == device), key=lambda r: r["length"])
    if len(rows) < 2:
        return {}
    lengths = [r["length"] for r in rows]
    return {
        col: fit_exponent(lengths, [r[col] for r in rows])
        for col in ("peak_memory_bytes", "saved_bytes", "min_seconds")
    }


def exponent_lines() -> list[str]:
    lines = []
    for name, device in sorted({(n, d) for n, _, d in RESULTS}):
        fits = exponents(device, name)
        if fits:
            lines.append(
                f"{device} {name:<22} peak memory ~ L^{fits['peak_memory_bytes']:.2f}"
                f"   saved ~ L^{fits['saved_bytes']:.2f}   time ~ L^{fits['min_seconds']:.2f}"
            )
    return lines


def pytest_terminal_summary(terminalreporter) -> None:
    if not RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write("attention speed & memory (forward+backward, batch 1, 4 heads, head dim 64, block 64)")
    write(f"{'attention':<22}{'length':>7}{'median s':>11}{'min s':>10}{'peak MiB':>11}{'saved MiB':>11}  device/dtype")
    for (name, length, _), row in sorted(RESULTS.items(), key=lambda item: (item[0][2], item[0][1], item[0][0])):
        peak, saved = row["peak_memory_bytes"] / 2**20, row["saved_bytes"] / 2**20
        write(
            f"{name:<22}{length:>7}{row['seconds']:>11.4f}{row['min_seconds']:>10.4f}"
            f"{peak:>11.1f}{saved:>11.1f}  {row['device']}/{row['dtype']}"
        )
    for line in ratio_lines() + exponent_lines():
        write(line)


@pytest.fixture(scope="session")
def bench_results() -> dict[tuple[str, int, str], dict]:
    """The session's rows, so a benchmark can compare itself with the ones that ran before it."""
    return RESULTS
