"""Running the binaries as a user does (a fresh process) and reading what they wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def run(module: str, *flags: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m MODULE FLAGS...`; the test fails with the end of its stderr unless it
    exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", module, *flags], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def cells_by_model(out: Path) -> dict[str, dict[tuple[float, int], dict[str, Any]]]:
    """A campaign directory's cells: model label -> (rate, trial) -> cell."""
    result: dict[str, dict[tuple[float, int], dict[str, Any]]] = {}
    for line in (Path(out) / "cells.jsonl").read_text().splitlines():
        cell = json.loads(line)
        result.setdefault(cell["model"], {})[(cell["rate"], cell["trial"])] = cell
    return result
