"""A user's .tflite file with a depthwise convolution, converted here with the standard
TFLiteConverter (no aftt-export manifest): every weight operator is faulted, the same
faults as in Keras give the same logits, and int8 tracks float32 under faults."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.data import datasets as data
from aftt_tf.data.frontend import DataOptions
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import keras_runner, tflite_file, tflite_runner
from tests.conftest import requires_fashion_mnist
from tests.export_test import _assert_not_significantly_beyond

pytestmark = requires_fashion_mnist
L = keras.layers


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A trained Conv2D -> DepthwiseConv2D (multiplier 2) -> Dense model and its float32
    and full-int8 .tflite files, converted as a user would."""
    root = tmp_path_factory.mktemp("user_tflite")
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    train_x = arrays["train"][0][:3000].astype(np.float32) / 255.0
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = L.Conv2D(8, 3, strides=2, activation="relu", name="conv")(inputs)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="depthwise")(x)
    model = keras.Model(inputs, L.Dense(10, name="logits")(L.Flatten()(x)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train_x, arrays["train"][1][:3000], epochs=2, batch_size=64, verbose=0)
    model.export(str(root / "saved"), format="tf_saved_model", verbose=False)
    paths = {}
    for mode in ("float32", "int8", "int16x8", "float16", "dynamic"):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(root / "saved"))
        if mode == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif mode == "dynamic":  # Dynamic-range: int8 weights, float activations.
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([train_x[i : i + 1]] for i in range(100))
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8
                if mode == "int8"
                else tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
            io_type = tf.int8 if mode == "int8" else tf.int16
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
        paths[mode] = root / f"model_{mode}.tflite"
        paths[mode].write_bytes(converter.convert())
    test = arrays["test"][0][:1000], arrays["test"][1][:1000]
    return model, paths, test


def _named(path, model) -> tflite_runner.TFLiteModel:
    """The file as a user gets it: operators named after the Keras layers, read from the
    converter's tensor names (no manifest)."""
    tflite = tflite_runner.TFLiteModel(path)
    assert tflite.names_from == "tensor names"
    operators = sorted(tflite.layers.values(), key=lambda layer: layer.operator_index)
    assert [(op.name, op.operator) for op in operators] == [
        ("conv", "conv_2d"),
        ("depthwise", "depthwise_conv_2d"),
        ("logits", "fully_connected"),
    ]
    return tflite


def test_every_weight_operator_is_faulted(user_files):
    model, paths, _ = user_files
    # Dynamic-range conversion leaves small kernels (<= 1024 elements) in float32.
    stored = {
        "float16": {"float16"},
        "dynamic": {"int8", "float32"},
        "int8": {"int8"},
        "float32": {"float32"},
    }
    for mode, dtypes in stored.items():
        tflite = tflite_runner.TFLiteModel(paths[mode])
        assert {layer.weights.dtype.name for layer in tflite.layers.values()} == dtypes
    for path in paths.values():
        tflite = tflite_runner.TFLiteModel(path)
        assert "depthwise" in tflite.select_layers(FaultSpec(kind="weight"))
        coverage = tflite.coverage(FaultSpec(kind="weight"))
        assert coverage["left_out"] == [] and coverage["targeted_layers_weight_share"] == 1.0


@pytest.mark.parametrize("kind", ["weight", "filter"])
def test_keras_and_float32_tflite_agree_under_the_same_faults(kind, user_files):
    model, paths, (images, labels) = user_files
    spec = FaultSpec(kind=kind, rates=(0.3,), trials=2, seed=2)
    keras_run = keras_runner.KerasModel(model).runner(spec, images, labels, 500)
    tflite_run = _named(paths["float32"], model).runner(spec, images, labels, 500)
    assert tflite_run.target_names == keras_run.target_names
    for trial in range(2):
        keras_counts = keras_run.inject(0.3, trial)
        tflite_counts = tflite_run.inject(0.3, trial)
        assert keras_counts == tflite_counts
        keras_logits = np.asarray(keras_run.faulty(images.astype(np.float32) / 255.0))
        assert np.max(np.abs(keras_logits - tflite_run.logits())) <= 1e-3


@pytest.mark.parametrize("mode", ["int8", "float16", "dynamic"])
def test_other_storages_track_float32_under_the_same_faults(mode, user_files):
    model, paths, (images, labels) = user_files
    spec = FaultSpec(kind="weight", rates=(0.2,), trials=12, seed=1)
    accuracies = {}
    for storage in ("float32", mode):
        runner = _named(paths[storage], model).runner(spec, images, labels, 500)
        accuracies[storage] = np.array(
            [runner.evaluate_cell(0.2, t)["accuracy"] for t in range(12)]
        )
    _assert_not_significantly_beyond(accuracies[mode] - accuracies["float32"], 0.02)


def test_stuck_at_zero_writes_the_zero_point_of_asymmetric_weights():
    """uint8 weights with zero points (older converters, asymmetric schemes): real 0 is the
    zero point, not the stored value 0."""
    from aftt_tf.runtimes import tflite_file

    stored = np.array([[10, 20, 30], [5, 6, 7]], np.uint8)
    tensor = tflite_file.ConstantTensor(
        index=0,
        offset=0,
        shape=(2, 3),
        dtype=np.dtype(np.uint8),
        scales=np.array([0.5, 0.25]),
        quantized_dimension=0,
        zero_points=np.array([12, 6]),
    )
    content = stored.tobytes()
    np.testing.assert_allclose(
        tflite_file.real_values(content, tensor), [-1.0, 4.0, 9.0, -0.25, 0.0, 0.25]
    )
    rng = np.random.default_rng(0)
    zero = tflite_runner.faulty_values(
        content, tensor, np.array([1, 3]), FaultSpec(kind="weight"), rng
    )
    assert zero.tolist() == [10, 12, 30, 6, 6, 7]
    stuck = FaultSpec(kind="stuck_value", stuck_value=1.0)
    values = tflite_runner.faulty_values(content, tensor, np.array([0, 5]), stuck, rng)
    assert values.tolist() == [14, 20, 30, 5, 6, 10]  # 1.0 / 0.5 + 12 and 1.0 / 0.25 + 6.


def test_int16_activation_file_reads_its_inputs_right(user_files):
    """A 16x8 file takes int16 inputs with a scale: quantised as such (not cast), its clean
    accuracy matches float32 per image (paired 99% interval within 1 point)."""
    model, paths, (images, labels) = user_files
    int16 = tflite_runner.TFLiteModel(paths["int16x8"])
    assert int16.input_dtype == np.int16
    correct = {
        mode: tflite_file.predict(tflite_runner.TFLiteModel(paths[mode]), images).argmax(-1)
        == labels
        for mode in ("float32", "int16x8")
    }
    _assert_not_significantly_beyond(correct["int16x8"].astype(float) - correct["float32"], 0.01)
    assert np.mean(correct["int16x8"]) > 0.5


def test_export_of_a_sequential_model_with_folded_batch_normalization(tmp_path):
    """aftt-export on a Sequential Conv2D+BN+DepthwiseConv2D+BN model: the converter folds
    each BatchNormalization into the layer before it; the layer map accounts for that and
    lists every weight operator, and campaigns on the export use the Keras names."""
    from aftt_tf.deploy import export_lib

    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(8, 3, strides=2, name="conv"),
            L.BatchNormalization(momentum=0.9, name="bn_1"),
            L.ReLU(),
            L.DepthwiseConv2D(3, name="depthwise"),
            L.BatchNormalization(momentum=0.9, name="bn_2"),
            L.ReLU(),
            L.Flatten(),
            L.Dense(10, name="logits"),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(arrays["train"][0][:2000] / 255.0, arrays["train"][1][:2000], epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    manifest = export_lib.export_classifier(
        export_lib.ExportConfig(
            model=str(tmp_path / "model.keras"),
            out=str(tmp_path / "export"),
            formats=("tflite_float32", "tflite_int8"),
            calibration_steps=10,
            test_examples=500,
            data_options=DataOptions(data="fashion_mnist"),
        )
    )
    for name in ("model_float32.tflite", "model_int8.tflite"):
        layers = manifest["artifacts"][name]["layers"]
        assert set(layers) == {"conv", "depthwise", "logits"}
        assert layers["conv"]["folded_batch_normalization"] == "bn_1"
        assert layers["depthwise"]["folded_batch_normalization"] == "bn_2"
        tflite = tflite_runner.TFLiteModel.load(tmp_path / "export" / name)
        assert tflite.coverage(FaultSpec())["left_out"] == []
    float32 = manifest["artifacts"]["model_float32.tflite"]
    assert float32["max_abs_logit_difference_vs_keras"] < 1e-3


def test_bit_faults_act_on_float16_storage():
    from aftt_tf.faults import sampling

    values = np.array([1.5, -2.0, 0.25], np.float16)
    flipped = sampling.corrupt_bits(values, np.random.default_rng(0), 15, "flip")
    assert flipped.dtype == np.float16 and flipped.tolist() == [-1.5, 2.0, -0.25]
    with pytest.raises(ValueError, match="0..15 for float16"):
        sampling.corrupt_bits(values, np.random.default_rng(0), 20, "flip")


def test_node_faults_on_convolution_outputs_match_keras(user_files):
    """Node faults hold single output positions of Conv2D and DepthwiseConv2D at 0 in the
    .tflite (a mask multiplication inserted after each output) exactly as in Keras, in the
    float32 file; the int8 file tracks it (paired interval)."""
    model, paths, (images, labels) = user_files
    spec = FaultSpec(kind="node", rates=(0.3,), trials=6, seed=4)
    keras_run = keras_runner.KerasModel(model).runner(spec, images, labels, 500)
    float32 = _named(paths["float32"], model).runner(spec, images, labels, 500)
    assert float32.target_names == keras_run.target_names == ["conv", "depthwise"]
    assert keras_run.inject(0.3, 0) == float32.inject(0.3, 0)
    keras_logits = np.asarray(keras_run.faulty(images.astype(np.float32) / 255.0))
    assert np.max(np.abs(keras_logits - float32.logits())) <= 1e-3
    int8 = _named(paths["int8"], model).runner(spec, images, labels, 500)
    accuracies = {
        name: np.array([runner.evaluate_cell(0.3, t)["accuracy"] for t in range(6)])
        for name, runner in (("float32", float32), ("int8", int8))
    }
    assert np.mean(accuracies["float32"]) < 0.9 * float32.evaluate_cell(0.0, 0)["accuracy"]
    _assert_not_significantly_beyond(accuracies["int8"] - accuracies["float32"], 0.03)
