"""A new user's whole chain through the binaries, on three models we did not design and
data in .npz files: a Sequential CNN with its own Rescaling and BatchNormalization, the
same CNN fed [0, 1] floats, and a Dense model with flat inputs and a softmax output.

export (float32 and int8 calibrated on the user's data; QAT left out with its reason,
the others kept) -> campaigns on the .keras and each file -> aftt-report -> repair and
the repaired protocol on the user's data. Every accuracy a binary reports is checked
against an independent computation here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from aftt_tf.data import datasets as data
from tests.conftest import requires_fashion_mnist

pytestmark = [requires_fashion_mnist, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
L = keras.layers


def _cli(binary: str, *argv: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", f"aftt_tf.cli.{binary}", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def _cnn(rescaling: bool) -> keras.Model:
    layers = [keras.Input((28, 28, 1))]
    if rescaling:
        layers.append(L.Rescaling(1 / 255.0, name="rescale"))
    layers += [
        L.Conv2D(8, 3, strides=2, use_bias=False, name="conv1"),
        L.BatchNormalization(momentum=0.9, name="bn1"),
        L.ReLU(name="relu1"),
        L.DepthwiseConv2D(3, name="depthwise"),
        L.BatchNormalization(momentum=0.9, name="bn2"),
        L.ReLU(name="relu2"),
        L.Flatten(name="flatten"),
        L.Dense(10, name="logits"),
    ]
    return keras.Sequential(layers, name="user_cnn")


def _dense() -> keras.Model:
    inputs = keras.Input((784,), name="pixels")
    x = L.Dense(64, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, L.Dense(10, activation="softmax", name="probabilities")(x))


@pytest.fixture(scope="module")
def user_models(tmp_path_factory):
    """{name: (model path, train npz, test npz, input transform, inputs of the test set)}."""
    root = tmp_path_factory.mktemp("user")
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    train_x, train_y = train_x[:3000], train_y[:3000]
    test_x, test_y = test_x[:600], test_y[:600]
    stored = {
        # Raw pixels as the user keeps them: uint8, the model scales them itself.
        "rescaling_cnn": (train_x, test_x, "raw", lambda x: x.astype(np.float32)),
        # Floats in [0, 1].
        "cnn": (train_x / np.float32(255), test_x / np.float32(255), "auto", lambda x: x),
        # Flat floats in [0, 1], softmax output.
        "dense": (
            (train_x / np.float32(255)).reshape(-1, 784),
            (test_x / np.float32(255)).reshape(-1, 784),
            "auto",
            lambda x: x,
        ),
    }
    models = {}
    for name, (train_stored, test_stored, transform, to_inputs) in stored.items():
        keras.utils.set_random_seed(0)
        model = _dense() if name == "dense" else _cnn(rescaling=name == "rescaling_cnn")
        softmax = name == "dense"
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax))
        model.fit(to_inputs(train_stored), train_y, epochs=3, batch_size=64, verbose=0)
        folder = root / name
        folder.mkdir()
        model.save(folder / "model.keras")
        np.savez(folder / "train.npz", x=train_stored, y=train_y)
        np.savez(folder / "test.npz", x=test_stored, y=test_y)
        models[name] = (folder, transform, to_inputs(test_stored).astype(np.float32), test_y)
    return models


def _keras_accuracy(path: Path, inputs: np.ndarray, labels: np.ndarray) -> float:
    model = keras.saving.load_model(path, compile=False)
    return float(np.mean(np.argmax(model.predict(inputs, verbose=0), -1) == labels))


def _tflite_accuracy(path: Path, inputs: np.ndarray, labels: np.ndarray) -> float:
    """The file run by LiteRT with its own input quantization, one example at a time."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]
    correct = 0
    for example, label in zip(inputs, labels, strict=True):
        value = example[None]
        scale, zero_point = source["quantization"]
        if source["dtype"] == np.int8:
            value = np.clip(np.round(value / scale) + zero_point, -128, 127).astype(np.int8)
        interpreter.set_tensor(source["index"], value.astype(source["dtype"]))
        interpreter.invoke()
        output = interpreter.get_tensor(target["index"]).astype(np.float32)
        correct += int(np.argmax(output) == label)
    return correct / len(labels)


@pytest.fixture(scope="module")
def exports(user_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    result = {}
    for name, (folder, transform, _, _) in user_models.items():
        out = root / name
        run = _cli(
            "export",
            f"--model={folder / 'model.keras'}",
            f"--out={out}",
            f"--data=npz:{folder / 'test.npz'}",
            f"--calibration_data=npz:{folder / 'train.npz'}",
            f"--input_transform={transform}",
            "--calibration_steps=20",
        )
        assert run.returncode == 0, run.stderr[-3000:]
        result[name] = (out, json.loads((out / "manifest.json").read_text()), run)
    return result


@pytest.mark.parametrize("name", ["rescaling_cnn", "cnn", "dense"])
def test_export_calibrates_on_the_users_data_and_keeps_what_converts(name, user_models, exports):
    folder, transform, inputs, labels = user_models[name]
    out, manifest, run = exports[name]
    assert {"model_float32.tflite", "model_int8.tflite"} <= set(manifest["artifacts"])
    assert manifest["data"]["test"]["source"].endswith("test.npz")
    assert manifest["data"]["calibration"]["source"].endswith("train.npz")
    assert manifest["data"]["output_kind"] == ("probabilities" if name == "dense" else "logits")
    if name != "dense":  # BatchNormalization and Rescaling: no tf_keras rebuild for QAT.
        assert "tflite_int8_qat" in manifest["not_exported"]
        assert "not exported: tflite_int8_qat" in run.stdout
    keras_accuracy = _keras_accuracy(folder / "model.keras", inputs, labels)
    assert manifest["keras_test_accuracy"] == pytest.approx(keras_accuracy, abs=1e-9)
    assert keras_accuracy > 0.6
    for file_name in ("model_float32.tflite", "model_int8.tflite"):
        independent = _tflite_accuracy(out / file_name, inputs, labels)
        assert manifest["artifacts"][file_name]["test_accuracy"] == pytest.approx(
            independent, abs=1e-9
        )
    int8 = manifest["artifacts"]["model_int8.tflite"]["test_accuracy"]
    assert int8 > keras_accuracy - 0.05  # Calibrated on the model's own inputs.
    if name == "rescaling_cnn":
        assert manifest["artifacts"]["model_float32.tflite"]["layers"]["conv1"][
            "folded_rescaling_and_batch_normalization"
        ] == ["rescale", "bn1"]


@pytest.mark.parametrize("name", ["rescaling_cnn", "cnn", "dense"])
def test_campaigns_on_each_file_and_a_report(name, user_models, exports, tmp_path):
    folder, transform, inputs, labels = user_models[name]
    out, manifest, _ = exports[name]
    campaign = tmp_path / "campaign"
    run = _cli(
        "faults",
        f"--model=keras={folder / 'model.keras'}",
        f"--model=float32={out / 'model_float32.tflite'}",
        f"--model=int8={out / 'model_int8.tflite'}",
        f"--data=npz:{folder / 'test.npz'}",
        f"--input_transform={transform}",
        "--fault=weight",
        "--rates=0,0.3",
        "--trials=3",
        f"--out={campaign}",
        "--per_layer_stats",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    statistics = json.loads((campaign / "per_layer_stats.json").read_text())
    assert statistics["models"]["int8"]["keras_twin"] == "keras"  # Sequential models too.
    results = json.loads((campaign / "results.json").read_text())
    assert set(results["summary"]) == {"keras", "float32", "int8"}
    clean = {m: results["summary"][m]["all"]["clean_accuracy"] for m in results["summary"]}
    assert clean["keras"] == pytest.approx(manifest["keras_test_accuracy"], abs=1e-9)
    assert clean["float32"] == pytest.approx(
        manifest["artifacts"]["model_float32.tflite"]["test_accuracy"], abs=1e-9
    )
    assert clean["int8"] == pytest.approx(
        manifest["artifacts"]["model_int8.tflite"]["test_accuracy"], abs=1e-9
    )
    report = tmp_path / "report"
    made = _cli("report", str(campaign), f"--out={report}")
    assert made.returncode == 0, made.stderr[-3000:]
    text = (report / "report.md").read_text()
    assert "mean drop" in text and "By normalised AUC" in text
    assert f"{100 * clean['int8']:.2f}" in text
    assert (report / "report.html").read_text().count("data:image/png;base64") == 1


@pytest.mark.parametrize("name", ["rescaling_cnn", "dense"])
def test_repair_on_the_users_data(name, user_models, tmp_path):
    folder, transform, inputs, labels = user_models[name]
    out = tmp_path / "repair"
    run = _cli(
        "repair",
        f"--model={folder / 'model.keras'}",
        f"--data=npz:{folder / 'train.npz'}",
        f"--test_data=npz:{folder / 'test.npz'}",
        f"--input_transform={transform}",
        "--fault=weight",
        "--rate=0.6",
        "--epochs=1",
        f"--out={out}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["clean_test_accuracy"] == pytest.approx(
        _keras_accuracy(folder / "model.keras", inputs, labels), abs=1e-9
    )
    assert metrics["output_kind"] == ("probabilities" if name == "dense" else "logits")
    repaired = _keras_accuracy(out / "classifier.keras", inputs, labels)
    assert metrics["faulty_test_accuracy_after_repair"] == pytest.approx(repaired, abs=1e-9)
    assert repaired > metrics["faulty_test_accuracy_before_repair"]


def test_held_out_repair_data_and_the_repaired_protocol(user_models, tmp_path):
    folder, _, _, _ = user_models["dense"]
    # Without --test_data a file's seeded 20% is held out: measured on that part only.
    held = _cli(
        "repair",
        f"--model={folder / 'model.keras'}",
        f"--data=npz:{folder / 'train.npz'}",
        "--rate=0.6",
        "--epochs=1",
        f"--out={tmp_path / 'held'}",
    )
    assert held.returncode == 0, held.stderr[-3000:]
    held_metrics = json.loads((tmp_path / "held" / "metrics.json").read_text())
    with np.load(folder / "train.npz") as arrays:
        train_x, train_y = arrays["x"], arrays["y"]
    order = np.random.default_rng(0).permutation(len(train_y))
    part = np.sort(order[: int(round(0.2 * len(order)))])
    assert held_metrics["data"]["test"]["examples"] == len(part)
    assert held_metrics["clean_test_accuracy"] == pytest.approx(
        _keras_accuracy(folder / "model.keras", train_x[part], train_y[part]), abs=1e-9
    )
    protocol = _cli(
        "faults",
        f"--model={folder / 'model.keras'}",
        f"--data=npz:{folder / 'test.npz'}",
        f"--repair_data=npz:{folder / 'train.npz'}",
        "--rates=0,0.6",
        "--trials=2",
        "--repair_epochs=1",
        f"--out={tmp_path / 'repaired'}",
    )
    assert protocol.returncode == 0, protocol.stderr[-3000:]
    results = json.loads((tmp_path / "repaired" / "results.json").read_text())
    assert results["protocol"] == "repaired"
    rows = {row["rate"]: row for row in results["summary"]["model"]["all"]["per_rate"]}
    assert rows[0.6]["mean"] > 0.5  # Repaired on the user's data, not Fashion-MNIST's.


def test_missing_data_is_a_usage_error_not_a_guess(user_models, tmp_path):
    folder, _, _, _ = user_models["cnn"]
    for binary in ("faults", "export", "repair"):
        run = _cli(binary, f"--model={folder / 'model.keras'}", f"--out={tmp_path / binary}")
        assert run.returncode == 2, (binary, run.stderr[-2000:])
        assert "--data is required" in run.stderr
        assert not (tmp_path / binary).exists()


def test_auto_refuses_float_pixels_in_0_255(user_models, tmp_path):
    folder, _, _, _ = user_models["cnn"]
    with np.load(folder / "test.npz") as arrays:
        np.savez(tmp_path / "pixels.npz", x=np.round(arrays["x"] * 255), y=arrays["y"])
    run = _cli(
        "faults",
        f"--model={folder / 'model.keras'}",
        f"--data=npz:{tmp_path / 'pixels.npz'}",
        f"--out={tmp_path / 'c'}",
    )
    assert run.returncode == 2 and "look like pixels in [0, 255]" in run.stderr
