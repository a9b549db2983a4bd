"""Natural language inference (Tay et al. 2020, section 5.4, Table 7): SNLI and MultiNLI, accuracy.

As in the paper's Tensor2Tensor setup, premise and hypothesis are concatenated into one input sequence (premise,
SEP, hypothesis) for an encoder-only classifier; Transformer "tiny", random word embeddings. Labels: entailment 0,
neutral 1, contradiction 2; pairs whose ``gold_label`` is ``-`` (no annotator majority) are dropped, as usual.

Real data (``data``, detected from the file names): a folder (or its parent) holding the jsonl release files
* SNLI: ``snli_1.0_train.jsonl``, ``snli_1.0_dev.jsonl``, ``snli_1.0_test.jsonl`` -> splits train, dev, test;
* MultiNLI: ``multinli_1.0_train.jsonl``, ``multinli_1.0_dev_matched.jsonl``, ``multinli_1.0_dev_mismatched.jsonl``
  -> splits train, dev_matched, dev_mismatched (MultiNLI's test labels are not public).
Each line is an object with ``gold_label``, ``sentence1`` (premise) and ``sentence2`` (hypothesis).
* ``hf:ID``: ``stanfordnlp/snli`` or ``nyu-mll/multi_nli`` (``premise``, ``hypothesis``, ``label`` with the same
  0/1/2; rows labelled -1 dropped; ``validation*`` read as ``dev*``, so MultiNLI reports ``dev_matched``), or a local
  folder in the Hub's Parquet layout.

Validation (``val``): SNLI's own dev split (its test split is the test); MultiNLI's two dev splits stand for its
unpublished test, so there ``val`` is carved from training (``tasks._labelled.carve_val``). Scored on at most 64 /
1,000 / 2,000 examples at smoke / small / paper. The embedded pairs carve ``val`` from training too.

Embedded default (offline), derived from real text, and *not* inference: sentence pairs of the Python
reference-manual topics (``tasks._text``). For a premise sentence the hypothesis is, with equal probability, the
sentence that follows it (label 0), another sentence of the same topic (1), or a sentence of another topic (2):
a three-way sentence-relation task with NLI's input format. Training pairs come from the training topics, test pairs
from the held-out topics only (one in ten).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks._hub import hub_id, path_provenance
from tasks._labelled import Examples, LabelledTask, read_hub
from tasks._text import data_error, default_corpus, held_out, jsonl_records, require_dir
from tasks.base import ModelSize, register_task

LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}
LAYOUTS = {
    "snli": {"train": "snli_1.0_train.jsonl", "dev": "snli_1.0_dev.jsonl", "test": "snli_1.0_test.jsonl"},
    "mnli": {
        "train": "multinli_1.0_train.jsonl",
        "dev_matched": "multinli_1.0_dev_matched.jsonl",
        "dev_mismatched": "multinli_1.0_dev_mismatched.jsonl",
    },
}
TINY = ModelSize(layers=2, dim=128, heads=4, mlp_dim=512, dropout=0.1)  # Tensor2Tensor transformer_tiny
SETTINGS = {
    "smoke": {"word": (48, 2_000), "char": (192, None), "eval": 128, "model": ModelSize(2, 64, 4, 128)},
    "small": {"word": (128, 16_000), "char": (512, None), "eval": 2_000, "model": TINY},
    "paper": {"word": (128, 32_000), "char": (512, None), "eval": None, "model": TINY},
}
DEFAULT_PAIRS = {"train": 6_000, "test": 600}


def read_nli_file(path: Path, task: str = "nli") -> tuple[list[tuple[str, str]], list[int]]:
    """(pairs, labels) of one SNLI/MultiNLI jsonl file, pairs without a gold label dropped."""
    pairs, labels = [], []
    fields = lambda row: (row["gold_label"], row["sentence1"], row["sentence2"])  # noqa: E731
    expected = "a JSON object with gold_label, sentence1, sentence2"
    for where, (gold, premise, hypothesis) in jsonl_records(path, task, fields, expected):
        if gold == "-":
            continue
        if gold not in LABELS:
            raise data_error(task, where, f"gold_label one of {', '.join(LABELS)} or '-', got {gold!r}")
        pairs.append((premise, hypothesis))
        labels.append(LABELS[gold])
    if not pairs:
        raise data_error(task, path, "at least one pair with a gold label")
    return pairs, labels


def nli_files(path: str | Path, task: str = "nli") -> dict[str, Path]:
    """split -> file of an SNLI or MultiNLI folder (or its parent)."""
    folder = require_dir(task, path, "the SNLI or MultiNLI jsonl files")
    for layout in LAYOUTS.values():
        for root in (folder, folder / "snli_1.0", folder / "multinli_1.0"):
            if (root / layout["train"]).is_file():
                missing = [name for name in layout.values() if not (root / name).is_file()]
                if missing:
                    raise data_error(task, root, f"the files {', '.join(missing)} beside {layout['train']}")
                return {split: root / name for split, name in layout.items()}
    expected = " or ".join(f"{', '.join(layout.values())}" for layout in LAYOUTS.values())
    raise data_error(task, folder, expected)


def read_nli(path: str | Path, task: str = "nli") -> Examples:
    """split -> (pairs, labels) of an SNLI or MultiNLI folder."""
    return {split: read_nli_file(file, task) for split, file in nli_files(path, task).items()}


def default_examples() -> Examples:
    """split -> (pairs, labels) of the embedded sentence-relation task (see the module docstring)."""
    groups: dict[str, list[list[str]]] = {"train": [], "test": []}
    for index, (_, _, body) in enumerate(default_corpus()):
        if len(body) >= 4:  # room for a non-adjacent sentence
            groups["test" if held_out(index) else "train"].append(body)
    rng = np.random.default_rng(1234)  # fixed: the data set does not change with the trial's seed
    out: Examples = {}
    for split, topics in groups.items():
        pairs, labels = [], []
        for _ in range(DEFAULT_PAIRS[split]):
            t = int(rng.integers(len(topics)))
            i = int(rng.integers(len(topics[t]) - 1))
            label = int(rng.integers(3))
            if label == 0:
                hypothesis = topics[t][i + 1]
            elif label == 1:
                j = int(rng.choice([j for j in range(len(topics[t])) if abs(j - i) > 1]))
                hypothesis = topics[t][j]
            else:
                other = int(rng.choice([u for u in range(len(topics)) if u != t]))
                hypothesis = topics[other][int(rng.integers(len(topics[other])))]
            pairs.append((topics[t][i], hypothesis))
            labels.append(label)
        out[split] = (pairs, labels)
    return out


@register_task("nli")
class NaturalLanguageInferenceTask(LabelledTask):
    """Parameters: ``data`` (SNLI or MultiNLI folder; None = embedded sentence pairs), ``level`` (``word`` |
    ``char``), ``max_tokens`` (premise + SEP + hypothesis), ``vocab_size`` (word level), ``eval_examples`` (cap per
    split). Unset parameters take the scale's values."""

    SETTINGS = SETTINGS

    num_classes = 3  # entailment, neutral, contradiction

    def read(self) -> Examples:
        hid = hub_id(self.data)
        if hid is not None:
            examples, self._provenance = read_hub(self.name, hid, [("premise", "hypothesis")])
        elif self.data is None:
            examples = default_examples()
            chars = sum(len(p) + len(h) for pairs, _ in examples.values() for p, h in pairs)
            self._provenance = {"source": "embedded", "name": "pydoc_data.topics sentence pairs", "characters": chars}
        else:
            examples = read_nli(self.data, self.name)
            self._provenance = path_provenance(self.data, nli_files(self.data, self.name).values())
        if "dev" in examples and "test" in examples:  # SNLI: its own dev split is the validation split
            examples["val"] = examples.pop("dev")
        return examples

    def pieces(self, example: tuple[str, str]) -> tuple[str, str]:
        return example
