"""SBM attention: equals softmax attention restricted to its graph, samples a fresh graph per training call,
straight-through gradients, density regularizer in the model's loss, realized edge fraction reported."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attentions
from attentions import sbm
from harness.model import ModelConfig, Transformer
from harness.running.trainer import plugin_metrics

HEADS, DIM, MAX_LEN = 2, 8, 64


def make(causal: bool = False, **params) -> attentions.Attention:
    torch.manual_seed(0)
    params = {"clusters": 3} | params
    return attentions.build("sbm", heads=HEADS, head_dim=DIM, max_len=MAX_LEN, causal=causal, **params)


def qkv(length: int, batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, HEADS, length, DIM, generator=g) for _ in range(3)]


def padding(length: int, padded: bool) -> torch.Tensor:
    mask = torch.ones(2, length, dtype=torch.bool)
    if padded:
        mask[0, length - 4 :] = False
        mask[1, :2] = False
    return mask


def probabilities(attn, q, k, mask, causal):
    """The block model written out: p_ij = 1 - exp(-Y_i B Z_j^T) on allowed pairs, zero elsewhere."""
    emb = attn.cluster_embeddings
    y = torch.sigmoid(attn.mlp(q) @ emb.transpose(-1, -2))  # (B, H, L, k)
    z = torch.sigmoid(attn.mlp(k) @ emb.transpose(-1, -2))
    block = torch.softmax(emb @ emb.transpose(-1, -2), dim=-1)
    p = 1 - torch.exp(-(y @ block @ z.transpose(-1, -2)))
    allowed = (mask[:, :, None] & mask[:, None, :])[:, None]
    if causal:
        allowed = allowed & torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).tril()
    return p * allowed, allowed


def graph_attention(q, k, v, p, graph):
    """Dense reference: softmax over the graph's edges, each weight times 1 + p - stopgrad(p) (straight-through)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    weights = torch.exp(scores - scores.max(-1, keepdim=True).values) * graph * (1 + p - p.detach())
    return weights / weights.sum(-1, keepdim=True) @ v


def with_self(graph: torch.Tensor) -> torch.Tensor:
    return graph | torch.eye(graph.shape[-1], dtype=torch.bool)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("length", [9, 30])
def test_eval_is_attention_on_the_most_likely_graph(causal, padded, length):
    attn = make(causal).eval()
    q, k, v = qkv(length)
    mask = padding(length, padded)
    p, allowed = probabilities(attn, q, k, mask, causal)
    graph = with_self((p >= 0.5) & allowed)
    fraction = (graph & allowed).sum() / (allowed.sum() * HEADS)
    assert 0.1 < fraction < 0.9, "a graph that is empty or full would not test the sparse path"
    y = attn(q, k, v, padding_mask=mask)
    real = mask[:, None, :, None].expand_as(q)
    torch.testing.assert_close(y[real], graph_attention(q, k, v, p, graph)[real])
    assert attn.trial_metrics()["edge_fraction"] == pytest.approx(float(fraction))


@pytest.mark.parametrize("causal", [False, True])
def test_training_attends_on_a_bernoulli_sample(causal):
    """Training draws edge (i, j) where the uniform of (seed, i, j) is below p_ij (``sbm.uniforms``, a hash, so any
    thread count gives the same graph), with its seed from torch's generator."""
    attn = make(causal).train()
    q, k, v = qkv(20)
    mask = padding(20, True)
    p, allowed = probabilities(attn, q, k, mask, causal)
    torch.manual_seed(5)
    y = attn(q, k, v, padding_mask=mask)
    torch.manual_seed(5)
    u = sbm.uniforms(sbm.draw_seed(), torch.arange(2 * HEADS * 20), 20).view(2, HEADS, 20, 20)
    graph = with_self((u < p.detach()) & allowed)
    real = mask[:, None, :, None].expand_as(q)
    torch.testing.assert_close(y[real], graph_attention(q, k, v, p, graph)[real])
    fraction = (graph & allowed).sum() / (allowed.sum() * HEADS)
    assert attn.trial_metrics()["edge_fraction"] == pytest.approx(float(fraction))


def memberships(length: int, scale: float = 0.6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, HEADS, length, 3, generator=g) * scale, torch.rand(2, HEADS, length, 3, generator=g) * scale


def assert_independent_bernoulli(draw_graph, causal: bool, draws: int = 4000) -> None:
    """``draw_graph(yb, z, valid)`` -> (B, H, 6, 6) bool, called ``draws`` times on one small block model: edge
    frequencies match p_ij = 1 - exp(-(YB)_i . Z_j) on allowed pairs (within 5 standard errors), disallowed pairs never
    appear, self-edges always do, and two edges of one row, and one edge of neighbouring rows, are independent."""
    yb, z = memberships(6)
    valid = padding(6, False)
    valid[0, 5] = False
    p = 1 - torch.exp(-(yb @ z.transpose(-1, -2)))
    allowed = (valid[:, :, None] & valid[:, None, :])[:, None].expand_as(p)
    if causal:
        allowed = allowed & torch.ones(6, 6, dtype=torch.bool).tril()
    pairs = (((2, 0), (2, 1)), ((2, 0), (3, 0)))
    counts, together = torch.zeros_like(p), [0] * len(pairs)
    torch.manual_seed(1)
    for _ in range(draws):
        graph = draw_graph(yb, z, valid)
        counts += graph
        for n, (a, b) in enumerate(pairs):
            together[n] += bool(graph[0, 0][a] and graph[0, 0][b])
    freq = counts / draws
    eye = torch.eye(6, dtype=torch.bool).expand_as(p)
    assert (freq[eye] == 1).all() and (freq[~allowed & ~eye] == 0).all()
    off = allowed & ~eye
    error = (freq[off] - p[off]).abs() / (p[off] * (1 - p[off]) / draws).sqrt()
    assert error.max() < 5, f"largest deviation {error.max():.1f} standard errors"
    for count, (a, b) in zip(together, pairs, strict=True):
        joint = p[0, 0][a] * p[0, 0][b]
        assert abs(count / draws - joint) < 5 * math.sqrt(joint * (1 - joint) / draws), f"edges {a} and {b}"


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_cpu_kernel_draws_the_reference_graph_bit_for_bit_on_any_thread_count(training, causal, padded, monkeypatch):
    """csrc/sbm_sample.cpp against the same draw in torch operators (the path off the CPU, all sequences of a row block
    at once or one at a time): the same graph, the same edge counts and p sum, over several row blocks (L = 300), and
    the same graph on one thread as on two."""
    from attentions import _fused_cpu

    if _fused_cpu.usable(torch.zeros(1)) is None:
        pytest.skip("the CPU kernels are off or cannot be built here")
    yb, z = memberships(300, scale=1.0)
    valid = padding(300, padded)
    kernel = sbm.dense_graph(yb, z, valid, causal, training, seed=12345)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = sbm.dense_graph(yb, z, valid, causal, training, seed=12345)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(_fused_cpu, "usable", lambda x: None)
    reference = sbm.dense_graph(yb, z, valid, causal, training, seed=12345)
    monkeypatch.setattr(sbm, "_REFERENCE_BLOCK", 1)  # the torch-operator draw one sequence at a time
    assert torch.equal(sbm.dense_graph(yb, z, valid, causal, training, seed=12345)[0], reference[0])
    assert torch.equal(kernel[0], reference[0]) and torch.equal(kernel[0], one_thread[0])
    assert kernel[2:] == reference[2:]
    assert kernel[1] == pytest.approx(reference[1], rel=1e-12)
    p = 1 - torch.exp(-(yb @ z.transpose(-1, -2)))
    assert 0.05 < kernel[0].float().mean() < 0.95  # a graph neither empty nor full
    assert torch.equal(sbm.dense_graph(yb, z, valid, causal, training, seed=12345)[0], kernel[0])  # deterministic
    if training:
        assert not torch.equal(sbm.dense_graph(yb, z, valid, causal, training, seed=54321)[0], kernel[0])
    else:
        allowed = (valid[:, :, None] & valid[:, None, :])[:, None] & (
            torch.ones(300, 300, dtype=torch.bool).tril() if causal else True
        )
        assert torch.equal(kernel[0], with_self((p >= 0.5) & allowed))


@pytest.mark.parametrize("path", ["kernel", "torch"])
@pytest.mark.parametrize("causal", [False, True])
def test_dense_draw_gives_each_edge_independently_its_probability(path, causal, monkeypatch):
    """The pair-by-pair draw, on the CPU kernel and in torch operators, over 4,000 seeds."""
    from attentions import _fused_cpu

    if path == "torch":
        monkeypatch.setattr(_fused_cpu, "usable", lambda x: None)
    elif _fused_cpu.usable(torch.zeros(1)) is None:
        pytest.skip("the CPU kernels are off or cannot be built here")
    assert_independent_bernoulli(
        lambda yb, z, valid: sbm.dense_graph(yb, z, valid, causal, True, sbm.draw_seed())[0], causal
    )


def test_sampled_graph_changes_in_training_not_in_eval():
    attn = make().train()
    q, k, v = qkv(24)
    outputs, fractions = [], []
    for _ in range(3):
        outputs.append(attn(q, k, v))
        fractions.append(attn.trial_metrics()["edge_fraction"])
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert not torch.allclose(outputs[0], outputs[1]) and len(set(fractions)) > 1
    attn.eval()
    first = attn(q, k, v)
    torch.testing.assert_close(attn(q, k, v), first, rtol=0, atol=0)
    assert 0.0 <= attn.trial_metrics()["edge_fraction"] <= 1.0


@pytest.mark.parametrize("causal", [False, True])
def test_every_query_keeps_its_self_edge(causal):
    """Memberships near 0 give an (almost) empty graph: each query then attends to itself alone."""
    attn = make(causal)
    with torch.no_grad():
        attn.mlp[-1].bias.fill_(-40.0)  # MLP output far negative in every direction ...
        attn.cluster_embeddings.abs_()  # ... and embeddings positive, so every membership is ~0
    q, k, v = qkv(12)
    for mode in (attn.eval(), attn.train()):
        torch.testing.assert_close(mode(q, k, v), v)
        assert attn.trial_metrics()["edge_fraction"] == pytest.approx(1 / 12 if not causal else 12 / 78)


def test_straight_through_gradients_match_reference():
    """The task loss alone (density 0) trains the cluster embeddings and the MLP, exactly as the STE prescribes."""
    q, k, v = qkv(16)
    target = torch.randn_like(q)
    attn = make(density=0.0).eval()
    (attn(q, k, v) * target).sum().backward()
    got = [t.grad.clone() for t in (attn.cluster_embeddings, attn.mlp[0].weight, attn.mlp[2].weight)]
    attn.zero_grad()
    mask = padding(16, False)
    p, allowed = probabilities(attn, q, k, mask, False)
    (graph_attention(q, k, v, p, with_self((p >= 0.5) & allowed)) * target).sum().backward()
    want = [t.grad for t in (attn.cluster_embeddings, attn.mlp[0].weight, attn.mlp[2].weight)]
    for g, w in zip(got, want, strict=True):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("causal", [False, True])
def test_density_regularizer_is_weighted_expected_edge_fraction(causal):
    attn = make(causal, density=0.3).eval()
    q, k, v = qkv(14)
    mask = padding(14, True)
    attn(q, k, v, padding_mask=mask)
    p, allowed = probabilities(attn, q, k, mask, causal)
    torch.testing.assert_close(attn.extra_loss, 0.3 * p.sum() / (allowed.sum() * HEADS))
    attn.extra_loss.backward()
    assert attn.cluster_embeddings.grad.abs().sum() > 0


def test_density_loss_reaches_model_loss_and_edge_fraction_reaches_metrics():
    cfg = ModelConfig(
        kind="lm", vocab_size=11, max_len=32, attention="sbm", attention_params={"clusters": 3, "density": 5.0}
    )
    torch.manual_seed(0)
    model = Transformer(cfg).eval()  # eval: one deterministic graph, so a second forward sees the same model
    tokens = torch.randint(2, 11, (3, 17))
    batch = {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}
    loss = model(batch)
    plugins = [m for m in model.modules() if isinstance(m, attentions.Attention)]
    extra = sum(p.extra_loss for p in plugins)
    logits, targets, mask = model.predictions(batch)
    torch.testing.assert_close(loss, F.cross_entropy(logits[mask], targets[mask]) + extra)
    assert extra > 0.1
    model.zero_grad()
    model.extra_loss().backward()
    assert all(p.cluster_embeddings.grad.abs().sum() > 0 for p in plugins)
    fraction = plugin_metrics(model)["edge_fraction"]
    assert 0.0 <= fraction <= 1.0
    assert fraction == pytest.approx(sum(p.trial_metrics()["edge_fraction"] for p in plugins) / len(plugins))


@pytest.mark.parametrize("param,bad", [("clusters", 0), ("clusters", 2.5), ("density", -1.0), ("density", True)])
def test_invalid_parameters_named(param, bad):
    with pytest.raises(ValueError, match=param):
        make(**{param: bad})


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_dense_and_edge_list_paths_agree(causal, training, monkeypatch):
    """The two attention paths (dense masked for dense graphs, edge list for sparse ones) give the same outputs, the
    same extra loss and the same gradients on the same drawn graph, padding included."""
    q, k, v = (t.requires_grad_() for t in qkv(19))
    mask, target = padding(19, True), torch.randn(2, HEADS, 19, DIM)
    results = []
    for dense_above in (0.0, 2.0):  # always dense, never dense
        attn = make(causal, density=0.2).train(training)
        monkeypatch.setattr(attn, "dense_above", dense_above)
        torch.manual_seed(3)
        out = attn(q, k, v, padding_mask=mask)
        loss = (out * target * mask[:, None, :, None]).sum() + attn.extra_loss
        params = (q, k, v, attn.cluster_embeddings, attn.mlp[0].weight, attn.mlp[2].weight)
        results.append((out.detach(), attn.trial_metrics()["edge_fraction"], torch.autograd.grad(loss, params)))
    (dense, dense_fraction, dense_grads), (edges, edge_fraction, edge_grads) = results
    real = mask[:, None, :, None].expand_as(dense)
    torch.testing.assert_close(dense[real], edges[real])
    assert dense_fraction == edge_fraction
    for a, b in zip(dense_grads, edge_grads, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b)


def test_path_follows_the_drawn_graph(monkeypatch):
    """A dense graph runs the dense path, a nearly empty one the edge list."""
    calls = []
    torch.manual_seed(0)
    attn = attentions.build("sbm", heads=HEADS, head_dim=DIM, max_len=512, clusters=3)
    monkeypatch.setattr(attn, "_edge_list_attention", lambda *a: calls.append("edges") or a[2])
    q, k, v = qkv(300)  # self-edges alone are 1/300 of the pairs, below dense_above
    attn.eval()(q, k, v)
    assert calls == [] and attn.trial_metrics()["edge_fraction"] > attn.dense_above
    with torch.no_grad():
        attn.mlp[-1].bias.fill_(-40.0)
        attn.cluster_embeddings.abs_()
    attn(q, k, v)
    assert calls == ["edges"]


# --- fastRG: the sampler of sparse graphs ---------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_fastrg_draws_each_edge_independently_with_its_probability(causal):
    """fastRG's Poisson multigraph, collapsed, is the same independent Bernoulli(p_ij) graph, over 4,000 draws."""

    def draw(yb, z, valid):
        b, h, i, j = sbm.fastrg_edges(yb, z, valid, causal)
        graph = torch.zeros(*yb.shape[:2], 6, 6, dtype=torch.bool)
        graph[b, h, i, j] = True
        return graph

    assert_independent_bernoulli(draw, causal)


@pytest.mark.parametrize("causal", [False, True])
def test_fastrg_path_is_attention_on_its_drawn_graph(causal, monkeypatch):
    """Training on a sparse expected graph takes the fastRG path: its output, edge fraction, density loss and
    straight-through gradients are those of the written-out reference on the graph fastRG drew."""
    attn = make(causal, density=0.3).train()
    monkeypatch.setattr(attn, "fastrg_below", 2.0)  # every training forward samples by fastRG
    q, k, v = qkv(14)
    mask = padding(14, True)
    target = torch.randn_like(q) * mask[:, None, :, None]
    torch.manual_seed(4)
    loss = (attn(q, k, v, padding_mask=mask) * target).sum() + attn.extra_loss
    loss.backward()
    got = [t.grad.clone() for t in (attn.cluster_embeddings, attn.mlp[0].weight, attn.mlp[2].weight)]
    fraction = attn.trial_metrics()["edge_fraction"]
    attn.zero_grad()

    yb, z = attn.memberships(q, k)
    torch.manual_seed(4)
    b, h, i, j = sbm.fastrg_edges(yb.detach(), z.detach(), mask, causal)
    p, allowed = probabilities(attn, q, k, mask, causal)
    graph = torch.zeros_like(p, dtype=torch.bool)
    graph[b, h, i, j] = True
    pairs = allowed.sum() * HEADS  # allowed pairs over sequences and heads
    assert graph[allowed.expand_as(graph)].any() and not graph[allowed.expand_as(graph)].all(), "neither empty nor full"
    assert not (graph & ~allowed & ~torch.eye(14, dtype=torch.bool)).any()
    reference = graph_attention(q, k, v, p, graph)
    expected_loss = 0.3 * p.sum() / pairs
    ((reference * target).sum() + expected_loss).backward()
    want = [t.grad for t in (attn.cluster_embeddings, attn.mlp[0].weight, attn.mlp[2].weight)]
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a, w, atol=1e-5, rtol=1e-4)
    assert fraction == pytest.approx(float((graph & allowed).sum() / pairs))


def test_fastrg_never_forms_the_pair_probabilities(monkeypatch):
    """A sparse graph in training is drawn, attended and regularized without the L x L probability tensor."""
    torch.manual_seed(0)
    attn = attentions.build("sbm", heads=HEADS, head_dim=DIM, max_len=512, clusters=3, causal=True).train()
    with torch.no_grad():
        attn.mlp[-1].bias.fill_(-4.0)  # memberships about 0.02: about 1e-3 expected edges per pair
        attn.cluster_embeddings.abs_()
    monkeypatch.setattr(sbm, "_probability", lambda *a: pytest.fail("formed the L x L probabilities"))
    q, k, v = (t.requires_grad_() for t in qkv(400))
    out = attn(q, k, v)
    (out.sum() + attn.extra_loss).backward()
    assert torch.isfinite(q.grad).all() and attn.cluster_embeddings.grad.abs().sum() > 0
    assert attn.trial_metrics()["edge_fraction"] < 2 * attn.fastrg_below
