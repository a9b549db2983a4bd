"""Writers of tiny data sets in each real release format, so every loader is exercised without a download."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest


def cifar_batch(rng: np.random.Generator, count: int) -> dict:
    return {
        b"batch_label": b"batch",
        b"labels": rng.integers(0, 10, count).tolist(),
        b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        b"filenames": [b"x.png"] * count,
    }


@pytest.fixture
def cifar(tmp_path: Path) -> Path:
    """A ``cifar-10-batches-py`` folder: five training batches of 3 images and a test batch of 4."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, count in [(f"data_batch_{i}", 3) for i in range(1, 6)] + [("test_batch", 4)]:
        with (folder / name).open("wb") as handle:
            pickle.dump(cifar_batch(rng, count), handle)
    return folder


IMDB = {
    ("train", "pos"): ["A wonderful, moving film.<br /><br />Loved it.", "Great acting and a great story."],
    ("train", "neg"): ["Dull and far too long.", "The worst script I have seen.<br />Avoid."],
    ("test", "pos"): ["Great fun from start to end.", "Wonderful music, lovely cast.", "A great film."],
    ("test", "neg"): ["Boring.", "Too long and dull.", "Awful acting, worst plot."],
}


@pytest.fixture
def aclimdb(tmp_path: Path) -> Path:
    """An ``aclImdb`` folder: one review per ``<id>_<rating>.txt`` under {train,test}/{pos,neg}, plus unsup noise."""
    root = tmp_path / "aclImdb"
    for (split, polarity), reviews in IMDB.items():
        folder = root / split / polarity
        folder.mkdir(parents=True)
        for i, review in enumerate(reviews):
            (folder / f"{i}_{9 if polarity == 'pos' else 2}.txt").write_text(review)
    (root / "train" / "unsup").mkdir()
    (root / "train" / "unsup" / "0_0.txt").write_text("unlabelled review, never read")
    return root


SST = {"train": [("a great movie", 1), ("dull , dull , dull", 0), ("great fun", 1)], "dev": [("great", 1), ("dull", 0)]}


@pytest.fixture
def sst_tsv(tmp_path: Path) -> Path:
    """GLUE SST-2 layout: train.tsv and dev.tsv with a ``sentence<TAB>label`` header."""
    folder = tmp_path / "SST-2"
    folder.mkdir()
    for split, rows in SST.items():
        (folder / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    (folder / "test.tsv").write_text("index\tsentence\n0\tno label here\n")
    return folder


@pytest.fixture
def sst_jsonl(tmp_path: Path) -> Path:
    """SST as jsonl: ``{"sentence"|"text": ..., "label": int}`` per line."""
    folder = tmp_path / "sst_jsonl"
    folder.mkdir()
    for split, rows in SST.items():
        key = "sentence" if split == "train" else "text"
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({key: s, "label": y}) + "\n" for s, y in rows))
    return folder


def nli_rows(prefix: str) -> list[dict]:
    rows = []
    for i, gold in enumerate(["entailment", "neutral", "contradiction", "-", "entailment", "contradiction"]):
        rows.append(
            {
                "annotator_labels": [gold],
                "gold_label": gold,
                "pairID": f"{prefix}{i}",
                "sentence1": f"A man plays a guitar on stage number {i} .",
                "sentence2": f"{prefix} hypothesis {i} about a man .",
                "sentence1_parse": "(ROOT)",
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def snli(tmp_path: Path) -> Path:
    folder = tmp_path / "snli_1.0"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        write_jsonl(folder / f"snli_1.0_{split}.jsonl", nli_rows(split))
    return folder


@pytest.fixture
def mnli(tmp_path: Path) -> Path:
    folder = tmp_path / "multinli_1.0"
    folder.mkdir()
    for split in ("train", "dev_matched", "dev_mismatched"):
        write_jsonl(folder / f"multinli_1.0_{split}.jsonl", nli_rows(split))
    return folder
