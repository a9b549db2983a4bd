"""listops: the expression rules (Long Range Arena), values checked by an independent parser, lengths, limits."""

from __future__ import annotations

import numpy as np
import pytest

import tasks
from tasks.listops import CLOSE, DIGIT, OPERATORS, evaluate_tokens, generate


def encode(text: str) -> list[int]:
    ops = {f"[{name}": DIGIT + 10 + i for i, name in enumerate(OPERATORS)}
    return [ops[t] if t in ops else CLOSE if t == "]" else DIGIT + int(t) for t in text.split()]


@pytest.mark.parametrize(
    "text, value",
    [
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[MIN 3 [MAX 8 1 ] 5 ]", 3),
        ("[MED 1 7 3 9 ]", 3),  # even count: the lower middle value
        ("[MED 5 1 9 ]", 5),
        ("[SM 7 8 9 ]", 4),  # 24 mod 10
        ("[SM [MAX 9 9 ] [MED 2 8 6 ] ]", 5),
        ("7", 7),
    ],
)
def test_known_expressions(text, value):
    assert evaluate_tokens(encode(text)) == value


def depth_and_args(tokens: list[int]) -> tuple[int, int]:
    depth = deepest = widest = 0
    counts = []
    for token in tokens:
        if DIGIT + 10 <= token < CLOSE:
            if counts:
                counts[-1] += 1
            counts.append(0)
            depth += 1
            deepest = max(deepest, depth)
        elif token == CLOSE:
            widest = max(widest, counts.pop())
            depth -= 1
        elif counts:
            counts[-1] += 1
    return deepest, widest


@pytest.mark.parametrize("scale", ["smoke", "small"])
def test_generated_values_lengths_and_limits(scale):
    task = tasks.build("listops", scale=scale)
    rng = np.random.default_rng(3)
    lengths, values = [], set()
    for _ in range(100):
        tokens, value = generate(rng, task.min_length, task.max_length, task.max_depth, task.max_args)
        assert evaluate_tokens(tokens.tolist()) == value
        deepest, widest = depth_and_args(tokens.tolist())
        assert deepest <= task.max_depth and widest <= task.max_args
        lengths.append(len(tokens))
        values.add(value)
    assert max(lengths) <= task.max_length and np.mean(np.array(lengths) >= task.min_length) > 0.95
    assert values == set(range(10))


def test_batches_and_spec():
    task = tasks.build("listops")
    task.prepare()
    batch = task.train_batch(16, step=2)
    labels = [evaluate_tokens(row[mask].tolist()) for row, mask in zip(batch["tokens"], batch["mask"], strict=True)]
    assert labels == batch["label"].tolist()
    assert sum(len(b["label"]) for b in task.eval_splits(50)["test"]) == task.test_size
    paper = tasks.build("listops", scale="paper").spec
    assert paper.max_len == 2000 and paper.num_classes == 10 and paper.kind == "classify"


@pytest.mark.parametrize("bad", [{"max_args": 1}, {"min_length": 10, "max_length": 5}, {"test_size": 0}])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError, match="listops"):
        tasks.build("listops", **bad)
