"""Long Range Arena's tables in the report: published numbers beside ours, the average, FAIL with its reason."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from harness.reporting import lra, report
from harness.store import ResultStore, rows_for_trial

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def write(store, task, attention, params, accuracy=None, error=None, task_params=None, seed=0):
    config = {
        "grid": "lra",
        "task": task,
        "task_params": task_params or {},
        "scale": "smoke",
        "seed": seed,
        "attention": attention,
        "params": params,
        "model": {"layers": 1, "dim": 32, "heads": 2, "mlp_dim": 32, "dropout": 0.0, "tie_kv": False},
        "train": {"steps": 2, "batch_size": 4, "lr": 1e-3},
        "resources": {"cpus": 1, "gpus": 0, "workers": 1},
    }
    trial_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    metrics = None if accuracy is None else [("test", "accuracy", accuracy), ("test", "loss", 0.7)]
    common = {"device": "cpu", "world_size": 1, "started_at": T0, "finished_at": T0}
    store.write_trial(trial_id, rows_for_trial(trial_id, config, metrics=metrics, error=error, common=common))


def test_published_table_is_consistent():
    data = lra.published()
    for row in data["accuracy"]:  # the typed averages are the means of the typed task values, but where noted
        mean = sum(row[c] for c in data["average_over"]) / len(data["average_over"])
        assert (mean == pytest.approx(row["avg"], abs=0.006)) != ("avg_note" in row) and row["pathx"] == "FAIL"
    assert {r.get("attention") for r in data["accuracy"]} >= {"vanilla", "local", "sparse", "sinkhorn"}
    efficiency = data["efficiency"]["rows"]
    transformer = {r["length"]: r["steps"] for r in efficiency if r["attention"] == "vanilla"}
    for row in efficiency:  # the printed speed-up is the ratio of the printed steps per second, to its rounding
        assert row["speed"] == pytest.approx(row["steps"] / transformer[row["length"]], abs=0.05)


def test_lra_section_puts_ours_beside_lras_and_shows_fail(tmp_path):
    store = ResultStore(tmp_path)
    tasks = [("listops", {}), ("lra_text", {}), ("lra_retrieval", {}), ("lra_image", {}), ("pathfinder", {"size": 32})]
    for seed, shift in ((0, 0.0), (1, 0.1)):
        for index, (task, params) in enumerate(tasks):
            write(store, task, "vanilla", {}, accuracy=0.3 + index / 10 + shift, task_params=params, seed=seed)
    write(store, "pathfinder", "vanilla", {}, error="RuntimeError: CUDA out of memory", task_params={"size": 128})
    write(store, "listops", "sinkhorn", {"block_size": 50}, accuracy=0.25)
    frame = store.read()
    section = lra.section(frame)
    assert section["columns"] == ["ListOps", "Text", "Retrieval", "Image", "Path", "Path-X"]
    labels = [r["label"] for r in section["rows"]]
    ours = next(r for r in section["rows"] if r["ours"] and r["label"] == "Transformer")
    assert ours["cells"][:5] == ["35.00", "45.00", "55.00", "65.00", "75.00"]  # mean over the two seeds, in %
    assert ours["cells"][5] == "FAIL (RuntimeError: CUDA out of memory)" and ours["avg"] == "55.00"
    assert labels[labels.index(ours["label"]) + 1] == "Transformer (LRA)"
    sinkhorn = next(r for r in section["rows"] if r["ours"] and r is not ours)
    assert sinkhorn["cells"][0] == "25.00" and sinkhorn["avg"] == "–"  # no average without all five tasks
    assert "Sinkhorn Trans. (LRA)" in labels and "BigBird (LRA)" not in labels
    html = report.render(frame)
    assert 'id="lra-accuracy"' in html and "Transformer (LRA)" in html and 'id="lra-efficiency"' not in html


def test_lra_efficiency_rows_put_lras_published_rows_after_ours_for_the_attentions_measured(tmp_path):
    from harness.benchmarking import bench

    measured = [
        {"attention": name, "length": length, "dtype": "float32", "device": "cpu", "seconds": 1 / speed,
         "seconds_min": 1 / speed, "steps_per_second": speed, "peak_memory_bytes": peak}
        for length in (512, 4096)
        for name, speed, peak in (("vanilla", 2.0, 4 * 2**20), ("sinkhorn", 5.0, 2**20))
    ]  # fmt: skip
    bench.store_sweep(tmp_path, measured, {"block_size": 16, "block_plugins": ["sinkhorn"], "run": "1"}, model=True)
    section = lra.section(ResultStore(tmp_path).read())
    rows = [(r["label"].split(" ")[0], r["length"], r["speed"], r["peak"], r["memory"]) for r in section["efficiency"]]
    sinkhorn = next(r[0] for r in rows if r[0].startswith("Sinkhorn"))
    # ours at LRA's lengths only (not 512), against vanilla of the same run; then LRA's rows of the two attentions
    assert rows[:2] == [
        (sinkhorn, 4096, "2.50x", "1.0 MiB", "0.25x"),
        ("Transformer", 4096, "1.00x", "4.0 MiB", "1.00x"),
    ]
    published = {r[0]: r[2:] for r in rows[2:]}
    assert set(published) == {"Transformer", "Sinkhorn"}  # no local row: local was not measured
    assert published["Sinkhorn"] == ("3.8x", "1.48 GB", "0.16x") and published["Transformer"][0] == "1.0x"
    assert all(not r["ours"] for r in section["efficiency"][2:]) and "at length 4096 only" in section["efficiency_note"]
    html = report.render(ResultStore(tmp_path).read())
    assert 'id="lra-efficiency"' in html and "Sinkhorn Trans. (LRA)" in html
