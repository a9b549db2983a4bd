"""The task contract and its registry (the same ``Registry`` as attentions).

A task is cheap to construct; ``prepare()`` does the heavy work (generate or load data). It then serves training
batches that are a pure function of (seed, step), and evaluation splits. Metrics are computed by the harness from the
task's ``spec`` (its model head and metric names), so every task of one kind is scored by the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from attentions._registry import Registry

Batch = dict[str, torch.Tensor]
SCALES = ("smoke", "small", "paper")
PAD_ID, BOS_ID = 0, 1  # reserved by every task; real tokens start at 2


@dataclass(frozen=True)
class ModelSize:
    """Transformer size a task asks for at a scale; a grid's ``model:`` section may override any field."""

    layers: int = 2
    dim: int = 64
    heads: int = 4
    mlp_dim: int = 128
    dropout: float = 0.0


@dataclass(frozen=True)
class TaskSpec:
    """What the model and the metrics need to know about a task.

    kind: ``lm`` (next-token prediction over ``tokens``), ``classify`` (one label per sequence) or ``seq2seq``
    (``src`` -> ``tgt``, an encoder-decoder). ``max_len`` covers every sequence the model sees, evaluation included.
    ``metrics`` are the headline metric names (``loss`` is always reported too). ``towers`` = 2 (classify only): each
    example is two documents, ``tokens``/``mask`` and ``pair_tokens``/``pair_mask``, encoded separately by the same
    encoder and classified together (LRA's retrieval task).
    """

    kind: Literal["lm", "classify", "seq2seq"]
    vocab_size: int
    max_len: int
    metrics: tuple[str, ...]
    num_classes: int = 0
    model: ModelSize = field(default_factory=ModelSize)
    towers: int = 1


class Task:
    """Base class of task plugins. Subclasses take keyword parameters ``scale``, ``seed`` and their own."""

    name: ClassVar[str] = ""

    def __init__(self, *, scale: str = "smoke", seed: int = 0):
        if scale not in SCALES:
            raise ValueError(f"task {self.name!r}: scale must be one of {', '.join(SCALES)}, got {scale!r}")
        self.scale, self.seed = scale, seed

    @property
    def spec(self) -> TaskSpec:
        raise NotImplementedError

    def prepare(self) -> None:
        """Generate or load the data (heavy work lives here, not in the constructor)."""

    def train_batch(self, batch_size: int, step: int) -> Batch:
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        """Which data this task used, stored with every trial (column ``data``); valid after ``prepare()``.

        Synthetic tasks say so; tasks with real data name the Hub id and revision, or the local path and a content
        hash, or the embedded corpus by name and size.
        """
        return {"source": "generated", "task": self.name, "seed": self.seed}

    def eval_splits(self, batch_size: int) -> dict[str, Iterator[Batch]]:
        """Split name -> batches; every example of the split appears exactly once."""
        raise NotImplementedError


REGISTRY = Registry("task", Task, "tasks", "attnbench.tasks", ("scale", "seed"))
register_task = REGISTRY.register
names = REGISTRY.names
get = REGISTRY.get
parameters = REGISTRY.parameters
check_params = REGISTRY.check_params


def build(name: str, **kwargs: Any) -> Task:
    """Construct task ``name`` (``scale``, ``seed`` and its own parameters); call ``prepare()`` before use."""
    return REGISTRY.build(name, **kwargs)
