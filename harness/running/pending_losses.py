"""Training losses kept on the device until the loop needs their values.

Reading a CUDA loss with ``.item()`` after every step blocks the host until the GPU has finished that step, so the host
cannot queue the next step's kernels while the GPU works: a small model then runs at the speed of its launches. The
loop instead parks each step's loss tensor here and reads them all back in one transfer when it needs a value (an
evaluation, a checkpoint, a progress report) or every ``FLUSH_STEPS`` steps. The values and their order are the same as
with one read per step, so the smoothed loss, and every stored number, do not change.
"""

from __future__ import annotations

import math

import torch

FLUSH_STEPS = 32  # a non-finite loss is caught at most this many steps late; the step it names is exact


class NonFiniteLoss(RuntimeError):
    """A training loss was NaN or infinite: the trial fails rather than train on garbage."""


class PendingLosses:
    """Per-step loss tensors in step order, read back in one device-to-host copy."""

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._losses: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: int, loss: torch.Tensor) -> None:
        self._steps.append(step)
        self._losses.append(loss.detach().reshape(()).float())

    def due(self) -> bool:
        return len(self._steps) >= FLUSH_STEPS

    def drain(self) -> list[float]:
        """The parked losses as floats, in step order (one host sync); raises ``NonFiniteLoss`` naming the first bad
        step."""
        if not self._steps:
            return []
        values = torch.stack(self._losses).tolist()
        steps, self._steps, self._losses = self._steps, [], []
        for step, value in zip(steps, values, strict=True):
            if not math.isfinite(value):
                raise NonFiniteLoss(f"non-finite training loss {value} at step {step}")
        return values
