"""--storage=int8: a .keras campaign faults the int8 codes the converter stores (per-channel
symmetric, a folded BatchNormalization's sign included), so it flips the same bits as a
campaign on the int8 .tflite: equal codes, equal fault counts, accuracies within 2 points."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from aftt_tf.campaigns import evaluate
from aftt_tf.data import inputs as input_transforms
from aftt_tf.faults import FaultSpec
from aftt_tf.faults.spec import FaultTargetError
from aftt_tf.runtimes import keras_runner, tflite_runner
from tests import conversion

RAW = input_transforms.resolve("raw")


@pytest.fixture(scope="module")
def conv_bn_depthwise(tmp_path_factory):
    """Conv + BatchNorm + Depthwise + BatchNorm + Dense, with negative gammas in both
    normalisations (the file stores those channels' codes negated)."""
    keras.utils.set_random_seed(9)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.BatchNormalization(name="norm2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    wide = keras.initializers.RandomNormal(stddev=1.0, seed=9)
    x = keras.layers.Dense(5, name="logits", kernel_initializer=wide, bias_initializer="ones")(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(1)
    for name in ("norm", "norm2"):
        layer = model.get_layer(name)
        channels = layer.gamma.shape[0]
        gamma = rng.choice([-1, 1], channels) * rng.uniform(0.5, 1.5, channels)
        layer.set_weights(
            [gamma, rng.normal(0, 0.2, channels), rng.normal(0, 0.2, channels),
             rng.uniform(0.5, 1.5, channels)]
        )  # fmt: skip
    assert (model.get_layer("norm").gamma.numpy() < 0).any()
    images = rng.normal(size=(300, 12, 12, 3)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    paths = conversion.tflite_files(model, tmp_path_factory.mktemp("int8"), "m", images)
    return model, paths, images, labels


def test_the_simulated_codes_are_the_files_codes(conv_bn_depthwise):
    model, paths, images, labels = conv_bn_depthwise
    file = tflite_runner.TFLiteModel(paths["int8"])
    spec = FaultSpec(kind="bit_error", rates=(0.0, 0.01), trials=1, storage="int8")
    runner = keras_runner.CampaignRunner(model, spec, images, labels, 100, transform=RAW)
    try:
        injector = runner.injector
        for name in ("conv", "depthwise", "hidden", "logits"):
            tensor = injector._tensors[name][0]
            codes = injector._int8_codes(name, 0, tensor, np.asarray(tensor.variable.numpy()))
            kernel = file.layers[name].kernels[0]
            stored = tflite_runner.TensorValues(file.content, kernel.weights).values
            in_keras_order = stored[kernel.keras_to_file_positions(np.arange(codes.values.size))]
            np.testing.assert_array_equal(in_keras_order, codes.values, err_msg=name)
    finally:
        runner.close()


@pytest.mark.parametrize(
    "kind, rate", [("bit_error", 0.01), ("bit_error", 0.03), ("weight", 0.3), ("bit", 0.05)]
)
def test_a_keras_int8_campaign_equals_the_int8_file_campaign(conv_bn_depthwise, kind, rate):
    model, paths, images, labels = conv_bn_depthwise
    spec = FaultSpec(kind=kind, rates=(0.0, rate), trials=4, seed=5, storage="int8")
    result = evaluate(
        {"keras": model, "file": str(paths["int8"])}, spec, (images, labels), transform="raw"
    )
    for rate_ in (0.0, rate):
        keras_accuracy = result.accuracy("keras", rate_)[0]
        file_accuracy = result.accuracy("file", rate_)[0]
        assert abs(keras_accuracy - file_accuracy) <= 0.02, (rate_, keras_accuracy, file_accuracy)
    drop = result.accuracy("keras", 0.0)[0] - result.accuracy("keras", rate)[0]
    assert drop > 0.05, drop  # The faults matter, and both runtimes see them alike.


def test_the_fault_counts_are_the_files(conv_bn_depthwise):
    model, paths, images, labels = conv_bn_depthwise
    spec = FaultSpec(kind="bit_error", rates=(0.0, 0.02), trials=1, seed=1, storage="int8")
    runner = keras_runner.CampaignRunner(model, spec, images, labels, 100, transform=RAW)
    try:
        counts = runner.inject(0.02, 0)
    finally:
        runner.close()
    file_counts = (
        tflite_runner.TFLiteModel(paths["int8"])
        .runner(spec, images, labels, 100, RAW)
        .inject(0.02, 0)
    )
    assert counts == file_counts
    assert counts["elements"] == 8 * (216 + 72 + 512 * 16 + 80)  # Bits of the int8 codes.


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"include_bias": True}, "leave out --include_bias"),
        ({"kind": "activation_bit"}, "not activation_bit"),
        ({"kind": "node"}, "not node"),
        ({"storage": "int4"}, "Unknown storage"),
    ],
)
def test_what_int8_storage_cannot_do_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        FaultSpec(**{"kind": "bit_error", "storage": "int8", **fields}).validate()


def test_a_float_file_is_refused_with_int8_storage(conv_bn_depthwise):
    model, paths, images, labels = conv_bn_depthwise
    spec = FaultSpec(kind="bit_error", rates=(0.0, 0.01), trials=1, storage="int8")
    with pytest.raises(FaultTargetError, match="stores the targeted kernels as float32"):
        tflite_runner.TFLiteModel(paths["float32"]).select_layers(spec)


def test_layers_whose_codes_were_not_checked_are_refused():
    """An attention projection's kernel (heads x head size) may be quantised along other
    channels in the file: --storage=int8 refuses to guess, naming the layer."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 8))
    x = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
    spec = FaultSpec(kind="bit_error", rates=(0.0, 0.01), storage="int8")
    with pytest.raises(FaultTargetError, match=r"mha/query \(EinsumDense\)"):
        keras_runner.KerasModel(model).select_layers(spec)
    spec = FaultSpec(kind="bit_error", rates=(0.0, 0.01), storage="int8", exclude_layers=("mha/*",))
    assert keras_runner.KerasModel(model).select_layers(spec) == ["out"]


def test_a_nested_backbones_folded_normalization_is_found(tmp_path):
    """A BatchNormalization inside a nested backbone folds into its convolution in the
    file too: the simulated codes carry its signs (before, only top-level layers' did)."""
    keras.utils.set_random_seed(4)
    inner_in = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(6, 3, name="conv")(inner_in)
    x = keras.layers.BatchNormalization(name="norm")(x)
    backbone = keras.Model(inner_in, keras.layers.ReLU()(x), name="backbone")
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Flatten()(backbone(inputs))
    wide = keras.initializers.RandomNormal(stddev=1.0, seed=4)
    model = keras.Model(inputs, keras.layers.Dense(4, name="out", kernel_initializer=wide)(x))
    rng = np.random.default_rng(4)
    gamma = np.array([-1.2, 0.8, -0.6, 1.1, -0.9, 0.7])
    backbone.get_layer("norm").set_weights([gamma, rng.normal(0, 0.1, 6), np.zeros(6), np.ones(6)])
    images = rng.normal(size=(120, 10, 10, 3)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    path = conversion.tflite_files(model, tmp_path, "nested", images, modes=("int8",))["int8"]
    file = tflite_runner.TFLiteModel(path)
    spec = FaultSpec(kind="bit_error", rates=(0.0, 0.01), trials=1, storage="int8")
    runner = keras_runner.CampaignRunner(model, spec, images, labels, 60, transform=RAW)
    try:
        tensor = runner.injector._tensors["backbone/conv"][0]
        codes = runner.injector._int8_codes(
            "backbone/conv", 0, tensor, np.asarray(tensor.variable.numpy())
        )
    finally:
        runner.close()
    kernel = file.layers["backbone/conv"].kernels[0]
    stored = tflite_runner.TensorValues(file.content, kernel.weights).values
    in_keras_order = stored[kernel.keras_to_file_positions(np.arange(codes.values.size))]
    np.testing.assert_array_equal(in_keras_order, codes.values)
    assert (codes.signs < 0).any()


def test_a_subclassed_model_holding_batch_normalization_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3, name="conv")
            self.norm = keras.layers.BatchNormalization(name="norm")
            self.out = keras.layers.Dense(3, name="out")

        def call(self, x):
            return self.out(keras.layers.Flatten()(self.norm(self.conv(x))))

    model = Net()
    model(np.zeros((1, 8, 8, 3), np.float32))
    spec = FaultSpec(kind="bit_error", rates=(0.0, 0.01), storage="int8")
    with pytest.raises(FaultTargetError, match="holding BatchNormalization layers"):
        keras_runner.KerasModel(model).select_layers(spec)
