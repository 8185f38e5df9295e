"""aftt-repair: fine-tuning around a fixed fault map (defect-aware retraining)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from aftt_tf.data import datasets as data
from aftt_tf.data.frontend import DataOptions
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import keras_runner, tflite_file
from aftt_tf.runtimes import layers as fault_layers
from aftt_tf.training import networks, phases, repair
from tests.conftest import requires_fashion_mnist

pytestmark = requires_fashion_mnist


@pytest.fixture(scope="module")
def trained_path(tmp_path_factory):
    """The paper's MLP after one epoch on 3000 Fashion-MNIST images, as aftt-train saves it."""
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    keras.utils.set_random_seed(0)
    model = networks.build_networks("fmnist_mlp").classifier
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(arrays["train"][0][:3000] / 255.0, arrays["train"][1][:3000], epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("repair") / "run" / "classifier.keras"
    path.parent.mkdir()
    model.save(path)
    return path


@pytest.fixture(scope="module")
def repaired(trained_path, tmp_path_factory):
    """kind -> (config, metrics) of a weight (50%) and a node (30%) repair of the model."""
    root = tmp_path_factory.mktemp("repaired")
    result = {}
    for kind, rate in (("weight", 0.5), ("node", 0.3)):
        config = _config(trained_path, root / kind, fault=kind, rate=rate)
        result[kind] = (config, repair.repair(config))
    return result


def _config(model, out, **overrides) -> repair.RepairConfig:
    values = {
        "fault": "weight",
        "rate": 0.5,
        "epochs": 1,
        "train_examples": 2000,
        "data_options": DataOptions(data="fashion_mnist"),
    }
    return repair.RepairConfig(model=str(model), out=str(out), **{**values, **overrides})


def _campaign_masks(model_path, spec: FaultSpec, rate: float, trial: int) -> dict:
    """The masks an aftt-faults campaign places for cell (rate, trial)."""
    faulty, _ = keras_runner.faulty_copy(keras_runner.load_model(model_path), spec, rate, trial)
    return {w.path: np.asarray(w.numpy()) for w in faulty.non_trainable_weights}


def test_faulted_weights_stay_stuck_and_the_rest_is_retrained(trained_path, repaired):
    config, metrics = repaired["weight"]
    original = keras_runner.load_model(trained_path)
    repaired = keras.saving.load_model(Path(config.out) / "classifier.keras")
    expected = _campaign_masks(trained_path, config.spec(), 0.5, 0)
    faulted_layers = [
        layer for layer in repaired.layers if isinstance(layer, fault_layers.FaultyDense)
    ]
    assert faulted_layers
    for layer in faulted_layers:
        keep = np.asarray(layer.kernel_keep.numpy())
        assert np.array_equal(keep, expected[layer.kernel_keep.path])  # The campaign's map.
        assert np.sum(keep == 0) == round(0.5 * keep.size)
        effective = np.asarray(layer.faulty_kernel())
        assert np.all(effective[keep == 0] == 0.0)  # Exactly at the stuck value.
        before = np.asarray(original.get_layer(layer.name).kernel.numpy())
        changed = np.mean(effective[keep == 1] != before[keep == 1])
        assert changed > 0.9  # The healthy weights were retrained.
    assert metrics["fault_map"]["faulted"] == sum(
        round(0.5 * int(np.prod(layer.kernel.shape))) for layer in faulted_layers
    )
    assert (
        metrics["faulty_test_accuracy_after_repair"] > metrics["faulty_test_accuracy_before_repair"]
    )


def test_node_masks_are_held_fixed(trained_path, repaired):
    config, _ = repaired["node"]
    repaired = keras.saving.load_model(Path(config.out) / "classifier.keras")
    expected = _campaign_masks(trained_path, config.spec(), 0.3, 0)
    masks = [layer for layer in repaired.layers if isinstance(layer, fault_layers.NodeFault)]
    assert masks
    for layer in masks:
        keep = np.asarray(layer.node_keep.numpy())
        assert np.array_equal(keep, expected[layer.node_keep.path])
        assert 0 < np.sum(keep == 0) < keep.size


def test_a_repaired_model_exports_with_its_faults(trained_path, repaired, tmp_path):
    from aftt_tf.deploy import export_lib

    for kind in ("weight", "node"):
        run = Path(repaired[kind][0].out)
        export_lib.export_classifier(
            export_lib.ExportConfig(
                model=str(run / "classifier.keras"),
                out=str(tmp_path / f"export_{kind}"),
                formats=("tflite_float32",),
                test_examples=300,
            )
        )
        faulty = keras.saving.load_model(run / "classifier.keras")
        images = data.load_arrays("fashion_mnist", source="local")[0]["test"][0][:300]
        tflite = tflite_file.TFLiteFile(tmp_path / f"export_{kind}" / "model_float32.tflite")
        expected = np.asarray(faulty(images.astype(np.float32) / 255.0))
        np.testing.assert_allclose(tflite_file.predict(tflite, images), expected, atol=1e-4)
        clean = keras_runner.load_model(trained_path)
        assert np.max(np.abs(expected - np.asarray(clean(images / 255.0)))) > 0.1


def test_repair_resumes_after_a_kill(trained_path, tmp_path, monkeypatch):
    """A repair stopped after its first epoch continues from the checkpoint and ends with
    the weights of an uninterrupted repair."""
    config = _config(trained_path, tmp_path / "killed", epochs=2)
    original = phases._EpochCallback.on_epoch_end

    def killed_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(phases._EpochCallback, "on_epoch_end", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        repair.repair(config)
    monkeypatch.setattr(phases._EpochCallback, "on_epoch_end", original)
    state = json.loads((tmp_path / "killed" / "checkpoints" / "repair" / "state.json").read_text())
    assert state["epochs_completed"] == 1
    resumed = repair.repair(config)
    assert [row["epoch"] for row in resumed["history"]] == [1, 2]
    uninterrupted = repair.repair(_config(trained_path, tmp_path / "whole", epochs=2))
    a = keras.saving.load_model(tmp_path / "killed" / "classifier.keras").get_weights()
    b = keras.saving.load_model(tmp_path / "whole" / "classifier.keras").get_weights()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert resumed["faulty_test_accuracy_after_repair"] == pytest.approx(
        uninterrupted["faulty_test_accuracy_after_repair"], abs=2e-3
    )


def test_cli_repairs_and_refuses_another_repair_in_its_directory(trained_path, tmp_path):
    argv = [
        sys.executable,
        "-m",
        "aftt_tf.cli.repair",
        f"--model={trained_path}",
        "--rate=0.3",
        "--epochs=1",
        "--train_examples=1000",
        "--data=fashion_mnist",
        f"--out={tmp_path / 'cli'}",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "cli" / "classifier.keras").exists()
    other = subprocess.run([*argv, "--rate=0.4"], capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "holds something other than this repair" in other.stderr
    bad = subprocess.run([*argv, "--optimizer=lion"], capture_output=True, text=True)
    assert bad.returncode == 2


def test_repaired_campaign_at_rate_zero_is_plain_fine_tuning(trained_path, tmp_path):
    """The repaired protocol: a rate-0 cell equals plain fine-tuning of the same length
    (aftt-repair at rate 0), repaired cells beat the deployed protocol's same cells, and
    one compiled training function serves every cell."""
    from aftt_tf.campaigns import engine as campaign
    from aftt_tf.faults.spec import RepairProtocol

    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    model = keras_runner.load_model(trained_path)
    protocol = RepairProtocol(epochs=1, train_examples=2000)
    spec = FaultSpec(kind="weight", rates=(0.0, 0.6), trials=2, seed=0, repair=protocol)
    repairing = repair.RepairingModel(model, *arrays["train"])
    test_images, test_labels = arrays["test"]
    repaired = campaign.run_campaign(
        {"m": repairing}, spec, test_images, test_labels, tmp_path / "repaired", progress=False
    )
    deployed = campaign.run_campaign(
        {"m": model},
        FaultSpec(kind="weight", rates=(0.0, 0.6), trials=2, seed=0),
        test_images,
        test_labels,
        tmp_path / "deployed",
        progress=False,
    )
    assert repaired["protocol"] == "repaired" and deployed["protocol"] == "deployed"
    assert repaired["spec_key"] != deployed["spec_key"]
    plain = repair.repair(_config(trained_path, tmp_path / "plain", rate=0.0))
    rows = {row["rate"]: row for row in repaired["summary"]["m"]["all"]["per_rate"]}
    assert rows[0.0]["mean"] == pytest.approx(plain["faulty_test_accuracy_after_repair"], abs=1e-9)
    deployed_rows = {row["rate"]: row for row in deployed["summary"]["m"]["all"]["per_rate"]}
    assert rows[0.6]["mean"] > deployed_rows[0.6]["mean"] + 0.1
    runner = repairing.runner(spec, test_images[:500], test_labels[:500], 500)
    runner.evaluate_cell(0.6, 0)
    compiled = runner.trainer.train_function
    runner.evaluate_cell(0.6, 1)
    assert runner.trainer.train_function is compiled


def test_cli_repaired_protocol_and_its_refusal_on_a_tflite(trained_path, tmp_path):
    import tensorflow as tf

    from aftt_tf.faults.spec import FaultTargetError, RepairProtocol
    from aftt_tf.runtimes import tflite_runner

    argv = [
        sys.executable,
        "-m",
        "aftt_tf.cli.faults",
        "--rates=0,0.5",
        "--trials=2",
        "--test_examples=500",
        "--repair_epochs=1",
        "--repair_train_examples=1000",
        "--data=fashion_mnist",
        "--repair_data=fashion_mnist",
    ]
    result = subprocess.run(
        [*argv, f"--model={trained_path}", f"--out={tmp_path / 'cli'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert results["protocol"] == "repaired" and results["spec"]["repair"]["epochs"] == 1
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_runner.load_model(trained_path))
    tflite = tflite_runner.TFLiteModel.from_bytes(converter.convert())
    spec = FaultSpec(repair=RepairProtocol())
    with pytest.raises(FaultTargetError, match="cannot be trained"):
        tflite.select_layers(spec)
