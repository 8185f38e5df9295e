"""The campaign engine: fault kind x rates x trials over a test set, resumable and shardable.

The engine is independent of the runtime: a runner (Keras: `keras_runner`, TFLite:
`tflite_runner`, picked by `runtimes`) evaluates one (rate, trial) cell; this module
plans the cells, skips finished ones (resume), splits them into shards, merges shards
and writes results.json, trials.csv and plots with the statistics of `analysis`. It
imports no TensorFlow, so .tflite campaigns run on devices with only numpy and
ai-edge-litert.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf.campaigns import cell_log, console, outputs, shards
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
    adapters = {label: as_campaign_model(model) for label, model in models.items()}
    transform = check_inputs(adapters, spec, images, labels, transform)
    data = data_identity(images, labels, transform, data_description)
    meta = _meta(spec, adapters, data, num_shards, shard_index)
    meta["chance_accuracy"] = float(np.bincount(labels.astype(np.int64)).max()) / len(labels)
    if rate_choice is not None:  # How the rates were chosen (--rates=cliff), recorded.
        meta["rate_choice"] = rate_choice
    run = _Run(spec, images, labels, batch_size, transform, progress, on_cell)
    run.allow_chance_accuracy = allow_chance_accuracy
    run.executor = executor
    plan = shards.shard_cells(shards.cell_plan(spec), num_shards, shard_index)
    out_dir = None if out_dir is None else Path(out_dir)
    with cell_log.opened(out_dir, meta) as cells:
        meta["skipped_cells"] = run.models(adapters, meta["models"], plan, cells, per_layer)
        return outputs.finished(out_dir, cells.records, meta)


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
    adapters = {label: as_campaign_model(model) for label, model in models.items()}
    shapes = [tuple(adapter.input_shape) for adapter in adapters.values()]
    resolved = inputs.prepared(images, labels, transform, shapes)
    _check_models(adapters, spec)
    return resolved


def _check_models(adapters: dict, spec: FaultSpec) -> None:
    """Every model has one (batch, classes) output; a bit position means the same bit in
    every model."""
    for label, adapter in adapters.items():
        shapes = adapter.output_shapes
        if shapes is not None:
            check_classifier_outputs(shapes, label)
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


def _groups(adapter: CampaignModel, spec: FaultSpec, per_layer: bool):
    """('all', spec), or one (layer, spec restricted to it) per target layer."""
    if not per_layer:
        return [("all", spec)]
    names = adapter.select_layers(spec)
    return [(name, dataclasses.replace(spec, layers=(name,))) for name in names]


class _Recorder:
    """Appends one finished cell to the log and reports it (the single writer)."""

    def __init__(self, cells: cell_log.CellLog, context: dict[str, str], bar, on_cell):
        self.cells, self.context, self.bar, self.on_cell = cells, context, bar, on_cell
        self.completed = cells.accuracies_by_rate(
            context["model_hash"], context["model"], context["group"]
        )

    def __call__(self, result: dict[str, Any]) -> None:
        record = {**self.context, "spec_key": self.cells.spec_key, **result}
        self.cells.add(record)
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
