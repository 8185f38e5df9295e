"""Atomic writes, strict JSON, hashes, version manifests, output checks and locks for the
run, campaign and export directories every binary writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it into place only on success.

    A crash or exception leaves the previous file (if any) untouched and no
    half-written file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix="".join(path.suffixes) or ".tmp"
    )
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_bytes_atomic(path: str | os.PathLike, content: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(content)


def strict_json(value: Any, **kwargs) -> str:
    """JSON text that every parser accepts: a non-finite float (an undefined statistic,
    e.g. the interval of one trial's difference) is written as null, never NaN/Infinity."""
    return json.dumps(_finite(value), allow_nan=False, default=_json_default, **kwargs)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalars
        return _finite(value.item())
    return value


def write_json(path: str | os.PathLike, value: Any) -> None:
    write_text(path, strict_json(value, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parses a JSON file; a corrupt one raises ValueError naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(), parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); it was cut short or edited."
        ) from None


def _reject_constant(name: str) -> None:
    raise json.JSONDecodeError(f"non-standard constant {name}", name, 0)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _finite(value.tolist())
    if hasattr(value, "item"):
        return _finite(value.item())
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages that determine numerical results."""
    from importlib import metadata

    result = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in (
        "aftt-tf",
        "tensorflow",
        "keras",
        "numpy",
        "tensorflow-datasets",
        "ai-edge-litert",
    ):
        try:
            result[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            result[package] = "not installed"
    return result


def write_manifest(
    directory: str | os.PathLike, artifacts: list[str], extra: dict | None = None
) -> None:
    """manifest.json: versions, creation time, and sha256/size of each artifact."""
    directory = Path(directory)
    files = {
        name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}
        for name in artifacts
        if (directory / name).exists()
    }
    write_json(
        directory / "manifest.json",
        {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": versions(),
            "artifacts": files,
            **(extra or {}),
        },
    )


LOCK_FILE = ".lock"


class OutputError(RuntimeError):
    """An output path this command must not (or cannot) write to; the message says why."""


def entries(directory: str | os.PathLike) -> list[str]:
    """Names in `directory` other than its lock file (a directory with only that is empty)."""
    return sorted(name for name in os.listdir(directory) if name != LOCK_FILE)


def check_output_path(path: str | os.PathLike) -> None:
    """Raises OutputError unless `path` is a directory, or can be created as one, that this
    process may write: before any data or model is loaded, so a bad --out costs nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {path} is a file, not a directory; pass a directory path.")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            f"{existing} is a file, so {path} cannot be created; choose another --out."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(
            f"{existing} is not writable (read-only file system or no permission), so "
            f"{path} cannot be written; choose another --out."
        )


def empty_directory(directory: Path) -> None:
    """Removes everything in `directory` except its lock file (which another process may be
    waiting on: deleting it would let two writers in)."""
    for name in entries(directory):
        target = directory / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()


class DirectoryLock:
    """An exclusive advisory lock (`fcntl.flock`) on a lock file, held for one run.

    A second process that asks for it gets OutputError naming the holder's PID at once,
    rather than waiting or writing the same records twice. The lock goes with the process,
    so a killed run never leaves a stale lock; a finished run removes the file. (A process
    that locked a file another one just removed sees that its inode is gone and retries.)
    """

    def __init__(self, lock_path: str | os.PathLike, subject: str):
        self.lock_path = Path(lock_path)
        self.subject = subject
        self._handle = None

    def __enter__(self) -> DirectoryLock:
        import fcntl

        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.lock_path, "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise OutputError(
                    f"{self.subject} is in use by another aftt process (PID {holder}); wait "
                    "for it to finish, or stop it, before writing there."
                ) from None
            if self._still_linked(handle):
                break
            handle.close()  # Its holder removed it as we opened it: take the new file.
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def _still_linked(self, handle) -> bool:
        try:
            return os.stat(self.lock_path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc_info) -> None:
        import fcntl

        if self._handle is not None:
            with contextlib.suppress(FileNotFoundError):
                self.lock_path.unlink()
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
