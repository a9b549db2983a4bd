"""Every data-backed task serves a small ``val`` split beside its test split(s), sharing no example with them or with
training (issue 11): the data set's own validation split where it has one, else carved from training."""

from __future__ import annotations

import numpy as np
import pytest

import tasks
from tasks._labelled import VAL_EXAMPLES
from tasks.lm import VAL_TOKENS


def _rows(array: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in array}


def _data(request, fixture: str | None) -> str | None:
    if fixture is None:
        return None
    return ("hf:" if fixture.endswith("_hub") else "") + str(request.getfixturevalue(fixture))


@pytest.mark.parametrize("name", ["lm_char", "lm_subword"])
@pytest.mark.parametrize("fixture", [None, "lm1b_hub"])
def test_lm_val_sentences_are_neither_trained_on_nor_tested(request, name, fixture):
    data = _data(request, fixture)
    task = tasks.build(name, data=data, length=16)
    task.prepare()
    splits = task._read()
    assert splits["val"] and not set(splits["val"]) & (set(splits["train"]) | set(splits["test"]))
    assert set(task.eval_splits(8)) == {"val", "test"}
    assert len(task._held["val"]) <= VAL_TOKENS["smoke"] + 1


@pytest.mark.parametrize("fixture", [None, "cifar", "cifar10_hub"])
def test_image_val_is_carved_from_the_end_of_training(request, fixture):
    task = tasks.build("image_gen", data=_data(request, fixture))
    task.prepare()
    assert 0 < len(task._val) <= 32 and set(task.eval_splits(4)) == {"val", "test"}
    assert not _rows(task._val) & (_rows(task._train) | _rows(task._test))


def _sequences(task, split: str) -> set[bytes]:
    return {np.asarray(s).tobytes() for s in task._splits[split].sequences}


@pytest.mark.parametrize(
    ("name", "fixture", "tests"),
    [
        ("classify", None, ["test"]),
        ("classify", "aclimdb", ["test"]),
        ("classify", "sst_tsv", ["dev"]),
        ("classify", "imdb_hub", ["test"]),
        ("nli", None, ["test"]),
        ("nli", "snli", ["test"]),  # SNLI's own dev split is val
        ("nli", "mnli", ["dev_matched", "dev_mismatched"]),
        ("nli", "snli_hub", ["test"]),
    ],
)
def test_labelled_val_shares_no_example_with_train_or_test(request, name, fixture, tests):
    task = tasks.build(name, data=_data(request, fixture), level="char", max_tokens=4096)
    task.prepare()
    assert sorted(task.eval_splits(4)) == sorted([*tests, "val"])
    val = _sequences(task, "val")
    assert (
        0 < len(task._splits["val"])
        and sum(len(b["label"]) for b in task.eval_splits(4)["val"]) <= VAL_EXAMPLES["smoke"]
    )
    assert not val & _sequences(task, "train")
    for split in tests:
        assert not val & _sequences(task, split)
