"""Fault-tolerant int8: per-layer int8 statistics, fault-aware calibration, fault-aware QAT."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from aftt_tf.campaigns import int8_stats
from aftt_tf.data import datasets as data
from aftt_tf.data.frontend import DataOptions
from aftt_tf.deploy import export_lib
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import keras_runner, tflite_runner
from tests.conftest import fashion_mnist_available, requires_fashion_mnist
from tests.export_test import _trained_classifier

FILES = {
    "ptq": "model_int8.tflite",
    "fault_calibrated": "model_int8_fault_calibrated.tflite",
    "fault_qat": "model_int8_fault_qat.tflite",
}


def test_level_statistics_by_hand():
    # A ReLU output (zero point -128): -128 is an exact 0, 127 is clamped.
    levels = np.array([-128, -128, -128, -100, -100, 0, 127, 127])
    stats = int8_stats.level_statistics(levels, scale=0.5, zero_point=-128)
    assert stats["distinct_levels"] == 4
    assert stats["saturated_fraction"] == pytest.approx(2 / 8)
    assert stats["zero_fraction"] == pytest.approx(3 / 8)
    assert (stats["min"], stats["max"]) == (0.0, 127.5)
    assert stats["calibrated_range"] == [0.0, 127.5] and stats["range_used"] == 1.0
    # A signed tensor (zero point 0): -128 is clamped too.
    stats = int8_stats.level_statistics(np.array([-128, 0, 1]), scale=1.0, zero_point=0)
    assert stats["saturated_fraction"] == pytest.approx(1 / 3)
    # Rounding half away from zero, as TFLite requantizes: 0.5 -> 1, -0.5 -> -1.
    assert list(int8_stats.quantize([0.0, 0.25, 0.5, 0.75, -0.5, 200.0], 0.5, 0)) == [
        0,
        1,
        1,
        2,
        -1,
        127,
    ]


def test_keras_statistics_by_hand():
    inputs = keras.Input((1,))
    outputs = keras.layers.Dense(1, use_bias=False, name="scale_by_two")(inputs)
    model = keras.Model(inputs, outputs)
    model.get_layer("scale_by_two").set_weights([np.array([[2.0]], np.float32)])
    images = np.array([[0.0], [0.125], [0.25], [0.375], [0.5]], np.float32)
    spec = FaultSpec(kind="weight", rates=(0.0, 1.0), trials=1)
    cell, left_out = int8_stats.keras_cells(model, spec, images, {"scale_by_two": (0.5, 0)})
    assert left_out == {}
    # Outputs 0, 0.25, 0.5, 0.75, 1.0 at scale 0.5: levels 0, 1, 1, 2, 2 (half away from 0).
    stats = cell(0.0, 0)
    assert stats["scale_by_two"]["distinct_levels"] == 3
    assert stats["scale_by_two"]["float_max"] == pytest.approx(1.0)
    # Every weight stuck at 0: one level; the same faulty copy serves the next cell.
    assert cell(1.0, 0)["scale_by_two"]["distinct_levels"] == 1
    assert cell(0.0, 0)["scale_by_two"]["distinct_levels"] == 3


def test_keras_twin_reads_the_tensor_the_file_holds():
    """A BatchNormalization alone after a layer is folded into it by converters: the
    Keras side reads the normalised output. A separate activation layer leaves it unclear
    which tensor the file holds: that layer's Keras numbers are left out, with the reason."""
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="folded")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dense(3, name="plain_relu")(x)
    x = keras.layers.ReLU(name="relu")(x)
    outputs = keras.layers.Dense(2, name="logits")(x)
    model = keras.Model(inputs, outputs)
    points, left_out = int8_stats.keras_points(model, ["folded", "plain_relu", "logits", "gone"])
    assert points == {"folded": "bn", "logits": "logits"}
    assert set(left_out) == {"plain_relu", "gone"} and "ReLU" in left_out["plain_relu"]


@pytest.fixture(scope="module")
def int8_exports(tmp_path_factory):
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed; run `make deps`.")
    root = tmp_path_factory.mktemp("int8")
    model_path = _trained_classifier(
        "fmnist_mlp",
        root / "run" / "classifier.keras",
        fault_aware_kinds=("weight",),
        fault_aware_max_rate=0.6,
    )
    config = export_lib.ExportConfig(
        model=str(model_path),
        out=str(root / "export"),
        formats=("tflite_int8", "tflite_int8_fault_calibrated", "tflite_int8_fault_qat"),
        calibration_steps=20,
        qat_epochs=1,
        qat_examples=4096,
        test_examples=2000,
        data_options=DataOptions(data="fashion_mnist"),
    )
    manifest = export_lib.export_classifier(config)
    return model_path, root / "export", manifest


def _images(count: int = 300) -> np.ndarray:
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    return arrays["test"][0][:count].astype(np.float32) / 255.0


@requires_fashion_mnist
def test_tflite_levels_match_keras_and_collapse_under_faults(int8_exports):
    model_path, out, _ = int8_exports
    model = tflite_runner.TFLiteModel.load(out / FILES["ptq"])
    spec = FaultSpec(kind="weight", rates=(0.0, 0.6), trials=2)
    result = int8_stats.diagnose(model, spec, _images(), 2, keras_runner.load_model(model_path))
    assert result["layers"] == list(model.layers)
    clean, faulty = result["rates"]["0"], result["rates"]["0.6"]
    for layer in result["layers"]:
        # The file's int8 activations use the levels its float twin quantizes to (earlier
        # layers' rounding moves a few values by one level).
        tflite, float_twin = clean["tflite"][layer], clean["keras"][layer]
        assert abs(tflite["distinct_levels"] - float_twin["distinct_levels"]) <= max(
            3, 0.03 * float_twin["distinct_levels"]
        )
    logits = result["layers"][-1]
    assert (
        faulty["tflite"][logits]["distinct_levels"]
        < 0.5 * clean["tflite"][logits]["distinct_levels"]
    )
    assert faulty["tflite"][logits]["range_used"] < clean["tflite"][logits]["range_used"]


@requires_fashion_mnist
def test_fault_calibration_narrows_the_ranges_faults_shrink(int8_exports):
    _, out, manifest = int8_exports
    ptq = int8_stats.activation_quantization(tflite_runner.TFLiteModel.load(out / FILES["ptq"]))
    calibrated = int8_stats.activation_quantization(
        tflite_runner.TFLiteModel.load(out / FILES["fault_calibrated"])
    )
    assert list(ptq) == list(calibrated)
    ratios = {layer: calibrated[layer][0] / ptq[layer][0] for layer in ptq}
    # Stuck-at-0 weight faults shrink activations, more so deeper: finer scales.
    assert all(ratio < 1.0 for ratio in ratios.values()), ratios
    assert ratios[list(ratios)[-1]] < ratios[list(ratios)[0]], ratios
    record = manifest["artifacts"][FILES["fault_calibrated"]]["fault_calibration"]
    assert record["rates"] == [0.0, 0.3, 0.6] and record["median_width_ratio"] < 1.0


@requires_fashion_mnist
def test_fault_qat_export_is_full_int8(int8_exports):
    _, out, manifest = int8_exports
    entry = manifest["artifacts"][FILES["fault_qat"]]
    assert entry["input"]["dtype"] == "int8" and entry["output"]["dtype"] == "int8"
    model = tflite_runner.TFLiteModel.load(out / FILES["fault_qat"])
    assert all(layer.weights.dtype == np.int8 for layer in model.layers.values())
    assert entry["fault_qat"] == {"kind": "weight", "max_rate": 0.6}
    assert len(entry["qat_history"]) == 1


@requires_fashion_mnist
@pytest.mark.parametrize("mode", list(FILES))
def test_every_mode_keeps_clean_int8_accuracy(int8_exports, mode):
    """On a fault-aware model (what the fault-tolerant int8 modes are for)."""
    _, _, manifest = int8_exports
    accuracy = manifest["artifacts"][FILES[mode]]["test_accuracy"]
    assert accuracy >= manifest["keras_test_accuracy"] - 0.005, (
        f"{mode}: int8 {100 * accuracy:.2f}% vs float32 {100 * manifest['keras_test_accuracy']:.2f}%"
    )


def test_fault_aware_qat_step_holds_faulted_weights():
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    from aftt_tf.deploy import qat

    tf_keras.utils.set_random_seed(0)
    twin = tf_keras.Sequential(
        [tf_keras.Input((6,)), tf_keras.layers.Dense(5, name="hidden"), tf_keras.layers.Dense(3)]
    )
    quantized = tfmot.quantization.keras.quantize_model(twin)
    model = qat._fault_aware(quantized, 0.9, 7, tf, tf_keras)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(1e-2),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    kernels = [v for v in quantized.trainable_variables if v.name.endswith("kernel:0")]
    before = [k.numpy().copy() for k in kernels]
    images = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 3, 32)
    model.fit(images, labels, batch_size=32, epochs=1, verbose=0)  # One step (step 0).
    rate = 0.9 * tf.random.stateless_uniform([], seed=[7, 0]).numpy()
    assert 0 < rate < 0.9
    keep_hidden, keep_out = (
        tf.random.stateless_uniform(kernel.shape, seed=[8 + index, 0]).numpy() >= rate
        for index, kernel in enumerate(kernels)
    )
    changed_hidden, changed_out = (
        kernel.numpy() != old for kernel, old in zip(kernels, before, strict=True)
    )
    # Faulted weights computed as 0, got no gradient and were restored: unchanged. With
    # faults in the forward pass, a hidden unit whose outgoing weights are all faulted
    # passes back no gradient, and one whose inputs are all faulted outputs 0 (its
    # outgoing weights get none): exactly these positions learn.
    alive_backward = keep_out.any(axis=1)  # Per hidden unit.
    alive_forward = keep_hidden.any(axis=0)
    np.testing.assert_array_equal(changed_hidden, keep_hidden & alive_backward[None, :])
    np.testing.assert_array_equal(changed_out, keep_out & alive_forward[:, None])
    assert changed_hidden.any() and (keep_hidden & ~alive_backward[None, :]).any()


@requires_fashion_mnist
def test_faults_cli_records_per_layer_statistics(int8_exports, tmp_path):
    import json
    import subprocess
    import sys

    model_path, out, _ = int8_exports
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aftt_tf.cli.faults",
            f"--model=keras={model_path}",
            f"--model=int8={out / FILES['ptq']}",
            f"--model=calibrated={out / FILES['fault_calibrated']}",
            "--fault=weight",
            "--rates=0,0.6",
            "--trials=2",
            "--test_examples=300",
            "--data=fashion_mnist",
            f"--out={tmp_path / 'campaign'}",
            "--per_layer_stats",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    statistics = json.loads((tmp_path / "campaign" / "per_layer_stats.json").read_text())
    assert set(statistics["models"]) == {"int8", "calibrated"} and not statistics["not_described"]
    for entry in statistics["models"].values():
        assert entry["keras_twin"] == "keras"  # Found through the export manifest's hash.
        assert set(entry["rates"]) == {"0", "0.6"} and "keras" in entry["rates"]["0.6"]
    assert "int8: distinct int8 levels per layer (weight faults)" in result.stdout
    # Fault-aware calibration keeps more levels under faults at the logits.
    logits = statistics["models"]["int8"]["layers"][-1]
    levels = {
        label: entry["rates"]["0.6"]["tflite"][logits]["distinct_levels"]
        for label, entry in statistics["models"].items()
    }
    assert levels["calibrated"] > levels["int8"], levels


@requires_fashion_mnist
def test_per_rate_deployment_runs_each_rate_on_its_own_file(int8_exports, tmp_path):
    from aftt_tf.campaigns import engine as campaign
    from aftt_tf.campaigns import outputs
    from aftt_tf.deploy import fault_calibration
    from aftt_tf.faults.spec import FaultTargetError

    model_path, out, _ = int8_exports
    deployable = export_lib.deployable_classifier(keras_runner.load_model(model_path))
    deployable.export(str(tmp_path / "saved_model"), format="tf_saved_model", verbose=False)
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    representative = export_lib._representative_dataset(arrays["train"][0], 20, 32, 0)
    content = fault_calibration.per_rate_int8(
        str(tmp_path / "saved_model"), representative, "weight", (0.6,), 2, 1000
    )[0.6]
    (tmp_path / "chip_0.6.tflite").write_bytes(content)
    ptq = tflite_runner.TFLiteModel.load(out / FILES["ptq"])
    chip = tflite_runner.TFLiteModel.load(tmp_path / "chip_0.6.tflite")
    per_rate = tflite_runner.PerRateTFLiteModel({0.0: ptq, 0.6: chip})
    spec = FaultSpec(kind="weight", rates=(0.0, 0.6), trials=3)
    images, labels = arrays["test"][0][:1000], arrays["test"][1][:1000]
    results = campaign.run_campaign(
        {"ptq": ptq, "chip": chip, "per_rate": per_rate},
        spec,
        images,
        labels,
        tmp_path / "campaign",
        progress=False,
    )
    cells = {
        (c["model"], c["rate"], c["trial"]): c["accuracy"]
        for c in outputs.campaign_cells(tmp_path / "campaign", results)
    }
    for trial in range(3):
        assert cells[("per_rate", 0.0, trial)] == cells[("ptq", 0.0, trial)]
        assert cells[("per_rate", 0.6, trial)] == cells[("chip", 0.6, trial)]
    mean = {m: np.mean([cells[(m, 0.6, t)] for t in range(3)]) for m in ("ptq", "per_rate")}
    assert mean["per_rate"] > mean["ptq"], mean  # Calibrated for the chip's rate.
    with pytest.raises(FaultTargetError, match=r"No file calibrated for rate\(s\) \[0.3\]"):
        per_rate.select_layers(FaultSpec(kind="weight", rates=(0.0, 0.3)))
