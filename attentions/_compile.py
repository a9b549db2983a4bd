"""What ``torch.compile`` needs from the project, in one place: the model's ``train.compile`` and the flex path."""

from __future__ import annotations

import torch

RECOMPILE_LIMIT = 64


def allow_recompiles(limit: int = RECOMPILE_LIMIT) -> None:
    """Raise dynamo's per-function recompile limit (8 by default) to at least ``limit``. Static shapes compile once per
    shape, and a trial has several (its training batch, each eval split), a benchmark process many (every plugin and
    length): past the limit dynamo would silently run the rest eagerly, unfused."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, limit)
