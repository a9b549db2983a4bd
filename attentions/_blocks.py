"""Block helpers shared by the block-sparse plugins: padding to a block multiple and masked softmax.

Masked scores are filled with the dtype's most negative finite value rather than -inf, so a row with nothing
visible (a padded query) yields a finite uniform row instead of NaNs in forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_length(x: torch.Tensor, multiple: int, dim: int = 2) -> torch.Tensor:
    """Zero-pad ``x`` along ``dim`` up to the next multiple of ``multiple``."""
    extra = (-x.shape[dim]) % multiple
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - dim - 1) + [0, extra]
    return F.pad(x, pad)


def key_valid(padding_mask: torch.Tensor | None, batch: int, length: int, padded: int, device) -> torch.Tensor:
    """(batch, padded) bool: True for real tokens, False for user padding and for block padding past ``length``."""
    valid = torch.zeros(batch, padded, dtype=torch.bool, device=device)
    if padding_mask is None:
        valid[:, :length] = True
    else:
        valid[:, :length] = padding_mask.to(device=device, dtype=torch.bool)
    return valid


def to_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, H, L, D) with L a multiple of ``block`` -> (B, H, L // block, block, D)."""
    b, h, length, d = x.shape
    return x.reshape(b, h, length // block, block, d)


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim where ``allowed`` is True (broadcast), finite even for fully masked rows."""
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1)


def causal_block_mask(block: int, device) -> torch.Tensor:
    """(block, block) lower-triangular bool: query i sees keys j <= i inside the same block."""
    return torch.ones(block, block, dtype=torch.bool, device=device).tril()


def kernel_mask(mask: torch.Tensor, lead: tuple[int, ...], last: tuple[int, int]) -> torch.Tensor:
    """``mask`` (broadcasting to ``lead + last``) as the CPU kernels read it: contiguous bool (1 or prod(lead),
    *last), expanded over the leading dimensions only where it differs along them (a causal triangle is passed once)."""
    mask = mask.reshape((1,) * (len(lead) + 2 - mask.dim()) + mask.shape)
    if all(size == 1 for size in mask.shape[:-2]):
        return mask.expand(*mask.shape[:-2], *last).reshape(1, *last).contiguous()
    return mask.expand(*lead, *last).reshape(-1, *last).contiguous()
