"""Prints the README's systolic-array table from docs/fault_models.sh's output.

.venv/bin/python docs/fault_models_table.py [results/fault_models]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "results/fault_models")
TITLES = {"mlp": "paper MLP (fmnist_mlp)", "mobilenet": "MobileNetV2 0.35 / CIFAR-10"}


def main() -> None:
    print(
        "| model | array | faulty PEs | plain: accuracy, SDC | fault-aware (fat): accuracy, SDC "
        "| plain - fat (points, 95% CI) |"
    )
    print("|---|---|---|---|---|---|")
    for name, title in TITLES.items():
        for array in ("32x32", "128x128"):
            path = ROOT / f"{name}_{array}" / "results.json"
            if not path.exists():
                continue
            results = json.loads(path.read_text())
            rows = {
                label: {row["rate"]: row for row in results["summary"][label]["all"]["per_rate"]}
                for label in ("plain", "fat")
            }
            differences = {row["rate"]: row for row in results["paired_differences"]["plain - fat"]}
            for rate in sorted(rows["plain"]):
                cells = []
                for label in ("plain", "fat"):
                    row = rows[label][rate]
                    sdc = (row.get("sdc") or {}).get("mean")
                    cells.append(
                        f"{100 * row['mean']:.1f}%, {'-' if sdc is None else f'{100 * sdc:.1f}%'}"
                    )
                d = differences[rate]
                print(
                    f"| {title} | {array} | {rate:.0%} | {cells[0]} | {cells[1]} | "
                    f"{100 * d['mean_difference']:+.1f} [{100 * d['ci_low']:+.1f}, "
                    f"{100 * d['ci_high']:+.1f}] |"
                )


if __name__ == "__main__":
    main()
