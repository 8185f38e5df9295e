"""Monte-Carlo fault campaigns: fault kind x rates x trials over a full test split.

The engine is independent of the runtime: a *runner* (Keras: `keras_runner`,
TFLite: `tflite_runner`) evaluates one (rate, trial) cell; this module plans the
cells, skips finished ones (resume), splits them into shards, merges shards and
summarises results with t-based 95% confidence intervals and paired differences
between models. It imports no TensorFlow, so .tflite campaigns run on devices with
only numpy and ai-edge-litert.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import io_utils
from aftt_tf.faults import kinds, sampling
from aftt_tf.faults.statistics import confidence_interval

CELLS_FILE = "cells.jsonl"


@dataclasses.dataclass(frozen=True)
class FaultSpec:
    """One seeded fault campaign; the same spec gives the same fault positions on any
    model with the same layer names and shapes.

    Attributes:
        kind: 'weight', 'filter', 'node', 'stuck_value' or 'bit'.
        rates: fractions of each targeted layer's elements (filters, nodes) faulted.
        trials: trials per rate (the maximum when target_margin > 0).
        seed: campaign seed.
        scope: 'all', 'extractor' or 'head'.
        layers: restrict to these layer names (empty: every layer the kind can take).
        sampling: 'exact' (round(rate*n) distinct elements) or 'bernoulli'.
        include_bias: fault biases too (parameter kinds).
        include_output_nodes: allow node faults in the output layer.
        stuck_value: value of 'stuck_value' faults; None: the layer's max |w|.
        bit_position: float32 bit for 'bit' faults (0..31), -1: random per element.
        bit_mode: 'flip', 'stuck_at_1' or 'stuck_at_0'.
        target_margin: > 0 sizes trials per rate sequentially until the 95% CI
            half-width of the accuracy is at most this (statistical fault injection,
            Leveugle et al., DATE 2009), between `min_trials` and `trials`.
        min_trials: first trials before the margin is checked.
    """

    kind: str = "weight"
    rates: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    trials: int = 30
    seed: int = 0
    scope: str = "all"
    layers: tuple[str, ...] = ()
    sampling: str = "exact"
    include_bias: bool = False
    include_output_nodes: bool = False
    stuck_value: float | None = None
    bit_position: int = -1
    bit_mode: str = "flip"
    target_margin: float = 0.0
    min_trials: int = 5

    def validate(self) -> None:
        if self.kind not in kinds.FAULT_KINDS:
            raise ValueError(
                f"Unknown fault kind {self.kind!r}; expected one of {', '.join(kinds.FAULT_KINDS)}."
            )
        if not self.rates:
            raise ValueError("rates is empty; give at least one fault rate in [0, 1].")
        for rate in self.rates:
            if not (isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0):
                raise ValueError(
                    f"Fault rate {rate!r} is outside [0, 1]; rates are fractions (0.7 = 70%)."
                )
        if len(set(self.rates)) != len(self.rates):
            raise ValueError(f"rates contain duplicates: {list(self.rates)}.")
        if not isinstance(self.trials, int) or self.trials < 1:
            raise ValueError(f"trials must be an integer >= 1, received {self.trials!r}.")
        if self.scope not in kinds.SCOPES:
            raise ValueError(
                f"Unknown scope {self.scope!r}; expected one of {', '.join(kinds.SCOPES)}."
            )
        if self.sampling not in sampling.SAMPLINGS:
            raise ValueError(
                f"Unknown sampling {self.sampling!r}; expected one of {', '.join(sampling.SAMPLINGS)}."
            )
        if self.bit_mode not in sampling.BIT_MODES:
            raise ValueError(
                f"Unknown bit_mode {self.bit_mode!r}; expected one of {', '.join(sampling.BIT_MODES)}."
            )
        if not -1 <= self.bit_position <= 31:
            raise ValueError(
                f"bit_position must be in 0..31 (float32) or -1 (random), received {self.bit_position}."
            )
        if self.target_margin < 0 or (self.target_margin and self.min_trials < 2):
            raise ValueError("target_margin must be >= 0 and min_trials >= 2 when it is used.")

    @property
    def value_fault(self) -> sampling.ValueFault:
        if self.kind == "stuck_value":
            return sampling.ValueFault("value", value=self.stuck_value)
        if self.kind == "bit":
            return sampling.ValueFault(
                "bit", bit_position=self.bit_position, bit_mode=self.bit_mode
            )
        return sampling.ValueFault("zero")

    def as_dict(self) -> dict[str, Any]:
        result = dataclasses.asdict(self)
        result["rates"] = [float(r) for r in self.rates]
        result["layers"] = list(self.layers)
        return result

    def key(self) -> str:
        """Hash of everything that determines the cells' values (not how many trials run)."""
        values = self.as_dict()
        for name in ("trials", "rates", "target_margin", "min_trials"):
            values.pop(name)
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


class _Progress:
    """One updating line on a terminal; in logs, a line every 10% of the cells."""

    def __init__(self, total: int, label: str, stream=sys.stderr):
        self.total, self.label, self.stream = total, label, stream
        self.done, self.start = 0, time.time()
        self.interactive = hasattr(stream, "isatty") and stream.isatty()

    def update(self, rate: float, trial: int, accuracy: float) -> None:
        self.done += 1
        elapsed = time.time() - self.start
        remaining = elapsed / self.done * (self.total - self.done)
        line = (
            f"{self.label} rate={rate:.3f} trial={trial} accuracy={accuracy:.4f} "
            f"[{self.done}/{self.total} cells, {elapsed:.0f}s, ~{remaining:.0f}s left]"
        )
        if self.interactive:
            self.stream.write(f"\r{line}   " + ("\n" if self.done == self.total else ""))
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            self.stream.write(line + "\n")
        self.stream.flush()


def as_campaign_model(model: Any):
    """Wraps a model for the engine: `fingerprint()`, `select_layers(spec)`, `runner(...)`.

    TFLite models (`tflite_runner.TFLiteModel`) already have that interface; anything
    else is taken as a Keras model (TensorFlow is imported only then).
    """
    if all(hasattr(model, name) for name in ("fingerprint", "select_layers", "runner")):
        return model
    from aftt_tf.faults import keras_runner

    return keras_runner.KerasModel(model)


def load_campaign_model(path: str | Path):
    """A campaign model from a file: `.tflite` (no TensorFlow needed) or `.keras`."""
    path = Path(path)
    if path.suffix == ".tflite":
        from aftt_tf.faults import tflite_runner

        return tflite_runner.TFLiteModel.load(path)
    from aftt_tf.faults import keras_runner

    return keras_runner.KerasModel(keras_runner.load_model(path))


def cell_result(rate: float, trial: int, accuracy: float, counts: dict[str, Any]) -> dict[str, Any]:
    """One cell's record, the same for every runtime."""
    return {
        "rate": float(rate),
        "trial": int(trial),
        "accuracy": float(accuracy),
        "realized_fraction": counts["faulted"] / counts["elements"] if counts["elements"] else 0.0,
        "faulted": counts["faulted"],
        "per_layer": {name: value["faulted"] for name, value in counts["per_layer"].items()},
    }


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


def read_cells(path: Path) -> list[dict[str, Any]]:
    """Completed cells of a cells.jsonl; an incomplete last line (crash mid-write) is ignored."""
    if not path.exists():
        return []
    cells = []
    for line in path.read_text().splitlines():
        try:
            cells.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return cells


def _append_cell(path: Path, cell: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(cell, sort_keys=True) + "\n")
        handle.flush()


def run_campaign(
    models: dict[str, Any],
    spec: FaultSpec,
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: str | Path,
    batch_size: int = 2000,
    num_shards: int = 1,
    shard_index: int = 0,
    per_layer: bool = False,
    progress: bool = True,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) a campaign over several models; writes outputs into `out_dir`.

    Cells already in `out_dir/cells.jsonl` for the same model fingerprint and spec
    key are skipped. With `per_layer`, each target layer is faulted alone (group =
    layer name) for a sensitivity table.

    Returns:
        The results dictionary also written to results.json (when not sharded).
    """
    spec.validate()
    if spec.target_margin and num_shards > 1:
        raise ValueError(
            "target_margin sizes trials sequentially; it cannot be combined with shards."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells_path = out_dir / CELLS_FILE
    existing = read_cells(cells_path)
    done = {(c["model_hash"], c["spec_key"], c["group"], c["rate"], c["trial"]) for c in existing}
    spec_key = spec.key()
    plan = shard_cells(cell_plan(spec), num_shards, shard_index)
    adapters = {label: as_campaign_model(model) for label, model in models.items()}
    fingerprints = {label: adapter.fingerprint() for label, adapter in adapters.items()}
    skipped = 0
    for label, adapter in adapters.items():
        groups = [("all", spec)]
        if per_layer:
            names = adapter.select_layers(spec)
            groups = [(name, dataclasses.replace(spec, layers=(name,))) for name in names]
        for group, group_spec in groups:
            todo = [c for c in plan if (fingerprints[label], spec_key, group, *c) not in done]
            skipped += len(plan) - len(todo)
            if not todo:
                continue
            runner = adapter.runner(group_spec, images, labels, batch_size)
            bar = _Progress(len(todo), f"[{label}:{group}]") if progress else None
            completed_by_rate: dict[float, list[float]] = {}
            for cell in existing:
                if (cell["model_hash"], cell["spec_key"], cell["group"]) == (
                    fingerprints[label],
                    spec_key,
                    group,
                ):
                    completed_by_rate.setdefault(cell["rate"], []).append(cell["accuracy"])
            clean_result = None
            for rate, trial in todo:
                if spec.target_margin and _margin_reached(completed_by_rate.get(rate, []), spec):
                    continue
                if rate == 0.0 and clean_result is not None:
                    # Rate 0 faults nothing: every trial is the clean model.
                    result = {**clean_result, "trial": trial}
                else:
                    result = runner.evaluate_cell(rate, trial)
                    if rate == 0.0:
                        clean_result = result
                record = {
                    "model": label,
                    "model_hash": fingerprints[label],
                    "spec_key": spec_key,
                    "group": group,
                    **result,
                }
                _append_cell(cells_path, record)
                completed_by_rate.setdefault(rate, []).append(result["accuracy"])
                existing.append(record)
                if on_cell:
                    on_cell(record)
                if bar:
                    bar.update(rate, trial, result["accuracy"])
    meta = {
        "spec": spec.as_dict(),
        "spec_key": spec_key,
        "models": fingerprints,
        "skipped_cells": skipped,
        "num_shards": num_shards,
        "shard_index": shard_index,
    }
    if num_shards > 1:
        io_utils.write_json(out_dir / "shard.json", meta)
        return meta
    return write_outputs(out_dir, existing, meta)


def _margin_reached(accuracies: list[float], spec: FaultSpec) -> bool:
    if len(accuracies) < spec.min_trials:
        return False
    return confidence_interval(accuracies)[2] <= spec.target_margin


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model and group: per-rate statistics, drop from clean accuracy, area under the curve."""
    summary: dict[str, Any] = {}
    keys = sorted({(c["model"], c["group"]) for c in cells})
    for model, group in keys:
        own = [c for c in cells if c["model"] == model and c["group"] == group]
        rows = []
        for rate in sorted({c["rate"] for c in own}):
            accuracies = [c["accuracy"] for c in own if c["rate"] == rate]
            mean, std, half_width = confidence_interval(accuracies)
            rows.append(
                {
                    "rate": rate,
                    "trials": len(accuracies),
                    "mean": mean,
                    "std": std,
                    "ci_low": mean - half_width,
                    "ci_high": mean + half_width,
                    "realized_fraction": float(
                        np.mean([c["realized_fraction"] for c in own if c["rate"] == rate])
                    ),
                }
            )
        clean = next((row["mean"] for row in rows if row["rate"] == 0.0), None)
        for row in rows:
            row["drop_from_clean"] = None if clean is None else clean - row["mean"]
        rates = np.array([row["rate"] for row in rows])
        means = np.array([row["mean"] for row in rows])
        span = rates.max() - rates.min() if len(rates) > 1 else 0.0
        auc = float(np.trapezoid(means, rates) / span) if span > 0 else float(means[0])
        summary.setdefault(model, {})[group] = {
            "per_rate": rows,
            "clean_accuracy": clean,
            "normalized_auc": auc,
        }
    return summary


def paired_differences(
    cells: list[dict[str, Any]], model_a: str, model_b: str, group: str = "all"
) -> list[dict]:
    """Per rate: mean of accuracy(a) - accuracy(b) over trials with identical faults, with 95% CI."""
    by_key = {(c["model"], c["group"], c["rate"], c["trial"]): c["accuracy"] for c in cells}
    rows = []
    for rate in sorted({c["rate"] for c in cells if c["model"] == model_a and c["group"] == group}):
        trials = sorted(
            t
            for (m, g, r, t) in by_key
            if m == model_a and g == group and r == rate and (model_b, group, rate, t) in by_key
        )
        diffs = [
            by_key[(model_a, group, rate, t)] - by_key[(model_b, group, rate, t)] for t in trials
        ]
        if not diffs:
            continue
        mean, std, half_width = confidence_interval(diffs)
        rows.append(
            {
                "rate": rate,
                "pairs": len(diffs),
                "mean_difference": mean,
                "std": std,
                "ci_low": mean - half_width,
                "ci_high": mean + half_width,
            }
        )
    return rows


def _per_trial_auc(cells: list[dict[str, Any]], model: str, group: str) -> dict[int, float]:
    """Normalised area under each trial's accuracy-vs-rate curve (trials present at every rate)."""
    own = [c for c in cells if c["model"] == model and c["group"] == group]
    rates = sorted({c["rate"] for c in own})
    by_key = {(c["rate"], c["trial"]): c["accuracy"] for c in own}
    trials = sorted({c["trial"] for c in own if all((r, c["trial"]) in by_key for r in rates)})
    span = rates[-1] - rates[0] if len(rates) > 1 else 0.0
    result = {}
    for trial in trials:
        curve = np.array([by_key[(rate, trial)] for rate in rates])
        result[trial] = float(np.trapezoid(curve, rates) / span) if span else float(curve[0])
    return result


def paired_auc_difference(
    cells: list[dict[str, Any]], model_a: str, model_b: str, group: str = "all"
) -> dict[str, Any]:
    """Mean of AUC(a) - AUC(b) over trials with identical faults, with its 95% CI."""
    auc_a = _per_trial_auc(cells, model_a, group)
    auc_b = _per_trial_auc(cells, model_b, group)
    shared = sorted(set(auc_a) & set(auc_b))
    mean, _, half_width = confidence_interval([auc_a[t] - auc_b[t] for t in shared])
    return {
        "model_a": model_a,
        "model_b": model_b,
        "pairs": len(shared),
        "mean_difference": mean,
        "ci_low": mean - half_width,
        "ci_high": mean + half_width,
    }


def campaign_cells(out_dir: str | Path, results: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells of `out_dir` that belong to `results` (its spec and models)."""
    hashes = set(results["models"].values())
    return [
        cell
        for cell in read_cells(Path(out_dir) / CELLS_FILE)
        if cell["spec_key"] == results["spec_key"] and cell["model_hash"] in hashes
    ]


def verdict(cells: list[dict[str, Any]], group: str = "all") -> dict[str, Any]:
    """The most fault-tolerant model by normalised AUC, with the paired difference to the
    runner-up and its 95% CI; a tie when that interval contains 0.

    Trials of every model share fault positions, so the per-trial AUCs are paired.
    """
    models = sorted({c["model"] for c in cells if c["group"] == group})
    aucs = {model: _per_trial_auc(cells, model, group) for model in models}
    means = {
        model: float(np.mean(list(values.values()))) for model, values in aucs.items() if values
    }
    if len(means) < 2:
        return {
            "group": group,
            "best": next(iter(means), None),
            "text": "only one model: no comparison",
        }
    ranked = sorted(means, key=means.get, reverse=True)
    best, runner_up = ranked[0], ranked[1]
    shared = sorted(set(aucs[best]) & set(aucs[runner_up]))
    mean, _, half_width = confidence_interval([aucs[best][t] - aucs[runner_up][t] for t in shared])
    low, high = mean - half_width, mean + half_width
    tie = low <= 0.0
    interval = f"{100 * mean:+.2f} points [{100 * low:+.2f}, {100 * high:+.2f}]"
    if tie:
        text = (
            f"no clear winner: {best} and {runner_up} tie within the 95% CI of the paired "
            f"difference in normalized AUC ({interval}, {len(shared)} trials)"
        )
    else:
        text = (
            f"most tolerant: {best}, ahead of {runner_up} by {interval} normalized AUC "
            f"(paired, 95% CI, {len(shared)} trials)"
        )
    return {
        "group": group,
        "best": None if tie else best,
        "tie": tie,
        "runner_up": runner_up,
        "mean_difference": mean,
        "ci_low": low,
        "ci_high": high,
        "ranking": ranked,
        "text": text,
    }


def write_outputs(
    out_dir: Path, cells: list[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Any]:
    """results.json, trials.csv and plots, each written atomically."""
    spec_key = meta["spec_key"]
    hashes = set(meta["models"].values())
    cells = [c for c in cells if c["spec_key"] == spec_key and c["model_hash"] in hashes]
    summary = summarize(cells)
    labels = list(meta["models"])
    comparisons = {
        f"{a} - {b}": paired_differences(cells, a, b)
        for i, a in enumerate(labels)
        for b in labels[i + 1 :]
    }
    results = {
        "verdict": verdict(cells) if len(labels) > 1 else None,
        **meta,
        "versions": io_utils.versions(),
        "summary": summary,
        "paired_differences": comparisons,
    }
    io_utils.write_json(out_dir / "results.json", results)
    with io_utils.atomic_path(out_dir / "trials.csv") as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                [
                    "model",
                    "group",
                    "rate",
                    "trial",
                    "accuracy",
                    "realized_fraction",
                    "faulted",
                    "per_layer",
                ]
            )
            for c in sorted(cells, key=lambda c: (c["model"], c["group"], c["rate"], c["trial"])):
                writer.writerow(
                    [
                        c["model"],
                        c["group"],
                        c["rate"],
                        c["trial"],
                        c["accuracy"],
                        c["realized_fraction"],
                        c["faulted"],
                        json.dumps(c["per_layer"]),
                    ]
                )
    try:
        from aftt_tf.faults import plots
    except ImportError:  # matplotlib is optional on edge devices.
        logging.warning("matplotlib is not installed: no plots in %s", out_dir)
    else:
        plots.accuracy_vs_rate(summary, out_dir / "accuracy_vs_rate", title=_title(meta["spec"]))
        if any(group != "all" for groups in summary.values() for group in groups):
            plots.layer_sensitivity(
                summary, out_dir / "layer_sensitivity", title=_title(meta["spec"])
            )
    return results


def _title(spec: dict[str, Any]) -> str:
    return f"{spec['kind']} faults, scope={spec['scope']}, seed={spec['seed']}"


def merge_shards(shard_dirs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Combines the cells of shard directories (same spec and models) into one result."""
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
    cells = {}
    for directory in shard_dirs:
        for cell in read_cells(Path(directory) / CELLS_FILE):
            cells[
                (cell["model_hash"], cell["group"], cell["rate"], cell["trial"], cell["spec_key"])
            ] = cell
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged = sorted(cells.values(), key=lambda c: (c["model"], c["group"], c["rate"], c["trial"]))
    with io_utils.atomic_path(out_dir / CELLS_FILE) as temporary:
        temporary.write_text("".join(json.dumps(c, sort_keys=True) + "\n" for c in merged))
    meta = {
        **metas[0],
        "num_shards": 1,
        "shard_index": 0,
        "merged_from": [str(d) for d in shard_dirs],
    }
    return write_outputs(out_dir, merged, meta)
