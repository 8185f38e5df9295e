"""Faults in the quantization metadata of a converter-made int8 file: per-channel scales,
output zero points and int32 biases change exactly the targeted bytes, and a campaign
cell's outputs equal a fresh run of the edited file."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.faults.spec import FaultSpec, FaultTargetError
from aftt_tf.runtimes import keras_runner, tflite_file, tflite_runner

L = keras.layers


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    x = L.Dense(12, activation="relu", name="hidden")(L.Flatten()(x))
    model = keras.Model(inputs, L.Dense(4, name="logits")(x))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape))
    images = rng.uniform(0, 1, (200, 8, 8, 1)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    root = tmp_path_factory.mktemp("metadata")
    model.export(str(root / "saved"), format="tf_saved_model", verbose=False)
    paths = {}
    for mode in ("float32", "int8"):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(root / "saved"))
        if mode == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([images[i : i + 1]] for i in range(50))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        paths[mode] = root / f"{mode}.tflite"
        paths[mode].write_bytes(converter.convert())
    return model, paths, images, labels


def _changed_bytes(before: bytes, after: bytes) -> np.ndarray:
    return np.flatnonzero(np.frombuffer(before, np.uint8) != np.frombuffer(after, np.uint8))


@pytest.mark.parametrize("target", ["scales", "zero_points", "biases"])
def test_metadata_faults_change_exactly_their_bytes_and_rerun_equal(target, int8_file, tmp_path):
    _, paths, images, labels = int8_file
    model = tflite_runner.TFLiteModel(paths["int8"])
    rate = 1.0 if target == "zero_points" else 0.5  # One zero point per output tensor.
    spec = FaultSpec(kind="bit", rates=(rate,), trials=1, targets=(target,), bit_mode="flip")
    runner = model.runner(spec, images, labels, 200)
    coverage = model.coverage(spec)["targets"][target]
    assert coverage["tensors"] >= 1 and coverage["elements"] >= 1
    counts = runner.inject(rate, 0)
    tensors = [
        t
        for name in runner.target_names
        for t in tflite_runner.metadata_tensors(model.layers[name], target)
    ]
    allowed = set()
    for tensor in tensors:
        allowed |= set(range(tensor.offset, tensor.offset + tensor.nbytes))
    changed = _changed_bytes(model.content, bytes(runner.buffer))
    assert len(changed) and set(changed) <= allowed  # Nothing else in the file moved.
    for tensor in tensors:  # Exactly the drawn elements differ.
        before = tflite_file.read_values(model.content, tensor)
        after = tflite_file.read_values(bytes(runner.buffer), tensor)
        differs = int(np.sum(before != after))
        assert differs == round(rate * before.size)
    assert counts["faulted"] == sum(round(rate * int(np.prod(t.shape))) for t in tensors)
    edited = tmp_path / "edited.tflite"
    edited.write_bytes(bytes(runner.buffer))
    rerun = tflite_file.predict(tflite_runner.TFLiteModel(edited), images)
    np.testing.assert_array_equal(runner.logits(), rerun)


def test_metadata_faults_move_accuracy_and_are_refused_where_absent(int8_file):
    model_keras, paths, images, labels = int8_file
    int8 = tflite_runner.TFLiteModel(paths["int8"])
    spec = FaultSpec(
        kind="stuck_value", stuck_value=0.0, rates=(0.0, 1.0), trials=1, targets=("scales",)
    )
    runner = int8.runner(spec, images, labels, 200)
    assert runner.evaluate_cell(0.0, 0)["accuracy"] > 0.9
    # Every scale stuck at 0: the interpreter refuses the file (XNNPACK rejects a zero
    # scale), so the deployment would not run: every inference is a detected error.
    cell = runner.evaluate_cell(1.0, 0)
    assert cell["accuracy"] == 0.0 and cell["non_finite"] == 1.0
    assert "scale" in cell["runtime_refused"]
    # A weight campaign on the same file never hides a refusal.
    assert "runtime_refused" not in int8.runner(
        FaultSpec(rates=(0.5,), trials=1), images, labels, 200
    ).evaluate_cell(0.5, 0)
    with pytest.raises(FaultTargetError, match="float file"):
        tflite_runner.TFLiteModel(paths["float32"]).select_layers(spec)
    with pytest.raises(FaultTargetError, match="not in a Keras model"):
        keras_runner.KerasModel(model_keras).select_layers(spec)
    with pytest.raises(FaultTargetError, match="8-bit zero points"):
        int8.select_layers(FaultSpec(kind="bit", bit_position=12, targets=("zero_points",)))
    with pytest.raises(ValueError, match="do not act on single stored elements"):
        FaultSpec(kind="node", targets=("scales",)).validate()
    assert FaultSpec(targets=("weights",)).key() == FaultSpec().key()
    assert FaultSpec(targets=("scales",)).key() != FaultSpec().key()


def test_a_zero_point_of_minus_128_stuck_at_the_largest_code_changes():
    """Stuck at the tensor's max |code|: |-128| is 128, clipped to 127. It was computed in
    int8, where |-128| overflows to -128, so the zero point of a ReLU output (-128) was
    'stuck' at itself and the fault counted without changing anything."""
    codes = tflite_runner._ZeroPointCodes(np.array([-128], np.int8))
    spec = FaultSpec(kind="stuck_value", targets=("zero_points",))
    stuck = spec.fault_kind.corrupt(codes, np.array([0]), np.random.default_rng(0), spec)
    assert stuck.tolist() == [127]
    # Keys printed by the head before the fix (5afd6ce): this one changes (cells written
    # then are never resumed), a bit campaign's does not.
    assert spec.key() != "1f40291e075dd486"
    assert FaultSpec(kind="bit", targets=("zero_points",)).key() == "810fa2b0e80d9907"
