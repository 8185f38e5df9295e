"""Prints the README's transient-fault table from docs/transient.sh's output.

.venv/bin/python docs/transient_table.py [results/transient]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "results/transient")
CAMPAIGNS = {
    "mlp": "paper MLP, Keras",
    "mobilenet": "MobileNetV2 0.35, Keras",
    "mobilenet_int8": "MobileNetV2 0.35, int8 .tflite",
}
LABELS = ("plain", "plain_range", "fat", "fat_range")


def _cell(row: dict) -> str:
    sdc = row["sdc"]
    due = row.get("non_finite") or {"mean": 0.0}
    return (
        f"{100 * sdc['mean']:.2f} [{100 * sdc['ci_low']:.2f}, {100 * sdc['ci_high']:.2f}] / "
        f"{100 * due['mean']:.2f} / {100 * row['mean']:.1f}"
    )


def main() -> None:
    print(
        "| model, runtime | bit-flip rate per value | plain | plain + range | fault-aware (fat) "
        "| fat + range |"
    )
    print("|---|---|---|---|---|---|")
    for name, title in CAMPAIGNS.items():
        path = ROOT / name / "results.json"
        if not path.exists():
            continue
        summary = json.loads(path.read_text())["summary"]
        rows = {
            label: {row["rate"]: row for row in summary[label]["all"]["per_rate"]}
            for label in LABELS
            if label in summary
        }
        for rate in sorted(rows["plain"]):
            if rate == 0:
                continue
            cells = [_cell(rows[label][rate]) if label in rows else "-" for label in LABELS]
            print(f"| {title} | {rate:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
