"""Pathfinder and Path-X (Long Range Arena, Tay et al. 2021; Linsley et al. 2018): are two circles joined by a path?

An image shows dashed curves ("paths" of short dashes with small gaps) and two circles ("markers"). Label 1 if both
markers sit on the ends of one path, else 0 (each marker on an end of a different path). The model reads the
``size`` x ``size`` grey image as a flat pixel sequence in raster order: ``size`` 32 = Pathfinder (1,024 tokens),
``size`` 128 = Path-X (16,384 tokens). Metric: accuracy over 2 classes.

Real data: LRA's release (``lra_release/pathfinder32/`` and ``pathfinder128/``, made with Linsley's generator,
github.com/drewlinsley/pathfinder). Per difficulty a folder (``curv_baseline`` = easy, ``curv_contour_length_9`` =
intermediate, ``curv_contour_length_14`` = hard, as ``lra_benchmarks/data/pathfinder.py`` names them) holds
``imgs/<k>/sample_<i>.png`` (grey PNGs) and ``metadata/<k>.npy``: despite the suffix, text with one image per line,
``<folder> <file> <index> <label> ...`` separated by spaces, the image at ``<difficulty>/<folder>/<file>``. ``data`` may
name the ``lra_release`` folder, a ``pathfinder<size>`` folder or a difficulty folder. As LRA's input pipeline
(``lra_benchmarks/image/input_pipeline.py``) does, the examples in metadata order (files sorted by number) are split
80% train, 10% val, 10% test; lines naming a missing image are skipped.

Generated data (the default): a generator that follows the rules of LRA's builder (the parameters it documents for
``pathfinder32`` and ``pathfinder128``): every image has two long paths of ``contour_length`` dashes (6, 9 or 14 for
easy, intermediate, hard), plus distractor paths of ``contour_length // 3`` dashes, as many as LRA's
``num_distractor_snakes`` (20 // distractor length at 32, 35 // distractor length at 128); dashes of ``dash`` pixels
separated by gaps of ``gap`` pixels (LRA's paddle margin: 1 at 32, 2-3 at 128, we take 3); dashes of 2 pixels at 32
(LRA's paddle length) and 5 at 128 (our choice: LRA does not list it there); the heading turns by at most ``max_turn``
radians between dashes (1.0 at 32, LRA's continuity value; 0.7 at 128, our choice: LRA's 1.8 is in the units of
Linsley's script, which we did not reproduce), and a dash that would leave the image or touch another path draws its
turn again (up to 16 times) before the path is abandoned; markers are discs of LRA's marker radius (1.5 at 32, 3 at
128). Positive images put both markers on the ends of one long path,
negative images one on an end of each, so both classes show the same kind and number of paths.

What makes an image solvable, exactly: a path's pixels are a chain of 8-neighbours with every ``dash + gap`` pixels
``gap`` left dark, so two lit pixels of one path are never further apart than ``gap + 1`` (Chebyshev distance) from the
next lit pixel; pixels of different paths (markers included) are always at least ``gap + 2`` apart. So linking lit
pixels at distance <= ``gap + 1`` and flood filling from one marker reaches the other marker exactly when the label is
1 (``tests/tasks/test_pathfinder.py`` checks this on the image alone). A distractor that finds no room after a few
tries is left out (measured on 30 seeded images: a hard 32 x 32 image holds 2.4 of LRA's 5 on average, an easy one
8.2 of 10, a hard 128 x 128 one 7 of 8; the two long paths are always drawn).
Drawing is binary (0 background, 255 paths), without LRA's anti-aliasing and contrast jitter.

Training batches are generated from (seed, step), half of each label; the val and test splits from the seed alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attentions._registry import require_int
from tasks._hub import path_provenance
from tasks._text import BYTE_OFFSET, data_error, require_dir, step_rng
from tasks.base import Batch, ModelSize, Task, TaskSpec, register_task

DIFFICULTIES = {"easy": 6, "intermediate": 9, "hard": 14}  # contour length in dashes
RELEASE_FOLDERS = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9", "hard": "curv_contour_length_14"}
INK = 255


@dataclass(frozen=True)
class Style:
    """Drawing rules of one image size (module doc)."""

    dash: int
    gap: int
    marker_radius: float
    distractor_budget: int  # LRA's num_distractor_snakes = distractor_budget // distractor length
    max_turn: float  # radians between consecutive dashes

    @property
    def link(self) -> int:
        """Lit pixels of one path are never further apart than this (Chebyshev) from the next one."""
        return self.gap + 1

    @property
    def clearance(self) -> int:
        """Pixels of different paths are at least this far apart (Chebyshev)."""
        return self.gap + 2


STYLES = {
    32: Style(dash=2, gap=1, marker_radius=1.5, distractor_budget=20, max_turn=1.0),
    128: Style(dash=5, gap=3, marker_radius=3.0, distractor_budget=35, max_turn=0.7),
}
# scale -> (val and test images each, model). Paper: LRA's Transformer for pathfinder32
# (lra_benchmarks/image/configs/pathfinder32/transformer_base.py: 4 layers, 32 wide, 4 heads, MLP 32, dropout 0.2).
SCALES = {
    "smoke": (64, ModelSize(layers=1, dim=32, heads=2, mlp_dim=64)),
    "small": (1_000, ModelSize(layers=2, dim=64, heads=4, mlp_dim=128)),
    "paper": (20_000, ModelSize(layers=4, dim=32, heads=4, mlp_dim=32, dropout=0.2)),
}


class _Canvas:
    """An image being drawn, with the mask of pixels a new path may not touch."""

    def __init__(self, size: int, style: Style):
        self.size, self.style = size, style
        self.image = np.zeros((size, size), dtype=np.uint8)
        self.blocked = np.zeros((size, size), dtype=bool)

    def fits(self, pixels: np.ndarray) -> bool:
        inside = (pixels >= 0).all() and (pixels < self.size).all()
        return bool(inside) and not self.blocked[pixels[:, 0], pixels[:, 1]].any()

    def draw(self, pixels: np.ndarray) -> None:
        self.image[pixels[:, 0], pixels[:, 1]] = INK
        reach = self.style.clearance - 1  # keep every later path at distance >= clearance
        for r, c in pixels:
            self.blocked[max(0, r - reach) : r + reach + 1, max(0, c - reach) : c + reach + 1] = True


def _disc(center: tuple[int, int], radius: float) -> np.ndarray:
    span = int(math.floor(radius))
    offsets = [
        (dr, dc) for dr in range(-span, span + 1) for dc in range(-span, span + 1) if dr * dr + dc * dc <= radius**2
    ]
    return np.asarray([(center[0] + dr, center[1] + dc) for dr, dc in offsets], dtype=np.int64)


def _segment(row: float, col: float, heading: float, steps: int) -> tuple[list[tuple[int, int]], float, float]:
    """The cells of ``steps`` 8-neighbour moves from (row, col) along ``heading``, and the position reached."""
    d_row, d_col = math.sin(heading), math.cos(heading)
    scale = 1.0 / max(abs(d_row), abs(d_col))  # one pixel along the dominant axis: the rounded cell always moves
    cells = []
    for _ in range(steps):
        row, col = row + d_row * scale, col + d_col * scale
        cells.append((int(round(row)), int(round(col))))
    return cells, row, col


def _chain(
    canvas: _Canvas, rng: np.random.Generator, dashes: int, turns: int = 16
) -> tuple[np.ndarray, np.ndarray] | None:
    """(lit pixels, the chain's two end pixels) of one dashed path, or None if it ran into a wall or another path.

    An 8-connected walk; at each dash the heading turns by at most ``max_turn`` (up to ``turns`` draws of the turn
    are tried for a dash that stays on free pixels). Pixels alternate ``dash`` lit and ``gap`` dark."""
    style, size = canvas.style, canvas.size
    margin = int(math.ceil(style.marker_radius))
    row, col = rng.uniform(margin, size - 1 - margin, 2)
    heading = rng.uniform(0, 2 * math.pi)
    start = (int(round(row)), int(round(col)))
    if canvas.blocked[start]:
        return None
    lit, last = [start], start
    for dash in range(dashes):
        # the first dash has `dash - 1` moves after its start cell; every later one a gap then a dash
        moves = style.dash - 1 if dash == 0 else style.gap + style.dash
        for _ in range(turns):
            turned = heading if dash == 0 else heading + rng.uniform(-style.max_turn, style.max_turn)
            cells, new_row, new_col = _segment(row, col, turned, moves)
            kept = cells if dash == 0 else cells[style.gap :]
            low, high = (margin, size - 1 - margin) if dash == dashes - 1 else (0, size - 1)
            if all(low <= r <= high and low <= c <= high for r, c in kept[-1:]) and all(
                0 <= r < size and 0 <= c < size and not canvas.blocked[r, c] for r, c in cells
            ):
                heading, row, col = turned, new_row, new_col
                lit.extend(kept)
                last = cells[-1] if cells else last
                break
        else:
            return None
    return np.asarray(lit, dtype=np.int64), np.asarray([start, last], dtype=np.int64)


def _path(canvas: _Canvas, rng: np.random.Generator, dashes: int, markers: int, tries: int) -> np.ndarray | None:
    """Place one path with ``markers`` (0-2) discs on its ends; return the marker centres, or None if no room."""
    for _ in range(tries):
        chain = _chain(canvas, rng, dashes)
        if chain is None:
            continue
        lit, ends = chain
        parts = [lit] + [_disc(tuple(ends[i]), canvas.style.marker_radius) for i in range(markers)]
        pixels = np.unique(np.concatenate(parts), axis=0)
        if canvas.fits(pixels):
            canvas.draw(pixels)
            return ends[:markers]
    return None


def draw_example(
    rng: np.random.Generator, size: int, label: int, contour_length: int, tries: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """(image (size, size) uint8, marker centres (2, 2)) of one example with the given label."""
    style = STYLES[size]
    distractor_length = max(1, contour_length // 3)
    for _ in range(1_000):
        canvas = _Canvas(size, style)
        if label:
            first = _path(canvas, rng, contour_length, 2, tries)
            second = _path(canvas, rng, contour_length, 0, tries)
            markers = first
        else:
            first = _path(canvas, rng, contour_length, 1, tries)
            second = _path(canvas, rng, contour_length, 1, tries)
            markers = None if first is None or second is None else np.concatenate([first, second])
        if first is None or second is None:
            continue  # the two long paths must both fit: start the image again
        for _ in range(style.distractor_budget // distractor_length):
            _path(canvas, rng, distractor_length, 0, tries=5)
        return canvas.image, markers
    raise RuntimeError(f"pathfinder: no room for two paths of {contour_length} dashes on {size} x {size}")


def generate(
    rng: np.random.Generator, count: int, size: int, contour_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (count, size, size), labels (count,), markers (count, 2, 2)); half of each label (one more 0 if odd),
    in a random order."""
    labels = rng.permutation(np.arange(count) % 2)
    drawn = [draw_example(rng, size, int(label), contour_length) for label in labels]
    return np.stack([d[0] for d in drawn]), labels.astype(np.int64), np.stack([d[1] for d in drawn])


def release_root(path: str | Path, size: int, difficulty: str, task: str = "pathfinder") -> Path:
    """The difficulty folder (holding ``metadata/`` and ``imgs/``) under ``path`` (module doc)."""
    folder = require_dir(task, path, f"LRA's pathfinder{size}/{RELEASE_FOLDERS[difficulty]} folder")
    name = RELEASE_FOLDERS[difficulty]
    for root in (folder, folder / name, folder / f"pathfinder{size}" / name):
        if (root / "metadata").is_dir():
            return root
    raise data_error(task, folder, f"LRA's pathfinder{size}/{name}/metadata/*.npy and imgs/ (or a folder above it)")


def read_release(root: Path, size: int, task: str = "pathfinder") -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """(images (N, size, size) uint8, labels (N,), files read) of a release difficulty folder, in metadata order."""
    from PIL import Image

    metadata = sorted((root / "metadata").glob("*.npy"), key=lambda p: (len(p.stem), p.stem))
    if not metadata:
        raise data_error(task, root / "metadata", "metadata files <k>.npy (text lines: folder file index label)")
    images, labels, files = [], [], list(metadata)
    for meta in metadata:
        for line, text in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
            fields = text.split()
            if not fields:
                continue
            if len(fields) < 4 or fields[3] not in ("0", "1"):
                raise data_error(task, f"{meta}:{line}", "'<folder> <file> <index> <label 0|1> ...'")
            image_path = root / fields[0] / fields[1]
            if not image_path.is_file():
                continue  # LRA's pipeline skips examples whose image is missing too
            try:
                pixels = np.asarray(Image.open(image_path).convert("L"), dtype=np.uint8)
            except OSError:
                raise data_error(task, image_path, "a PNG image") from None
            if pixels.shape != (size, size):
                raise data_error(
                    task, image_path, f"a {size} x {size} image, got {pixels.shape[1]} x {pixels.shape[0]}"
                )
            images.append(pixels)
            labels.append(int(fields[3]))
            files.append(image_path)
    if len(images) < 3:
        raise data_error(task, root, f"at least 3 readable images listed in metadata/*.npy, found {len(images)}")
    return np.stack(images), np.asarray(labels, dtype=np.int64), files


def split_80_10_10(count: int) -> dict[str, slice]:
    """LRA's split of the release in order: the first 80% train, the next 10% val, the last 10% test."""
    train = max(1, min(int(count * 0.8), count - 2))  # every split keeps one example at least
    val = min(max(int(count * 0.9), train + 1), count - 1)
    return {"train": slice(0, train), "val": slice(train, val), "test": slice(val, count)}


@register_task("pathfinder")
class PathfinderTask(Task):
    """Parameters: ``size`` (32 = Pathfinder, 128 = Path-X), ``difficulty`` (easy | intermediate | hard),
    ``data`` (LRA's release folder; None = generated), ``eval_images`` (val and test images each when generated)."""

    def __init__(
        self,
        *,
        scale: str = "smoke",
        seed: int = 0,
        size: int = 32,
        difficulty: str = "hard",
        data: str | None = None,
        eval_images: int | None = None,
    ):
        super().__init__(scale=scale, seed=seed)
        if size not in STYLES:
            raise ValueError(f"task 'pathfinder': size must be 32 (Pathfinder) or 128 (Path-X), got {size!r}")
        if difficulty not in DIFFICULTIES:
            raise ValueError(
                f"task 'pathfinder': difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}"
            )
        default_eval, self.model_size = SCALES[scale]
        self.size, self.difficulty, self.data = size, difficulty, data
        self.eval_images = eval_images if eval_images is not None else default_eval
        require_int("task 'pathfinder'", "eval_images", self.eval_images, minimum=2)
        self._splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._provenance: dict[str, Any] = {}

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(
            kind="classify",
            vocab_size=256 + BYTE_OFFSET,
            max_len=self.size * self.size,
            metrics=("accuracy",),
            num_classes=2,
            model=self.model_size,
        )

    def prepare(self) -> None:
        if self.data is not None:
            root = release_root(self.data, self.size, self.difficulty)
            images, labels, files = read_release(root, self.size)
            self._splits = {name: (images[s], labels[s]) for name, s in split_80_10_10(len(labels)).items()}
            self._provenance = path_provenance(root, files)
            return
        contour = DIFFICULTIES[self.difficulty]
        for stream, name in ((1, "test"), (2, "val")):
            images, labels, _ = generate(step_rng(self.seed, 0, stream=stream), self.eval_images, self.size, contour)
            self._splits[name] = (images, labels)

    def provenance(self) -> dict[str, Any]:
        if self._provenance:
            return dict(self._provenance)
        return {**super().provenance(), "size": self.size, "difficulty": self.difficulty}

    @staticmethod
    def _batch(images: np.ndarray, labels: np.ndarray) -> Batch:
        tokens = torch.from_numpy(images.reshape(len(images), -1).astype(np.int64) + BYTE_OFFSET)
        return {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool), "label": torch.from_numpy(labels)}

    def train_batch(self, batch_size: int, step: int) -> Batch:
        rng = step_rng(self.seed, step)
        if "train" in self._splits:
            images, labels = self._splits["train"]
            rows = rng.integers(0, len(labels), batch_size)
            return self._batch(images[rows], labels[rows])
        images, labels, _ = generate(rng, batch_size, self.size, DIFFICULTIES[self.difficulty])
        return self._batch(images, labels)

    def eval_splits(self, batch_size: int) -> dict[str, Iterator[Batch]]:
        if not self._splits:
            raise RuntimeError("task 'pathfinder': call prepare() before eval_splits()")
        return {name: self._batches(*self._splits[name], batch_size) for name in ("val", "test")}

    def _batches(self, images: np.ndarray, labels: np.ndarray, batch_size: int) -> Iterator[Batch]:
        for i in range(0, len(labels), batch_size):
            yield self._batch(images[i : i + batch_size], labels[i : i + batch_size])
