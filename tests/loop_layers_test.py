"""Weights inside WHILE bodies (issue 23): a Keras layer that loops (`keras.ops.fori_loop`)
converts to a builtin WHILE whose body subgraph holds its own weights. The file's
layers include them, named by the Keras path; Keras and the file fault the same counts
with equal faulty outputs; coverage counts every subgraph's weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from aftt_tf.data import inputs
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import keras_runner, tflite_runner

L = keras.layers
RAW = inputs.resolve("raw")


class _Loop(L.Layer):
    """Applies one Dense three times: the same kernel in every iteration."""

    def build(self, shape):
        self.step = L.Dense(shape[-1], activation="tanh", name="step")
        self.step.build(shape)

    def call(self, x):
        return ops.fori_loop(0, 3, lambda index, state: self.step(state), x)


@pytest.fixture(scope="module")
def loop_model(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((12,)), L.Dense(16, name="inp"), _Loop(name="loop"), L.Dense(5, name="logits")]
    )
    root = tmp_path_factory.mktemp("loop")
    model.export(str(root / "saved"), format="tf_saved_model", verbose=False)
    path = root / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(root / "saved")).convert())
    data = np.random.default_rng(0).normal(size=(80, 12)).astype(np.float32)
    labels = np.argmax(np.asarray(model(data)), axis=-1)
    return model, path, data, labels


def test_the_loop_body_weights_are_a_layer_of_the_file(loop_model):
    model, path, _, _ = loop_model
    tflite = tflite_runner.TFLiteModel(path)
    assert list(tflite.layers) == ["inp", "logits", "loop/step"]
    assert tflite.layers["loop/step"].subgraph > 0
    coverage = tflite.coverage(FaultSpec(kind="weight"))
    assert coverage["targeted_layers_weight_share"] == 1.0 and not coverage["left_out"]
    assert coverage["model_weight_elements"] == 12 * 16 + 16 * 16 + 16 * 5
    node = tflite.coverage(FaultSpec(kind="node", include_output_nodes=True))
    reasons = {entry["layer"]: entry["reason"] for entry in node["left_out"]}
    assert "WHILE or IF" in reasons["loop/step"]


@pytest.mark.parametrize("kind", ["weight", "bit"])
def test_keras_and_the_file_fault_the_loop_the_same(kind, loop_model):
    model, path, data, labels = loop_model
    spec = FaultSpec(kind=kind, rates=(0.3,), bit_position=22 if kind == "bit" else -1)
    keras_run = keras_runner.KerasModel(model).runner(spec, data, labels, 40, RAW)
    file_run = tflite_runner.TFLiteModel(path).runner(spec, data, labels, 40, RAW)
    assert keras_run.target_names == ["inp", "loop/step", "logits"]
    for trial in range(2):
        keras_counts, file_counts = keras_run.inject(0.3, trial), file_run.inject(0.3, trial)
        assert keras_counts["per_layer"] == file_counts["per_layer"]
        assert keras_counts["per_layer"]["loop/step"]["faulted"] == round(0.3 * 256)
        np.testing.assert_allclose(keras_run.logits(), file_run.logits(), rtol=1e-4, atol=1e-4)
    clean = np.asarray(model(data))
    assert np.abs(file_run.logits() - clean).max() > 1e-3
    keras_run.close()
