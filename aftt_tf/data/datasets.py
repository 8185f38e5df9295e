"""Datasets as in-memory uint8 arrays and `tf.data` pipelines scaled to [0, 1].

Sources are tried in order and the one used is reported:

1. TFDS data already prepared in `tfds_data_dir` (or TFDS's default directory);
2. local raw files: IDX `.gz` files for Fashion-MNIST/MNIST (Debian's
   `dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist), an image
   folder `root/{train,test}/<class>/*.{jpg,png}` or the official
   `cifar-10-batches-py` (or its `.tar.gz`) for CIFAR-10;
3. TFDS download (needs internet).

When none works one `DataUnavailableError` lists what was tried and how to fix it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from aftt_tf import io_utils
from aftt_tf.data import inputs
from aftt_tf.vocabulary import DATA_SOURCES as SOURCES
from aftt_tf.vocabulary import DATASETS

# The checkout's root is three folders above this file (aftt_tf/data/datasets.py); the
# workplace's shared data sit beside the checkout (../shared).
REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_LOCAL_DIRS = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
    "cifar10": str(REPOSITORY.parent / "shared" / "data" / "cifar10-jpeg"),
}
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DataUnavailableError(RuntimeError):
    """No source could provide the dataset; the message lists attempts and remedies."""


@dataclasses.dataclass
class Splits:
    """Images (N, H, W, C) uint8 and labels (N,) int32 for train / validation / test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    validation_images: np.ndarray
    validation_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train_labels),
            "validation": len(self.validation_labels),
            "test": len(self.test_labels),
        }


def _read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, gzip.BadGzipFile, OSError) as error:
        raise ValueError(
            f"{path} cannot be read: it is truncated or not gzip data ({error}). Reinstall it "
            "(apt-get install --reinstall dataset-fashion-mnist) or point --data_dir elsewhere."
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    num_dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
    offset = 4 + 4 * num_dims
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} bytes.")
    return array.reshape(shape)


def _load_idx_dir(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    result = {}
    for split, file_names in _IDX_FILES.items():
        paths = []
        for file_name in file_names:
            path = directory / file_name
            # Accept the decompressed files too.
            path = path if path.exists() else path.with_suffix("")
            if not path.exists():
                raise FileNotFoundError(f"missing {file_name} in {directory}")
            paths.append(path)
        result[split] = (_read_idx(paths[0])[..., None], _read_idx(paths[1]).astype(np.int32))
    return result


def _cache_path(kind: str, key: str) -> Path:
    root = Path(os.environ.get("AFTT_CACHE_DIR", Path.home() / ".cache" / "aftt_tf"))
    return root / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _load_image_folder(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decodes root/{train,test}/<class>/*.jpg once and caches the arrays as .npz.

    Classes are numbered in CIFAR-10's official order; folders with other class names
    are refused (their labels would not be CIFAR-10's). Each split is stored in a fixed pseudo-random
    order (seed 0), as the official releases are: listed class by class, any prefix
    (--test_examples, a campaign subset) would hold only the first classes.
    """
    listing = {split: _list_cifar_split(root, split) for split in ("train", "test")}
    key = f"mixed-order|{root.resolve()}|{len(listing['train'])}|{len(listing['test'])}"
    cache = _cache_path("imagefolder", key)
    if cache.exists():
        with np.load(cache) as arrays:
            return {s: (arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in ("train", "test")}

    import tensorflow as tf  # Decoding only; the arrays are cached afterwards.

    result = {}
    for split, files in listing.items():
        paths = tf.constant([path for path, _ in files])
        decoded = (
            tf.data.Dataset.from_tensor_slices(paths)
            .map(
                lambda p: tf.io.decode_image(
                    tf.io.read_file(p), channels=3, expand_animations=False
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            .batch(1000)
        )
        images = np.concatenate([batch.numpy() for batch in decoded])
        labels = np.array([label for _, label in files], dtype=np.int32)
        result[split] = (images, labels)
    cache.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, (images, labels) in result.items():
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    with io_utils.atomic_path(cache) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
    return result


def _list_cifar_split(root: Path, split: str) -> list[tuple[str, int]]:
    """(path, label) of root/split/<CIFAR-10 class>/*, in a fixed mixed order (seed 0)."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"no {split}/ folder in {root}")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if set(classes) != set(CIFAR10_CLASSES):
        raise ValueError(
            f"the class folders of {split_dir} ({classes[:5]}...) are not CIFAR-10's, so "
            "their labels would not mean CIFAR-10's classes; evaluate other image folders "
            "with aftt-faults --data=folder:PATH"
        )
    files = _class_files(split_dir, CIFAR10_CLASSES)
    if not files:
        raise FileNotFoundError(f"no images in {split_dir}/<class>/")
    order = np.random.default_rng(0).permutation(len(files))
    return [files[index] for index in order]


def _class_files(root: Path, classes) -> list[tuple[str, int]]:
    """(path, label) of every image in root/<class>/, labels in the order of `classes`."""
    return [
        (str(path), label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).iterdir())
        if path.suffix.lower() in _IMAGE_SUFFIXES
    ]


def _load_cifar_python(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads the official CIFAR-10 python release (folder or .tar.gz)."""

    def batches(read):
        train = [read(f"data_batch_{i}") for i in range(1, 6)]
        test = [read("test_batch")]
        out = {}
        for split, parts in (("train", train), ("test", test)):
            images = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)
            labels = np.concatenate([p[b"labels"] for p in parts]).astype(np.int32)
            out[split] = (images.transpose(0, 2, 3, 1).copy(), labels)
        return out

    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as archive:

            def read(name):
                member = next(m for m in archive.getmembers() if m.name.endswith("/" + name))
                return pickle.load(archive.extractfile(member), encoding="bytes")

            return batches(read)
    return batches(lambda name: pickle.load(open(path / name, "rb"), encoding="bytes"))


def _load_local(name: str, data_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    directory = Path(data_dir)
    if not directory.exists():
        raise FileNotFoundError(f"{directory} does not exist")
    if name in ("fashion_mnist", "mnist"):
        return _load_idx_dir(directory)
    for candidate in (
        directory / "cifar-10-batches-py",
        directory,
        directory / "cifar-10-python.tar.gz",
    ):
        if (
            (candidate / "data_batch_1").exists()
            or candidate.name.endswith(".tar.gz")
            and candidate.is_file()
        ):
            return _load_cifar_python(candidate)
    return _load_image_folder(directory)


def _tfds_arrays(
    name: str, data_dir: str | None, download: bool
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        _check_reachable(builder)
        builder.download_and_prepare()
    elif not Path(builder.data_dir).exists():
        raise FileNotFoundError(f"no prepared TFDS data in {builder.data_dir}")
    result = {}
    for split in ("train", "test"):
        arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
        result[split] = (np.asarray(arrays[0], np.uint8), np.asarray(arrays[1], np.int32))
    return result


def _check_reachable(builder, timeout: float = 5.0) -> None:
    """Fails at once when the dataset's download host cannot be reached: offline, TFDS
    would retry with growing pauses for minutes before giving up."""
    import socket
    from urllib.parse import urlparse

    url = getattr(type(builder), "URL", None)
    if not isinstance(url, str) or "://" not in url:
        return  # No single source URL to probe; TFDS reports its own errors.
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(f"{parts.hostname} cannot be reached ({error}); no network") from None


def _remedy(name: str) -> str:
    if name == "fashion_mnist":
        local = "sudo apt-get install dataset-fashion-mnist (IDX files in /usr/share/datasets/fashion-mnist), or pass --data_dir=DIR holding train-images-idx3-ubyte.gz etc."
    elif name == "mnist":
        local = "pass --data_dir=DIR holding MNIST's train-images-idx3-ubyte.gz etc."
    else:
        local = "pass --data_dir=DIR with {train,test}/<class>/*.jpg (e.g. shared/data/cifar10-jpeg) or the official cifar-10-batches-py"
    return f"{local}; or prepare it with tensorflow-datasets where internet is available and pass --tfds_data_dir."


def load_arrays(
    name: str, data_dir: str | None = None, tfds_data_dir: str | None = None, source: str = "auto"
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """Train and test arrays of a dataset and a description of the source used."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {', '.join(DATASETS)}.")
    if source not in SOURCES:
        raise ValueError(f"Unknown data source {source!r}; expected one of {', '.join(SOURCES)}.")
    local_dir = data_dir or DEFAULT_LOCAL_DIRS[name]
    attempts = []
    if source in ("auto", "tfds"):
        attempts.append(
            (
                f"TFDS prepared data in {tfds_data_dir or '~/tensorflow_datasets'}",
                lambda: _tfds_arrays(name, tfds_data_dir, False),
            )
        )
    if source in ("auto", "local"):
        attempts.append((f"local files in {local_dir}", lambda: _load_local(name, local_dir)))
    if source in ("auto", "download"):
        attempts.append(("TFDS download", lambda: _tfds_arrays(name, tfds_data_dir, True)))
    failures = []
    for description, attempt in attempts:
        try:
            arrays = attempt()
        except Exception as error:  # Every source failure is reported together below.
            failures.append(
                f"  - {description}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            )
            continue
        logging.info("Loaded %s from %s", name, description)
        return arrays, description
    raise DataUnavailableError(
        f"Could not load dataset {name!r}. Tried:\n"
        + "\n".join(failures)
        + f"\nFix: {_remedy(name)}"
    )


def load_splits(
    name: str,
    data_dir: str | None = None,
    tfds_data_dir: str | None = None,
    source: str = "auto",
    validation_fraction: float = 0.1,
    seed: int = 0,
    train_examples: int = 0,
    test_examples: int = 0,
) -> Splits:
    """Loads a dataset and carves a validation split out of its training data.

    The validation split is a seeded random subset of the training set (never the
    test set). `train_examples`/`test_examples` > 0 keep only that many examples
    (for tests and smoke runs).
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), received {validation_fraction}.")
    arrays, description = load_arrays(name, data_dir, tfds_data_dir, source)
    train_images, train_labels = arrays["train"]
    test_images, test_labels = arrays["test"]
    order = np.random.default_rng(seed).permutation(len(train_labels))
    num_validation = int(round(validation_fraction * len(train_labels)))
    validation_index, train_index = order[:num_validation], order[num_validation:]
    if train_examples:
        train_index = train_index[:train_examples]
        validation_index = (
            validation_index[: max(1, int(round(validation_fraction * train_examples)))]
            if num_validation
            else validation_index
        )
    if test_examples:
        test_images, test_labels = test_images[:test_examples], test_labels[:test_examples]
    return Splits(
        train_images=train_images[np.sort(train_index)],
        train_labels=train_labels[np.sort(train_index)],
        validation_images=train_images[np.sort(validation_index)],
        validation_labels=train_labels[np.sort(validation_index)],
        test_images=test_images,
        test_labels=test_labels,
        source=description,
    )


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray | None,
    batch_size: int,
    seed: int,
    first_epoch: int,
    num_epochs: int,
    transform=None,
):
    """Batches for epochs [first_epoch, num_epochs), reshuffled per epoch from (seed, epoch).

    The order of epoch e depends only on (seed, e), so a resumed training sees the
    same batches as an uninterrupted one. Incomplete final batches are dropped so
    every step has one static shape (one trace). `transform` (an
    `faults.inputs.InputTransform`) makes model inputs of the stored examples; None
    keeps this project's convention for its built-in datasets, x / 255.

    Returns:
        (dataset, steps_per_epoch). The dataset yields images, or (images, labels).
    """
    import tensorflow as tf

    num_examples = len(images)
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size={batch_size} is larger than the training set ({num_examples} examples); "
            "lower --batch_size."
        )
    images, divisor, offset = _stored_and_affine(images, transform)
    image_tensor = tf.constant(images)
    label_tensor = None if labels is None else tf.constant(labels)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_examples), seed=tf.stack([tf.cast(seed, tf.int64), epoch])
        )
        order = tf.reshape(order[: steps_per_epoch * batch_size], (steps_per_epoch, batch_size))
        return tf.data.Dataset.from_tensor_slices(order)

    def gather(index):
        batch = tf.cast(tf.gather(image_tensor, index), tf.float32)
        if divisor != 1.0:
            batch = batch / divisor
        if offset:
            batch = batch + offset
        if label_tensor is None:
            return batch
        return batch, tf.gather(label_tensor, index)

    dataset = (
        tf.data.Dataset.range(first_epoch, num_epochs)
        .flat_map(epoch_batches)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return dataset, steps_per_epoch


def _stored_and_affine(images: np.ndarray, transform):
    """(images to keep, divisor, offset): an affine transform is applied per batch in the
    graph; a user's function once, here (None: x / 255)."""
    if transform is None:
        return images, 255.0, 0.0
    if transform.function is not None:
        return np.asarray(transform.apply(images), np.float32), 1.0, 0.0
    return images, transform.divisor, transform.offset


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int = 1000, transform=None):
    """In-order batches (model inputs, labels) covering every example once: images in
    [0, 1] (x / 255) by default, or made by `transform` (see `train_dataset`)."""
    import tensorflow as tf

    images, divisor, offset = _stored_and_affine(images, transform)

    def make_inputs(x, y):
        x = tf.cast(x, tf.float32)
        if divisor != 1.0:
            x = x / divisor
        return (x + offset if offset else x), y

    return (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .batch(batch_size)
        .map(make_inputs, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


@dataclasses.dataclass
class EvaluationData:
    """A test set from any source, with what it is (recorded with every campaign)."""

    images: np.ndarray
    labels: np.ndarray
    description: dict
    class_names: tuple[str, ...] = ()


def npz_spec(rest: str, default_keys: tuple[str, str]) -> tuple[str, tuple[str, str]]:
    """(path, keys) of the part after `npz:`: `PATH` (keys from --npz_keys) or
    `PATH:IMAGES,LABELS` (its own keys, so two files with other names go in one command)."""
    path, separator, keys = rest.rpartition(":")
    if separator and path and "," in keys and not keys.endswith(".npz"):
        names = tuple(name.strip() for name in keys.split(","))
        if len(names) != 2 or not all(names):
            raise ValueError(
                f"npz:{rest}: the keys after the path are two names, IMAGES,LABELS "
                "(e.g. npz:test.npz:x_test,y_test)."
            )
        return path, names
    return rest, tuple(default_keys)


def check_data_spec(source: str, npz_keys: tuple[str, str] = ("x", "y")) -> None:
    """FileNotFoundError/ValueError for a --data whose file or folder is missing, before
    any heavy import: reading it later would fail after TensorFlow has loaded."""
    kind, _, rest = source.partition(":")
    if kind == "npz" and rest:
        path, _ = npz_spec(rest, npz_keys)
        if Path(path).is_dir():
            raise ValueError(f"--data npz:{path} is a directory; give the .npz file.")
        if not Path(path).exists():
            raise FileNotFoundError(f"--data npz file {path} does not exist.")
    elif kind == "folder" and rest and not Path(rest).is_dir():
        raise FileNotFoundError(f"--data folder {rest} does not exist.")


def load_evaluation_data(
    source: str,
    data_dir: str | None = None,
    tfds_data_dir: str | None = None,
    npz_keys: tuple[str, str] = ("x", "y"),
) -> EvaluationData:
    """Test examples from a built-in dataset name, `tfds:NAME:SPLIT`, `npz:PATH` (arrays
    under `npz_keys`, or `npz:PATH:IMAGES,LABELS`; labels as integers or one-hot) or `folder:PATH` (PATH/<class>/*.jpg
    or *.png, classes in alphabetical order)."""
    kind, _, rest = source.partition(":")
    if not rest:
        arrays, description = load_arrays(source, data_dir=data_dir, tfds_data_dir=tfds_data_dir)
        images, labels = arrays["test"]
        return EvaluationData(
            images, labels, {"source": f"{source} ({description})", "split": "test"}
        )
    if kind == "tfds":
        name, _, split = rest.partition(":")
        return _tfds_split(name, split or "test", tfds_data_dir)
    if kind == "npz":
        path, keys = npz_spec(rest, npz_keys)
        return _npz_data(Path(path), keys)
    if kind == "folder":
        images, labels, classes = _decode_class_folder(Path(rest))
        return EvaluationData(images, labels, {"source": source, "classes": list(classes)}, classes)
    raise ValueError(
        f"Unknown --data {source!r}; expected a built-in name ({', '.join(DATASETS)}), "
        "tfds:NAME:SPLIT, npz:PATH or folder:PATH."
    )


def _tfds_split(name: str, split: str, tfds_data_dir: str | None) -> EvaluationData:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=tfds_data_dir)
        if not Path(builder.data_dir, "dataset_info.json").exists():
            _check_reachable(builder)
        builder.download_and_prepare()
        images, labels = tfds.as_numpy(
            builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
        )
    except Exception as error:  # TFDS raises many types; one message names the dataset.
        raise DataUnavailableError(
            f"tfds:{name}:{split} could not be loaded ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); prepare it online or pass "
            "--tfds_data_dir where it is prepared."
        ) from None
    description = {"source": f"tfds:{name}", "split": split}
    return EvaluationData(np.asarray(images), np.asarray(labels, np.int32), description)


def _npz_data(path: Path, keys: tuple[str, str]) -> EvaluationData:
    if not path.exists():
        raise FileNotFoundError(f"--data npz file {path} does not exist.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not an .npz archive (numpy.savez writes a zip file; this is not one). "
            "Save the arrays with numpy.savez(PATH, x=images, y=labels)."
        )
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in keys if key not in arrays.files]
            if missing:
                raise ValueError(
                    f"{path} has no array {missing}; it holds {arrays.files}. Name the "
                    "arrays with --npz_keys=IMAGES,LABELS."
                )
            images, labels = arrays[keys[0]], arrays[keys[1]]
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} cannot be read as .npz ({error}).") from None
    except ValueError as error:
        if "pickle" not in str(error):
            raise
        raise ValueError(
            f"{path} holds Python objects (pickled arrays), which are not read for safety; "
            "save numeric arrays."
        ) from None
    if len(images) == 0:
        raise ValueError(f"{path} holds no examples (array {keys[0]!r} is empty).")
    if labels.ndim == 2:  # One-hot.
        labels = _one_hot_labels(labels, path)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{path}: labels of shape {labels.shape} do not match {len(images)} examples; "
            "give integer labels (N,) or one-hot labels (N, classes)."
        )
    try:
        inputs.check_examples(images, labels)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    description = {"source": f"npz:{path.resolve()}", "keys": list(keys)}
    return EvaluationData(images, labels.astype(np.int32), description)


def _one_hot_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    """Class indices of one-hot rows; a row without exactly one 1 is no label."""
    if (
        labels.dtype.kind not in "iufb"
        or not np.all((labels == 0) | (labels == 1))
        or np.any(np.sum(labels, axis=-1) != 1)
    ):
        bad = int(np.sum(np.sum(labels, axis=-1) != 1)) if labels.dtype.kind in "iufb" else "some"
        raise ValueError(
            f"{path}: labels of shape {labels.shape} are read as one-hot, but {bad} rows are "
            "not one 1 among 0s (all-zero or soft rows); give integer labels (N,) or exact "
            "one-hot rows."
        )
    return np.argmax(labels, axis=-1)


def _decode_image_file(tf, path: Path) -> np.ndarray:
    """One decoded image; ValueError naming the file that is not a readable image."""
    if not path.is_file():
        raise ValueError(f"{path} is not a file (a link to a directory?); remove it.")
    try:
        return tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False).numpy()
    except (tf.errors.OpError, OSError) as error:
        reason = (getattr(error, "message", "") or str(error)).splitlines()[0]
        raise ValueError(
            f"{path} cannot be decoded as an image ({reason}); it is damaged or not a JPEG/PNG. "
            "Remove or replace it."
        ) from None


def _decode_class_folder(root: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """root/<class>/*.jpg|png decoded with TensorFlow; classes alphabetical."""
    if not root.is_dir():
        raise FileNotFoundError(f"--data folder {root} does not exist.")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    files = _class_files(root, classes)
    if not files:
        raise ValueError(f"{root} holds no <class>/*.jpg or *.png images.")
    import tensorflow as tf

    decoded = [_decode_image_file(tf, Path(path)) for path, _ in files]
    shapes = {image.shape for image in decoded}
    if len(shapes) != 1:
        raise ValueError(
            f"Images in {root} have different shapes {sorted(shapes)[:3]}; resize them."
        )
    labels = np.array([label for _, label in files], np.int32)
    return np.stack(decoded), labels, classes
