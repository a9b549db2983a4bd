"""The HTML report: paper sections from a synthetic store, values beside the paper's, links, escaping, bench rows.

The store is written through the real ``rows_for_trial`` / ``ResultStore.write_trial``, so the report reads exactly
what a grid run writes. ``synthetic_store`` is shared with the browser test (test_report_browser.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.reporting import figures, paper, report
from harness.store import ResultStore, rows_for_trial

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SMOKE_MODEL = {"layers": 1, "dim": 64, "heads": 4, "mlp_dim": 128, "dropout": 0.0, "tie_kv": False}
BIG_MODEL = {**SMOKE_MODEL, "layers": 2, "dim": 128}
TRAIN = {"steps": 50, "batch_size": 16, "lr": 0.002}


def write(
    store: ResultStore,
    *,
    task: str,
    attention: str,
    params: dict,
    seed: int,
    metrics=None,
    error=None,
    task_params: dict | None = None,
    model: dict | None = None,
    train: dict | None = None,
    grid: str = "paper",
    minutes: int = 0,
    common: dict | None = None,
) -> str:
    """Store one trial exactly as the scheduler does; returns its id."""
    config = {
        "grid": grid,
        "task": task,
        "task_params": task_params or {},
        "scale": "smoke",
        "seed": seed,
        "attention": attention,
        "params": params,
        "model": model or SMOKE_MODEL,
        "train": train or TRAIN,
        "resources": {"cpus": 1, "gpus": 0, "workers": 1},
    }
    trial_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    base = {
        "peak_memory_bytes": 3 * 2**20,
        "tokens_per_second": 1234.0,
        "device": "cpu",
        "world_size": 1,
        "started_at": T0,
        "finished_at": T0 + timedelta(minutes=minutes),
    }
    rows = rows_for_trial(trial_id, config, metrics=metrics, error=error, common={**base, **(common or {})})
    store.write_trial(trial_id, rows)
    return trial_id


def value(*key) -> float:
    """A deterministic pseudo-random number in [0, 1) per key (the synthetic 'result')."""
    return int(hashlib.md5(repr(key).encode()).hexdigest()[:8], 16) / 2**32


SORT_ROWS = [
    ("vanilla", {}),
    ("local", {"block_size": 32}),
    ("sparse", {"block_size": 32, "stride": 8}),
    ("sinkhorn", {"block_size": 16}),
    ("sinkhorn", {"block_size": 32}),
]


def synthetic_store(root: Path) -> ResultStore:
    """Every kind of section: Tables 1, 2, 4-8, both sweeps, ListOps, bench runs, and failed trials."""
    store = ResultStore(root)
    for attention, params in SORT_ROWS:
        for seed in (0, 1, 2):
            metrics = [
                (split, metric, value(attention, params, seed, split, metric))
                for split in ("test", "test_2x")
                for metric in ("exact_match", "edit_distance", "loss")
            ]
            write(
                store,
                task="sort",
                attention=attention,
                params=params,
                seed=seed,
                metrics=[*metrics, ("train", "loss", 0.1)],
            )
    write(
        store,
        task="sort",
        attention="sinkhorn",
        params={"block_size": 16},
        seed=3,
        error="Traceback (most recent call last):\nRuntimeError: synthetic out of memory",
    )
    for size, model in (("base", SMOKE_MODEL), ("big", BIG_MODEL)):
        for attention, params in [
            ("vanilla", {}),
            ("local", {"block_size": 32}),
            ("sinkhorn", {"block_size": 32}),
            ("sinkhorn_mixture", {"block_size": 32}),
        ]:
            for seed in (0, 1):
                ppl = 40 + 10 * value(size, attention, params, seed)
                write(
                    store,
                    task="lm_subword",
                    task_params={"size": size},
                    model=model,
                    attention=attention,
                    params=params,
                    seed=seed,
                    metrics=[("test", "perplexity", ppl), ("test", "loss", math.log(ppl))],
                )
    for attention, params in [("vanilla", {}), ("sinkhorn", {"block_size": 128})]:
        write(
            store,
            task="lm_char",
            attention=attention,
            params=params,
            seed=0,
            metrics=[("test", "bpc", 1 + value("char", attention))],
        )
        write(
            store,
            task="image_gen",
            attention=attention,
            params=params,
            seed=0,
            metrics=[("test", "bpd", 3 + value("img", attention))],
        )
    for data, level, split in (
        ("/data/aclImdb", "word", "test"),
        ("/data/aclImdb", "char", "test"),
        ("/data/sst2", "word", "dev"),
    ):
        for attention, params in [
            ("vanilla", {}),
            ("sinkhorn", {"block_size": 8}),
            ("sortcut", {"block_size": 8, "budget": 2}),
        ]:
            for seed in (0, 1):
                write(
                    store,
                    task="classify",
                    task_params={"data": data, "level": level},
                    attention=attention,
                    params=params,
                    seed=seed,
                    metrics=[(split, "accuracy", 0.5 + value(data, level, attention, seed) / 2)],
                )
    for data, splits in (
        ("/data/snli_1.0", ("dev", "test")),
        ("/data/multinli_1.0", ("dev_matched", "dev_mismatched")),
    ):
        for attention, params in [("vanilla", {}), ("sinkhorn", {"block_size": 32})]:
            write(
                store,
                task="nli",
                task_params={"data": data},
                attention=attention,
                params=params,
                seed=0,
                metrics=[(s, "accuracy", 0.4 + value(data, s, attention) / 2) for s in splits],
            )
    for attention, params in [("vanilla", {}), ("local", {"block_size": 16})]:
        write(
            store,
            task="listops",
            attention=attention,
            params=params,
            seed=0,
            metrics=[("test", "accuracy", value("listops", attention))],
        )
    lm = {"task": "lm_subword", "task_params": {"size": "base"}, "attention": "sinkhorn"}
    for sortnet in ("relu", "linear_relu_linear", "relu_linear_relu_linear"):
        write(
            store,
            **lm,
            params={"block_size": 32, "sortnet": sortnet},
            seed=0,
            grid="ablation",
            metrics=[("test", "perplexity", 41 + value(sortnet))],
        )
    write(
        store,
        **lm,
        params={"block_size": 32, "iterations": 0},
        seed=0,
        grid="ablation",
        metrics=[("test", "perplexity", 52.0)],
    )
    write(
        store,
        **lm,
        params={"block_size": 32},
        model={**SMOKE_MODEL, "tie_kv": True},
        seed=0,
        grid="ablation",
        metrics=[("test", "perplexity", 42.5)],
    )
    for temperature in (0.25, 0.5, 0.75, 1.0):
        for seed in (0, 1):
            write(
                store,
                **lm,
                params={"block_size": 32, "temperature": temperature},
                seed=seed,
                grid="temperature",
                metrics=[("test", "perplexity", 40 + (temperature - 0.75) ** 2 * 10 + seed)],
            )
    for iterations in (0, 2, 5, 10, 20):
        write(
            store,
            **lm,
            params={"block_size": 32, "iterations": iterations},
            seed=0,
            grid="iterations",
            metrics=[("test", "perplexity", 40 + abs(iterations - 7))],
        )
    write_bench(store)
    return store


BENCH = [("vanilla", {}, 2.0), ("local", {"block_size": 64}, 1.0), ("sinkhorn", {"block_size": 64}, 1.0)]
LENGTHS = (256, 512, 1024, 2048)


def bench_seconds(order: float, length: int, run: int) -> float:
    return (10.0 if run == 0 else 1.0) * (length / 256) ** order * 1e-3


def write_bench(store: ResultStore) -> None:
    """Two ``attnbench bench`` runs (the second one later and 10x faster), one failed run."""
    for run in (0, 1):
        config = {
            "grid": "bench",
            "task": "speed_memory",
            "scale": "smoke",
            "seed": 0,
            "attention": "sweep",
            "params": {},
            "run": run,
        }
        trial_id = f"bench{run}"
        rows = []
        for attention, params, order in BENCH:
            for length in LENGTHS:
                common = {
                    "length": length,
                    "peak_memory_bytes": int(length**order * 1000),
                    "device": "cpu",
                    "started_at": T0,
                    "finished_at": T0 + timedelta(days=run),
                }
                for metric, measured in (
                    ("seconds", bench_seconds(order, length, run)),
                    ("saved_bytes", float(length**order * 500)),
                ):
                    row = rows_for_trial(
                        trial_id,
                        {**config, "attention": attention, "params": params},
                        metrics=[("forward_backward", metric, measured)],
                        error=None,
                        common=common,
                    )
                    rows.extend(row)
        store.write_trial(trial_id, rows)
    config = {"grid": "bench", "task": "speed_memory", "scale": "smoke", "seed": 0, "attention": "sbm", "params": {}}
    store.write_trial(
        "benchfail",
        rows_for_trial("benchfail", config, metrics=None, error="ValueError: sbm broke", common={"device": "cpu"}),
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ResultStore:
    return synthetic_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def sections(store) -> dict[str, dict]:
    return {s["id"]: s for s in report.build_sections(store.read())}


def row(table: dict, label: str) -> dict:
    found = [r for r in table["rows"] if r["label"] == label]
    assert len(found) == 1, [r["label"] for r in table["rows"]]
    return found[0]


def column(table: dict, top: str, metric: str) -> int:
    """Index of our cell under a header, in the flat list of cells (ours and paper)."""
    for index, header in enumerate(table["columns"]):
        if header["kind"] == "ours" and header["top"] == top and header["metric"] == metric:
            return index
    raise AssertionError(f"no column {top} / {metric} in {table['columns']}")


def test_sections_follow_the_paper_and_only_for_what_is_stored(sections):
    assert list(sections) == [
        "table1",
        "table2",
        "table4",
        "table5",
        "table6",
        "table7",
        "table8",
        "figure3",
        "figure4",
        "listops",
        "speed-memory",
        "long-range-arena",  # ListOps is one of Long Range Arena's tasks
    ]


def test_table1_cells_are_mean_and_t_interval_over_seeds_beside_the_paper(sections):
    (table,) = sections["table1"]["tables"]
    sinkhorn = row(table, "Sinkhorn (32)")
    em = column(table, "test_2x", "EM (%)")
    seeds = np.array([value("sinkhorn", {"block_size": 32}, s, "test_2x", "exact_match") for s in (0, 1, 2)]) * 100
    cell = sinkhorn["cells"][em]
    assert cell["n"] == 3 and cell["text"] == f"{seeds.mean():.2f}"
    half = stats.t.ppf(0.975, 2) * seeds.std(ddof=1) / math.sqrt(3)
    assert cell["ci"] == f"{half:.2f}"
    assert [t["seed"] for t in cell["trials"]] == [0, 1, 2]
    beside = sinkhorn["cells"][em + 1]  # the paper's EM stands right after ours, for the matching row
    assert table["columns"][em + 1] == {"kind": "paper", "top": "paper", "metric": "EM"}
    assert beside["kind"] == "paper" and beside["text"] == "49.24"
    assert row(table, "Transformer")["cells"][em + 1]["text"] == "45.69"
    assert row(table, "Sinkhorn Transformer (8)")["paper_only"]  # the paper's rows we did not run stay visible
    # the split the paper does not report (test, length L) has no paper column beside it
    plain = column(table, "test", "EM (%)")
    assert all(h["kind"] == "ours" for h in table["columns"][plain + 1 : plain + 2])


def test_best_cell_per_column_is_marked_lower_or_higher_is_better(sections):
    (table,) = sections["table1"]["tables"]
    ours = [r for r in table["rows"] if not r["paper_only"]]
    for top, metric, pick in (("test_2x", "EM (%)", max), ("test_2x", "edit dist.", min)):
        index = column(table, top, metric)
        means = {r["label"]: r["cells"][index]["mean"] for r in ours}
        best = [r["label"] for r in ours if r["cells"][index]["best"]]
        assert best == [pick(means, key=means.get)]
    paper_best = [
        r["label"]
        for r in table["rows"]
        if any(c["kind"] == "paper" and c["best"] and c["text"] == "49.24" for c in r["cells"])
    ]
    assert paper_best == ["Sinkhorn (32)"]


def test_failed_trials_are_counted_in_their_row_and_listed(store, sections):
    (table,) = sections["table1"]["tables"]
    failed = row(table, "Sinkhorn (16)")["failed"]
    assert len(failed) == 1 and failed[0]["error"] == "RuntimeError: synthetic out of memory"
    assert sections["table1"]["failed"] == 1
    assert [f["error"] for f in sections["speed-memory"]["failed"]] == ["ValueError: sbm broke"]
    html = report.render(store.read())
    assert html.count("RuntimeError: synthetic out of memory") >= 2  # in the row, and in the failed list
    assert re.search(r"<h2>Failed trials \(2\)</h2>", html)


def test_lm_tables_have_base_and_big_columns_with_the_papers_values(sections):
    (table,) = sections["table2"]["tables"]
    tops = [h["top"] for h in table["columns"]]
    assert [h["metric"] for h in table["columns"] if h["kind"] == "paper"] == ["Base", "Big"]
    assert any(t.startswith("base") for t in tops) and any(t.startswith("big") for t in tops)
    transformer = row(table, "Transformer")
    assert [c["text"] for c in transformer["cells"] if c["kind"] == "paper"] == ["41.57", "27.59"]
    assert row(table, "Local Attention (64)")["paper_only"]
    mixture = row(table, "Sinkhorn Mixture (32)")  # the paper's mixture has no block size: matches any
    assert [c["text"] for c in mixture["cells"] if c["kind"] == "paper"] == ["40.11", "27.34"]
    # the temperature sweep's trials are Sinkhorn (32) at other temperatures: rows of their own, never pooled
    assert row(table, "Sinkhorn (32) [temperature=0.25]")["cells"][0]["n"] == 2


def test_classification_columns_come_from_the_data_path_and_level(sections):
    (table,) = sections["table6"]["tables"]
    headers = [(h["kind"], h["top"], h["metric"]) for h in table["columns"]]
    assert ("ours", "imdb · word · test", "accuracy (%)") in headers
    assert headers[headers.index(("ours", "imdb · word · test", "accuracy (%)")) + 1] == ("paper", "paper", "IMDb Word")
    assert ("paper", "paper", "SST Char") in headers  # a paper column we have no data for is still shown
    sortcut = row(table, "SortCut Sinkhorn (2x8)")
    assert [c["text"] for c in sortcut["cells"] if c["kind"] == "paper"][:2] == ["84.32", "64.53"]
    (nli,) = sections["table7"]["tables"]
    tops = [h["top"] for h in nli["columns"]]
    assert tops[tops.index("mnli · word · dev_matched") + 1] == "paper"
    assert tops[tops.index("mnli · word · dev_mismatched") + 1 :][:1] != ["paper"]


def test_table8_rows_are_the_sinkhorn_variants(sections):
    (table,) = sections["table8"]["tables"]
    labels = [r["label"] for r in table["rows"]]
    for number in range(1, 7):
        assert any(label.startswith(f"({number}) ") and label.endswith("Sinkhorn (32)") for label in labels), labels
    no_sinkhorn = next(r for r in table["rows"] if r["label"].startswith("(6) ") and not r["paper_only"])
    assert [c["text"] for c in no_sinkhorn["cells"] if c["kind"] == "paper"] == ["52.40"]
    assert not any(r["paper_only"] for r in table["rows"] if r["label"].startswith("(5) "))
    # sweeps stay in their figures: row (4) only at the other settings of some ablation
    assert not any("temperature=" in label or "iterations=2" in label for label in labels), labels
    # and the ablated variants are Table 8's rows only, not rows of Table 2
    (lm,) = sections["table2"]["tables"]
    assert not any("sortnet" in r["label"] or "K=V" in r["label"] for r in lm["rows"])
    assert not any("iterations=0" in r["label"] for r in lm["rows"])


def test_sweeps_plot_only_lines_with_two_values_and_embed_a_png(sections):
    temperature = sections["figure3"]["figure"]
    assert sorted({p["x"] for p in temperature["points"]}) == [0.25, 0.5, 0.75, 1.0]
    assert {p["line"] for p in temperature["points"]} == {"Sinkhorn (32)"}
    assert all(p["n"] == 2 for p in temperature["points"])
    assert temperature["png"].startswith("iVBORw0KGgo")  # base64 of the PNG signature
    iterations = sections["figure4"]["figure"]
    assert sorted({p["x"] for p in iterations["points"]}) == [0, 2, 5, 10, 20]


@pytest.mark.parametrize("second_sweeps", [False, True])
def test_a_sweep_legend_names_a_context_only_to_tell_drawn_lines_apart(tmp_path, second_sweeps):
    """Trials of two experiments set the temperature; the legend shows what differs between them (the steps) only
    when both draw a line, never the long caption of every training setting."""
    store = ResultStore(tmp_path)
    for steps, temperatures in ((10, [0.25, 0.75]), (20, [0.25, 0.75] if second_sweeps else [0.75])):
        for temperature in temperatures:
            params = {"block_size": 32, "temperature": temperature}
            metrics = [("test", "bpc", 1.0 + temperature + steps / 100)]
            write(store, task="lm_char", attention="sinkhorn", params=params, seed=0, train={**TRAIN, "steps": steps},
                  metrics=metrics)  # fmt: skip
    figure = {s["id"]: s for s in report.build_sections(store.read())}["figure3"]["figure"]
    lines = {p["line"] for p in figure["points"]}
    if second_sweeps:
        assert lines == {"Sinkhorn (32) · train.steps=10", "Sinkhorn (32) · train.steps=20"}
    else:
        assert lines == {"Sinkhorn (32)"} and {p["x"] for p in figure["points"]} == {0.25, 0.75}


def test_bench_shows_the_latest_run_per_attention_length_and_device(store):
    frame = store.read()
    latest = figures.latest_speed_rows(frame)
    assert set(latest["trial_id"]) == {"bench1"}
    speed = figures.speed_figure(frame)
    got = {(p["label"], p["length"]): float(p["seconds"]) for p in speed["points"]}
    assert got[("Transformer", 1024)] == pytest.approx(bench_seconds(2.0, 1024, 1), rel=1e-3)
    slopes = {s["label"]: s for s in speed["slopes"]}
    assert slopes["Transformer"]["seconds"] == "2.00" and slopes["Local Attention (64)"]["peak"] == "1.00"


def test_every_cell_links_to_a_trial_config_in_the_page(store, sections):
    html = report.render(store.read())
    linked = set(re.findall(r'href="#(trial-[a-z0-9_-]+)"', html))
    anchors = set(re.findall(r'id="(trial-[a-z0-9_-]+)"', html))
    assert linked and linked <= anchors
    (table,) = sections["table1"]["tables"]
    for trial in row(table, "Sinkhorn (32)")["cells"][0]["trials"]:
        assert f'href="#trial-{trial["id"]}"' in html
    assert html.count("<details><summary>config</summary>") == store.read()["trial_id"].nunique()
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch


def test_every_table_has_a_headline_figure_of_points_with_intervals(sections):
    tables = [t for s in sections.values() if s["kind"] == "table" for t in s["tables"]]
    assert len(tables) >= 8
    for table in tables:
        assert table["figure"] is not None and len(table["figure"]["png"]) > 1000
    (table1,) = sections["table1"]["tables"]
    points = {(p["facet"], p["label"]): p for p in table1["figure"]["points"]}
    em = column(table1, "test_2x", "EM (%)")
    cell = row(table1, "Sinkhorn (32)")["cells"][em]
    plotted = points[("test_2x · EM (%)", "Sinkhorn (32)")]
    assert plotted["n"] == cell["n"] == 3
    assert math.isclose(plotted["mean"], cell["mean"]) and f"{plotted['ci']:.2f}" == cell["ci"]  # the table's numbers
    ours = {r["label"] for r in table1["rows"] if not r["paper_only"]}
    assert {label for _, label in points} == ours  # paper-only rows have nothing to plot


def test_headline_figure_takes_any_frame_of_final_rows():
    rows = [
        {"facet": "test · accuracy (%)", "label": name, "metric": "accuracy", "value": v, "seed": s, "trial_id": "t"}
        for name, base in (("Transformer", 80.0), ("Sinkhorn (8)", 85.0))
        for s, v in enumerate((base, base + 2.0, base - 1.0))
    ]
    got = figures.headline_figure(pd.DataFrame(rows), order=["Sinkhorn (8)", "Transformer"])
    assert [p["label"] for p in got["points"]] == ["Sinkhorn (8)", "Transformer"]
    assert got["points"][0]["n"] == 3 and math.isclose(got["points"][0]["mean"], 85.0 + 1 / 3)
    single = figures.headline_figure(pd.DataFrame(rows[:1]))
    assert single["points"][0]["ci"] == 0.0  # one seed: a point, no interval
    assert figures.headline_figure(pd.DataFrame(rows).iloc[0:0]) is None


def test_a_store_with_one_task_gets_only_its_section_and_unknown_tasks_their_own(tmp_path):
    store = ResultStore(tmp_path)
    write(store, task="sort", attention="local", params={"block_size": 4}, seed=0, metrics=[("test", "loss", 1.0)])
    write(store, task="copy", attention="vanilla", params={}, seed=0, metrics=[("test", "accuracy", 0.5)])
    assert [s["id"] for s in report.build_sections(store.read())] == ["table1", "task-copy"]


def test_the_demo_grid_store_reads_as_before(tmp_path):
    """What tests/harness/test_cli.py checks after a real run, on a store of the same shape (fast)."""
    store = ResultStore(tmp_path)
    for attention, params in (("vanilla", {}), ("local", {"block_size": 4})):
        write(
            store,
            task="sort",
            attention=attention,
            params=params,
            seed=0,
            metrics=[("test", "exact_match", 0.5), ("test_2x", "edit_distance", 0.3), ("test", "loss", 1.0)],
        )
    write(
        store, task="sort", attention="exploding", params={}, seed=0, error="RuntimeError: exploding attention says no"
    )
    html = report.render(store.read())
    assert "Local Attention (4)" in html and "Transformer" in html and "exploding attention says no" in html
    (section,) = report.build_sections(store.read())
    (table,) = section["tables"]
    assert row(table, "exploding")["failed"][0]["error"] == "RuntimeError: exploding attention says no"
    assert all(c["text"] == "–" for c in row(table, "exploding")["cells"] if c["kind"] == "ours")


def test_a_store_of_only_failures_or_only_bench_rows_still_renders(tmp_path):
    failures = ResultStore(tmp_path / "failed")
    write(failures, task="sort", attention="vanilla", params={}, seed=0, error="RuntimeError: boom")
    (section,) = report.build_sections(failures.read())
    assert section["id"] == "table1" and section["failed"] == 1
    assert "RuntimeError: boom" in report.render(failures.read())
    bench = ResultStore(tmp_path / "bench")
    write_bench(bench)
    assert [s["id"] for s in report.build_sections(bench.read())] == ["speed-memory"]


def test_different_experiments_are_separate_tables_never_pooled(tmp_path):
    store = ResultStore(tmp_path)
    for steps in (10, 20):
        write(
            store,
            task="sort",
            attention="vanilla",
            params={},
            seed=0,
            train={**TRAIN, "steps": steps},
            metrics=[("test_2x", "exact_match", steps / 100)],
        )
    (section,) = report.build_sections(store.read())
    captions = [t["caption"] for t in section["tables"]]
    assert len(captions) == 2 and any("train.steps=10" in c for c in captions)
    assert all(row(t, "Transformer")["cells"][0]["n"] == 1 for t in section["tables"])


def test_setup_line_names_the_data_and_trials_on_other_data_are_not_pooled(tmp_path):
    store = ResultStore(tmp_path)
    provenance = [
        {"source": "hf", "id": "stanfordnlp/imdb", "revision": "e6281661ce1c48d982bc483cf8a173c1bbeb5d31"},
        {"source": "embedded", "name": "pydoc_data.topics passages", "characters": 123456},
    ]
    for seed, data in enumerate(provenance):
        write(
            store,
            task="classify",
            attention="vanilla",
            params={},
            seed=seed,
            task_params={"data": "hf:stanfordnlp/imdb"},
            metrics=[("test", "accuracy", 0.8)],
            common={"data": json.dumps(data)},
        )
    (section,) = report.build_sections(store.read())
    captions = sorted(t["caption"] for t in section["tables"])
    assert len(captions) == 2
    # the setup line starts with the length that ran (classify's smoke word level: 64 tokens), then the data
    assert captions[0].startswith("length=64, data=hf:stanfordnlp/imdb@e6281661ce1c, scale=smoke")
    assert captions[1].startswith("length=64, data=pydoc_data.topics passages (123,456 chars)")
    setups = [t["setup"] for t in sorted(section["tables"], key=lambda t: t["caption"])]
    assert setups[0][0] == {"who": "paper", "length": "512 words / 2048 characters", "steps": "15K",
                            "data": "IMDb (test), SST (dev)"}  # fmt: skip
    assert setups[0][1]["data"].startswith("hf:stanfordnlp/imdb@") and setups[0][1]["steps"] == "50"


EVIL = "<script>alert(1)</script>"


def test_every_stored_string_is_escaped(tmp_path):
    store = ResultStore(tmp_path)
    evil = {"grid": "<i>grid</i>", "task": "<b>task</b>"}
    write(
        store,
        **evil,
        attention=EVIL,
        params={"block_size": 4, "note": '"><img src=x onerror=alert(2)>'},
        seed=0,
        metrics=[("<u>split</u>", "<s>metric</s>", 1.0)],
    )
    write(store, **evil, attention=EVIL, params={}, seed=1, error="</pre><script>alert(3)</script>")
    for temperature in (0.5, 1.0):  # a `$` must not reach matplotlib's mathtext
        write(
            store,
            task="sort",
            attention="cost$x$",
            params={"temperature": temperature},
            seed=0,
            metrics=[("test", "exact_match", temperature)],
        )
    html = report.render(store.read())
    assert "<script" not in html and "<img src=x" not in html and "<b>task" not in html and "<u>split" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;/pre&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in html
    assert "&lt;s&gt;metric&lt;/s&gt;" in html and "&lt;i&gt;grid&lt;/i&gt;" in html
    assert 'id="task-b-task-b"' in html  # ids and anchors are slugs, whatever the name
    assert "figure3" in {s["id"] for s in report.build_sections(store.read())}


def test_paper_data_is_complete_and_checked(tmp_path):
    sections = paper.load_sections()
    for section in sections:
        for paper_row in section.rows:
            assert set(paper_row.values) == {c.id for c in section.columns}, (section.id, paper_row.label)
    table8 = next(s for s in sections if s.id == "table8")
    assert [r.values["ppl"] for r in table8.rows] == [41.70, 41.38, 41.34, 41.29, 42.26, 52.40]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "sections:\n  - {id: t, kind: table, title: T, columns: [{id: a, label: A, where: {}}],\n"
        "     rows: [{label: R, match: {}, values: {b: 1.0}}]}\n"
    )
    with pytest.raises(ValueError, match="unknown columns"):
        paper.load_sections(bad)


def test_cli_writes_the_page_and_says_where(store, tmp_path, capsys):
    from harness.cli import main

    out = tmp_path / "nested" / "report.html"
    assert main(["report", "--results", str(store.root), "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8").startswith("<!doctype html>")
    assert str(out) in " ".join(capsys.readouterr().out.split())  # the command's answer: stdout


def test_learning_curves_are_mean_and_interval_per_step_and_stay_out_of_the_tables(tmp_path):
    store = ResultStore(tmp_path / "store")
    train = {**TRAIN, "eval_every": 10, "select": "best"}
    curve = {("vanilla", 0): [0.2, 0.5], ("vanilla", 1): [0.4, 0.7], ("local", 0): [0.1, 0.3], ("local", 1): [0.3, 0.5]}
    for (attention, seed), points in curve.items():
        params = {"block_size": 32} if attention == "local" else {}
        metrics = [("test", "exact_match", 0.9), ("test", "edit_distance", 0.1)]
        for step, em in zip((10, 20), points, strict=True):
            metrics += [("val", "loss", 1.0 - em, step), ("val", "exact_match", em, step), ("train", "loss", 2.0, step)]
        write(store, task="sort", attention=attention, params=params, seed=seed, metrics=metrics, train=train)
    built = {s["id"]: s for s in report.build_sections(store.read())}
    points = {(p["line"], p["step"]): p for p in built["learning-curves"]["figure"]["points"]}
    assert set(points) == {(line, step) for line in ("Transformer", "Local Attention (32)") for step in (10, 20)}
    vanilla = points[("Transformer", 20)]
    assert vanilla["metric"] == "exact_match" and vanilla["n"] == 2
    assert vanilla["mean"] == pytest.approx(60.0)  # in %, mean of 50 and 70
    assert vanilla["ci"] == pytest.approx(stats.t.ppf(0.975, 1) * np.std([50, 70], ddof=1) / math.sqrt(2))
    (table,) = built["table1"]["tables"]
    assert "best validation step" in table["caption"]
    assert column(table, "test", "EM (%)") is not None
    assert not any(h["top"] == "val" for h in table["columns"])  # curve rows never become table columns
    page = report.render(store.read())
    assert page.count('id="learning-curves"') == 1 and "Learning curves" in page


def test_no_learning_curves_section_without_periodic_rows(sections):
    assert "learning-curves" not in sections
