"""The study's claims as data: verdicts computed from a store by the stated rule, printed, checked and reported.

A tiny synthetic store (three arms, three seeds, written through the real store) drives every comparison kind to
each of its verdicts; the committed study store must give every claim the committed verdict, and one changed stored
value must flip the verdict it feeds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from harness import cli
from harness.store import ResultStore, rows_for_trial
from harness.study import section as claims_report
from harness.study import verdicts
from harness.study.claims import EXPECTED_FILE, STUDY_RESULTS, ClaimsError, load_claims
from harness.study.page import render as render_page
from harness.study.verdicts import evaluate, evaluate_all

GRID = """name: synthetic
tasks: [sort]
seeds: [0, 1, 2]
attentions:
  vanilla: {}
  local: {block_size: 8}
  sparse: {block_size: 8, stride: 2}
"""
ARMS = """arms:
  a: {attention: vanilla, label: A}
  b: {attention: local, params: {block_size: 8}, label: B}
  c: {attention: sparse, params: {block_size: 8, stride: 2}, label: C}
"""


def claims_yaml(tmp_path: Path, *claims: str, grid: str = GRID) -> Path:
    (tmp_path / "grid.yaml").write_text(grid)
    body = "".join(
        "  - " + claim.replace("PROTO", str(tmp_path / "grid.yaml")).replace("\n", "\n    ") + "\n" for claim in claims
    )
    path = tmp_path / "claims.yaml"
    path.write_text(ARMS + "claims:\n" + body)
    return path


def claim(ident: str, compare: str, metric: str = "accuracy", **fields) -> str:
    lines = [f"id: {ident}", "source: Table X", "sentence: s", "protocol: [PROTO]", f"metric: {metric}"]
    lines += [f"compare: {compare}"] + [f"{k}: {json.dumps(v)}" for k, v in fields.items()]
    return "\n".join(lines)


ATTENTION = {"a": ("vanilla", {}), "b": ("local", {"block_size": 8}), "c": ("sparse", {"block_size": 8, "stride": 2})}


def write_trial(store: ResultStore, arm: str, seed: int, metrics: list[tuple], task: str = "sort") -> None:
    """One trial of the synthetic grid, stored through the real store."""
    name, params = ATTENTION[arm]
    config = {"grid": "synthetic", "task": task, "scale": "smoke", "seed": seed, "attention": name}
    config |= {"params": params, "model": {}, "train": {}, "task_params": {}, "resources": {}}
    trial_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    store.write_trial(trial_id, rows_for_trial(trial_id, config, metrics=metrics, error=None, common={}))


def store_of(root: Path, values: dict[str, list[float]], metric: str = "accuracy", curve: bool = False) -> ResultStore:
    """A store of the synthetic grid: arm name -> the test value of seeds 0, 1, 2 (and, with ``curve``, the same
    values as val rows at step 10 and their mirror image at step 20)."""
    store = ResultStore(root)
    for arm, seeds in values.items():
        for seed, value in enumerate(seeds):
            curve_rows = [("val", metric, value, 10), ("val", metric, 1.0 - value, 20)] if curve else []
            write_trial(store, arm, seed, [("test", metric, value), *curve_rows])
    return store


FAILS = "does not hold"
HIGH, LOW, WIDE = [0.90, 0.91, 0.92], [0.50, 0.51, 0.52], [0.30, 0.70, 0.95]


@pytest.mark.parametrize(
    ("compare", "fields", "values", "verdict"),
    [
        ("better", {"a": "a", "b": "b"}, {"a": HIGH, "b": LOW}, "holds"),
        ("better", {"a": "a", "b": "b"}, {"a": LOW, "b": HIGH}, "does not hold"),
        ("better", {"a": "a", "b": "b"}, {"a": WIDE, "b": LOW}, "inconclusive"),
        # a margin in the units shown (percent): the intervals are 35.0 to 45.0 points apart, so 30 is cleared,
        # 50 out of reach and 40 undecided
        ("better", {"a": "a", "b": "b", "margin": 30}, {"a": HIGH, "b": LOW}, "holds"),
        ("better", {"a": "a", "b": "b", "margin": 40}, {"a": HIGH, "b": LOW}, "inconclusive"),
        ("better", {"a": "a", "b": "b", "margin": 50}, {"a": HIGH, "b": LOW}, "does not hold"),
        ("worst", {"a": "b", "of": ["a", "c"]}, {"a": HIGH, "b": LOW, "c": HIGH}, "holds"),
        ("worst", {"a": "b", "of": ["a", "c"]}, {"a": HIGH, "b": HIGH, "c": LOW}, "does not hold"),
        ("worst", {"a": "b", "of": ["a", "c"]}, {"a": HIGH, "b": LOW, "c": WIDE}, "inconclusive"),
        ("best", {"a": "a", "of": ["b", "c"]}, {"a": HIGH, "b": LOW, "c": LOW}, "holds"),
        ("best", {"a": "a", "of": ["b", "c"]}, {"a": LOW, "b": HIGH, "c": LOW}, "does not hold"),
        ("best", {"a": "a", "of": ["b", "c"]}, {"a": HIGH, "b": WIDE, "c": LOW}, "inconclusive"),
        ("within", {"a": "a", "b": "b", "delta": 8}, {"a": HIGH, "b": [0.91, 0.92, 0.93]}, "holds"),
        ("within", {"a": "a", "b": "b", "delta": 8}, {"a": HIGH, "b": LOW}, "does not hold"),
        ("within", {"a": "a", "b": "b", "delta": 8}, {"a": HIGH, "b": WIDE}, "inconclusive"),
        ("monotone", {"along": ["b", "c", "a"]}, {"b": LOW, "c": [0.7, 0.71, 0.72], "a": HIGH}, "holds"),
        ("monotone", {"along": ["b", "c", "a"], "direction": "worsens"}, {"b": LOW, "c": LOW, "a": HIGH}, FAILS),
        ("monotone", {"along": ["b", "c", "a"]}, {"b": LOW, "c": WIDE, "a": HIGH}, "inconclusive"),
        # above a fixed value, in percent: LOW is 49.8 to 52.2, HIGH 89.8 to 92.2
        ("above", {"a": "a", "value": 50}, {"a": HIGH}, "holds"),
        ("above", {"a": "a", "value": 50}, {"a": LOW}, "inconclusive"),
        ("above", {"a": "a", "value": 95}, {"a": HIGH}, "does not hold"),
        ("above", {"a": "a", "value": 50, "margin": 45}, {"a": HIGH}, "does not hold"),
    ],
)
def test_each_comparison_reaches_each_verdict(tmp_path, compare, fields, values, verdict):
    claims = load_claims(claims_yaml(tmp_path, claim("x", compare, **fields)))
    frame = store_of(tmp_path / "store", values).read()
    assert evaluate(claims.claims[0], claims, frame).verdict == verdict


def test_the_metric_decides_which_way_is_better(tmp_path):
    claims = load_claims(claims_yaml(tmp_path, claim("x", "better", metric="bpc", a="a", b="b")))
    lower_a = store_of(tmp_path / "s1", {"a": LOW, "b": HIGH}, metric="bpc").read()
    higher_a = store_of(tmp_path / "s2", {"a": HIGH, "b": LOW}, metric="bpc").read()
    assert evaluate(claims.claims[0], claims, lower_a).verdict == "holds"
    assert evaluate(claims.claims[0], claims, higher_a).verdict == "does not hold"


def test_above_reads_a_lower_is_better_metric_the_other_way(tmp_path):
    claims = load_claims(claims_yaml(tmp_path, claim("x", "above", metric="bpc", a="a", value=0.7)))
    low_bpc = store_of(tmp_path / "s1", {"a": LOW}, metric="bpc").read()
    high_bpc = store_of(tmp_path / "s2", {"a": HIGH}, metric="bpc").read()
    assert evaluate(claims.claims[0], claims, low_bpc).verdict == "holds"
    assert evaluate(claims.claims[0], claims, high_bpc).verdict == FAILS


def test_a_claim_naming_a_task_reads_only_that_tasks_trials(tmp_path):
    store = ResultStore(tmp_path / "store")
    for seed in range(3):  # a ahead of b on sort, behind on classify: one grid, two tasks, one metric
        for arm, task, value in (
            ("a", "sort", HIGH),
            ("b", "sort", LOW),
            ("a", "classify", LOW),
            ("b", "classify", HIGH),
        ):
            write_trial(store, arm, seed, [("test", "accuracy", value[seed])], task=task)
    frame = store.read()
    for task, verdict in (("sort", "holds"), ("classify", FAILS)):
        claims = load_claims(claims_yaml(tmp_path, claim("x", "better", a="a", b="b", task=task)))
        result = evaluate(claims.claims[0], claims, frame)
        assert result.verdict == verdict and [arm.n for arm in result.arms] == [3, 3]
    # without a task both tasks' trials are pooled: six values per arm where the protocol names three seeds
    claims = load_claims(claims_yaml(tmp_path, claim("x", "better", a="a", b="b")))
    assert [arm.n for arm in evaluate(claims.claims[0], claims, frame).arms] == [6, 6]


def test_the_report_judges_the_claims_file_it_is_given(tmp_path, capsys):
    path = claims_yaml(tmp_path, claim("x", "better", a="a", b="b"))
    store_of(tmp_path / "store", {"a": HIGH, "b": LOW})
    out = tmp_path / "page.html"
    assert cli.main(["report", "--results", str(tmp_path / "store"), "--out", str(out), "--claims", str(path)]) == 0
    assert 'id="claims"' in out.read_text()
    assert cli.main(["report", "--results", str(tmp_path / "store"), "--out", str(out)]) == 0
    assert 'id="claims"' not in out.read_text()  # the study's claims read none of this store's grids
    (tmp_path / "bad.yaml").write_text("arms: {}\n")
    assert (
        cli.main(
            ["report", "--results", str(tmp_path / "store"), "--out", str(out), "--claims", str(tmp_path / "bad.yaml")]
        )
        == 2
    )
    assert "bad.yaml" in capsys.readouterr().err


def test_the_documented_example_claims_file_is_valid_and_shown_whole(monkeypatch):
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # its protocol paths are read from the repository's root, as the guide says
    example = root / "docs" / "examples" / "demo_claims.yaml"
    claims = load_claims(example)
    assert {c.task for c in claims.claims} == {"sort", "classify"}
    guide = (root / "docs" / "writing-claims.md").read_text(encoding="utf-8")
    assert "```yaml\n" + example.read_text(encoding="utf-8") + "```" in guide


def test_a_protocol_without_trials_is_no_data_and_with_some_seeds_incomplete(tmp_path):
    claims = load_claims(claims_yaml(tmp_path, claim("x", "better", a="a", b="b")))
    (result,) = evaluate_all(claims, ResultStore(tmp_path / "empty").read())
    assert result.verdict == "no data" and all(arm.n == 0 for arm in result.arms)
    (result,) = evaluate_all(claims, store_of(tmp_path / "s", {"a": HIGH[:2], "b": LOW}).read())
    assert result.verdict == "incomplete" and "A 2 of 3 seeds" in result.detail


def staged(tmp_path: Path, first_seeds: str = "[0]", above: float = 55) -> Path:
    """A claims file whose one claim (a above chance, seeds 0-2) has a stopping rule: seed 0 of arms a and b first,
    the other seeds only if one of them ends seed 0 above ``above``% val accuracy."""
    path = claims_yaml(tmp_path, claim("x", "above", a="a", value=50))
    (tmp_path / "first.yaml").write_text(f"include: grid.yaml\nseeds: {first_seeds}\n")
    rule = f"  - {{protocol: {tmp_path / 'grid.yaml'}, first: {tmp_path / 'first.yaml'}, arms: [a, b], "
    path.write_text(path.read_text() + "stopping:\n" + rule + f"metric: accuracy, split: val, above: {above}}}\n")
    return path


def staged_store(root: Path, final: dict[str, list[float]]) -> ResultStore:
    """Trials of the synthetic grid whose val accuracy is the given final value (at step 20 and as the final row),
    after a step 10 at 0.5; their test accuracy is the same value."""
    store = ResultStore(root)
    for arm, seeds in final.items():
        for seed, value in enumerate(seeds):
            metrics = [("test", "accuracy", value), ("val", "accuracy", value)]
            write_trial(store, arm, seed, [*metrics, ("val", "accuracy", 0.5, 10), ("val", "accuracy", value, 20)])
    return store


def test_a_stopping_rule_reads_stopped_when_no_first_stage_arm_ends_past_its_value(tmp_path):
    claims = load_claims(staged(tmp_path))
    (result,) = evaluate_all(claims, staged_store(tmp_path / "s1", {"a": [0.50], "b": [0.53]}).read())
    assert result.verdict == "stopped" and "no arm ended" in result.detail and "best: B 53.00%" in result.detail
    # the first stage is not over while one of the rule's arms has no seed-0 trial: the decision is not due
    (result,) = evaluate_all(claims, staged_store(tmp_path / "s2", {"a": [0.50]}).read())
    assert result.verdict == "incomplete" and "stopping rule" not in result.detail
    # one arm past the value: the other seeds are due, so the claim is incomplete and says why
    (result,) = evaluate_all(claims, staged_store(tmp_path / "s3", {"a": [0.50], "b": [0.60]}).read())
    assert result.verdict == "incomplete" and "goes on (best: B 60.00%" in result.detail
    # every seed stored: the claim's own rule decides, whatever the first stage did
    (result,) = evaluate_all(claims, staged_store(tmp_path / "s4", {"a": [0.50, 0.51, 0.52], "b": [0.5]}).read())
    assert result.verdict == "inconclusive"


def test_a_stopping_rule_is_decided_once_per_store_not_per_claim_and_val_step(tmp_path, monkeypatch):
    claims = load_claims(staged(tmp_path))
    frame = staged_store(tmp_path / "s", {"a": [0.50], "b": [0.53]}).read()
    decided = []
    real_first_stage = verdicts.first_stage
    monkeypatch.setattr(verdicts, "first_stage", lambda *args: decided.append(args[0]) or real_first_stage(*args))
    (result,) = evaluate_all(claims, frame)
    assert result.verdict == "stopped" and len(decided) == 1
    # along training: one decision for the two val steps, and none at all when the caller passes its decisions in
    trials = verdicts.trial_table(frame)
    points = verdicts.along_training(claims.claims[0], claims, frame, trials)
    assert [p["verdict"] for p in points] == ["stopped", "stopped"] and len(decided) == 2
    decisions = verdicts.stage_decisions(claims, frame, trials)
    assert verdicts.along_training(claims.claims[0], claims, frame, trials, decisions) == points and len(decided) == 3


def test_the_page_shows_the_first_stage_curve_of_a_stopped_protocol(tmp_path):
    path = staged(tmp_path)
    path.write_text(path.read_text().replace("arms:", "sections:\n  - {title: T, claims: [x]}\narms:", 1))
    page = render_page(load_claims(path), staged_store(tmp_path / "s", {"a": [0.50], "b": [0.53]}).read())
    assert "**stopped** (stopping rule of" in page and "the curve the stopping rule decided on" in page
    assert "| step | A | B |" in page and "| 10 | 50.00 | 50.00 |" in page and "| 20 | 50.00 | 53.00 |" in page
    assert "The verdict along training" not in page  # the curve stands in for a strip of "stopped"


@pytest.mark.parametrize(
    ("first_seeds", "message"),
    [("[0, 1, 2]", "must run the same grid (synthetic) on fewer of its seeds"), ("[7]", "on fewer of its seeds")],
)
def test_a_stopping_rule_must_stage_the_seeds_of_its_protocol(tmp_path, first_seeds, message):
    with pytest.raises(ClaimsError, match=r"stopping\[0\]") as caught:
        load_claims(staged(tmp_path, first_seeds=first_seeds))
    assert message in str(caught.value)


def test_check_fails_on_a_differing_expectation_and_names_the_claim(tmp_path, capsys):
    path = claims_yaml(tmp_path, claim("x", "better", a="a", b="b"), claim("y", "better", a="b", b="a"))
    store_of(tmp_path / "store", {"a": HIGH, "b": LOW})
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text('x: holds\ny: "does not hold"\n')
    bad.write_text("x: holds\ny: holds\n")
    common = ["claims", "--results", str(tmp_path / "store"), "--claims", str(path), "--check"]
    assert cli.main([*common, str(good)]) == 0
    assert cli.main([*common, str(bad)]) == 1
    err = capsys.readouterr().err
    assert "y: expected 'holds', computed 'does not hold'" in err and "x:" not in err


def test_csv_has_one_row_per_claim_and_arm(tmp_path, capsys):
    path = claims_yaml(tmp_path, claim("x", "worst", a="b", of=["a", "c"]))
    store_of(tmp_path / "store", {"a": HIGH, "b": LOW, "c": HIGH})
    assert cli.main(["claims", "--results", str(tmp_path / "store"), "--claims", str(path), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("claim,source,verdict") and len(lines) == 4
    assert lines[1].split(",")[:3] == ["x", "Table X", "holds"] and ",b,B,51," in lines[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (claim("x", "better", a="a"), "claim x (claims[0]): compare: better needs `b`"),
        (claim("x", "better", a="a", b="zzz"), "claim x: arm `zzz` is not defined"),
        (claim("x", "better", metric="bleu", a="a", b="b"), "claim x (claims[0]): metric"),
        (claim("x", "better", a="a", b="b", colour="red"), "claim x (claims[0]): colour"),
        (claim("x", "monotone", along=["a"]), "along: a trend needs at least two arms"),
        (claim("x", "better", a="a", b="b").replace("[PROTO]", "[no_such_grid]"), "claim x: protocol"),
        (claim("x", "better", a="a", b="b", retests="y"), "claim x: retests: `y` is not another claim of the file"),
        (claim("x", "better", a="a", b="b", retests="x"), "claim x: retests: `x` is not another claim of the file"),
    ],
)
def test_a_bad_claims_file_names_the_file_the_claim_and_the_field(tmp_path, capsys, text, message):
    path = claims_yaml(tmp_path, text)
    with pytest.raises(ClaimsError) as caught:
        load_claims(path)
    assert str(path) in str(caught.value) and message in str(caught.value)
    assert cli.main(["claims", "--results", str(tmp_path), "--claims", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_report_section_links_each_arm_to_its_trials_and_draws_the_verdict_along_training(tmp_path, monkeypatch):
    path = claims_yaml(tmp_path, claim("x", "better", a="a", b="b"))
    frame = store_of(tmp_path / "store", {"a": HIGH, "b": LOW}, curve=True).read()
    built = claims_report.claims_section(frame, path)
    (row,) = built["rows"]
    assert row["verdict"] == "holds" and [a["n"] for a in row["arms"]] == [3, 3]
    assert {t["id"] for a in row["arms"] for t in a["trials"]} == set(frame["trial_id"])
    # val rows: a ahead at step 10, behind (mirrored values) at step 20
    assert [(p["step"], p["verdict"]) for p in built["figure"]["points"]] == [(10, "holds"), (20, "does not hold")]
    assert claims_report.claims_section(store_of(tmp_path / "other", {}).read(), path) is None
    from harness.reporting import report

    monkeypatch.setattr(claims_report, "CLAIMS_FILE", path)
    page = report.render(frame)
    assert page.index('id="claims"') < page.index('id="trials"')
    for trial_id in frame["trial_id"].unique():
        assert f'href="#trial-{trial_id}"' in page and f'id="trial-{trial_id}"' in page


def test_the_page_is_generated_from_claims_and_store(tmp_path):
    path = claims_yaml(tmp_path, claim("x", "better", a="a", b="b"))
    text = path.read_text().replace("arms:", "sections:\n  - {title: Table X, claims: [x], text: Prose.}\narms:", 1)
    path.write_text(text)
    page = render_page(load_claims(path), store_of(tmp_path / "store", {"a": HIGH, "b": [0.5, 0.6, 0.7]}).read())
    assert "## Table X" in page and "Prose." in page
    assert "A 91.00 ± 2.48 (n=3)" in page and "B 60.00 ± 24.84 (n=3)" in page and "**holds**" in page


def test_the_page_sets_a_retested_finding_beside_the_earlier_verdict(tmp_path):
    path = claims_yaml(
        tmp_path,
        claim("x", "better", a="a", b="b"),
        claim("y", "better", a="a", b="c", retests="x"),
        claim("z", "better", a="a", b="b", retests="x").replace("[PROTO]", f"[{tmp_path / 'empty.yaml'}]"),
    )
    (tmp_path / "empty.yaml").write_text(GRID.replace("name: synthetic", "name: not_run"))
    text = path.read_text().replace("arms:", "sections:\n  - {title: T, claims: [x, y, z]}\narms:", 1)
    path.write_text(text)
    page = render_page(load_claims(path), store_of(tmp_path / "store", {"a": HIGH, "b": LOW, "c": WIDE}).read())
    rows = {line.split("`")[1]: line for line in page.splitlines() if line.startswith("| `") and " retests" not in line}
    assert "| inconclusive | `x` on" in rows["y"] and rows["y"].endswith(
        "| holds | changed from holds to inconclusive |"
    )
    assert "| no data | `x` on" in rows["z"] and rows["z"].endswith("| not known yet |")
    assert "x" not in rows  # the claim retested by others gets no row of its own


# ---- the committed study ----


def test_claims_on_the_committed_store_give_the_committed_verdicts(capsys):
    assert cli.main(["claims", "--check", str(EXPECTED_FILE)]) == 0
    out = capsys.readouterr().out
    for claim_id in (c.id for c in load_claims().claims):
        assert f"`{claim_id}`" in out
    assert out.count("| **") == len(load_claims().claims)


def test_changing_one_stored_value_flips_the_verdict_it_feeds(tmp_path, capsys):
    store = tmp_path / "replication"
    shutil.copytree(STUDY_RESULTS, store, ignore=shutil.ignore_patterns("checkpoints"))
    frame = ResultStore(store).read()
    # one seed of local attention in Table 4 past the crossover: its test bpc, made far better than everyone's
    local = frame[(frame["grid"] == "replication_char_long") & (frame["attention"] == "local") & (frame["seed"] == 0)]
    part = store / f"part-{local['trial_id'].iloc[0]}.parquet"
    table = pq.read_table(part)
    final = pc.and_(
        pc.and_(pc.equal(table["split"], "test"), pc.equal(table["metric"], "bpc")), pc.is_null(table["step"])
    )
    assert pc.sum(final.cast(pa.int32())).as_py() == 1
    values = pc.if_else(final, pa.scalar(1.0), table["value"])
    pq.write_table(table.set_column(table.schema.get_field_index("value"), "value", values), part)
    assert cli.main(["claims", "--results", str(store), "--check", str(EXPECTED_FILE)]) == 1
    err = capsys.readouterr().err
    assert "table4.sinkhorn-beats-local: expected 'holds'" in err
    assert "table4.local-worst: expected 'holds'" in err
    assert "table2." not in err and "table1." not in err  # claims the value does not feed keep their verdicts


def test_every_protocol_is_a_valid_grid_read_the_same_way_as_the_harness():
    from harness.running.grid import load
    from harness.study.claims import PROTOCOL_DIR, protocol_grid

    for name in {p for c in load_claims().claims for p in c.protocol}:
        grid = load(PROTOCOL_DIR / f"{name}.yaml")
        assert (protocol_grid(name).name, list(protocol_grid(name).seeds)) == (grid.name, grid.seeds)
