"""Shared fixtures: small real Fashion-MNIST subsets; skip with a reason when absent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from aftt_tf.data import datasets as data  # noqa: E402

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


# `make test` runs the suite on two workers (pytest-xdist, --dist loadgroup). Each test
# file stays on one worker, so its module fixtures are built once; files that share an
# expensive session fixture share a worker too (the smoke reproduction and the Ray
# cluster; the TFDS download).
_SHARED_WORKER = {
    "reproduce_test.py": "smoke_reproduction",
    "ray_test.py": "smoke_reproduction",
    "protocols_test.py": "smoke_reproduction",
    "ray_watchdog_test.py": "smoke_reproduction",
    "failure_test.py": "tfds_fashion_mnist",
    "zoo_test.py": "tfds_fashion_mnist",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = Path(str(item.fspath)).name
        item.add_marker(pytest.mark.xdist_group(_SHARED_WORKER.get(name, name)))


@pytest.fixture(autouse=True)
def _clear_keras_session():
    import keras

    keras.backend.clear_session()
    yield


@pytest.fixture(scope="session")
def tfds_fashion_mnist(tmp_path_factory):
    """A TFDS data directory where fashion_mnist was downloaded (from the local IDX files,
    served on 127.0.0.1 in place of the internet) and prepared by TFDS itself."""
    import functools
    import http.server
    import threading

    if not fashion_mnist_available():
        pytest.skip(f"Fashion-MNIST not installed in {FASHION_MNIST_DIR}")
    from tensorflow_datasets.image_classification import mnist

    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(FASHION_MNIST_DIR)
    )
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    original = mnist.FashionMNIST.URL
    root = tmp_path_factory.mktemp("tfds")
    try:
        mnist.FashionMNIST.URL = f"http://127.0.0.1:{server.server_address[1]}/"
        arrays, source = data.load_arrays(
            "fashion_mnist", tfds_data_dir=str(root), source="download"
        )
    finally:
        mnist.FashionMNIST.URL = original
        server.shutdown()
    return root, arrays, source


@pytest.fixture
def model_path(tmp_path):
    """An untrained fmnist_mlp classifier saved as aftt-train saves it."""
    import keras

    from aftt_tf.training import networks

    keras.utils.set_random_seed(0)
    path = tmp_path / "run" / "classifier.keras"
    path.parent.mkdir()
    networks.build_networks("fmnist_mlp").classifier.save(path)
    # aftt-train's config.json names the run's dataset (the binaries' default --data).
    (path.parent / "config.json").write_text('{"dataset": "fashion_mnist"}\n')
    return path


REPO = Path(__file__).resolve().parents[1]
SMOKE_FLAGS = [
    f"--flagfile={REPO / 'flags/smoke.flags'}",
    "--l1_lambda_grid=1e-5",
    "--l2_lambda_grid=1e-5,1e-4",
    "--faults=weight,node",
    "--rates=0,0.5",
    "--trials=2",
    "--campaign_test_examples=128",
    "--calibration_steps=2",
]


def reproduce_smoke(out: Path, *extra: str) -> subprocess.CompletedProcess:
    """aftt-reproduce on flags/smoke.flags (small grids, two rates) into `out`."""
    return subprocess.run(
        [sys.executable, "-m", "aftt_tf.cli.reproduce", *SMOKE_FLAGS, f"--out={out}", *extra],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )


@pytest.fixture(scope="session")
def smoke_reproduction(tmp_path_factory):
    """The reproduction of flags/smoke.flags (six methods, two fault kinds, int8), run
    once per session through the CLI: shared by the reproduce and Ray tests."""
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed; run `make deps`.")
    out = tmp_path_factory.mktemp("reproduce") / "smoke"
    result = reproduce_smoke(out)
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result
