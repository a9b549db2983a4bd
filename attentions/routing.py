"""Routing Transformer attention (Roy, Saffar, Vaswani, Grangier 2020): online k-means routing, attention in clusters.

Routing: queries and keys are normalized onto the unit sphere (the paper shares one Q = K projection; the host model
projects q and k separately, so both are routed, against the same centroids, and query i may attend to key j only
when they meet in a cluster: the paper's rule K_j in mu(Q_i)). ``clusters`` centroids per head are buffers, never
trained by gradient: in training mode each forward moves every centroid by an exponential moving average
(``decay``) towards the mean of the unit vectors nearest to it, then back onto the sphere (spherical k-means).
The commitment loss mean ||x - mu(x)||^2 over real queries and keys, times ``commitment``, is ``extra_loss``;
it pulls q and k towards their centroids. Eval mode uses the centroids as they are and is deterministic.

Non-causal (balanced, as in the paper): each cluster takes its ``window`` nearest queries and its ``window`` nearest
keys; every query attends with one softmax over the union of the keys of all clusters that picked it, each key once,
plus itself (a query no cluster picked attends to itself only). Padded tokens rank last and padded keys are masked.

Causal: a balanced top-``window`` choice leaks (a later token can push an earlier one out of a window), so each token
is routed by its own nearest centroid and query i attends to the most recent ``window`` keys j <= i of its cluster,
plus itself. Keys are sorted by (cluster, position); that set is one contiguous run of the sorted order found by
binary search, so it is gathered without any L x L tensor, and it depends on positions <= i only.

Complexity per head: routing O(L * clusters * d); attention O(clusters * window^2 * d) non-causal (O(L * window * d)
for the paper's clusters * window ~ L), O(L * window * d) causal. Centroid buffers are not synchronized across
data-parallel workers (each worker runs its own k-means).

Parameters: ``clusters`` (centroids per head), ``window`` (keys per cluster a query sees), ``commitment`` (weight of
the commitment loss), ``decay`` (EMA factor of the centroid update, in [0, 1)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attentions._blocks import key_valid, masked_softmax
from attentions._registry import require_int
from attentions.base import Attention, register_attention

_BITS = 62  # cluster memberships packed per int64 word (kept clear of the sign bit)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, H, N, D) gathered at index (B, H, *S) along N -> (B, H, *S, D)."""
    b, h, _, d = x.shape
    flat = index.reshape(b, h, -1, 1).expand(-1, -1, -1, d)
    return x.gather(2, flat).reshape(*index.shape, d)


def _pack(member: torch.Tensor) -> torch.Tensor:
    """(B, H, C, L) bool -> (B, H, W, L) int64 with bit c % 62 of word c // 62 set when the token is in cluster c."""
    b, h, c, length = member.shape
    words = -(-c // _BITS)
    member = F.pad(member, (0, 0, 0, words * _BITS - c)).view(b, h, words, _BITS, length)
    weights = 2 ** torch.arange(_BITS, device=member.device, dtype=torch.int64)
    return (member.long() * weights[:, None]).sum(-2)  # distinct powers of two: the sum is the bitwise or


@register_attention("routing")
class RoutingAttention(Attention):
    """Parameters: ``clusters``, ``window``, ``commitment``, ``decay`` (see the module docstring)."""

    linear_memory = True  # O(L * window) at a fixed cluster count

    def __init__(
        self,
        *,
        heads: int,
        head_dim: int,
        max_len: int,
        causal: bool = False,
        clusters: int = 8,
        window: int = 32,
        commitment: float = 1e-4,
        decay: float = 0.999,
    ):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)
        require_int("routing", "clusters", clusters)
        require_int("routing", "window", window)
        if isinstance(commitment, bool) or not isinstance(commitment, int | float) or not commitment >= 0:
            raise ValueError(f"routing: commitment must be a float >= 0, got {commitment!r}")
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 <= decay < 1:
            raise ValueError(f"routing: decay must be a float in [0, 1), got {decay!r}")
        self.clusters, self.window, self.commitment, self.decay = clusters, window, float(commitment), float(decay)
        self.register_buffer("centroids", F.normalize(torch.randn(heads, clusters, head_dim), dim=-1))  # (H, C, D)

    def route(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit q and k (B, H, L, D) and their cosine similarity to each centroid (B, H, L, C), the latter no grad."""
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        mu = self.centroids.to(q.dtype)
        with torch.no_grad():  # routing is a discrete choice; gradients reach q, k via attention and commitment
            return qn, kn, torch.einsum("bhld,hcd->bhlc", qn, mu), torch.einsum("bhld,hcd->bhlc", kn, mu)

    def forward(self, q, k, v, padding_mask=None):
        self.check_inputs(q, k, v, padding_mask)
        batch, heads, length, _ = q.shape
        valid = key_valid(padding_mask, batch, length, length, q.device)[:, None].expand(-1, heads, -1)  # (B, H, L)
        mu = self.centroids.clone().to(q.dtype)  # a copy: the EMA update below writes the buffer in place
        qn, kn, q_sim, k_sim = self.route(q, k)
        q_near, k_near = q_sim.argmax(-1), k_sim.argmax(-1)  # (B, H, L)
        if self.causal:
            out = self._causal(q, k, v, q_near, k_near, valid)
        else:
            out = self._balanced(q, k, v, q_sim, k_sim, valid)

        mu_b = mu.expand(batch, -1, -1, -1)  # (B, H, C, D)
        dist = (qn - _gather(mu_b, q_near)).square().sum(-1) + (kn - _gather(mu_b, k_near)).square().sum(-1)
        self.extra_loss = self.commitment * (dist * valid).sum() / (2 * valid.sum()).clamp(min=1)
        if self.training:
            self._ema_update(torch.cat([qn, kn], 2), torch.cat([q_near, k_near], 2), torch.cat([valid, valid], 2))
        return out

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, near: torch.Tensor, valid: torch.Tensor) -> None:
        """Mini-batch spherical k-means step: centroid <- normalize(decay * centroid + (1 - decay) * assigned mean)."""
        onehot = F.one_hot(near, self.clusters).to(x.dtype) * valid[..., None]  # (B, H, N, C)
        sums = torch.einsum("bhnc,bhnd->hcd", onehot, x)
        counts = onehot.sum((0, 2))[..., None]  # (H, C, 1)
        mu = self.centroids
        moved = F.normalize(self.decay * mu + (1 - self.decay) * (sums / counts.clamp(min=1)).to(mu.dtype), dim=-1)
        mu.copy_(torch.where(counts > 0, moved, mu))  # a centroid nobody chose stays where it is

    def _balanced(self, q, k, v, q_sim, k_sim, valid) -> torch.Tensor:
        """Each cluster's top-window queries x top-window keys; one softmax per query over its clusters' union."""
        batch, heads, length, dim = q.shape
        w = min(self.window, length)
        lowest = -3.0  # below any cosine similarity: padded tokens enter a window only after every real one
        q_rank = q_sim.masked_fill(~valid[..., None], lowest).transpose(-1, -2)  # (B, H, C, L)
        k_rank = k_sim.masked_fill(~valid[..., None], lowest).transpose(-1, -2)
        q_idx, k_idx = q_rank.topk(w, dim=-1).indices, k_rank.topk(w, dim=-1).indices  # (B, H, C, w)

        # A (query, key) pair met in several clusters counts once: in the first of them (bitmask of memberships).
        member = torch.zeros_like(q_rank, dtype=torch.bool)
        q_bits, k_bits = _pack(member.scatter(-1, q_idx, True)), _pack(member.scatter(-1, k_idx, True))  # (B,H,W,L)
        words = q_bits.shape[2]
        q_bits = q_bits.gather(-1, q_idx.flatten(2)[:, :, None].expand(-1, -1, words, -1))  # (B, H, W, C * w)
        k_bits = k_bits.gather(-1, k_idx.flatten(2)[:, :, None].expand(-1, -1, words, -1))
        q_bits, k_bits = (bits.view(batch, heads, words, self.clusters, w) for bits in (q_bits, k_bits))
        bit = torch.arange(words * _BITS, device=q.device).view(words, _BITS)
        cluster = torch.arange(self.clusters, device=q.device)
        earlier = (bit[None] < cluster[:, None, None]).long() * 2 ** torch.arange(_BITS, device=q.device)
        earlier = earlier.sum(-1).T[:, :, None, None]  # (W, C, 1, 1): bits of the clusters before c
        seen = ((q_bits[..., :, None] & k_bits[..., None, :] & earlier) != 0).any(2)  # (B, H, C, w, w)

        allowed = valid.gather(-1, k_idx.flatten(2)).view_as(k_idx)[..., None, :]  # real keys only
        allowed = allowed & (q_idx[..., :, None] != k_idx[..., None, :]) & ~seen  # the query itself comes separately
        qw, kw, vw = _gather(q, q_idx), _gather(k, k_idx), _gather(v, k_idx)  # (B, H, C, w, D)
        scores = torch.einsum("bhcad,bhcjd->bhcaj", qw, kw) * dim**-0.5  # (B, H, C, w, w)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        lse = scores.logsumexp(-1)  # (B, H, C, w); ~ dtype min where nothing is allowed, so its weight below is 0
        part = torch.einsum("bhcaj,bhcjd->bhcad", (scores - lse[..., None]).exp(), vw).reshape(batch, heads, -1, dim)

        # Merge the partial softmaxes with the self term: exact log-sum-exp combination, scattered back to tokens.
        self_score = (q * k).sum(-1) * dim**-0.5  # (B, H, L)
        slot, lse = q_idx.flatten(2), lse.flatten(2)  # (B, H, C * w)
        top = self_score.detach().scatter_reduce(-1, slot, lse.detach(), "amax")  # a stabilizer: result independent
        weight, self_weight = (lse - top.gather(-1, slot)).exp(), (self_score - top).exp()
        denom = self_weight.scatter_add(-1, slot, weight)
        slot_d = slot[..., None].expand(-1, -1, -1, dim)
        num = (self_weight[..., None] * v).scatter_add(2, slot_d, weight[..., None] * part)
        return num / denom[..., None]

    def _causal(self, q, k, v, q_near, k_near, valid) -> torch.Tensor:
        """Query i: the most recent ``window`` keys j <= i routed to its cluster, and itself (one softmax)."""
        batch, heads, length, dim = q.shape
        w = min(self.window, length)
        pos = torch.arange(length, device=q.device)
        k_cluster = k_near.masked_fill(~valid, self.clusters)  # padded keys go to a cluster no query routes to
        sorted_key, order = (k_cluster * length + pos).sort(-1)  # (B, H, L): by cluster, then position
        end = torch.searchsorted(sorted_key, q_near * length + pos, right=True)  # past i's cluster's last key j <= i
        start = torch.searchsorted(sorted_key, q_near * length)  # the cluster's first key
        slots = end[..., None] - w + torch.arange(w, device=q.device)  # (B, H, L, w)
        key_pos = order.gather(-1, slots.clamp(min=0).flatten(2)).view_as(slots)
        allowed = (slots >= start[..., None]) & (key_pos != pos[:, None])  # in the cluster; self comes separately
        kw, vw = _gather(k, key_pos), _gather(v, key_pos)  # (B, H, L, w, D)
        scores = torch.cat([(q * k).sum(-1, keepdim=True), torch.einsum("bhld,bhlwd->bhlw", q, kw)], -1) * dim**-0.5
        allowed = torch.cat([torch.ones_like(allowed[..., :1]), allowed], -1)  # (B, H, L, 1 + w)
        p = masked_softmax(scores, allowed)
        return p[..., :1] * v + torch.einsum("bhlw,bhlwd->bhld", p[..., 1:], vw)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, clusters={self.clusters}, window={self.window}, commitment={self.commitment}"
