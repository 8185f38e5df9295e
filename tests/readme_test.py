"""The README's "Your own model in five minutes" walk-through, executed as written: its
Python block makes the model and data, its shell block runs the binaries in order."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_fashion_mnist

REPO = Path(__file__).resolve().parents[1]
pytestmark = [requires_fashion_mnist, pytest.mark.slow]


def _block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```\w+\n(.*?)```", text, flags=re.S)
    assert match, f"README has no block marked {marker}"
    return match.group(1)


def test_the_walkthrough_runs_as_written(tmp_path):
    (tmp_path / "make_example.py").write_text(_block("walkthrough-python"))
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
    }
    made = subprocess.run(
        [sys.executable, "make_example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _block("walkthrough-shell")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env=environment,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Traceback" not in run.stderr
    keras_results = json.loads((tmp_path / "campaigns/mine/results.json").read_text())
    int8_results = json.loads((tmp_path / "campaigns/mine_int8/results.json").read_text())
    manifest = json.loads((tmp_path / "export/mine/manifest.json").read_text())
    assert keras_results["summary"]["mine"]["all"]["clean_accuracy"] == pytest.approx(
        manifest["keras_test_accuracy"], abs=1e-9
    )
    assert int8_results["summary"]["model_int8"]["all"]["clean_accuracy"] == pytest.approx(
        manifest["artifacts"]["model_int8.tflite"]["test_accuracy"], abs=1e-9
    )
    assert "tflite_int8_qat" in manifest["not_exported"]
    assert set(keras_results["summary"]) == {"mine", "fat"}
    assert (tmp_path / "runs/mine_fat/classifier.keras").is_file()
    assert (tmp_path / "repairs/mine/classifier.keras").is_file()
    assert (tmp_path / "reports/mine/report.html").is_file()
