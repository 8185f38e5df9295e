"""int8 against float32 under the same faults, per int8 mode (aftt-reproduce --int8_modes),
and where the int8 files lose their levels (--per_layer_stats).

Every int8 campaign draws the fault positions of the Keras float32 campaign of the same
kind and scope, so int8 - float32 is paired per trial. A mode keeps its tolerance when
that difference stays near 0 up to 60% faults; it qualifies only if its clean int8
accuracy is within 0.5 points of float32. No TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf.campaigns import outputs
from aftt_tf.reproduce import document
from aftt_tf.reproduce.config import (
    RUNTIME_NAMES,
    ReproduceConfig,
    campaign_name,
    int8_runtime,
)
from aftt_tf.reproduce.protocols import accuracies_at, paired

DASH = "–"
# Rates over which a mode's gap to float32 is judged (the goal: up to 60%).
JUDGED_UP_TO = 0.6
CLEAN_TOLERANCE = 0.005


def _cells(out: Path, name: str, campaigns: dict[str, Any]) -> list[dict[str, Any]]:
    result = campaigns.get(name) or {}
    return outputs.campaign_cells(out / name, result) if "summary" in result else []


def mode_gaps(
    keras_cells: list[dict], int8_cells: list[dict], methods: list[str]
) -> dict[str, Any]:
    """Per method and rate: paired int8 - float32 accuracy; and the mode's summary."""
    rates = sorted({c["rate"] for c in int8_cells} & {c["rate"] for c in keras_cells})
    per_method: dict[str, Any] = {}
    for rate in rates:
        floats, ints = accuracies_at(keras_cells, rate), accuracies_at(int8_cells, rate)
        for method in methods:
            if method in floats and method in ints:
                per_method.setdefault(method, {})[f"{rate:g}"] = paired(
                    ints[method], floats[method]
                )
    judged = [
        row["mean"]
        for rows in per_method.values()
        for rate, row in rows.items()
        if 0 < float(rate) <= JUDGED_UP_TO + 1e-9
    ]
    clean = {m: rows["0"]["mean"] for m, rows in per_method.items() if "0" in rows}
    worst = min(
        (
            (row["mean"], method, float(rate))
            for method, rows in per_method.items()
            for rate, row in rows.items()
            if float(rate) <= JUDGED_UP_TO + 1e-9
        ),
        default=None,
    )
    return {
        "per_method": per_method,
        "mean_abs_gap": float(np.mean(np.abs(judged))) if judged else None,
        "worst_gap": None
        if worst is None
        else {"gap": worst[0], "method": worst[1], "rate": worst[2]},
        "clean_gap": clean,
        # Clean int8 may beat float32; it may not lose more than the tolerance.
        "clean_within_tolerance": bool(clean)
        and all(gap >= -CLEAN_TOLERANCE - 1e-12 for gap in clean.values()),
    }


def comparison(
    config: ReproduceConfig, campaigns: dict[str, Any], methods: list[str]
) -> tuple[list[document.Block], list[dict[str, Any]], list[str]]:
    """Blocks, results.json entries and verdict lines of int8 vs float32 per mode."""
    if "int8" not in config.runtimes or "keras" not in config.runtimes:
        return [], [], []
    out = Path(config.out) / "campaigns"
    blocks, entries, lines = [], [], []
    for kind in config.faults:
        for scope in config.scopes:
            keras_cells = _cells(
                out, campaign_name(kind, scope, "keras", config.variant), campaigns
            )
            if not keras_cells:
                continue
            modes = {}
            for mode in config.int8_modes:
                name = campaign_name(kind, scope, int8_runtime(mode), config.variant)
                int8_cells = _cells(out, name, campaigns)
                if int8_cells:
                    modes[mode] = mode_gaps(keras_cells, int8_cells, methods)
            if not modes:
                continue
            entry = {"kind": kind, "scope": scope, "modes": modes, "best_mode": _best(modes)}
            entries.append(entry)
            lines.append(_line(entry))
            blocks += _table(entry, methods)
    if blocks:
        blocks[:0] = [
            document.Heading("int8 vs float32 under the same faults, per int8 mode"),
            document.Paragraph(
                "Paired per trial: int8 accuracy minus Keras float32 accuracy with identical "
                f"fault positions (points, 95% CI). A mode qualifies when its clean int8 "
                f"accuracy is at most {100 * CLEAN_TOLERANCE:g} points below float32 for every "
                f"method; the best qualifying mode has the smallest mean |gap| over rates in "
                f"(0, {100 * JUDGED_UP_TO:g}%]."
            ),
        ]
    return blocks, entries, lines


def _best(modes: dict[str, Any]) -> str | None:
    qualifying = {
        mode: values["mean_abs_gap"]
        for mode, values in modes.items()
        if values["clean_within_tolerance"] and values["mean_abs_gap"] is not None
    }
    return min(qualifying, key=qualifying.get) if qualifying else None


def _mode_text(mode: str, values: dict[str, Any]) -> str:
    text = f"{mode}: mean |gap| {100 * (values['mean_abs_gap'] or 0):.2f}"
    worst = values["worst_gap"]
    if worst:
        text += f", worst {100 * worst['gap']:+.2f} ({worst['method']} at {100 * worst['rate']:g}%)"
    if not values["clean_within_tolerance"]:
        gaps = ", ".join(f"{m} {100 * g:+.2f}" for m, g in values["clean_gap"].items())
        text += f", loses more than {100 * CLEAN_TOLERANCE:g} points of clean accuracy ({gaps})"
    return text


def _line(entry: dict[str, Any]) -> str:
    head = f"**{entry['kind']} faults, scope {entry['scope']}, int8 vs float32**: "
    best = entry["best_mode"]
    if len(entry["modes"]) == 1:
        verdict = "one int8 mode"
    elif best:
        verdict = f"{best} keeps int8 closest to float32"
    else:
        verdict = (
            f"every int8 mode loses more than {100 * CLEAN_TOLERANCE:g} points of clean "
            "accuracy against float32"
        )
    details = "; ".join(_mode_text(mode, values) for mode, values in entry["modes"].items())
    return f"{head}{verdict} (points, rates up to {100 * JUDGED_UP_TO:g}%: {details})."


def _table(entry: dict[str, Any], methods: list[str]) -> list[document.Block]:
    rates = sorted(
        {
            float(r)
            for values in entry["modes"].values()
            for rows in values["per_method"].values()
            for r in rows
        }
    )
    rows = []
    for mode, values in entry["modes"].items():
        for method in methods:
            cells = values["per_method"].get(method, {})
            row = [method, RUNTIME_NAMES[int8_runtime(mode)]]
            for rate in rates:
                gap = cells.get(f"{rate:g}")
                row.append(
                    DASH
                    if gap is None
                    else f"{100 * gap['mean']:+.2f} [{100 * gap['ci_low']:+.2f}, {100 * gap['ci_high']:+.2f}]"
                )
            rows.append(row)
    return [
        document.Heading(f"{entry['kind']} faults, scope {entry['scope']}: int8 − float32", 3),
        document.Table(
            ["method", "int8 file"] + [f"{100 * rate:g}%" for rate in rates],
            rows,
            "Paired int8 − float32 accuracy, points [95% CI].",
        ),
    ]


def statistics_blocks(statistics: dict[str, Any]) -> list[document.Block]:
    """Report tables of the per-layer int8 statistics (distinct int8 levels per layer)."""
    blocks: list[document.Block] = []
    for key, result in statistics.items():
        rates = list(result["rates"])
        rows = []
        for layer in result["layers"]:
            row = [layer]
            for rate in rates:
                entry = result["rates"][rate]
                text = f"{entry['tflite'][layer]['distinct_levels']:.0f}"
                if layer in entry.get("keras", {}):
                    text += f" ({entry['keras'][layer]['distinct_levels']:.0f})"
                row.append(text)
            rows.append(row)
        blocks += [
            document.Heading(f"{key}: distinct int8 levels per layer under weight faults", 3),
            document.Table(
                ["layer"] + [f"{100 * float(rate):g}%" for rate in rates],
                rows,
                f"Distinct int8 values of each layer's activation over {result['images']} test "
                f"images (mean of {result['trials']} fault maps); in parentheses the Keras "
                "float32 outputs under the same faults quantized with the file's scales.",
            ),
        ]
    if blocks:
        blocks.insert(0, document.Heading("Where int8 loses its levels (per-layer statistics)"))
    return blocks
