"""What a finished campaign writes: results.json (`analysis` statistics), trials.csv and
the plots, from the cells that belong to its spec and models.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from aftt_tf import io_utils
from aftt_tf.campaigns import analysis
from aftt_tf.campaigns.cell_log import CELLS_FILE, read_cells, unique_cells

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


def belongs(cell: dict[str, Any], meta: dict[str, Any]) -> bool:
    """A cell of this campaign: its spec, and a model under the label it has now."""
    return (
        cell["spec_key"] == meta["spec_key"]
        and meta["models"].get(cell["model"]) == cell["model_hash"]
    )


def campaign_cells(out_dir: str | Path, results: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells of `out_dir` that belong to `results` (its spec and models)."""
    cells = read_cells(Path(out_dir) / CELLS_FILE)
    return unique_cells([cell for cell in cells if belongs(cell, results)], str(out_dir))


def finished(
    out_dir: Path | None, cells: list[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Any]:
    """What a run returns and writes: in memory (no `out_dir`), the results with their
    cells; a shard, its shard.json (the merge computes results); else `write_outputs`."""
    if out_dir is None:
        return {**results_of(cells, meta), "cells": cells}
    if meta["num_shards"] > 1:
        io_utils.write_json(out_dir / "shard.json", meta)
        return meta
    return write_outputs(out_dir, cells, meta)


def write_outputs(
    out_dir: Path, cells: list[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Any]:
    """results.json, the plots and trials.csv, each written atomically."""
    results = results_of(cells, meta)
    io_utils.write_json(out_dir / "results.json", results)
    _write_plots(out_dir, results["summary"], meta["spec"])
    _write_trials(out_dir / "trials.csv", results_cells(cells, meta))
    return results


def results_cells(cells: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells of this campaign's spec and models, each measurement once."""
    return unique_cells([c for c in cells if belongs(c, meta)])


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
