"""The sweep helpers of ``harness.benchmarking.bench`` (fast; the measurements are in test_speed_memory.py)."""

from __future__ import annotations

import pytest
import torch

from harness.benchmarking import bench
from harness.stats import fit_exponent


def test_fit_exponent_recovers_known_orders():
    lengths = [256, 512, 1024, 2048]
    assert fit_exponent(lengths, [3.0 * n for n in lengths]) == pytest.approx(1.0)
    assert fit_exponent(lengths, [0.5 * n * n + 0 for n in lengths]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        fit_exponent([10], [1.0])


def test_sweep_rows_and_saved_bytes():
    rows = bench.sweep(["local", "vanilla"], [64, 128], repeats=1, configs=[("cpu", torch.float32)], block_size=16)
    assert [(r["attention"], r["length"]) for r in rows] == [
        ("local", 64),
        ("vanilla", 64),
        ("local", 128),
        ("vanilla", 128),
    ]
    for row in rows:
        assert row["seconds"] > 0 and row["peak_memory_bytes"] > 0 and row["saved_bytes"] > 0
        assert (row["device"], row["dtype"]) == ("cpu", "float32")
    local = {r["length"]: r["saved_bytes"] for r in rows if r["attention"] == "local"}
    assert local[128] > local[64]  # saved activations grow with length


def test_sweep_skips_a_case_that_runs_out_of_memory_and_keeps_the_rest(monkeypatch):
    real = bench.measure

    def measure(name, module, length, **kw):
        if (name, length) == ("vanilla", 128):
            raise torch.OutOfMemoryError("planted")
        return real(name, module, length, **kw)

    monkeypatch.setattr(bench, "measure", measure)
    with pytest.warns(UserWarning, match=r"vanilla at L=128 on cpu: out of memory, skipped"):
        rows = bench.sweep(["vanilla", "local"], [64, 128], repeats=1, configs=[("cpu", torch.float32)], block_size=16)
    assert [(r["attention"], r["length"]) for r in rows] == [("vanilla", 64), ("local", 64), ("local", 128)]


def test_saved_bytes_counts_each_storage_once():
    q, k, v = bench.make_inputs(32, batch=1, heads=2, head_dim=8, device=torch.device("cpu"), dtype=torch.float32)
    # q * k saves both inputs; q * q saves q twice (one storage): the latter must count half as much.
    both = bench.saved_bytes(lambda a, b, c: a * b, q, k, v)
    once = bench.saved_bytes(lambda a, b, c: a * a, q, k, v)
    assert both == 2 * once == 2 * q.numel() * 4


def test_model_sweep_rows_store_and_report_table(tmp_path):
    """`bench --model`: one training step per plugin and length, stored as task model_step, tabled beside vanilla."""
    import pandas as pd

    from harness.benchmarking import model_bench
    from harness.reporting.efficiency import model_table

    rows = model_bench.model_sweep(["vanilla", "local"], [64], block_size=16, dim=32, heads=2, repeats=1)
    assert [(r["attention"], r["length"], r["device"]) for r in rows] == [("vanilla", 64, "cpu"), ("local", 64, "cpu")]
    for row in rows:
        assert row["steps_per_second"] == pytest.approx(1 / row["seconds"]) and row["peak_memory_bytes"] > 0
    assert model_bench.relative_to_vanilla(rows)[("vanilla", 64, "cpu")] == (1.0, 1.0)
    assert bench.store_sweep(tmp_path, rows, {"block_size": 16, "block_plugins": ["local"]}, model=True) == 2
    table = model_table(pd.read_parquet(tmp_path))
    assert [(t["label"], t["speed"], t["memory"]) for t in table if t["label"] == "Transformer"] == [
        ("Transformer", "1.00x", "1.00x")
    ]
    assert {t["length"] for t in table} == {64} and len(table) == 2
    assert "sortcut" not in model_bench.causal_plugins()  # the LM is causal; SortCut is encoder only


def test_sinkhorn_flops_counts_the_products_of_the_method():
    """At 4K (64 blocks of 64, 4 heads, D=64): sorting K and V is 2 x (64 x 64) @ (64 x 4096) per head, attending is
    four (64 x 64 x 64) products per block, and the backward doubles both (2.4 GFLOP in all, as issue 14 states)."""
    sort = 2 * 2 * 64 * 64 * 4096
    attend = 4 * 2 * 64 * 64**3
    assert bench.sinkhorn_flops(4096) == 3 * 4 * (sort + attend)
    assert round(bench.sinkhorn_flops(4096) / 1e9, 1) == 2.4


def test_tile_bmm_flops_in_cache_and_from_memory(monkeypatch):
    """Both rooflines time the same products: with one operand set every call reuses it, with several each call
    takes the next set in turn."""
    seen = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda a, b: (seen.append(a.data_ptr()), real_bmm(a, b))[1])
    assert bench.tile_bmm_flops(tile=8, count=4) > 0
    assert len(set(seen)) == 1
    seen.clear()
    assert bench.tile_bmm_flops(tile=8, count=4, operand_sets=3) > 0
    assert len(set(seen)) == 3 and len(seen) == 50


def test_model_table_compares_each_row_with_vanilla_of_its_own_run_and_keeps_compiled_runs_apart(tmp_path):
    """A later run of a few plugins (with its own, faster vanilla) must not re-scale an earlier run's rows, and a
    compiled run is a row of its own."""
    import pandas as pd

    from harness.reporting.efficiency import model_table

    def rows(vanilla: float, **others: float) -> list[dict]:
        return [
            {"attention": name, "length": 64, "dtype": "float32", "device": "cpu", "seconds": 1 / speed,
             "seconds_min": 1 / speed, "steps_per_second": speed, "peak_memory_bytes": 1000}
            for name, speed in {"vanilla": vanilla, **others}.items()
        ]  # fmt: skip

    config = {"block_size": 16, "block_plugins": ["local", "sinkhorn"]}
    bench.store_sweep(tmp_path, rows(10.0, local=20.0, sinkhorn=15.0), {**config, "run": "1"}, model=True)
    bench.store_sweep(tmp_path, rows(40.0, local=60.0), {**config, "run": "2"}, model=True)  # another machine state
    compiled = {**config, "run": "3", "model": {"compile": True}}
    bench.store_sweep(tmp_path, rows(5.0, sinkhorn=10.0), compiled, model=True)
    table = {(t["label"].split(" ")[0], t["device"]): t["speed"] for t in model_table(pd.read_parquet(tmp_path))}
    sinkhorn = next(label for label, device in table if label.startswith("Sinkhorn"))
    assert table[("Local", "cpu")] == "1.50x"  # run 2's local against run 2's vanilla
    assert table[(sinkhorn, "cpu")] == "1.50x"  # run 1's sinkhorn against run 1's vanilla, not run 2's (0.38x)
    assert table[(sinkhorn, "cpu, compiled")] == "2.00x" and table[("Transformer", "cpu, compiled")] == "1.00x"
