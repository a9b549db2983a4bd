"""The ``attnbench`` command end to end: a real grid on the embedded Ray, bad input, a killed driver."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

EXPLODING = '''
from attentions import Attention, register_attention

@register_attention("exploding")
class ExplodingAttention(Attention):
    """Fails on purpose: a trial that raises must be stored as failed while the grid goes on."""
    def __init__(self, *, heads: int, head_dim: int, max_len: int, causal: bool = False):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)
    def forward(self, q, k, v, padding_mask=None):
        raise RuntimeError("exploding attention says no")
'''


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def grid_file(tmp_path: Path, attentions: str, seeds: str = "[0]", steps: int = 10, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: {name}
            tasks: [{{sort: {{train_size: 200, test_size: 16}}}}]
            scale: smoke
            seeds: {seeds}
            attentions: {attentions}
            train: {{steps: {steps}, batch_size: 8}}
            """
        )
    )
    return path


def test_run_stores_every_trial_and_failures_and_reruns_skip(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "exploding.py").write_text(EXPLODING)
    results = tmp_path / "results"
    grid = grid_file(tmp_path, "{vanilla: {}, local: {block_size: 4}, exploding: {}}")

    first = cli("run", str(grid), "--results", str(results), "--plugins", str(plugins))
    assert first.returncode == 1, first.stderr  # one trial failed: non-zero, but the grid finished
    frame = pd.read_parquet(results)
    assert frame["trial_id"].nunique() == 3
    failed = frame[frame["status"] == "failed"]
    assert len(failed) == 1 and failed["attention"].item() == "exploding"
    assert "exploding attention says no" in failed["error"].item()
    ok = frame[frame["status"] == "ok"]
    assert set(ok["attention"]) == {"vanilla", "local"}
    assert {"exact_match", "edit_distance", "loss"} <= set(ok["metric"])
    assert (ok["peak_memory_bytes"] > 0).all() and (ok["tokens_per_second"] > 0).all()
    assert (ok["num_parameters"] > 0).all() and (ok["device"] == "cpu").all()
    # the run ends with the grid's results as a table: a row per attention setting and metric, failures counted
    rows = [line for line in first.stdout.splitlines() if " local " in line and "exact_match (%)" in line]
    assert len(rows) == 2 and all("block_size=4" in row for row in rows)  # test and test_2x
    assert any(" exploding " in line and line.rstrip(" │").endswith("1") for line in first.stdout.splitlines())

    second = cli("run", str(grid), "--results", str(results), "--plugins", str(plugins))
    assert "2 of 3 trials already stored" in second.stderr
    again = pd.read_parquet(results)
    assert again["trial_id"].nunique() == 3 and len(again) == len(frame)  # the failed one re-ran, replaced
    pd.testing.assert_frame_equal(
        again[again.status == "ok"].sort_values(["trial_id", "split", "metric"]).reset_index(drop=True),
        ok.sort_values(["trial_id", "split", "metric"]).reset_index(drop=True),
    )

    report = tmp_path / "report.html"
    assert cli("report", "--results", str(results), "--out", str(report)).returncode == 0
    html = report.read_text()
    assert "Local Attention (4)" in html and "Transformer" in html and "exploding attention says no" in html


def test_bad_grid_exits_2_with_one_line_and_touches_nothing(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "part-keep.parquet").write_bytes(b"existing bytes")
    bad = grid_file(tmp_path, "{local: {block_size: 4, window: 3}}")
    run = cli("run", str(bad), "--results", str(results))
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert f"{bad}: attentions.local: attention 'local' has no parameter 'window'" in " ".join(run.stderr.split())
    assert sorted(p.name for p in results.iterdir()) == ["part-keep.parquet"]
    assert (results / "part-keep.parquet").read_bytes() == b"existing bytes"


def test_driver_killed_with_sigkill_resumes_with_every_trial_exactly_once(tmp_path):
    results = tmp_path / "results"
    grid = grid_file(tmp_path, "{vanilla: {}, local: {block_size: 4}}", seeds="[0, 1]", steps=60, name="killme")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(grid), "--results", str(results), "--max-concurrent", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # so the embedded Ray it started can be cleaned up after the crash
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(results.glob("part-*.parquet")):
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)  # the driver alone dies, as in a crash; its Ray is orphaned
    driver.wait(timeout=30)
    stored_before = {p.name for p in results.glob("part-*.parquet")}
    assert 1 <= len(stored_before) < 4, "the driver should be killed mid-grid"

    try:
        os.killpg(driver.pid, signal.SIGKILL)  # the orphans would hold Ray's default agent ports for later tests
    except ProcessLookupError:
        pass
    rerun = cli("run", str(grid), "--results", str(results))
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(stored_before)} of 4 trials already stored" in rerun.stderr
    frame = pd.read_parquet(results)
    assert frame["trial_id"].nunique() == 4 and (frame["status"] == "ok").all()
    per_trial = frame.groupby("trial_id").apply(
        lambda g: g[["split", "metric"]].duplicated().sum(), include_groups=False
    )
    assert (per_trial == 0).all()  # no (split, metric) row twice within any trial
    assert {p.name for p in results.glob("part-*.parquet")} >= stored_before


def test_list_goes_to_stdout_so_it_can_be_piped():
    listing = cli("list", timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert listing.stderr == ""
    lines = [line for line in listing.stdout.splitlines() if "sink" in line]  # `attnbench list | grep sink`
    assert {line.split()[0] for line in lines} >= {"sinkhorn", "sinkhorn_mixture", "sinkformer"}
    assert "smoke" in listing.stdout.split()


def test_help_version_and_every_option_has_help():
    from harness.cli import parser

    top = cli("--help", timeout=60)
    assert top.returncode == 0 and "``" not in top.stdout and "attnbench run smoke --dry-run" in top.stdout
    version = cli("--version", timeout=60)
    assert (
        version.returncode == 0 and version.stdout.startswith("attnbench ") and version.stdout.split()[1][0].isdigit()
    )
    verbs = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {c.dest for c in verbs._choices_actions} == set(verbs.choices)  # every command has a help line
    for name, command in verbs.choices.items():
        assert command.description and "``" not in command.description, name
        for action in command._actions:
            assert action.help, f"attnbench {name} {action.dest}: no help text"
        shown = cli(name, "--help", timeout=60)
        assert shown.returncode == 0 and "``" not in shown.stdout, name


def test_dry_run_lists_trials_and_counts_stored_without_ray_or_writes(tmp_path):
    from harness.running.grid import load_trials
    from harness.store import ResultStore, rows_for_trial

    grid = grid_file(tmp_path, "{vanilla: {}, local: {block_size: [2, 4]}}", seeds="[0, 1]")
    missing = tmp_path / "never"
    started = time.perf_counter()
    dry = cli("run", str(grid), "--results", str(missing), "--dry-run", timeout=120)
    assert time.perf_counter() - started < 30  # no Ray start
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.strip().splitlines()
    assert len(lines) == 7 and lines[-1].startswith("grid tiny: 6 trials, 0 already stored")
    first = lines[2].split()
    assert first[1:4] == ["sort", "test_size=16", "train_size=200"] and "local" in first and "block_size=2" in first
    assert "seed=0" in first and "cpus=1" in first and "workers=1" in first and first[-2:] == ["to", "run"]
    assert not missing.exists()

    results = tmp_path / "results"
    trial = load_trials(grid)[1][0]
    ResultStore(results).write_trial(
        trial.trial_id,
        rows_for_trial(trial.trial_id, trial.config(), metrics=[("test", "loss", 1.0)], error=None, common={}),
    )
    before = sorted(results.rglob("*"))
    probe = (
        "import sys; from harness.cli import main; code = main(sys.argv[1:]); "
        "assert 'ray' not in sys.modules, 'dry run imported ray'; sys.exit(code)"
    )
    dry = subprocess.run(
        [sys.executable, "-c", probe, "run", str(grid), "--results", str(results), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    assert "6 trials, 1 already stored" in dry.stdout
    assert [line.split()[-1] for line in dry.stdout.splitlines()[:6]].count("stored") == 1
    assert sorted(results.rglob("*")) == before


def test_an_invalid_cell_names_the_task_on_the_command_line(tmp_path):
    bad = grid_file(tmp_path, "{sortcut: {block_size: 4}}")
    run = cli("run", str(bad), "--dry-run", timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert "attentions.sortcut {'block_size': 4} on task sort (seq2seq)" in " ".join(run.stderr.split())


def test_trials_failing_on_one_missing_data_set_are_summarised_once(tmp_path):
    grid = tmp_path / "missing.yaml"
    grid.write_text(
        textwrap.dedent(
            """
            name: missing
            tasks: [{classify: {data: "hf:no-such-owner/no-such-set"}}]
            seeds: [0, 1]
            attentions: {vanilla: {}}
            train: {steps: 2, batch_size: 8}
            """
        )
    )
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(grid), "--results", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 1
    summary = [line for line in run.stderr.splitlines() if "trials failed on hf:" in line]
    assert len(summary) == 1 and summary[0].startswith("2 trials failed on hf:no-such-owner/no-such-set")
    assert "offline" in summary[0]


def test_rerun_reproduces_a_stored_trial_exactly_and_flags_a_changed_value(tmp_path):
    import pyarrow.parquet as pq

    results = tmp_path / "results"
    grid = grid_file(tmp_path, "{sinkhorn: {block_size: 4}}", steps=8)
    assert cli("run", str(grid), "--results", str(results)).returncode == 0
    (part,) = results.glob("part-*.parquet")
    trial_id = part.name[len("part-") : -len(".parquet")]
    again = cli("rerun", trial_id[:8], "--results", str(results))
    assert again.returncode == 0, again.stderr
    assert f"{trial_id} sort:sinkhorn" in again.stdout and "reproduced exactly" in again.stdout

    table = pq.read_table(part).to_pandas()
    table.loc[table["metric"] == "exact_match", "value"] += 0.5  # a stored number that the code no longer gives
    table.to_parquet(part)
    changed = cli("rerun", trial_id, "--results", str(results))
    assert changed.returncode == 1 and "differ" in changed.stdout and "exact_match" in changed.stdout
    missing = cli("rerun", "nope", "--results", str(results))
    assert missing.returncode == 2 and "no ok trials with an id starting with 'nope'" in missing.stderr


def test_rerun_at_the_recorded_commit_uses_that_code_in_a_worktree(tmp_path):
    """The trial records the code its worker loaded; ``--at-commit`` re-runs it there, in a temporary worktree that
    is removed afterwards. Code with uncommitted changes cannot be checked out again, and says so."""
    from harness.provenance import PROJECT_ROOT, code_version
    from harness.store import ResultStore

    if code_version() is None:
        pytest.skip("needs a git checkout")
    results = tmp_path / "results"
    assert (
        cli(
            "run", str(grid_file(tmp_path, "{sinkhorn: {block_size: 4}}", steps=6)), "--results", str(results)
        ).returncode
        == 0
    )
    recorded = set(ResultStore(results).read()["git_sha"])
    assert recorded == {code_version()}  # the commit of the code that ran (with -dirty if it was uncommitted)
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    again = cli("rerun", next(iter(ResultStore(results).finished_ids())), "--results", str(results), "--at-commit")
    if code_version().endswith("-dirty"):
        assert again.returncode == 2 and "stored by uncommitted code" in again.stderr
    else:
        assert again.returncode == 0, again.stderr
        assert "reproduced exactly" in again.stdout and f"re-run at {code_version()}" in again.stdout
    after = subprocess.run(["git", "worktree", "list"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    assert after == worktrees  # the temporary worktree is gone
