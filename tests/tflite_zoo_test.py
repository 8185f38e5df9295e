"""User-style models converted by the test itself with tf.lite.TFLiteConverter (no
aftt-export), in every storage the converter produces: every weight-bearing operator is
faulted (or its exclusion is stated), rate 0 is the file's own clean accuracy, and the
Keras model and its float32 file compute the same faulty logits for weight, filter and
node faults, layer for layer.

The models are untrained (random weights, random BatchNormalization statistics and
biases, so the converter keeps and folds them); labels are the clean Keras model's own
predictions, so accuracy means agreement with the fault-free model.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing

import keras
import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import keras_runner, tflite_file, tflite_runner
from tests.export_test import _assert_not_significantly_beyond

pytestmark = pytest.mark.slow  # Minutes: left out by `make test-fast`.

L = keras.layers
STORAGES = ("float32", "float16", "dynamic", "int8")
EXAMPLES = 200


def _bn_depthwise() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            L.Conv2D(8, 3, strides=2, name="conv"),
            L.BatchNormalization(name="bn_1"),
            L.ReLU(),
            L.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise"),
            L.BatchNormalization(name="bn_2"),
            L.ReLU(),
            L.Flatten(),
            L.Dense(16, activation="sigmoid", name="hidden"),
            L.Dense(10, name="logits"),
        ]
    )


def _separable() -> keras.Model:
    inputs = keras.Input((16, 16, 3))
    x = L.SeparableConv2D(8, 3, depth_multiplier=2, activation="relu", name="separable")(inputs)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x))


def _transpose() -> keras.Model:
    inputs = keras.Input((12, 12, 2))
    x = L.Conv2D(4, 3, strides=2, activation="relu", name="conv")(inputs)
    x = L.Conv2DTranspose(6, 3, strides=2, activation="relu", name="transpose")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(L.Flatten()(x)))


def _conv3d() -> keras.Model:
    inputs = keras.Input((4, 8, 8, 2))
    x = L.Conv3D(4, 2, activation="relu", name="conv3d")(inputs)
    return keras.Model(inputs, L.Dense(10, name="logits")(L.Flatten()(x)))


def _embedding() -> keras.Model:
    inputs = keras.Input((12,), dtype="int32")
    x = L.Embedding(50, 8, name="embedding")(inputs)
    x = L.Dense(16, activation="relu", name="hidden")(L.Flatten()(x))
    return keras.Model(inputs, L.Dense(10, name="logits")(x))


def _mobilenet() -> keras.Model:
    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None
    )


MODELS = {
    "bn_depthwise": _bn_depthwise,
    "separable": _separable,
    "transpose": _transpose,
    "conv3d": _conv3d,
    "embedding": _embedding,
    "mobilenet": _mobilenet,
}


def _randomize(model: keras.Model, rng: np.random.Generator) -> None:
    """Random biases and normalization statistics (zero biases would be dropped by the
    converter, identity BatchNormalization would make folding invisible)."""
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, variance = (np.asarray(w) for w in layer.get_weights())
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.1, beta.shape),
                    rng.normal(0, 0.1, mean.shape),
                    rng.uniform(0.5, 1.5, variance.shape),
                ]
            )
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape))


def _inputs(model: keras.Model, rng: np.random.Generator, count: int) -> np.ndarray:
    shape = (count, *model.input_shape[1:])
    if model.inputs[0].dtype.startswith("int"):
        return rng.integers(0, 50, shape).astype(np.int32)
    return rng.uniform(0, 1, shape).astype(np.float32)


def _convert(saved: str, storage: str, calibration: np.ndarray) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    if storage != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if storage == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if storage == "int8":
        converter.representative_dataset = lambda: ([x[None]] for x in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name -> (Keras model, {storage: .tflite path}, inputs, labels)."""
    root = tmp_path_factory.mktemp("tflite_zoo")
    result, jobs = {}, []
    context = multiprocessing.get_context("spawn")
    # The 24 conversions are single-threaded: two processes halve their wall time.
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        for index, (name, build) in enumerate(MODELS.items()):
            rng = np.random.default_rng(index)
            keras.utils.set_random_seed(index)
            model = build()
            _randomize(model, rng)
            images = _inputs(model, rng, EXAMPLES)
            labels = np.argmax(np.asarray(model.predict(images, verbose=0)), axis=-1)
            model.export(str(root / name), format="tf_saved_model", verbose=False)
            paths = {storage: root / f"{name}_{storage}.tflite" for storage in STORAGES}
            for storage, path in paths.items():
                job = pool.submit(_convert, str(root / name), storage, images[:50])
                jobs.append((path, job))
            result[name] = (model, paths, images, labels)
        for path, job in jobs:
            path.write_bytes(job.result())
    return result


def _runner(model_or_path, spec, images, labels):
    if isinstance(model_or_path, keras.Model):
        return keras_runner.KerasModel(model_or_path).runner(spec, images, labels, EXAMPLES)
    return tflite_runner.TFLiteModel(model_or_path).runner(spec, images, labels, EXAMPLES)


@pytest.mark.parametrize("name", list(MODELS))
def test_layers_are_named_as_in_keras_and_fully_covered(name, zoo):
    """Operators take the Keras names from the converter's tensor names; a weight campaign
    covers every weight-bearing operator of every storage, and targets the Keras model's
    faultable layers (BatchNormalization is folded into the layer before it)."""
    model, paths, _, _ = zoo[name]
    keras_layers = keras_runner.KerasModel(model).select_layers(FaultSpec(kind="weight"))
    for storage, path in paths.items():
        tflite = tflite_runner.TFLiteModel(path)
        assert tflite.names_from == "tensor names", storage
        coverage = tflite.coverage(FaultSpec(kind="weight"))
        assert coverage["left_out"] == [], (storage, coverage["left_out"])
        assert coverage["targeted_layers_weight_share"] == 1.0
        assert coverage["targeted_layers"] == keras_layers, storage


@pytest.mark.parametrize("name", list(MODELS))
def test_rate_zero_is_the_files_clean_accuracy(name, zoo):
    _, paths, images, labels = zoo[name]
    for path in paths.values():
        tflite = tflite_runner.TFLiteModel(path)
        clean = np.mean(np.argmax(tflite_file.predict(tflite, images), axis=-1) == labels)
        for kind in ("weight", "node"):
            runner = tflite.runner(FaultSpec(kind=kind), images, labels, EXAMPLES)
            assert runner.evaluate_cell(0.0, 0)["accuracy"] == clean, (path.name, kind)


def _kinds(name: str) -> list[str]:
    return ["weight", "node"] + (["filter"] if name != "embedding" else [])


@pytest.mark.parametrize("name", list(MODELS))
def test_keras_and_float32_file_compute_the_same_faulty_logits(name, zoo):
    """Same seed, same positions: equal fault counts per layer and equal logits."""
    model, paths, images, labels = zoo[name]
    for kind in _kinds(name):
        spec = FaultSpec(kind=kind, rates=(0.3,), trials=1, seed=3)
        keras_run = _runner(model, spec, images, labels)
        tflite_run = _runner(paths["float32"], spec, images, labels)
        assert tflite_run.target_names == keras_run.target_names, kind
        assert keras_run.inject(0.3, 0) == tflite_run.inject(0.3, 0), kind
        keras_logits = np.asarray(keras_run.faulty(images, training=False))
        scale = max(1.0, float(np.max(np.abs(keras_logits))))
        difference = np.max(np.abs(keras_logits - tflite_run.logits()))
        assert difference <= 1e-4 * scale, (kind, difference)


@pytest.mark.parametrize("storage", ["float16", "dynamic", "int8"])
def test_other_storages_track_float32_under_the_same_faults(storage, zoo):
    """Per-trial accuracy differences to the float32 file under the same weight and node
    faults: the paired 99% interval must reach within 3 points of 0. (The models whose
    untrained predictions vary over the inputs; the others predict one class.)"""
    for name in ("transpose", "embedding"):
        _, paths, images, labels = zoo[name]
        for kind in ("weight", "node"):
            spec = FaultSpec(kind=kind, rates=(0.1,), trials=8, seed=5)
            accuracy = {}
            for mode in ("float32", storage):
                runner = _runner(paths[mode], spec, images, labels)
                accuracy[mode] = np.array(
                    [runner.evaluate_cell(0.1, t)["accuracy"] for t in range(8)]
                )
            _assert_not_significantly_beyond(accuracy[storage] - accuracy["float32"], 0.03)


def test_node_faults_on_a_folded_layer_hold_the_normalised_output(zoo):
    """Conv2D -> BatchNormalization: the converter folds BN into the conv, so a node fault
    on 'conv' holds the normalised output at 0 in both runtimes (Keras places the mask
    after the BatchNormalization)."""
    model, _, images, labels = zoo["bn_depthwise"]
    runner = _runner(model, FaultSpec(kind="node", layers=("conv",)), images, labels)
    names = [layer.name for layer in runner.faulty.layers]
    assert names.index("conv_node_fault") == names.index("bn_1") + 1


def test_export_layer_map_accounts_for_every_zoo_model(zoo):
    """aftt-export's layer map (shapes and values, folded BatchNormalization, the two
    operators of a SeparableConv2D) holds for every zoo model in every storage."""
    from aftt_tf.deploy import export_lib

    for name, (model, paths, _, _) in zoo.items():
        for storage, path in paths.items():
            layers = export_lib.layer_map(model, tflite_runner.TFLiteModel(path))
            expected = keras_runner.KerasModel(model).select_layers(FaultSpec(kind="weight"))
            assert list(layers) == expected, (name, storage)
    separable = export_lib.layer_map(
        zoo["separable"][0], tflite_runner.TFLiteModel(zoo["separable"][1]["int8"])
    )["separable"]
    assert separable["operator"] == "separable_conv_2d"
    assert len(separable["operator_indices"]) == 2


def test_resuming_cells_that_faulted_other_layers_is_refused(zoo, tmp_path):
    """Cells written by a version whose layer rule targeted other layers (here: a cell
    edited to name fewer layers) are not mixed into the campaign."""
    from aftt_tf.campaigns import cell_log
    from aftt_tf.campaigns import engine as campaign

    model, paths, images, labels = zoo["transpose"]
    spec = FaultSpec(kind="node", rates=(0.0, 0.2), trials=2)
    tflite = tflite_runner.TFLiteModel(paths["float32"])
    out = tmp_path / "campaign"
    options = {"progress": False, "allow_chance_accuracy": True}
    campaign.run_campaign({"m": tflite}, spec, images, labels, out, **options)
    cells = (out / cell_log.CELLS_FILE).read_text().splitlines()
    record = json.loads(cells[-1])
    record["per_layer"] = {"conv": record["per_layer"]["conv"]}
    (out / cell_log.CELLS_FILE).write_text("\n".join([*cells[:-1], json.dumps(record)]) + "\n")
    with pytest.raises(ValueError, match="cannot be resumed"):
        campaign.run_campaign({"m": tflite}, spec, images, labels, out, **options)
