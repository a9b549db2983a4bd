"""image_gen: the CIFAR-10 python-batch loader, pixel order, the embedded digits, errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import tasks
from tasks._text import BYTE_OFFSET
from tasks.base import BOS_ID
from tasks.image_gen import load_digits_pixels, read_cifar10


def raw(folder, name):
    with (folder / name).open("rb") as handle:
        return pickle.load(handle, encoding="bytes")[b"data"]


def test_cifar_pixels_are_raster_order_with_interleaved_channels(cifar):
    train, test = read_cifar10(cifar)
    assert train.shape == (15, 3072) and test.shape == (4, 3072) and train.dtype == np.uint8
    first = raw(cifar, "data_batch_1")[0]  # channel-major: 1024 R, 1024 G, 1024 B
    assert list(train[0, :3]) == [first[0], first[1024], first[2048]]  # pixel (0, 0): R G B
    assert list(train[0, 3:6]) == [first[1], first[1025], first[2049]]  # pixel (0, 1)
    row1 = 32 * 3  # pixel (1, 0) starts the second row
    assert list(train[0, row1 : row1 + 3]) == [first[32], first[1056], first[2080]]
    assert np.array_equal(np.sort(test[1]), np.sort(raw(cifar, "test_batch")[1]))
    assert read_cifar10(cifar.parent)[1].shape == (4, 3072)  # the folder's parent works too


def test_cifar_task_batches_are_bos_then_3072_pixel_tokens(cifar):
    task = tasks.build("image_gen", data=str(cifar))
    assert task.spec.max_len == 3072 and task.spec.vocab_size == 256 + BYTE_OFFSET and task.spec.metrics == ("bpd",)
    task.prepare()
    batch = task.train_batch(2, step=0)
    assert batch["tokens"].shape == (2, 3073) and bool(batch["mask"].all())
    assert bool((batch["tokens"][:, 0] == BOS_ID).all())
    assert int(batch["tokens"][:, 1:].min()) >= BYTE_OFFSET and int(batch["tokens"].max()) <= 255 + BYTE_OFFSET
    evaluated = torch.cat([b["tokens"][:, 1:] for b in task.eval_splits(3)["test"]]) - BYTE_OFFSET
    assert torch.equal(evaluated, torch.from_numpy(read_cifar10(cifar)[1].astype(np.int64)))


def test_digits_default_is_sklearns_digits_on_the_256_scale():
    from sklearn.datasets import load_digits

    train, test = load_digits_pixels()
    assert train.shape == (1500, 64) and test.shape == (297, 64)
    assert train.max() == 255 and train.min() == 0
    levels = load_digits().data
    assert np.array_equal(np.rint(train.astype(float) * 16 / 255), levels[:1500])
    assert tasks.build("image_gen").spec.max_len == 64


def test_missing_folder_names_path_and_layout(tmp_path):
    with pytest.raises(ValueError, match=r"nope.*data_batch_1\.\.5, test_batch"):
        tasks.build("image_gen", data=str(tmp_path / "nope")).prepare()


def test_missing_test_batch_is_named(cifar):
    (cifar / "test_batch").unlink()
    with pytest.raises(ValueError, match="test_batch"):
        read_cifar10(cifar)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, "b'data'"),  # str keys: not the python release
        ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, r"\(N, 3072\)"),
        ("not a dict", "b'data'"),
    ],
)
def test_malformed_batches_are_rejected(cifar, content, message):
    with (cifar / "data_batch_3").open("wb") as handle:
        pickle.dump(content, handle)
    with pytest.raises(ValueError, match=message):
        read_cifar10(cifar)


def test_not_a_pickle_is_rejected(cifar):
    (cifar / "data_batch_2").write_text("hello")
    with pytest.raises(ValueError, match="data_batch_2"):
        read_cifar10(cifar)


def test_small_scale_default_is_photo_patches_with_held_out_columns():
    from tasks.image_gen import PHOTO_TRAIN_COLUMNS, load_photo_patches

    train, val, test = load_photo_patches()
    assert train.shape == (5700, 3072) and len(val) + len(test) == 130 and train.dtype == np.uint8
    task = tasks.build("image_gen", scale="small")
    assert task.spec.max_len == 3072  # known before prepare()
    task.prepare()
    assert len(task._val) == 32 and task.provenance()["name"] == "sklearn.datasets.load_sample_images"
    rows = lambda a: {r.tobytes() for r in a}  # noqa: E731
    assert not rows(task._val) & rows(task._train) and not rows(task._test) & rows(task._train)
    assert PHOTO_TRAIN_COLUMNS % 32 == 0
