"""--fault=bit_error: the rate is the probability that each stored bit flips, drawn the
same way in every runtime (float32 Keras variables and .tflite files, int8 codes)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from aftt_tf.data import inputs as input_transforms
from aftt_tf.faults import FaultSpec, sampling
from aftt_tf.runtimes import keras_runner, tflite_runner
from tests import conversion

RAW = input_transforms.resolve("raw")


def test_exact_bit_errors_flip_the_rate_of_the_bits_and_bernoulli_about_it():
    rng = np.random.default_rng(0)
    drawn = sampling.bit_masks(1000, 8, 0.01, rng, "exact")
    assert drawn.bits == 80  # round(0.01 * 1000 * 8) distinct bits.
    assert len(np.unique(drawn.positions)) == len(drawn.positions)
    assert np.all(drawn.masks > 0) and np.all(drawn.masks < 256)
    several = sum(int(m).bit_count() > 1 for m in drawn.masks)
    assert len(drawn.positions) + sum(int(m).bit_count() - 1 for m in drawn.masks) == 80
    assert several >= 0
    counts = [sampling.bit_masks(1000, 32, 0.001, rng, "bernoulli").bits for _ in range(200)]
    assert abs(np.mean(counts) - 32) < 3 * np.sqrt(32 / 200)  # Binomial(32000, 0.001).


def test_several_bits_of_one_word_can_flip():
    drawn = sampling.bit_masks(4, 8, 0.5, np.random.default_rng(1), "exact")
    assert drawn.bits == 16 and max(int(m).bit_count() for m in drawn.masks) > 1


@pytest.fixture(scope="module")
def model_and_files(tmp_path_factory):
    keras.utils.set_random_seed(9)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, activation="relu", name="depthwise")(x)
    x = keras.layers.Flatten()(x)
    wide = keras.initializers.RandomNormal(stddev=1.0, seed=9)
    bias = keras.initializers.RandomNormal(stddev=0.1, seed=9)  # An all-zero bias is dropped.
    x = keras.layers.Dense(5, name="logits", kernel_initializer=wide, bias_initializer=bias)(x)
    model = keras.Model(inputs, x)
    images = np.random.default_rng(9).normal(size=(120, 8, 8, 3)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    root = tmp_path_factory.mktemp("bit_error")
    paths = conversion.tflite_files(model, root, "model", images)
    return model, paths, images, labels


def test_keras_and_the_float32_file_flip_the_same_bits(model_and_files):
    model, paths, images, labels = model_and_files
    spec = FaultSpec(kind="bit_error", rates=(0.0, 2e-3), trials=1, seed=4, include_bias=True)
    runner = keras_runner.CampaignRunner(model, spec, images, labels, 60, transform=RAW)
    try:
        counts = runner.inject(2e-3, 0)
        logits = runner.logits()
        cell = runner.evaluate_cell(2e-3, 0)
    finally:
        runner.close()
    file_runner = tflite_runner.TFLiteModel(paths["float32"]).runner(spec, images, labels, 60, RAW)
    file_counts = file_runner.inject(2e-3, 0)
    file_logits = file_runner.logits()
    file_cell = file_runner.evaluate_cell(2e-3, 0)
    assert counts == file_counts
    bits = sum(
        round(2e-3 * n * 32)
        for n in (3 * 3 * 3 * 8, 8, 3 * 3 * 8, 8, 4 * 4 * 8 * 5, 5)  # Kernels and biases.
    )
    assert counts["faulted"] == bits and counts["elements"] == 32 * (216 + 8 + 72 + 8 + 640 + 5)
    for check in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(check(logits).any(1), check(file_logits).any(1))
    finite = np.isfinite(logits).all(1)
    scale = np.maximum(1.0, np.abs(logits[finite]).max(axis=1, keepdims=True))
    assert np.all(np.abs(logits[finite] - file_logits[finite]) <= 1e-4 * scale)
    for key in ("accuracy", "non_finite", "realized_fraction"):
        assert cell[key] == file_cell[key], key
    assert cell["realized_fraction"] == pytest.approx(2e-3, rel=0.05)


def test_a_pairing_where_the_file_dropped_an_all_zero_bias_is_refused(tmp_path):
    """The converter drops a Dense's all-zero bias: with --include_bias the .keras would
    fault 5 more elements (bits of 0.0) than the file, so the pair is refused."""
    from aftt_tf.campaigns import evaluate

    keras.utils.set_random_seed(2)
    inputs = keras.Input((6,))
    wide = keras.initializers.RandomNormal(stddev=1.0, seed=2)
    model = keras.Model(inputs, keras.layers.Dense(5, name="out", kernel_initializer=wide)(inputs))
    images = np.random.default_rng(2).normal(size=(64, 6)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    path = conversion.tflite_files(model, tmp_path, "m", images, modes=("float32",))["float32"]
    spec = FaultSpec(kind="bit_error", rates=(0.0, 0.01), trials=1, include_bias=True)
    with pytest.raises(ValueError, match="all-zero bias"):
        evaluate({"keras": model, "file": str(path)}, spec, (images, labels), transform="raw")
    plain = FaultSpec(kind="bit_error", rates=(0.0, 0.01), trials=1)
    evaluate({"keras": model, "file": str(path)}, plain, (images, labels), transform="raw")


def test_the_int8_file_flips_bits_of_its_int8_codes(model_and_files):
    model, paths, images, labels = model_and_files
    file = tflite_runner.TFLiteModel(paths["int8"])
    spec = FaultSpec(kind="bit_error", rates=(0.0, 0.01), trials=1, seed=2)
    runner = file.runner(spec, images, labels, 60, RAW)
    clean = runner.logits()
    counts = runner.inject(0.01, 0)
    layer = file.layers["conv"]
    kernel = layer.kernels[0].weights
    before = tflite_runner.TensorValues(file.content, kernel).values
    after = tflite_runner.TensorValues(bytes(runner.buffer), kernel).values
    flipped = np.unpackbits((before.view(np.uint8) ^ after.view(np.uint8)).reshape(-1))
    assert (
        int(flipped.sum())
        == round(0.01 * before.size * 8)
        == counts["per_layer"]["conv"]["faulted"]
    )
    assert np.abs(runner.logits() - clean).max() > 0


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"bit_position": 3}, "bit_position"),
        ({"bit_mode": "stuck_at_1"}, "bit_mode"),
        ({"array": "4x4"}, "weight_stationary"),
        ({"targets": ("scales",)}, "single stored elements"),
        ({"include_normalization": True}, "include_normalization"),
    ],
)
def test_what_bit_errors_do_not_take_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        FaultSpec(kind="bit_error", **fields).validate()
