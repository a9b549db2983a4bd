"""The Sinkhorn family (sinkhorn, sortcut, sinkhorn_mixture) against the paper, section by section, and against the
faults known in public implementations (each named in its test's docstring)."""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import attentions
from attentions import _fused_cpu
from attentions.sinkhorn.balancing import log_sinkhorn
from attentions.sinkhorn.block_attention import reference, sinkhorn_block_attention
from attentions.sinkhorn.plugins import sort_blocks
from attentions.sinkhorn.sortnet import SortNet
from harness.model import ModelConfig, Transformer

HEADS, DIM, MAX_LEN, BLOCK = 2, 8, 96, 8


def make(name: str = "sinkhorn", causal: bool = False, **params) -> attentions.Attention:
    torch.manual_seed(0)
    params = {"block_size": BLOCK} | params
    return attentions.build(name, heads=HEADS, head_dim=DIM, max_len=MAX_LEN, causal=causal, **params)


def qkv(length: int, batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, HEADS, length, DIM, generator=g) for _ in range(3)]


def sort_of(attn, k: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The plugin's sort matrix for keys ``k`` (B, H, n, n)."""
    _, kb, _, valid, padded = attn._blocks(k, k, k, padding_mask)
    return attn.sort_matrix(kb, valid, padded)


def block_reference(q, k, v, block: int, sources: list[list[int]], causal: bool = False) -> torch.Tensor:
    """Dense softmax where query block i sees exactly the blocks in ``sources[i]`` (key blocks, in order) - written
    token by token from the paper's definition, with no block machinery of the plugin."""
    length = q.shape[2]
    out = torch.zeros_like(q)
    for i, blocks in enumerate(sources):
        rows = slice(i * block, min((i + 1) * block, length))
        keys = torch.cat([k[:, :, j * block : (j + 1) * block] for j in blocks], dim=2)
        values = torch.cat([v[:, :, j * block : (j + 1) * block] for j in blocks], dim=2)
        scores = q[:, :, rows] @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if causal:  # the own block comes last among the sources; mask its future part
            own = torch.arange(rows.start, rows.stop)[:, None] >= torch.arange(i * block, (i + 1) * block)[None, :]
            allowed = torch.cat([torch.ones(own.shape[0], keys.shape[2] - block, dtype=torch.bool), own], dim=1)
            scores = scores.masked_fill(~allowed, float("-inf"))
        out[:, :, rows] = torch.softmax(scores, dim=-1) @ values
    return out


def force_permutation(attn, perm: list[int]) -> None:
    """Make the plugin sort with the hard permutation ``perm`` (sorted block i = block perm[i])."""
    hard = torch.zeros(len(perm), len(perm))
    hard[torch.arange(len(perm)), torch.tensor(perm)] = 1.0
    attn.sort_matrix = lambda kb, valid, padded: hard.expand(kb.shape[0], kb.shape[1], -1, -1)


# --- Sinkhorn balancing (section 3.1.1) --------------------------------------------------------------------------


def test_balancing_gives_doubly_stochastic_matrix():
    logits = torch.randn(3, 2, 7, 7, generator=torch.Generator().manual_seed(0)) * 2
    s = log_sinkhorn(logits, steps=2 * 30).exp()
    torch.testing.assert_close(s.sum(-1), torch.ones(3, 2, 7), atol=1e-3, rtol=0)
    torch.testing.assert_close(s.sum(-2), torch.ones(3, 2, 7), atol=1e-3, rtol=0)


def test_balancing_is_identity_on_a_doubly_stochastic_input():
    perms = [torch.eye(6)[torch.randperm(6, generator=torch.Generator().manual_seed(s))] for s in range(3)]
    ds = 0.5 * perms[0] + 0.3 * perms[1] + 0.2 * perms[2] + 1e-3  # rows and columns all sum to 1 + 6e-3
    ds = ds / ds.sum(-1, keepdim=True)
    log_ds = log_sinkhorn(ds.log(), steps=2 * 50)  # make it exactly balanced first
    torch.testing.assert_close(log_sinkhorn(log_ds, steps=10), log_ds, atol=1e-5, rtol=0)


def test_plugin_sort_matrix_is_doubly_stochastic_with_enough_iterations():
    attn = make(iterations=30).eval()
    s = sort_of(attn, qkv(48)[1])  # 6 blocks
    torch.testing.assert_close(s.sum(-1), torch.ones_like(s.sum(-1)), atol=1e-3, rtol=0)
    torch.testing.assert_close(s.sum(-2), torch.ones_like(s.sum(-2)), atol=1e-3, rtol=0)


def test_iterations_zero_skips_balancing():
    """Table 8 row 6: no normalization, S = exp(R / tau) straight from the sort net up to a per-row scale (its row
    maximum), so every ratio within a row is the paper's."""
    attn = make(iterations=0, temperature=0.5).eval()
    k = qkv(48)[1]
    pooled = k.reshape(2, HEADS, 6, BLOCK, DIM).sum(3)
    expected = (attn.sortnet(pooled, out=6) / 0.5).exp()
    expected = expected / expected.amax(dim=-1, keepdim=True)
    s = sort_of(attn, k)
    torch.testing.assert_close(s, expected)
    torch.testing.assert_close(s.amax(-1), torch.ones_like(s.amax(-1)))
    assert (s.sum(-1) - 1).abs().max() > 0.1  # really unbalanced, so the check above can tell


def test_iterations_zero_stays_finite_where_literal_exp_overflows():
    """The defect the Figure 4 runs found: with logits of a few hundred, exp(R / tau) is inf and the loss NaN."""
    attn = make(iterations=0, temperature=0.25).eval()
    q, k, v = qkv(48)
    k = k * 50  # block sums of large keys give sort logits far beyond float32's exp range
    pooled = k.reshape(2, HEADS, 6, BLOCK, DIM).sum(3)
    assert not torch.isfinite((attn.sortnet(pooled, out=6) / 0.25).exp()).all()  # the literal form overflows
    s = sort_of(attn, k)
    assert torch.isfinite(s).all() and s.max() <= 1
    out = attn(q.requires_grad_(), k, v)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()


def test_iterations_zero_causal_masks_exactly():
    """Causal Nk = 0: only strictly earlier blocks get weight, and block 0 (nothing earlier) reads nothing."""
    attn = make(iterations=0, causal=True).eval()
    s = sort_of(attn, qkv(48)[1])
    upper = torch.ones(6, 6, dtype=torch.bool).triu()
    assert (s[..., upper] == 0).all()
    assert (s[..., 0, :] == 0).all()
    torch.testing.assert_close(s[..., 1:, :].amax(-1), torch.ones_like(s[..., 1:, :].amax(-1)))


# --- Sorting (section 3.1.2, 3.2) ----------------------------------------------------------------------------------


def test_hard_permutation_sorts_blocks_exactly():
    """Fault pinned: a block "sort" that sums all blocks instead of permuting them."""
    blocks = torch.randn(2, 3, 5, 4, 6)
    perm = [3, 0, 4, 1, 2]
    hard = torch.eye(5)[perm].expand(2, 3, -1, -1)
    assert torch.equal(sort_blocks(hard, blocks), blocks[:, :, perm])


@pytest.mark.parametrize("length", [40, 37])
def test_sinkhorn_attends_to_sorted_block_and_own_block(length):
    """With a hard permutation the plugin equals one softmax over block perm[i] and block i, token by token."""
    attn = make().eval()
    perm = [2, 4, 0, 1, 3]
    force_permutation(attn, perm)
    q, k, v = qkv(length)
    expected = block_reference(q, k, v, BLOCK, [[perm[i], i] for i in range(5)])
    torch.testing.assert_close(attn(q, k, v), expected)


def test_values_are_sorted_values_not_sorted_keys():
    """Fault pinned: sorted keys used as values. Block 0 reads block 3 only through sorting, so its output must move
    when only block 3's values move; block 4 never reads block 3 and must not move."""
    attn = make().eval()
    force_permutation(attn, [3, 2, 1, 0, 4])
    q, k, v = qkv(40)
    y = attn(q, k, v)
    v2 = v.clone()
    v2[:, :, 24:32] += 1.0
    assert not torch.allclose(attn(q, k, v2)[:, :, :8], y[:, :, :8])
    torch.testing.assert_close(attn(q, k, v2)[:, :, 32:], y[:, :, 32:])  # block 4 never reads block 3


def test_sortnet_output_size_and_slicing():
    """Output size ceil(max_len / block_size); shorter inputs use the first n logits of each row."""
    attn = attentions.build("sinkhorn", heads=2, head_dim=8, max_len=100, block_size=8)
    assert attn.sortnet.weights[-1].shape == (2, 8, 13)
    assert sort_of(attn.eval(), qkv(40)[1]).shape == (2, 2, 5, 5)


@pytest.mark.parametrize("kind,layers,final_relu", [
    ("linear", 1, False), ("relu", 1, True), ("linear_relu_linear", 2, False), ("relu_linear_relu_linear", 2, True)
])  # fmt: skip
def test_sortnet_kinds_follow_table_8(kind, layers, final_relu):
    net = SortNet(heads=2, dim=8, out=5, kind=kind)
    assert len(net.weights) == layers
    x = torch.randn(3, 2, 5, 8)
    r = net(x)
    assert r.shape == (3, 2, 5, 5)
    if final_relu:
        assert (r >= 0).all()
    manual = torch.einsum("bhnd,hde->bhne", x, net.weights[0]) + net.biases[0]
    if layers == 2:
        manual = torch.einsum("bhnd,hde->bhne", manual.relu(), net.weights[1]) + net.biases[1]
    torch.testing.assert_close(r, manual.relu() if final_relu else manual)
    attn = make(sortnet=kind).train()
    q, k, v = (t.requires_grad_() for t in qkv(24))
    attn(q, k, v).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in attn.sortnet.parameters())


def test_sortnet_is_per_head():
    """Section 3.2.2: every head learns its own sorting, so heads fed the same keys can sort differently."""
    attn = make().eval()
    k = qkv(48)[1][:, :1].expand(-1, HEADS, -1, -1)
    s = sort_of(attn, k)
    assert not torch.allclose(s[:, 0], s[:, 1])


@pytest.fixture(params=["batched", "fused"])
def block_path(request, monkeypatch):
    """Both CPU paths of ``sinkhorn_block_attention``: batched products, and the fused per-block kernel
    (``attentions/csrc``), which is skipped only where it cannot be built."""
    monkeypatch.setenv("ATTNBENCH_FUSED_CPU", "1" if request.param == "fused" else "0")
    if request.param == "fused" and _fused_cpu.kernel() is None:
        pytest.skip("the fused CPU kernel cannot be built here")
    return request.param


@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 6), (1, 2, 3, 20, 40), (1, 1, 2, 32, 16)])
@pytest.mark.parametrize("masks", ["none", "random", "causal"])
def test_fused_block_attention_matches_autograd_reference(masks, shape, block_path):
    """The hand-written backward gives the reference's outputs and gradients (q, k, v and the sort matrix), including
    rows with nothing visible (random masks), a sorted half that hides one block only and a causal mask shared by
    every block, which rides on the product as a bias (causal); gradcheck in float64 checks it against finite
    differences. Both CPU paths; the shapes take the fused kernel's register tiles and its leftover rows and columns."""
    g = torch.Generator().manual_seed(0)
    batch, heads, n, block, dim = shape
    q, kb, vb = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    sort = torch.softmax(torch.randn(batch, heads, n, n, generator=g, dtype=torch.float64), -1).requires_grad_()
    sorted_ok = local_ok = None
    if masks == "random":
        sorted_ok = torch.rand(batch, heads, n, 1, block, generator=g) > 0.3
        triangle = torch.ones(block, block, dtype=torch.bool).tril()
        local_ok = (torch.rand(batch, 1, n, 1, block, generator=g) > 0.3) & triangle
        sorted_ok[0, 0, 0], local_ok[0, 0, 0] = False, False  # block 0 of batch 0: every row sees nothing
    elif masks == "causal":
        sorted_ok = torch.ones(batch, heads, n, 1, block, dtype=torch.bool)
        sorted_ok[:, :, 0] = False  # causal block 0 has no earlier block to read
        local_ok = torch.ones(block, block, dtype=torch.bool).tril()
    inputs = (q, kb, vb, sort)
    expected, got = reference(*inputs, sorted_ok, local_ok), sinkhorn_block_attention(*inputs, sorted_ok, local_ok)
    torch.testing.assert_close(got, expected)
    upstream = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    ours, theirs = torch.autograd.grad(got, inputs, upstream), torch.autograd.grad(expected, inputs, upstream)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    if block <= 5:  # finite differences of the small shape; the larger ones check values and gradients only
        assert torch.autograd.gradcheck(lambda *x: sinkhorn_block_attention(*x, sorted_ok, local_ok), inputs)


def test_fused_kernel_builds_where_there_is_a_compiler():
    """A broken C++ source would silently fall back to the slow path; where a compiler exists it must build."""
    if shutil.which("c++") is None or not _fused_cpu.enabled():
        pytest.skip("no C++ compiler, or the kernel is switched off")
    assert _fused_cpu.kernel() is not None


def test_fused_and_batched_paths_agree_in_float32(monkeypatch):
    """The two CPU paths at a training shape (block 64, causal masks), forward and backward, to float32 rounding."""
    if _fused_cpu.kernel() is None:
        pytest.skip("the fused CPU kernel cannot be built here")
    g = torch.Generator().manual_seed(3)
    q, kb, vb = (torch.randn(2, 2, 6, 64, 64, generator=g) for _ in range(3))
    sort = torch.softmax(torch.randn(2, 2, 6, 6, generator=g), -1).tril(-1)
    sorted_ok = torch.ones(2, 2, 6, 1, 64, dtype=torch.bool)
    sorted_ok[:, :, 0] = False
    local_ok = torch.ones(64, 64, dtype=torch.bool).tril()
    upstream = torch.randn(q.shape, generator=g)
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("ATTNBENCH_FUSED_CPU", flag)
        inputs = [t.clone().requires_grad_() for t in (q, kb, vb, sort)]
        out = sinkhorn_block_attention(*inputs, sorted_ok, local_ok)
        results.append((out, *torch.autograd.grad(out, inputs, upstream)))
    for batched, fused in zip(*results, strict=True):
        torch.testing.assert_close(fused, batched, atol=2e-5, rtol=1e-4)


class _OpCounter(TorchDispatchMode):
    """Records every computing operator dispatched (views, transposes and detaches cost nothing and are skipped)."""

    FREE = ("view", "transpose", "slice", "detach", "ones_like", "as_strided", "expand", "unsqueeze", "reshape", "t.")

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not any(free in str(func) for free in self.FREE):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_backward_stays_fused_and_at_twice_the_forward_work(monkeypatch):
    """The regression gate of the hand-written backward's speed, without timing anything: its matrix-product FLOPs
    are at most twice the forward's (each product gets its two input gradients, nothing is recomputed) and it
    dispatches a small fixed number of operators. A per-matrix fallback of a batched product (the slow path of
    products on strided halves) or a rewrite in autograd operators multiplies the count. (The batched path; the
    fused kernel's products are not visible to torch's counters.)"""
    monkeypatch.setenv("ATTNBENCH_FUSED_CPU", "0")
    g = torch.Generator().manual_seed(0)
    q, kb, vb = (torch.randn(1, 2, 16, 8, 8, generator=g, requires_grad=True) for _ in range(3))
    sort = torch.softmax(torch.randn(1, 2, 16, 16, generator=g), -1).requires_grad_()
    with FlopCounterMode(display=False) as forward_flops:
        out = sinkhorn_block_attention(q, kb, vb, sort)
    with FlopCounterMode(display=False) as backward_flops, _OpCounter() as counter:
        out.backward(torch.ones_like(out))
    assert backward_flops.get_total_flops() <= 2 * forward_flops.get_total_flops()
    assert len(counter.ops) <= 20, counter.ops  # 18 today: 11 products, 7 elementwise passes
    assert not any(op.split(".")[1] in ("select", "clone", "copy_", "cat") for op in counter.ops), counter.ops


def test_key_gradients_of_sort_net_and_attention_are_summed_in_place():
    """The key blocks feed both the sort net (eq. 5's pooling, causal) and the attention, so autograd adds two
    gradients of the size of K. The fused kernel hands its own out as a tensor of the inputs' shape, not a view, so
    that sum is an in-place add; a view made it an out-of-place one (a fresh 4 MiB tensor per layer at 4K)."""
    if _fused_cpu.usable(torch.zeros(1)) is None:
        pytest.skip("the fused CPU kernel is switched off or cannot be built here")
    attn = make(causal=True, block_size=8).train()
    q, k, v = (t.requires_grad_() for t in qkv(64))
    out = attn(q, k, v)
    # The profiler, not a dispatch mode: wrapping every tensor in Python would itself keep them from being reused.
    with torch.profiler.profile(record_shapes=True) as prof:
        out.backward(torch.ones_like(out))
    adds = [e.name for e in prof.events() if e.name in ("aten::add", "aten::add_") and len(e.input_shapes[0]) == 5]
    assert adds and all(name == "aten::add_" for name in adds), adds


def test_causal_masks_cost_no_pass_over_the_scores(monkeypatch):
    """Causal without padding: the own-block triangle rides on the score product as a bias, the sorted half is masked
    in block 0 only, and the backward has no rows to zero, so no masking pass over the (B*H*n, b, b) scores is left
    in forward or backward (each cost about as much as the score product itself at 4K on CPU). The batched path."""
    monkeypatch.setenv("ATTNBENCH_FUSED_CPU", "0")
    g = torch.Generator().manual_seed(0)
    q, kb, vb = (torch.randn(1, 2, 16, 8, 8, generator=g, requires_grad=True) for _ in range(3))
    sort = torch.softmax(torch.randn(1, 2, 16, 16, generator=g), -1).requires_grad_()
    sorted_ok = torch.ones(1, 2, 16, 1, 8, dtype=torch.bool)
    sorted_ok[:, :, 0] = False
    local_ok = torch.ones(8, 8, dtype=torch.bool).tril()
    fills = []

    class FillSizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "masked_fill" in str(func):
                fills.append(args[0].numel())
            return func(*args, **(kwargs or {}))

    with FillSizes():
        out = sinkhorn_block_attention(q, kb, vb, sort, sorted_ok, local_ok)
        out.backward(torch.ones_like(out))
    scores = 2 * 16 * 8 * 8  # B * H * n * b * b
    assert fills and max(fills) <= scores // 16, fills  # block 0's sorted half and the (b, b) bias, nothing more


# --- Gumbel noise and temperature (section 3.2.1) ---------------------------------------------------------------


def test_gumbel_noise_only_in_training():
    """Fault pinned: Gumbel noise at evaluation time."""
    attn = make(gumbel=True)
    k = qkv(48)[1]
    attn.train()
    assert not torch.allclose(sort_of(attn, k), sort_of(attn, k))
    attn.eval()
    clean = sort_of(attn, k)
    assert torch.equal(clean, sort_of(attn, k))
    no_noise = make(gumbel=False).train()
    torch.testing.assert_close(sort_of(no_noise, k), clean)


def test_eval_is_deterministic():
    attn = make("sinkhorn_mixture", causal=True).eval()
    q, k, v = qkv(37)
    assert torch.equal(attn(q, k, v), attn(q, k, v))


def test_temperature_is_applied():
    """Fault pinned: a temperature that is never applied. S = Sinkhorn(R / tau) exactly, and lower tau is sharper."""
    k = qkv(48)[1]
    pooled = k.reshape(2, HEADS, 6, BLOCK, DIM).sum(3)
    sharp, soft = make(temperature=0.25).eval(), make(temperature=1.0).eval()
    s_sharp, s_soft = sort_of(sharp, k), sort_of(soft, k)
    assert not torch.allclose(s_sharp, s_soft, atol=1e-3)
    logits = sharp.sortnet(pooled, out=6)
    torch.testing.assert_close(s_sharp, log_sinkhorn(logits / 0.25, 10).exp())
    assert s_sharp.amax(-1).mean() > s_soft.amax(-1).mean()


# --- Padding --------------------------------------------------------------------------------------------------------


def test_padding_never_reaches_the_sort_net():
    """Fault pinned: padding that leaks into the sort net (through the pooled block sums)."""
    attn = make().eval()
    k = qkv(37)[1]
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[0, 30:] = False  # block 3 partly padded, block 4 entirely
    mask[1, 3:6] = False  # padding inside a block
    s = sort_of(attn, k, mask)
    k2 = k.clone()
    k2.masked_scatter_(~mask[:, None, :, None].expand_as(k2), torch.randn_like(k2) * 10)
    torch.testing.assert_close(sort_of(attn, k2, mask), s)
    assert torch.equal(s[0, :, 4], torch.zeros_like(s[0, :, 4]))  # an all-padding block sorts nothing in
    assert torch.equal(s[0, :, :, 4], torch.zeros_like(s[0, :, :, 4]))  # and is sorted nowhere


# --- Causal (section 3.3) -----------------------------------------------------------------------------------------


def test_causal_sort_matrix_mixes_only_earlier_blocks():
    attn = make(causal=True).eval()
    s = sort_of(attn, qkv(48)[1])
    assert torch.equal(s.triu(), torch.zeros_like(s))  # block i mixes blocks j < i only; block 0 nothing
    assert (s[:, :, 1:].sum(-1) > 0).all()


def test_causal_sort_logits_see_only_the_past():
    """Eq. 5: the sort row of block i depends on nothing after the first token of block i."""
    attn = make(causal=True, iterations=3).eval()
    k = qkv(48)[1]
    s = sort_of(attn, k)
    for i in range(1, 6):
        k2 = k.clone()
        k2[:, :, i * BLOCK + 1 :] = torch.randn_like(k2[:, :, i * BLOCK + 1 :]) * 3
        torch.testing.assert_close(sort_of(attn, k2)[:, :, : i + 1], s[:, :, : i + 1], rtol=0, atol=0)


def test_causal_balancing_rows_never_depend_on_later_rows():
    mask = torch.ones(6, 6, dtype=torch.bool).tril(-1)
    logits = torch.randn(2, 6, 6)
    base = log_sinkhorn(logits, 10, mask=mask, causal=True)
    later = logits.clone()
    later[:, 4:] += torch.randn(2, 2, 6) * 5
    assert torch.equal(log_sinkhorn(later, 10, mask=mask, causal=True)[:, :4], base[:, :4])


def test_causal_block_zero_is_plain_causal_local_attention():
    """Block 0 has no earlier block: its sorted part is fully masked, so it equals causal local attention."""
    q, k, v = qkv(40)
    local = attentions.build("local", heads=HEADS, head_dim=DIM, max_len=MAX_LEN, causal=True, block_size=BLOCK)
    torch.testing.assert_close(make(causal=True).eval()(q, k, v)[:, :, :BLOCK], local(q, k, v)[:, :, :BLOCK])


def test_causal_with_hard_permutation_matches_reference():
    """Block i > 0 reads one earlier block (a hard causal sort: row 0 empty) and its own block up to the query."""
    attn = make(causal=True).eval()
    picks = [0, 0, 1, 0, 2]  # row i picks block picks[i] < i; row 0 picks nothing
    hard = torch.eye(5)[picks] * torch.ones(5, 5).tril(-1)
    attn.sort_matrix = lambda kb, valid, padded: hard.expand(kb.shape[0], kb.shape[1], -1, -1)
    q, k, v = qkv(40)
    expected = block_reference(q, k, v, BLOCK, [[0]] + [[picks[i], i] for i in range(1, 5)], causal=True)
    torch.testing.assert_close(attn(q, k, v), expected)


@pytest.mark.parametrize("name", ["sinkhorn", "sinkhorn_mixture"])
@pytest.mark.parametrize("block", [1, 3, 5, 16])
@pytest.mark.parametrize("length", [2, 9, 23, 50])
def test_no_causal_leak_at_any_position(name, block, length):
    """Denser than the conformance suite: every position t, block sizes that do not divide the length."""
    attn = make(name, causal=True, block_size=block).eval()
    q, k, v = qkv(length, batch=1)
    y = attn(q, k, v)
    for t in range(length - 1):
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :]) * 3
        torch.testing.assert_close(attn(q2, k2, v2)[:, :, : t + 1], y[:, :, : t + 1], msg=f"leak into {t}")


# --- SortCut (section 3.4) and the mixture (section 3.2.3) --------------------------------------------------------


def test_sortcut_attends_to_first_budget_sorted_blocks_only():
    attn = make("sortcut", budget=2).eval()
    perm = [3, 1, 4, 0, 2]
    force_permutation(attn, perm)
    q, k, v = qkv(40)
    expected = block_reference(q, k, v, BLOCK, [[3, 1]] * 5)
    torch.testing.assert_close(attn(q, k, v), expected)


def test_sortcut_refuses_causal_and_checks_budget():
    with pytest.raises(ValueError, match="causal"):
        make("sortcut", causal=True)
    with pytest.raises(ValueError, match="budget"):
        make("sortcut", budget=13)  # 96 / 8 = 12 blocks at most
    with pytest.raises(ValueError, match="budget"):
        make("sortcut", budget=0)
    assert make("sortcut", budget=12)(*qkv(20)).shape == (2, HEADS, 20, DIM)  # budget above the blocks present


def test_mixture_is_sinkhorn_plus_vanilla():
    mixture, sinkhorn = make("sinkhorn_mixture").eval(), make("sinkhorn").eval()
    sinkhorn.load_state_dict({k: v for k, v in mixture.state_dict().items() if not k.startswith("dense")})
    vanilla = attentions.build("vanilla", heads=HEADS, head_dim=DIM, max_len=MAX_LEN)
    q, k, v = qkv(29)
    torch.testing.assert_close(mixture(q, k, v), sinkhorn(q, k, v) + vanilla(q, k, v))


@pytest.mark.parametrize(
    "params,field",
    [
        ({"block_size": 0}, "block_size"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"iterations": -1}, "iterations"),
        ({"sortnet": "mlp"}, "sortnet"),
        ({"gumbel": 1}, "gumbel"),
    ],
)
@pytest.mark.parametrize("name", ["sinkhorn", "sortcut", "sinkhorn_mixture"])
def test_invalid_values_name_the_parameter(name, params, field):
    with pytest.raises(ValueError, match=field):
        make(name, **params)


def test_bfloat16_inputs_give_bfloat16_outputs():
    attn = make(causal=True).train()
    q, k, v = (t.bfloat16().requires_grad_() for t in qkv(37))
    y = attn(q, k, v)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    y.float().sum().backward()
    assert torch.isfinite(k.grad.float()).all()


# --- K = V (Table 8 row 5) ----------------------------------------------------------------------------------------


def test_tied_keys_and_values_share_one_projection_and_train():
    cfg = ModelConfig(
        kind="lm", vocab_size=11, max_len=40, attention="sinkhorn", attention_params={"block_size": 8}, tie_kv=True
    )
    torch.manual_seed(0)
    model = Transformer(cfg).train()
    layers = [block.attn for block in model.decoder]
    assert all(layer.k is layer.v for layer in layers)
    assert model.num_parameters() < Transformer(dataclasses.replace(cfg, tie_kv=False)).num_parameters()
    tokens = torch.randint(2, 11, (3, 33), generator=torch.Generator().manual_seed(0))
    batch = {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}
    before = layers[0].k.weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = model(batch)
    loss.backward()
    assert torch.isfinite(loss) and layers[0].k.weight.grad is not None
    opt.step()
    assert not torch.equal(layers[0].k.weight, before)
