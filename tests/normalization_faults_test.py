"""Normalisation parameters as an opt-in fault target (--include_normalization, issue 23):
the scale and offset of LayerNormalization and BatchNormalization in Keras, and in a
.tflite the constants that hold them (separate for LayerNormalization, folded into the
preceding layer for BatchNormalization)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.data import inputs
from aftt_tf.faults import sampling
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import keras_runner, tflite_runner
from tests import cli_helpers

L = keras.layers
RAW = inputs.resolve("raw")


def _model() -> keras.Model:
    keras.utils.set_random_seed(4)
    inputs_ = keras.Input((12, 6))
    # Preprocessing with per-channel constants and no statistics: not a target anywhere.
    x = L.Normalization(mean=np.arange(6.0), variance=np.arange(6.0) + 1, name="prep")(inputs_)
    x = L.Dense(16, name="embed")(x)
    x = L.LayerNormalization(name="norm")(x)
    x = L.GroupNormalization(groups=4, name="gn")(x)
    x = L.Conv1D(8, 3, name="conv")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    model = keras.Model(inputs_, L.Dense(5, name="logits")(L.Flatten()(x)))
    rng = np.random.default_rng(0)
    for name in ("norm", "gn", "bn"):
        layer = model.get_layer(name)
        layer.set_weights(
            [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()]
        )
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    model = _model()
    root = tmp_path_factory.mktemp("normalization")
    model.export(str(root / "saved"), format="tf_saved_model", verbose=False)
    path = root / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(root / "saved")).convert())
    data = np.random.default_rng(1).normal(size=(64, 12, 6)).astype(np.float32)
    return model, path, data, np.zeros(64, np.int64)


def _reference(model, spec, rate, data) -> np.ndarray:
    """A copy of the model whose gamma and beta hold the cell's faults, drawn with the
    campaign's generators (gamma: the layer's, beta: labelled layer/beta)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name in ("norm", "bn"):
        layer = copy.get_layer(name)
        for index, attribute in enumerate(("gamma", "beta")):
            label = name if index == 0 else f"{name}/{attribute}"
            rng = sampling.trial_rng(spec.seed, spec.kind, label, rate, 0)
            values = getattr(layer, attribute).numpy()
            values[sampling.sample_positions(values.size, rate, rng, "exact")] = 0.0
            getattr(layer, attribute).assign(values)
    return np.asarray(copy(data, training=False))


def test_keras_faults_reach_gamma_and_beta_only_when_asked(files):
    model, _, data, labels = files
    plain = keras_runner.KerasModel(model)
    left = {e["layer"]: e["reason"] for e in plain.coverage(FaultSpec())["left_out"]}
    assert "--include_normalization" in left["norm"] and "--include_normalization" in left["bn"]
    spec = FaultSpec(rates=(0.5,), include_normalization=True, layers=("norm", "bn"))
    assert plain.select_layers(spec) == ["norm", "bn"]
    runner = plain.runner(spec, data, labels, 32, RAW)
    counts = runner.inject(0.5, 0)
    assert counts["per_layer"] == {
        "norm": {"faulted": 16, "elements": 32},
        "bn": {"faulted": 8, "elements": 16},
    }
    np.testing.assert_allclose(runner.logits(), _reference(model, spec, 0.5, data), atol=1e-5)
    runner.close()
    assert FaultSpec(include_normalization=True).key() != FaultSpec().key()
    assert FaultSpec(include_normalization=False).key() == FaultSpec().key()
    with pytest.raises(ValueError, match="--include_normalization"):
        FaultSpec(kind="node", include_normalization=True).validate()


def test_the_file_faults_its_separate_constants_and_names_the_folded(files):
    """LayerNormalization's and GroupNormalization's gamma and beta are separate constants
    in the file: the same faults give the same outputs as in Keras (a Normalization
    layer's preprocessing constants are no target). The BatchNormalization is folded into the
    convolution: coverage says so, and it is no target of its own."""
    model, path, data, labels = files
    tflite = tflite_runner.TFLiteModel(path)
    spec = FaultSpec(rates=(0.5,), include_normalization=True, layers=("norm", "gn"))
    coverage = tflite.coverage(spec)
    assert coverage["normalization"]["separate"] == {
        "gn": ["gamma", "beta"],
        "norm": ["gamma", "beta"],
    }
    every = tflite.select_layers(FaultSpec(include_normalization=True))
    assert "prep" not in every and {"norm", "gn"} <= set(every)
    assert coverage["normalization"]["folded"] == {"bn": "conv"}
    plain_left = {e.get("layer"): e["reason"] for e in tflite.coverage(FaultSpec())["left_out"]}
    assert any("--include_normalization" in reason for reason in plain_left.values())
    file_runner = tflite.runner(spec, data, labels, 32, RAW)
    keras_run = keras_runner.KerasModel(model).runner(spec, data, labels, 32, RAW)
    file_counts, keras_counts = file_runner.inject(0.5, 0), keras_run.inject(0.5, 0)
    assert file_counts["per_layer"] == keras_counts["per_layer"]
    np.testing.assert_allclose(file_runner.logits(), keras_run.logits(), rtol=1e-4, atol=1e-4)
    clean = tflite_runner.tflite_file.predict(tflite, data, 32)
    assert np.abs(file_runner.logits() - clean).max() > 1e-2  # The faults do something.
    keras_run.close()


def test_cli_campaign_on_the_model_and_its_file(files, tmp_path):
    """aftt-faults --include_normalization pairs the .keras and its float32 file: the same
    counts and accuracy in every cell, and the console names the folded layer."""
    model, path, data, _ = files
    labels = np.argmax(np.asarray(model(data, training=False)), axis=-1)
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "test.npz", x=data, y=labels)
    out = tmp_path / "campaign"
    result = cli_helpers.run(
        "aftt_tf.cli.faults",
        f"--model=keras={tmp_path / 'model.keras'}",
        f"--model=file={path}",
        f"--data=npz:{tmp_path / 'test.npz'}",
        "--input_transform=raw",
        "--include_normalization",
        "--layers=norm",
        "--allow_chance_accuracy",  # An untrained model: its own predictions as labels.
        "--rates=0,0.25,0.5",
        "--trials=2",
        f"--out={out}",
    )
    assert "folded (faulted only through that layer's weights): bn into conv" in result.stdout
    by_model = cli_helpers.cells_by_model(out)
    for key, cell in by_model["keras"].items():
        assert by_model["file"][key]["faulted"] == cell["faulted"]
        assert by_model["file"][key]["accuracy"] == pytest.approx(
            cell["accuracy"], abs=1.5 / len(data)
        )  # One near-tie may flip.
