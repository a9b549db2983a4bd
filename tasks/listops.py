"""ListOps (Nangia & Bowman 2018) at Long Range Arena lengths (Tay et al. 2021): beyond the Sinkhorn paper.

A sequence is a nested prefix expression over the digits 0-9 with four list operators: ``MAX``, ``MIN``, ``MED``
(median; for an even count the lower middle value) and ``SM`` (sum modulo 10), e.g.
``[MAX 2 9 [MIN 4 7 ] 0 ]`` = 9. The label (10 classes) is the expression's value, read by an encoder classifier.
Long Range Arena's rules: at most 10 arguments per operator, nesting depth at most 10, sequence length up to 2000
tokens (paper scale draws target lengths uniformly in [500, 2000]). Synthetic: every expression is generated from the
seed, training batches from (seed, step) (an endless stream, where LRA fixes 96K training examples), the test split
and the validation split (``val``, as many examples as test, from a seed stream of its own) from the seed alone.
Tokens: digits 2..11, the four operators 12..15, the closing bracket 16 (0 PAD, 1 BOS unused).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from attentions._registry import require_int
from tasks._text import Labelled, step_rng
from tasks.base import Batch, ModelSize, Task, TaskSpec, register_task

DIGIT, OPERATORS, CLOSE = 2, ("MAX", "MIN", "MED", "SM"), 16
VOCAB = CLOSE + 1
LEAF_PROBABILITY = 0.25  # an argument is a plain digit this often even when the length budget allows a subtree
# scale -> (min length, max length, max depth, max arguments, test examples, model). Paper: LRA's ListOps model.
SCALES = {
    "smoke": (16, 64, 4, 5, 128, ModelSize(layers=2, dim=64, heads=4, mlp_dim=128)),
    "small": (100, 500, 10, 10, 1_000, ModelSize(layers=4, dim=256, heads=4, mlp_dim=1024)),
    "paper": (500, 2000, 10, 10, 2_000, ModelSize(layers=6, dim=512, heads=8, mlp_dim=2048, dropout=0.1)),
}


def evaluate_operator(operator: int, values: list[int]) -> int:
    """The value of one operator (index into ``OPERATORS``) on its argument values."""
    name = OPERATORS[operator]
    if name == "MAX":
        return max(values)
    if name == "MIN":
        return min(values)
    if name == "MED":
        return sorted(values)[(len(values) - 1) // 2]
    return sum(values) % 10


def evaluate_tokens(tokens: list[int]) -> int:
    """Value of a token sequence, parsed independently of the generator (the tests' oracle)."""
    stack: list[list[int]] = [[]]
    for token in tokens:
        if DIGIT <= token < DIGIT + 10:
            stack[-1].append(token - DIGIT)
        elif DIGIT + 10 <= token < CLOSE:
            stack.append([token - DIGIT - 10])
        elif token == CLOSE:
            operator, *values = stack.pop()
            stack[-1].append(evaluate_operator(operator, values))
        else:
            raise ValueError(f"listops: unknown token {token}")
    if len(stack) != 1 or len(stack[0]) != 1:
        raise ValueError("listops: unbalanced expression")
    return stack[0][0]


def _expression(
    rng: np.random.Generator, budget: int, depth: int, max_depth: int, max_args: int, out: list[int]
) -> int:
    """Append an expression of at most ``budget`` tokens to ``out``; return its value."""
    if budget < 4 or depth >= max_depth:  # an operator needs at least [OP a b ] = 4 tokens
        value = int(rng.integers(10))
        out.append(DIGIT + value)
        return value
    operator = int(rng.integers(len(OPERATORS)))
    count = min(int(rng.integers(2, max_args + 1)), budget - 2)
    leaves = rng.random(count) < LEAF_PROBABILITY
    leaves[int(rng.integers(count))] = False  # one subtree at least, so the length budget is spent
    # The budget left after the brackets and the plain digits goes to the subtrees, in random shares.
    spare = budget - 2 - int(leaves.sum())
    shares = np.ones(count, dtype=int)
    shares[~leaves] = np.maximum(1, np.floor(rng.dirichlet(np.ones(int((~leaves).sum()))) * spare))
    out.append(DIGIT + 10 + operator)
    values = [_expression(rng, int(share), depth + 1, max_depth, max_args, out) for share in shares]
    out.append(CLOSE)
    return evaluate_operator(operator, values)


def generate(
    rng: np.random.Generator, min_len: int, max_len: int, max_depth: int, max_args: int, tries: int = 20
) -> tuple[np.ndarray, int]:
    """One expression of length in [min_len, max_len] (best of ``tries`` draws if none lands there) and its value."""
    best: tuple[list[int], int] = ([], 0)
    for _ in range(tries):
        tokens: list[int] = []
        value = _expression(rng, int(rng.integers(min_len, max_len + 1)), 0, max_depth, max_args, tokens)
        if len(tokens) > len(best[0]):
            best = (tokens, value)
        if len(tokens) >= min_len:
            break
    return np.asarray(best[0], dtype=np.int64), best[1]


@register_task("listops")
class ListOpsTask(Task):
    """Parameters: ``min_length``, ``max_length`` (sequence length range), ``max_depth``, ``max_args``,
    ``test_size``. Unset parameters take the scale's values."""

    def __init__(
        self,
        *,
        scale: str = "smoke",
        seed: int = 0,
        min_length: int | None = None,
        max_length: int | None = None,
        max_depth: int | None = None,
        max_args: int | None = None,
        test_size: int | None = None,
    ):
        super().__init__(scale=scale, seed=seed)
        d_min, d_max, d_depth, d_args, d_test, self.model_size = SCALES[scale]
        self.min_length = min_length if min_length is not None else d_min
        self.max_length = max_length if max_length is not None else d_max
        self.max_depth = max_depth if max_depth is not None else d_depth
        self.max_args = max_args if max_args is not None else d_args
        self.test_size = test_size if test_size is not None else d_test
        for field in ("min_length", "max_length", "max_depth", "max_args", "test_size"):
            require_int("task 'listops'", field, getattr(self, field))
        if self.max_args < 2:
            raise ValueError(f"task 'listops': max_args must be >= 2, got {self.max_args}")
        if self.min_length > self.max_length:
            raise ValueError(f"task 'listops': min_length={self.min_length} exceeds max_length={self.max_length}")
        self._test: Labelled | None = None
        self._val: Labelled | None = None

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(
            kind="classify",
            vocab_size=VOCAB,
            max_len=self.max_length,
            metrics=("accuracy",),
            num_classes=10,
            model=self.model_size,
        )

    def _examples(self, count: int, rng: np.random.Generator) -> Labelled:
        drawn = [generate(rng, self.min_length, self.max_length, self.max_depth, self.max_args) for _ in range(count)]
        return Labelled([tokens for tokens, _ in drawn], [value for _, value in drawn])

    def prepare(self) -> None:
        self._test = self._examples(self.test_size, step_rng(self.seed, 0, stream=1))
        self._val = self._examples(self.test_size, step_rng(self.seed, 0, stream=2))

    def train_batch(self, batch_size: int, step: int) -> Batch:
        return self._examples(batch_size, step_rng(self.seed, step)).batch(range(batch_size))

    def eval_splits(self, batch_size: int) -> dict[str, Iterator[Batch]]:
        if self._test is None:
            raise RuntimeError("task 'listops': call prepare() before eval_splits()")
        return {"val": self._val.batches(batch_size), "test": self._test.batches(batch_size)}
