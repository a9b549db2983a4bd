"""The shared body of the sequence-classification tasks (``classify``, ``nli``): word or char tokens, one label each.

Subclasses only read their data (``read``: split name -> (examples, labels)) and say how an example becomes tokens
(``pieces``: the texts of one example; several texts are joined by SEP, as NLI's premise and hypothesis). Word level
trains a lower-cased word vocabulary with ``tokenizers`` on the training split in ``prepare()``; char level is UTF-8
bytes. Every split except ``train`` is evaluated; every example is truncated to ``max_tokens``.

Validation (``val``): a data set's own validation split where the subclass's ``read`` names one ``val``; otherwise
``carve_val`` takes it from the training split: a fixed permutation (the same for every seed) of the training examples,
the first ``VAL_EXAMPLES[scale]`` (at most a tenth of the split) whose text is not also in a test split; every training
example with the same text as a validation example is then dropped from training, so ``val`` shares no example with
``train`` or the test splits.

``data: "hf:ID"`` is read by ``read_hub``: every split except ``unsupervised``, rows labelled -1 dropped (GLUE's and
MultiNLI's unlabelled test splits then vanish), ``validation*`` renamed ``dev*`` as in the release files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from attentions._registry import require_int
from tasks import _hub
from tasks._text import BYTE_VOCAB, SEP_ID, Labelled, byte_ids, encode, step_rng, train_tokenizer
from tasks.base import Batch, ModelSize, Task, TaskSpec

Examples = dict[str, tuple[list[Any], list[int]]]  # split -> (examples, labels)
VAL_EXAMPLES = {"smoke": 64, "small": 1_000, "paper": 2_000}
HUB_SPLITS = {"validation": "dev", "validation_matched": "dev_matched", "validation_mismatched": "dev_mismatched"}


def read_hub(task: str, hid: str, layouts: Sequence[Sequence[str]]) -> tuple[Examples, dict[str, Any]]:
    """split -> (examples, labels) and provenance of ``hf:hid``; ``layouts`` are the text columns to try, in order
    (one column: the example is its text; several: a tuple). Memory-mapped Arrow, not streaming: these data sets are
    small (IMDb 130 MB, SNLI 100 MB) and every split is read whole."""
    loaded, provenance = _hub.load(task, hid)
    train = _hub.split(task, hid, loaded, "train")
    present = set(train.column_names)
    chosen = next((list(c) for c in layouts if set(c) <= present), list(layouts[0]))
    out: Examples = {}
    for name in sorted(loaded):
        if name == "unsupervised":
            continue
        dataset = loaded[name]
        _hub.columns(task, hid, dataset, [*chosen, "label"])
        labels, texts = list(dataset["label"]), [list(dataset[c]) for c in chosen]
        keep = [i for i, y in enumerate(labels) if y is not None and y >= 0]
        if keep:
            examples = [texts[0][i] if len(chosen) == 1 else tuple(t[i] for t in texts) for i in keep]
            out[HUB_SPLITS.get(name, name)] = (examples, [labels[i] for i in keep])
    return out, provenance


def carve_val(raw: Examples, count: int) -> Examples:
    """Take ``val`` out of ``train`` (see the module doc); returns a new mapping, ``raw`` is left alone."""
    examples, labels = raw["train"]
    tested = {repr(e) for name, (split, _) in raw.items() if name != "train" for e in split}
    order = np.random.default_rng(0).permutation(len(examples))
    count = max(1, min(count, len(examples) // 10))
    chosen = [int(i) for i in order if repr(examples[i]) not in tested][:count]
    taken = {repr(examples[i]) for i in chosen}
    rest = [i for i in range(len(examples)) if repr(examples[i]) not in taken]
    if not chosen or not rest:
        raise ValueError(f"training split of {len(examples)} examples is too small to carve a validation split from")
    out = dict(raw)
    out["train"] = ([examples[i] for i in rest], [labels[i] for i in rest])
    out["val"] = ([examples[i] for i in chosen], [labels[i] for i in chosen])
    return out


class LabelledTask(Task):
    """Base of the classification tasks. ``SETTINGS``: scale -> {"word": (max_tokens, vocab), "char": (max_tokens,
    None), "eval": eval examples per split or None, "model": ModelSize}."""

    SETTINGS: ClassVar[dict[str, dict[str, Any]]] = {}
    num_classes: int = 2  # a class value (nli: 3) or, for classify, a parameter set before this __init__ runs

    def __init__(
        self,
        *,
        scale: str = "smoke",
        seed: int = 0,
        data: str | None = None,
        level: str = "word",
        max_tokens: int | None = None,
        vocab_size: int | None = None,
        eval_examples: int | None = None,
    ):
        super().__init__(scale=scale, seed=seed)
        if level not in ("word", "char"):
            raise ValueError(f"task {self.name!r}: level must be 'word' or 'char', got {level!r}")
        settings = self.SETTINGS[scale]
        default_tokens, default_vocab = settings[level]
        self.data, self.level = data, level
        self.max_tokens = max_tokens if max_tokens is not None else default_tokens
        self.vocab_size = vocab_size if vocab_size is not None else default_vocab
        self.eval_examples = eval_examples if eval_examples is not None else settings["eval"]
        self.model_size: ModelSize = settings["model"]
        for field in ("max_tokens", "vocab_size", "eval_examples"):
            require_int(f"task {self.name!r}", field, getattr(self, field), optional=True)
        require_int(f"task {self.name!r}", "num_classes", self.num_classes, minimum=2)
        if level == "char" and vocab_size is not None:
            raise ValueError(f"task {self.name!r}: vocab_size applies to level='word' only (char level is bytes)")
        self.tokenizer = None
        self._splits: dict[str, Labelled] = {}
        self._provenance: dict[str, Any] = {}

    def read(self) -> Examples:
        """split -> (examples, labels); sets ``self._provenance``. A split named ``val`` is the validation split."""
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        return dict(self._provenance) if self._provenance else super().provenance()

    def pieces(self, example: Any) -> Sequence[str]:
        return (example,)

    @property
    def spec(self) -> TaskSpec:
        vocab = BYTE_VOCAB if self.level == "char" else self.vocab_size
        return TaskSpec(
            kind="classify",
            vocab_size=vocab,
            max_len=self.max_tokens,
            metrics=("accuracy",),
            num_classes=self.num_classes,
            model=self.model_size,
        )

    def _encode(self, examples: list[Any]) -> list[np.ndarray]:
        per_piece = list(zip(*(self.pieces(e) for e in examples), strict=True))  # piece index -> texts
        if self.level == "char":
            encoded = [[byte_ids(t, self.max_tokens) for t in texts] for texts in per_piece]
        else:
            encoded = [encode(self.tokenizer, texts, self.max_tokens) for texts in per_piece]
        out = []
        for parts in zip(*encoded, strict=True):
            if len(parts) == 1:
                out.append(parts[0][: self.max_tokens])
                continue
            # Keep the tail pieces (the hypothesis) whole where possible: the first piece gives way first.
            budget = self.max_tokens - (len(parts) - 1)
            tail = [p[: max(1, budget // len(parts))] for p in parts[1:]]
            head = parts[0][: max(1, budget - sum(len(t) for t in tail))]
            joined = [head]
            for piece in tail:
                joined.extend([np.array([SEP_ID]), piece])
            out.append(np.concatenate(joined)[: self.max_tokens])
        return out

    def prepare(self) -> None:
        raw = self.read()
        for name, (_, labels) in raw.items():
            bad = sorted({y for y in labels if not 0 <= y < self.num_classes})
            if bad:
                raise ValueError(f"task {self.name!r}: split {name!r} has labels {bad} outside [0, {self.num_classes})")
        if "val" not in raw:
            try:
                raw = carve_val(raw, VAL_EXAMPLES[self.scale])
            except ValueError as exc:
                raise ValueError(f"task {self.name!r}: {exc}") from None
        if self.level == "word":
            train_texts = (text for example in raw["train"][0] for text in self.pieces(example))
            self.tokenizer = train_tokenizer(train_texts, self.vocab_size, "word")
        self._splits = {}
        for name, (examples, labels) in raw.items():
            # A fixed shuffle (the same for every seed): files list one class after another, and a capped
            # evaluation (eval_examples) must still see every class.
            order = np.random.default_rng(0).permutation(len(examples))
            self._splits[name] = Labelled(self._encode([examples[i] for i in order]), [labels[i] for i in order])

    def train_batch(self, batch_size: int, step: int) -> Batch:
        if not self._splits:
            raise RuntimeError(f"task {self.name!r}: call prepare() before train_batch()")
        return self._splits["train"].sample(batch_size, step_rng(self.seed, step))

    def eval_splits(self, batch_size: int) -> dict[str, Iterator[Batch]]:
        if not self._splits:
            raise RuntimeError(f"task {self.name!r}: call prepare() before eval_splits()")
        caps = {"val": min(VAL_EXAMPLES[self.scale], self.eval_examples or VAL_EXAMPLES[self.scale])}
        return {
            name: split.batches(batch_size, caps.get(name, self.eval_examples))
            for name, split in self._splits.items()
            if name != "train"
        }
