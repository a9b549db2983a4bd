"""classify: the aclImdb and SST (tsv, jsonl) loaders, word/char encoding, the embedded passages, errors."""

from __future__ import annotations

import collections

import pytest
import torch

import tasks
from tasks._text import BYTE_OFFSET
from tasks.classify import default_examples, read_imdb, read_sst


def test_imdb_reader_labels_folders_and_strips_markup(aclimdb):
    splits = read_imdb(aclimdb)
    assert set(splits) == {"train", "test"}
    texts, labels = splits["train"]
    assert labels == [1, 1, 0, 0]  # pos then neg; unsup/ is ignored
    assert texts[0] == "A wonderful, moving film. Loved it."
    assert len(splits["test"][0]) == 6


def test_imdb_task_word_and_char_level(aclimdb):
    word = tasks.build("classify", data=str(aclimdb.parent))  # the parent of aclImdb works too
    word.prepare()
    assert word.tokenizer.token_to_id("great") is not None  # lower-cased words of the training reviews
    batches = list(word.eval_splits(4)["test"])
    assert sorted(torch.cat([b["label"] for b in batches]).tolist()) == [0, 0, 0, 1, 1, 1]
    char = tasks.build("classify", data=str(aclimdb), level="char", max_tokens=10)
    char.prepare()
    batch = char.train_batch(8, step=0)
    assert batch["tokens"].shape[1] <= 10 and char.spec.vocab_size == 256 + BYTE_OFFSET
    row = char._splits["train"].sequences[char._splits["train"].labels.tolist().index(0)]
    assert bytes((row - BYTE_OFFSET).tolist()).decode() in {"Dull and f", "The worst "}


def test_sst_tsv_and_jsonl_read_the_same(sst_tsv, sst_jsonl):
    tsv, jsonl = read_sst(sst_tsv), read_sst(sst_jsonl)
    assert tsv == jsonl and set(tsv) == {"train", "dev"}  # GLUE's unlabelled test.tsv is not read
    assert tsv["train"] == (["a great movie", "dull , dull , dull", "great fun"], [1, 0, 1])
    task = tasks.build("classify", data=str(sst_tsv))
    task.prepare()
    assert list(task.eval_splits(8)) == ["dev", "val"]  # val is carved from train


def test_capped_evaluation_still_sees_both_classes(aclimdb):
    task = tasks.build("classify", data=str(aclimdb), eval_examples=4)
    task.prepare()
    labels = torch.cat([b["label"] for b in task.eval_splits(2)["test"]]).tolist()
    assert len(labels) == 4 and set(labels) == {0, 1}


def test_default_passages_are_labelled_by_statement_topics():
    splits = default_examples()
    for texts, labels in splits.values():
        counts = collections.Counter(labels)
        assert counts[0] > counts[1] > 0
        assert 300 < sum(map(len, texts)) / len(texts) <= 600 and all(texts)
    assert not set(splits["test"][0]) & set(splits["train"][0])
    train = splits["train"][0]
    assert any(t.startswith("Assert statements are a convenient") for t in train)
    assert not any(t.startswith('The "assert" statement') for t in train)  # the topic's heading is left out


def test_paper_scale_is_the_tiny_model_with_the_papers_lengths():
    word, char = (tasks.build("classify", scale="paper", level=lv).spec for lv in ("word", "char"))
    assert (word.max_len, char.max_len) == (512, 2048)
    assert word.model.layers == 2 and word.num_classes == 2 and word.metrics == ("accuracy",)


def test_missing_and_unknown_layouts_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"missing.*aclImdb folder or an SST folder"):
        tasks.build("classify", data=str(tmp_path / "missing")).prepare()
    with pytest.raises(ValueError, match=r"aclImdb/\{train,test\}"):
        tasks.build("classify", data=str(tmp_path)).prepare()


def test_imdb_without_test_reviews_is_named(aclimdb):
    for path in (aclimdb / "test" / "neg").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=r"test/neg"):
        read_imdb(aclimdb)


def test_sst_errors_name_file_and_line(sst_tsv, sst_jsonl):
    (sst_tsv / "dev.tsv").write_text("text\tpolarity\nnice\t1\n")
    with pytest.raises(ValueError, match=r"dev\.tsv.*'sentence' and 'label'"):
        read_sst(sst_tsv)
    (sst_jsonl / "train.jsonl").write_text('{"sentence": "ok", "label": 1}\n{"sentence": "no label"}\n')
    with pytest.raises(ValueError, match=r"train\.jsonl:2"):
        read_sst(sst_jsonl)
    (sst_jsonl / "train.jsonl").write_text('{"sentence": "ok", "label": "positive"}\n')
    with pytest.raises(ValueError, match="integer label"):
        read_sst(sst_jsonl)
    (sst_jsonl / "train.jsonl").unlink()
    with pytest.raises(ValueError, match="aclImdb"):
        tasks.build("classify", data=str(sst_jsonl)).prepare()


def test_labels_outside_the_classes_are_refused(sst_jsonl):
    (sst_jsonl / "train.jsonl").write_text('{"sentence": "five stars", "label": 4}\n{"sentence": "one", "label": 0}\n')
    with pytest.raises(ValueError, match=r"labels \[4\] outside \[0, 2\)"):
        tasks.build("classify", data=str(sst_jsonl)).prepare()
    tasks.build("classify", data=str(sst_jsonl), num_classes=5).prepare()  # fine-grained SST


@pytest.mark.parametrize("bad", [{"level": "byte"}, {"max_tokens": -1}, {"level": "char", "vocab_size": 100}])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad)) if "vocab_size" not in bad else "vocab_size"):
        tasks.build("classify", **bad)


@pytest.mark.parametrize(
    ("line", "task_name", "reader"),
    [
        ('{"sentence": "fine"}', "classify", "classify"),  # no label
        ("not json", "nli", "nli"),
        ('["a", "list"]', "nli", "nli"),
    ],
)
def test_a_broken_jsonl_line_is_named_with_its_file_and_line(tmp_path, line, task_name, reader):
    from tasks.classify import _read_sst_file as read_sst_file
    from tasks.nli import read_nli_file

    path = tmp_path / "dev.jsonl"
    good = (
        '{"sentence": "good", "label": 1}'
        if reader == "classify"
        else ('{"gold_label": "entailment", "sentence1": "a", "sentence2": "b"}')
    )
    path.write_text(f"{good}\n\n{line}\n", encoding="utf-8")  # a blank line 2 is skipped, the error is on line 3
    read = read_sst_file if reader == "classify" else read_nli_file
    message = rf"task '{task_name}': data path '.*dev\.jsonl:3': expected a JSON object with"
    with pytest.raises(ValueError, match=message):
        read(path, task_name)
