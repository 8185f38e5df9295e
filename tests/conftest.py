"""Shared fixtures: small real Fashion-MNIST subsets; skip with a reason when absent."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from aftt_tf import data  # noqa: E402

FASHION_MNIST_DIR = data.DEFAULT_LOCAL_DIRS["fashion_mnist"]


def fashion_mnist_available() -> bool:
    return os.path.exists(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))


requires_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_available(),
    reason=f"Fashion-MNIST IDX files not in {FASHION_MNIST_DIR}; run `make deps` "
    "(installs the Debian package dataset-fashion-mnist).",
)


@pytest.fixture(scope="session")
def fashion_mnist_small() -> data.Splits:
    if not fashion_mnist_available():
        pytest.skip(f"Fashion-MNIST not installed in {FASHION_MNIST_DIR}")
    return data.load_splits(
        "fashion_mnist", source="local", train_examples=2048, test_examples=1000, seed=0
    )


@pytest.fixture(autouse=True)
def _clear_keras_session():
    import keras

    keras.backend.clear_session()
    yield
