"""aftt-faults and aftt-export through their binaries (subprocesses: each defines its own flags)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import requires_fashion_mnist


def _run(binary, argv):
    return subprocess.run(
        [sys.executable, "-m", f"aftt_tf.cli.{binary}", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )


@requires_fashion_mnist
def test_campaign_through_the_cli(model_path, tmp_path):
    out = tmp_path / "campaign"
    argv = [
        f"--model=a={model_path}",
        f"--model=b={model_path}",
        "--fault=node",
        "--rates=0,0.5",
        "--trials=2",
        "--test_examples=300",
        "--data=fashion_mnist",
        "--allow_chance_accuracy",  # An untrained model: the CLI path is the point.
        f"--out={out}",
    ]
    result = _run("faults", argv)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == {"a", "b"}
    # Identical models under identical (paired) faults differ by exactly 0.
    assert all(row["mean_difference"] == 0 for row in results["paired_differences"]["a - b"])
    assert "paired difference a - b" in result.stdout
    again = _run("faults", argv)  # Re-running skips every finished cell.
    assert '"skipped_cells": 8' in again.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rates=0,1.2"], "outside [0, 1]"),
        (["--rates=0,abc"], "--rates must be numbers"),
        (["--trials=0"], "trials must be an integer >= 1"),
        (["--fault=filter"], "Filter faults need convolutions"),
        (["--layers=conv_7"], "do not exist"),
        (["--num_shards=2", "--shard_index=2"], "shard_index must be in [0, num_shards)"),
        (["--test_examples=-5"], "--test_examples must be >= 0"),
        (
            ["--fault=cosmic"],
            "Unknown fault kind 'cosmic'; expected one of weight, filter, node, stuck_value, "
            "bit, activation_bit, activation_value, bit_error",
        ),
    ],
)
def test_bad_input_is_refused_before_any_work(model_path, tmp_path, argv, message):
    out = tmp_path / "campaign"
    result = _run("faults", [f"--model={model_path}", f"--out={out}", *argv])
    assert result.returncode != 0
    assert message in result.stderr
    assert not out.exists()


def test_bad_model_files(tmp_path):
    (tmp_path / "x.keras").write_text("not a zip")
    for path, message in (
        (tmp_path / "x.keras", "is not a readable .keras archive"),
        (tmp_path / "none.keras", "does not exist"),
    ):
        result = _run("faults", [f"--model={path}", f"--out={tmp_path / 'c'}"])
        assert result.returncode != 0 and message in result.stderr


def test_export_refuses_unknown_format_and_missing_model(model_path, tmp_path):
    result = _run(
        "export", [f"--model={model_path}", f"--out={tmp_path / 'e'}", "--formats=tflite_int8,onnx"]
    )
    assert result.returncode != 0 and "Unknown export formats ['onnx']" in result.stderr
    result = _run("export", [f"--model={tmp_path / 'missing.keras'}", f"--out={tmp_path / 'e'}"])
    assert result.returncode != 0 and "does not exist" in result.stderr
    assert not (tmp_path / "e").exists()


@requires_fashion_mnist
def test_bit_errors_in_int8_codes_and_a_kind_of_ones_own_through_the_cli(model_path, tmp_path):
    common = [
        f"--model={model_path}",
        "--rates=0,0.02",
        "--trials=2",
        "--test_examples=300",
        "--data=fashion_mnist",
        "--allow_chance_accuracy",
    ]
    out = tmp_path / "bit_error"
    result = _run("faults", [*common, "--fault=bit_error", "--storage=int8", f"--out={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    spec = json.loads((out / "results.json").read_text())["spec"]
    assert (spec["kind"], spec["storage"]) == ("bit_error", "int8")
    out = tmp_path / "own"
    argv = [*common, "--import=tests.own_kinds", "--fault=stuck_at_mean_magnitude", f"--out={out}"]
    result = _run("faults", argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        json.loads((out / "results.json").read_text())["spec"]["kind"] == "stuck_at_mean_magnitude"
    )
    result = _run("faults", [*common, "--fault=stuck_at_mean_magnitude", f"--out={tmp_path / 'x'}"])
    assert (
        result.returncode == 2 and "Unknown fault kind 'stuck_at_mean_magnitude'" in result.stderr
    )
