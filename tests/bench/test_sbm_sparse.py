"""SBM on a sparse learned graph: training steps with fastRG sampling against the pair-by-pair draw (the same model,
forced through each sampler), at L = 2K and 4K, causal, in one run. Target: cost falls with the edge count, so fastRG
is faster and uses less peak memory than drawing from the L x L probabilities. ``ATTNBENCH_SBM_LENGTHS`` overrides."""

from __future__ import annotations

import os
import time

import torch

import attentions
from harness.memory import measure_peak

LENGTHS = [int(n) for n in os.environ.get("ATTNBENCH_SBM_LENGTHS", "2048,4096").split(",")]


def sparse_sbm(length: int) -> attentions.Attention:
    """An ``sbm`` whose memberships sit near 0.03: about 1 / (2 L) of the pairs are drawn (a learned sparse graph)."""
    torch.manual_seed(0)
    attn = attentions.build("sbm", heads=4, head_dim=64, max_len=length, causal=True).train()
    with torch.no_grad():
        attn.mlp[-1].bias.fill_(-3.5)
        attn.cluster_embeddings.abs_()
    return attn


def median_ms(step, repeats: int = 5) -> float:
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def sweep() -> list[tuple[int, float, float, int, int, float]]:
    """(L, pair-by-pair ms, fastRG ms, pair-by-pair peak bytes, fastRG peak bytes, realized edge fraction)."""
    rows = []
    for length in LENGTHS:
        attn = sparse_sbm(length)
        q, k, v = (torch.randn(1, 4, length, 64, requires_grad=True) for _ in range(3))

        def step(attn=attn, q=q, k=k, v=v):
            (attn(q, k, v).sum() + attn.extra_loss).backward()

        measured = []
        for below in (0.0, type(attn).fastrg_below):  # 0: never fastRG
            attn.fastrg_below = below
            measured.append((median_ms(step), measure_peak(step)[1]))
        (pair_ms, pair_peak), (rg_ms, rg_peak) = measured
        rows.append((length, pair_ms, rg_ms, pair_peak, rg_peak, attn.trial_metrics()["edge_fraction"]))
    return rows


def test_sbm_sparse_graph_cost_falls_with_fastrg(benchmark):
    rows = benchmark.pedantic(sweep, rounds=1)
    print()
    for length, pair_ms, rg_ms, pair_peak, rg_peak, fraction in rows:
        print(
            f"L={length}: edge fraction {fraction:.5f}; pair-by-pair {pair_ms:.1f} ms, {pair_peak / 2**20:.1f} MiB; "
            f"fastRG {rg_ms:.1f} ms, {rg_peak / 2**20:.1f} MiB ({pair_ms / rg_ms:.2f}x faster, "
            f"{pair_peak / rg_peak:.2f}x less memory)"
        )
    assert all(rg_ms < pair_ms and rg_peak < pair_peak for _, pair_ms, rg_ms, pair_peak, rg_peak, _ in rows)
