"""Pages and terminals say what ran: the paper's setup beside the run's, intervals inside a metric's range, stars on
every displayed tie, labels with the parameters that ran (defaults included), a warning for a block that covers the
sequence, and the results table of ``attnbench run`` / ``attnbench show``."""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
import warnings

import pytest
from test_report import SMOKE_MODEL, write

from harness import cli
from harness.reporting import figures, labels, paper, report, summary, tables
from harness.reporting.setup import setup_rows
from harness.running import grid as grid_module
from harness.store import ResultStore

SORT_TRAIN = {"steps": 300, "batch_size": 16, "lr": 0.002}


def sort_store(root, seeds=(0, 1)) -> ResultStore:
    """The demo's sorting cell in small: vanilla, local (4) and ``sinkhorn: {}`` (block 32 by default)."""
    store = ResultStore(root)
    for attention, params in (("vanilla", {}), ("local", {"block_size": 4}), ("sinkhorn", {})):
        for seed in seeds:
            em = {"vanilla": 0.9, "local": 0.5, "sinkhorn": 0.7}[attention] + 0.05 * seed
            write(
                store,
                task="sort",
                attention=attention,
                params=params,
                seed=seed,
                train=SORT_TRAIN,
                grid="smoke",
                metrics=[("test", "exact_match", em), ("test", "edit_distance", 0.1 - 0.05 * seed)],
            )
    return store


def table1() -> paper.Section:
    return next(s for s in paper.load_sections() if s.id == "table1")


# (a) the paper's setup beside the run's ---------------------------------------------------------------------------


def test_setup_rows_state_the_papers_and_the_runs_length_steps_and_data(tmp_path):
    trials = labels.trial_info(sort_store(tmp_path).read())
    paper_row, run_row = setup_rows(table1(), trials, None)
    assert paper_row == {
        "who": "paper",
        "length": "256 (evaluated at 512 too)",
        "steps": "200K",
        "data": "generated sequences (100K train, 1K test)",
    }
    # the smoke sort task trains at length 8 and tests at 16 (its spec), for the grid's 300 steps
    assert run_row == {
        "who": "this run",
        "length": "8 (evaluated at 16 too)",
        "steps": "300",
        "data": "generated from the seed",
    }


def test_the_page_shows_both_setups_and_the_setup_line_states_the_length(tmp_path):
    html = report.render(sort_store(tmp_path).read())
    assert "256 (evaluated at 512 too)" in html and "8 (evaluated at 16 too)" in html
    assert "setup: length=8 (evaluated at 16 too), " in html
    assert "this run" in html and "200K" in html


def test_a_bad_setup_entry_is_refused_naming_the_section(tmp_path):
    bad = tmp_path / "paper.yaml"
    bad.write_text("sections:\n  - {id: t, kind: table, title: T, caption: c, tasks: [sort], setup: {lenght: 256}}\n")
    with pytest.raises(ValueError, match=r"section 't': setup must be a mapping of length, steps, data"):
        paper.load_sections(bad)


# (b) intervals drawn inside the metric's range ----------------------------------------------------------------------


def test_intervals_are_clipped_to_what_the_metric_can_take():
    assert labels.clipped_interval("exact_match", 90.0, 30.0) == (60.0, 100.0)
    assert labels.clipped_interval("accuracy", 5.0, 8.0) == (0.0, 13.0)
    assert labels.clipped_interval("edit_distance", 0.1, 0.3) == pytest.approx((0.0, 0.4))
    assert labels.clipped_interval("perplexity", 1.5, 1.0) == (1.0, 2.5)
    assert labels.clipped_interval("bpc", 2.0, 0.1) == pytest.approx((1.9, 2.1))


def test_error_bars_of_the_figures_stop_at_the_range():
    lower, upper = figures._error_bar("exact_match", [90.0, 50.0], [30.0, 10.0])
    assert lower == pytest.approx([30.0, 10.0]) and upper == pytest.approx([10.0, 10.0])  # 90 + 10 = 100, not 120
    lower, upper = figures._error_bar("edit_distance", [0.05], [0.2])
    assert lower == pytest.approx([0.05]) and upper == pytest.approx([0.2])  # down to 0, not -0.15


# (c) every displayed tie gets the star ------------------------------------------------------------------------------


def _cell(metric: str, mean: float) -> dict:
    return {"kind": "ours", "mean": mean, "text": labels.fmt(metric, mean), "lower": metric in labels.LOWER_IS_BETTER}


def test_every_cell_that_reads_as_the_best_is_starred():
    body = [{"cells": [_cell("exact_match", m)]} for m in (0.0, 0.001, 0.0)]  # three cells that all read 0.00
    tables._mark_best([], body)
    assert [row["cells"][0]["best"] for row in body] == [True, True, True]
    body = [{"cells": [_cell("perplexity", m)]} for m in (1.001, 1.004, 1.5)]
    tables._mark_best([], body)
    assert [row["cells"][0]["best"] for row in body] == [True, True, False]


def test_negative_zero_reads_as_zero():
    assert labels.fmt("edit_distance", -0.0) == "0.0000"
    assert labels.fmt("exact_match", -1e-9) == "0.00"
    assert labels.fmt("loss", -0.5) == "-0.5000"


# (d) labels name what ran; a block that covers the sequence is warned about ----------------------------------------


def test_labels_show_the_default_block_size_and_parameters_that_differ():
    trials = [("a", "sinkhorn", {}), ("a", "sinkhorn", {"temperature": 0.5}), ("a", "local", {"block_size": 4})]
    shown = labels.shown_params([*trials, ("b", "sinkhorn", {})])
    assert labels.attention_label("sinkhorn", shown[0]) == "Sinkhorn (32) [temperature=0.75]"
    assert labels.attention_label("sinkhorn", shown[1]) == "Sinkhorn (32) [temperature=0.5]"
    assert labels.attention_label("local", shown[2]) == "Local Attention (4)"
    # in another experiment (group) nothing differs: the defaults that do not vary stay quiet, the block shows
    assert labels.attention_label("sinkhorn", shown[3]) == "Sinkhorn (32)"


def test_the_report_labels_a_default_block_and_matches_the_papers_row(tmp_path):
    trials = labels.trial_info(sort_store(tmp_path).read())
    sinkhorn = trials[trials["attention"] == "sinkhorn"].iloc[0]
    assert sinkhorn["label"] == "Sinkhorn (32)" and sinkhorn["attrs"]["block_size"] == 32
    assert sinkhorn["params"] == {}  # the stored parameters are left as the grid wrote them


def _grid(tmp_path, attentions: str):
    path = tmp_path / "g.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: g
            tasks: [sort]
            scale: smoke
            seeds: [0]
            attentions: {attentions}
            train: {{steps: 5, batch_size: 4}}
            """
        )
    )
    return path


def test_a_block_that_covers_the_sequence_warns_at_grid_expansion(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grid_module.load_trials(_grid(tmp_path, "{sinkhorn: {}, local: {block_size: 4}, sparse: {block_size: 16}}"))
    messages = [str(w.message) for w in caught if issubclass(w.category, grid_module.GridWarning)]
    assert len(messages) == 2, messages
    default = "attentions.sinkhorn: block_size=32 (the plugin's default) on task sort covers its longest sequence (16)"
    assert any(default in m for m in messages)
    assert any("attentions.sparse: block_size=16 on task sort" in m for m in messages)
    assert not any("attentions.local" in m for m in messages)


def test_the_cli_prints_the_warning_on_stderr_and_still_runs(tmp_path, capsys):
    assert cli.main(["run", str(_grid(tmp_path, "{sinkhorn: {}}")), "--dry-run", "--results", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "block_size=32 (the plugin's default)" in " ".join(captured.err.split())
    assert "1 trials" in captured.out and "warning" not in captured.out


# (e, f) the results table: run's ending and attnbench show ---------------------------------------------------------


def test_summary_pools_seeds_per_setting_with_the_t_interval(tmp_path):
    table = summary.summarize(sort_store(tmp_path).read())
    em = table[(table["metric"] == "exact_match") & (table["attention"] == "local")].iloc[0]
    assert em["params"] == "block_size=4" and em["n"] == 2 and em["unit"] == "%"
    values = [50.0, 55.0]
    half = 12.706204736174698 * math.sqrt(((values[0] - 52.5) ** 2 + (values[1] - 52.5) ** 2) / 1) / math.sqrt(2)
    assert em["mean"] == pytest.approx(52.5) and em["ci95"] == pytest.approx(half)
    sinkhorn = table[table["attention"] == "sinkhorn"]
    assert set(sinkhorn["params"]) == {"block_size=32"}  # the default that ran, named


def test_summary_keeps_a_setting_whose_trials_all_failed(tmp_path):
    store = sort_store(tmp_path, seeds=(0,))
    write(store, task="sort", attention="sparse", params={"block_size": 4, "stride": 2}, seed=0, train=SORT_TRAIN,
          grid="smoke", error="RuntimeError: no")  # fmt: skip
    table = summary.summarize(store.read())
    failed = table[table["attention"] == "sparse"]
    assert len(failed) == 1 and failed.iloc[0]["n"] == 0 and failed.iloc[0]["failed"] == 1


def test_show_exports_csv_json_and_markdown_with_filters(tmp_path, capsys):
    results = tmp_path / "results"
    sort_store(results)
    write(ResultStore(results), task="lm_char", attention="vanilla", params={}, seed=0, model=SMOKE_MODEL,
          grid="other", metrics=[("test", "bpc", 2.5)])  # fmt: skip
    assert cli.main(["show", "--results", str(results), "--task", "sort", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["task"] for r in rows} == {"sort"} and len(rows) == 6  # 3 attentions x 2 metrics
    assert cli.main(["show", "--results", str(results), "--grid", "other", "--format", "json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["metric"] == "bpc" and record["mean"] == 2.5 and record["ci95"] is None and record["n"] == 1
    assert cli.main(["show", "--results", str(results), "--attention", "local", "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| grid | task | attention | params |") and len(lines) == 4


def test_show_names_a_filter_that_matches_nothing_stored(tmp_path, capsys):
    results = tmp_path / "results"
    sort_store(results)
    assert cli.main(["show", "--results", str(results), "--attention", "sinkhorm"]) == cli.EXIT_BAD_INPUT
    err = " ".join(capsys.readouterr().err.split())
    assert "--attention 'sinkhorm': no such attention in the store; did you mean 'sinkhorn'?" in err


def test_the_terminal_table_has_one_row_per_setting_and_metric(tmp_path, capsys):
    results = tmp_path / "results"
    sort_store(results)
    assert cli.main(["show", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    local = [line for line in out.splitlines() if " local " in line and "exact_match" in line]
    assert len(local) == 1 and "52.50 ± " in local[0] and "block_size=4" in local[0]


def test_summary_leaves_out_the_last_validation_score_and_plugin_diagnostics(tmp_path):
    store = ResultStore(tmp_path)
    metrics = [("test", "exact_match", 0.5), ("val", "exact_match", 0.6), ("eval", "sort_entropy", 0.4)]
    write(store, task="sort", attention="sinkhorn", params={"block_size": 4}, seed=0, train=SORT_TRAIN, metrics=metrics)
    table = summary.summarize(store.read())
    assert list(zip(table["split"], table["metric"], strict=True)) == [("test", "exact_match")]
