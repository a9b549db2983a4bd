"""``data: "hf:ID"``: every data-backed task loads a folder in the Hub's Parquet layout; failures name the id."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tasks
from tasks import _hub
from tasks._text import BYTE_OFFSET
from tasks.base import BOS_ID


def prepared(name: str, folder, **params) -> tasks.Task:
    task = tasks.build(name, data=f"hf:{folder}", **params)
    task.prepare()
    return task


def test_hf_prefix_is_recognised_and_paths_are_not():
    assert _hub.hub_id("hf:stanfordnlp/imdb") == "stanfordnlp/imdb"
    assert _hub.hub_id("data/aclImdb") is None and _hub.hub_id(None) is None
    with pytest.raises(ValueError, match="hf:ID"):
        _hub.hub_id("hf:")


@pytest.mark.parametrize("name", ["lm_char", "lm_subword"])
def test_lm_reads_text_column_streaming_with_val_carved_from_train(lm1b_hub, name):
    task = prepared(name, lm1b_hub, length=16, eval_tokens=10**6)
    import datasets

    reference = datasets.load_dataset(str(lm1b_hub))
    splits = task._read()
    assert (
        splits["val"] + splits["train"] == reference["train"]["text"]
    )  # val: the first training sentences, not trained on
    assert 0 < len(splits["val"]) < len(splits["train"])
    assert splits["test"] == reference["test"]["text"]
    assert set(task.eval_splits(4)) == {"val", "test"}
    provenance = task.provenance()
    assert provenance["source"] == "hf" and provenance["id"] == str(lm1b_hub) and provenance["revision"]
    assert provenance["splits"] == ["test", "train"] and len(provenance["sha256"]) == 64


def test_char_stream_of_hub_text_is_bos_then_bytes(lm1b_hub):
    task = prepared("lm_char", lm1b_hub, length=16)
    stream = task._train.astype(np.int64)
    first = stream[1 : np.flatnonzero(stream == BOS_ID)[1]] - BYTE_OFFSET
    assert stream[0] == BOS_ID and bytes(first.tolist()).decode() == task._read()["train"][0]


def test_image_gen_decodes_cifar10_pngs_in_raster_order(cifar10_hub):
    import datasets

    task = prepared("image_gen", cifar10_hub)
    assert task.spec.max_len == 3072
    reference = datasets.load_dataset(str(cifar10_hub))
    first = np.asarray(reference["train"][0]["img"]).reshape(3072)
    assert np.array_equal(task._train[0], first) and len(task._train) + len(task._val) == 12
    assert np.array_equal(task._val, np.stack([np.asarray(r["img"]).reshape(3072) for r in reference["train"]])[-1:])
    test = torch.cat([b["tokens"][:, 1:] for b in task.eval_splits(3)["test"]]) - BYTE_OFFSET
    assert test.shape == (4, 3072) and task.provenance()["source"] == "hf"


def test_classify_reads_imdb_without_its_unsupervised_split(imdb_hub):
    task = prepared("classify", imdb_hub)
    assert set(task._splits) == {"train", "val", "test"}
    assert len(task._splits["test"]) == 3 and len(task._splits["train"]) + len(task._splits["val"]) == 20
    assert task.provenance()["splits"] == ["test", "train", "unsupervised"]


def test_classify_reads_sst2_validation_as_dev_and_skips_unlabelled_test(sst2_hub):
    task = prepared("classify", sst2_hub, level="char")
    assert set(task._splits) == {"train", "val", "dev"}
    assert sorted(task._splits["dev"].labels.tolist()) == [0, 1]


def test_nli_reads_snli_dropping_label_minus_one_and_uses_its_dev_as_val(snli_hub):
    task = prepared("nli", snli_hub)
    assert set(task._splits) == {"train", "val", "test"}
    assert len(task._splits["train"]) == 18 and len(task._splits["val"]) == 6 and len(task._splits["test"]) == 6
    assert set(task._splits["train"].labels.tolist()) == {0, 1, 2}


def test_nli_reads_multinli_reporting_dev_matched(mnli_hub):
    task = prepared("nli", mnli_hub, level="char")
    assert set(task.eval_splits(4)) == {"val", "dev_matched", "dev_mismatched"}  # test_matched: labels all -1


def test_missing_column_names_the_columns_there_are(imdb_hub):
    with pytest.raises(_hub.HubError, match=r"missing column\(s\) premise, hypothesis \(it has text, label\)"):
        prepared("nli", imdb_hub)


@pytest.mark.parametrize("name", ["lm_char", "image_gen", "classify", "nli"])
def test_unreachable_id_offline_fails_with_one_deterministic_line(name):
    messages = set()
    for seed in (0, 1):
        with pytest.raises(_hub.HubError) as caught:
            tasks.build(name, data="hf:no-such-owner/no-such-set", seed=seed).prepare()
        messages.add(str(caught.value))
    (message,) = messages  # identical for every trial on the id
    assert "'hf:no-such-owner/no-such-set'" in message and "offline" in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message
    assert _hub.failure_key(f"Traceback ...\n{message}") == "hf:no-such-owner/no-such-set: unreachable"
    assert _hub.failure_key("ValueError: something else") is None


def test_missing_local_folder_is_not_found(tmp_path):
    with pytest.raises(_hub.HubError, match=r"nowhere'.*(not found|unreachable)"):
        tasks.build("classify", data=f"hf:{tmp_path / 'nowhere'}").prepare()


@pytest.mark.parametrize(("name", "fixture"), [("image_gen", "cifar"), ("classify", "aclimdb"), ("nli", "snli")])
def test_local_release_provenance_hashes_the_content_read(request, name, fixture):
    import os

    folder = request.getfixturevalue(fixture)
    task = tasks.build(name, data=str(folder))
    task.prepare()
    first = task.provenance()
    assert first["source"] == "path" and first["path"] == str(folder.resolve()) and len(first["sha256"]) == 64
    # Same names, sizes and times, one byte changed: the hash changes (it reads the content, not the metadata).
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "unsup" not in str(p))
    if name == "image_gen":  # a pixel in the middle of a pickled batch
        victim = files[0]
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] = (data[len(data) // 2] + 1) % 256
    else:  # a letter of the prose
        victim = next(p for p in files if b" a " in p.read_bytes())
        data = bytearray(victim.read_bytes().replace(b" a ", b" A ", 1))
    stat = victim.stat()
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    task = tasks.build(name, data=str(folder))
    task.prepare()
    assert task.provenance()["sha256"] != first["sha256"]


def test_embedded_provenance_names_the_corpus_and_its_size():
    task = tasks.build("lm_char")
    task.prepare()
    provenance = task.provenance()
    assert provenance["source"] == "embedded" and provenance["name"] == "pydoc_data.topics"
    assert 300_000 < provenance["characters"] < 600_000
    digits = tasks.build("image_gen")
    digits.prepare()
    assert digits.provenance() == {"source": "embedded", "name": "sklearn.datasets.load_digits", "images": 1797}
    assert tasks.build("sort").provenance()["source"] == "generated"
