"""The Sinkhorn diagnostics on sort matrices whose answer is known."""

from __future__ import annotations

import pytest
import torch

from attentions.sinkhorn.sort_stats import sort_statistics


def batch(matrix: torch.Tensor) -> torch.Tensor:
    return matrix[None, None]


def test_identity_is_hard_and_trivial():
    stats = sort_statistics(batch(torch.eye(6)), causal=False)
    assert stats == {"sort_entropy": 0.0, "sort_nontrivial": 0.0}


def test_a_hard_shift_is_nontrivial_and_a_uniform_matrix_has_entropy_one():
    shift = torch.eye(6).roll(1, dims=1)
    assert sort_statistics(batch(shift), causal=False) == {"sort_entropy": 0.0, "sort_nontrivial": 1.0}
    uniform = torch.full((6, 6), 1 / 6)
    assert sort_statistics(batch(uniform), causal=False)["sort_entropy"] == pytest.approx(1.0)


def test_causal_trivial_is_the_previous_block_and_short_rows_are_left_out():
    n = 5
    previous = torch.zeros(n, n)
    previous[torch.arange(1, n), torch.arange(0, n - 1)] = 1.0  # block i reads block i-1
    stats = sort_statistics(batch(previous), causal=True)
    assert stats == {"sort_entropy": 0.0, "sort_nontrivial": 0.0}  # rows 0 and 1 have < 2 allowed entries
    first = torch.zeros(n, n)
    first[1:, 0] = 1.0  # every block reads block 0: not trivial from row 2 on (rows 2, 3, 4)
    assert sort_statistics(batch(first), causal=True)["sort_nontrivial"] == 1.0


def test_a_sinkhorn_plugin_reports_them_after_a_forward():
    import attentions

    attn = attentions.build("sinkhorn", heads=2, head_dim=8, max_len=64, block_size=8).eval()
    q, k, v = (torch.randn(2, 2, 64, 8) for _ in range(3))
    attn(q, k, v)
    stats = attn.trial_metrics()
    assert 0.0 <= stats["sort_entropy"] <= 1.0 and 0.0 <= stats["sort_nontrivial"] <= 1.0
