"""Pixel-by-pixel image generation on CIFAR-10 (Tay et al. 2020, section 5.3), bits per dimension.

An image is a flat sequence of its pixel values in raster order with the colour channels interleaved (row by row,
pixel by pixel, R G B), each value one of 256 tokens: 32 x 32 x 3 = 3072 dimensions. A BOS token is prepended so that
the first dimension is predicted too; bpd is the summed negative log-likelihood of every dimension over
(dimensions x ln 2). Real data: ``data`` is the ``cifar-10-batches-py`` folder of the CIFAR-10 python release
(pickled dicts ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` with keys ``b'data'``, an (N, 3072) uint8 array
in channel-major order, and ``b'labels'``).

``data: "hf:ID"``: ``uoft-cs/cifar10`` (``img`` PNG images, ``label``; train, test) or a local folder in the Hub's
Parquet layout; any RGB images of 32 x 32 do.

Validation (``val``): CIFAR-10 has no validation split, so the last ``VAL_IMAGES[scale]`` training images (32 at smoke
and small, 500 at paper) are the validation split and are not trained on; the same for the digits.

Embedded defaults (offline, no ``data``):
* ``smoke``: scikit-learn's bundled 8x8 handwritten digits (``sklearn.datasets.load_digits``, the UCI
  optical-recognition test set, 1797 images, 17 grey levels 0..16). Each level v is rescaled to the 256-way pixel scale
  as round(v * 255 / 16); images 0..1499 train, 1500..1796 test. Sequences are 64 dimensions long.
* ``small`` and ``paper``: 32x32 RGB patches of the two colour photographs scikit-learn ships
  (``sklearn.datasets.load_sample_images``: china.jpg and flower.jpg, 427 x 640, CC BY 2.0), the same 3072-long
  sequences as CIFAR-10. Columns 0..479 of each photo train (every 32x32 crop at a stride of 8: 5,700 overlapping
  crops); columns 480..639 are held out as a grid of 130 disjoint patches, every fourth of them validation, the rest
  test, so no held-out pixel is ever trained on. Richer than the digits (natural colour, texture, CIFAR's length),
  but two scenes only: it measures how a model generalises to unseen parts of seen scenes, not to new images. We found
  no package on PyPI or Debian that ships many natural 32x32 images (scikit-learn's and torchvision's image data sets
  download at run time, which the Hub id does better).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attentions._registry import require_int
from tasks import _hub
from tasks._hub import hub_id, path_provenance
from tasks._text import BYTE_OFFSET, data_error, require_dir, step_rng
from tasks.base import BOS_ID, Batch, ModelSize, Task, TaskSpec, register_task

CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
DIGITS_TRAIN = 1500
VAL_IMAGES = {"smoke": 32, "small": 32, "paper": 500}
# scale -> (model, evaluation images; None = the whole test split). Paper: Tensor2Tensor "base" parameterisation.
SCALES = {
    "smoke": (ModelSize(layers=2, dim=64, heads=4, mlp_dim=128), 64),
    "small": (ModelSize(layers=4, dim=256, heads=4, mlp_dim=1024), 1_000),
    "paper": (ModelSize(layers=6, dim=512, heads=8, mlp_dim=2048, dropout=0.1), None),
}


def _read_cifar_batch(path: Path, task: str) -> np.ndarray:
    return _read_cifar_batch_labelled(path, task)[0]


def _read_cifar_batch_labelled(path: Path, task: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise data_error(task, path.parent, f"the CIFAR-10 python batch file {path.name}")
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = batch[b"labels"]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError):
        raise data_error(task, path, "a pickled CIFAR-10 batch dict with keys b'data' and b'labels'") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise data_error(task, path, f"b'data' of shape (N, 3072) with N labels, got {data.shape}")
    # channel-major (N, 3, 32, 32) -> raster order with interleaved channels (N, 32, 32, 3) -> (N, 3072)
    pixels = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).reshape(len(data), 3072)
    return pixels, np.asarray(labels, dtype=np.int64)


def read_cifar10(path: str | Path, task: str = "image_gen") -> tuple[np.ndarray, np.ndarray]:
    """(train, test) uint8 arrays of shape (N, 3072), raster order with interleaved RGB."""
    (train, _), (test, _) = read_cifar10_labelled(path, task)
    return train, test


def read_cifar10_labelled(
    path: str | Path, task: str = "image_gen"
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train pixels, labels), (test pixels, labels)); pixels as ``read_cifar10`` returns them, labels 0..9."""
    folder = require_dir(task, path, "the CIFAR-10 python batches (data_batch_1..5, test_batch)")
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    batches = [_read_cifar_batch_labelled(folder / name, task) for name in CIFAR_TRAIN]
    train = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    return train, _read_cifar_batch_labelled(folder / CIFAR_TEST, task)


def read_hub_images(task: str, hid: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train, test, provenance) of ``hf:hid`` (memory-mapped Arrow; images decoded once into uint8 arrays)."""
    (train, _), (test, _), provenance = read_hub_labelled_images(task, hid, labels=False)
    return train, test, provenance


def read_hub_labelled_images(task: str, hid: str, labels: bool = True) -> tuple[tuple, tuple, dict]:
    """((train pixels, labels), (test pixels, labels), provenance) of ``hf:hid``; labels from the ``label`` column
    (None when ``labels`` is False)."""
    loaded, provenance = _hub.load(task, hid)
    arrays = []
    for name in ("train", "test"):
        dataset = _hub.split(task, hid, loaded, name)
        _hub.columns(task, hid, dataset, ["img", "label"] if labels else ["img"])
        pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in dataset["img"]])
        if pixels.shape[1:] != (32, 32, 3):
            raise _hub.HubError(f"task {task!r}: data 'hf:{hid}': unreadable; images of 32x32 RGB expected")
        classes = np.asarray(dataset["label"], dtype=np.int64) if labels else None
        arrays.append((pixels.reshape(len(pixels), 3072), classes))  # (N, 32, 32, 3): raster, channels interleaved
    return arrays[0], arrays[1], provenance


PHOTO_TRAIN_COLUMNS, PATCH, CROP_STRIDE = 480, 32, 8


def _raster(patch: np.ndarray) -> np.ndarray:
    return patch.reshape(PATCH * PATCH * 3)  # (32, 32, 3): raster order, channels interleaved


def load_photo_patches() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) uint8 arrays of shape (N, 3072) from scikit-learn's two sample photos (module doc)."""
    from sklearn.datasets import load_sample_images

    train, held = [], []
    for photo in load_sample_images().images:  # (427, 640, 3) uint8 each
        rows, cols = photo.shape[:2]
        for top in range(0, rows - PATCH + 1, CROP_STRIDE):
            for left in range(0, PHOTO_TRAIN_COLUMNS - PATCH + 1, CROP_STRIDE):
                train.append(_raster(photo[top : top + PATCH, left : left + PATCH]))
        for top in range(0, rows - PATCH + 1, PATCH):
            for left in range(PHOTO_TRAIN_COLUMNS, cols - PATCH + 1, PATCH):
                held.append(_raster(photo[top : top + PATCH, left : left + PATCH]))
    held_array = np.stack(held)
    return np.stack(train), held_array[0::4], np.delete(held_array, np.s_[0::4], axis=0)


def load_digits_pixels() -> tuple[np.ndarray, np.ndarray]:
    """(train, test) uint8 arrays of shape (N, 64) from scikit-learn's bundled digits, on the 0..255 scale."""
    from sklearn.datasets import load_digits

    levels = load_digits().data  # (1797, 64) floats 0..16
    pixels = np.rint(levels * 255.0 / 16.0).astype(np.uint8)
    return pixels[:DIGITS_TRAIN], pixels[DIGITS_TRAIN:]


@register_task("image_gen")
class ImageGenerationTask(Task):
    """Parameters: ``data`` (``cifar-10-batches-py`` folder or ``hf:ID``; None = the embedded default of the scale),
    ``eval_images`` (cap on test images scored). Unset parameters take the scale's values."""

    def __init__(self, *, scale: str = "smoke", seed: int = 0, data: str | None = None, eval_images: int | None = None):
        super().__init__(scale=scale, seed=seed)
        self.model_size, default_eval = SCALES[scale]
        self.data = data
        self.eval_images = eval_images if eval_images is not None else default_eval
        require_int("task 'image_gen'", "eval_images", self.eval_images, optional=True)
        self._train: np.ndarray | None = None
        self._val: np.ndarray | None = None
        self._test: np.ndarray | None = None
        self._provenance: dict[str, Any] = {}

    @property
    def dims(self) -> int:
        """Sequence length: 3072 for CIFAR-10 and the photo patches, 64 for the digits (known before ``prepare``)."""
        return 64 if self.data is None and self.scale == "smoke" else 3072

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(
            kind="lm", vocab_size=256 + BYTE_OFFSET, max_len=self.dims, metrics=("bpd",), model=self.model_size
        )

    def prepare(self) -> None:
        hid = hub_id(self.data)
        if hid is not None:
            train, self._test, self._provenance = read_hub_images(self.name, hid)
        elif self.data:
            train, self._test = read_cifar10(self.data, self.name)
            folder = Path(self.data).expanduser()
            folder = folder / "cifar-10-batches-py" if (folder / "cifar-10-batches-py").is_dir() else folder
            self._provenance = path_provenance(folder, [folder / n for n in (*CIFAR_TRAIN, CIFAR_TEST)])
        elif self.scale == "smoke":
            train, self._test = load_digits_pixels()
            self._provenance = {"source": "embedded", "name": "sklearn.datasets.load_digits", "images": 1797}
        else:
            self._train, self._val, self._test = load_photo_patches()
            self._provenance = {"source": "embedded", "name": "sklearn.datasets.load_sample_images", "images": 2}
        if self._val is None:  # carve val from the end of training
            count = min(VAL_IMAGES[self.scale], len(train) // 10) or 1
            if len(train) < 2:
                raise ValueError(f"task 'image_gen': {len(train)} training images, too few to carve a validation split")
            self._train, self._val = train[:-count], train[-count:]
        self._val = self._val[: VAL_IMAGES[self.scale]]
        if self.eval_images is not None:
            self._test = self._test[: self.eval_images]

    def provenance(self) -> dict[str, Any]:
        return dict(self._provenance) if self._provenance else super().provenance()

    @staticmethod
    def _batch(pixels: np.ndarray) -> Batch:
        tokens = torch.from_numpy(pixels.astype(np.int64) + BYTE_OFFSET)
        tokens = torch.cat([torch.full_like(tokens[:, :1], BOS_ID), tokens], dim=1)  # (B, dims + 1)
        return {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}

    def train_batch(self, batch_size: int, step: int) -> Batch:
        if self._train is None:
            raise RuntimeError("task 'image_gen': call prepare() before train_batch()")
        return self._batch(self._train[step_rng(self.seed, step).integers(0, len(self._train), batch_size)])

    def eval_splits(self, batch_size: int) -> dict[str, Iterator[Batch]]:
        if self._test is None:
            raise RuntimeError("task 'image_gen': call prepare() before eval_splits()")
        return {name: self._batches(pixels, batch_size) for name, pixels in (("val", self._val), ("test", self._test))}

    def _batches(self, pixels: np.ndarray, batch_size: int) -> Iterator[Batch]:
        # A function, not a generator expression in the dict comprehension: that one would read the comprehension's
        # last `pixels` (the test split) when iterated, so val would score test images.
        for i in range(0, len(pixels), batch_size):
            yield self._batch(pixels[i : i + batch_size])
