"""Checks of what users hand over (test arrays, labels) and the one way their own code
is imported (--import, MODULE:FUNCTION). No TensorFlow; the lowest layer, so data
loaders, runners and binaries share them."""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np


def check_examples(images: np.ndarray, labels: np.ndarray) -> None:
    """ValueError naming what is wrong with test inputs or labels, before any inference:
    no examples, strings, NaN/Inf inputs, labels that are not whole class indices."""
    if images.dtype.kind in "USOV":
        raise ValueError(
            f"The inputs have dtype {images.dtype} (text or objects), not numbers; store "
            "images or features as numeric arrays."
        )
    if len(images) == 0 or len(labels) == 0:
        raise ValueError("The test data hold no examples; give at least one.")
    if len(images) != len(labels):
        raise ValueError(
            f"{len(images)} inputs but {len(labels)} labels; give one label per example."
        )
    if images.dtype.kind == "f" and not np.all(np.isfinite(images)):
        bad = int(np.sum(~np.all(np.isfinite(images.reshape(len(images), -1)), axis=1)))
        raise ValueError(
            f"{bad} of {len(images)} inputs hold NaN or infinite values; clean the data "
            "(a fault campaign measures faults, not broken inputs)."
        )
    check_labels(labels)


def check_labels(labels: np.ndarray) -> None:
    """Labels must be whole, non-negative class indices (N,)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"Labels of shape {labels.shape}: give integer labels (N,) (one-hot labels are "
            "converted when data are loaded from files)."
        )
    if labels.dtype.kind not in "iuf" or labels.dtype == np.bool_:
        raise ValueError(f"Labels have dtype {labels.dtype}; give integer class indices.")
    if labels.dtype.kind == "f" and not (
        np.all(np.isfinite(labels)) and np.all(np.mod(labels, 1) == 0)
    ):
        raise ValueError(
            "Labels hold fractions or NaN/Inf values; give integer class indices (soft or "
            "smoothed labels cannot be scored by top-1 accuracy)."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= 2**31):
        raise ValueError(
            f"Labels range over [{labels.min():g}, {labels.max():g}]; class indices must be "
            "in [0, classes)."
        )


def user_import(name: str, what: str):
    """The user's module `name`, imported with the current directory on the path; any
    failure while importing it is a ValueError that says `what` failed and why."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except SystemExit as error:
        raise ValueError(
            f"{what}: importing {name} called sys.exit({error.code!r}); a module given to "
            "--import must only define and register classes."
        ) from None
    except Exception as error:  # The user's code: ImportError, SyntaxError, KeyError, ...
        raise ValueError(
            f"{what} failed: {type(error).__name__}: {error}. Give a module importable from "
            "the current directory or PYTHONPATH that imports without errors."
        ) from None


def module_exists(name: str, what: str) -> None:
    """ValueError when module `name` cannot be found (without running it): a missing
    --import is named before TensorFlow and the model load."""
    import importlib.util

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise ValueError(
            f"{what}: no module named {name!r} on the path (current directory: "
            f"{os.getcwd()}). Give a module importable from the current directory or "
            "PYTHONPATH (a file NAME.py, without .py)."
        )


def model_file(path: str | os.PathLike, what: str = "Model file") -> None:
    """FileNotFoundError when `path` does not exist; ValueError naming the model files a
    directory holds when it is one (a run or export directory given for its model)."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        inside = sorted(
            str(p.relative_to(path)) for p in path.rglob("*") if p.suffix in (".keras", ".tflite")
        )
        hint = f" It holds {', '.join(inside[:4])}." if inside else ""
        raise ValueError(
            f"{what} {path} is a directory; pass the model file itself (a .keras or .tflite)."
            + hint
        )
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist.")
