"""Failure behaviour: bad numbers, other people's files, two writers, torn records, file-system
errors, leftovers of killed runs, divergence and damaged checkpoints, and the TFDS path.

Bad inputs go through the binaries (subprocesses) where the CLI is the point: exit status 2
and one line that names the cause, before any work and with nothing written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from aftt_tf import io_utils
from aftt_tf.campaigns import cell_log
from aftt_tf.campaigns import engine as campaign
from aftt_tf.data import datasets as data
from aftt_tf.data.frontend import DataOptions
from aftt_tf.deploy import export_lib
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.training import train_lib
from aftt_tf.training.config import TrainConfig
from tests.conftest import FASHION_MNIST_DIR, requires_fashion_mnist
from tests.train_lib_test import diverging_phase

REPO = Path(__file__).resolve().parents[1]


def _run(binary: str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"aftt_tf.cli.{binary}", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def _strict_load(path: Path):
    def reject(name):
        raise ValueError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=reject)


def _tiny_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    wide = keras.initializers.RandomNormal(stddev=1.0, seed=0)
    hidden = keras.layers.Dense(8, activation="relu", kernel_initializer=wide, name="hidden")
    centered = keras.layers.Dense(3, kernel_initializer=wide, name="out")
    return keras.Model(inputs, centered(hidden(inputs - 0.5)))


def _tiny_data(model, count=64):
    images = np.random.default_rng(0).random((count, 6)).astype(np.float32)
    return images, np.argmax(np.asarray(model(images)), -1)


# 1. Numbers: finite and in range; strict JSON.


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e39"])
def test_non_finite_stuck_value_is_refused(model_path, tmp_path, value):
    out = tmp_path / "campaign"
    result = _run(
        "faults",
        [f"--model={model_path}", "--fault=stuck_value", f"--stuck_value={value}", f"--out={out}"],
    )
    assert result.returncode == 2
    assert "stuck_value must be a finite float32 value" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rates": (0.0, float("nan"))}, "outside [0, 1]"),
        ({"target_margin": float("inf")}, "target_margin must be a finite number"),
        ({"target_margin": -0.1}, "target_margin must be a finite number"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"kind": "stuck_value", "stuck_value": float("nan")}, "stuck_value must be a finite"),
    ],
)
def test_spec_numbers_are_validated(changes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        FaultSpec(**changes).validate()


def test_learning_rates_and_epochs_are_validated():
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        TrainConfig(learning_rate=float("nan")).validate()
    with pytest.raises(ValueError, match="finetune_epochs is 0"):
        TrainConfig(finetune_epochs=0).validate()
    config = export_lib.ExportConfig(model="m.keras", out="o", qat_learning_rate=float("inf"))
    with pytest.raises(ValueError, match="qat_learning_rate must be a finite number > 0"):
        config.validate()


def test_json_written_is_strict(tmp_path):
    io_utils.write_json(tmp_path / "x.json", {"a": float("nan"), "b": [np.float32("inf"), 1.5]})
    assert _strict_load(tmp_path / "x.json") == {"a": None, "b": [None, 1.5]}
    (tmp_path / "bad.json").write_text('{"a": NaN}')
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        io_utils.read_json(tmp_path / "bad.json")


def test_every_campaign_file_is_strict_json(tmp_path):
    model = _tiny_model()
    images, labels = _tiny_data(model)
    spec = FaultSpec(kind="weight", rates=(0.0, 0.5), trials=1)  # One trial: no spread.
    campaign.run_campaign({"a": model, "b": model}, spec, images, labels, tmp_path, progress=False)
    for path in tmp_path.glob("*.json"):
        _strict_load(path)
    for line in (tmp_path / cell_log.CELLS_FILE).read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in cells"))


# 2. Output ownership.


def test_campaign_refuses_a_directory_it_does_not_own(model_path, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text('{"my": "own results"}')
    result = _run("faults", [f"--model={model_path}", f"--out={out}"])
    assert result.returncode == 2
    assert "is not an aftt-faults campaign directory" in result.stderr
    assert (out / "results.json").read_text() == '{"my": "own results"}'
    assert sorted(path.name for path in out.iterdir()) == ["results.json"]


def test_campaign_with_another_spec_is_refused_naming_the_fields(tmp_path):
    model = _tiny_model()
    images, labels = _tiny_data(model)
    first = FaultSpec(kind="weight", rates=(0.0, 0.3), trials=2)
    campaign.run_campaign({"m": model}, first, images, labels, tmp_path, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    other = FaultSpec(kind="node", rates=(0.0, 0.3), trials=2, seed=4)
    with pytest.raises(io_utils.OutputError, match=r"kind: 'weight' -> 'node'.*seed: 0 -> 4"):
        campaign.run_campaign({"m": model}, other, images, labels, tmp_path, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    # More trials and other rates of the same campaign are a resume, not another campaign.
    more = FaultSpec(kind="weight", rates=(0.0, 0.3, 0.6), trials=3)
    results = campaign.run_campaign({"m": model}, more, images, labels, tmp_path, progress=False)
    assert results["skipped_cells"] == 4


def test_a_campaign_that_claims_the_directory_first_keeps_its_files(tmp_path, monkeypatch):
    """Another process claims an empty --out between this run's check and its lock: this
    run is refused under the lock and removes nothing of the other's (whether --out was
    empty is decided under the lock, not before it)."""
    model = _tiny_model()
    images, labels = _tiny_data(model)
    out = tmp_path / "campaign"
    theirs = FaultSpec(kind="node", rates=(0.0,), trials=1)
    claimed = {"spec": {**theirs.as_dict()}, "kind": "aftt-faults campaign"}
    enter = io_utils.DirectoryLock.__enter__

    def after_the_other(lock):
        (out / cell_log.CAMPAIGN_FILE).write_text(json.dumps(claimed))
        (out / cell_log.CELLS_FILE).write_text("")
        return enter(lock)

    monkeypatch.setattr(io_utils.DirectoryLock, "__enter__", after_the_other)
    ours = FaultSpec(kind="weight", rates=(0.0,), trials=1)
    with pytest.raises(io_utils.OutputError, match="another fault spec"):
        campaign.run_campaign({"m": model}, ours, images, labels, out, progress=False)
    assert json.loads((out / cell_log.CAMPAIGN_FILE).read_text()) == claimed
    assert (out / cell_log.CELLS_FILE).exists()


def test_campaign_directory_written_before_campaign_json_still_resumes(tmp_path):
    model = _tiny_model()
    images, labels = _tiny_data(model)
    spec = FaultSpec(kind="weight", rates=(0.0, 0.3), trials=2)
    campaign.run_campaign({"m": model}, spec, images, labels, tmp_path, progress=False)
    (tmp_path / cell_log.CAMPAIGN_FILE).unlink()  # As written by earlier versions.
    results = campaign.run_campaign({"m": model}, spec, images, labels, tmp_path, progress=False)
    assert results["skipped_cells"] == 4


def test_train_overwrite_replaces_only_run_directories(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    argv = [f"--flagfile={REPO / 'flags/smoke.flags'}", f"--out={out}", "--overwrite"]
    result = _run("train", argv)
    assert result.returncode == 2
    assert "not an aftt-train run directory" in result.stderr
    assert "--overwrite replaces only run directories" in result.stderr
    assert (out / "thesis.tex").read_text() == "years of work"


def test_export_overwrite_replaces_only_export_directories(model_path, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    config = export_lib.ExportConfig(model=str(model_path), out=str(out), overwrite=True)
    with pytest.raises(io_utils.OutputError, match="--overwrite replaces only exports"):
        config.validate()
    assert (out / "thesis.tex").read_text() == "years of work"


# 3. One writer per output directory.


def test_second_writer_is_refused_naming_the_holder(tmp_path, model_path):
    model = _tiny_model()
    images, labels = _tiny_data(model)
    spec = FaultSpec(kind="weight", rates=(0.0,), trials=1)
    out = tmp_path / "campaign"
    with io_utils.DirectoryLock(out / io_utils.LOCK_FILE, str(out)):
        import os

        with pytest.raises(io_utils.OutputError, match=f"PID {os.getpid()}"):
            campaign.run_campaign({"m": model}, spec, images, labels, out, progress=False)
        assert not (out / cell_log.CELLS_FILE).exists()
    # Released with the holder: the same campaign now runs.
    results = campaign.run_campaign({"m": model}, spec, images, labels, out, progress=False)
    assert results["summary"]["m"]["all"]["per_rate"][0]["trials"] == 1


def test_lock_is_held_across_processes(tmp_path):
    lock = tmp_path / io_utils.LOCK_FILE
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from aftt_tf import io_utils
                with io_utils.DirectoryLock({str(lock)!r}, "d"):
                    print("LOCKED", flush=True)
                    sys.stdin.readline()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        with pytest.raises(io_utils.OutputError, match=f"PID {holder.pid}"):
            with io_utils.DirectoryLock(lock, str(tmp_path)):
                pass
    finally:
        holder.communicate("\n", timeout=30)
    with io_utils.DirectoryLock(lock, str(tmp_path)):
        pass


# 4. Append-only records survive crashes and full disks.


def test_torn_last_record_is_reported_and_removed(tmp_path, caplog):
    model = _tiny_model()
    images, labels = _tiny_data(model)
    spec = FaultSpec(kind="weight", rates=(0.0, 0.3), trials=2)
    campaign.run_campaign({"m": model}, spec, images, labels, tmp_path, progress=False)
    cells_path = tmp_path / cell_log.CELLS_FILE
    lines = cells_path.read_text().splitlines(keepends=True)
    cells_path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # A crash.
    assert len(cell_log.read_cells(cells_path)) == 3
    results = campaign.run_campaign({"m": model}, spec, images, labels, tmp_path, progress=False)
    assert "torn last record" in caplog.text
    assert results["skipped_cells"] == 3  # The torn cell ran again.
    records = [json.loads(line) for line in cells_path.read_text().splitlines()]
    assert len(records) == 4 and cells_path.read_text().endswith("\n")


def test_damaged_record_inside_the_file_is_an_error(tmp_path):
    path = tmp_path / cell_log.CELLS_FILE
    record = {
        "model": "m",
        "model_hash": "h",
        "group": "all",
        "spec_key": "k",
        "rate": 0.0,
        "trial": 0,
        "accuracy": 0.5,
    }
    path.write_text(json.dumps(record) + '\nnot json\n{"rate": 0.1}\n')
    with pytest.raises(ValueError, match="line 2 is not a cell record"):
        cell_log.read_cells(path)


def test_full_disk_leaves_no_half_record(tmp_path, monkeypatch):
    model = _tiny_model()
    images, labels = _tiny_data(model)
    spec = FaultSpec(kind="weight", rates=(0.0, 0.3), trials=2)
    real_open = cell_log._open_no_follow
    writes = {"count": 0}

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *args):
            self.handle.close()

        def write(self, line):
            writes["count"] += 1
            if writes["count"] == 3:  # The third record: half of it fits, then ENOSPC.
                self.handle.write(line[: len(line) // 2])
                self.handle.flush()
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path))
            return self.handle.write(line)

    def fake_open(path, flags):
        return FullDisk(real_open(path, flags))

    monkeypatch.setattr(cell_log, "_open_no_follow", fake_open)
    with pytest.raises(OSError, match="No space left"):
        campaign.run_campaign({"m": model}, spec, images, labels, tmp_path, progress=False)
    monkeypatch.undo()
    content = (tmp_path / cell_log.CELLS_FILE).read_text()
    assert content.endswith("\n") and len(content.splitlines()) == 2
    results = campaign.run_campaign({"m": model}, spec, images, labels, tmp_path, progress=False)
    assert results["skipped_cells"] == 2


# 5. File-system errors and model/data mismatches: one line, before loading anything.


@pytest.mark.parametrize("binary", ["train", "faults", "export", "reproduce"])
def test_out_that_is_a_file_is_a_one_line_usage_error(binary, model_path, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("mine")
    argv = {
        "train": [f"--flagfile={REPO / 'flags/smoke.flags'}"],
        "reproduce": [f"--flagfile={REPO / 'flags/smoke.flags'}"],
        "faults": [f"--model={model_path}"],
        "export": [f"--model={model_path}", "--overwrite"],
    }[binary]
    result = _run(binary, [*argv, f"--out={target}"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "is a file, not a directory" in result.stderr or "is a file" in result.stderr
    assert "Traceback" not in result.stderr
    assert target.read_text() == "mine"


def test_unwritable_output_is_refused_before_work(tmp_path, monkeypatch):
    monkeypatch.setattr(io_utils.os, "access", lambda path, mode: False)  # As a read-only FS.
    with pytest.raises(io_utils.OutputError, match="not writable"):
        io_utils.check_output_path(tmp_path / "new" / "run")


def test_failure_while_working_is_one_line_with_exit_1(tmp_path):
    script = textwrap.dedent(
        """
        import errno
        from aftt_tf.cli import common

        def main(argv):
            raise OSError(errno.ENOSPC, "No space left on device", "/data/campaign/cells.jsonl")

        common.run(main, "aftt-faults")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("aftt-faults: error: /data/campaign/cells.jsonl: No space left")
    assert "finished work is kept and resumes" in lines[-1]
    assert "Traceback" not in result.stderr


@requires_fashion_mnist
def test_model_and_data_of_other_shapes_are_refused_before_loading(model_path, tmp_path):
    out = tmp_path / "campaign"
    result = _run("faults", [f"--model={model_path}", "--dataset=cifar10", f"--out={out}"])
    assert result.returncode == 2
    assert "shape (28, 28, 1) but cifar10 examples have shape (32, 32, 3)" in result.stderr
    assert not out.exists()


def test_export_names_the_right_tool_for_tflite_and_broken_keras_files(tmp_path):
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"TFL3")
    result = _run("export", [f"--model={tflite}", f"--out={tmp_path / 'e'}"])
    assert result.returncode == 2
    assert "is already a TFLite file" in result.stderr and "aftt-faults" in result.stderr
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 truncated")
    result = _run("export", [f"--model={broken}", f"--out={tmp_path / 'e'}"])
    assert result.returncode == 2
    assert "is not a readable .keras archive" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "e").exists()


def test_truncated_idx_file_is_named(tmp_path):
    source = Path(FASHION_MNIST_DIR) / "t10k-labels-idx1-ubyte.gz"
    if not source.exists():
        pytest.skip("Fashion-MNIST is not installed; run `make deps`.")
    damaged = tmp_path / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(source.read_bytes()[:2000])
    with pytest.raises(ValueError, match=f"{damaged} cannot be read"):
        data._read_idx(damaged)


# 6. Staging directories of killed exports.


@requires_fashion_mnist
def test_export_removes_staging_left_by_a_killed_export(model_path, tmp_path):
    out = tmp_path / "export"
    stale = tmp_path / ".export.aftt-staging-abc123"  # What a SIGKILL mid-export leaves.
    (stale / "saved_model").mkdir(parents=True)
    (stale / ".aftt-export-staging").write_text("export")
    backup = tmp_path / ".export.backup"  # The user's: never touched.
    (backup / "saved_model").mkdir(parents=True)
    config = export_lib.ExportConfig(
        model=str(model_path),
        out=str(out),
        formats=("tflite_float32",),
        test_examples=200,
        data_options=DataOptions(data="fashion_mnist"),
        allow_chance_accuracy=True,  # An untrained model.
    )
    export_lib.export_classifier(config)
    assert not stale.exists()
    assert [path for path in tmp_path.glob(".export.*") if path.is_dir()] == [backup]
    assert (backup / "saved_model").is_dir()
    assert export_lib.is_export_directory(out)


# 7. Divergence and damaged checkpoints.


def test_divergence_in_the_first_epoch_says_there_is_no_checkpoint(tmp_path):
    with pytest.raises(train_lib.TrainingDivergedError, match="epoch 1. No epoch of this phase"):
        diverging_phase(tmp_path, finite_epochs=0)()
    assert not (tmp_path / "checkpoints" / "finetune" / "state.json").exists()


def test_damaged_checkpoint_names_the_file_and_the_restart(tmp_path):
    with pytest.raises(train_lib.TrainingDivergedError):
        diverging_phase(tmp_path, finite_epochs=1)()
    variables = tmp_path / "checkpoints" / "finetune" / "variables.npz"
    variables.write_bytes(variables.read_bytes()[:100])
    with pytest.raises(train_lib.RunDirectoryError, match="cannot be read.*Delete .*finetune"):
        diverging_phase(tmp_path, finite_epochs=1)()


# 8. The TFDS download path, up to the network boundary.


def _image_digests(images: np.ndarray) -> list[str]:
    return sorted(hashlib.sha1(image.tobytes()).hexdigest() for image in images)


def test_tfds_download_and_prepare_from_a_local_server(tfds_fashion_mnist):
    """TFDS downloads Fashion-MNIST's four files (served from 127.0.0.1 instead of the
    internet), prepares them and `data.load_arrays` reads the result (conftest)."""
    tmp_path, arrays, source = tfds_fashion_mnist
    assert source == "TFDS download"
    local, _ = data.load_arrays("fashion_mnist", source="local")
    for split in ("train", "test"):
        assert arrays[split][0].shape == local[split][0].shape
        # TFDS stores the examples in another order: the same images and label counts.
        assert _image_digests(arrays[split][0]) == _image_digests(local[split][0])
        assert np.array_equal(np.bincount(arrays[split][1]), np.bincount(local[split][1]))
    # Prepared once, the data is then found without downloading.
    again, source = data.load_arrays("fashion_mnist", tfds_data_dir=str(tmp_path), source="tfds")
    assert math.isclose(len(again["test"][1]), 10_000)


@pytest.mark.parametrize(
    "binary, argv, message",
    [
        ("faults", ["--fault=cosmic", "--out=/tmp/x"], "Unknown fault kind 'cosmic'"),
        ("train", ["--learning_rate=abc", "--out=/tmp/x"], "could not convert string"),
        ("export", ["--formats=onnx", "--model=m.keras", "--out=/tmp/x"], "Unknown export formats"),
    ],
)
def test_bad_flags_exit_with_usage_status(binary, argv, message):
    result = _run(binary, argv)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    "binary, flag",
    [
        ("train", "--method"),
        ("faults", "--fault"),
        ("export", "--formats"),
        ("reproduce", "--methods"),
    ],
)
def test_help_lists_the_binarys_own_flags(binary, flag):
    result = _run(binary, ["--help"])
    assert result.returncode == 0
    assert f"  {flag}:" in result.stdout
