"""listops: LRA's expression rules, labels checked by an independent parser of LRA-format strings, lengths, limits,
the release files."""

from __future__ import annotations

import numpy as np
import pytest

import tasks
from tasks.listops import CLOSE, DIGIT, OPERATORS, evaluate_tokens, from_text, generate, generate_lra, to_text


def encode(text: str) -> list[int]:
    ops = {f"[{name}": DIGIT + 10 + i for i, name in enumerate(OPERATORS)}
    return [ops[t] if t in ops else CLOSE if t == "]" else DIGIT + int(t) for t in text.split()]


@pytest.mark.parametrize(
    "text, value",
    [
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[MIN 3 [MAX 8 1 ] 5 ]", 3),
        ("[MED 1 7 3 9 ]", 5),  # even count: int(numpy.median) = int(5.0)
        ("[MED 2 5 ]", 3),  # int(3.5)
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
        tokens, value = task.draw(rng)
        assert evaluate_tokens(tokens.tolist()) == value
        deepest, widest = depth_and_args(tokens.tolist())
        assert deepest <= task.max_depth and widest <= task.max_args
        lengths.append(len(tokens))
        values.add(value)
    assert task.min_length < min(lengths) and max(lengths) < task.max_length  # LRA's strict bounds
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


def parse_lra(text: str) -> int:
    """An evaluator of LRA-format strings written for the test: recursive descent over the words, MED by the
    standard library's median truncated to int (numpy's median and int() as LRA's to_value does)."""
    import statistics

    words = text.replace("(", " ").replace(")", " ").split()
    position = 0

    def node() -> int:
        nonlocal position
        word = words[position]
        position += 1
        if word.isdigit():
            return int(word)
        values = []
        while words[position] != "]":
            values.append(node())
        position += 1
        name = word[1:]
        if name == "MED":
            return int(statistics.median(values))
        return {"MAX": max, "MIN": min, "SM": lambda v: sum(v) % 10}[name](values)

    value = node()
    assert position == len(words), "trailing words"
    return value


def test_lra_format_strings_and_an_independent_evaluator():
    # LRA's files write the tree with parentheses; its pipeline drops them and reads ']' (or X)
    lra = "( ( ( ( [MAX 2 ) 9 ) ( ( ( [MED 2 ) 5 ) ] ) ) ] )"
    tokens = from_text(lra).tolist()
    assert to_text(tokens) == "[MAX 2 9 [MED 2 5 ] ]"
    assert evaluate_tokens(tokens) == parse_lra(lra) == 9
    assert parse_lra("[MED 2 5 ]") == evaluate_tokens(from_text("[MED 2 5 ]").tolist()) == 3
    with pytest.raises(ValueError, match="unknown words"):
        from_text("[MAX 2 [AVG 3 ] ]")


def operator_depth(tokens: list[int]) -> int:
    depth = deepest = 0
    for token in tokens:
        depth += DIGIT + 10 <= token < CLOSE
        deepest = max(deepest, depth)
        depth -= token == CLOSE
    return deepest


def test_lra_trees_follow_lra_rule():
    rng = np.random.default_rng(0)
    values, lengths = [], []
    for _ in range(300):
        tokens, value = generate_lra(rng, 20, 120, max_depth=6, max_args=5)
        words = to_text(tokens.tolist())
        assert parse_lra(words) == value  # our label = the independent evaluator's
        assert 20 < len(tokens) < 120 and operator_depth(tokens.tolist()) <= 5  # the root is at depth 1
        _, widest = depth_and_args(tokens.tolist())
        assert widest <= 5
        values.append(value)
        lengths.append(len(tokens))
    assert set(values) == set(range(10)) and len(set(lengths)) > 30


def test_budget_generator_kept_under_its_name():
    task = tasks.build("listops", generator="budget")
    assert (
        task.draw(np.random.default_rng(0))[0].tolist()
        == generate(np.random.default_rng(0), task.min_length, task.max_length, task.max_depth, task.max_args)[
            0
        ].tolist()
    )
    with pytest.raises(ValueError, match="generator"):
        tasks.build("listops", generator="dirichlet")


def test_release_files(tmp_path):
    folder = tmp_path / "lra_release" / "listops-1000"
    folder.mkdir(parents=True)
    rows = {
        "train": [("( ( [MAX 2 ) 9 ) ]", 9), ("( ( ( [SM 7 ) 8 ) 9 ) ]", 4)],
        "val": [("( ( [MED 2 ) 5 ) ]", 3)],
        "test": [("( ( ( [MIN 3 ) ( ( [MAX 8 ) 1 ) ] ) 5 ) ]", 3)],
    }
    for split, examples in rows.items():
        lines = ["Source\tTarget"] + [f"{source}\t{target}" for source, target in examples]
        (folder / f"basic_{split}.tsv").write_text("\n".join(lines) + "\n")
    task = tasks.build("listops", data=str(tmp_path / "lra_release"), min_length=1, max_length=8)
    task.prepare()
    test = next(task.eval_splits(8)["test"])
    assert test["label"].tolist() == [3] and test["tokens"].shape[1] == 8  # truncated to max_length, as LRA does
    train = task.train_batch(4, step=0)
    assert set(train["label"].tolist()) <= {9, 4}
    assert task.provenance()["source"] == "path"
    (folder / "basic_val.tsv").write_text("Src\tTarget\n1\t1\n")
    with pytest.raises(ValueError, match="basic_val.tsv.*Source"):
        tasks.build("listops", data=str(folder)).prepare()
