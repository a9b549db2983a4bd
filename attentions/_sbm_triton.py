"""The SBM-Transformer's attention graph drawn on CUDA in one Triton launch, its totals kept on the device.

Drawn in torch operators, one forward's graph is a Python loop over row blocks and sequences (each a matrix product,
an exponential, the hash of every pair and a comparison) and a read of the totals back to the host: dozens of small
launches and several host syncs per layer. Here one program draws one (sequence x head, row tile, column tile) square
of the graph: the rates Y_i B Z_j^T of the tile from its (tile x clusters) factors (``clusters`` rank-one updates, no
BLAS), p = 1 - exp(-rate), the pair's uniform, the allowed pairs (padding, causal), every query's self-edge; and adds
the tile's sum of p over allowed pairs, its allowed edges and all its edges into a (3,) float64 buffer by atomics. The
buffer stays on the device: the plugin reads it only when its metrics are asked for.

The uniform of pair (i, j) is the hash of ``csrc/sbm_sample.cpp`` and ``sbm.uniforms`` bit for bit (a key from the
seed and the row's global index sequence * L + i, then mix(key + j * 0x9E3779B9) >> 8 in units of 2^-24). p is
computed here, not by a matrix product, and 1 - exp(-rate) by a short series below rate 0.25 (Triton has no expm1
that its interpreter runs), so it can differ from the torch operators' p in its last bits; the graph then differs
only where a uniform falls between the two values (a chance of about 2^-24 per pair where they differ). Causal tiles
wholly above the diagonal write zeros and compute nothing. The float64 totals are summed in whatever order the atomics
land (their last bits may vary from run to run; the counts are exact).

Off a GPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, set before triton is imported) on CPU
tensors, which is how the tests pin it against ``sbm._draw_rows_reference``. ``ATTNBENCH_TRITON_CUDA=0`` switches it
off (the plugin then keeps its host-driven draw).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

TILE = 64  # rows and columns of a program's square of the graph


def enabled() -> bool:
    return os.environ.get("ATTNBENCH_TRITON_CUDA", "1") != "0"


def available(x: torch.Tensor) -> bool:
    """Whether the kernel draws for ``x``: switched on, and a CUDA tensor (or the interpreter, for tests)."""
    return enabled() and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def _mix32(x):
    """The 32-bit hash of ``csrc/sbm_sample.cpp`` (two multiply-xorshift rounds) on uint32, wrapping."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _edge_probability(rate):
    """1 - exp(-rate) for rate >= 0: a degree-7 series below 0.25 (error under 2e-9 relative), where 1 - exp would
    lose the small p to cancellation; 1 - exp(-rate) above, where p > 0.22."""
    series = rate * (
        1.0
        - rate
        * (
            0.5
            - rate
            * (1.0 / 6.0 - rate * (1.0 / 24.0 - rate * (1.0 / 120.0 - rate * (1.0 / 720.0 - rate * (1.0 / 5040.0)))))
        )
    )
    return tl.where(rate < 0.25, series, 1.0 - tl.exp(-rate))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])  # one compiled kernel for every seed
def _draw_graph(
    yb_ptr,
    z_ptr,
    valid_ptr,
    graph_ptr,
    totals_ptr,
    heads,
    length,
    seed_lo,
    seed_hi,
    CLUSTERS: tl.constexpr,
    CAUSAL: tl.constexpr,
    TRAINING: tl.constexpr,
    HAS_VALID: tl.constexpr,
    TILE: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)  # sequence * heads + head
    row_tile, col_tile = tl.program_id(1), tl.program_id(2)
    rows = row_tile * TILE + tl.arange(0, TILE)
    cols = col_tile * TILE + tl.arange(0, TILE)
    r, c = rows[:, None], cols[None, :]
    inside = (r < length) & (c < length)
    out = graph_ptr + n * length * length + r.to(tl.int64) * length + c
    if CAUSAL:
        if col_tile > row_tile:  # every key of the tile lies after every query: nothing allowed, no self-edge
            tl.store(out, tl.zeros((TILE, TILE), tl.uint8), mask=inside)
            return
    rate = tl.zeros((TILE, TILE), tl.float32)
    for k in tl.static_range(CLUSTERS):
        y = tl.load(yb_ptr + (n * length + rows) * CLUSTERS + k, mask=rows < length, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + (n * length + cols) * CLUSTERS + k, mask=cols < length, other=0.0).to(tl.float32)
        rate += y[:, None] * z[None, :]
    p = _edge_probability(rate)
    allowed = inside
    if CAUSAL:
        allowed = allowed & (c <= r)
    if HAS_VALID:
        sequence = n // heads
        real_rows = tl.load(valid_ptr + sequence * length + rows, mask=rows < length, other=0) != 0
        real_cols = tl.load(valid_ptr + sequence * length + cols, mask=cols < length, other=0) != 0
        allowed = allowed & real_rows[:, None] & real_cols[None, :]
    if TRAINING:
        global_rows = n * length + rows  # int64, as the reference keys its rows
        low = _mix32(seed_lo.to(tl.uint32) ^ global_rows.to(tl.uint32))
        key = _mix32(low ^ seed_hi.to(tl.uint32) ^ ((global_rows >> 32).to(tl.uint32) * 0x85EBCA6B))
        bits = _mix32(key[:, None] + cols.to(tl.uint32)[None, :] * 0x9E3779B9)
        drawn = (bits >> 8).to(tl.float32) * (1.0 / 16777216.0) < p
    else:
        drawn = p >= 0.5
    edge = (drawn & allowed) | ((r == c) & inside)  # every query keeps its self-edge (a padded one too)
    tl.store(out, edge.to(tl.uint8), mask=inside)
    p_sum = tl.sum(tl.sum(tl.where(allowed, p, 0.0), axis=1), axis=0)
    kept = tl.sum(tl.sum((edge & allowed).to(tl.int32), axis=1), axis=0)
    edges = tl.sum(tl.sum(edge.to(tl.int32), axis=1), axis=0)
    tl.atomic_add(totals_ptr, p_sum.to(tl.float64))
    tl.atomic_add(totals_ptr + 1, kept.to(tl.float64))
    tl.atomic_add(totals_ptr + 2, edges.to(tl.float64))


@torch.compiler.disable
def draw_graph(
    yb: torch.Tensor,
    z: torch.Tensor,
    valid: torch.Tensor | None,
    causal: bool,
    training: bool,
    seed: int,
    *,
    tile: int = TILE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sbm.dense_graph`` in one launch: (graph (B, H, L, L) bool, totals (3,) float64 on the device: sum of p over
    the allowed pairs, allowed edges, all edges) from (Y B, Z), both (B, H, L, clusters), and ``valid`` (B, L) bool
    or None (all real). Training draws edge (i, j) where the uniform of (seed, i, j) is below p_ij, eval where
    p_ij >= 0.5; opaque to ``torch.compile`` (one graph break)."""
    if yb.dim() != 4 or yb.shape != z.shape:
        raise ValueError(
            f"sbm draw_graph: expected (B, H, L, clusters) memberships, got {tuple(yb.shape)}, {tuple(z.shape)}"
        )
    batch, heads, length, clusters = yb.shape
    if valid is not None and tuple(valid.shape) != (batch, length):
        raise ValueError(f"sbm draw_graph: valid must be ({batch}, {length}), got {tuple(valid.shape)}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"sbm draw_graph: seed must be in [0, 2^64), got {seed}")
    graph = torch.empty(batch, heads, length, length, dtype=torch.bool, device=yb.device)
    totals = torch.zeros(3, dtype=torch.float64, device=yb.device)
    flat_graph = graph.view(torch.uint8)
    flat_valid = None if valid is None else valid.to(torch.bool).contiguous().view(torch.uint8)
    tiles = triton.cdiv(length, tile)
    if batch * heads and length:
        _draw_graph[(batch * heads, tiles, tiles)](
            yb.contiguous(),
            z.contiguous(),
            flat_graph if flat_valid is None else flat_valid,  # unread without padding
            flat_graph,
            totals,
            heads,
            length,
            seed & 0xFFFFFFFF,
            (seed >> 32) & 0xFFFFFFFF,
            CLUSTERS=clusters,
            CAUSAL=causal,
            TRAINING=training,
            HAS_VALID=flat_valid is not None,
            TILE=tile,
            num_warps=4,
        )
    return graph, totals
