"""Prints docs/results.md's hardening tables from docs/bit_error_hardening.sh's campaigns.

.venv/bin/python docs/bit_error_hardening_table.py [results/bit_error_hardening/fmnist_cnn [campaigns]]

Per fault kind (campaigns at the plain int8 file's cliff rates) and method: clean accuracy
with its paired difference from `none` (same-length plain fine-tuning), and at each cliff
rate the accuracy, the share of its own accuracy above chance the file keeps (mean over
the paired trials, 95% CI) and the paired difference from `none` in points (95% CI).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from aftt_tf.campaigns.statistics import confidence_interval

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "results/bit_error_hardening/fmnist_cnn")
CAMPAIGNS = sys.argv[2] if len(sys.argv) > 2 else "campaigns"  # The script's CAMPAIGNS.
KINDS = {
    "bit_error": "per-bit error rate (each stored bit of each int8 weight)",
    "weight": "stuck-at-0 int8 weights",
    "activation_bit": "transient bit flips in layer outputs",
}


def _interval(values, scale: float = 100.0, sign: str = "") -> str:
    mean, _, half = confidence_interval(values)
    return (
        f"{scale * mean:{sign}.1f} [{scale * (mean - half):{sign}.1f}, "
        f"{scale * (mean + half):{sign}.1f}]"
    )


def _table(path: Path, title: str) -> None:
    cells = [json.loads(line) for line in (path / "cells.jsonl").read_text().splitlines()]
    by = defaultdict(dict)  # (model, rate) -> trial -> accuracy
    for cell in cells:
        if cell["group"] == "all":
            by[(cell["model"], cell["rate"])][cell["trial"]] = cell["accuracy"]
    models = list(dict.fromkeys(c["model"] for c in cells))
    rates = sorted({c["rate"] for c in cells if c["rate"] > 0})
    results = json.loads((path / "results.json").read_text())
    # The plain file's cliff (--rates=cliff: where it keeps 90/50/20%), or rates given.
    choice = results.get("rate_choice") or {"rates": [], "keeps": [], "model": "rates given"}
    chance = results["chance_accuracy"]  # The most frequent class's share of the labels.
    labels = {
        r: f"keeps about {k:.0%}" for r, k in zip(choice["rates"], choice["keeps"], strict=True)
    }
    if choice.get("highest_placeable"):
        labels.setdefault(choice["highest_placeable"], "the highest rate a cell can hold")
    kept = ", ".join(f"{r:.3g} ({labels.get(r, 'given')})" for r in rates)
    print(f"\n**{title}** (rates where {choice['model']}: {kept})\n")
    header = "| method | clean (- none) |" + "".join(
        f" {r:.3g}: accuracy, kept, - none |" for r in rates
    )
    print(header)
    print("|---|---|" + "---|" * len(rates))
    for model in models:
        clean = next(iter(by[(model, 0.0)].values()))
        clean_none = next(iter(by[("none", 0.0)].values()))
        row = f"| {model} | {100 * clean:.2f}% ({100 * (clean - clean_none):+.2f}) |"
        for rate in rates:
            trials = by[(model, rate)]
            kept = [(a - chance) / (clean - chance) for a in trials.values()]
            plain = by[("none", rate)]
            shared = sorted(set(trials) & set(plain))
            difference = [trials[t] - plain[t] for t in shared]
            row += (
                f" {_interval(list(trials.values()))}, {_interval(kept)}%, "
                f"{_interval(difference, sign='+') if model != 'none' else '-'} |"
            )
        print(row)


def main() -> None:
    for kind, title in KINDS.items():
        path = ROOT / CAMPAIGNS / kind
        if (path / "results.json").exists():
            _table(path, title)


if __name__ == "__main__":
    main()
