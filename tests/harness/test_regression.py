"""Speed and memory regression checks: messages, tolerances, the complexity check, and a real planted leak."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import attentions
from attentions.base import REGISTRY
from attentions.local import LocalAttention
from harness.benchmarking import bench, regression
from harness.cli import main

BASELINE = Path(__file__).parents[1] / "bench" / "baseline.json"


def row(name, length, seconds, peak, saved=None):
    return {
        "attention": name,
        "length": length,
        "seconds_min": seconds,
        "peak_memory_bytes": peak,
        "saved_bytes": saved if saved is not None else peak // 2,
    }


def run(sinkhorn_seconds=0.002, sinkhorn_peak=4 << 20):
    return [
        row("vanilla", 512, 0.010, 2 << 20),
        row("sinkhorn", 512, sinkhorn_seconds, sinkhorn_peak),
        row("vanilla", 1024, 0.040, 4 << 20),
        row("sinkhorn", 1024, 2 * sinkhorn_seconds, 2 * sinkhorn_peak),
    ]


def test_time_is_judged_as_a_ratio_to_vanilla_in_the_same_run():
    baseline = regression.make_baseline(run(), config={})
    assert baseline["cases"]["sinkhorn"]["512"]["time_ratio"] == pytest.approx(0.2)
    # A machine twice as slow for everyone is not a regression ...
    slower = [dict(r, seconds_min=2 * r["seconds_min"]) for r in run()]
    assert regression.compare(baseline, slower) == []
    # ... a plugin twice as slow relative to vanilla is, and the message says which, where, old and new.
    problems = regression.compare(baseline, run(sinkhorn_seconds=0.004))
    assert problems[0] == "sinkhorn at L=512: time 0.400x vanilla, baseline 0.200x (limit 0.300x)"
    assert len(problems) == 2


def test_a_baseline_keeps_the_slower_of_two_runs():
    """``--save-baseline`` measures twice: one lucky run alone would make an ordinary later run a regression."""
    lucky, ordinary = run(sinkhorn_seconds=0.001), run()
    assert regression.compare(regression.make_baseline(lucky, config={}), ordinary) != []
    baseline = regression.make_baseline(lucky, config={}, again=ordinary)
    assert baseline["cases"]["sinkhorn"]["512"]["time_ratio"] == pytest.approx(0.2)
    assert regression.compare(baseline, ordinary) == []
    assert regression.make_baseline(ordinary, config={}, again=lucky) == baseline  # the order does not matter


def test_memory_is_judged_in_bytes_with_the_stated_tolerance():
    baseline = regression.make_baseline(run(), config={})
    assert regression.compare(baseline, run(sinkhorn_peak=int((4 << 20) * 1.09))) == []
    problems = regression.compare(baseline, run(sinkhorn_peak=(4 << 20) * 2))
    assert "sinkhorn at L=512: peak memory 8.00 MiB, baseline 4.00 MiB (limit 4.46 MiB: +10% + 64 KiB)" in problems


def test_complexity_check_fails_only_linear_memory_plugins_above_1_3():
    quadratic = [row("sinkhorn", n, 0.001, n * n) for n in (256, 512, 1024)]
    quadratic += [row("vanilla", n, 0.001, n * n) for n in (256, 512, 1024)]
    exponents = regression.memory_exponents(quadratic)
    assert exponents["sinkhorn"] == pytest.approx(2.0) and exponents["vanilla"] == pytest.approx(2.0)
    assert regression.complexity(quadratic) == ["sinkhorn: peak memory grows as L^2.00, above L^1.3 for a block method"]
    linear = [row("sinkhorn", n, 0.001, 1000 * n) for n in (256, 512, 1024)]
    assert regression.complexity(linear) == []


def test_missing_reference_and_bad_baseline_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="needs 'vanilla' at every length"):
        regression.time_ratios([row("sinkhorn", 512, 0.1, 1)])
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ValueError, match="b.json: not a valid baseline"):
        regression.load_baseline(tmp_path / "b.json")
    with pytest.raises(ValueError, match="baseline file not found"):
        regression.load_baseline(tmp_path / "missing.json")


@pytest.fixture
def planted():
    """`local` plus a planted L x L buffer kept for backward: the regression every check must catch."""

    @attentions.register_attention("local_planted")
    class PlantedLocal(LocalAttention):
        def forward(self, q, k, v, padding_mask=None):
            dense = (q @ k.transpose(-1, -2)).softmax(-1)  # (B, H, L, L), saved by softmax for backward
            return super().forward(q, k, v, padding_mask) + 0 * dense[..., : q.shape[-1]]

    yield "local_planted"
    REGISTRY._classes.pop("local_planted")


def test_a_planted_square_allocation_is_caught_by_measurement(planted):
    rows = bench.sweep(
        ["vanilla", "local", planted],
        [128, 256, 512],
        heads=2,
        head_dim=16,
        block_size=32,
        repeats=1,
        configs=[(torch.device("cpu"), torch.float32)],
    )
    exponents = regression.memory_exponents(rows)
    assert exponents["local"] < 1.1 and exponents[planted] > 1.5
    assert regression.complexity(rows) == [
        f"{planted}: peak memory grows as L^{exponents[planted]:.2f}, above L^1.3 for a block method"
    ]
    # Against a baseline in which it still had local's memory, every length is a memory regression.
    baseline = regression.make_baseline([r for r in rows if r["attention"] != planted], config={})
    baseline["cases"][planted] = baseline["cases"]["local"]
    memory = [p for p in regression.compare(baseline, rows) if "peak memory" in p]
    assert [p.split(":")[0] for p in memory] == [f"{planted} at L={n}" for n in (128, 256, 512)]


@pytest.mark.parametrize("section", ["attention", "model"])
def test_every_plugin_against_the_committed_baseline(tmp_path, section):
    """The CI gate: the short sweep of every registered plugin (attention alone, and whole training steps of the
    model with every causal plugin) must not regress against tests/bench/baseline.json."""
    lengths = [str(n) for n in regression.load_baseline(BASELINE, section)["config"]["lengths"]]
    mode = ["--model"] if section == "model" else []
    args = ["bench", *mode, "--lengths", *lengths, "--repeats", "5", "--device", "cpu"]
    assert main([*args, "--check", str(BASELINE), "--results", str(tmp_path / "results")]) == 0


def test_model_section_is_saved_beside_the_attention_section(tmp_path):
    path = tmp_path / "baseline.json"
    regression.save_baseline(path, regression.make_baseline(run(), config={"lengths": [512]}))
    model_rows = [{k: v for k, v in r.items() if k != "saved_bytes"} for r in run()]
    regression.save_baseline(path, regression.make_baseline(model_rows, config={"lengths": [1024]}), section="model")
    regression.save_baseline(path, regression.make_baseline(run(), config={"lengths": [256]}))  # keeps the model one
    assert regression.load_baseline(path)["config"]["lengths"] == [256]
    model = regression.load_baseline(path, section="model")
    assert model["config"]["lengths"] == [1024] and "saved_bytes" not in model["cases"]["sinkhorn"]["512"]
    slower = [dict(r, seconds_min=r["seconds_min"] * (2 if r["attention"] == "sinkhorn" else 1)) for r in model_rows]
    assert [p.split(":")[0] for p in regression.compare(model, slower)] == ["sinkhorn at L=512", "sinkhorn at L=1024"]
    with pytest.raises(ValueError, match="no model section"):
        regression.load_baseline(_without_model(tmp_path), "model")


def _without_model(tmp_path):
    path = tmp_path / "plain.json"
    regression.save_baseline(path, regression.make_baseline(run(), config={}))
    return path


def test_bench_compile_reaches_every_model_and_the_store_and_needs_model_mode(tmp_path, monkeypatch, capsys):
    import pyarrow.dataset as ds

    from harness.benchmarking import model_bench

    compiled = []
    monkeypatch.setattr(model_bench, "compile_in_place", lambda model, mode=None: compiled.append(mode) or model)
    small = ["--lengths", "64", "--repeats", "1", "--device", "cpu", "--heads", "2", "--head-dim", "8"]
    results = str(tmp_path / "results")
    assert main(["bench", "--model", "--compile", "--attentions", "local", *small, "--results", results]) == 0
    assert len(compiled) == 2  # vanilla (the reference, always measured) and local
    configs = ds.dataset(results).to_table(columns=["config"]).column("config").to_pylist()
    assert configs and all(json.loads(c)["model"]["compile"] is True for c in configs)
    assert main(["bench", "--compile", *small, "--results", results]) == 2
    assert "--compile applies to --model" in capsys.readouterr().err


@pytest.mark.parametrize("persistent", [False, True])
def test_a_time_regression_counts_only_when_measuring_again_confirms_it(tmp_path, monkeypatch, capsys, persistent):
    """Load on a shared machine can slow one plugin for a while: the gate measures a slow case again, and fails only
    when it is slow both times (then naming it once). Memory needs no second look: bytes are the same every run."""
    measured = []

    def sweep(names, lengths, **kw):
        rows = []
        for name in names:
            measured.append(name)
            slow = name == "local" and (persistent or measured.count("local") == 1)
            for length in lengths:
                seconds = (0.004 if name == "vanilla" else 0.001 * (3 if slow else 1)) * length / 256
                rows.append(
                    {"attention": name, "length": length, "dtype": "float32", "device": "cpu", "seconds": seconds,
                     "seconds_min": seconds, "peak_memory_bytes": 1000 * length, "saved_bytes": 500 * length}
                )  # fmt: skip
        return rows

    baseline_rows = [r for name in ("vanilla", "local") for r in sweep([name], [256, 512]) if not r.update(
        seconds_min=(0.004 if name == "vanilla" else 0.001) * r["length"] / 256)]  # fmt: skip
    path = tmp_path / "baseline.json"
    regression.save_baseline(path, regression.make_baseline(baseline_rows, config={"lengths": [256, 512]}))
    measured.clear()
    monkeypatch.setattr(bench, "sweep", sweep)
    args = ["bench", "--attentions", "local", "--lengths", "256", "512", "--device", "cpu", "--check", str(path)]
    code = main([*args, "--results", str(tmp_path / "results")])
    err = " ".join(capsys.readouterr().err.split())
    assert measured == ["vanilla", "local", "vanilla", "local"]  # the slow plugin and vanilla, measured again
    assert "confirming 2 slow case(s) by measuring local again" in err
    if persistent:
        assert code == 1 and err.count("regression: local at L=256: time 0.750x vanilla") == 1
    else:
        assert code == 0 and "regression:" not in err


def test_bench_compile_reduce_overhead_and_batch_lists(tmp_path, monkeypatch, capsys):
    """`--compile reduce-overhead` reaches every model and the stored config; an unknown mode is refused; `--batch`
    takes several sizes (each case stores its own), but the gate compares one."""
    import pyarrow.dataset as ds

    from harness.benchmarking import model_bench

    modes = []
    monkeypatch.setattr(model_bench, "compile_in_place", lambda model, mode=None: modes.append(mode) or model)
    small = ["--lengths", "64", "--repeats", "1", "--device", "cpu", "--heads", "2", "--head-dim", "8"]
    results = str(tmp_path / "results")
    args = ["bench", "--model", "--attentions", "local", *small, "--results", results]
    assert main([*args, "--compile", "reduce-overhead", "--batch", "1", "2"]) == 0
    assert modes == ["reduce-overhead"] * 4  # vanilla and local, at each batch
    stored = ds.dataset(results).to_table(columns=["trial_id", "config"]).to_pylist()
    configs = {row["trial_id"]: json.loads(row["config"]) for row in stored}  # one trial per (plugin, batch)
    assert {c["model"]["compile"] for c in configs.values()} == {"reduce-overhead"}
    assert sorted(c["batch"] for c in configs.values()) == [1, 1, 2, 2]
    out = capsys.readouterr().out
    assert all(f"local                  64   {b} cpu" in out for b in (1, 2))
    with pytest.raises(SystemExit):
        main([*args, "--compile", "max-speed"])
    assert "unknown compile mode 'max-speed'" in capsys.readouterr().err
    baseline = str(tmp_path / "b.json")
    assert main([*args, "--batch", "1", "8", "--save-baseline", baseline]) == 2
    assert "give --batch a single value" in capsys.readouterr().err
