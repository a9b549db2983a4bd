"""Sinkhorn block attention as one FlexAttention call: the GPU path of ``sinkhorn``'s sort-and-attend step.

On a GPU the batched path (``block_attention``) is a few dozen small kernels per layer, so below about 16K tokens it
measured kernel launches rather than arithmetic. FlexAttention expresses the step exactly and compiles it into one fused
forward and one fused backward that never write the scores to memory: keys and values are ``[K; sorted K]`` (length
2L), and a block mask lets query block i see key block i of the first half (j <= i inside it when causal) and sorted
block i of the second. A sort-matrix row with no mass (block 0 under Causal Sinkhorn Balancing, which has no earlier
block) reads nothing from the sorted half: a score modification sends those scores to -inf, as ``sorted_ok`` masks them
in ``block_attention``. Inputs with padding keep the batched path.

Used on CUDA unless ``ATTNBENCH_FLEX_CUDA=0``; on the CPU torch 2.13 has no FlexAttention backward, so the CPU keeps
its fused kernel. The forward runs anywhere, which is how the CPU tests pin it against ``block_attention.reference``.
"""

from __future__ import annotations

import functools
import os

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from attentions._compile import allow_recompiles


def enabled(x: torch.Tensor) -> bool:
    """The FlexAttention path applies to (B, H, ..., D) tensors like ``x``: on CUDA, not switched off, and with a head
    width its kernels tile (a power of two from 16; narrower heads keep the batched path)."""
    dim = x.shape[-1] if x.dim() else 0
    return (
        x.device.type == "cuda"
        and os.environ.get("ATTNBENCH_FLEX_CUDA", "1") != "0"
        and dim >= 16
        and dim & (dim - 1) == 0
    )


@functools.cache
def _compiled_flex():
    """flex_attention is only fused when compiled; one compiled callable serves every shape, and each shape compiles
    once (``allow_recompiles``: past dynamo's limit a shape would silently run the unfused reference)."""
    allow_recompiles()
    return torch.compile(flex_attention, dynamic=False)


_BLOCK_MASKS: dict[tuple[int, int, bool, str], BlockMask] = {}


def block_mask(length: int, block: int, causal: bool, device: str) -> BlockMask:
    """The block mask of (length, block, causal, device), built once and then only looked up.

    Under ``torch.compile`` the lookup is traced (a hit is a graph input guarded on the cache): only the first call for
    a key leaves the graph to build the mask, and the recompile that follows reads it, so a compiled or CUDA-graph step
    never rebuilds it."""
    key = (length, block, causal, device)
    mask = _BLOCK_MASKS.get(key)
    if mask is None:
        mask = _build_block_mask(*key)
    return mask


@torch.compiler.disable  # built eagerly, outside any captured region
def _build_block_mask(length: int, block: int, causal: bool, device: str) -> BlockMask:
    """Query i sees key j < L in its own block (j <= i when causal) and key L + j in sorted block i; structural only,
    so it depends on nothing but the key."""

    def visible(b, h, q_idx, kv_idx):
        own = kv_idx < length
        same_block = torch.where(own, kv_idx, kv_idx - length) // block == q_idx // block
        return same_block & (~own | (kv_idx <= q_idx)) if causal else same_block

    mask = create_block_mask(visible, B=None, H=None, Q_LEN=length, KV_LEN=2 * length, device=device)
    _BLOCK_MASKS[(length, block, causal, device)] = mask
    return mask


def flex_block_attention(q, kb, vb, sort, *, causal: bool) -> torch.Tensor:
    """q, kb, vb: (B, H, n, b, D), sort: (B, H, n, n) -> (B, H, n, b, D); the result of ``block_attention.reference``
    with no padding (``sorted_ok`` = rows of ``sort`` with mass, ``local_ok`` = the causal triangle or None)."""
    batch, heads, n, block, dim = q.shape
    length = n * block
    sorted_k, sorted_v = (
        torch.matmul(sort.to(t.dtype), t.reshape(batch, heads, n, block * dim)) for t in (kb, vb)
    )  # (B, H, n, b * D): sorted block i = sum_j sort[i, j] * block j
    keys = torch.cat([kb.reshape(batch, heads, length, dim), sorted_k.view(batch, heads, length, dim)], dim=2)
    values = torch.cat([vb.reshape(batch, heads, length, dim), sorted_v.view(batch, heads, length, dim)], dim=2)
    live = sort.detach().sum(dim=-1) > 0  # (B, H, n): the sorted block holds something

    def drop_empty_sorted(score, b, h, q_idx, kv_idx):
        return torch.where((kv_idx < length) | live[b, h, q_idx // block], score, -float("inf"))

    # Inside a compiled model dynamo compiles flex_attention with the rest; eager flex (CPU tests) is unfused math.
    attend = _compiled_flex() if q.is_cuda and not torch.compiler.is_compiling() else flex_attention
    out = attend(
        q.reshape(batch, heads, length, dim),
        keys,
        values,
        score_mod=drop_empty_sorted,
        block_mask=block_mask(length, block, causal, str(q.device)),
    )
    return out.view(batch, heads, n, block, dim)
