"""``attnbench run GRID --set KEY=VALUE``: overrides validated like the grid, reaching trial configs and ids."""

from __future__ import annotations

import textwrap

import pytest

from harness.cli import main
from harness.running.grid import GridError, load_trials
from harness.running.overrides import OverrideError, parse

GRID = """
name: g
tasks: [sort]
scale: smoke
seeds: [0]
attentions:
  vanilla: {}
  sinkhorn: {block_size: 4, temperature: 0.75}
train: {steps: 5, batch_size: 4}
"""


@pytest.fixture
def grid(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(GRID))
    return path


def test_values_are_yaml_and_reach_every_trial_config(grid):
    overrides = parse(["train.steps=2000", "seeds=[0, 1]", "attentions.sinkhorn.temperature=0.5", "train.select=last"])
    assert [o.value for o in overrides] == [2000, [0, 1], 0.5, "last"]
    _, trials = load_trials(grid, overrides)
    assert len(trials) == 4 and {t.seed for t in trials} == {0, 1}
    assert {t.train["steps"] for t in trials} == {2000}
    assert [t.params["temperature"] for t in trials if t.attention == "sinkhorn"] == [0.5, 0.5]
    assert all("temperature" not in t.params for t in trials if t.attention == "vanilla")


def test_a_changed_value_is_a_different_trial_and_the_grid_value_the_same_one(grid):
    plain = {t.label: t.trial_id for t in load_trials(grid)[1]}
    same = {t.label: t.trial_id for t in load_trials(grid, parse(["train.steps=5"]))[1]}
    longer = {t.label: t.trial_id for t in load_trials(grid, parse(["train.steps=6"]))[1]}
    assert same == plain
    assert longer.keys() == plain.keys() and not set(longer.values()) & set(plain.values())
    # the last --set of a key wins; a section the grid leaves to its defaults is created
    assert {t.resources["cpus"] for t in load_trials(grid, parse(["resources.cpus=1", "resources.cpus=3"]))[1]} == {3}


def test_a_list_sweeps_like_in_the_file(grid):
    trials = load_trials(grid, parse(["attentions.sinkhorn.temperature=[0.25, 0.5, 1.0]"]))[1]
    assert sorted(t.params["temperature"] for t in trials if t.attention == "sinkhorn") == [0.25, 0.5, 1.0]


@pytest.mark.parametrize(
    "item,expected",
    [
        ("train.steps=many", "train.steps: Input should be a valid integer (got 'many') [from --set train.steps=many]"),
        ("train.stpes=10", "train.stpes: Extra inputs are not permitted"),
        ("train.select=best", "select: best needs eval_every > 0"),
        ("attentions.sinkhorn.temprature=0.5", "attention 'sinkhorn' has no parameter 'temprature'"),
        ("attentions.sinkhorn.block_size=0.5", "attentions.sinkhorn.block_size: Input should be a valid integer"),
        ("seeds=3", "seeds: Input should be a valid list"),
    ],
)
def test_a_bad_value_is_named_by_its_key(grid, item, expected):
    with pytest.raises(GridError) as info:
        load_trials(grid, parse([item]))
    message = str(info.value)
    assert message.startswith(str(grid)) and expected in message, message
    assert f"[from --set {item}]" in message, message


@pytest.mark.parametrize(
    "items,expected",
    [
        (["attentions.local.block_size=8"], "--set attentions.local.block_size: attention 'local' is not in the grid"),
        (["train.steps"], "expected KEY=VALUE"),
        (["train.steps="], "--set train.steps: no value after '='"),
        (["train..steps=3"], "--set train..steps: empty part"),
        (["seeds=[0"], "--set seeds: value '[0' is not valid YAML"),
        (["scale.size=2"], "--set scale.size: scale is a str, not a mapping"),
    ],
)
def test_a_set_that_cannot_apply_names_the_key(grid, items, expected):
    with pytest.raises(OverrideError) as info:
        load_trials(grid, parse(items))
    assert expected in str(info.value)


def test_the_command_line_exits_2_naming_the_key_and_dry_run_shows_the_effect(grid, tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["run", str(grid), "--results", str(results), "--dry-run", "--set", "attentions.routing.clusters=2"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and "attention 'routing' is not in the grid" in captured.err
    assert "vanilla, sinkhorn" in captured.err or "sinkhorn, vanilla" in captured.err

    code = main(["run", str(grid), "--results", str(results), "--set", "train.steps=-1"])  # not a dry run: no Ray
    captured = capsys.readouterr()
    assert code == 2 and "train.steps: Input should be greater than 0" in captured.err and not results.exists()

    base = [line.split()[0] for line in _dry(grid, results, capsys)[:-1]]
    lines = _dry(grid, results, capsys, "--set", "train.steps=7", "--set", "seeds=[0,1]")
    assert lines[0] == "--set train.steps: 5 -> 7" and lines[1] == "--set seeds: [0] -> [0,1]"
    trial_lines = lines[2:-1]
    assert len(trial_lines) == 4 and all("steps=7" in line.split() for line in trial_lines)
    assert not {line.split()[0] for line in trial_lines} & set(base)  # new ids
    assert lines[-1].startswith("grid g: 4 trials")


def _dry(grid, results, capsys, *extra: str) -> list[str]:
    assert main(["run", str(grid), "--results", str(results), "--dry-run", *extra]) == 0
    return capsys.readouterr().out.strip().splitlines()
