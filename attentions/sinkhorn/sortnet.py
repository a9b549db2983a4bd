"""The per-head Sorting Network P of Sparse Sinkhorn Attention (Tay et al. 2020, eq. 3-4 and Table 8).

P maps one pooled block (a head_dim vector) to one logit per block position. Every head owns its weights (section
3.2.2: the permutation is not shared across heads), so the weights are stacked as (heads, in, out) tensors and applied
with one einsum instead of ``heads`` separate ``nn.Linear`` layers.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

SortNetKind = Literal["linear", "relu", "linear_relu_linear", "relu_linear_relu_linear"]
# kind -> the layers it stacks and whether a ReLU follows the last one (Table 8 rows 4, 3, 2, 1).
_LAYOUT: dict[str, tuple[int, bool]] = {
    "linear": (1, False),  # P(X) = F1(X)
    "relu": (1, True),  # P(X) = relu(F1(X))
    "linear_relu_linear": (2, False),  # P(X) = F2(relu(F1(X)))
    "relu_linear_relu_linear": (2, True),  # P(X) = relu(F2(relu(F1(X)))), eq. 4
}


class SortNet(nn.Module):
    """(B, H, n, D) pooled blocks -> (B, H, n, out) sort logits, one small network per head.

    The hidden width of the two-layer kinds is ``dim`` (the paper's W_P is d x d). Weights start like ``nn.Linear``
    (uniform in +-1/sqrt(fan_in)) because the shared model's initializer only touches ``nn.Linear`` modules.
    """

    def __init__(self, heads: int, dim: int, out: int, kind: SortNetKind = "linear"):
        super().__init__()
        if kind not in _LAYOUT:
            raise ValueError(f"sortnet must be one of {', '.join(_LAYOUT)}, got {kind!r}")
        self.kind = kind
        layers, self.final_relu = _LAYOUT[kind]
        widths = [dim] * layers + [out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            bound = 1 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(heads, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(heads, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        """``out`` keeps only the first logits of the last layer: a shorter input has fewer blocks than max_len."""
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i == last and out is not None:  # slicing the weight, not the output, skips work for unused blocks
                weight, bias = weight[..., :out], bias[..., :out]
            x = torch.einsum("bhnd,hde->bhne", x, weight.to(x.dtype)) + bias.to(x.dtype)  # (B, H, n, e)
            if i < last or self.final_relu:
                x = torch.relu(x)
        return x

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


def gumbel_like(x: torch.Tensor) -> torch.Tensor:
    """Standard i.i.d. Gumbel(0, 1) noise of ``x``'s shape: -log(-log(U)), U kept inside (0, 1) so it stays finite."""
    tiny = torch.finfo(x.dtype).tiny
    u = torch.rand_like(x).clamp(tiny, 1.0 - torch.finfo(x.dtype).eps)
    return -torch.log(-torch.log(u))
