"""Checks of the files and modules users hand over (model files, --import modules) and
the one way their own code is imported (--import, MODULE:FUNCTION). No TensorFlow; the
lowest layer, so data loaders, runners and binaries share them. (Checks of test arrays
and labels are in `data.inputs`.)"""

from __future__ import annotations

import importlib
import os
import sys


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
