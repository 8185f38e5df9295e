import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.data import datasets as data
from tests.conftest import requires_fashion_mnist


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _fake_idx_dir(directory, num_train=50, num_test=20):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        _write_idx(
            directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28))
        )
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)


def test_idx_reader_and_validation_split(tmp_path):
    _fake_idx_dir(tmp_path)
    splits = data.load_splits(
        "mnist", data_dir=str(tmp_path), source="local", validation_fraction=0.2
    )
    assert splits.sizes() == {"train": 40, "validation": 10, "test": 20}
    assert splits.train_images.shape == (40, 28, 28, 1) and splits.train_images.dtype == np.uint8
    # Validation comes from the training set and never overlaps it.
    train_rows = {row.tobytes() for row in splits.train_images}
    assert not any(row.tobytes() in train_rows for row in splits.validation_images)
    assert "local files" in splits.source


def test_truncated_idx_file_is_reported(tmp_path):
    _fake_idx_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:1000]))
    with pytest.raises(data.DataUnavailableError, match="truncated"):
        data.load_splits("mnist", data_dir=str(tmp_path), source="local")


def test_image_folder_with_cifar_class_order(tmp_path, monkeypatch):
    monkeypatch.setenv("AFTT_CACHE_DIR", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for label, name in enumerate(data.CIFAR10_CLASSES):
            folder = tmp_path / "images" / split / name
            folder.mkdir(parents=True)
            pixels = np.full((32, 32, 3), label * 20, np.uint8)
            tf.io.write_file(str(folder / "0000.png"), tf.io.encode_png(pixels))
    arrays, _ = data.load_arrays("cifar10", data_dir=str(tmp_path / "images"), source="local")
    images, labels = arrays["train"]
    assert images.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(images[:, 0, 0, 0], labels * 20)
    assert sorted(labels) == list(range(10))
    assert list(labels) != list(range(10)), "stored in a mixed order, not class by class"
    # The second load is served from the cache with the same arrays.
    assert len(os.listdir(tmp_path / "cache")) == 1
    cached, _ = data.load_arrays("cifar10", data_dir=str(tmp_path / "images"), source="local")
    np.testing.assert_array_equal(cached["test"][0], arrays["test"][0])


def test_missing_data_lists_every_attempt_and_the_remedy(tmp_path):
    with pytest.raises(data.DataUnavailableError) as error:
        data.load_arrays(
            "fashion_mnist",
            data_dir=str(tmp_path / "nowhere"),
            tfds_data_dir=str(tmp_path / "tfds"),
            source="auto",
        )
    message = str(error.value)
    assert (
        "TFDS prepared data" in message and "local files" in message and "TFDS download" in message
    )
    assert "apt-get install dataset-fashion-mnist" in message


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="Unknown dataset 'svhn'"):
        data.load_arrays("svhn")
    with pytest.raises(ValueError, match="Unknown data source 'ftp'"):
        data.load_arrays("mnist", source="ftp")


def test_train_dataset_order_depends_only_on_seed_and_epoch():
    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)
    labels = np.arange(40, dtype=np.int32)
    full, steps = data.train_dataset(images, labels, 8, seed=1, first_epoch=0, num_epochs=3)
    assert steps == 5
    batches = [labels.numpy() for _, labels in full]
    resumed, _ = data.train_dataset(images, labels, 8, seed=1, first_epoch=2, num_epochs=3)
    np.testing.assert_array_equal(
        np.concatenate(batches[10:]), np.concatenate([batch.numpy() for _, batch in resumed])
    )
    assert sorted(np.concatenate(batches[:5])) == list(range(40))  # each epoch is a permutation
    assert not np.array_equal(np.concatenate(batches[:5]), np.concatenate(batches[5:10]))
    with pytest.raises(ValueError, match="batch_size=64 is larger than the training set"):
        data.train_dataset(images, labels, 64, 0, 0, 1)


@requires_fashion_mnist
def test_real_fashion_mnist_splits():
    splits = data.load_splits("fashion_mnist", source="local")
    assert splits.sizes() == {"train": 54000, "validation": 6000, "test": 10000}
    assert set(np.unique(splits.test_labels)) == set(range(10))


CIFAR_DIR = data.DEFAULT_LOCAL_DIRS["cifar10"]


def test_the_default_cifar_folder_is_the_shared_one_beside_the_checkout():
    """The default is ../shared/data/cifar10-jpeg next to the checkout, wherever the
    module lives (a move of datasets.py one folder down once pointed it into the checkout,
    and the real-data test above then skipped instead of failing)."""
    checkout = Path(__file__).resolve().parents[1]
    assert Path(CIFAR_DIR) == checkout.parent / "shared" / "data" / "cifar10-jpeg"


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(CIFAR_DIR, "test")),
    reason=f"CIFAR-10 image folder not found at {CIFAR_DIR}",
)
def test_real_cifar10_image_folder():
    arrays, _ = data.load_arrays("cifar10", source="local")
    assert arrays["train"][0].shape == (50000, 32, 32, 3)
    assert arrays["test"][0].shape == (10000, 32, 32, 3)
    assert np.bincount(arrays["test"][1]).tolist() == [1000] * 10
    # Any prefix is a fair sample (the folders are listed class by class).
    assert np.bincount(arrays["test"][1][:1000], minlength=10).min() >= 70
