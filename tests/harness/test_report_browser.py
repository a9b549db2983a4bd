"""The report in a real headless Chromium (Debian's ``chromium``, set up by ``make browser``): it loads offline with no
console error, every table and figure is there and drawn, cells open onto links to their trials' configs.

The full-page screenshot goes to the test's tmp dir, or to ``$ATTNBENCH_SCREENSHOT_DIR`` when set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from test_report import synthetic_store, value, write

from harness.reporting import report
from harness.store import ResultStore

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TABLES = ["table1", "table2", "table4", "table5", "table6", "table7", "table8", "listops"]
FIGURES = ["figure3", "figure4", "speed-memory"]


@pytest.fixture(scope="module")
def page_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    store = synthetic_store(root / "results")
    return report.write_report(store.root, root / "report.html")


def test_report_loads_in_chromium_with_every_table_and_figure(page_file, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make browser` (apt-get install chromium)")
    problems: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else problems.append(r.url))
            page.goto(page_file.as_uri(), wait_until="load")

            for section in TABLES:
                tables = page.locator(f"section#{section} table.results")
                assert tables.count() >= 1, section
                assert tables.first.is_visible(), section
                assert page.locator(f"section#{section} tbody tr").count() >= 2, section
            for section in TABLES:  # every table has its headline figure
                image = page.locator(f"section#{section} figure.headline img").first
                assert image.evaluate("img => img.complete ? img.naturalWidth : 0") > 300, section
            for section in FIGURES:
                image = page.locator(f"section#{section} figure img")
                assert image.count() == 1, section
                width = image.evaluate("img => img.complete ? img.naturalWidth : 0")
                assert width > 300, f"{section}: the embedded PNG did not decode"
            assert page.locator("section#table1 th.paper").count() == 2
            assert page.locator("section#table1 td.ours.best").count() >= 2

            # a cell opens onto its seeds; each seed links to the trial's config further down the page
            cell = page.locator("section#table1 tr.ours td.ours details").first
            link = cell.locator("a").first
            assert not link.is_visible()
            cell.locator("summary").click()
            assert link.is_visible()
            target = link.get_attribute("href")
            link.click()
            assert page.evaluate("location.hash") == target
            assert page.locator(f"tr{target}").is_visible()
            page.locator(f"tr{target} summary").click()
            assert '"task": "sort"' in page.locator(f"tr{target} pre").first.inner_text()

            page.evaluate("window.scrollTo(0, 0)")
            shots = Path(os.environ.get("ATTNBENCH_SCREENSHOT_DIR", tmp_path))
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "report.png"), full_page=True)
            assert (shots / "report.png").stat().st_size > 50_000
        finally:
            browser.close()
    assert problems == []


DEMO = {  # the shapes `make demo` stores (harness/grids/smoke.yaml): no sweep, no bench, two seeds
    ("sort", ()): [("vanilla", {}), ("local", {"block_size": 4}), ("sparse", {"block_size": 4, "stride": 2}),
                   ("sinkhorn", {"block_size": 4})],
    ("classify", (("level", "word"),)): [("vanilla", {}), ("sinkhorn", {"block_size": 4}),
                                         ("sortcut", {"block_size": 8, "budget": 2})],
}  # fmt: skip


def test_demo_report_shows_the_sinkhorn_family_and_a_figure_in_chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make browser` (apt-get install chromium)")
    store = ResultStore(tmp_path / "results")
    for (task, task_params), cells in DEMO.items():
        splits = ("test",) if task == "classify" else ("test", "test_2x")
        metrics = ("accuracy",) if task == "classify" else ("exact_match", "edit_distance")
        for attention, params in cells:
            for seed in (0, 1):
                got = [(s, m, value(task, attention, seed, s, m)) for s in splits for m in metrics]
                write(store, task=task, attention=attention, params=params, seed=seed, metrics=got,
                      task_params=dict(task_params), grid="smoke")  # fmt: skip
    page_path = report.write_report(store.root, tmp_path / "smoke.html")
    problems: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(page_path.as_uri(), wait_until="load")
            for section, measured in (("table1", "Sinkhorn (4)"), ("table6", "SortCut Sinkhorn (2x8)")):
                ours = page.locator(f"section#{section} tr.ours th", has_text=measured)
                assert ours.count() == 1 and ours.first.is_visible(), section
                assert "paper only" not in ours.first.inner_text()
                image = page.locator(f"section#{section} figure.headline img")
                assert image.count() == 1, section
                image.scroll_into_view_if_needed()
                assert image.is_visible()
                assert image.evaluate("img => img.complete ? img.naturalWidth : 0") > 300, section
            assert page.locator("figure img").count() >= 2  # no sweep, no bench: the table figures alone
            page.screenshot(path=str(tmp_path / "smoke.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
