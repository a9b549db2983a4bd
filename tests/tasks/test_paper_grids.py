"""The shipped paper grids: every one loads and expands, and the paper-scale cells are the paper's rows."""

from __future__ import annotations

import pytest

from harness.running.grid import load_trials, shipped_grids

PAPER = [g for g in shipped_grids() if g.startswith("paper/")]


def rows(trials) -> set[tuple]:
    return {(t.attention, t.params.get("block_size"), t.params.get("budget")) for t in trials}


def test_every_table_ships_at_every_scale():
    tables = ["table1", "table2", "table4", "table5", "table6", "table7"]
    assert {f"paper/{t}{suffix}" for t in tables for suffix in ("", "_small", "_smoke")} <= set(PAPER)


@pytest.mark.parametrize("grid", PAPER)
def test_grid_loads_and_expands(grid):
    parsed, trials = load_trials(grid)
    assert trials and {t.scale for t in trials} == {parsed.scale}
    scale = grid.rsplit("_", 1)[-1] if grid.endswith(("_small", "_smoke")) else "paper"
    assert parsed.scale == scale
    if scale == "smoke":  # offline: embedded data only, a handful of steps
        assert all("data" not in t.task_params for t in trials) and parsed.train.steps <= 50
    else:  # Hub ids, nothing to edit: `attnbench run paper/table6_small` works wherever the Hub is reachable
        assert all(str(t.task_params.get("data", "hf:")).startswith("hf:") for t in trials)


def test_paper_rows():
    assert rows(load_trials("paper/table1")[1]) == {
        ("vanilla", None, None),
        ("local", 32, None),
        ("sparse", 32, None),
        ("sinkhorn", 8, None),
        ("sinkhorn", 16, None),
        ("sinkhorn", 32, None),
    }
    table2 = load_trials("paper/table2")[1]
    assert {(t.attention, t.params.get("block_size")) for t in table2} >= {
        ("local", 64),
        ("sparse", 64),
        ("sinkhorn", 16),
        ("sinkhorn_mixture", 32),
    }
    assert {t.task_params["size"] for t in table2} == {"base", "big"} and len(table2) == 2 * 9
    assert {t.params["block_size"] for t in load_trials("paper/table4")[1] if t.attention != "vanilla"} == {128}
    assert {t.params["block_size"] for t in load_trials("paper/table5")[1] if t.attention != "vanilla"} == {256}
    for table, tasks_count in (("paper/table6", 4), ("paper/table7", 2)):
        trials = load_trials(table)[1]
        assert {r for r in rows(trials) if r[0] == "sortcut"} == {("sortcut", b, 2) for b in (8, 16, 32)}
        assert len(trials) == tasks_count * 7


LONG_STEPS = 10_000


def _long_or_paper(grid: str) -> bool:
    parsed = load_trials(grid)[0]
    return parsed.train.steps > LONG_STEPS or (grid.startswith("paper/") and not grid.endswith("_smoke"))


@pytest.mark.parametrize("grid", [g for g in shipped_grids() if _long_or_paper(g)])
def test_long_grids_draw_a_curve_checkpoint_and_say_what_select_does(grid):
    """A long trial that loses its node resumes from a recent checkpoint instead of step 0, and draws a curve."""
    from harness.running.grid import GRIDS_DIR

    train = load_trials(grid)[0].train
    assert 0 < train.eval_every <= train.steps // 10, f"{grid}: eval_every={train.eval_every} of {train.steps}"
    assert 0 < train.checkpoint_every <= train.steps // 10, f"{grid}: checkpoint_every={train.checkpoint_every}"
    assert train.steps % train.checkpoint_every == 0 and train.eval_every % train.checkpoint_every == 0, grid
    assert "select" in (GRIDS_DIR / f"{grid}.yaml").read_text(), f"{grid}: says nothing about select"
