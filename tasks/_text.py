"""Helpers shared by the data-backed tasks: path checks, the embedded default corpus, tokenizers, batching.

The embedded corpus (used when a task gets no ``data`` path, so tests and ``make demo`` run offline) is the English
text of the Python reference-manual topics that CPython ships for ``help()``: ``pydoc_data.topics`` in the standard
library (79 topics, about 465K characters of prose with code samples). Many topics repeat others (``if`` is inside
``compound``, ``customization`` inside ``specialnames``), so ``default_corpus`` keeps a sentence in one topic only,
the longest holding it, and drops topics left with fewer than 3 sentences. Topics are then taken in sorted order;
every tenth (index 9, 19, ...) is held out for evaluation, so no sentence of an evaluation topic is ever trained on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from tasks.base import PAD_ID, Batch

T = TypeVar("T")

SPECIALS = ("[PAD]", "[BOS]", "[UNK]", "[SEP]")  # ids 0..3, so PAD_ID and BOS_ID keep their reserved values
UNK_ID, SEP_ID = 2, 3
BYTE_OFFSET = 2  # byte b is token b + 2 (0 = PAD, 1 = BOS)
BYTE_VOCAB = 256 + BYTE_OFFSET


def data_error(task: str, path: str | Path, expected: str) -> ValueError:
    """The one error for a missing or malformed data set: it names the task, the path and what was expected."""
    return ValueError(f"task {task!r}: data path {str(path)!r}: expected {expected}")


def require_dir(task: str, path: str | Path, expected: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise data_error(task, path, f"an existing directory holding {expected}")
    return folder


def held_out(index: int) -> bool:
    return index % 10 == 9


def default_documents() -> list[tuple[str, str]]:
    """(topic, text) of the embedded corpus, in sorted topic order."""
    from pydoc_data.topics import topics

    return [(name, topics[name]) for name in sorted(topics)]


def default_corpus() -> list[tuple[str, str, list[str]]]:
    """(topic, heading, body sentences) of the embedded corpus, no sentence in two topics (see the module doc)."""
    documents = default_documents()
    seen: set[str] = set()
    kept: dict[str, tuple[str, list[str]]] = {}
    for name, text in sorted(documents, key=lambda d: (-len(d[1]), d[0])):
        heading, *body = sentences(text)
        body = [s for s in body if s not in seen]
        seen.update(body)
        if len(body) >= 3:
            kept[name] = (heading, body)
    return [(name, *kept[name]) for name, _ in documents if name in kept]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def sentences(text: str) -> list[str]:
    """Sentences of a reST-like document: paragraphs are joined into lines, then split after ``. ! ?``.

    Heading underlines (``*****``, ``=====``) are dropped; code blocks stay, as lines of their paragraph.
    """
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.splitlines()]
        lines = [line for line in lines if line and not re.fullmatch(r"([*=\-~^])\1{2,}", line)]
        if lines:
            out.extend(s for s in _SENTENCE_END.split(" ".join(lines)) if s)
    return out


def byte_ids(text: str, limit: int | None = None) -> np.ndarray:
    """UTF-8 bytes of ``text`` as token ids (byte + 2), truncated to ``limit``."""
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)[:limit]
    return data.astype(np.int64) + BYTE_OFFSET


def train_tokenizer(texts: Iterable[str], vocab_size: int, model: str = "subword"):
    """A ``tokenizers`` tokenizer trained on ``texts``: word pieces (LM) or lower-cased whole words (classify, NLI).

    Word pieces are byte-pair-encoding merges inside whitespace-split words. Not ``WordPieceTrainer``: it assigns ids to
    its ``##`` continuation pieces in hash-map order and breaks count ties by id, so two trainings on the same text
    give different vocabularies (huggingface/tokenizers#1794); batches must be a pure function of the seed.
    The special tokens take ids 0..3 (PAD, BOS, UNK, SEP), so the project-wide PAD_ID/BOS_ID hold.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    if model == "subword":
        tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
    elif model == "word":
        tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.Lowercase()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
    else:
        raise ValueError(f"unknown tokenizer model {model!r} (expected 'subword' or 'word')")
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if [tokenizer.token_to_id(token) for token in SPECIALS] != [0, 1, 2, 3]:
        raise RuntimeError("tokenizer did not give the special tokens ids 0..3")
    return tokenizer


def encode(tokenizer, texts: Sequence[str], limit: int | None = None) -> list[np.ndarray]:
    """Token ids of each text, truncated to ``limit``."""
    return [np.asarray(e.ids[:limit], dtype=np.int64) for e in tokenizer.encode_batch(list(texts))]


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The random stream of one training step: a pure function of (seed, stream, step)."""
    return np.random.default_rng([seed, stream, step])


def pad(sequences: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: (tokens (B, T) long, mask (B, T) bool, True = real)."""
    length = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), length), PAD_ID, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence)] = torch.from_numpy(np.asarray(sequence, dtype=np.int64))
    return tokens, tokens != PAD_ID


class Labelled:
    """A labelled sequence data set (classify, NLI): token arrays and integer labels, batched by padding."""

    def __init__(self, sequences: list[np.ndarray], labels: Sequence[int]):
        if len(sequences) != len(labels) or not sequences:
            raise ValueError(f"a labelled split needs as many labels as sequences (>0), got {len(sequences)}")
        self.sequences, self.labels = sequences, torch.as_tensor(list(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.sequences)

    def batch(self, rows: Sequence[int]) -> Batch:
        tokens, mask = pad([self.sequences[r] for r in rows])
        return {"tokens": tokens, "mask": mask, "label": self.labels[list(rows)]}

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        return self.batch(rng.integers(0, len(self), batch_size).tolist())

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        count = len(self) if limit is None else min(limit, len(self))
        for start in range(0, count, batch_size):
            yield self.batch(range(start, min(start + batch_size, count)))


PASSAGE_CHARS = 600  # the embedded corpus's sentences grouped into passages of about this many characters


def passages(sentences: list[str], limit: int = PASSAGE_CHARS) -> list[str]:
    """Consecutive sentences joined into passages of at most ``limit`` characters (a longer sentence alone): the
    documents of the offline classification and retrieval tasks."""
    out, current = [], ""
    for sentence in sentences:
        if current and len(current) + 1 + len(sentence) > limit:
            out.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
    out.append(current)
    return out


def jsonl_records(path: Path, task: str, fields: Callable[[dict], T], expected: str) -> Iterator[tuple[str, T]]:
    """(``path:line``, ``fields(row)``) for every non-blank line of a JSON-lines file; a line that is not a JSON
    object, or lacks what ``fields`` reads, raises the task's data error naming the file, the line and ``expected``."""
    with path.open(encoding="utf-8") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield f"{path}:{line}", fields(json.loads(raw))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise data_error(task, f"{path}:{line}", expected) from None
