"""Atomic writes, strict JSON, hashes, version manifests, output checks and locks for the
run, campaign and export directories every binary writes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it into place only on success.

    A crash or exception leaves the previous file (if any) untouched and no
    half-written file behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.stem}.", suffix="".join(path.suffixes) or ".tmp"
        )
    except OSError as error:
        raise _named(error, path) from None
    os.close(handle)
    temporary = Path(temporary)
    try:
        try:
            yield temporary
            # mkstemp makes the file private (0600); results are meant to be read by others
            # as the umask allows, like any file the user writes.
            os.chmod(temporary, 0o666 & ~_umask())
            os.replace(temporary, path)
        except OSError as error:
            raise _named(error, path) from None
    finally:
        if temporary.exists():
            temporary.unlink()


def _named(error: OSError, path: Path) -> OSError:
    """The same error with the path it was writing (a full disk names the file)."""
    if error.filename and not Path(error.filename).name.startswith("."):
        return error
    return OSError(error.errno, error.strerror or str(error), str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def file_version(path: str | os.PathLike, what: str) -> tuple[str, int, int]:
    """(path, modification time, size) of a file read through a cache keyed by them (an
    edited file is read again); ValueError '<what> <path> does not exist.' otherwise."""
    try:
        stat = Path(path).stat()
    except OSError:
        raise ValueError(f"{what} {path} does not exist.") from None
    return str(path), stat.st_mtime_ns, stat.st_size


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


def differing_fields(recorded: Any, wanted: Any, prefix: str = "") -> list[str]:
    """'field: recorded X, now Y' for each leaf where two JSON records differ."""
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        result = []
        for key in sorted(set(recorded) | set(wanted), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in recorded or key not in wanted:
                result.append(
                    f"{name}: {'absent' if key not in recorded else recorded[key]!r} "
                    f"recorded, {'absent' if key not in wanted else wanted[key]!r} now"
                )
            else:
                result += differing_fields(recorded[key], wanted[key], name)
        return result
    if recorded != wanted:
        return [f"{prefix or 'value'}: recorded {recorded!r}, now {wanted!r}"]
    return []


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


def _open_lock(path: Path):
    """The lock file, created if absent; a symbolic link there is refused, never followed
    (writing the PID through it would overwrite a file anywhere)."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OutputError(
                f"{path} is a symbolic link; a lock file is never written through a link. "
                "Remove it."
            ) from None
        raise
    return os.fdopen(descriptor, "r+")


def refuse_links(directory: str | os.PathLike, names: tuple[str, ...]) -> None:
    """OutputError when any of `names` in `directory` is a symbolic link: files this
    project writes are never written (or truncated) through a link."""
    for name in names:
        if (Path(directory) / name).is_symlink():
            raise OutputError(
                f"{Path(directory) / name} is a symbolic link; this command writes that file "
                "itself and never through a link (it could lead outside the output "
                "directory). Remove the link."
            )


def first_missing(path: str | os.PathLike) -> Path | None:
    """The outermost directory of `path` that does not exist yet (None: it exists): what a
    refused run must remove again so that it leaves nothing behind."""
    path = Path(path).absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def remove_created(created: Path | None, leaf: str | os.PathLike) -> None:
    """Removes the empty directories from `leaf` up to `created` (see `first_missing`);
    anything with a file in it stays."""
    if created is None:
        return
    path = Path(leaf).absolute()
    while True:
        try:
            path.rmdir()
        except OSError:
            return
        if path == created or path == path.parent:
            return
        path = path.parent


@contextlib.contextmanager
def locked_directory(
    directory: str | os.PathLike, undo: Callable[[], None] | None = None
) -> Iterator[Path | None]:
    """Creates `directory` (and missing parents) and holds its lock for the block. When
    the lock is refused (another process holds it), removes what this call created and
    raises OutputError: a refused run leaves nothing behind. When the block fails, `undo`
    runs under the lock (the caller removes what it wrote, if it should), then the
    directories this call created are removed if empty. Yields the outermost directory it
    created (None: it existed), for callers that clean up on failure themselves."""
    directory = Path(directory)
    created = first_missing(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(DirectoryLock(directory / LOCK_FILE, str(directory)))
        except OutputError:
            remove_created(created, directory)
            raise
        try:
            yield created
        except BaseException:
            if undo is None:
                raise
            undo()
            stack.close()  # The lock file goes, so an emptied directory can go too.
            remove_created(created, directory)
            raise


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
            handle = _open_lock(self.lock_path)
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
