"""The campaign engine: fault kind x rates x trials over a test set, resumable and shardable.

The engine is independent of the runtime: a runner (Keras: `keras_runner`, TFLite:
`tflite_runner`, picked by `runtimes`) evaluates one (rate, trial) cell; this module
plans the cells, skips finished ones (resume), splits them into shards, merges shards
and writes results.json, trials.csv and plots with the statistics of `analysis`. It
imports no TensorFlow, so .tflite campaigns run on devices with only numpy and
ai-edge-litert.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import io_utils
from aftt_tf.campaigns import analysis, console
from aftt_tf.campaigns.statistics import confidence_interval
from aftt_tf.data import inputs
from aftt_tf.faults.spec import (
    CampaignModel,
    CellRunner,
    FaultSpec,
    check_classifier_outputs,
)
from aftt_tf.progress import Progress
from aftt_tf.runtimes import as_campaign_model

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
_TRIAL_COLUMNS = (
    "model",
    "group",
    "rate",
    "trial",
    "accuracy",
    "realized_fraction",
    "faulted",
    "per_layer",
)


def cell_plan(spec: FaultSpec) -> list[tuple[float, int]]:
    """Every (rate, trial) cell in a fixed order."""
    return [(float(rate), trial) for rate in spec.rates for trial in range(spec.trials)]


def shard_cells(
    cells: list[tuple[float, int]], num_shards: int, shard_index: int
) -> list[tuple[float, int]]:
    """Deterministic round-robin share of the cells for one shard."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(
            f"shard_index must be in [0, num_shards) and num_shards >= 1; received "
            f"shard_index={shard_index}, num_shards={num_shards}."
        )
    return [cell for index, cell in enumerate(cells) if index % num_shards == shard_index]


# A record's fields and their types: anything else on a line is not a cell of ours.
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
    lines = _read_no_follow(path).split(b"\n")
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


def _read_no_follow(path: Path) -> bytes:
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
    content = _read_no_follow(path)
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
    out_dir: str | Path, spec: FaultSpec, data: dict[str, Any] | None = None
) -> None:
    """Raises io_utils.OutputError unless `out_dir` is absent, empty, or holds this campaign
    (the same spec up to trials and rates and, when `data` is given, the same test data
    and input transform). Writes nothing."""
    out_dir = Path(out_dir)
    io_utils.check_output_path(out_dir)
    if not out_dir.exists() or not io_utils.entries(out_dir):
        return
    io_utils.refuse_links(out_dir, _OWN_FILES)
    recorded = _recorded_spec(out_dir)
    if recorded is None:
        raise io_utils.OutputError(
            f"{out_dir} is not empty and is not an aftt-faults campaign directory (it holds "
            f"{io_utils.entries(out_dir)[:5]}); choose another --out or empty it yourself."
        )
    current = _identity(spec.as_dict())
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
    recorded_data = _recorded_data(out_dir)
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


def _recorded_data(out_dir: Path) -> dict[str, Any] | None:
    """The data identity recorded in campaign.json (directories from before it: None)."""
    if not (out_dir / CAMPAIGN_FILE).exists():
        return None
    return io_utils.read_json(out_dir / CAMPAIGN_FILE).get("data")


def _recorded_spec(out_dir: Path) -> dict[str, Any] | None:
    """The identity of the campaign in `out_dir`: campaign.json, or (directories written
    before it existed) results.json / shard.json; None when it is no campaign directory."""
    for name in (CAMPAIGN_FILE, "results.json", "shard.json"):
        if (out_dir / name).exists():
            record = io_utils.read_json(out_dir / name)
            if isinstance(record, dict) and isinstance(record.get("spec"), dict):
                return _identity({**FaultSpec().as_dict(), **record["spec"]})
    return None


def _claim(out_dir: Path, spec: FaultSpec, data: dict[str, Any] | None = None) -> None:
    """Writes campaign.json, which marks `out_dir` as this campaign's (under the lock).
    Data recorded earlier is kept (a merge knows only the spec)."""
    record = {"kind": "aftt-faults campaign", "spec": spec.as_dict()}
    if data is None and (out_dir / CAMPAIGN_FILE).exists():
        data = _recorded_data(out_dir)
    if data is not None:
        record["data"] = data
    io_utils.write_json(out_dir / CAMPAIGN_FILE, record)


def run_campaign(
    models: dict[str, Any],
    spec: FaultSpec,
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: str | Path | None,
    batch_size: int = 2000,
    num_shards: int = 1,
    shard_index: int = 0,
    per_layer: bool = False,
    progress: bool = True,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
    transform: inputs.InputTransform | str = "auto",
    data_description: dict[str, Any] | None = None,
    allow_chance_accuracy: bool = False,
    executor: Any = None,
    rate_choice: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) a campaign over several models; writes outputs into `out_dir`
    (None: runs in memory and returns the results with their cells, writing nothing).

    `out_dir` must be absent, empty or hold this campaign (same spec up to trials and
    rates, same test data and input transform); one process at a time writes it (a lock
    file). Cells already in its cells.jsonl for the same model fingerprint and spec key
    are skipped. With `per_layer`, each target layer is faulted alone (group = layer
    name) for a sensitivity table. `transform` turns stored test data into model input
    ('auto': x / 255 for uint8 data); `data_description` (source, split, ...) is recorded
    with the data's hash. A model whose clean accuracy is at chance level stops the
    campaign with the likely causes, unless `allow_chance_accuracy`. `rate_choice` (how
    the rates were chosen: `cliff.find_rates`) is recorded in the results.

    Returns:
        The results dictionary also written to results.json (when not sharded).
    """
    _check_plan(spec, num_shards, executor)
    images, labels = np.asarray(images), np.asarray(labels)
    inputs.check_examples(images, labels)
    transform = _transform(transform, images)
    data = data_identity(images, labels, transform, data_description)
    if out_dir is not None:
        out_dir = Path(out_dir)
        check_campaign_directory(out_dir, spec, data)
    adapters = {label: as_campaign_model(model) for label, model in models.items()}
    _check_models(adapters, transform, images, spec)
    meta = _meta(spec, adapters, data, num_shards, shard_index)
    meta["chance_accuracy"] = float(np.bincount(labels.astype(np.int64)).max()) / len(labels)
    if rate_choice is not None:  # How the rates were chosen (--rates=cliff), recorded.
        meta["rate_choice"] = rate_choice
    run = _Run(spec, images, labels, batch_size, transform, progress, on_cell)
    run.allow_chance_accuracy = allow_chance_accuracy
    run.executor = executor
    plan = shard_cells(cell_plan(spec), num_shards, shard_index)
    if out_dir is None:  # In memory: nothing is written, nothing resumes.
        cells = _CellLog(None, spec.key())
        meta["skipped_cells"] = run.models(adapters, meta["models"], plan, cells, per_layer)
        return {**results_of(cells.records, meta), "cells": cells.records}
    return _run_in_directory(run, adapters, meta, plan, out_dir, data, per_layer)


def check_inputs(
    models: dict[str, Any],
    spec: FaultSpec,
    images: np.ndarray,
    labels: np.ndarray,
    transform: inputs.InputTransform | str = "auto",
) -> inputs.InputTransform:
    """Every check `run_campaign` makes of its inputs before any work (examples, labels,
    input transform, model outputs, bit meaning); a binary calls it where a failure is
    a usage error. Returns the resolved transform."""
    images, labels = np.asarray(images), np.asarray(labels)
    inputs.check_examples(images, labels)
    resolved = _transform(transform, images)
    adapters = {label: as_campaign_model(model) for label, model in models.items()}
    _check_models(adapters, resolved, images, spec)
    return resolved


def _check_models(
    adapters: dict, transform: inputs.InputTransform, images: np.ndarray, spec: FaultSpec
) -> None:
    """Every model has one (batch, classes) output and takes what the transform makes;
    a bit position means the same bit in every model."""
    for label, adapter in adapters.items():
        shapes = adapter.output_shapes
        if shapes is not None:
            check_classifier_outputs(shapes, label)
        inputs.check_transform(transform, images, tuple(adapter.input_shape))
    if spec.fault_kind.bit_meaning:
        _check_bit_meaning(adapters, spec)
    if len(adapters) > 1:
        _check_like_for_like(adapters, spec)


def _check_like_for_like(adapters: dict, spec: FaultSpec) -> None:
    """The models of one campaign are paired trial by trial, so each must fault the same
    layers: a .tflite whose layers the converter left unnamed (named by type and order)
    or split into other operators (an unrolled recurrent layer's copies) would take other
    faults than the .keras, and their paired difference would mean nothing."""
    selected = {label: adapter.select_layers(spec) for label, adapter in adapters.items()}
    first_label, first = next(iter(selected.items()))
    for label, names in selected.items():
        if sorted(names) != sorted(first):
            only_here = sorted(set(names) - set(first))[:4]
            only_there = sorted(set(first) - set(names))[:4]
            raise ValueError(
                f"{label} and {first_label} do not fault the same layers ({label} alone: "
                f"{only_here or '-'}; {first_label} alone: {only_there or '-'}), so their "
                "trials would not hold the same faults and a paired difference would mean "
                "nothing. Export the .tflite with aftt-export (its manifest names every "
                "operator by Keras layer), pick common layers with --layers, or run one "
                "campaign per model."
            )
    if not spec.fault_kind.on_parameters:
        return
    counts = {label: adapter.kernel_elements(spec) for label, adapter in adapters.items()}
    if not counts:
        return
    first_label, first = next(iter(counts.items()))
    for label, elements in counts.items():
        differing = sorted(name for name in elements if elements[name] != first.get(name))
        if differing:
            name = differing[0]
            held = "kernel and bias" if spec.selection.include_bias else "kernel"
            dropped = (
                " or dropped an all-zero bias (leave out --include_bias)"
                if spec.selection.include_bias
                else ""
            )
            raise ValueError(
                f"{label} holds {elements[name]:,} {held} elements in layer {name!r} and "
                f"{first_label} {first.get(name, 0):,}: the converter stored that layer's "
                "weights differently (split or duplicated, as an unrolled recurrent layer's "
                f"int8 file can{dropped}), so the same rate would place other faults on "
                "other weights and a paired difference would mean nothing. Run one campaign "
                "per model, or leave that layer out with --exclude_layers."
            )


def _check_bit_meaning(adapters: dict, spec: FaultSpec) -> None:
    """A bit position means one thing in every model of a paired bit campaign: float32
    bit 7 is a low mantissa bit, int8 bit 7 the sign. Models whose faulted weights are
    stored differently are refused (run one campaign per storage type)."""
    storages = {label: sorted(adapter.weight_storage(spec)) for label, adapter in adapters.items()}
    if len({tuple(types) for types in storages.values()}) > 1:
        described = ", ".join(f"{label}: {'/'.join(types)}" for label, types in storages.items())
        held = "layer outputs" if spec.fault_kind.transient else "weights"
        raise ValueError(
            f"A bit campaign pairs models whose {held} are stored differently ({described}): "
            f"bit {spec.value.bit_position if spec.value.bit_position >= 0 else '(random)'} would be "
            "another bit of another number format in each, and the comparison would mean "
            "nothing. Run one bit campaign per storage type (e.g. the .keras and the float32 "
            ".tflite together, the int8 files together)."
        )


def _run_in_directory(run: _Run, adapters, meta, plan, out_dir: Path, data, per_layer: bool):
    """The campaign's missing cells, recorded in `out_dir` under its lock; a run refused
    before its first cell leaves a directory that was empty as it was."""
    spec = run.spec
    created = io_utils.first_missing(out_dir)
    was_empty = created is not None or not io_utils.entries(out_dir)
    cells, locked = None, False
    try:
        with io_utils.DirectoryLock(out_dir / io_utils.LOCK_FILE, str(out_dir)):
            locked = True  # Only a run that holds the lock may remove what it wrote.
            check_campaign_directory(out_dir, spec, data)  # Again, now no one else can write.
            repair_cells(out_dir / CELLS_FILE)
            cells = _CellLog(out_dir / CELLS_FILE, spec.key())
            cells.adopt(meta["models"])
            # campaign.json is written with the first cell: a run refused before it (a
            # model at chance level, a fault that cannot be placed) leaves nothing.
            cells.before_first_append = lambda: _claim(out_dir, spec, data)
            meta["skipped_cells"] = run.models(adapters, meta["models"], plan, cells, per_layer)
            _claim(out_dir, spec, data)
            if meta["num_shards"] > 1:
                io_utils.write_json(out_dir / "shard.json", meta)
                return meta
            return write_outputs(out_dir, cells.records, meta)
    except BaseException:
        if was_empty and (not locked or cells is None or not cells.appended):
            _remove_refused(out_dir, created, locked)
        raise


def _remove_refused(out_dir: Path, created: Path | None, locked: bool) -> None:
    """What a run refused before its first cell wrote into a directory that was empty (a
    run refused at the lock wrote nothing: another process owns what is there)."""
    if not locked:
        io_utils.remove_created(created, out_dir)
        return
    for name in (CAMPAIGN_FILE, CELLS_FILE):
        path = out_dir / name
        if (
            path.is_file()
            and not path.is_symlink()
            and (name != CELLS_FILE or not path.stat().st_size)
        ):
            path.unlink()
    io_utils.remove_created(created, out_dir)


def _meta(spec, adapters, data, num_shards: int, shard_index: int) -> dict[str, Any]:
    return {
        "spec": spec.as_dict(),
        "spec_key": spec.key(),
        "protocol": spec.protocol,
        "models": {label: adapter.fingerprint() for label, adapter in adapters.items()},
        "data": data,
        "coverage": {label: _coverage(adapter, spec) for label, adapter in adapters.items()},
        "num_shards": num_shards,
        "shard_index": shard_index,
    }


def _transform(transform: inputs.InputTransform | str, images: np.ndarray):
    if isinstance(transform, str):
        return inputs.resolve(transform, dtype=images.dtype, sample=images)
    return transform


def data_identity(
    images: np.ndarray,
    labels: np.ndarray,
    transform: inputs.InputTransform,
    description: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the campaign was measured on: a hash of the test arrays, their shape and the
    input transform (part of the campaign's identity: other data never reuses cells)."""
    digest = hashlib.sha256()
    for array in (images, labels):
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return {
        **(description or {}),
        "examples": int(len(labels)),
        "shape": [int(d) for d in images.shape[1:]],
        "dtype": str(images.dtype),
        "sha256": digest.hexdigest(),
        "input_transform": transform.record(),
    }


def _coverage(adapter: CampaignModel, spec: FaultSpec) -> dict[str, Any] | None:
    return adapter.coverage(spec)


class _Run:
    """One campaign's evaluation settings, shared by its models and groups."""

    allow_chance_accuracy = False
    executor: Any = None  # Evaluates cells elsewhere (Ray); None: in this process.

    def __init__(self, spec, images, labels, batch_size, transform, progress, on_cell):
        self.spec, self.images, self.labels = spec, images, labels
        self.batch_size, self.transform = batch_size, transform
        self.progress, self.on_cell = progress, on_cell

    def models(self, adapters, fingerprints, plan, cells, per_layer) -> int:
        """Runs the missing cells of every model; returns the cells skipped. Every model
        with cells to run is checked (clean accuracy above chance) before the first cell
        is recorded, so a refused campaign records nothing."""
        work, skipped = [], 0
        for label, adapter in adapters.items():
            for group, group_spec in _groups(adapter, self.spec, per_layer):
                model_hash = fingerprints[label]
                cells.check_targets(model_hash, group, adapter.select_layers(group_spec), label)
                done = cells.done(model_hash, label, group)
                todo = [cell for cell in plan if cell not in done]
                skipped += len(plan) - len(todo)
                if todo:
                    work.append((label, model_hash, adapter, group, group_spec, todo))
        opened: dict[tuple[str, str], tuple[Any, Any]] = {}
        try:
            checked = set()
            for label, _, adapter, group, group_spec, _ in work:
                if label not in checked:
                    checked.add(label)
                    opened[(label, group)] = self._checked_runner(adapter, label, group, group_spec)
            cleans: dict[str, dict[str, Any]] = {}
            for label, model_hash, adapter, group, group_spec, todo in work:
                runner, clean = opened.pop((label, group), (None, None))
                if runner is None:  # A later group: the model's clean cell is known.
                    runner = self._runner(adapter, label, group, group_spec)
                    clean = _clean_for(cleans.get(label), adapter.select_layers(group_spec))
                try:
                    context = {"model": label, "model_hash": model_hash, "group": group}
                    clean = self._run_group(runner, todo, cells, context, clean)
                    cleans.setdefault(label, clean)
                finally:
                    runner.close()
        finally:
            for runner, _ in opened.values():
                runner.close()
        return skipped

    def _checked_runner(self, adapter, label: str, group: str, group_spec: FaultSpec):
        """(runner, clean rate-0 result or None) after the chance-level check."""
        runner = self._runner(adapter, label, group, group_spec)
        try:
            clean = None  # The check's clean cell is reused by rate-0 cells.
            if not self.allow_chance_accuracy:
                clean = check_not_chance(runner, self.labels, label)
        except BaseException:
            runner.close()
            raise
        return runner, clean

    def _run_group(self, runner, todo, cells, context, clean):
        """Runs one group's cells; returns its clean (rate 0) result, if one was made."""
        bar = (
            Progress(f"{context['model']}:{context['group']}", len(todo)) if self.progress else None
        )
        record = _Recorder(cells, context, bar, self.on_cell)
        if self.executor is None:
            return _run_cells(runner, todo, self.spec, record, clean)
        return _run_cells_elsewhere(runner, todo, record, clean)

    def _runner(self, adapter, label: str, group: str, group_spec: FaultSpec):
        if self.executor is not None:
            data = (self.images, self.labels, self.batch_size, self.transform)
            return self.executor.group(label, group, adapter, group_spec, data)
        return adapter.runner(
            group_spec, self.images, self.labels, self.batch_size, transform=self.transform
        )


class ChanceAccuracyError(ValueError):
    """A model is at chance level before any fault: its inputs, labels or data are wrong."""


def check_not_chance(runner: CellRunner, labels: np.ndarray, label: str) -> dict[str, Any]:
    """The clean (rate 0) cell; ChanceAccuracyError when it is within the 99.9% binomial bound
    of guessing (the most frequent class), which no trained classifier should be.

    A runner of the repaired protocol is checked on its model before any repair (a short
    repair may itself cost accuracy: that is a result, not a data error)."""
    result = runner.evaluate_cell(0.0, 0)
    unrepaired = runner.unrepaired_clean_accuracy()
    clean = result.get("fault_free_accuracy", result["accuracy"])  # A map's chip may be.
    check_accuracy(clean if unrepaired is None else unrepaired, labels, label)
    return result


def check_accuracy(clean: float, labels: np.ndarray, label: str) -> None:
    """ChanceAccuracyError when `clean` is within the 99.9% binomial bound of guessing the
    most frequent class of `labels`, which no trained classifier should be."""
    count = len(labels)
    guess = float(np.max(np.bincount(np.asarray(labels, np.int64)))) / count if count else 0.0
    bound = guess + 3.29 * (guess * (1 - guess) / max(count, 1)) ** 0.5
    if clean <= bound:
        raise ChanceAccuracyError(
            f"{label}: clean accuracy {100 * clean:.2f}% is at chance level (guessing the most "
            f"frequent class gives {100 * guess:.2f}%) before any fault. Likely causes: inputs "
            "scaled differently from training (a model with its own Rescaling layer wants "
            "--input_transform=raw), labels in another order or encoding, or the wrong "
            "dataset. Pass --allow_chance_accuracy to run anyway."
        )


def _clean_for(clean: dict[str, Any] | None, targets: list[str]) -> dict[str, Any] | None:
    """A model's clean (rate 0) cell as another group's: the same accuracy (nothing is
    faulted), that group's layers with 0 faults. Rate 0 is evaluated once per model."""
    if clean is None:
        return None
    return {**clean, "per_layer": {name: 0 for name in targets}, "faulted": 0}


def _check_plan(spec: FaultSpec, num_shards: int, executor: Any = None) -> None:
    if spec.target_margin and (num_shards > 1 or executor is not None):
        raise ValueError(
            "target_margin sizes trials sequentially; it cannot be combined with shards or "
            "a parallel executor."
        )


class _CellLog:
    """The cells of one campaign directory: read once, appended one record at a time.

    Cells belong to a model's content (its hash) and label: a relabelled model's cells
    are adopted under its new label (`adopt`), duplicates are left out with a message."""

    def __init__(self, path: Path | None, spec_key: str):
        self.path = path  # None: in memory only (the Python API without a directory).
        self.spec_key = spec_key
        records = read_cells(path) if path is not None else []
        self.records = unique_cells(records, str(path))
        self._finished_before = list(self.records)
        self.appended = 0
        self.before_first_append: Callable[[], None] | None = None
        if path is not None and len(self.records) != len(records):
            self._rewrite()

    def adopt(self, labels: dict[str, str]) -> None:
        """Relabels the cells of a model recorded under a label this run does not use for
        it (the same file passed as --model=new=PATH, or two labels swapped): they are
        the same measurements, so they resume under the new label, with a message."""
        pairs = {(label, model_hash) for label, model_hash in labels.items()}
        recorded = {(c["model"], c["model_hash"]) for c in self.records}
        renames = {}
        for old_label, model_hash in sorted(recorded - pairs):
            free = [
                label
                for label, current in labels.items()
                if current == model_hash and (label, model_hash) not in recorded
            ]
            if len(free) == 1:
                renames[(old_label, model_hash)] = free[0]
        if not renames:
            return
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
        self.records = [
            {**c, "model": renames.get((c["model"], c["model_hash"]), c["model"])}
            for c in self.records
        ]
        self._finished_before = list(self.records)
        self._rewrite()

    def _rewrite(self) -> None:
        if self.path is None:
            return
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

    def append(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            if not self.appended and self.before_first_append is not None:
                self.before_first_append()
            _append_cell(self.path, record)
        self.appended += 1
        self.records.append(record)


def _groups(adapter: CampaignModel, spec: FaultSpec, per_layer: bool):
    """('all', spec), or one (layer, spec restricted to it) per target layer."""
    if not per_layer:
        return [("all", spec)]
    names = adapter.select_layers(spec)
    return [(name, dataclasses.replace(spec, layers=(name,))) for name in names]


class _Recorder:
    """Appends one finished cell to the log and reports it (the single writer)."""

    def __init__(self, cells: _CellLog, context: dict[str, str], bar, on_cell):
        self.cells, self.context, self.bar, self.on_cell = cells, context, bar, on_cell
        self.completed = cells.accuracies_by_rate(
            context["model_hash"], context["model"], context["group"]
        )

    def __call__(self, result: dict[str, Any]) -> None:
        record = {**self.context, "spec_key": self.cells.spec_key, **result}
        self.cells.append(record)
        self.completed.setdefault(result["rate"], []).append(result["accuracy"])
        if self.on_cell:
            self.on_cell(record)
        if self.bar:
            self.bar.advance(
                1,
                f"rate={console.rate_text(result['rate'])} trial={result['trial']} "
                f"accuracy={result['accuracy']:.4f}",
            )


def _run_cells(
    runner: CellRunner,
    todo: list[tuple[float, int]],
    spec: FaultSpec,
    record: _Recorder,
    clean_result: dict[str, Any] | None = None,
) -> None:
    """Evaluates and records each missing cell of one model and group; `clean_result`, when
    given, is the rate-0 cell already evaluated."""
    for rate, trial in todo:
        if spec.target_margin and _margin_reached(record.completed.get(rate, []), spec):
            continue
        if rate == 0.0 and clean_result is not None:
            # Rate 0 faults nothing: every trial is the clean model.
            result = {**clean_result, "trial": trial}
        else:
            result = runner.evaluate_cell(rate, trial)
            if rate == 0.0:
                clean_result = result
        record(result)
    return clean_result


def _run_cells_elsewhere(
    runner, todo: list[tuple[float, int]], record: _Recorder, clean_result=None
) -> None:
    """The same cells through a parallel executor's group handle: rate-0 cells reuse one
    clean evaluation, the others are recorded as they complete (in any order)."""
    if any(rate == 0.0 for rate, _ in todo) and clean_result is None:
        clean_result = runner.evaluate_cell(0.0, 0)
    for rate, trial in todo:
        if rate == 0.0:
            record({**clean_result, "trial": trial})
    faulty = [(rate, trial) for rate, trial in todo if rate != 0.0]
    for rate, trial, result in runner.evaluate_cells(faulty):
        record({**result, "rate": rate, "trial": trial})
    return clean_result


def _margin_reached(accuracies: list[float], spec: FaultSpec) -> bool:
    if len(accuracies) < spec.min_trials:
        return False
    return confidence_interval(accuracies)[2] <= spec.target_margin


def _belongs(cell: dict[str, Any], meta: dict[str, Any]) -> bool:
    """A cell of this campaign: its spec, and a model under the label it has now."""
    return (
        cell["spec_key"] == meta["spec_key"]
        and meta["models"].get(cell["model"]) == cell["model_hash"]
    )


def campaign_cells(out_dir: str | Path, results: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells of `out_dir` that belong to `results` (its spec and models)."""
    cells = read_cells(Path(out_dir) / CELLS_FILE)
    return unique_cells([cell for cell in cells if _belongs(cell, results)], str(out_dir))


def write_outputs(
    out_dir: Path, cells: list[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Any]:
    """results.json, trials.csv and plots, each written atomically."""
    results = results_of(cells, meta)
    io_utils.write_json(out_dir / "results.json", results)
    _write_trials(out_dir / "trials.csv", results_cells(cells, meta))
    _write_plots(out_dir, results["summary"], meta["spec"])
    return results


def results_cells(cells: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells of this campaign's spec and models, each measurement once."""
    return unique_cells([c for c in cells if _belongs(c, meta)])


def results_of(cells: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Summaries, paired differences and verdict of a campaign's cells, with its metadata."""
    cells = results_cells(cells, meta)
    # One order whatever order the cells finished in (shards, Ray): sums, hence the last
    # bits of every statistic, do not depend on it.
    cells = sorted(cells, key=lambda c: (c["model"], c["group"], c["rate"], c["trial"]))
    summary = analysis.summarize(cells)
    margin = meta["spec"].get("target_margin") or 0.0
    if margin:
        for groups in summary.values():
            for entry in groups.values():
                for row in entry["per_rate"]:
                    row["margin_reached"] = bool(row["ci_half_width"] <= margin)
    labels = list(meta["models"])
    comparisons = {
        f"{a} - {b}": analysis.paired_differences(cells, a, b)
        for i, a in enumerate(labels)
        for b in labels[i + 1 :]
    }
    results = {
        "verdict": analysis.verdict(cells) if len(labels) > 1 else None,
        "tolerance_verdict": analysis.tolerance_verdict(cells, meta.get("chance_accuracy")),
        **meta,
        "versions": io_utils.versions(),
        "summary": {label: summary[label] for label in labels if label in summary},
        "paired_differences": comparisons,
        "interval_method": analysis.INTERVAL_METHOD,
    }
    return results


def _write_trials(path: Path, cells: list[dict[str, Any]]) -> None:
    with io_utils.atomic_path(path) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(_TRIAL_COLUMNS)
            for c in sorted(cells, key=lambda c: (c["model"], c["group"], c["rate"], c["trial"])):
                row = [c[name] for name in _TRIAL_COLUMNS]
                row[-1] = json.dumps(c["per_layer"])
                writer.writerow(row)


def _write_plots(out_dir: Path, summary: dict[str, Any], spec: dict[str, Any]) -> None:
    try:
        from aftt_tf.campaigns import plots
    except ImportError:  # matplotlib is optional on edge devices.
        logging.warning("matplotlib is not installed: no plots in %s", out_dir)
        return
    title = _title(spec)
    if any("all" in groups for groups in summary.values()):  # --per_layer has no 'all'.
        plots.accuracy_vs_rate(summary, out_dir / "accuracy_vs_rate", title=title)
    if any(group != "all" for groups in summary.values() for group in groups):
        plots.layer_sensitivity(summary, out_dir / "layer_sensitivity", title=title)


def _title(spec: dict[str, Any]) -> str:
    return f"{spec['kind']} faults, scope={spec['scope']}, seed={spec['seed']}"


def merge_shards(shard_dirs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Combines the cells of shard directories (same spec and models) into one result."""
    metas = _shard_metas(shard_dirs)
    spec = FaultSpec.from_dict(metas[0]["spec"])
    shard_records = [
        record
        for directory, meta in zip(shard_dirs, metas, strict=True)
        for record in _complete_shard(Path(directory), meta, spec)
    ]
    out_dir = Path(out_dir)
    check_campaign_directory(out_dir, spec)
    meta = {
        **metas[0],
        "num_shards": 1,
        "shard_index": 0,
        "merged_from": [str(d) for d in shard_dirs],
    }
    with io_utils.DirectoryLock(out_dir / io_utils.LOCK_FILE, str(out_dir)):
        check_campaign_directory(out_dir, spec)
        # A merge only adds: cells already in --out (other rates, trials or models of the
        # same campaign) are kept; a cell measured twice must agree.
        existing = read_cells(out_dir / CELLS_FILE) if (out_dir / CELLS_FILE).exists() else []
        merged = {cell_key(c): c for c in unique_cells(existing, str(out_dir))}
        for cell in shard_records:
            earlier = merged.setdefault(cell_key(cell), cell)
            if earlier["accuracy"] != cell["accuracy"]:
                raise ValueError(
                    f"{out_dir} already holds {cell['model']} [{cell['group']}] rate "
                    f"{cell['rate']:g} trial {cell['trial']} with accuracy {earlier['accuracy']}, "
                    f"but a shard has {cell['accuracy']}: they are not the same campaign. "
                    "Merge into another --out."
                )
        ordered = sorted(
            merged.values(), key=lambda c: (c["model"], c["group"], c["rate"], c["trial"])
        )
        _claim(out_dir, spec)
        with io_utils.atomic_path(out_dir / CELLS_FILE) as temporary:
            temporary.write_text(
                "".join(io_utils.strict_json(c, sort_keys=True) + "\n" for c in ordered)
            )
        return write_outputs(out_dir, ordered, meta)


def _shard_metas(shard_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """The shard.json of every shard; ValueError unless they are all the shards of one
    campaign."""
    metas = []
    for directory in shard_dirs:
        path = Path(directory) / "shard.json"
        if not path.exists():
            raise FileNotFoundError(f"{directory} is not a shard output (no shard.json).")
        metas.append(io_utils.read_json(path))
    keys = {
        (m["spec_key"], json.dumps(m["models"], sort_keys=True), m["num_shards"]) for m in metas
    }
    if len(keys) != 1:
        raise ValueError(
            "Shards come from different specs, models or shard counts; merge only one campaign."
        )
    if sorted(m["shard_index"] for m in metas) != list(range(metas[0]["num_shards"])):
        raise ValueError(
            f"Expected shards 0..{metas[0]['num_shards'] - 1}, got {sorted(m['shard_index'] for m in metas)}."
        )
    return metas


def _complete_shard(directory: Path, meta: dict[str, Any], spec: FaultSpec) -> list[dict]:
    """The cells of a finished shard; ValueError for a shard that was interrupted (a torn
    last record, or fewer cells than its share of the plan): merging it would report
    fewer trials without a word."""
    path = directory / CELLS_FILE
    content = _read_no_follow(path) if path.exists() else b""
    if content and not content.endswith(b"\n"):
        raise ValueError(
            f"Shard {directory} ends in a torn record (it was interrupted); run the shard "
            "again with the same flags to finish it, then merge."
        )
    cells = unique_cells([c for c in read_cells(path) if _belongs(c, meta)], str(directory))
    planned = set(shard_cells(cell_plan(spec), meta["num_shards"], meta["shard_index"]))
    by_group: dict[tuple[str, str], set] = {}
    for cell in cells:
        by_group.setdefault((cell["model"], cell["group"]), set()).add(
            (cell["rate"], cell["trial"])
        )
    for label in meta["models"]:
        groups = {group: done for (model, group), done in by_group.items() if model == label}
        missing = {group: len(planned - done) for group, done in groups.items()}
        if planned and (not groups or any(missing.values())):
            count = sum(missing.values()) if groups else len(planned)
            raise ValueError(
                f"Shard {directory} is missing {count} of its cells of {label!r} (it was "
                "interrupted or is still running); run the shard again with the same flags "
                "to finish it, then merge."
            )
    return cells
