"""A campaign's results as console lines (aftt-faults prints them): coverage, per-rate
accuracy with 95% intervals and NaN/Inf outputs, paired differences, the verdict. No
TensorFlow."""

from __future__ import annotations

import json


def coverage_lines(results: dict) -> list[str]:
    """What each model's campaign covers, in words."""
    lines: list[str] = []
    for model, coverage in (results.get("coverage") or {}).items():
        if not coverage:
            continue
        lines.append(
            f"{model}: the {len(coverage['targeted_layers'])} targeted layers hold "
            f"{100 * coverage['targeted_layers_weight_share']:.1f}% of the model's "
            f"{coverage['model_weight_elements']} weights"
        )
        normalization = coverage.get("normalization")
        if normalization:
            folded = ", ".join(
                f"{bn} into {layer}" for bn, layer in normalization["folded"].items()
            )
            lines.append(
                "  normalisation: separate constants of "
                f"{', '.join(normalization['separate']) or 'no targeted layer'}"
                + (
                    f"; folded (faulted only through that layer's weights): {folded}"
                    if folded
                    else ""
                )
            )
        outputs = coverage.get("outputs")
        if outputs:
            total = outputs["total_values_per_inference"]
            lines.append(
                f"  transient faults reach the outputs of {len(outputs['values_per_inference'])} "
                f"layers: {total if total is not None else 'an unknown number of'} values per "
                f"inference, stored as {'/'.join(outputs['stored_as'])}"
            )
        if coverage.get("layer_names_from") == "type and order":
            lines.append(
                f"  layer names: no Keras names could be read from {model}'s tensors; its "
                "operators are named by type and order (conv_2d_0, ...)"
            )
        for entry in coverage["left_out"]:
            lines.append(
                f"  left out: {entry.get('layer', entry.get('operator'))} ({entry['weights']} weights): {entry['reason']}"
            )
    return lines


def rate_text(rate: float) -> str:
    """A fault rate with the digits it needs (a bit-fault rate of 1e-5 is not 0.000)."""
    return f"{rate:.3f}" if rate == 0 or rate >= 0.01 else f"{rate:.3g}"


def _non_finite_text(non_finite: dict | None) -> str:
    """', NaN/Inf outputs X% [low, high]' when any inference of the rate had one."""
    if not non_finite or not non_finite["mean"]:
        return ""
    return (
        f", NaN/Inf outputs {100 * non_finite['mean']:.2f}% "
        f"[{100 * non_finite['ci_low']:.2f}, {100 * non_finite['ci_high']:.2f}] "
        "(detected errors, not counted as correct)"
    )


def _sdc_text(sdc: dict | None) -> str:
    """', SDC X% [low, high]': finite outputs whose top-1 differs from the fault-free run."""
    if not sdc or not sdc["mean"]:
        return ""
    return f", SDC {100 * sdc['mean']:.2f}% [{100 * sdc['ci_low']:.2f}, {100 * sdc['ci_high']:.2f}]"


def cliff_lines(choice: dict | None) -> list[str]:
    """The rates --rates=cliff chose, and on which model."""
    if not choice:
        return []
    chosen = ", ".join(
        f"{rate_text(rate)} (keeps {100 * keep:.0f}% above chance)"
        if rate is not None
        else f"none (the highest rate searched keeps over {100 * keep:.0f}%)"
        for keep, rate in zip(choice["keeps"], choice["rates"], strict=True)
    )
    return [
        f"rates at the cliff of {choice['model']} (clean {100 * choice['clean']:.2f}%, chance "
        f"{100 * choice['chance']:.2f}%): {chosen}"
    ]


def summary_lines(results: dict) -> list[str]:
    """The console summary of a campaign: coverage, per-rate accuracy with intervals and
    NaN/Inf outputs, paired differences, verdict."""
    lines = coverage_lines(results) + cliff_lines(results.get("rate_choice"))
    for model, groups in results["summary"].items():
        for group, summary in groups.items():
            lines.append(f"{model} [{group}] normalized AUC {100 * summary['normalized_auc']:.2f}%")
            for row in summary["per_rate"]:
                lines.append(
                    f"  rate {rate_text(row['rate'])}: {100 * row['mean']:.2f}% "
                    f"[{100 * row['ci_low']:.2f}, {100 * row['ci_high']:.2f}] (n={row['trials']})"
                    + _sdc_text(row.get("sdc"))
                    + _non_finite_text(row.get("non_finite"))
                    + (
                        f"; --target_margin {100 * results['spec']['target_margin']:g} points "
                        "NOT reached (more --trials needed)"
                        if row.get("margin_reached") is False
                        else ""
                    )
                )
    for pair, rows in results["paired_differences"].items():
        lines.append(f"paired difference {pair}:")
        for row in rows:
            lines.append(
                f"  rate {rate_text(row['rate'])}: {100 * row['mean_difference']:+.2f} points "
                f"[{100 * row['ci_low']:+.2f}, {100 * row['ci_high']:+.2f}]"
            )
    if results.get("tolerance_verdict"):
        lines.append(f"tolerance: {results['tolerance_verdict']['text']}")
    if results.get("verdict"):
        lines.append(
            f"verdict ({results['spec']['kind']} faults, scope {results['spec']['scope']}): "
            f"{results['verdict']['text']}"
        )
    lines.append(json.dumps({"skipped_cells": results.get("skipped_cells", 0)}))
    return lines
