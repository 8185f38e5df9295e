"""Prints the README's "Where to spend protection" tables from docs/sensitivity.sh's output.

.venv/bin/python docs/sensitivity_table.py [results/sensitivity]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from aftt_tf.campaigns import statistics

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "results/sensitivity")
MODELS = {"mlp": "paper MLP (fmnist_mlp)", "mobilenet": "MobileNetV2 0.35 / CIFAR-10"}


def _interval(values) -> str:
    mean, _, half = statistics.confidence_interval(values)
    return f"{100 * mean:+.1f} [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}]"


def float32_table() -> None:
    print("| model | protected | rate | none | plan | random | plan - random (points, 95% CI) |")
    print("|---|---|---|---|---|---|---|")
    for name, title in MODELS.items():
        path = ROOT / name / "verification.json"
        if not path.exists():
            continue
        budgets = json.loads(path.read_text())["budgets"]
        for budget, result in budgets.items():
            for rate in result["accuracy"]["none"]:
                trials = result["per_trial"]
                row = {label: 100 * result["accuracy"][label][rate] for label in trials}
                delta = np.array(trials["plan"][rate]) - np.array(trials["random"][rate])
                print(
                    f"| {title} | {float(budget):.0%} | {float(rate):.0%} | {row['none']:.1f} | "
                    f"{row['plan']:.1f} | {row['random']:.1f} | {_interval(delta)} |"
                )


def spearman_table() -> None:
    print(
        "| model | layers checked | expected (2nd order, at the rate) | taylor sum | taylor mean | gradient mean | hessian mean | magnitude mean |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, title in MODELS.items():
        path = ROOT / name / "scores.json"
        if not path.exists():
            continue
        check = json.loads(path.read_text())["check"]
        rho = check["spearman"]
        cells = [
            rho[key]
            for key in (
                "expected",
                "taylor",
                "taylor_mean",
                "gradient_mean",
                "hessian_mean",
                "magnitude_mean",
            )
        ]
        print(
            f"| {title} | {check['layers_checked']}/{check['layers']} (rate {check['rate']}, "
            f"{check['trials']} trials) | "
            + " | ".join("n/a" if value != value else f"{value:+.2f}" for value in cells)
            + " |"
        )


def _cells(directory: Path) -> dict[float, list[float]]:
    result: dict[float, list[float]] = {}
    for line in (directory / "cells.jsonl").read_text().splitlines():
        cell = json.loads(line)
        result.setdefault(cell["rate"], []).append((cell["trial"], cell["accuracy"]))
    return {rate: [a for _, a in sorted(values)] for rate, values in result.items()}


def int8_table() -> None:
    print(
        "| model | bit-fault rate | none | plan 1% | random 1% | plan 5% | random 5% | plan 10% | random 10% | plan 5% - random 5% (points) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, title in MODELS.items():
        directory = ROOT / f"{name}_int8_bits"
        if not (directory / "none" / "cells.jsonl").exists():
            continue
        labels = [
            "none",
            "plan_0.01",
            "random_0.01",
            "plan_0.05",
            "random_0.05",
            "plan_0.1",
            "random_0.1",
        ]
        cells = {
            label: _cells(directory / label)
            for label in labels
            if (directory / label / "cells.jsonl").exists()
        }
        for rate in sorted(cells["none"]):
            if rate == 0:
                continue
            values = [
                100 * np.mean(cells[label][rate]) if label in cells else float("nan")
                for label in labels
            ]
            delta = np.array(cells["plan_0.05"][rate]) - np.array(cells["random_0.05"][rate])
            print(
                f"| {title} | {rate:g} | "
                + " | ".join(f"{value:.1f}" for value in values)
                + f" | {_interval(delta)} |"
            )


if __name__ == "__main__":
    float32_table()
    print()
    spearman_table()
    print()
    int8_table()
