"""pathfinder: the generator's images are solvable from their pixels alone (connectivity decides the label), its
classes are balanced and it is a pure function of the seed; the reader of LRA's release layout."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

import tasks
from tasks.pathfinder import DIFFICULTIES, STYLES, generate, split_80_10_10


def components(image: np.ndarray, link: int) -> np.ndarray:
    """Component id of every lit pixel, pixels within Chebyshev distance ``link`` joined (-1 = dark)."""
    lit = image > 0
    ids = np.full(image.shape, -1)
    count = 0
    for start in zip(*np.nonzero(lit), strict=True):
        if ids[start] >= 0:
            continue
        ids[start] = count
        queue = deque([start])
        while queue:
            r, c = queue.popleft()
            window = lit[max(0, r - link) : r + link + 1, max(0, c - link) : c + link + 1]
            for dr, dc in zip(*np.nonzero(window), strict=True):
                cell = (max(0, r - link) + dr, max(0, c - link) + dc)
                if ids[cell] < 0:
                    ids[cell] = count
                    queue.append(cell)
        count += 1
    return ids


@pytest.mark.parametrize("size, difficulty, count", [(32, "hard", 40), (32, "easy", 20), (128, "hard", 6)])
def test_connectivity_of_the_drawn_paths_decides_the_label(size, difficulty, count):
    contour = DIFFICULTIES[difficulty]
    images, labels, markers = generate(np.random.default_rng(7), count, size, contour)
    style = STYLES[size]
    long_path = contour * style.dash  # lit pixels of a long path; a distractor has a third of its dashes
    for image, label, (a, b) in zip(images, labels, markers, strict=True):
        ids = components(image, style.link)
        assert ids[tuple(a)] >= 0 and ids[tuple(b)] >= 0  # the markers are drawn
        assert (ids[tuple(a)] == ids[tuple(b)]) == bool(label)
        sizes = np.bincount(ids[ids >= 0])
        assert (sizes >= long_path).sum() == 2  # both classes show two long paths
        # the paths of one image stay apart: a wider link radius would not join more than the paths' own gaps
        assert len(sizes) == len(np.bincount(components(image, style.clearance - 1)[ids >= 0]))


def test_classes_balanced_and_seeded():
    images, labels, _ = generate(np.random.default_rng(0), 31, 32, 14)
    assert labels.sum() == 15 and set(np.unique(images)) == {0, 255}
    task, again = tasks.build("pathfinder", seed=3), tasks.build("pathfinder", seed=3)
    task.prepare()
    again.prepare()
    first = task.train_batch(16, step=4)
    assert torch.equal(first["tokens"], again.train_batch(16, step=4)["tokens"])
    assert first["label"].sum() == 8 and first["tokens"].shape == (16, 1024)
    val, test = (next(task.eval_splits(task.eval_images)[s]) for s in ("val", "test"))
    assert len(val["label"]) == len(test["label"]) == task.eval_images and val["label"].sum() == task.eval_images // 2
    assert not torch.equal(val["tokens"], test["tokens"])
    assert tasks.build("pathfinder", size=128).spec.max_len == 128 * 128
    with pytest.raises(ValueError, match="size"):
        tasks.build("pathfinder", size=64)
    with pytest.raises(ValueError, match="difficulty"):
        tasks.build("pathfinder", difficulty="extreme")


def write_release(root, size: int, labels: list[int], folder: str = "curv_contour_length_14"):
    from PIL import Image

    base = root / "lra_release" / f"pathfinder{size}" / folder
    (base / "imgs" / "0").mkdir(parents=True)
    (base / "metadata").mkdir()
    lines = []
    for index, label in enumerate(labels):
        pixels = np.full((size, size), index * 10, dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(base / "imgs" / "0" / f"sample_{index}.png")
        lines.append(f"imgs/0 sample_{index}.png {index} {label} 14 1.5 2 0.5")
    lines.append("imgs/0 sample_missing.png 99 1 14 1.5 2 0.5")  # skipped, as LRA skips it
    (base / "metadata" / "0.npy").write_text("\n".join(lines) + "\n")
    return base


def test_release_layout_is_read_in_order_and_split_80_10_10(tmp_path):
    labels = [0, 1] * 5
    base = write_release(tmp_path, 32, labels)
    task = tasks.build("pathfinder", data=str(tmp_path / "lra_release"))
    task.prepare()
    test = next(task.eval_splits(8)["test"])
    assert test["label"].tolist() == [1] and test["tokens"][0, 0].item() == 90 + 2  # the tenth image, index 9
    assert next(task.eval_splits(8)["val"])["tokens"][0, 0].item() == 80 + 2
    assert set(task.train_batch(32, step=0)["tokens"][:, 0].tolist()) <= {i * 10 + 2 for i in range(8)}
    assert task.provenance()["source"] == "path"
    assert split_80_10_10(3) == {"train": slice(0, 1), "val": slice(1, 2), "test": slice(2, 3)}
    (base / "metadata" / "0.npy").write_text("imgs/0 sample_0.png 0 maybe\n")
    with pytest.raises(ValueError, match="0.npy:1"):
        tasks.build("pathfinder", data=str(base)).prepare()
    with pytest.raises(ValueError, match="curv_baseline"):
        tasks.build("pathfinder", data=str(tmp_path / "lra_release"), difficulty="easy").prepare()


def test_release_image_of_the_wrong_size_is_named(tmp_path):
    write_release(tmp_path, 32, [0, 1, 0], folder="curv_baseline")
    with pytest.raises(ValueError, match="a 128 x 128 image"):
        tasks.build(
            "pathfinder", size=128, difficulty="easy", data=str(tmp_path / "lra_release" / "pathfinder32")
        ).prepare()
