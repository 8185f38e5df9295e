"""NaN and Inf reach every layer type in both runtimes alike (issue 30).

Each model puts one layer type right after a `feed` layer whose outputs take transient
faults: exponent bit flips (bit 30: NaN for values in [1, 2), +-Inf for +-1) and a stuck
value near float32's largest (Inf once summed). Keras and the float32 .tflite must give
NaN, Inf and finite outputs on the same inferences, equal finite outputs and equal
outcomes. Pooling layers are where kernels disagree (TensorFlow's MaxPool skips a NaN,
LiteRT's returns -inf or an order-dependent value): both count such inferences as
non-finite (`faults.nan_semantics`), which this test checks too.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from aftt_tf.data import inputs as input_transforms
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import keras_runner, nan_semantics, tflite_runner
from tests import conversion

L = keras.layers
EXAMPLES = 160
RAW = input_transforms.resolve("raw")


def _image(*layers):
    def build():
        inputs = keras.Input((8, 8, 2))
        x = L.Conv2D(6, 3, padding="same", name="feed")(inputs)
        for layer in layers:
            x = layer(x)
        return keras.Model(inputs, L.Dense(5, name="logits")(L.Flatten()(x)))

    return build


def _sequence(*layers):
    def build():
        inputs = keras.Input((8, 4))
        x = L.Dense(6, name="feed")(inputs)
        for layer in layers:
            x = layer(x)
        return keras.Model(inputs, L.Dense(5, name="logits")(L.Flatten()(x)))

    return build


def _flat(*layers):
    def build():
        inputs = keras.Input((12,))
        x = L.Dense(16, name="feed")(inputs)
        for layer in layers:
            x = layer(x)
        return keras.Model(inputs, L.Dense(5, name="logits")(x))

    return build


def _pair(merge):
    def build():
        inputs = keras.Input((8, 8, 2))
        a = L.Conv2D(6, 3, padding="same", name="feed")(inputs)
        b = L.Conv2D(6, 3, padding="same", name="side")(inputs)
        x = L.Flatten()(merge()([a, b]))
        return keras.Model(inputs, L.Dense(5, name="logits")(x))

    return build


def _attention():
    inputs = keras.Input((8, 4))
    x = L.Dense(8, name="feed")(inputs)
    x = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    return keras.Model(inputs, L.Dense(5, name="logits")(L.Flatten()(x)))


ZOO = {
    "Dense": _image(L.Dense(4)),
    "Conv2D": _image(L.Conv2D(4, 3, activation="relu")),
    "DepthwiseConv2D": _image(L.DepthwiseConv2D(3, activation="relu")),
    "SeparableConv2D": _image(L.SeparableConv2D(4, 3)),
    "Conv2DTranspose": _image(L.Conv2DTranspose(3, 3, strides=2)),
    "BatchNormalization": _image(L.BatchNormalization(), L.ReLU()),
    "LayerNormalization": _image(L.LayerNormalization()),
    "ReLU": _image(L.ReLU()),
    "ReLU6": _image(L.ReLU(6.0)),
    "LeakyReLU": _image(L.LeakyReLU(0.2)),
    "tanh": _image(L.Activation("tanh")),
    "sigmoid": _image(L.Activation("sigmoid")),
    "gelu": _image(L.Activation("gelu")),
    "Softmax": _image(L.Softmax()),
    "Rescaling": _image(L.Rescaling(0.5, offset=-1.0)),
    "Rescaling_after_dense": _sequence(L.Rescaling(0.5, offset=-1.0)),
    "Rescaling_after_relu": _sequence(L.ReLU(), L.Rescaling(2.0)),
    "Rescaling_after_flat_dense": _flat(L.Rescaling(0.5, offset=-1.0)),
    "Dropout": _image(L.Dropout(0.5)),
    "MaxPooling2D": _image(L.MaxPooling2D(2)),
    "MaxPooling2D_relu": _image(L.MaxPooling2D(3, strides=2), L.ReLU()),
    "AveragePooling2D": _image(L.AveragePooling2D(2), L.ReLU()),
    "GlobalMaxPooling2D": _image(L.GlobalMaxPooling2D()),
    "GlobalAveragePooling2D": _image(L.GlobalAveragePooling2D()),
    "Add": _pair(L.Add),
    "Maximum": _pair(L.Maximum),
    "Minimum": _pair(L.Minimum),
    "Multiply": _pair(L.Multiply),
    "Concatenate": _pair(L.Concatenate),
    "Conv1D": _sequence(L.Conv1D(4, 3, activation="relu")),
    "MaxPooling1D": _sequence(L.MaxPooling1D(2)),
    "GlobalMaxPooling1D": _sequence(L.GlobalMaxPooling1D()),
    "LSTM": _sequence(L.LSTM(4, unroll=True)),
    "MultiHeadAttention": _attention,
}
SPECS = (
    FaultSpec(kind="activation_bit", bit_position=30, layers=("feed",), seed=2),
    FaultSpec(kind="activation_value", stuck_value=3.0e38, layers=("feed",), seed=3),
)
RATES = {"activation_bit": 0.004, "activation_value": 0.01}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("nan_parity")


@pytest.mark.parametrize("layer_type", list(ZOO))
def test_nan_and_inf_give_the_same_outputs_in_both_runtimes(layer_type, root):
    keras.utils.set_random_seed(len(layer_type))
    model = ZOO[layer_type]()
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(EXAMPLES, *model.input_shape[1:])).astype(np.float32)
    labels = rng.integers(0, 5, EXAMPLES)
    path = conversion.tflite_files(model, root, layer_type, inputs, modes=("float32",))["float32"]
    tflite = tflite_runner.TFLiteModel(path)
    non_finite = []
    for spec in SPECS:
        rate = RATES[spec.kind]
        runner = keras_runner.CampaignRunner(model, spec, inputs, labels, 64, transform=RAW)
        try:
            runner.inject(rate, 0)
            logits = runner.logits()
            cell = runner.evaluate_cell(rate, 0)
        finally:
            runner.close()
        file_runner = tflite.runner(spec, inputs, labels, 64, RAW)
        file_runner.inject(rate, 0)
        file_logits = file_runner.logits()
        file_cell = file_runner.evaluate_cell(rate, 0)
        context = f"{layer_type}, {spec.kind}"
        for check in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(
                check(logits).any(axis=1), check(file_logits).any(axis=1), err_msg=context
            )
        finite = np.isfinite(logits).all(axis=1) & np.isfinite(file_logits).all(axis=1)
        # Float32 sums in another order differ by rounding relative to the largest terms
        # they add (a 3e38 fault's products, ~1e37, can cancel down to ~1e33): each row is
        # compared at 1e-4 of its own largest output, as the zoo parity test does.
        scale = np.maximum(1.0, np.abs(logits[finite]).max(axis=1, keepdims=True))
        difference = np.abs(logits[finite] - file_logits[finite])
        assert np.all(difference <= 1e-4 * scale + 1e-3), (context, float(difference.max()))
        for key in ("accuracy", "non_finite", "sdc"):
            assert file_cell[key] == cell[key], (context, key)
        non_finite.append(cell["non_finite"])
    if layer_type != "tanh":  # After a fused tanh, bit 30 makes |x| < 1 huge, not Inf.
        assert any(0 < share < 1 for share in non_finite), f"{layer_type}: {non_finite}"


def test_the_rule_is_on_the_campaigns_model_only_while_it_runs():
    """The campaign's model takes the rule; the user's model, a model traced or exported
    meanwhile and the model after the campaign keep TensorFlow's own kernels."""
    inputs = keras.Input((4, 1))
    pooled = L.MaxPooling1D(2, name="pool")(inputs)
    dense = L.Dense(1, activation="sigmoid", name="out")(L.Flatten()(pooled))
    model = keras.Model(inputs, dense)
    values = np.array([[[np.nan], [1.0], [2.0], [3.0]]], np.float32)
    before = np.asarray(model(values))
    assert np.isfinite(before).all()  # TensorFlow's MaxPool skips the NaN.
    spec = FaultSpec(kind="bit", bit_position=0, layers=("out",))
    runner = keras_runner.CampaignRunner(model, spec, values, np.array([0]), 1, transform=RAW)
    try:
        runner.inject(0.0, 0)
        assert np.isnan(runner.logits()).all()  # The campaign's copy: the rule.
        other = keras.Model(inputs, L.MaxPooling1D(2)(inputs))
        assert np.isfinite(np.asarray(other(values))).all()  # Another model: untouched.
        np.testing.assert_array_equal(np.asarray(model(values)), before)
    finally:
        runner.close()
    np.testing.assert_array_equal(np.asarray(model(values)), before)
    assert "MaxPooling1D" in nan_semantics.GUARDED_LAYERS
