"""Algorithmic sorting (Tay et al. 2020, section 5.1; Tensor2Tensor's algorithmic sort problem).

A seq2seq task: the source is a random integer sequence, the target the same integers in ascending order. Train on
length L, evaluate on L (split ``test``) and on 2L (split ``test_2x``) to probe length generalisation. The validation
split ``val`` holds fresh sequences of length L from a seed stream of its own. Metrics: exact match (fraction of
sequences decoded entirely right) and edit distance normalised by the target length.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from attentions._registry import require_int
from tasks.base import Batch, ModelSize, Task, TaskSpec, register_task

# scale -> (train length, symbols, train examples, test examples, model size)
SCALES = {
    "smoke": (8, 8, 4_000, 64, ModelSize(layers=1, dim=64, heads=4, mlp_dim=128)),
    "small": (64, 32, 20_000, 200, ModelSize(layers=2, dim=128, heads=4, mlp_dim=512)),
    # Transformer base, as the paper ("default Transformer base hyperparameter"), L=256 evaluated at 512.
    "paper": (256, 256, 100_000, 1_000, ModelSize(layers=6, dim=512, heads=8, mlp_dim=2048, dropout=0.1)),
}
OFFSET = 2  # token id of symbol s is s + 2 (0 = PAD, 1 = BOS)


@register_task("sort")
class SortTask(Task):
    """Parameters: ``length`` (train length L; eval at L and ``eval_length``, default 2L), ``symbols`` (alphabet
    size), ``train_size``, ``test_size``. Unset parameters take the scale's values."""

    def __init__(
        self,
        *,
        scale: str = "smoke",
        seed: int = 0,
        length: int | None = None,
        eval_length: int | None = None,
        symbols: int | None = None,
        train_size: int | None = None,
        test_size: int | None = None,
    ):
        super().__init__(scale=scale, seed=seed)
        d_length, d_symbols, d_train, d_test, self.model_size = SCALES[scale]
        # `is None`, not `or`: an explicit 0 is an error, never a silent default
        self.length = d_length if length is None else length
        require_int("task 'sort'", "length", self.length)
        self.eval_length = 2 * self.length if eval_length is None else eval_length
        self.symbols = d_symbols if symbols is None else symbols
        self.train_size = d_train if train_size is None else train_size
        self.test_size = d_test if test_size is None else test_size
        for field in ("eval_length", "symbols", "train_size", "test_size"):
            require_int("task 'sort'", field, getattr(self, field))
        if self.eval_length < self.length:
            raise ValueError(f"task 'sort': eval_length={self.eval_length} is shorter than length={self.length}")
        self._train: torch.Tensor | None = None

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(
            kind="seq2seq",
            vocab_size=self.symbols + OFFSET,
            max_len=self.eval_length,
            metrics=("exact_match", "edit_distance"),
            model=self.model_size,
        )

    def _sequences(self, count: int, length: int, stream: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000 + stream)
        return torch.randint(0, self.symbols, (count, length), generator=generator, dtype=torch.int32)

    def prepare(self) -> None:
        self._train = self._sequences(self.train_size, self.length, stream=0)

    @staticmethod
    def _batch(src: torch.Tensor) -> Batch:
        src = src.long() + OFFSET
        mask = torch.ones_like(src, dtype=torch.bool)
        return {"src": src, "src_mask": mask, "tgt": src.sort(dim=1).values, "tgt_mask": mask.clone()}

    def train_batch(self, batch_size: int, step: int) -> Batch:
        if self._train is None:
            raise RuntimeError("task 'sort': call prepare() before train_batch()")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        rows = torch.randint(0, self.train_size, (batch_size,), generator=generator)
        return self._batch(self._train[rows])

    def eval_splits(self, batch_size: int) -> dict[str, Iterator[Batch]]:
        # val: fresh sequences of length L from their own seed stream (the data set is synthetic: none is carved)
        splits = {
            "val": self._sequences(self.test_size, self.length, stream=3),
            "test": self._sequences(self.test_size, self.length, stream=1),
        }
        if self.eval_length != self.length:
            splits["test_2x" if self.eval_length == 2 * self.length else f"test_{self.eval_length}"] = self._sequences(
                self.test_size, self.eval_length, stream=2
            )
        return {name: self._batches(data, batch_size) for name, data in splits.items()}

    def _batches(self, data: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(data), batch_size):
            yield self._batch(data[start : start + batch_size])
