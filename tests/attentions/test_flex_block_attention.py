"""The GPU path of sinkhorn's sort-and-attend step (one FlexAttention call), pinned on the CPU through its forward
(torch 2.13 has no FlexAttention backward on the CPU); tests/harness/test_cuda.py compares gradients on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

import attentions
from attentions._blocks import causal_block_mask
from attentions.sinkhorn import flex
from attentions.sinkhorn.block_attention import reference

B, H, N, BLOCK, D = 2, 2, 5, 8, 16


def blocks(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, BLOCK, D, generator=g) for _ in range(3)]


def soft_sort(causal: bool, seed: int = 1) -> torch.Tensor:
    """A relaxed permutation as the plugin makes one: causal ones mix only earlier blocks (row 0 has no mass)."""
    logits = torch.randn(B, H, N, N, generator=torch.Generator().manual_seed(seed))
    if causal:
        lower = torch.ones(N, N, dtype=torch.bool).tril(-1)
        return torch.softmax(logits.masked_fill(~lower, float("-inf")), dim=-1).nan_to_num(0.0)
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("causal", [False, True])
def test_flex_path_gives_the_reference_forward(causal):
    q, kb, vb = blocks()
    sort = soft_sort(causal)
    sorted_ok = (sort.sum(-1) > 0)[..., None, None] if causal else None  # what the plugin passes without padding
    local_ok = causal_block_mask(BLOCK, q.device) if causal else None
    expected = reference(q, kb, vb, sort, sorted_ok, local_ok)
    with torch.no_grad():
        got = flex.flex_block_attention(q, kb, vb, sort, causal=causal)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if causal:  # block 0 reads nothing from its (empty) sorted block: plain causal attention in the block
        own = torch.softmax(
            (q[:, :, 0] @ kb[:, :, 0].transpose(-1, -2) / D**0.5).masked_fill(~local_ok, float("-inf")), dim=-1
        )
        torch.testing.assert_close(got[:, :, 0], own @ vb[:, :, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_plugin_on_the_flex_path_gives_the_batched_paths_output(causal, monkeypatch):
    """The plugin's wiring (blocks in, sequence out) with the flex path forced on, against the default CPU path."""
    torch.manual_seed(0)
    attn = attentions.build("sinkhorn", heads=H, head_dim=D, max_len=N * BLOCK, causal=causal, block_size=BLOCK)
    attn.eval()
    q, k, v = (t.reshape(B, H, N * BLOCK, D) for t in blocks(3))
    with torch.no_grad():
        expected = attn(q, k, v)
        monkeypatch.setattr(flex, "enabled", lambda x: True)
        got = attn(q, k, v)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_flex_path_is_for_cuda_only_and_can_be_switched_off(monkeypatch):
    assert not flex.enabled(torch.zeros(1, 1, 4, 64))  # the CPU keeps its fused kernel (no FlexAttention backward)
    if torch.cuda.is_available():
        assert flex.enabled(torch.zeros(1, 1, 4, 64, device="cuda"))
        assert not flex.enabled(torch.zeros(1, 1, 4, 8, device="cuda"))  # too narrow for its tiles
        monkeypatch.setenv("ATTNBENCH_FLEX_CUDA", "0")
        assert not flex.enabled(torch.zeros(1, 1, 4, 64, device="cuda"))


def test_padded_inputs_keep_the_batched_path(monkeypatch):
    """Padding (user padding or a length that is no block multiple) is not in the flex block mask: the plugin must
    not take that path then, even where it is switched on."""
    monkeypatch.setattr(flex, "enabled", lambda x: True)
    monkeypatch.setattr(flex, "flex_block_attention", lambda *a, **k: pytest.fail("took the flex path with padding"))
    attn = attentions.build("sinkhorn", heads=H, head_dim=D, max_len=64, block_size=BLOCK).eval()
    q = torch.randn(B, H, N * BLOCK - 3, D)
    attn(q, q, q)
    mask = torch.ones(B, N * BLOCK, dtype=torch.bool)
    mask[0, -5:] = False
    q = torch.randn(B, H, N * BLOCK, D)
    attn(q, q, q, padding_mask=mask)


def test_block_masks_are_built_once_per_shape_and_reused(monkeypatch):
    """The block mask depends on (length, block, causal, device) only: built on the first forward, then looked up."""
    built = []

    def counting(*args, **kwargs):
        built.append(kwargs["Q_LEN"])
        return create_block_mask(*args, **kwargs)

    monkeypatch.setattr(flex, "create_block_mask", counting)
    monkeypatch.setattr(flex, "_BLOCK_MASKS", {})
    monkeypatch.setattr(flex, "enabled", lambda x: True)
    attn = attentions.build("sinkhorn", heads=H, head_dim=D, max_len=N * BLOCK, causal=True, block_size=BLOCK).eval()
    q, k, v = (t.reshape(B, H, N * BLOCK, D) for t in blocks(4))
    with torch.no_grad():
        first = attn(q, k, v)
        second = attn(q, k, v)
    assert built == [N * BLOCK] and torch.equal(first, second)
    mask = flex.block_mask(N * BLOCK, BLOCK, True, "cpu")
    assert flex.block_mask(N * BLOCK, BLOCK, True, "cpu") is mask and built == [N * BLOCK]
    assert flex.block_mask(N * BLOCK, BLOCK, False, "cpu") is not mask and len(built) == 2


def test_a_compiled_step_reads_a_built_mask_without_leaving_the_graph(monkeypatch):
    """Under torch.compile the mask is built eagerly on the first call for a shape; once built, the lookup is traced
    (no graph break), so a compiled or CUDA-graph step never rebuilds it."""
    built = []

    def counting(*args, **kwargs):
        built.append(kwargs["Q_LEN"])
        return create_block_mask(*args, **kwargs)

    monkeypatch.setattr(flex, "create_block_mask", counting)
    monkeypatch.setattr(flex, "_BLOCK_MASKS", {})

    def step(x):
        return x * flex.block_mask(64, 8, True, "cpu").kv_num_blocks.sum()

    x = torch.ones(3)
    expected = step(x)
    assert built == [64]
    for _ in range(2):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(step)(x)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(step, backend="eager")(x), expected)
    assert built == [64]
    torch._dynamo.reset()
