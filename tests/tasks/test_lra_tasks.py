"""lra_text, lra_image, lra_retrieval: LRA's encodings on small folders in the real layouts, and the two-tower model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tasks
from harness.model import ModelConfig, Transformer
from tasks.lra_image import grayscale
from tasks.lra_retrieval import default_pairs


def test_lra_text_reads_imdb_bytes(aclimdb):
    assert set(tasks.parameters("lra_text")) == {"data", "max_tokens", "eval_examples"}
    task = tasks.build("lra_text", data=str(aclimdb), max_tokens=12)
    task.prepare()
    batch = next(task.eval_splits(16)["test"])
    texts = {bytes((row[mask] - 2).tolist()).decode() for row, mask in zip(batch["tokens"], batch["mask"], strict=True)}
    assert "Great fun fr" in texts and batch["tokens"].shape[1] == 12  # bytes + 2, cut at max_tokens
    assert tasks.build("lra_text", scale="paper").spec.max_len == 4000
    assert {"val", "test"} <= set(task.eval_splits(4))


def test_lra_image_is_grayscale_cifar(cifar, cifar10_hub):
    task = tasks.build("lra_image", data=str(cifar))
    task.prepare()
    import pickle

    with (cifar / "test_batch").open("rb") as handle:
        raw = pickle.load(handle, encoding="bytes")
    red, green, blue = (raw[b"data"][0, c * 1024 : (c + 1) * 1024].astype(float) for c in range(3))
    expected = np.rint(0.2989 * red + 0.5870 * green + 0.1140 * blue).astype(np.int64) + 2
    test = next(task.eval_splits(64)["test"])
    assert test["tokens"].shape == (4, 1024) and test["tokens"][0].tolist() == expected.tolist()
    assert test["label"].tolist() == raw[b"labels"]
    val = next(task.eval_splits(64)["val"])
    assert len(val["label"]) == 1  # the last 10% of the 15 training images
    assert grayscale(np.array([[255, 255, 255]], dtype=np.uint8)).tolist() == [[255]]
    hub = tasks.build("lra_image", data=f"hf:{cifar10_hub}")
    hub.prepare()
    assert next(hub.eval_splits(64)["test"])["tokens"].shape[1] == 1024


def test_lra_image_default_digits_keep_their_labels():
    task = tasks.build("lra_image")
    task.prepare()
    val, test = (next(task.eval_splits(1000)[s]) for s in ("val", "test"))
    assert task.spec.max_len == 64 and test["tokens"].shape[1] == 64
    assert set(test["label"].tolist()) == set(range(10)) and not torch.equal(val["tokens"][:5], test["tokens"][:5])


def test_image_gen_val_is_not_test():
    task = tasks.build("image_gen")
    task.prepare()
    val, test = (next(task.eval_splits(8)[s]) for s in ("val", "test"))
    assert not torch.equal(val["tokens"], test["tokens"])


def write_aan(root) -> None:
    folder = root / "lra_release" / "tsv_data"
    folder.mkdir(parents=True)
    rows = {
        "train": [("1.0", "a", "b", "x" * 30, "cites you"), ("0.0", "c", "d", "about parsing", "about vision")],
        "eval": [("1", "e", "f", "same topic", "same topic too")],
        "test": [("0", "g", "h", "text one", 'has "quotes" inside')],
    }
    for split, lines in rows.items():
        text = "\n".join("\t".join(line) for line in lines) + "\n"
        (folder / f"new_aan_pairs.{split}.tsv").write_text(text)


def test_lra_retrieval_reads_aan_pairs_as_two_towers(tmp_path):
    write_aan(tmp_path)
    task = tasks.build("lra_retrieval", data=str(tmp_path / "lra_release"), max_tokens=20)
    task.prepare()
    assert task.spec.towers == 2
    test = next(task.eval_splits(8)["test"])
    assert set(test) == {"tokens", "mask", "pair_tokens", "pair_mask", "label"}
    second = bytes((test["pair_tokens"][0][test["pair_mask"][0]] - 2).tolist()).decode()
    assert second == 'has "quotes" inside' and test["label"].tolist() == [0]  # no quoting, as LRA reads them
    train = task.train_batch(8, step=0)
    assert train["tokens"].shape[1] == 20 and set(train["label"].tolist()) <= {0, 1}
    assert next(task.eval_splits(8)["val"])["label"].tolist() == [1]
    (tmp_path / "lra_release" / "tsv_data" / "new_aan_pairs.eval.tsv").write_text("yes\ta\tb\tc\td\n")
    with pytest.raises(ValueError, match=r"new_aan_pairs.eval.tsv:1"):
        tasks.build("lra_retrieval", data=str(tmp_path)).prepare()


def test_default_pairs_are_balanced_and_splits_share_no_passage():
    pairs = default_pairs()
    seen = {}
    for split, (examples, labels) in pairs.items():
        assert 2 * sum(labels) == len(labels)
        seen[split] = {text for pair in examples for text in pair}
    assert not (seen["train"] & seen["test"]) and not (seen["train"] & seen["val"]) and not (seen["val"] & seen["test"])


def test_two_towers_encode_each_document_alone():
    torch.manual_seed(0)
    cfg = ModelConfig(kind="classify", vocab_size=40, max_len=16, attention="vanilla", num_classes=2, towers=2)
    model = Transformer(cfg).eval()
    a, b, c = torch.randint(2, 40, (3, 1, 6)).unbind(0)
    one = {"tokens": a, "mask": a > 0, "pair_tokens": b, "pair_mask": b > 0, "label": torch.zeros(1, dtype=torch.long)}
    logits = model.predictions(one)[0]
    # batched beside a pair with longer documents: padding of either tower does not change this pair's logits
    long = torch.randint(2, 40, (1, 11))
    pad = torch.zeros(1, 5, dtype=torch.long)
    batch = {
        "tokens": torch.cat([torch.cat([a, pad], 1), long]),
        "pair_tokens": torch.cat([torch.cat([b, pad], 1), long]),
        "label": torch.zeros(2, dtype=torch.long),
    }
    batch["mask"], batch["pair_mask"] = batch["tokens"] > 0, batch["pair_tokens"] > 0
    assert torch.allclose(model.predictions(batch)[0][:1], logits, atol=1e-5)
    other = model.predictions({**one, "pair_tokens": c, "pair_mask": c > 0})[0]
    assert not torch.allclose(other, logits)  # the second document is read
    with pytest.raises(ValueError, match="towers"):
        Transformer(ModelConfig(kind="classify", vocab_size=8, max_len=8, attention="vanilla", num_classes=2, towers=3))
