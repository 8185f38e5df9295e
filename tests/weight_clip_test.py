"""Weight clipping through training (issue 32 item 3): every kernel held in [-b, b],
b per layer ('auto') or one bound; composes with fault-aware training; the int8 file's
per-channel scales follow the clipped weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from aftt_tf.runtimes import tflite_file
from aftt_tf.training import harden
from tests import conversion

L = keras.layers


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    wide = keras.initializers.RandomNormal(stddev=0.5, seed=0)
    hidden = L.Dense(32, activation="relu", kernel_initializer=wide, name="hidden")(inputs)
    return keras.Model(inputs, L.Dense(4, kernel_initializer=wide, name="out")(hidden))


def _data(model, count: int = 512):
    images = np.random.default_rng(0).random((count, 12)).astype(np.float32)
    return harden.TrainingData(images, np.argmax(np.asarray(model(images - 0.5)), -1))


@pytest.mark.parametrize(("method", "clip", "stds"), [("none", "auto", 3.0), ("fat", "2std", 2.0)])
def test_every_kernel_stays_within_its_bound(method, clip, stds):
    model = _model()
    train = _data(model)
    deviations = {n: float(np.std(model.get_layer(n).kernel.numpy())) for n in ("hidden", "out")}
    config = harden.HardenConfig(
        method=method,
        epochs=2,
        batch_size=32,
        learning_rate=1e-2,
        weight_clip=clip,
        fault_kinds=("weight",),
    )
    hardened, record = harden.harden(model, config, train)
    assert record["weight_clip"]["stds"] == stds
    for name in ("hidden", "out"):
        bound = record["weight_clip"]["bounds"][f"{name}/kernel"]
        assert bound == pytest.approx(stds * deviations[name])
        kernel = hardened.get_layer(name).kernel.numpy()
        assert np.abs(kernel).max() <= bound * (1 + 1e-6)
        assert hardened.get_layer(name).kernel.constraint is None  # Not saved with it.
    assert (
        np.abs(model.get_layer("hidden").kernel.numpy()).max()
        > record["weight_clip"]["bounds"]["hidden/kernel"]
    )  # The caller's model is untouched.


def test_a_fixed_bound_sets_the_int8_scales(tmp_path):
    model = _model()
    train = _data(model)
    config = harden.HardenConfig(method="none", epochs=1, batch_size=32, weight_clip="0.05")
    hardened, record = harden.harden(model, config, train)
    assert set(record["weight_clip"]["bounds"].values()) == {0.05}
    paths = conversion.tflite_files(hardened, tmp_path, "clipped", train.inputs)
    layers = tflite_file.TFLiteFile(paths["int8"]).layers
    for name in ("hidden", "out"):
        scales = tflite_file.element_scales(layers[name].kernels[0].weights)
        assert scales.max() * 127 <= 0.05 * (1 + 1e-5)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", (None, None)), ("auto", (None, 3.0)), ("2.5std", (None, 2.5)), ("0.1", (0.1, None))],
)
def test_the_clip_rule_reads_stds_per_layer_or_one_bound(value, expected):
    assert harden.clip_rule(value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "big", "nan", "std", "0std", "-2std", "infstd"])
def test_a_bad_bound_is_refused(value):
    with pytest.raises(ValueError, match="--weight_clip must be 'auto', a positive number"):
        harden.HardenConfig(method="none", weight_clip=value).validate()
