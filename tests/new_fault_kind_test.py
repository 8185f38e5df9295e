"""A fault kind defined in this file alone, registered, and run by both runtimes: the
extension point of `aftt_tf.faults.kinds` (docs/architecture.md) needs no project file
edited. The kind holds faulted weights at minus the tensor's largest |w|."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from aftt_tf.campaigns import evaluate
from aftt_tf.data import inputs as input_transforms
from aftt_tf.faults import FaultSpec, kinds
from aftt_tf.runtimes import keras_runner, tflite_runner
from tests import conversion

RAW = input_transforms.resolve("raw")


class StuckAtMinusMax(kinds.FaultKind):
    """Weights stuck at -max |w| of their tensor (an adversarial stuck value)."""

    name = "stuck_at_minus_max"
    family = kinds.PARAMETER
    summary = "weights stuck at minus their tensor's largest |w|"
    per_element = True

    def corrupt(self, stored, positions, rng, spec):
        values = np.array(stored.values, copy=True)
        largest = float(np.max(np.abs(stored.reals())))
        values[positions] = stored.encode(-largest, positions)
        return values


@pytest.fixture
def stuck_at_minus_max():
    kind = kinds.register(StuckAtMinusMax)
    yield kind
    kinds.unregister(kind.name)


@pytest.fixture(scope="module")
def model_and_file(tmp_path_factory):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu", name="depthwise")(x)
    x = keras.layers.Flatten()(x)
    wide = keras.initializers.RandomNormal(stddev=1.0, seed=5)
    x = keras.layers.Dense(16, activation="relu", name="hidden", kernel_initializer=wide)(x)
    x = keras.layers.Dense(5, name="logits", kernel_initializer=wide)(x)
    model = keras.Model(inputs, x)
    images = np.random.default_rng(5).normal(size=(80, 10, 10, 3)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    root = tmp_path_factory.mktemp("new_kind")
    path = conversion.tflite_files(model, root, "model", images, modes=("float32",))["float32"]
    return model, path, images, labels


def test_a_kind_defined_in_a_test_runs_the_same_in_keras_and_the_float32_file(
    stuck_at_minus_max, model_and_file
):
    model, path, images, labels = model_and_file
    spec = FaultSpec(kind="stuck_at_minus_max", rates=(0.0, 0.2), trials=1, seed=3)
    assert spec.fault_kind is stuck_at_minus_max
    runner = keras_runner.CampaignRunner(model, spec, images, labels, 40, transform=RAW)
    try:
        clean = runner.logits()
        counts = runner.inject(0.2, 0)
        logits = runner.logits()
        conv = runner.faulty.get_layer("conv")
        kernel = np.asarray(conv.faulty_kernel()).reshape(-1)
        original = np.asarray(model.get_layer("conv").kernel).reshape(-1)
    finally:
        runner.close()
    file_runner = tflite_runner.TFLiteModel(path).runner(spec, images, labels, 40, RAW)
    file_counts = file_runner.inject(0.2, 0)
    file_logits = file_runner.logits()
    changed = kernel != original
    assert changed.sum() == round(0.2 * original.size)
    np.testing.assert_array_equal(kernel[changed], -np.max(np.abs(original)))
    assert counts["per_layer"] == file_counts["per_layer"]
    assert np.abs(logits - clean).max() > 0.1  # The faults change the outputs...
    scale = np.maximum(1.0, np.abs(logits).max(axis=1, keepdims=True))
    difference = np.abs(logits - file_logits)
    assert np.all(difference <= 1e-4 * scale), float((difference / scale).max())  # ...alike.


def test_a_registered_kind_runs_a_whole_campaign_and_refuses_what_it_cannot_do(
    stuck_at_minus_max, model_and_file, tmp_path
):
    model, path, images, labels = model_and_file
    spec = FaultSpec(kind="stuck_at_minus_max", rates=(0.0, 0.1), trials=2, seed=1)
    by_keras = evaluate({"keras": model}, spec, (images, labels), transform="raw")
    by_file = evaluate({"file": str(path)}, spec, (images, labels), transform="raw")
    assert by_keras.accuracy("keras", 0.1) == by_file.accuracy("file", 0.1)
    assert by_keras.accuracy("keras", 0.1)[0] < 1.0
    with pytest.raises(ValueError, match="output_stationary"):
        FaultSpec(kind="stuck_at_minus_max", array="4x4", dataflow="output_stationary").validate()
    with pytest.raises(ValueError, match="already registered"):

        class Other(StuckAtMinusMax):
            pass

        kinds.register(Other)


def test_an_unknown_kind_is_refused_naming_the_registered_ones():
    with pytest.raises(ValueError, match="Unknown fault kind 'stuck_at_minus_max'.*weight"):
        FaultSpec(kind="stuck_at_minus_max").validate()
