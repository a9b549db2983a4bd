"""The attention plugin contract and its registry.

A plugin is an ``Attention`` subclass registered with ``@register_attention(name)``. Every module of this package is
imported on first use of the registry, so adding a plugin is one file and one decorator. Plugins outside the package
come from a folder (``load_plugin_dir``) or the ``attnbench.attentions`` entry-point group.

Plugins declare what they support as class data (``supports_causal``, ``supports_padding``) so a grid can reject an
invalid cell before anything is built, and ``build`` checks every keyword against the plugin's signature.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from attentions._registry import Registry, require_int

COMMON_PARAMS = ("heads", "head_dim", "max_len", "causal")
ENTRY_POINT_GROUP = "attnbench.attentions"


class Attention(nn.Module):
    """Base class: maps q, k, v of shape (batch, heads, length, head_dim) to an output of q's shape.

    ``padding_mask`` is (batch, length) bool with True for real tokens; outputs at real positions never depend on
    padded keys. ``extra_loss`` holds an auxiliary loss of the last forward (or None) for the trainer to add.
    """

    supports_causal: ClassVar[bool] = True
    supports_padding: ClassVar[bool] = True
    causal_refusal: ClassVar[str] = "this attention has no causal form"
    # Memory linear in length at fixed parameters (block methods): `attnbench bench --check` fails such a plugin
    # when the fitted exponent of its peak memory against length drifts above 1.3.
    linear_memory: ClassVar[bool] = False
    name: ClassVar[str] = ""

    def __init__(self, *, heads: int, head_dim: int, max_len: int, causal: bool = False):
        super().__init__()
        for field, value in (("heads", heads), ("head_dim", head_dim), ("max_len", max_len)):
            require_int(self.name or type(self).__name__, field, value)
        if causal and not self.supports_causal:
            raise ValueError(f"attention {self.name!r}: causal=True is refused: {self.causal_refusal}")
        self.heads, self.head_dim, self.max_len, self.causal = heads, head_dim, max_len, bool(causal)
        self.extra_loss: torch.Tensor | None = None
        self.register_forward_pre_hook(_reset_extra_loss)

    def check_inputs(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None):
        """Shared shape checks, so every plugin fails the same way on bad input."""
        if q.dim() != 4 or q.shape[1] != self.heads or q.shape[-1] != self.head_dim:
            raise ValueError(
                f"{self.name}: q must be (batch, {self.heads}, length, {self.head_dim}), got {tuple(q.shape)}"
            )
        if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[-1] != q.shape[-1]:
            raise ValueError(f"{self.name}: k {tuple(k.shape)} and v {tuple(v.shape)} do not match q {tuple(q.shape)}")
        if max(q.shape[2], k.shape[2]) > self.max_len:
            raise ValueError(f"{self.name}: length {max(q.shape[2], k.shape[2])} exceeds max_len={self.max_len}")
        if padding_mask is not None and padding_mask.shape != (k.shape[0], k.shape[2]):
            raise ValueError(f"{self.name}: padding_mask must be (batch, length), got {tuple(padding_mask.shape)}")

    def trial_metrics(self) -> dict[str, float]:
        """Statistics of the last forward worth storing with the trial (e.g. sbm's ``edge_fraction``); none here."""
        return {}

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}, max_len={self.max_len}, causal={self.causal}"


def _reset_extra_loss(module: Attention, _args: Any) -> None:
    module.extra_loss = None


REGISTRY = Registry("attention", Attention, "attentions", ENTRY_POINT_GROUP, COMMON_PARAMS)
register_attention = REGISTRY.register
names = REGISTRY.names
get = REGISTRY.get
parameters = REGISTRY.parameters
check_params = REGISTRY.check_params
load_plugin_dir = REGISTRY.load_dir


def build(name: str, **kwargs: Any) -> Attention:
    """Construct plugin ``name`` with the common keywords (heads, head_dim, max_len, causal) and its own."""
    return REGISTRY.build(name, **kwargs)
