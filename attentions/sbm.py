"""SBM-Transformer attention (Cho et al. 2022): a mixed-membership stochastic block model samples the attention graph.

Per head, ``clusters`` learned cluster embeddings C (k x d). Queries and keys pass through one two-layer MLP (shared
by queries, keys and heads) and get memberships Y = sigmoid(MLP(Q) C^T), Z = sigmoid(MLP(K) C^T); the block matrix
is B = softmax(C C^T) (row-wise). Y_i B Z_j^T is the expected number of (i, j) edges of the block model (the paper
samples a Poisson multigraph); collapsing multi-edges gives the edge probability p_ij = 1 - exp(-Y_i B Z_j^T), in
[0, 1), close to Y_i B Z_j^T when small. Training samples a bipartite query-key graph A_ij ~ Bernoulli(p_ij); eval
uses its most likely graph, A_ij = [p_ij >= 0.5], so eval is deterministic. Every query always keeps its self-edge, so
no row is empty. Padded queries and keys get no edges (but a padded query keeps its self-edge; its output is unused);
causal masks edges j > i, and as p_ij depends on q_i and k_j only, nothing leaks.

Attention is softmax attention restricted to the graph, computed by whichever path suits the drawn graph, chosen per
forward: dense masked attention (batched matrix products, hand-written backward keeping one L x L tensor) when the
graph holds at least ``dense_above`` of all pairs, as at initialization; below that an edge list (scores q_i . k_j /
sqrt(d) for the sampled (i, j), a softmax per query over its edges by scatter, outputs scattered back), whose cost
falls with the edge count. Both give the same outputs and gradients. Straight-through gradients: each edge's weight
is multiplied by 1 + p_ij - stopgrad(p_ij) (value 1, gradient as if the edge's weight were p_ij), so the task loss
trains C and the MLP through the sampled edges. ``extra_loss`` is the density regularizer ``density`` x mean p_ij
over the allowed (real, causal-visible) pairs: the expected edge fraction, so the model pays for denser graphs.

Sampling, chosen per training forward from the expected edge count (O(L * clusters) to compute): a dense graph is
drawn pair by pair, a block of query rows at a time (``dense_graph``: the uniform of pair (i, j) is a hash of a seed
from torch's generator and (i, j), so rows are drawn in parallel, on the CPU by ``csrc/sbm_sample.cpp``, and the graph
does not depend on the thread count); a sparse one by fastRG (Rohe et al. 2018, the paper's sampler), which never forms
the L x L probabilities. fastRG draws the Poisson multigraph exactly: per cluster c, Poisson(sum_i (YB)_ic * sum_j
Z_jc) edges, each with its query i drawn in proportion to (YB)_ic and its key j to Z_jc; collapsing multi-edges then
gives the same independent Bernoulli(p_ij) graph as the pair-by-pair draw (padded positions get zero membership, causal
rejects j > i).

Complexity per head: on the dense-sampling path the edge probabilities are O(L^2 * clusters) time and O(L * 128)
floats of memory at a time (scalars, no d-dimensional products; the graph itself is L^2 bools; backward recomputes
them block by block from the L x clusters factors); on the
fastRG path sampling is O(L * clusters + E) for E edges, and only the density regularizer's sum of p stays O(L^2 *
clusters) time, block by block in O(L * 128) memory. Attention is O(L^2 * d) in BLAS products on a dense graph and
O(E * d) on a sparse one. ``trial_metrics()`` reports the realized edge fraction of the last forward.

Where it runs. Everything above is the host-driven forward: the CPU's, and a GPU's where triton is missing or its
kernel is switched off (``ATTNBENCH_TRITON_CUDA=0``). It loops over row blocks and sequences in Python and reads the
drawn graph's totals back to the host to choose the sampler and the attention path; on a GPU each of those reads is a
sync and each piece a few small launches. On CUDA the forward takes the device path instead
(``SBMAttention._device_attention``): one Triton launch (``_sbm_triton``) draws the whole graph pair by pair with
the same hash (training and eval; fastRG is not used), its totals (sum of p over allowed pairs, allowed edges, all
edges) accumulate on the device, and attention is always the dense masked path, batched over every sequence and head
(rows split into blocks only where the L x L floats of all sequences would pass 1 GiB, a choice made from the shapes).
Nothing there is chosen from the drawn graph, as that choice needs a count on the host; so a sparse learned graph
costs O(L^2) per head there, like a dense one. The density regularizer takes its p sum from the device totals; the
edge fraction stays a device tensor that only ``trial_metrics()`` reads. For one seed the device draw gives the
graph of the pair-by-pair draw (its p is computed in the tile and may differ from the matrix product's in the last
bits; an edge can differ only where a uniform falls between the two). The device path has not yet run on a GPU: it
is tested under Triton's interpreter on CPU tensors.

Parameters: ``clusters`` (block-model clusters per head), ``density`` (weight of the density regularizer, >= 0).
"""

from __future__ import annotations

import functools
import importlib.util
from typing import ClassVar

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from attentions import _fused_cpu
from attentions._blocks import key_valid
from attentions._registry import require_int
from attentions.base import Attention, register_attention


@register_attention("sbm")
class SBMAttention(Attention):
    """Parameters: ``clusters`` (clusters per head), ``density`` (weight of the expected edge fraction in the loss)."""

    # Attention runs dense (masked, BLAS products) when the sampled graph holds at least this fraction of all L x L
    # pairs, and on the edge list below it: chosen per forward from the drawn graph. Measured at L = 2048, D = 64
    # (CPU, fp32): the edge list costs 6x the dense path at 3% of the pairs, 2.3x at 1%, 0.8x at 0.45%, 0.5x at 0.15%.
    dense_above: ClassVar[float] = 1 / 256
    # Training draws the graph by fastRG when the expected number of (multi-)edges is below this fraction of the L x L
    # pairs: fastRG costs O(E), the pair-by-pair draw O(L^2) whatever E is.
    fastrg_below: ClassVar[float] = 1 / 256

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

    def memberships(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Y B, Z), both (B, H, L, k): the rate of pair (i, j) is row i of the first dot row j of the second."""
        emb = self.cluster_embeddings  # memberships in the parameters' dtype (bf16 inputs to fp32 weights alike)
        y = torch.sigmoid(torch.einsum("bhld,hkd->bhlk", self.mlp(q.to(emb.dtype)), emb))  # (B, H, L, k) queries
        z = torch.sigmoid(torch.einsum("bhld,hkd->bhlk", self.mlp(k.to(emb.dtype)), emb))  # keys
        block = torch.softmax(emb @ emb.transpose(-1, -2), dim=-1)  # (H, k, k)
        return y @ block, z

    def allowed_pairs(self, batch: int, length: int, padding_mask, device) -> torch.Tensor:
        """(B, 1, L, L) bool: real query, real key, and causal-visible."""
        valid = key_valid(padding_mask, batch, length, length, device)
        allowed = (valid[:, :, None] & valid[:, None, :])[:, None]
        if self.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=device).tril()
        return allowed

    def edge_probabilities(
        self, q: torch.Tensor, k: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, allowed), both (B, H, L, L): edge probabilities (zero where not allowed) and the allowed pairs."""
        yb, z = self.memberships(q, k)
        allowed = self.allowed_pairs(q.shape[0], q.shape[2], padding_mask, q.device)
        return _probability(yb, z).masked_fill(~allowed, 0.0), allowed

    def forward(self, q, k, v, padding_mask=None):
        self.check_inputs(q, k, v, padding_mask)
        batch, heads, length, dim = q.shape
        yb, z = self.memberships(q, k)
        valid = key_valid(padding_mask, batch, length, length, q.device)  # (B, L)
        allowed_count = (_allowed_count(valid, self.causal) * heads).clamp(min=1)
        if _device_path(q):
            return self._device_attention(q, k, v, yb, z, valid, padding_mask is not None, allowed_count)
        if self.training:
            with torch.no_grad():
                expected = _expected_edges(yb, z, valid, self.causal)
            if expected < self.fastrg_below * batch * heads * length * length:
                return self._fastrg_attention(q, k, v, yb, z, valid, allowed_count)
        with torch.no_grad():
            graph, p_sum, kept, edges = dense_graph(yb, z, valid, self.causal, self.training, draw_seed())
            self._edge_fraction = kept / allowed_count  # self-edges count: attended
        p_sum = torch.tensor(p_sum, dtype=yb.dtype, device=yb.device)
        self.extra_loss = self.density * _ProbabilitySum.apply(yb, z, valid, p_sum, self.causal, False) / allowed_count
        if edges >= self.dense_above * graph.numel():
            return _DenseGraphAttention.apply(q, k, v, yb, z, graph, valid, self.causal, False)
        return self._edge_list_attention(q, k, v, yb, z, graph, valid)

    def _device_attention(self, q, k, v, yb, z, valid, padded, allowed_count):
        """The forward on CUDA with nothing read back to the host: the graph drawn in one Triton launch (its totals
        stay on the device), then dense graph attention over all sequences at once. No sampler or attention path is
        chosen from the drawn graph: that choice would read a count back, a host sync per layer."""
        from attentions import _sbm_triton  # imported here: triton only matters on this path

        with torch.no_grad():
            graph, totals = _sbm_triton.draw_graph(
                yb.detach(), z.detach(), valid if padded else None, self.causal, self.training, draw_seed()
            )
            self._edge_fraction = totals[1] / allowed_count  # self-edges count: attended
        p_sum = totals[0].to(yb.dtype)
        self.extra_loss = self.density * _ProbabilitySum.apply(yb, z, valid, p_sum, self.causal, True) / allowed_count
        return _DenseGraphAttention.apply(q, k, v, yb, z, graph, valid, self.causal, True)

    def _edge_list_attention(self, q, k, v, yb, z, graph, valid):
        """Attention on the drawn graph's edges only, O(E * D): for sparse graphs, where E is well below L^2."""
        with torch.no_grad():
            b, h, i, j = graph.nonzero(as_tuple=True)  # (E,) each: the sampled edges
            carries = _carries(valid, b, i, j, self.causal)
        return _edge_attention(q, k, v, yb, z, (b, h, i, j), carries)

    def _fastrg_attention(self, q, k, v, yb, z, valid, allowed_count):
        """Training on a sparse expected graph: draw it by fastRG, attend on its edge list; nothing L x L is formed."""
        batch, heads, length, _ = q.shape
        with torch.no_grad():
            b, h, i, j = fastrg_edges(yb, z, valid, self.causal)
            carries = _carries(valid, b, i, j, self.causal)
            self._edge_fraction = carries.count_nonzero() / allowed_count
        p_sum = _ProbabilitySum.total(yb, z, valid, self.causal)
        self.extra_loss = self.density * _ProbabilitySum.apply(yb, z, valid, p_sum, self.causal, False) / allowed_count
        return _edge_attention(q, k, v, yb, z, (b, h, i, j), carries)

    def trial_metrics(self) -> dict[str, float]:
        """Realized edge fraction of the last forward: attended edges (self-edges included) over the allowed (real,
        causal-visible) pairs."""
        return {} if self._edge_fraction is None else {"edge_fraction": float(self._edge_fraction)}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, clusters={self.clusters}, density={self.density}"


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


@torch.compiler.disable  # a Python decision (environment, lazy import), not something to trace
def _device_path(x: torch.Tensor) -> bool:
    """Whether a forward on ``x`` runs the device path (``SBMAttention._device_attention``): a CUDA tensor, triton
    installed, and the kernel not switched off (``ATTNBENCH_TRITON_CUDA=0``). Triton is imported only for a CUDA
    tensor: importing it fixes its interpreter setting."""
    if not x.is_cuda or not _TRITON_INSTALLED:
        return False
    from attentions import _sbm_triton

    return _sbm_triton.available(x)


def _carries(valid: torch.Tensor, b, i, j, causal: bool) -> torch.Tensor:
    """Per edge, whether it is an allowed pair (real query, real key, causal-visible): False only for a padded
    query's self-edge, which is attended (so no row is empty) but carries no straight-through gradient."""
    return valid[b, i] & valid[b, j] & ((j <= i) if causal else True)


def draw_seed() -> int:
    """The seed of one drawn graph, from torch's CPU generator: ``torch.manual_seed`` fixes the draws, and a resumed
    trial (whose checkpoint keeps that generator's state) continues them."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


@torch.compiler.disable  # host-driven (row blocks, one host sync) and calls the CPU kernel: nothing for dynamo
def dense_graph(
    yb: torch.Tensor, z: torch.Tensor, valid: torch.Tensor, causal: bool, training: bool, seed: int
) -> tuple[torch.Tensor, float, int, int]:
    """The graph of one forward drawn pair by pair: (graph (B, H, L, L) bool, sum of p over the allowed pairs, allowed
    edges, all edges). Edge (i, j) is drawn with probability p_ij (training; a hash of (seed, i, j) is its uniform, so
    the draw does not depend on the thread count) or where p_ij >= 0.5 (eval), on allowed pairs only, and every query
    keeps its self-edge. Rows are drawn a block at a time (``_row_blocks``: the causal upper triangle is never
    computed): on the CPU by ``csrc/sbm_sample.cpp``, one sequence at a time (O(L * 128) floats live); elsewhere by the
    same hash in torch operators, as many sequences at once as fit ``_REFERENCE_BLOCK`` pairs. (The device path on
    CUDA draws with ``_sbm_triton.draw_graph`` instead, in one launch and without reading the totals back.)"""
    batch, heads, length, _ = yb.shape
    graph = torch.zeros(batch, heads, length, length, dtype=torch.bool, device=yb.device)
    ys, zs, graphs = _flat(yb.contiguous()), _flat(z.contiguous()), _flat(graph)
    seq_valid = None if bool(valid.all()) else valid.repeat_interleave(heads, dim=0)  # (B * H, L)
    kernel = _fused_cpu.usable(yb) if yb.dtype == torch.float32 else None
    draw = _draw_rows_reference if kernel is None else functools.partial(_draw_rows_kernel, kernel)
    totals = torch.zeros(3, dtype=torch.float64, device=yb.device)
    for r0, r1, c1 in _row_blocks(length, causal):
        step = 1 if kernel is not None else max(1, _REFERENCE_BLOCK // ((r1 - r0) * c1))
        for n0 in range(0, ys.shape[0], step):
            n = slice(n0, n0 + step)
            p = _probability(ys[n, r0:r1], zs[n, :c1]).float()
            valid_n = None if seq_valid is None else seq_valid[n]
            totals += draw(p, graphs[n], n0 * length, r0, valid_n, causal, training, seed)
    p_sum, kept, edges = totals.tolist()
    return graph, p_sum, int(kept), int(edges)


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 32-bit values held in int64, in two 16-bit halves so no product leaves int64."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The 32-bit integer hash of ``csrc/sbm_sample.cpp`` (two multiply-xorshift rounds), on int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(seed: int, rows: torch.Tensor, cols: int) -> torch.Tensor:
    """(len(rows), cols) float32 uniforms in [0, 1) of the pairs (row, j): global row indices ``rows``
    (sequence * L + query), the same bits as the CPU kernel."""
    rows = rows.to(torch.int64)
    low = _mix32((seed & _MASK32) ^ (rows & _MASK32))
    key = _mix32(low ^ ((seed >> 32) & _MASK32) ^ _mul32(rows >> 32, 0x85EBCA6B))
    j = torch.arange(cols, dtype=torch.int64, device=rows.device)
    x = _mix32((key[:, None] + _mul32(j, 0x9E3779B9)[None, :]) & _MASK32)
    return (x >> 8).to(torch.float32) * 2.0**-24


_REFERENCE_BLOCK = 2**24  # pairs drawn at once by the torch-operator draw (int64 temporaries of 128 MiB)


def _draw_rows_kernel(kernel, p, graphs, first_row, row0, valid, causal, training, seed) -> torch.Tensor:
    """``csrc/sbm_sample.cpp`` on each sequence of ``p``: the arguments and the result of ``_draw_rows_reference``."""
    length = graphs.shape[-1]
    sums = [
        kernel.sbm_draw_rows(
            p[s].contiguous(),
            graphs[s],
            row0,
            first_row + s * length + row0,
            None if valid is None else valid[s].contiguous(),
            causal,
            training,
            seed,
        )
        for s in range(p.shape[0])
    ]
    return torch.tensor(sums, dtype=torch.float64).sum(dim=0)


def _draw_rows_reference(p, graphs, first_row, row0, valid, causal, training, seed) -> torch.Tensor:
    """``csrc/sbm_sample.cpp`` in torch operators, for several sequences at once: rows [row0, row0 + p.shape[1]) of
    ``graphs`` (N, L, L) from ``p`` (N, rows, cols), whose self-edges lie inside the piece's columns (as
    ``_row_blocks`` makes them); ``first_row`` is the global row index of the first sequence's row 0, and ``valid``
    (N, L) or None. Returns [p sum, allowed edges, all edges] on the device."""
    sequences, rows, cols = p.shape
    length = graphs.shape[-1]
    r = torch.arange(row0, row0 + rows, device=p.device)
    if causal:
        allowed = (torch.arange(cols, device=p.device)[None, :] <= r[:, None]).expand(sequences, -1, -1)
    else:
        allowed = torch.ones(sequences, rows, cols, dtype=torch.bool, device=p.device)
    if valid is not None:
        allowed = allowed & valid[:, row0 : row0 + rows, None] & valid[:, None, :cols]
    if training:
        global_rows = (first_row + torch.arange(sequences, device=p.device)[:, None] * length + r[None, :]).flatten()
        drawn = uniforms(seed, global_rows, cols).view(sequences, rows, cols) < p
    else:
        drawn = p >= 0.5
    piece = graphs[:, row0 : row0 + rows, :cols]
    piece.copy_(drawn & allowed)
    piece[:, torch.arange(rows, device=p.device), r] = True  # every query keeps its self-edge
    return torch.stack(
        [
            p.double().masked_fill(~allowed, 0.0).sum(),
            (piece & allowed).count_nonzero().double(),
            piece.count_nonzero().double(),
        ]
    )


def _edge_attention(q, k, v, yb, z, edges, carries) -> torch.Tensor:
    """Softmax attention over an edge list ``edges`` = (b, h, i, j), O(E * D), with the straight-through weight
    1 + p_ij - stopgrad(p_ij) on the edges that ``carries`` marks (real, allowed pairs)."""
    batch, heads, length, dim = q.shape
    b, h, i, j = edges
    row = (b * heads + h) * length + i  # flat query id of each edge
    col = (b * heads + h) * length + j  # flat key id
    flat = batch * heads * length
    score = (q.reshape(flat, dim)[row] * k.reshape(flat, dim)[col]).sum(-1) * dim**-0.5  # (E,)
    top = torch.full((flat,), float("-inf"), dtype=score.dtype, device=q.device)
    top = top.scatter_reduce(0, row, score.detach(), "amax")  # a stabilizer; the result does not depend on it
    k_count = yb.shape[-1]
    rate = (yb.reshape(flat, k_count)[row] * z.reshape(flat, k_count)[col]).sum(-1)
    p_edge = (-torch.expm1(-rate) * carries).to(score.dtype)
    weight = (score - top[row]).exp() * (1 + p_edge - p_edge.detach())  # straight-through: value 1, grad of p
    denom = torch.zeros(flat, dtype=weight.dtype, device=q.device).index_add(0, row, weight)
    out = torch.zeros(flat, dim, dtype=v.dtype, device=q.device).index_add(
        0, row, weight[:, None] * v.reshape(flat, dim)[col]
    )
    return (out / denom[:, None]).view(batch, heads, length, dim)


def _allowed_count(valid: torch.Tensor, causal: bool) -> torch.Tensor:
    """Allowed (real query, real key, causal-visible) pairs summed over the batch, from the (B, L) mask in O(L)."""
    if causal:
        return (valid * valid.cumsum(dim=-1)).sum()
    return (valid.sum(dim=-1) ** 2).sum()


def _expected_edges(yb: torch.Tensor, z: torch.Tensor, valid: torch.Tensor, causal: bool) -> float:
    """Expected number of Poisson multi-edges over the allowed pairs, sum of rate_ij, in O(L * clusters)."""
    keep = valid[:, None, :, None].to(yb.dtype)
    yb, z = yb * keep, z * keep
    if causal:  # sum_i (YB)_i . sum_{j <= i} Z_j
        return float((yb * z.cumsum(dim=2)).sum())
    return float((yb.sum(dim=2) * z.sum(dim=2)).sum())


def _draw(weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """For each entry r of ``rows``, an index drawn in proportion to ``weights[r]`` ((R, L), rows with mass only):
    one search in the rows' CDFs laid end to end (row r's CDF shifted into (r, r + 1], in float64 for resolution)."""
    cdf = weights.double().cumsum(dim=-1)
    cdf = cdf / cdf[:, -1:].clamp(min=torch.finfo(torch.float64).tiny)
    offsets = torch.arange(weights.shape[0], dtype=torch.float64, device=weights.device)[:, None]
    target = rows.double() + (1 - torch.rand(rows.shape, dtype=torch.float64, device=weights.device))  # (r, r + 1]
    index = torch.searchsorted((cdf + offsets).flatten(), target)
    return (index - rows * weights.shape[1]).clamp_(0, weights.shape[1] - 1)


def fastrg_edges(
    yb: torch.Tensor, z: torch.Tensor, valid: torch.Tensor, causal: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b, h, i, j) of a graph drawn by fastRG, sorted, duplicates collapsed, every query's self-edge added.

    Edge (i, j) is present with probability exactly 1 - exp(-(YB)_i . Z_j) on allowed pairs, independently (Poisson
    splitting of the multigraph by cluster, then collapsing), and never elsewhere. Cost O(L * clusters + E)."""
    batch, heads, length, clusters = yb.shape
    keep = valid[:, None, :, None].to(yb.dtype)
    yb, z = (yb * keep).float(), (z * keep).float()
    # (B * H * k, L): row r = (b, h, c) holds cluster c's query and key weights
    y_rows = yb.permute(0, 1, 3, 2).reshape(-1, length)
    z_rows = z.permute(0, 1, 3, 2).reshape(-1, length)
    counts = torch.poisson(y_rows.sum(-1).double() * z_rows.sum(-1).double()).long()  # multi-edges per cluster
    rows = torch.repeat_interleave(torch.arange(counts.numel(), device=yb.device), counts)
    i, j = _draw(y_rows, rows), _draw(z_rows, rows)
    bh = rows // clusters  # b * heads + h
    if causal:
        bh, i, j = bh[j <= i], i[j <= i], j[j <= i]
    selves = torch.arange(batch * heads * length, device=yb.device)
    keys = torch.cat([(bh * length + i) * length + j, selves * length + selves % length])
    keys = torch.unique(keys)  # sorted: the order of graph.nonzero() on the same graph
    pair, j = keys // length, keys % length
    bh, i = pair // length, pair % length
    return bh // heads, bh % heads, i, j


def _probability(yb: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(..., rows, cols) p = 1 - exp(-Y B Z^T) from (..., rows, k) and (..., cols, k): the chance of at least one edge
    of the Poisson block model."""
    return torch.matmul(yb, z.transpose(-1, -2)).neg_().expm1_().neg_()


def _row_blocks(length: int, causal: bool):
    """(r0, r1, c1): blocks of query rows [r0, r1) that see key columns [0, c1), all of them, or only up to r1 when
    causal (the rest is never allowed, so it is never computed)."""
    rows = max(128, -(-length // 8))
    for r0 in range(0, length, rows):
        r1 = min(r0 + rows, length)
        yield r0, r1, r1 if causal else length


def _pieces(t: torch.Tensor, causal: bool):
    """(n, r0, r1, c1) for every head of every sequence n (flattened (B * H)) and every block of query rows
    [r0, r1): those rows see key columns [0, c1), all of them, or only up to r1 when causal (the rest is never
    allowed, so it is never computed: about half the work). Blocks keep the live L x L-sized floats small."""
    batch, heads, length = t.shape[0], t.shape[1], t.shape[2]
    for n in range(batch * heads):
        for r0, r1, c1 in _row_blocks(length, causal):
            yield n, r0, r1, c1


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(B, H, ...) -> (B * H, ...), a view of a contiguous tensor."""
    return t.reshape(-1, *t.shape[2:])


def _padded(valid: torch.Tensor) -> list[bool]:
    """Per sequence, whether it holds any padding (read once per call, not once per piece)."""
    return (~valid.all(dim=-1)).tolist()


def _zero_disallowed_(
    piece: torch.Tensor, valid: torch.Tensor, padded: list[bool], sequence: int, r0: int, causal: bool
) -> torch.Tensor:
    """Zero, in place, the entries of ``piece`` (query rows [r0, r0 + rows), key columns [0, cols)) that are not
    allowed. Without padding only the causal triangle of the diagonal square needs it, so most pieces cost nothing."""
    rows, cols = piece.shape
    if padded[sequence]:
        allowed = valid[sequence, r0 : r0 + rows, None] & valid[sequence, None, :cols]
        if causal:
            allowed = allowed & (
                torch.arange(cols, device=valid.device) <= torch.arange(r0, r0 + rows, device=valid.device)[:, None]
            )
        return piece.masked_fill_(~allowed, 0.0)
    if causal:
        piece[:, r0:cols].masked_fill_(torch.ones(rows, cols - r0, dtype=torch.bool, device=piece.device).triu(1), 0.0)
    return piece


def _rate_factors(ys, zs, n, r0, r1, c1):
    """exp(-rate) = 1 - p on rows [r0, r1) and columns [0, c1) of head n: the derivative of p by the rate."""
    return torch.matmul(ys[n, r0:r1], zs[n, :c1].transpose(-1, -2)).neg_().exp_()


class _ProbabilitySum(torch.autograd.Function):
    """Sum of p over the allowed pairs. Its value comes from the caller (the p it samples the graph from) or from
    ``total``; the backward recomputes p block by block from its (L x k) factors instead of keeping an L x L tensor,
    per sequence, or with ``batched`` (the device path) for all sequences at once with nothing read back."""

    @staticmethod
    def total(yb: torch.Tensor, z: torch.Tensor, valid: torch.Tensor, causal: bool) -> torch.Tensor:
        """The sum of p over the allowed pairs, block by block (O(L^2 * k) time, O(L * 128) memory)."""
        heads, padded = yb.shape[1], _padded(valid)
        ys, zs = (_flat(t.detach().contiguous()) for t in (yb, z))
        total = ys.new_zeros(())
        for n, r0, r1, c1 in _pieces(yb, causal):
            p = _rate_factors(ys, zs, n, r0, r1, c1).neg_().add_(1.0)
            total += _zero_disallowed_(p, valid, padded, n // heads, r0, causal).sum()
        return total

    @staticmethod
    def forward(ctx, yb, z, valid, value, causal, batched):
        ctx.save_for_backward(yb, z, valid)
        ctx.causal, ctx.batched = causal, batched
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        yb, z, valid = ctx.saved_tensors
        if ctx.batched:
            return *_probability_sum_backward_batched(yb, z, valid, grad, ctx.causal), None, None, None, None
        heads, padded = yb.shape[1], _padded(valid)
        d_yb, d_z = yb.new_zeros(yb.shape), z.new_zeros(z.shape)
        ys, zs, d_ys, d_zs = (_flat(t.contiguous()) for t in (yb, z, d_yb, d_z))
        for n, r0, r1, c1 in _pieces(yb, ctx.causal):
            d_rate = _rate_factors(ys, zs, n, r0, r1, c1).mul_(grad)
            _zero_disallowed_(d_rate, valid, padded, n // heads, r0, ctx.causal)
            d_ys[n, r0:r1] = d_rate @ zs[n, :c1]
            d_zs[n, :c1] += d_rate.transpose(-1, -2) @ ys[n, r0:r1]
        return d_yb, d_z, None, None, None, None


class _DenseGraphAttention(torch.autograd.Function):
    """Softmax attention restricted to ``graph`` (dense, masked) with the straight-through edge gradient.

    Each edge's weight is exp(score) * (1 + p - stopgrad(p)), so its value is plain graph attention and the gradient
    reaching p_ij equals the score gradient dS_ij = P_ij (dO_i . v_j - dO_i . O_i) on allowed edges. Like a flash
    kernel it keeps only the graph (bool) and each row's log-sum-exp for backward and recomputes the weights there,
    block by block (``_pieces``), with p from its (L x k) factors; causal skips the never-allowed upper triangle.
    With ``batched`` (the device path) every sequence and head goes through one batched product
    (``_batched_blocks``), its allowed pairs built on the device from ``valid``: no per-sequence loop, no host read.
    """

    @staticmethod
    def forward(ctx, q, k, v, yb, z, graph, valid, causal, batched):
        if batched:
            out, lse = _graph_attention_batched(q, k, v, graph, causal)
        else:
            scale = q.shape[-1] ** -0.5
            out, lse = q.new_empty(q.shape), q.new_empty(q.shape[:-1])
            qs, ks, vs, gs, outs, lses = (_flat(t.contiguous()) for t in (q, k, v, graph, out, lse))
            for n, r0, r1, c1 in _pieces(q, causal):
                scores = torch.matmul(qs[n, r0:r1], ks[n, :c1].transpose(-1, -2)).mul_(scale)
                scores.masked_fill_(~gs[n, r0:r1, :c1], float("-inf"))
                lses[n, r0:r1] = torch.logsumexp(scores, dim=-1)  # finite: the self-edge is always there
                torch.matmul(scores.sub_(lses[n, r0:r1, None]).exp_(), vs[n, :c1], out=outs[n, r0:r1])
        ctx.save_for_backward(q, k, v, yb, z, graph, valid, out, lse)
        ctx.causal, ctx.batched = causal, batched
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        q, k, v, yb, z, graph, valid, out, lse = ctx.saved_tensors
        if ctx.batched:
            grads = _graph_attention_backward_batched(q, k, v, yb, z, graph, valid, out, lse, d_out, ctx.causal)
            return *grads, None, None, None, None
        heads, scale = q.shape[1], q.shape[-1] ** -0.5
        padded = _padded(valid)
        delta = (d_out * out).sum(dim=-1)  # (B, H, L)
        grads = [t.new_zeros(t.shape) for t in (q, k, v, yb, z)]
        inputs = (q, k, v, yb, z, graph, lse, delta, d_out)
        qs, ks, vs, ys, zs, gs, lses, deltas, d_outs = (_flat(t.contiguous()) for t in inputs)
        d_qs, d_ks, d_vs, d_ys, d_zs = (_flat(t) for t in grads)
        for n, r0, r1, c1 in _pieces(q, ctx.causal):
            rows, cols = slice(r0, r1), slice(0, c1)
            weights = torch.matmul(qs[n, rows], ks[n, cols].transpose(-1, -2)).mul_(scale)
            weights = weights.sub_(lses[n, rows, None]).exp_().masked_fill_(~gs[n, rows, cols], 0.0)  # P, recomputed
            d_vs[n, cols] += weights.transpose(-1, -2) @ d_outs[n, rows]
            d_scores = torch.matmul(d_outs[n, rows], vs[n, cols].transpose(-1, -2)).sub_(deltas[n, rows, None])
            d_scores.mul_(weights)
            del weights
            d_qs[n, rows] = (d_scores @ ks[n, cols]).mul_(scale)
            d_ks[n, cols] += (d_scores.transpose(-1, -2) @ qs[n, rows]).mul_(scale)
            # dL/dp = dS on allowed edges (padded self-edges carry none); dp/drate = exp(-rate).
            d_rate = _zero_disallowed_(d_scores, valid, padded, n // heads, r0, ctx.causal).to(ys.dtype)
            d_rate.mul_(_rate_factors(ys, zs, n, r0, r1, c1))
            d_ys[n, rows] = d_rate @ zs[n, cols]
            d_zs[n, cols] += d_rate.transpose(-1, -2) @ ys[n, rows]
        return *grads, None, None, None, None


# --- the batched form of the device path: every sequence and head at once, no per-sequence loop, no host read ----

_BATCHED_BLOCK = 2**28  # L x L-sized floats of all sequences held at once (1 GiB in float32) before rows are split


def _batched_blocks(sequences: int, length: int, causal: bool):
    """(r0, r1, c1) row blocks over all sequences at once: one block (all rows, all columns) unless its
    sequences x L x L floats exceed ``_BATCHED_BLOCK``; the split depends on the shapes only, never on a value."""
    rows = max(1, min(length, _BATCHED_BLOCK // max(1, sequences * length)))
    for r0 in range(0, length, rows):
        r1 = min(r0 + rows, length)
        yield r0, r1, r1 if causal else length


def _allowed_rows(seq_valid: torch.Tensor, r0: int, r1: int, c1: int, causal: bool) -> torch.Tensor:
    """(N, rows, c1) bool: the allowed pairs (real query, real key, causal-visible) of query rows [r0, r1) and key
    columns [0, c1) of every sequence, from ``seq_valid`` (N, L)."""
    allowed = seq_valid[:, r0:r1, None] & seq_valid[:, None, :c1]
    if causal:
        device = seq_valid.device
        allowed = allowed & (torch.arange(c1, device=device) <= torch.arange(r0, r1, device=device)[:, None])
    return allowed


def _graph_attention_batched(q, k, v, graph, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of softmax attention restricted to ``graph``, all sequences and heads in one batched product."""
    scale = q.shape[-1] ** -0.5
    out, lse = q.new_empty(q.shape), q.new_empty(q.shape[:-1])
    qs, ks, vs, gs, outs, lses = (_flat(t.contiguous()) for t in (q, k, v, graph, out, lse))
    everything = slice(None)
    for r0, r1, c1 in _batched_blocks(qs.shape[0], qs.shape[1], causal):
        rows, cols = slice(r0, r1), slice(0, c1)
        scores = torch.matmul(qs[everything, rows], ks[everything, cols].transpose(-1, -2)).mul_(scale)
        scores.masked_fill_(gs[everything, rows, cols].logical_not(), float("-inf"))
        lses[everything, rows] = torch.logsumexp(scores, dim=-1)  # finite: the self-edge is always there
        outs[everything, rows] = torch.matmul(scores.sub_(lses[everything, rows, None]).exp_(), vs[everything, cols])
    return out, lse


def _graph_attention_backward_batched(q, k, v, yb, z, graph, valid, out, lse, d_out, causal: bool):
    """Gradients (q, k, v, Y B, Z) of ``_DenseGraphAttention``, all sequences and heads at once: the backward of the
    per-piece form, its allowed pairs built on the device from ``valid``."""
    heads, scale = q.shape[1], q.shape[-1] ** -0.5
    delta = (d_out * out).sum(dim=-1)  # (B, H, L)
    grads = [t.new_zeros(t.shape) for t in (q, k, v, yb, z)]
    inputs = (q, k, v, yb, z, graph, lse, delta, d_out)
    qs, ks, vs, ys, zs, gs, lses, deltas, d_outs = (_flat(t.contiguous()) for t in inputs)
    d_qs, d_ks, d_vs, d_ys, d_zs = (_flat(t) for t in grads)
    seq_valid = valid.repeat_interleave(heads, dim=0)  # (B * H, L)
    every = slice(None)
    for r0, r1, c1 in _batched_blocks(qs.shape[0], qs.shape[1], causal):
        rows, cols = slice(r0, r1), slice(0, c1)
        weights = torch.matmul(qs[every, rows], ks[every, cols].transpose(-1, -2)).mul_(scale)
        weights = weights.sub_(lses[every, rows, None]).exp_().masked_fill_(gs[every, rows, cols].logical_not(), 0.0)
        d_vs[every, cols] += weights.transpose(-1, -2) @ d_outs[every, rows]
        d_scores = torch.matmul(d_outs[every, rows], vs[every, cols].transpose(-1, -2)).sub_(deltas[every, rows, None])
        d_scores.mul_(weights)
        del weights
        d_qs[every, rows] = (d_scores @ ks[every, cols]).mul_(scale)
        d_ks[every, cols] += (d_scores.transpose(-1, -2) @ qs[every, rows]).mul_(scale)
        # dL/dp = dS on allowed edges (padded self-edges carry none); dp/drate = exp(-rate).
        allowed = _allowed_rows(seq_valid, r0, r1, c1, causal)
        d_rate = d_scores.masked_fill_(allowed.logical_not(), 0.0).to(ys.dtype)
        d_rate.mul_(_rate_factors(ys, zs, every, r0, r1, c1))
        d_ys[every, rows] = d_rate @ zs[every, cols]
        d_zs[every, cols] += d_rate.transpose(-1, -2) @ ys[every, rows]
    return grads


def _probability_sum_backward_batched(yb, z, valid, grad, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (Y B, Z) of ``_ProbabilitySum``, all sequences and heads at once."""
    d_yb, d_z = yb.new_zeros(yb.shape), z.new_zeros(z.shape)
    ys, zs, d_ys, d_zs = (_flat(t.contiguous()) for t in (yb, z, d_yb, d_z))
    seq_valid = valid.repeat_interleave(yb.shape[1], dim=0)
    every = slice(None)
    for r0, r1, c1 in _batched_blocks(ys.shape[0], ys.shape[1], causal):
        d_rate = _rate_factors(ys, zs, every, r0, r1, c1).mul_(grad)
        d_rate.masked_fill_(_allowed_rows(seq_valid, r0, r1, c1, causal).logical_not(), 0.0)
        d_ys[every, r0:r1] = d_rate @ zs[every, :c1]
        d_zs[every, :c1] += d_rate.transpose(-1, -2) @ ys[every, r0:r1]
    return d_yb, d_z
