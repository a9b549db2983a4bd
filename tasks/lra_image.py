"""Long Range Arena's image classification (Tay et al. 2021, "Image"): grayscale CIFAR-10 as 1,024 pixel tokens.

Each 32 x 32 colour image becomes one grey level per pixel, ``round(0.2989 R + 0.5870 G + 0.1140 B)`` (the weights of
``tf.image.rgb_to_grayscale``, which LRA's ``lra_benchmarks/image/input_pipeline.py`` applies), read in raster order as
tokens (grey level + 2). Ten classes, accuracy. As in LRA's pipeline, the last 10% of the training images are the
validation split (``val``) and CIFAR-10's test split is the test. LRA's Transformer
(``image/configs/cifar10/transformer_base.py``): 1 layer, 128 wide, 8 heads, MLP 128, dropout 0.3.

Data: ``hf:uoft-cs/cifar10`` (``img``, ``label``), a ``cifar-10-batches-py`` folder (readers of ``tasks.image_gen``), or
the embedded default (offline): scikit-learn's 8 x 8 handwritten digits (1,797 images, 10 classes, 64 tokens; levels
0..16 rescaled to 0..255; images 0..1499 train, the rest test), at every scale.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attentions._registry import require_int
from tasks._hub import hub_id, path_provenance
from tasks._text import BYTE_OFFSET, step_rng
from tasks.base import Batch, ModelSize, Task, TaskSpec, register_task
from tasks.image_gen import CIFAR_TEST, CIFAR_TRAIN, DIGITS_TRAIN, read_cifar10_labelled, read_hub_labelled_images

LUMA = np.array([0.2989, 0.5870, 0.1140])
# scale -> (evaluation images per split; None = all, model)
SCALES = {
    "smoke": (128, ModelSize(layers=1, dim=32, heads=2, mlp_dim=64)),
    "small": (1_000, ModelSize(layers=1, dim=64, heads=4, mlp_dim=128)),
    "paper": (None, ModelSize(layers=1, dim=128, heads=8, mlp_dim=128, dropout=0.3)),
}


def grayscale(rgb: np.ndarray) -> np.ndarray:
    """(N, H*W*3) raster RGB with interleaved channels -> (N, H*W) uint8 grey levels."""
    pixels = rgb.reshape(len(rgb), -1, 3).astype(np.float64)
    return np.clip(np.rint(pixels @ LUMA), 0, 255).astype(np.uint8)


def digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train pixels, labels), (test pixels, labels)) of scikit-learn's digits on the 0..255 scale."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.data * 255.0 / 16.0).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    return (pixels[:DIGITS_TRAIN], labels[:DIGITS_TRAIN]), (pixels[DIGITS_TRAIN:], labels[DIGITS_TRAIN:])


@register_task("lra_image")
class LRAImageTask(Task):
    """Parameters: ``data`` (``hf:ID`` or a ``cifar-10-batches-py`` folder; None = the embedded digits),
    ``eval_images`` (cap on val and test images)."""

    def __init__(self, *, scale: str = "smoke", seed: int = 0, data: str | None = None, eval_images: int | None = None):
        super().__init__(scale=scale, seed=seed)
        default_eval, self.model_size = SCALES[scale]
        self.data = data
        self.eval_images = eval_images if eval_images is not None else default_eval
        require_int("task 'lra_image'", "eval_images", self.eval_images, optional=True)
        self._splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._provenance: dict[str, Any] = {}

    @property
    def spec(self) -> TaskSpec:
        length = 64 if self.data is None else 1024
        return TaskSpec(
            kind="classify",
            vocab_size=256 + BYTE_OFFSET,
            max_len=length,
            metrics=("accuracy",),
            num_classes=10,
            model=self.model_size,
        )

    def prepare(self) -> None:
        hid = hub_id(self.data)
        if hid is not None:
            (train, train_y), (test, test_y), self._provenance = read_hub_labelled_images(self.name, hid)
            train, test = grayscale(train), grayscale(test)
        elif self.data is not None:
            (train, train_y), (test, test_y) = read_cifar10_labelled(self.data, self.name)
            train, test = grayscale(train), grayscale(test)
            folder = Path(self.data).expanduser()
            folder = folder / "cifar-10-batches-py" if (folder / "cifar-10-batches-py").is_dir() else folder
            self._provenance = path_provenance(folder, [folder / n for n in (*CIFAR_TRAIN, CIFAR_TEST)])
        else:
            (train, train_y), (test, test_y) = digits()
            self._provenance = {"source": "embedded", "name": "sklearn.datasets.load_digits", "images": 1797}
        if len(train) < 2:
            raise ValueError(f"task 'lra_image': {len(train)} training images, too few to carve a validation split")
        cut = len(train) - max(1, len(train) // 10)  # LRA: train[:90%] trains, train[90%:] validates
        cap = self.eval_images
        self._splits = {
            "train": (train[:cut], train_y[:cut]),
            "val": (train[cut:][:cap], train_y[cut:][:cap]),
            "test": (test[:cap], test_y[:cap]),
        }
        for name, (_, labels) in self._splits.items():
            if len(labels) and not ((labels >= 0) & (labels < 10)).all():
                raise ValueError(f"task 'lra_image': split {name!r} has labels outside 0..9")

    def provenance(self) -> dict[str, Any]:
        return dict(self._provenance) if self._provenance else super().provenance()

    @staticmethod
    def _batch(pixels: np.ndarray, labels: np.ndarray) -> Batch:
        tokens = torch.from_numpy(pixels.astype(np.int64) + BYTE_OFFSET)
        return {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool), "label": torch.from_numpy(labels)}

    def train_batch(self, batch_size: int, step: int) -> Batch:
        if not self._splits:
            raise RuntimeError("task 'lra_image': call prepare() before train_batch()")
        pixels, labels = self._splits["train"]
        rows = step_rng(self.seed, step).integers(0, len(labels), batch_size)
        return self._batch(pixels[rows], labels[rows])

    def eval_splits(self, batch_size: int) -> dict[str, Iterator[Batch]]:
        if not self._splits:
            raise RuntimeError("task 'lra_image': call prepare() before eval_splits()")
        return {name: self._batches(*self._splits[name], batch_size) for name in ("val", "test")}

    def _batches(self, pixels: np.ndarray, labels: np.ndarray, batch_size: int) -> Iterator[Batch]:
        for i in range(0, len(labels), batch_size):
            yield self._batch(pixels[i : i + batch_size], labels[i : i + batch_size])
