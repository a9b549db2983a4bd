"""Language modelling on LM1B (Tay et al. 2020, section 5.2): ``lm_char`` (bits per char) and ``lm_subword``
(perplexity per word piece).

Sentences are packed, as in the paper's "packed" Tensor2Tensor setting: each sentence is preceded by BOS (which also
marks the end of the previous one) and all are concatenated into one stream. Training batches are random windows of
``length + 1`` tokens (the model reads ``length`` and predicts the next token at each position). Evaluation slides
non-overlapping windows over the held-out stream, one token of overlap, so every token after the first is scored once.

Real data: ``data`` is the LM1B release folder (``1-billion-word-language-modeling-benchmark-r13output``, or its
parent) holding ``training-monolingual.tokenized.shuffled/news.en-*`` and
``heldout-monolingual.tokenized.shuffled/news.en.heldout-*`` text shards, one sentence per line. The first held-out
shard in sorted order (``...-00000-of-00050``, the usual test shard) is the ``test`` split. Without ``data`` the
embedded corpus of ``tasks._text`` is used. Char level is UTF-8 bytes; word pieces come from a ``tokenizers``
byte-pair-encoding model trained on the training sentences in ``prepare()`` (see ``tasks._text.train_tokenizer``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from attentions._registry import require_int
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


def _read_lines(shards: list[Path], limit: int | None, task: str) -> list[str]:
    lines: list[str] = []
    for shard in shards:
        try:
            with shard.open(encoding="utf-8") as handle:
                for line in handle:
                    line = line.strip()
                    if line:
                        lines.append(line)
                        if limit is not None and len(lines) >= limit:
                            return lines
        except UnicodeDecodeError:
            raise data_error(task, shard, "a UTF-8 text shard, one sentence per line") from None
    if not lines:
        raise data_error(task, shards[0].parent, "non-empty text shards, one sentence per line")
    return lines


def read_lm1b(path: str | Path, max_sentences: int | None, task: str = "lm_char") -> tuple[list[str], list[str]]:
    """(training sentences, test sentences) of an LM1B release folder; reads at most ``max_sentences`` for training."""
    root = _release_root(path, task)
    train = _read_lines(_shards(root / TRAIN_DIR, "news.en-*", task), max_sentences, task)
    test = _read_lines(_shards(root / HELDOUT_DIR, "news.en.heldout-*", task)[:1], None, task)
    return train, test


def default_sentences() -> tuple[list[str], list[str]]:
    """(training sentences, test sentences) of the embedded corpus, split by held-out topic."""
    train, test = [], []
    for index, (_, heading, body) in enumerate(default_corpus()):
        (test if held_out(index) else train).extend([heading, *body])
    return train, test


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
        self._test: np.ndarray | None = None

    def vocab(self) -> int:
        raise NotImplementedError

    def _encode(self, train: list[str], test: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        raise NotImplementedError

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(
            kind="lm", vocab_size=self.vocab(), max_len=self.length, metrics=(self.metric,), model=self.model_size
        )

    def prepare(self) -> None:
        train, test = read_lm1b(self.data, self.max_sentences, self.name) if self.data else default_sentences()
        train_ids, test_ids = self._encode(train, test)
        self._train, self._test = pack(train_ids), pack(test_ids)
        if self.eval_tokens is not None:
            self._test = self._test[: self.eval_tokens + 1]
        for split, stream in (("training", self._train), ("test", self._test)):
            if len(stream) < self.length + 1:
                raise ValueError(
                    f"task {self.name!r}: the {split} text has {len(stream)} tokens, fewer than "
                    f"length + 1 = {self.length + 1}"
                )

    def train_batch(self, batch_size: int, step: int) -> Batch:
        if self._train is None:
            raise RuntimeError(f"task {self.name!r}: call prepare() before train_batch()")
        starts = step_rng(self.seed, step).integers(0, len(self._train) - self.length, batch_size)
        tokens = torch.from_numpy(np.stack([self._train[s : s + self.length + 1] for s in starts]).astype(np.int64))
        return {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}

    def eval_splits(self, batch_size: int) -> dict[str, Iterator[Batch]]:
        if self._test is None:
            raise RuntimeError(f"task {self.name!r}: call prepare() before eval_splits()")
        return {"test": self._windows(self._test, batch_size)}

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

    def vocab(self) -> int:
        return BYTE_VOCAB

    def _encode(self, train, test):
        return [byte_ids(s) for s in train], [byte_ids(s) for s in test]


@register_task("lm_subword")
class SubwordLanguageModelTask(_LanguageModelTask):
    """Word-piece LM1B, perplexity per word piece. Parameters as ``lm_char`` plus ``vocab_size`` (paper: 32K word
    pieces; the vocabulary is trained on the training sentences in ``prepare()``)."""

    metric = "perplexity"
    level_index = 1

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

    def _encode(self, train, test):
        self.tokenizer = train_tokenizer(train, self.vocab_size, "subword")
        return encode(self.tokenizer, train), encode(self.tokenizer, test)
