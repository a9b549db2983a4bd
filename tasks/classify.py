"""Document classification (Tay et al. 2020, section 5.4, Table 6): IMDb and SST sentiment, word or char level.

The paper uses Tensor2Tensor's "tiny" Transformer (2 layers, 128 wide, 4 heads, 512 MLP), random embeddings, and
truncates documents to 512 words or 2048 characters. Metric: accuracy.

Real data (``data``, detected from the layout):
* IMDb: the ``aclImdb`` folder (or its parent) with ``train/pos``, ``train/neg``, ``test/pos``, ``test/neg`` holding
  one review per ``*.txt`` file; pos = 1, neg = 0; ``<br />`` tags become spaces. Splits: train, test.
* SST (binary, GLUE SST-2 layout): ``train`` and ``dev`` files, each either ``.tsv`` (a header with ``sentence`` and
  ``label`` columns, tab separated) or ``.jsonl`` (objects with ``sentence`` or ``text`` and an integer ``label``).
  Splits: train, dev (GLUE's test file has no labels and is not read).
* ``hf:ID``: ``stanfordnlp/imdb`` (``text``, ``label``; train, test; ``unsupervised`` skipped) or
  ``stanfordnlp/sst2`` (``sentence``, ``label``; train, validation read as dev: its test labels are -1), or a local
  folder in the Hub's Parquet layout (see ``tasks._labelled.read_hub``).

Validation (``val``): neither IMDb nor SST-2 has one besides the split that stands for test (SST's dev), so ``val`` is
carved from the training split (``tasks._labelled.carve_val``: at most 64 / 1,000 / 2,000 examples at smoke / small /
paper, never a text of train or test).

Embedded default (offline), derived from real text: passages of the Python reference-manual topics (see
``tasks._text``: 57 topics once repeated sentences are removed), each a run of consecutive sentences of one topic up to
600 characters, the topic heading left out. Label 1 if the topic's heading names a statement (``The "assert"
statement``, ``Compound statements``, ...; 13 topics, 22% of the passages), else 0 (expressions, types, data model).
Every tenth passage of each topic is the test split (49 passages; always answering 0 scores 78%). This is topic
classification, not sentiment: it exercises the same pipeline on real English.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from tasks._hub import hub_id, path_provenance
from tasks._labelled import Examples, LabelledTask, read_hub
from tasks._text import data_error, default_corpus, jsonl_records, passages, require_dir
from tasks.base import ModelSize, register_task

TINY = ModelSize(layers=2, dim=128, heads=4, mlp_dim=512, dropout=0.1)  # Tensor2Tensor transformer_tiny
SETTINGS = {
    "smoke": {"word": (64, 2_000), "char": (256, None), "eval": 128, "model": ModelSize(2, 64, 4, 128)},
    "small": {"word": (256, 16_000), "char": (1024, None), "eval": 2_000, "model": TINY},
    "paper": {"word": (512, 32_000), "char": (2048, None), "eval": None, "model": TINY},
}


def read_imdb(folder: Path, task: str = "classify") -> Examples:
    """split -> (reviews, labels) of an ``aclImdb`` folder."""
    out: Examples = {}
    for split in ("train", "test"):
        texts, labels = [], []
        for label, polarity in ((1, "pos"), (0, "neg")):
            directory = folder / split / polarity
            files = sorted(directory.glob("*.txt")) if directory.is_dir() else []
            if not files:
                raise data_error(task, directory, "IMDb reviews as *.txt files (aclImdb/{train,test}/{pos,neg})")
            for path in files:
                try:
                    text = path.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    raise data_error(task, path, "a UTF-8 review text") from None
                texts.append(re.sub(r"\s+", " ", text.replace("<br />", " ")).strip())
                labels.append(label)
        out[split] = (texts, labels)
    return out


def _label(value: object, where: str, task: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise data_error(task, where, f"an integer label, got {value!r}")


def _read_sst_file(path: Path, task: str) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    if path.suffix == ".tsv":
        with path.open(encoding="utf-8", newline="") as handle:
            rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            if not rows.fieldnames or not {"sentence", "label"} <= set(rows.fieldnames):
                raise data_error(task, path, "a tab-separated file whose header has 'sentence' and 'label' columns")
            for line, row in enumerate(rows, start=2):
                texts.append(row["sentence"] or "")
                labels.append(_label(row["label"], f"{path}:{line}", task))
    else:
        expected = "a JSON object with 'sentence' (or 'text') and 'label'"
        fields = lambda row: (row["sentence"] if "sentence" in row else row["text"], row["label"])  # noqa: E731
        for where, (text, label) in jsonl_records(path, task, fields, expected):
            texts.append(text)
            labels.append(_label(label, where, task))
    if not texts:
        raise data_error(task, path, "at least one labelled sentence")
    return texts, labels


def read_sst(folder: Path, task: str = "classify") -> Examples:
    """split -> (sentences, labels) of an SST folder with ``train`` and ``dev`` as .tsv or .jsonl."""
    out: Examples = {}
    for split in ("train", "dev"):
        candidates = [folder / f"{split}.{ext}" for ext in ("tsv", "jsonl") if (folder / f"{split}.{ext}").is_file()]
        if not candidates:
            raise data_error(task, folder, f"SST file {split}.tsv or {split}.jsonl")
        out[split] = _read_sst_file(candidates[0], task)
    return out


def default_examples() -> Examples:
    """split -> (passages, labels) of the embedded corpus (see the module docstring)."""
    out: Examples = {"train": ([], []), "test": ([], [])}
    for _, heading, body in default_corpus():
        label = int("statement" in heading.lower())
        for index, passage in enumerate(passages(body)):
            split = out["test" if index % 10 == 9 else "train"]
            split[0].append(passage)
            split[1].append(label)
    return out


@register_task("classify")
class DocumentClassificationTask(LabelledTask):
    """Parameters: ``data`` (aclImdb or SST folder; None = embedded passages), ``level`` (``word`` | ``char``),
    ``max_tokens`` (paper: 512 words / 2048 chars), ``vocab_size`` (word level), ``eval_examples`` (cap per split),
    ``num_classes`` (2 for IMDb and SST-2). Unset parameters take the scale's values."""

    SETTINGS = SETTINGS

    def __init__(self, *, num_classes: int = 2, **params: Any):
        self.num_classes = num_classes  # checked by LabelledTask with the rest
        super().__init__(**params)

    def read(self) -> Examples:
        hid = hub_id(self.data)
        if hid is not None:
            # IMDb: text, label (its unsupervised split skipped); SST-2: sentence, label (test unlabelled: dev is read)
            examples, self._provenance = read_hub(self.name, hid, [("text",), ("sentence",)])
            return examples
        if self.data is None:
            examples = default_examples()
            chars = sum(len(t) for texts, _ in examples.values() for t in texts)
            self._provenance = {"source": "embedded", "name": "pydoc_data.topics passages", "characters": chars}
            return examples
        folder = require_dir(self.name, self.data, "an aclImdb folder or an SST folder")
        for root in (folder, folder / "aclImdb"):
            if (root / "train" / "pos").is_dir() or (root / "train" / "neg").is_dir():
                examples = read_imdb(root, self.name)
                files = [p for s in ("train", "test") for y in ("pos", "neg") for p in (root / s / y).glob("*.txt")]
                self._provenance = path_provenance(root, files)
                return examples
        if any((folder / f"train.{ext}").is_file() for ext in ("tsv", "jsonl")):
            examples = read_sst(folder, self.name)
            files = [
                next(folder / f"{s}.{e}" for e in ("tsv", "jsonl") if (folder / f"{s}.{e}").is_file())
                for s in ("train", "dev")
            ]
            self._provenance = path_provenance(folder, files)
            return examples
        raise data_error(
            self.name, folder, "IMDb's aclImdb/{train,test}/{pos,neg}/*.txt or SST's train/dev .tsv/.jsonl"
        )
