"""ListOps (Nangia & Bowman 2018) as Long Range Arena defines it (Tay et al. 2021): beyond the Sinkhorn paper.

A sequence is a nested prefix expression over the digits 0-9 with four list operators: ``MAX``, ``MIN``, ``MED`` and
``SM`` (sum modulo 10), e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` = 9. The label (10 classes) is the expression's value, read by
an encoder classifier. ``MED`` is ``int(numpy.median(values))``: for an even count the mean of the two middle values,
truncated, so ``[MED 2 5 ]`` = 3.

Trees (``generator: lra``, the default) are drawn by LRA's rule (``lra_benchmarks/data/listops.py`` in
google-research/long-range-arena): the root sits at depth 1; a node above ``max_depth`` becomes an operator with
probability 0.25, else a digit (at ``max_depth`` always a digit); an operator draws 2..``max_args`` arguments, each a
node one level deeper, and one of the four operators uniformly. A tree's length counts its tokens (operators, digits,
closing brackets); it is kept only if ``min_length < length < max_length`` (LRA's strict bounds), else redrawn.
``generator: budget`` keeps the earlier generator of this project (a length budget split among subtrees with Dirichlet
shares), for comparisons with results stored before LRA's rule was followed.

Input format: LRA's release files (``listops-1000/basic_{train,val,test}.tsv``, columns ``Source`` and ``Target``)
write a tree as ``( ( [MAX 2 ) 9 ) ]`` ...; LRA's input pipeline drops the parentheses and splits on whitespace, so the
model reads the tokens ``[MAX``, ``2``, ``9``, ``]``. ``from_text`` does the same; ``data`` names a folder holding
those files (or the ``lra_release`` folder above it), which are then read instead of generated, truncated to
``max_length`` tokens as LRA does. Tokens: digits 2..11, the four operators 12..15, the closing bracket 16 (0 PAD,
1 BOS unused).

Synthetic by default: training batches from (seed, step) (an endless stream, where LRA fixes 96K training examples),
the test split and the validation split (``val``, as many examples as test, from a seed stream of its own) from the
seed alone.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from attentions._registry import require_int
from tasks._hub import path_provenance
from tasks._text import Labelled, data_error, require_dir, step_rng
from tasks.base import Batch, ModelSize, Task, TaskSpec, register_task

DIGIT, OPERATORS, CLOSE = 2, ("MAX", "MIN", "MED", "SM"), 16
VOCAB = CLOSE + 1
SUBTREE_PROBABILITY = 0.25  # LRA's VALUE_P: below max_depth a node is an operator this often
LEAF_PROBABILITY = 0.25  # budget generator: an argument is a plain digit this often even when the budget allows more
GENERATORS = ("lra", "budget")
RELEASE_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
# scale -> (min length, max length, max depth, max arguments, test examples, model). Paper: LRA's ListOps model
# (lra_benchmarks/listops/configs/base_listops_config.py: 4 layers, 512 wide, 8 heads, MLP 1024).
SCALES = {
    "smoke": (16, 64, 4, 5, 128, ModelSize(layers=2, dim=64, heads=4, mlp_dim=128)),
    "small": (100, 500, 10, 10, 1_000, ModelSize(layers=4, dim=256, heads=4, mlp_dim=1024)),
    "paper": (500, 2000, 10, 10, 2_000, ModelSize(layers=4, dim=512, heads=8, mlp_dim=1024, dropout=0.1)),
}


def evaluate_operator(operator: int, values: list[int]) -> int:
    """The value of one operator (index into ``OPERATORS``) on its argument values, as LRA computes it."""
    name = OPERATORS[operator]
    if name == "MAX":
        return max(values)
    if name == "MIN":
        return min(values)
    if name == "MED":
        return int(np.median(values))
    return sum(values) % 10


def evaluate_tokens(tokens: list[int]) -> int:
    """Value of a token sequence (a stack machine over the tokens, independent of the generators)."""
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


_WORDS = {**{f"[{name}": DIGIT + 10 + i for i, name in enumerate(OPERATORS)}, "]": CLOSE, "X": CLOSE}
_WORDS.update({str(d): DIGIT + d for d in range(10)})


def from_text(text: str) -> np.ndarray:
    """Token ids of an LRA-format expression: parentheses dropped, whitespace-split words (``]`` or LRA's ``X``)."""
    words = text.replace("(", " ").replace(")", " ").split()
    unknown = sorted({w for w in words if w not in _WORDS})
    if unknown:
        raise ValueError(f"listops: unknown words {unknown} in {text[:60]!r}")
    return np.asarray([_WORDS[w] for w in words], dtype=np.int64)


def to_text(tokens: list[int]) -> str:
    """The whitespace-separated words of a token sequence (``[MAX 2 9 ]``), LRA's format without its parentheses."""
    names = {v: k for k, v in _WORDS.items() if k != "X"}
    return " ".join(names[t] for t in tokens)


def _lra_tree(rng: np.random.Generator, depth: int, max_depth: int, max_args: int, out: list[int]) -> int:
    """Append one node drawn by LRA's rule (module doc) to ``out``; return its value."""
    if depth >= max_depth or rng.random() > SUBTREE_PROBABILITY:
        value = int(rng.integers(10))
        out.append(DIGIT + value)
        return value
    count = int(rng.integers(2, max_args + 1))
    operator = int(rng.integers(len(OPERATORS)))
    out.append(DIGIT + 10 + operator)
    values = [_lra_tree(rng, depth + 1, max_depth, max_args, out) for _ in range(count)]
    out.append(CLOSE)
    return evaluate_operator(operator, values)


def generate_lra(
    rng: np.random.Generator, min_len: int, max_len: int, max_depth: int, max_args: int, tries: int = 100_000
) -> tuple[np.ndarray, int]:
    """One tree drawn by LRA's rule whose length is strictly between ``min_len`` and ``max_len``, and its value."""
    for _ in range(tries):
        tokens: list[int] = []
        value = _lra_tree(rng, 1, max_depth, max_args, tokens)
        if min_len < len(tokens) < max_len:
            return np.asarray(tokens, dtype=np.int64), value
    raise ValueError(
        f"task 'listops': no tree of length in ({min_len}, {max_len}) in {tries} draws "
        f"(max_depth={max_depth}, max_args={max_args} cannot reach it)"
    )


def _expression(
    rng: np.random.Generator, budget: int, depth: int, max_depth: int, max_args: int, out: list[int]
) -> int:
    """Budget generator: append an expression of at most ``budget`` tokens to ``out``; return its value."""
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
    """Budget generator: one expression of length in [min_len, max_len] (best of ``tries`` draws if none lands
    there) and its value."""
    best: tuple[list[int], int] = ([], 0)
    for _ in range(tries):
        tokens: list[int] = []
        value = _expression(rng, int(rng.integers(min_len, max_len + 1)), 0, max_depth, max_args, tokens)
        if len(tokens) > len(best[0]):
            best = (tokens, value)
        if len(tokens) >= min_len:
            break
    return np.asarray(best[0], dtype=np.int64), best[1]


def release_folder(path: str | Path, task: str = "listops") -> Path:
    """The folder holding LRA's ``basic_{train,val,test}.tsv`` (``path`` itself, or ``listops-1000`` under it)."""
    folder = require_dir(task, path, "LRA's ListOps files basic_train.tsv, basic_val.tsv, basic_test.tsv")
    for root in (folder, folder / "listops-1000", folder / "lra_release" / "listops-1000"):
        if (root / RELEASE_FILES["train"]).is_file():
            return root
    raise data_error(task, folder, "LRA's ListOps files basic_train.tsv, basic_val.tsv, basic_test.tsv")


def read_release(folder: Path, max_length: int, task: str = "listops") -> dict[str, Labelled]:
    """split -> examples of LRA's released tsv files (header ``Source``, ``Target``), truncated to ``max_length``."""
    out = {}
    for split, name in RELEASE_FILES.items():
        path = folder / name
        if not path.is_file():
            raise data_error(task, folder, f"the file {name} beside {RELEASE_FILES['train']}")
        sequences, labels = [], []
        with path.open(encoding="utf-8", newline="") as handle:
            rows = csv.DictReader(handle, delimiter="\t")
            if not rows.fieldnames or not {"Source", "Target"} <= set(rows.fieldnames):
                raise data_error(task, path, "a tab-separated file whose header has 'Source' and 'Target' columns")
            for line, row in enumerate(rows, start=2):
                try:
                    sequences.append(from_text(row["Source"] or "")[:max_length])
                    labels.append(int(row["Target"]))
                except ValueError as exc:
                    raise data_error(
                        task, f"{path}:{line}", f"an LRA ListOps expression and a label 0-9 ({exc})"
                    ) from None
        if not sequences:
            raise data_error(task, path, "at least one expression")
        out[split] = Labelled(sequences, labels)
    return out


@register_task("listops")
class ListOpsTask(Task):
    """Parameters: ``min_length``, ``max_length`` (sequence length range), ``max_depth``, ``max_args``,
    ``test_size``, ``generator`` (``lra`` | ``budget``), ``data`` (LRA's release folder; None = generated).
    Unset parameters take the scale's values."""

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
        generator: str = "lra",
        data: str | None = None,
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
        if generator not in GENERATORS:
            raise ValueError(f"task 'listops': generator must be one of {', '.join(GENERATORS)}, got {generator!r}")
        self.generator, self.data = generator, data
        self._splits: dict[str, Labelled] = {}
        self._provenance: dict[str, Any] = {}

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

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """One generated example (tokens, value) by the task's generator."""
        draw = generate_lra if self.generator == "lra" else generate
        return draw(rng, self.min_length, self.max_length, self.max_depth, self.max_args)

    def _examples(self, count: int, rng: np.random.Generator) -> Labelled:
        drawn = [self.draw(rng) for _ in range(count)]
        return Labelled([tokens for tokens, _ in drawn], [value for _, value in drawn])

    def prepare(self) -> None:
        if self.data is not None:
            folder = release_folder(self.data)
            self._splits = read_release(folder, self.max_length)
            self._provenance = path_provenance(folder, [folder / n for n in RELEASE_FILES.values()])
            return
        self._splits = {
            "test": self._examples(self.test_size, step_rng(self.seed, 0, stream=1)),
            "val": self._examples(self.test_size, step_rng(self.seed, 0, stream=2)),
        }

    def provenance(self) -> dict[str, Any]:
        if self._provenance:
            return dict(self._provenance)
        return {**super().provenance(), "generator": self.generator}

    def train_batch(self, batch_size: int, step: int) -> Batch:
        if "train" in self._splits:
            return self._splits["train"].sample(batch_size, step_rng(self.seed, step))
        return self._examples(batch_size, step_rng(self.seed, step)).batch(range(batch_size))

    def eval_splits(self, batch_size: int) -> dict[str, Iterator[Batch]]:
        if not self._splits:
            raise RuntimeError("task 'listops': call prepare() before eval_splits()")
        return {name: self._splits[name].batches(batch_size) for name in ("val", "test")}
