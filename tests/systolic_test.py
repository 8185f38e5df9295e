"""Systolic-array placement: a faulty processing element corrupts the weights (weight
stationary) or outputs (output stationary) it computes, checked against a tiled numpy
matmul with the same PEs stuck, in Keras and in the .tflite runtime."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.faults import systolic
from aftt_tf.faults.spec import FaultSpec, FaultTargetError
from aftt_tf.runtimes import keras_runner, tflite_runner

L = keras.layers


def test_the_readme_worked_example():
    """Dense 5 -> 3 on a 2 x 2 array, weight stationary: PE (1, 0) holds W[1, 0],
    W[1, 2], W[3, 0] and W[3, 2]."""
    positions = systolic.weight_positions((5, 3), np.array([[1, 0]]), 2, 2)
    assert [tuple(int(i) for i in np.unravel_index(p, (5, 3))) for p in positions] == [
        (1, 0),
        (1, 2),
        (3, 0),
        (3, 2),
    ]


@pytest.mark.parametrize("shape", [(7, 5), (37, 19), (64, 64)])
def test_weight_positions_match_a_tiled_matmul_with_stuck_registers(shape):
    rng = np.random.default_rng(0)
    rows, cols = 4, 6
    pes = systolic.faulty_pes(rows, cols, 0.25, rng, "exact")
    stuck = np.zeros((rows, cols), bool)
    stuck[pes[:, 0], pes[:, 1]] = True
    inputs, weights = rng.normal(size=(9, shape[0])), rng.normal(size=shape)
    zeroed = weights.copy().reshape(-1)
    zeroed[systolic.weight_positions(shape, pes, rows, cols)] = 0.0
    expected = systolic.simulate_weight_stationary(inputs, weights, rows, cols, stuck)
    np.testing.assert_allclose(inputs @ zeroed.reshape(shape), expected, atol=1e-10)


def _models(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(10, 3, name="conv")(inputs)
    model = keras.Model(inputs, L.Dense(7, name="logits")(L.Flatten()(x)))
    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    path = tmp_path / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved")).convert())
    return model, path


def test_keras_and_tflite_place_the_same_pes_as_the_numpy_array(tmp_path):
    """A 4 x 6 array, 25% of its PEs faulty: the faulty convolution's output equals the
    tiled matmul of its im2col patches with those PEs' registers stuck at 0, the cell
    records the PEs, and the float32 file faults the same weights with equal logits."""
    model, path = _models(tmp_path)
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 1, (20, 8, 8, 3)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    spec = FaultSpec(kind="weight", rates=(0.25,), trials=1, seed=5, array="4x6")
    runner = keras_runner.KerasModel(model).runner(spec, images, labels, 20)
    counts = runner.inject(0.25, 0)
    pes = systolic.cell_pes(spec, 0.25, 0)
    assert counts["faulty_pes"] == len(pes) == 6  # round(0.25 * 24)
    stuck = np.zeros((4, 6), bool)
    stuck[pes[:, 0], pes[:, 1]] = True
    conv = model.get_layer("conv")
    patches = tf.image.extract_patches(images, [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], "VALID")
    patches = np.asarray(patches).reshape(-1, 27)
    kernel = conv.kernel.numpy().reshape(27, 10)
    expected = systolic.simulate_weight_stationary(patches, kernel, 4, 6, stuck)
    expected = expected.reshape(20, 6, 6, 10) + conv.bias.numpy()
    faulty_conv = runner.faulty.get_layer("conv")
    np.testing.assert_allclose(np.asarray(faulty_conv(images)), expected, atol=1e-4)
    file_run = tflite_runner.TFLiteModel(path).runner(spec, images, labels, 20)
    assert file_run.inject(0.25, 0) == counts
    np.testing.assert_allclose(file_run.logits(), np.asarray(runner.faulty(images)), atol=1e-4)
    assert runner.evaluate_cell(0.25, 0)["faulty_pes"] == 6


def test_output_stationary_holds_the_accumulated_outputs_at_zero(tmp_path):
    model, path = _models(tmp_path)
    images = np.random.default_rng(2).uniform(0, 1, (10, 8, 8, 3)).astype(np.float32)
    labels = np.zeros(10, int)
    spec = FaultSpec(kind="node", rates=(0.3,), trials=1, array="5x4", dataflow="output_stationary")
    runner = keras_runner.KerasModel(model).runner(spec, images, labels, 10)
    runner.inject(0.3, 0)
    pes = systolic.cell_pes(spec, 0.3, 0)
    stuck = np.zeros((5, 4), bool)
    stuck[pes[:, 0], pes[:, 1]] = True
    conv = model.get_layer("conv")
    clean = np.asarray(conv(images)).reshape(10, 36, 10)  # Per inference: (H*W, C).
    masked = runner.fault_layers["conv"].node_keep.numpy().reshape(36, 10)
    ones = np.ones((36, 27))
    expected_zero = systolic.simulate_output_stationary(ones, np.ones((27, 10)), 5, 4, stuck) == 0
    np.testing.assert_array_equal(masked == 0, expected_zero)
    assert np.any(masked == 0) and np.all(clean[:, masked == 0] != 0)
    file_run = tflite_runner.TFLiteModel(path).runner(spec, images, labels, 10)
    assert file_run.inject(0.3, 0) == runner.inject(0.3, 0)


def test_refusals():
    with pytest.raises(ValueError, match="ROWSxCOLS"):
        FaultSpec(array="32by32").validate()
    with pytest.raises(ValueError, match="--fault=node"):
        FaultSpec(kind="weight", array="8x8", dataflow="output_stationary").validate()
    with pytest.raises(ValueError, match="output_stationary"):
        FaultSpec(kind="node", array="8x8").validate()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.DepthwiseConv2D(3, name="depthwise")(inputs)
    model = keras.Model(inputs, L.Dense(3, name="logits")(L.Flatten()(x)))
    images = np.zeros((4, 8, 8, 3), np.float32)
    with pytest.raises(FaultTargetError, match="depthwise.*exclude_layers"):  # Before any cell.
        keras_runner.KerasModel(model).runner(
            FaultSpec(array="4x4", rates=(0.5,), trials=1), images, np.zeros(4, int), 4
        )


def test_attention_projections_are_refused_in_keras():
    """A rank-3 EinsumDense kernel (in, heads, dim) does not say where the product's inputs
    end: placing it by its last axis would corrupt other weights than the chip's."""
    inputs = keras.Input((6, 8))
    x = L.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    model = keras.Model(inputs, L.Dense(3, name="logits")(L.Flatten()(x)))
    images = np.zeros((2, 6, 8), np.float32)
    with pytest.raises(FaultTargetError, match="mha/query"):
        keras_runner.KerasModel(model).runner(
            FaultSpec(array="4x4", rates=(0.5,), trials=1), images, np.zeros(2, int), 2
        )
    runner = keras_runner.KerasModel(model).runner(
        FaultSpec(array="4x4", rates=(0.5,), trials=1, exclude_layers=("mha/*",)),
        images,
        np.zeros(2, int),
        2,
    )
    assert runner.target_names == ["logits"]
