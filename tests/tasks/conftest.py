"""Writers of tiny data sets in each real release format, so every loader is exercised without a download.

The ``*_hub`` fixtures write folders in the Hugging Face Hub's Parquet layout (``<dir>/<split>-00000-of-00001.parquet``
with the data set's real column names and feature metadata, as ``datasets`` writes them), which ``data: "hf:FOLDER"``
loads through ``datasets.load_dataset`` exactly as it would load the Hub id. The Hub client is kept offline and its
cache in a temporary folder (set before ``datasets`` is imported).
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

_HF_HOME = tempfile.mkdtemp(prefix="attnbench-hf-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=_HF_HOME, HF_DATASETS_CACHE=_HF_HOME + "/ds")


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


def hub_folder(root: Path, subdir: str, splits: dict[str, dict[str, list]], features: dict) -> Path:
    """A data set in the Hub's Parquet layout: one shard per split, feature metadata embedded by ``datasets``, and
    a README whose ``configs`` maps split names to files, as the Hub's cards do."""
    from datasets import Dataset, Features

    (root / subdir).mkdir(parents=True)
    card = ["---", "configs:", f"- config_name: {subdir}", "  default: true", "  data_files:"]
    for split, columns in splits.items():
        Dataset.from_dict(columns, features=Features(features)).to_parquet(
            str(root / subdir / f"{split}-00000-of-00001.parquet")
        )
        card += [f"  - split: {split}", f"    path: {subdir}/{split}-*"]
    (root / "README.md").write_text("\n".join([*card, "---", ""]))
    return root


def _text_label(label_names: list[str]) -> dict:
    from datasets import ClassLabel, Value

    return {"text": Value("string"), "label": ClassLabel(names=label_names)}


HUB_LM1B = {
    "train": [f"Hub train sentence {i} : the cat sat on mat number {i} ." for i in range(120)],
    "test": [f"Hub test line {i} , a dog ran far away ." for i in range(40)],
}


@pytest.fixture
def lm1b_hub(tmp_path: Path) -> Path:
    """An LM1B copy as on the Hub: ``text`` only, train and test."""
    from datasets import Value

    splits = {name: {"text": lines} for name, lines in HUB_LM1B.items()}
    return hub_folder(tmp_path / "lm1b", "data", splits, {"text": Value("string")})


@pytest.fixture
def cifar10_hub(tmp_path: Path) -> Path:
    """uoft-cs/cifar10: ``img`` (PNG-encoded 32x32 RGB), ``label`` (ten names); 12 training and 4 test images."""
    from datasets import ClassLabel, Image
    from PIL import Image as PIL

    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    splits = {}
    for split, count in (("train", 12), ("test", 4)):
        images = [PIL.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]
        splits[split] = {"img": images, "label": rng.integers(0, 10, count).tolist()}
    return hub_folder(tmp_path / "cifar10", "plain_text", splits, {"img": Image(), "label": ClassLabel(names=names)})


@pytest.fixture
def imdb_hub(tmp_path: Path) -> Path:
    """stanfordnlp/imdb: ``text``, ``label`` (neg, pos); train, test and an unlabelled ``unsupervised`` split."""
    train = [f"review {i}: a great film" if i % 2 else f"review {i}: a dull film" for i in range(20)]
    splits = {
        "train": {"text": train, "label": [i % 2 for i in range(20)]},
        "test": {"text": ["a great film indeed", "dull, dull", "great fun"], "label": [1, 0, 1]},
        "unsupervised": {"text": ["never read"], "label": [-1]},
    }
    return hub_folder(tmp_path / "imdb", "plain_text", splits, _text_label(["neg", "pos"]))


@pytest.fixture
def sst2_hub(tmp_path: Path) -> Path:
    """stanfordnlp/sst2: ``idx``, ``sentence``, ``label``; the test split's labels are -1."""
    from datasets import ClassLabel, Value

    def rows(texts, labels):
        return {"idx": list(range(len(texts))), "sentence": texts, "label": labels}

    train = [f"sentence {i} great" if i % 2 else f"sentence {i} dull" for i in range(20)]
    splits = {
        "train": rows(train, [i % 2 for i in range(20)]),
        "validation": rows(["great", "dull"], [1, 0]),
        "test": rows(["no label here"], [-1]),
    }
    features = {"idx": Value("int32"), "sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])}
    return hub_folder(tmp_path / "sst2", "data", splits, features)


def _nli_features(extra: dict | None = None) -> dict:
    from datasets import ClassLabel, Value

    names = ["entailment", "neutral", "contradiction"]
    return {
        "premise": Value("string"),
        "hypothesis": Value("string"),
        **(extra or {}),
        "label": ClassLabel(names=names),
    }


def _nli_rows(prefix: str, count: int, extra: dict | None = None) -> dict:
    labels = [(i % 4) - 1 for i in range(count)]  # -1 (no gold label), 0, 1, 2
    rows = {
        "premise": [f"A man plays a guitar on stage number {i} ." for i in range(count)],
        "hypothesis": [f"{prefix} hypothesis {i} about a man ." for i in range(count)],
        "label": labels,
    }
    return rows | {k: [v] * count for k, v in (extra or {}).items()}


@pytest.fixture
def snli_hub(tmp_path: Path) -> Path:
    """stanfordnlp/snli: ``premise``, ``hypothesis``, ``label`` (-1 where no gold label); train, validation, test."""
    splits = {"train": _nli_rows("train", 24), "validation": _nli_rows("dev", 8), "test": _nli_rows("test", 8)}
    return hub_folder(tmp_path / "snli", "plain_text", splits, _nli_features())


@pytest.fixture
def mnli_hub(tmp_path: Path) -> Path:
    """nyu-mll/multi_nli: ``premise``, ``hypothesis``, ``genre``, ``label``; two dev and two unlabelled test splits."""
    from datasets import Value

    genre = {"genre": "fiction"}
    splits = {
        "train": _nli_rows("train", 24, genre),
        "validation_matched": _nli_rows("matched", 8, genre),
        "validation_mismatched": _nli_rows("mismatched", 8, genre),
        "test_matched": {**_nli_rows("tm", 4, genre), "label": [-1] * 4},
    }
    return hub_folder(tmp_path / "multi_nli", "data", splits, _nli_features({"genre": Value("string")}))
