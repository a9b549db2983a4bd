"""Grid loading, expansion and the error messages a user sees."""

from __future__ import annotations

import textwrap

import pytest

from harness.running.grid import GridError, expand, load, load_trials

BASE = """
name: g
tasks: [sort]
scale: smoke
seeds: [0, 1]
attentions:
  vanilla: {}
  local: {block_size: [2, 4]}
  sparse: {block_size: 4, stride: [1, 2]}
train:
  steps: 5
  batch_size: 4
"""


def write(tmp_path, text: str, name: str = "grid.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_expansion_is_a_cartesian_product_per_attention(tmp_path):
    grid, trials = load_trials(write(tmp_path, BASE))
    assert grid.name == "g"
    # vanilla 1 + local 2 + sparse 2 cells, times 2 seeds
    assert len(trials) == 10
    assert sorted(t.params.get("block_size") for t in trials if t.attention == "local") == [2, 2, 4, 4]
    assert {t.seed for t in trials} == {0, 1}
    assert len({t.trial_id for t in trials}) == 10


def test_trial_ids_are_stable_and_follow_the_config(tmp_path):
    first = {t.label: t.trial_id for t in load_trials(write(tmp_path, BASE))[1]}
    second = {t.label: t.trial_id for t in load_trials(write(tmp_path, BASE, "again.yaml"))[1]}
    assert first == second
    changed = {t.label: t.trial_id for t in load_trials(write(tmp_path, BASE.replace("steps: 5", "steps: 6")))[1]}
    assert not set(first.values()) & set(changed.values())
    more_cpus = write(tmp_path, BASE + "resources: {cpus: 2}\n", "cpus.yaml")
    assert {t.label: t.trial_id for t in load_trials(more_cpus)[1]} == first  # cpus cannot change a result


def test_a_field_added_later_keeps_stored_ids_at_its_default_and_makes_a_new_trial_when_set(tmp_path):
    import json
    from pathlib import Path

    import pyarrow.parquet as pq

    from harness.running.grid import trial_id_of

    default = {t.label: t.trial_id for t in load_trials(write(tmp_path, BASE))[1]}
    said = {t.label: t.trial_id for t in load_trials(write(tmp_path, BASE + "  compile: false\n", "said.yaml"))[1]}
    compiled = {t.label: t.trial_id for t in load_trials(write(tmp_path, BASE + "  compile: true\n", "on.yaml"))[1]}
    assert said == default and not set(compiled.values()) & set(default.values())
    # Trials stored before `train.compile` existed (the committed replication store) keep their ids today.
    store = Path(__file__).parents[2] / "harness" / "study" / "results" / "replication"
    table = pq.read_table(next(iter(sorted(store.glob("*.parquet")))), columns=["trial_id", "config"])
    stored_id, config = table["trial_id"][0].as_py(), json.loads(table["config"][0].as_py())
    assert "compile" not in config["train"] and trial_id_of(config) == stored_id
    assert trial_id_of({**config, "train": {**config["train"], "compile": False}}) == stored_id


def test_include_overrides_key_by_key(tmp_path):
    write(tmp_path, BASE, "base.yaml")
    child = write(tmp_path, "include: base.yaml\nname: child\nseeds: [3]\ntrain: {steps: 7}\n", "child.yaml")
    grid = load(child)
    assert grid.name == "child" and grid.seeds == [3]
    assert grid.train.steps == 7 and grid.train.batch_size == 4  # merged, not replaced
    assert len(expand(grid)) == 5


def test_include_drops_an_attention_set_to_null_and_keeps_the_trial_ids(tmp_path):
    write(tmp_path, BASE, "base.yaml")
    child = write(tmp_path, "include: base.yaml\nattentions: {local: null, sparse: {stride: 2}}\n", "child.yaml")
    kept = {t.trial_id for t in load_trials(child)[1]}
    assert {t.attention for t in load_trials(child)[1]} == {"vanilla", "sparse"}
    full = {t.trial_id for t in load_trials(tmp_path / "base.yaml")[1]}
    assert kept < full  # a subset of the included grid's cells, under the same ids
    # null on a name the included grid lacks is an error that names it, not a silent no-op
    stray = write(tmp_path, "include: base.yaml\nattentions: {sinkhorn: null}\n", "stray.yaml")
    with pytest.raises(GridError, match="attentions.sinkhorn"):
        load(stray)


def test_shipped_smoke_grid_runs_the_sinkhorn_family_beside_the_baselines():
    grid, trials = load_trials("smoke")
    assert grid.scale == "smoke"
    cells = {(t.task, t.attention) for t in trials}
    assert {("sort", a) for a in ("vanilla", "local", "sparse", "sinkhorn")} <= cells
    assert {("classify", "sortcut"), ("classify", "vanilla"), ("classify", "sinkhorn")} <= cells
    assert ("sort", "sortcut") not in cells  # encoder only: the exclude keeps it off the seq2seq task
    assert len(trials) == 14


def test_exclude_leaves_cells_out_and_only_those(tmp_path):
    text = BASE.replace("tasks: [sort]", "tasks: [sort, listops]") + "exclude: [{task: listops, attention: local}]\n"
    cells = [(t.task, t.attention) for t in load_trials(write(tmp_path, text))[1]]
    assert ("listops", "local") not in cells and ("sort", "local") in cells and ("listops", "sparse") in cells
    everywhere = BASE + "exclude: [{attention: sparse}]\n"
    assert {t.attention for t in load_trials(write(tmp_path, everywhere))[1]} == {"vanilla", "local"}


def test_an_invalid_cell_names_the_task(tmp_path):
    text = BASE.replace("sparse: {block_size: 4, stride: [1, 2]}", "sortcut: {block_size: 4}")
    with pytest.raises(GridError) as info:
        load_trials(write(tmp_path, text))
    assert "on task sort (seq2seq)" in str(info.value)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("name: g\ntasks: [sort\n", "invalid YAML"),
        (BASE + "colour: red\n", "colour: Extra inputs are not permitted"),
        (
            BASE.replace("vanilla: {}", "vanila: {}"),
            "attentions.vanila: unknown attention 'vanila'; did you mean 'vanilla'",
        ),
        (
            BASE.replace("stride: [1, 2]", "strid: 1"),
            "attentions.sparse: attention 'sparse' has no parameter 'strid'; did you mean 'stride'",
        ),
        (
            BASE.replace("block_size: [2, 4]", "block_size: [2, '4']"),
            "attentions.local.block_size: Input should be a valid integer (got '4')",
        ),
        (
            BASE.replace("tasks: [sort]", "tasks: [sorting]"),
            "tasks.sorting: unknown task 'sorting'; did you mean 'sort'",
        ),
        (
            BASE.replace("tasks: [sort]", "tasks: [{sort: {lenght: 4}}]"),
            "tasks.sort: task 'sort' has no parameter 'lenght'",
        ),
        (BASE.replace("steps: 5", "steps: many"), "train.steps: Input should be a valid integer"),
        (BASE.replace("scale: smoke", "scale: huge"), "scale: Input should be 'smoke', 'small' or 'paper'"),
        (BASE.replace("stride: [1, 2]", "stride: 9"), "stride must be an int in [1, block_size=4]"),
        ("- just\n- a list\n", "a grid must be a mapping"),
        (BASE + "exclude: [{task: sorting}]\n", "exclude.0.task: 'sorting' is not one of the grid's tasks"),
        (BASE + "exclude: [{attention: local, seed: 0}]\n", "exclude.0.seed"),
    ],
)
def test_bad_grids_name_file_and_field(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(GridError) as info:
        load_trials(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message, message


def test_missing_grid_and_include_cycle(tmp_path):
    with pytest.raises(GridError, match="no such grid file"):
        load_trials("no_such_grid")
    write(tmp_path, "include: b.yaml\n", "a.yaml")
    write(tmp_path, "include: a.yaml\n", "b.yaml")
    with pytest.raises(GridError, match="include: cycle"):
        load_trials(tmp_path / "a.yaml")


def test_train_compile_takes_a_bool_or_reduce_overhead(tmp_path):
    """CUDA graphs are a validated grid value; `compile: true` keeps its trial ids, the new mode makes new trials."""
    on = {t.label: t.trial_id for t in load_trials(write(tmp_path, BASE + "  compile: true\n", "on.yaml"))[1]}
    graphs = load_trials(write(tmp_path, BASE + "  compile: reduce-overhead\n", "graphs.yaml"))[1]
    assert {t.train["compile"] for t in graphs} == {"reduce-overhead"}
    assert not {t.trial_id for t in graphs} & set(on.values())
    for value in ("max-speed", "1", "[true]"):
        path = write(tmp_path, BASE + f"  compile: {value}\n", "bad.yaml")
        with pytest.raises(GridError) as info:
            load_trials(path)
        assert "train.compile" in str(info.value) and "true, false or 'reduce-overhead'" in str(info.value)
