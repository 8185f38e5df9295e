"""A campaign directory on disk: its identity (campaign.json), the cells log (one JSON
record per line, appended and flushed per cell, a torn last line repaired on resume), and
the checks that keep one directory to one campaign and its files free of links.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aftt_tf import io_utils
from aftt_tf.faults.spec import FaultSpec

CELLS_FILE = "cells.jsonl"
CAMPAIGN_FILE = "campaign.json"
# Files a campaign writes: none of them may be a link (it could lead outside --out).
_OWN_FILES = (
    CELLS_FILE,
    CAMPAIGN_FILE,
    "results.json",
    "shard.json",
    "trials.csv",
    "per_layer_stats.json",
    "accuracy_vs_rate.png",
    "accuracy_vs_rate.svg",
    "layer_sensitivity.png",
    "layer_sensitivity.svg",
)

_RECORD_FIELDS = {
    "model": str,
    "model_hash": str,
    "group": str,
    "spec_key": str,
    "rate": (int, float),
    "trial": int,
    "accuracy": (int, float),
}


def read_cells(path: Path) -> list[dict[str, Any]]:
    """Completed cells of a cells.jsonl. A torn last line (a crash or a full disk mid-write)
    is not a cell and is left out; `repair_cells` removes it before anything is appended.
    A bad line elsewhere, or a line that is not a cell record (`{}`, `5`), means the file
    was damaged or edited: ValueError names the line."""
    if not path.exists() and not path.is_symlink():
        return []
    lines = read_no_follow(path).split(b"\n")
    cells = []
    for number, line in enumerate(lines[:-1], start=1):
        try:
            cell = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            cell = None
        problem = _record_problem(cell)
        if problem:
            raise ValueError(
                f"{path} line {number} is not a cell record ({problem}); the file was damaged "
                "or edited. Move it away to start the campaign afresh."
            )
        cells.append(cell)
    return cells


def _record_problem(cell: Any) -> str:
    """Why a parsed line is not a cell record ('' when it is one)."""
    if not isinstance(cell, dict):
        return "not a JSON object" if cell is not None else "not JSON"
    for name, types in _RECORD_FIELDS.items():
        if name not in cell:
            return f"no {name!r}"
        if not isinstance(cell[name], types) or isinstance(cell[name], bool):
            return f"{name!r} is {cell[name]!r}"
    return ""


def read_no_follow(path: Path) -> bytes:
    """The bytes of `path`, refusing a symbolic link (it could lead outside --out)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise _link_error(path, error) from None
    with os.fdopen(descriptor, "rb") as handle:
        return handle.read()


def _link_error(path: Path, error: OSError) -> OSError:
    if error.errno == errno.ELOOP:
        return io_utils.OutputError(
            f"{path} is a symbolic link; campaign files are never written or read through "
            "links (they could lead outside --out). Remove the link."
        )
    return error


def _open_no_follow(path: Path, flags: int):
    try:
        return os.fdopen(os.open(path, flags | os.O_NOFOLLOW, 0o666), "r+b")
    except OSError as error:
        raise _link_error(path, error) from None


def repair_cells(path: Path) -> int:
    """Truncates a torn last record (no closing newline) away; returns the bytes removed."""
    if not path.exists() and not path.is_symlink():
        return 0
    content = read_no_follow(path)
    end = content.rfind(b"\n") + 1
    if end == len(content):
        return 0
    logging.warning(
        "%s: removed a torn last record (%d bytes, from an interrupted write); its cell will "
        "run again.",
        path,
        len(content) - end,
    )
    with _open_no_follow(path, os.O_RDWR) as handle:
        handle.truncate(end)
    return len(content) - end


def _append_cell(path: Path, cell: dict[str, Any]) -> None:
    """Appends one record with its newline in one write, flushed to disk; a failed write
    (a full disk) is truncated away, so the file never keeps half a record."""
    line = (io_utils.strict_json(cell, sort_keys=True) + "\n").encode()
    with _open_no_follow(path, os.O_RDWR | os.O_CREAT | os.O_APPEND) as handle:
        start = handle.seek(0, os.SEEK_END)
        try:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as error:
            handle.truncate(start)
            raise OSError(error.errno, error.strerror, str(path)) from None


def cell_key(cell: dict[str, Any]) -> tuple:
    """What makes a cell one measurement: model content and label, group, spec, rate, trial."""
    return (
        cell["model_hash"],
        cell["model"],
        cell["group"],
        cell["spec_key"],
        float(cell["rate"]),
        int(cell["trial"]),
    )


def unique_cells(cells: list[dict[str, Any]], source: str = "") -> list[dict[str, Any]]:
    """The cells with each measurement once (the first record of a duplicate); a duplicate
    is reported, never counted twice."""
    seen, result = set(), []
    for cell in cells:
        key = cell_key(cell)
        if key in seen:
            logging.warning(
                "%sleft out a duplicate record of %s [%s] rate %g trial %d.",
                f"{source}: " if source else "",
                cell["model"],
                cell["group"],
                cell["rate"],
                cell["trial"],
            )
            continue
        seen.add(key)
        result.append(cell)
    return result


def _identity(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec fields that fix the cells' values (trials and rates may grow)."""
    return {
        k: v for k, v in spec.items() if k not in ("trials", "rates", "target_margin", "min_trials")
    }


def check_campaign_directory(
    out_dir: str | Path, spec: dict[str, Any], data: dict[str, Any] | None = None
) -> bool:
    """Raises io_utils.OutputError unless `out_dir` is absent, empty, or holds this campaign
    (the same spec record, `FaultSpec.as_dict`, up to trials and rates and, when `data` is
    given, the same test data and input transform). Writes nothing. Returns True when
    `out_dir` is absent or empty."""
    out_dir = Path(out_dir)
    current = _identity(spec)
    held = _held_campaign(out_dir)
    if held is None:
        return True
    recorded, recorded_data = held
    differences = [
        f"{key}: {recorded.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key) != current.get(key)
    ]
    if differences:
        raise io_utils.OutputError(
            f"{out_dir} holds a campaign with another fault spec ({'; '.join(differences)}). "
            "Use another --out to keep both (trials and rates may change between runs)."
        )
    if data is not None and recorded_data is not None:
        changed = [
            f"{key}: {recorded_data.get(key)!r} -> {data.get(key)!r}"
            for key in ("source", "split", "examples", "sha256", "input_transform")
            if recorded_data.get(key) != data.get(key)
        ]
        if changed:
            raise io_utils.OutputError(
                f"{out_dir} holds a campaign measured on other test data or inputs "
                f"({'; '.join(changed)}); its cells cannot be reused. Use another --out."
            )
    return False


def _held_campaign(out_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """The identity of the campaign `out_dir` holds and its recorded data (campaign.json
    read once; directories written before it: results.json or shard.json, no data); None
    when `out_dir` is absent or empty; OutputError when it holds something else."""
    io_utils.check_output_path(out_dir)
    if not out_dir.exists() or not io_utils.entries(out_dir):
        return None
    io_utils.refuse_links(out_dir, _OWN_FILES)
    data = None
    for name in (CAMPAIGN_FILE, "results.json", "shard.json"):
        if not (out_dir / name).exists():
            continue
        record = io_utils.read_json(out_dir / name)
        if name == CAMPAIGN_FILE and isinstance(record, dict):
            data = record.get("data")
        if isinstance(record, dict) and isinstance(record.get("spec"), dict):
            return _identity({**FaultSpec().as_dict(), **record["spec"]}), data
    raise io_utils.OutputError(
        f"{out_dir} is not empty and is not an aftt-faults campaign directory (it holds "
        f"{io_utils.entries(out_dir)[:5]}); choose another --out or empty it yourself."
    )


def _recorded_data(out_dir: Path) -> dict[str, Any] | None:
    """The data identity recorded in campaign.json (directories from before it: None)."""
    if not (out_dir / CAMPAIGN_FILE).exists():
        return None
    return io_utils.read_json(out_dir / CAMPAIGN_FILE).get("data")


def claim(out_dir: Path, spec: dict[str, Any], data: dict[str, Any] | None = None) -> None:
    """Writes campaign.json, which marks `out_dir` as this campaign's (under the lock): its
    spec record and data. Data recorded earlier is kept (a merge knows only the spec)."""
    record = {"kind": "aftt-faults campaign", "spec": spec}
    if data is None and (out_dir / CAMPAIGN_FILE).exists():
        data = _recorded_data(out_dir)
    if data is not None:
        record["data"] = data
    io_utils.write_json(out_dir / CAMPAIGN_FILE, record)


@contextlib.contextmanager
def opened(out_dir: Path | None, meta: dict[str, Any]) -> Iterator[CellLog]:
    """The cells log a run records its cells in: in memory when `out_dir` is None (nothing
    written, nothing resumed), else `out_dir`'s, held under its lock.

    The directory must hold no other campaign (`meta`'s spec record and data), checked
    before anything is created and again under the lock; a torn last record is repaired
    and the cells of relabelled models adopted. campaign.json is written with the first
    cell and at the end, so a run refused before its first cell leaves a directory that
    was empty as it was."""
    if out_dir is None:
        yield CellLog(None, meta["spec_key"], meta["models"])
        return
    spec, data = meta["spec"], meta["data"]
    check_campaign_directory(out_dir, spec, data)
    held: dict[str, Any] = {}  # Under the lock: whether it was empty, and the log.

    def undo() -> None:  # Runs under the lock when the run fails.
        log = held.get("cells")
        if held.get("was_empty") and (log is None or not log.added):
            _remove_own_files(out_dir)

    with io_utils.locked_directory(out_dir, undo):
        # Again, now that no one else writes (and only now is "was it empty" certain).
        held["was_empty"] = check_campaign_directory(out_dir, spec, data)
        repair_cells(out_dir / CELLS_FILE)
        held["cells"] = cells = CellLog(out_dir / CELLS_FILE, meta["spec_key"], meta["models"])
        cells.before_first_add = lambda: claim(out_dir, spec, data)
        yield cells
        claim(out_dir, spec, data)


def _remove_own_files(out_dir: Path) -> None:
    """campaign.json and an empty cells.jsonl: what a run refused before its first cell
    wrote into a directory that was empty (never a link, never a recorded cell)."""
    for name in (CAMPAIGN_FILE, CELLS_FILE):
        path = out_dir / name
        if (
            path.is_file()
            and not path.is_symlink()
            and (name != CELLS_FILE or not path.stat().st_size)
        ):
            path.unlink()


class CellLog:
    """The cells of one campaign directory: read once, appended one record at a time.

    Cells belong to a model's content (its hash) and label: a relabelled model's cells
    are adopted under its new label (`adopt`), duplicates are left out with a message."""

    def __init__(self, path: Path | None, spec_key: str, labels: dict[str, str]):
        self.path = path  # None: in memory only (the Python API without a directory).
        self.spec_key = spec_key
        records = read_cells(path) if path is not None else []
        self.records = self._adopted(unique_cells(records, str(path)), labels)
        self._finished_before = list(self.records)
        self.added = 0
        self.before_first_add: Callable[[], None] | None = None
        if path is not None and self.records != records:
            self._rewrite()

    def _adopted(self, records: list[dict[str, Any]], labels: dict[str, str]) -> list[dict]:
        """The records with the cells of a model recorded under a label this run does not
        use for it (the same file passed as --model=new=PATH, or two labels swapped)
        relabelled: they are the same measurements, so they resume under the new label,
        with a message. `labels`: {label: model hash} of this run."""
        pairs = {(label, model_hash) for label, model_hash in labels.items()}
        recorded = {(c["model"], c["model_hash"]) for c in records}
        renames = {}
        for old_label, model_hash in sorted(recorded - pairs):
            free = [
                label
                for label, current in labels.items()
                if current == model_hash and (label, model_hash) not in recorded
            ]
            if len(free) == 1:
                renames[(old_label, model_hash)] = free[0]
        for (old_label, model_hash), new_label in renames.items():
            logging.warning(
                "%s: cells recorded for model %s... as %r belong to %r in this run (the same "
                "file content); they resume under %r.",
                self.path,
                model_hash[:12],
                old_label,
                new_label,
                new_label,
            )
        return [
            {**c, "model": renames.get((c["model"], c["model_hash"]), c["model"])} for c in records
        ]

    def _rewrite(self) -> None:
        with io_utils.atomic_path(self.path) as temporary:
            temporary.write_text(
                "".join(io_utils.strict_json(c, sort_keys=True) + "\n" for c in self.records)
            )

    def _own(self, model_hash: str, group: str, records=None, label=None) -> list[dict[str, Any]]:
        return [
            c
            for c in (self.records if records is None else records)
            if (c["model_hash"], c["spec_key"], c["group"]) == (model_hash, self.spec_key, group)
            and (label is None or c["model"] == label)
        ]

    def done(self, model_hash: str, label: str, group: str) -> set[tuple[float, int]]:
        """Cells of this model and label finished before this run started."""
        own = self._own(model_hash, group, self._finished_before, label)
        return {(c["rate"], c["trial"]) for c in own}

    def check_targets(self, model_hash: str, group: str, targets: list[str], label: str) -> None:
        """Refuses to resume cells that faulted other layers than this code targets (the
        layer rule changed between versions, e.g. a new layer type became faultable):
        mixing them would average two different campaigns under one name."""
        for cell in self._own(model_hash, group, self._finished_before):
            if "per_layer" in cell and set(cell["per_layer"]) != set(targets):
                raise ValueError(
                    f"{self.path} holds cells of {label!r} that faulted layers "
                    f"{sorted(cell['per_layer'])}, but this version of aftt-tf targets "
                    f"{sorted(targets)} for the same spec (its layer rules changed). Its cells "
                    "cannot be resumed: write to a new --out (or remove the directory)."
                )

    def accuracies_by_rate(
        self, model_hash: str, label: str, group: str
    ) -> dict[float, list[float]]:
        result: dict[float, list[float]] = {}
        for cell in self._own(model_hash, group, label=label):
            result.setdefault(cell["rate"], []).append(cell["accuracy"])
        return result

    def add(self, record: dict[str, Any]) -> None:
        """Records one finished cell: on disk first (campaign.json with the first), then
        in memory."""
        if self.path is not None:
            if not self.added and self.before_first_add is not None:
                self.before_first_add()
            _append_cell(self.path, record)
        self.added += 1
        self.records.append(record)
