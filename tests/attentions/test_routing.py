"""Routing attention: equals its routing pattern written densely, causal without leaks, k-means only in training,
commitment loss reaching the model's loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attentions
from harness.model import ModelConfig, Transformer

HEADS, DIM, MAX_LEN = 2, 8, 96


def make(causal: bool = False, seed: int = 0, **params) -> attentions.Attention:
    torch.manual_seed(seed)
    params = {"clusters": 3, "window": 8} | params
    return attentions.build("routing", heads=HEADS, head_dim=DIM, max_len=MAX_LEN, causal=causal, **params)


def qkv(length: int, batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, HEADS, length, DIM, generator=g) for _ in range(3)]


def padding(length: int) -> torch.Tensor:
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[0, length - 5 :] = False
    mask[1, :3] = False
    return mask


def dense(q, k, v, allowed):
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def similarities(attn, q, k):
    """Cosine similarity of unit q and k to each centroid, (B, H, L, C), computed here from the buffer."""
    mu = attn.centroids
    return [torch.einsum("bhld,hcd->bhlc", F.normalize(x, dim=-1), mu) for x in (q, k)]


def balanced_pattern(attn, q, k, valid) -> torch.Tensor:
    """Query i sees key j iff some cluster took i among its `window` nearest queries and j among its nearest keys."""
    q_sim, k_sim = similarities(attn, q, k)
    w = min(attn.window, q.shape[2])
    members = []
    for sim in (q_sim, k_sim):
        rank = sim.masked_fill(~valid[:, None, :, None], -3.0).transpose(-1, -2)  # (B, H, C, L)
        members.append(torch.zeros_like(rank, dtype=torch.bool).scatter(-1, rank.topk(w, -1).indices, True))
    q_mem, k_mem = members
    allowed = torch.einsum("bhci,bhcj->bhij", q_mem.float(), k_mem.float()) > 0
    allowed = allowed & valid[:, None, None, :]
    return allowed | torch.eye(q.shape[2], dtype=torch.bool)


def causal_pattern(attn, q, k, valid) -> torch.Tensor:
    """Query i sees itself and the last `window` keys j <= i whose nearest centroid is i's nearest centroid."""
    q_sim, k_sim = similarities(attn, q, k)
    qc, kc = q_sim.argmax(-1), k_sim.argmax(-1)
    batch, heads, length, _ = q.shape
    allowed = torch.zeros(batch, heads, length, length, dtype=torch.bool)
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                same = [j for j in range(i + 1) if kc[b, h, j] == qc[b, h, i] and valid[b, j]]
                allowed[b, h, i, same[-attn.window :]] = True
                allowed[b, h, i, i] = True
    return allowed


@pytest.mark.parametrize("length", [5, 24, 40])
@pytest.mark.parametrize("clusters,window", [(3, 8), (6, 4), (70, 3)])  # 70: memberships span two bit words
@pytest.mark.parametrize("padded", [False, True])
def test_balanced_equals_dense_union_pattern(length, clusters, window, padded):
    attn = make(clusters=clusters, window=window).eval()
    q, k, v = qkv(length)
    mask = padding(length) if padded else torch.ones(2, length, dtype=torch.bool)
    allowed = balanced_pattern(attn, q, k, mask)
    if length >= 24:
        assert not allowed.all(), "the pattern must be sparse for the test to mean anything"
    real = mask[:, None, :, None].expand_as(q)
    expected = dense(q, k, v, allowed)
    torch.testing.assert_close(attn(q, k, v, padding_mask=mask if padded else None)[real], expected[real])


@pytest.mark.parametrize("clusters", [1, 3, 70])
def test_balanced_with_whole_sequence_window_equals_vanilla(clusters):
    """Every cluster holds every token, so each pair meets in all clusters: it must still count once."""
    q, k, v = qkv(20)
    attn = make(clusters=clusters, window=32).eval()
    vanilla = attentions.build("vanilla", heads=HEADS, head_dim=DIM, max_len=MAX_LEN)
    torch.testing.assert_close(attn(q, k, v), vanilla(q, k, v))


@pytest.mark.parametrize("length", [6, 30])
@pytest.mark.parametrize("window", [2, 8])
@pytest.mark.parametrize("padded", [False, True])
def test_causal_equals_dense_cluster_pattern(length, window, padded):
    attn = make(causal=True, window=window).eval()
    q, k, v = qkv(length)
    mask = padding(length) if padded else torch.ones(2, length, dtype=torch.bool)
    allowed = causal_pattern(attn, q, k, mask)
    assert not (allowed == torch.ones(length, length, dtype=torch.bool).tril()).all()
    real = mask[:, None, :, None].expand_as(q)
    torch.testing.assert_close(attn(q, k, v, padding_mask=mask)[real], dense(q, k, v, allowed)[real])


@pytest.mark.parametrize("causal", [False, True])
def test_query_in_no_cluster_sees_itself(causal):
    """One cluster with a window of 2 takes only two queries (non-causal); every other query returns its own value."""
    attn = make(causal=causal, clusters=1, window=2).eval()
    q, k, v = qkv(12)
    y = attn(q, k, v)
    assert torch.isfinite(y).all()
    if not causal:
        alone = (y - v).abs().amax(-1) < 1e-6  # (B, H, L)
        assert (alone.sum(-1) == 12 - 2).all()
    else:  # one cluster: query 0 has no earlier key, so it sees itself only
        torch.testing.assert_close(y[:, :, 0], v[:, :, 0])


def test_centroids_are_buffers_updated_by_ema_in_training_only():
    attn = make(decay=0.5)
    assert "centroids" in dict(attn.named_buffers()) and "centroids" in attn.state_dict()
    assert not any(p is attn.centroids for p in attn.parameters()) and not attn.centroids.requires_grad
    q, k, v = qkv(20)
    before = attn.centroids.clone()
    attn.eval()
    first = attn(q, k, v)
    torch.testing.assert_close(attn(q, k, v), first, rtol=0, atol=0)
    torch.testing.assert_close(attn.centroids, before, rtol=0, atol=0)
    attn.train()
    attn(q, k, v)
    assert not torch.allclose(attn.centroids, before)
    torch.testing.assert_close(attn.centroids.norm(dim=-1), torch.ones(HEADS, 3))
    attn.eval()
    assert not torch.allclose(attn(q, k, v), first)  # eval now routes with the moved centroids


def test_ema_step_is_spherical_kmeans_update():
    """With decay 0 a step puts each chosen centroid on the normalized mean of the real unit q and k nearest to it."""
    attn = make(decay=0.0).train()
    q, k, v = qkv(16)
    mask = padding(16)
    q_sim, k_sim = similarities(attn, q, k)
    x = torch.cat([F.normalize(q, dim=-1), F.normalize(k, dim=-1)], 2)  # (B, H, 2L, D)
    near = torch.cat([q_sim.argmax(-1), k_sim.argmax(-1)], 2)
    valid = torch.cat([mask, mask], 1)[:, None].expand_as(near)
    expected = attn.centroids.clone()
    for h in range(HEADS):
        for c in range(3):
            chosen = (near[:, h] == c) & valid[:, h]
            if chosen.any():
                expected[h, c] = F.normalize(x[:, h][chosen].mean(0), dim=-1)
    attn(q, k, v, padding_mask=mask)
    torch.testing.assert_close(attn.centroids, expected)


def test_commitment_loss_value_and_weight():
    q, k, v = qkv(10)
    attn = make(commitment=0.5).eval()
    attn(q, k, v)
    q_sim, k_sim = similarities(attn, q, k)
    mu = attn.centroids
    dq = 2 - 2 * q_sim.max(-1).values  # ||x - mu||^2 on the unit sphere
    dk = 2 - 2 * k_sim.max(-1).values
    torch.testing.assert_close(attn.extra_loss, 0.5 * (dq.mean() + dk.mean()) / 2)
    assert mu is attn.centroids
    zero = make(commitment=0.0).eval()
    zero(q, k, v)
    assert zero.extra_loss.item() == 0.0


def test_commitment_loss_reaches_model_loss_and_q_k_projections():
    cfg = ModelConfig(kind="lm", vocab_size=11, max_len=32, attention="routing", layers=2, dim=16, heads=2)
    params = {"clusters": 3, "window": 4, "commitment": 10.0}
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**cfg.__dict__, "attention_params": params})).train()
    tokens = torch.randint(2, 11, (3, 17))
    batch = {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}
    loss = model(batch)
    plugins = [m for m in model.modules() if isinstance(m, attentions.Attention)]
    assert len(plugins) == 2 and all(p.extra_loss is not None and p.extra_loss > 0 for p in plugins)
    logits, targets, mask = model.predictions(batch)  # a second forward: same routing, centroids barely moved
    task_loss = F.cross_entropy(logits[mask], targets[mask])
    extra = sum(p.extra_loss for p in plugins)
    torch.testing.assert_close(loss, task_loss + extra, rtol=1e-3, atol=1e-3)
    assert extra > 1e-2  # so the comparison above could not pass with the extra term missing

    model.zero_grad()
    model.extra_loss().backward()
    layer = model.decoder[-1].attn  # the last layer: its values feed nothing a commitment loss sees
    assert layer.q.weight.grad.abs().sum() > 0 and layer.k.weight.grad.abs().sum() > 0
    assert layer.v.weight.grad is None or layer.v.weight.grad.abs().sum() == 0
    assert all(not b.requires_grad for b in model.buffers())


@pytest.mark.parametrize(
    "param,bad", [("clusters", 0), ("window", -1), ("window", 2.0), ("commitment", -0.1), ("decay", 1.0)]
)
def test_invalid_parameters_named(param, bad):
    with pytest.raises(ValueError, match=param):
        make(**{param: bad})
