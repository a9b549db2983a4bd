"""SBM-Transformer attention (Cho et al. 2022): a mixed-membership stochastic block model samples the attention graph.

Per head, ``clusters`` learned cluster embeddings C (k x d). Queries and keys pass through one two-layer MLP (shared
by queries, keys and heads) and get memberships Y = sigmoid(MLP(Q) C^T), Z = sigmoid(MLP(K) C^T); the block matrix
is B = softmax(C C^T) (row-wise). Y_i B Z_j^T is the expected number of (i, j) edges of the block model (the paper
samples a Poisson multigraph); collapsing multi-edges gives the edge probability p_ij = 1 - exp(-Y_i B Z_j^T), in
[0, 1), close to Y_i B Z_j^T when small. Training samples a bipartite query-key graph A_ij ~ Bernoulli(p_ij); eval
uses its most likely graph, A_ij = [p_ij >= 0.5], so eval is deterministic. Every query always keeps its self-edge, so
no row is empty. Padded queries and keys get no edges (but a padded query keeps its self-edge; its output is unused);
causal masks edges j > i, and as p_ij depends on q_i and k_j only, nothing leaks.

Attention runs on the edge list only: scores q_i . k_j / sqrt(d) for the sampled (i, j), a softmax per query over
its edges by scatter, outputs scattered back. Straight-through gradients: each edge's weight is multiplied by
1 + p_ij - stopgrad(p_ij) (value 1, gradient as if the edge's weight were p_ij), so the task loss trains C and the MLP
through the sampled edges. ``extra_loss`` is the density regularizer ``density`` x mean p_ij over the allowed
(real, causal-visible) pairs: the expected edge fraction, so the model pays for denser graphs.

Complexity per head: the edge probabilities are computed densely, O(L^2 * clusters) time and O(L^2) memory (scalars,
no d-dimensional products: the paper's fastRG sampling would avoid even that); attention is O(E * d) for E sampled
edges, with no dense L x L softmax. ``trial_metrics()`` reports the realized edge fraction of the last forward.

Parameters: ``clusters`` (block-model clusters per head), ``density`` (weight of the density regularizer, >= 0).
"""

from __future__ import annotations

import torch
from torch import nn

from attentions._blocks import key_valid
from attentions._registry import require_int
from attentions.base import Attention, register_attention


@register_attention("sbm")
class SBMAttention(Attention):
    """Parameters: ``clusters`` (clusters per head), ``density`` (weight of the expected edge fraction in the loss)."""

    def __init__(
        self,
        *,
        heads: int,
        head_dim: int,
        max_len: int,
        causal: bool = False,
        clusters: int = 8,
        density: float = 1e-2,
    ):
        super().__init__(heads=heads, head_dim=head_dim, max_len=max_len, causal=causal)
        require_int("sbm", "clusters", clusters)
        if isinstance(density, bool) or not isinstance(density, int | float) or not density >= 0:
            raise ValueError(f"sbm: density must be a float >= 0, got {density!r}")
        self.clusters, self.density = clusters, float(density)
        self.cluster_embeddings = nn.Parameter(torch.randn(heads, clusters, head_dim) * head_dim**-0.5)  # (H, k, D)
        self.mlp = nn.Sequential(nn.Linear(head_dim, head_dim), nn.ReLU(), nn.Linear(head_dim, head_dim))
        self._edge_fraction: torch.Tensor | None = None

    def edge_probabilities(
        self, q: torch.Tensor, k: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, allowed), both (B, H, L, L): edge probabilities (zero where not allowed) and the allowed pairs."""
        batch, _, length, _ = q.shape
        emb = self.cluster_embeddings.to(q.dtype)
        y = torch.sigmoid(torch.einsum("bhld,hkd->bhlk", self.mlp(q), emb))  # (B, H, L, k) query memberships
        z = torch.sigmoid(torch.einsum("bhld,hkd->bhlk", self.mlp(k), emb))  # key memberships
        block = torch.softmax(emb @ emb.transpose(-1, -2), dim=-1)  # (H, k, k)
        rate = torch.einsum("bhik,hkm,bhjm->bhij", y, block, z)  # (B, H, L, L) expected edge counts
        valid = key_valid(padding_mask, batch, length, length, q.device)
        allowed = (valid[:, :, None] & valid[:, None, :])[:, None]  # (B, 1, L, L)
        if self.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        return (-torch.expm1(-rate)).masked_fill(~allowed, 0.0), allowed

    def forward(self, q, k, v, padding_mask=None):
        self.check_inputs(q, k, v, padding_mask)
        batch, heads, length, dim = q.shape
        p, allowed = self.edge_probabilities(q, k, padding_mask)
        with torch.no_grad():
            graph = torch.bernoulli(p) > 0 if self.training else p >= 0.5
            graph = (graph & allowed) | torch.eye(length, dtype=torch.bool, device=q.device)  # every query keeps itself
            allowed_count = allowed.sum() * heads
            self._edge_fraction = (graph & allowed).sum() / allowed_count.clamp(min=1)  # self-edges count: attended
            b, h, i, j = graph.nonzero(as_tuple=True)  # (E,) each: the sampled edges
        self.extra_loss = self.density * p.sum() / allowed_count.clamp(min=1)

        row = (b * heads + h) * length + i  # flat query id of each edge
        col = (b * heads + h) * length + j  # flat key id
        flat = batch * heads * length
        score = (q.reshape(flat, dim)[row] * k.reshape(flat, dim)[col]).sum(-1) * dim**-0.5  # (E,)
        top = torch.full((flat,), float("-inf"), dtype=score.dtype, device=q.device)
        top = top.scatter_reduce(0, row, score.detach(), "amax")  # a stabilizer; the result does not depend on it
        p_edge = p[b, h, i, j]
        weight = (score - top[row]).exp() * (1 + p_edge - p_edge.detach())  # straight-through: value 1, grad of p
        denom = torch.zeros(flat, dtype=weight.dtype, device=q.device).index_add(0, row, weight)
        out = torch.zeros(flat, dim, dtype=v.dtype, device=q.device).index_add(
            0, row, weight[:, None] * v.reshape(flat, dim)[col]
        )
        return (out / denom[:, None]).view(batch, heads, length, dim)

    def trial_metrics(self) -> dict[str, float]:
        """Realized edge fraction of the last forward: attended edges (self-edges included) over the allowed (real,
        causal-visible) pairs."""
        return {} if self._edge_fraction is None else {"edge_fraction": float(self._edge_fraction)}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, clusters={self.clusters}, density={self.density}"
