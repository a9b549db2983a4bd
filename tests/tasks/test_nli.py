"""nli: the SNLI and MultiNLI jsonl loaders, '-' labels dropped, premise SEP hypothesis, the embedded pairs."""

from __future__ import annotations

import json

import pytest

import tasks
from tasks._text import SEP_ID
from tasks.nli import default_examples, read_nli


def test_snli_reader_drops_pairs_without_gold_label(snli):
    splits = read_nli(snli)
    assert set(splits) == {"train", "dev", "test"}
    pairs, labels = splits["dev"]
    assert labels == [0, 1, 2, 0, 2]  # entailment, neutral, contradiction, ('-' dropped), entailment, contradiction
    assert pairs[3] == ("A man plays a guitar on stage number 4 .", "dev hypothesis 4 about a man .")


def test_mnli_splits_and_parent_folder(mnli):
    assert set(read_nli(mnli.parent)) == {"train", "dev_matched", "dev_mismatched"}
    task = tasks.build("nli", data=str(mnli))
    task.prepare()
    assert list(task.eval_splits(4)) == ["dev_matched", "dev_mismatched", "val"]  # val from train
    assert task.spec.num_classes == 3 and task.spec.metrics == ("accuracy",)


def test_premise_sep_hypothesis_and_truncation_keeps_the_hypothesis(snli):
    task = tasks.build("nli", data=str(snli), max_tokens=12)
    task.prepare()
    tokenizer = task.tokenizer
    for sequence in task._splits["train"].sequences:
        assert len(sequence) <= 12 and list(sequence).count(SEP_ID) == 1
        sep = list(sequence).index(SEP_ID)
        premise = tokenizer.decode(sequence[:sep].tolist())
        hypothesis = tokenizer.decode(sequence[sep + 1 :].tolist())
        assert premise.startswith("a man plays") and hypothesis.startswith("train hypothesis")
        assert len(sequence) - sep - 1 == 5  # half of the budget: the hypothesis is cut last
    char = tasks.build("nli", data=str(snli), level="char")
    char.prepare()
    assert all(SEP_ID in s.tolist() for s in char._splits["test"].sequences)


def test_default_pairs_relations_hold():
    splits = default_examples()
    pairs, labels = splits["train"]
    assert set(labels) == {0, 1, 2} and len(pairs) == 6_000
    counts = [labels.count(y) for y in range(3)]
    assert min(counts) > 1_800
    assert not {p for p, _ in splits["test"][0]} & {p for p, _ in pairs}


def test_missing_files_and_bad_rows_are_named(tmp_path, snli):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty.*snli_1\.0_train\.jsonl.*multinli_1\.0_train\.jsonl"):
        read_nli(tmp_path / "empty")
    (snli / "snli_1.0_test.jsonl").unlink()
    with pytest.raises(ValueError, match=r"snli_1\.0_test\.jsonl beside"):
        read_nli(snli)
    (snli / "snli_1.0_test.jsonl").write_text(json.dumps({"gold_label": "maybe", "sentence1": "a", "sentence2": "b"}))
    with pytest.raises(ValueError, match=r"test\.jsonl:1.*gold_label one of"):
        read_nli(snli)
    (snli / "snli_1.0_test.jsonl").write_text('{"gold_label": "neutral", "sentence1": "a"}\n')
    with pytest.raises(ValueError, match=r"test\.jsonl:1.*sentence2"):
        read_nli(snli)
    (snli / "snli_1.0_test.jsonl").write_text(json.dumps({"gold_label": "-", "sentence1": "a", "sentence2": "b"}))
    with pytest.raises(ValueError, match="at least one pair"):
        read_nli(snli)


def test_missing_path_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"void.*SNLI or MultiNLI"):
        tasks.build("nli", data=str(tmp_path / "void")).prepare()
