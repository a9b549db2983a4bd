"""The one Transformer that hosts every attention plugin, so plugins are compared in identical surroundings.

Pre-LN blocks; projections, heads and the output projection live here (``AttentionLayer``), the plugin only maps
(q, k, v) to outputs. Fixed sinusoidal positions so that a model evaluated on longer inputs than it was trained on
(sorting at 2L) sees well-defined positions. Three heads: ``lm`` (causal decoder), ``classify`` (encoder + masked mean
pool) and ``seq2seq`` (encoder + causal decoder with dense cross-attention, the same ``vanilla`` plugin for everyone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

import attentions
from attentions import Attention
from attentions._compile import allow_recompiles
from tasks.base import BOS_ID


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines the model of a trial."""

    kind: Literal["lm", "classify", "seq2seq"]
    vocab_size: int
    max_len: int
    attention: str
    attention_params: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 0
    layers: int = 2
    dim: int = 64
    heads: int = 4
    mlp_dim: int = 128
    dropout: float = 0.0
    tie_kv: bool = False  # K = V (Table 8 row 5): one projection serves as both keys and values
    towers: int = 1  # classify: 2 = two documents per example, encoded separately (see Transformer.pool)


class AttentionLayer(nn.Module):
    """Multi-head projections around a plugin: (B, T, dim) -> (B, T, dim)."""

    def __init__(self, cfg: ModelConfig, *, causal: bool, name: str | None = None, params: dict | None = None):
        super().__init__()
        if cfg.dim % cfg.heads:
            raise ValueError(f"model: dim={cfg.dim} is not divisible by heads={cfg.heads}")
        self.heads, self.head_dim, self.tie_kv = cfg.heads, cfg.dim // cfg.heads, cfg.tie_kv
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = self.k if cfg.tie_kv else nn.Linear(cfg.dim, cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.attn: Attention = attentions.build(
            name or cfg.attention,
            heads=cfg.heads,
            head_dim=self.head_dim,
            max_len=cfg.max_len,
            causal=causal,
            **(cfg.attention_params if params is None else params),
        )

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, memory: torch.Tensor | None = None) -> torch.Tensor:
        source = x if memory is None else memory
        q, k = self._split(self.q(x)), self._split(self.k(source))
        v = k if self.tie_kv else self._split(self.v(source))
        y = self.attn(q, k, v, padding_mask=mask)  # (B, H, T, D)
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class Block(nn.Module):
    """Pre-LN block: self-attention, optional cross-attention to an encoder memory, MLP."""

    def __init__(self, cfg: ModelConfig, *, causal: bool, cross: bool = False):
        super().__init__()
        self.ln_attn, self.attn = nn.LayerNorm(cfg.dim), AttentionLayer(cfg, causal=causal)
        self.ln_cross = nn.LayerNorm(cfg.dim) if cross else None
        self.cross = AttentionLayer(cfg, causal=False, name="vanilla", params={}) if cross else None
        self.ln_mlp = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(), nn.Linear(cfg.mlp_dim, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, memory=None, memory_mask=None):
        x = x + self.drop(self.attn(self.ln_attn(x), mask))
        if self.cross is not None:
            x = x + self.drop(self.cross(self.ln_cross(x), memory_mask, memory=memory))
        return x + self.drop(self.mlp(self.ln_mlp(x)))


def padding_or_none(mask: torch.Tensor | None) -> torch.Tensor | None:
    """``mask`` where it hides something, else None. Every plugin takes None as "no padding" and skips its masking:
    a causal block plugin keeps the one (b, b) triangle shared by every block (the fused kernel skips its structural
    zeros), and nothing pays a pass over K, V or the scores for a mask that is all True, as LM batches are.

    Reading the mask's values is a host sync when it lives on a GPU; the trainer decides on the host batch instead
    (``dense_masks``) and hands the answer to ``Transformer.forward``."""
    return None if mask is None or bool(mask.all()) else mask


def dense_masks(batch: dict[str, torch.Tensor]) -> frozenset[str]:
    """Names of the batch's masks (keys ending in ``mask``) that hide nothing. Called on the host batch, before it
    moves to the device, so the decision costs the GPU no synchronization; ``Transformer.forward(batch, dense=...)``
    then never reads a mask's values."""
    return frozenset(key for key, value in batch.items() if key.endswith("mask") and bool(value.all()))


COMPILE_MODES = (True, "reduce-overhead")  # train.compile / bench --compile values that compile: default, CUDA graphs


def compile_in_place(model: nn.Module, mode: str | None = None) -> nn.Module:
    """``torch.compile`` the model in place (``nn.Module.compile``: its state_dict keys stay as they are, so checkpoints
    and DeepSpeed see the plain module), with static shapes: a trial's lengths are fixed, and the block plugins' shapes
    decide their graphs (``allow_recompiles``: each of them is compiled, none silently left eager). ``mode``:
    torch.compile's mode; ``"reduce-overhead"`` replays each compiled graph as a CUDA graph (one launch for all its
    kernels) on a GPU."""
    allow_recompiles()
    model.compile(dynamic=False, **({"mode": mode} if mode else {}))
    return model


def compile_mode(value: bool | str) -> str | None:
    """torch.compile's mode for a ``train.compile`` value (True: the default mode)."""
    return value if isinstance(value, str) else None


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) fixed sine/cosine position table (Vaswani et al. 2017)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class Transformer(nn.Module):
    """The shared model. ``loss(batch)`` trains it; ``predictions`` feed the metrics."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_len, cfg.dim), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        use_encoder, use_decoder = cfg.kind in ("classify", "seq2seq"), cfg.kind in ("lm", "seq2seq")
        cross = cfg.kind == "seq2seq"
        self.encoder = nn.ModuleList([Block(cfg, causal=False) for _ in range(cfg.layers)] if use_encoder else [])
        self.decoder = nn.ModuleList(
            [Block(cfg, causal=True, cross=cross) for _ in range(cfg.layers)] if use_decoder else []
        )
        self.ln_enc = nn.LayerNorm(cfg.dim) if use_encoder else None
        self.ln_dec = nn.LayerNorm(cfg.dim) if use_decoder else None
        if cfg.kind == "classify":
            if cfg.num_classes < 2:
                raise ValueError(f"model: a classify task needs num_classes >= 2, got {cfg.num_classes}")
            if cfg.towers not in (1, 2):
                raise ValueError(f"model: towers must be 1 or 2, got {cfg.towers}")
            # Two towers: LRA's dual-encoder head reads [u, v, u * v, u - v] of the two pooled documents
            # (lra_benchmarks/models/layers/common_layers.py, classifier_head_dual, interaction 'NLI').
            self.classifier = nn.Linear(cfg.dim * (4 if cfg.towers == 2 else 1), cfg.num_classes)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.cfg.max_len:
            raise ValueError(f"model: sequence length {tokens.shape[1]} exceeds max_len={self.cfg.max_len}")
        embedded = self.embed(tokens) * math.sqrt(self.cfg.dim)
        return self.drop(embedded + self.positions[: tokens.shape[1]].to(embedded.dtype))  # bf16 stays bf16

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._encode(tokens, padding_or_none(mask))

    def _encode(self, tokens: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        x = self._embed(tokens)
        for block in self.encoder:
            x = block(x, padding)
        return self.ln_enc(x)

    def pool(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, dim): the encoder's outputs averaged over the real tokens (one document; two towers call it twice)."""
        return self._pool(tokens, mask, padding_or_none(mask))

    def _pool(self, tokens: torch.Tensor, mask: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        hidden = self._encode(tokens, padding)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    def decode(self, tokens, mask, memory=None, memory_mask=None) -> torch.Tensor:
        """Causal stack; returns logits over the vocabulary (output embedding tied to the input embedding)."""
        return self._decode(tokens, padding_or_none(mask), memory, padding_or_none(memory_mask))

    def _decode(self, tokens, padding, memory=None, memory_padding=None) -> torch.Tensor:
        x = self._embed(tokens)
        for block in self.decoder:
            x = block(x, padding, memory, memory_padding)
        return self.ln_dec(x) @ self.embed.weight.T

    def predictions(
        self, batch: dict[str, torch.Tensor], dense: frozenset[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, targets, target_mask) under teacher forcing; for classify one target per sequence. ``dense``: as
        in ``forward``."""
        return self._predict(batch, dense)[:3]

    def _predict(self, batch: dict[str, torch.Tensor], dense: frozenset[str] | None):
        """``predictions`` plus the target mask where it hides something (None where every target counts)."""

        def padding(key: str, mask: torch.Tensor) -> torch.Tensor | None:
            """``mask`` (a part of ``batch[key]``) for the plugins; None where the batch's mask hides nothing."""
            if dense is None:
                return padding_or_none(mask)
            return None if key in dense else mask

        kind = self.cfg.kind
        if kind == "lm":
            tokens, mask = batch["tokens"], batch["mask"]
            logits = self._decode(tokens[:, :-1], padding("mask", mask[:, :-1]))
            return logits, tokens[:, 1:], mask[:, 1:], padding("mask", mask[:, 1:])
        if kind == "classify":
            pooled = self._pool(batch["tokens"], batch["mask"], padding("mask", batch["mask"]))
            if self.cfg.towers == 2:
                pair_mask = batch["pair_mask"]
                other = self._pool(batch["pair_tokens"], pair_mask, padding("pair_mask", pair_mask))
                pooled = torch.cat([pooled, other, pooled * other, pooled - other], dim=-1)
            label = batch["label"]
            return self.classifier(pooled), label, torch.ones_like(label, dtype=torch.bool), None
        src_padding = padding("src_mask", batch["src_mask"])
        memory = self._encode(batch["src"], src_padding)
        tgt, tgt_mask = batch["tgt"], batch["tgt_mask"]
        inputs = torch.cat([torch.full_like(tgt[:, :1], BOS_ID), tgt[:, :-1]], dim=1)
        in_mask = torch.cat([torch.ones_like(tgt_mask[:, :1]), tgt_mask[:, :-1]], dim=1)
        logits = self._decode(inputs, padding("tgt_mask", in_mask), memory, src_padding)
        return logits, tgt, tgt_mask, padding("tgt_mask", tgt_mask)

    def extra_loss(self) -> torch.Tensor | None:
        """Sum of the auxiliary losses the plugins set in the last forward (routing, sbm), or None."""
        losses = [m.extra_loss for m in self.modules() if isinstance(m, Attention) and m.extra_loss is not None]
        return torch.stack([loss.float() for loss in losses]).sum() if losses else None

    def forward(self, batch: dict[str, torch.Tensor], dense: frozenset[str] | None = None) -> torch.Tensor:
        """Mean token cross-entropy plus the plugins' auxiliary losses: what the trainer minimises.

        ``dense`` names the batch's masks already known to hide nothing (``dense_masks`` of the host batch): with it,
        the model never reads a mask's values (no host sync on a GPU, no graph break under torch.compile); a mask not
        named is passed on as it is. None: each mask is checked here (``padding_or_none``)."""
        logits, targets, mask, padding = self._predict(batch, dense)
        if padding is None:  # every target counts: no boolean gather of the logits and its backward
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        else:
            loss = F.cross_entropy(logits[mask].float(), targets[mask])
        extra = self.extra_loss()
        return loss if extra is None else loss + extra

    @torch.no_grad()
    def generate(self, src: torch.Tensor, src_mask: torch.Tensor, length: int) -> torch.Tensor:
        """Greedy decoding of ``length`` tokens for seq2seq (no cache: each step re-runs the causal decoder)."""
        src_padding = padding_or_none(src_mask)
        memory = self._encode(src, src_padding)
        out = torch.full((src.shape[0], 1), BOS_ID, dtype=torch.long, device=src.device)
        for _ in range(length):
            logits = self._decode(out, None, memory, src_padding)[:, -1]  # the decoded prefix has no padding
            logits[:, :2] = torch.finfo(logits.dtype).min  # never emit PAD or BOS
            out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
        return out[:, 1:]
