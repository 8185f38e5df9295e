"""Faults reach every weight of the models users bring: a backbone nested in a Functional
model (with BatchNormalization), a transformer block (MultiHeadAttention's projections,
LayerNormalization) and a model with the user's own registered layer. Each is trained
briefly on real Fashion-MNIST, converted to float32 and int8 .tflite as a user would, and
the Keras and file runtimes are checked against each other and against a numpy reference.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.data import datasets as data
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import keras_runner, registry, tflite_runner
from tests import conversion
from tests.conftest import requires_fashion_mnist
from tests.export_test import _assert_not_significantly_beyond
from tests.own_layers import OwnDense, UnregisteredDense

pytestmark = requires_fashion_mnist
L = keras.layers
EXAMPLES = 300


class _Unrelated(L.Layer):
    pass


def _nested() -> keras.Model:
    backbone = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(8, 3, activation="relu", name="conv1"),
            L.Conv2D(12, 3, strides=2, name="conv2"),
            L.BatchNormalization(momentum=0.9, name="bn"),
            L.ReLU(),
            L.Flatten(),
        ],
        name="backbone",
    )
    inputs = keras.Input((28, 28, 1))
    x = L.Dense(24, activation="relu", name="hidden")(backbone(inputs))
    return keras.Model(inputs, L.Dense(10, name="logits")(x))


def _transformer() -> keras.Model:
    inputs = keras.Input((28, 28))
    x = L.Dense(16, name="embed")(inputs)
    attended = L.MultiHeadAttention(2, 8, name="mha")(x, x)
    x = L.LayerNormalization(name="norm1")(x + attended)
    hidden = L.Dense(32, activation="relu", name="ffn1")(x)
    x = L.LayerNormalization(name="norm2")(x + L.Dense(16, name="ffn2")(hidden))
    return keras.Model(inputs, L.Dense(10, name="logits")(L.GlobalAveragePooling1D()(x)))


def _custom() -> keras.Model:
    inputs = keras.Input((28, 28))
    x = L.ReLU()(OwnDense(32, name="own")(L.Flatten()(inputs)))
    return keras.Model(inputs, L.Dense(10, name="logits")(x))


BUILDERS = {"nested": _nested, "transformer": _transformer, "custom": _custom}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """name -> (model, {float32, int8: path}, test inputs, labels)."""
    root = tmp_path_factory.mktemp("nested_layers")
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    train_x = arrays["train"][0][:3000].astype(np.float32) / 255.0
    train_y = arrays["train"][1][:3000]
    test_x = arrays["test"][0][:EXAMPLES].astype(np.float32) / 255.0
    test_y = arrays["test"][1][:EXAMPLES]
    result = {}
    for index, (name, build) in enumerate(BUILDERS.items()):
        keras.utils.set_random_seed(index)
        model = build()
        x, t = (train_x, test_x) if name == "nested" else (train_x[..., 0], test_x[..., 0])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, train_y, epochs=1, batch_size=64, verbose=0)
        paths = conversion.tflite_files(model, root, name, x)
        result[name] = (model, paths, t, test_y)
    return result


EXPECTED_TARGETS = {
    "nested": ["backbone/conv1", "backbone/conv2", "hidden", "logits"],
    "transformer": [
        "embed",
        "mha/query",
        "mha/key",
        "mha/value",
        "mha/attention_output",
        "ffn1",
        "ffn2",
        "logits",
    ],
    "custom": ["own", "logits"],
}


def _kernel_elements(model) -> int:
    return sum(int(np.prod(v.shape)) for s in registry.sites(model) for _, v, _ in s.kernels)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_kernel_is_covered_by_path(name, trained):
    model, _, _, _ = trained[name]
    keras_model = keras_runner.KerasModel(model)
    spec = FaultSpec(kind="weight")
    assert keras_model.select_layers(spec) == EXPECTED_TARGETS[name]
    coverage = keras_model.coverage(spec)
    total = coverage["model_weight_elements"]
    assert coverage["faulted_tensors_share"] == pytest.approx(_kernel_elements(model) / total)
    # Only normalisation parameters and biases are left: every kernel is reached.
    assert {entry["type"] for entry in coverage["left_out"]} <= {
        "BatchNormalization",
        "LayerNormalization",
    }
    nested = [path for path in EXPECTED_TARGETS[name] if "/" in path]
    if nested:  # Globs match paths, and skip what cannot take the kind ('backbone/bn').
        chosen = keras_model.select_layers(FaultSpec(kind="weight", layers=("*/*",)))
        assert chosen == nested


def _effective_kernels(runner) -> dict[str, list[np.ndarray]]:
    """Each target's kernels as the faulty model computes with them (masks applied)."""
    result = {}
    for name, tensors in runner.injector._tensors.items():
        values = []
        for tensor in tensors:
            value = np.asarray(tensor.variable.numpy())
            if tensor.keep is not None:
                value = value * tensor.keep.numpy() + tensor.replacement.numpy()
            values.append(value)
        result[name] = values
    return result


@pytest.mark.parametrize("name", list(BUILDERS))
def test_faulty_outputs_equal_a_numpy_reference(name, trained):
    """Counts are sum(round(rate * n)) over every kernel; zeroing the same positions in
    copies of get_weights() of the clean model gives the same outputs."""
    model, _, images, labels = trained[name]
    rate = 0.3
    original = [w.copy() for w in model.get_weights()]
    runner = keras_runner.KerasModel(model).runner(
        FaultSpec(kind="weight", rates=(rate,), trials=1, seed=4), images, labels, EXAMPLES
    )
    counts = runner.inject(rate, 0)
    clean_sites = {site.path: site for site in registry.sites(model)}
    expected = sum(
        round(rate * int(np.prod(v.shape)))
        for path in EXPECTED_TARGETS[name]
        for _, v, _ in clean_sites[path].kernels
    )
    assert counts["faulted"] == expected
    index_of = {id(v): i for i, v in enumerate(model.weights)}
    weights = [w.copy() for w in model.get_weights()]
    for path, values in _effective_kernels(runner).items():
        for (_, variable, _), faulty in zip(clean_sites[path].kernels, values, strict=False):
            clean = weights[index_of[id(variable)]]
            zeroed = (faulty == 0) & (clean != 0)
            assert int(zeroed.sum()) == round(rate * clean.size), path
            clean[zeroed] = 0.0
    reference = keras.models.clone_model(model)
    reference.set_weights(weights)
    expected_outputs = np.asarray(reference(images, training=False))
    np.testing.assert_allclose(
        np.asarray(runner.faulty(images, training=False)), expected_outputs, rtol=1e-5, atol=1e-5
    )
    for before, after in zip(original, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)  # The clean model is untouched.


def _kinds(name: str) -> list[str]:
    return ["weight", "node"] + (["filter"] if name == "nested" else [])


@pytest.mark.parametrize("name", list(BUILDERS))
def test_keras_and_float32_file_fault_the_same_elements(name, trained):
    """Same seed: the same layers (by path), the same counts per layer, and the same
    faulty logits (1e-4 relative) for weight, filter and node faults."""
    model, paths, images, labels = trained[name]
    tflite = tflite_runner.TFLiteModel(paths["float32"])
    assert tflite.names_from == "tensor names"
    assert set(tflite.layers) == set(EXPECTED_TARGETS[name])
    # Left out of the file: only the LayerNormalization scales and offsets (MUL, ADD), as
    # in Keras; the nested model's BatchNormalization is folded into conv2.
    left = tflite.coverage(FaultSpec(kind="weight"))["left_out"]
    assert {entry["operator"] for entry in left} <= {"MUL", "ADD"}
    assert sum(entry["weights"] for entry in left) == (64 if name == "transformer" else 0)
    for kind in _kinds(name):
        # Node faults on the attention projections too: their bias ADDs are separate
        # operators in the file, and the node point is after them (it stopped before
        # them until the tensor names were matched by path; the faulted outputs then held
        # the bias instead of 0).
        spec = FaultSpec(kind=kind, rates=(0.3,), trials=1, seed=3)
        keras_run = keras_runner.KerasModel(model).runner(spec, images, labels, EXAMPLES)
        file_run = tflite.runner(spec, images, labels, EXAMPLES)
        assert set(file_run.target_names) == set(keras_run.target_names), kind
        assert keras_run.inject(0.3, 0) == file_run.inject(0.3, 0), kind
        keras_logits = np.asarray(keras_run.faulty(images, training=False))
        scale = max(1.0, float(np.max(np.abs(keras_logits))))
        difference = np.max(np.abs(keras_logits - file_run.logits()))
        assert difference <= 1e-4 * scale, (kind, difference)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_int8_tracks_float32_under_the_same_faults(name, trained):
    _, paths, images, labels = trained[name]
    spec = FaultSpec(kind="weight", rates=(0.2,), trials=8, seed=5)
    accuracy = {}
    for mode in ("float32", "int8"):
        runner = tflite_runner.TFLiteModel(paths[mode]).runner(spec, images, labels, EXAMPLES)
        accuracy[mode] = np.array([runner.evaluate_cell(0.2, t)["accuracy"] for t in range(8)])
    _assert_not_significantly_beyond(accuracy["int8"] - accuracy["float32"], 0.03)


def test_all_trainable_reaches_an_unregistered_layer(trained):
    """A layer no entry describes is left out with the way to reach it, and
    weights='all_trainable' faults its rank >= 2 variables (in place, same counts)."""
    _, _, images, labels = trained["custom"]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28))
    x = UnregisteredDense(32, name="mine")(L.Flatten()(inputs))
    model = keras.Model(inputs, L.Dense(10, name="logits")(L.ReLU()(x)))
    plain = keras_runner.KerasModel(model)
    left = plain.coverage(FaultSpec(kind="weight"))["left_out"]
    assert [entry["layer"] for entry in left] == ["mine"]
    assert "--weights=all_trainable" in left[0]["reason"]
    spec = FaultSpec(kind="weight", weights="all_trainable", rates=(0.5,), trials=1)
    assert plain.select_layers(spec) == ["mine", "logits"]
    coverage = plain.coverage(spec)
    assert coverage["left_out"] == [] and coverage["weights"] == "all_trainable"
    runner = plain.runner(spec, images, labels, EXAMPLES)
    counts = runner.inject(0.5, 0)
    assert counts["per_layer"]["mine"] == {"faulted": 784 * 32 // 2, "elements": 784 * 32}
    assert spec.key() != FaultSpec(kind="weight", rates=(0.5,), trials=1).key()
    # The model's own variables were never written (the campaign faults a copy).
    assert not np.any(model.get_layer("mine").w.numpy() == 0)


def test_register_layer_refuses_what_it_cannot_use():
    with pytest.raises(TypeError, match="Layer subclass"):
        registry.register_layer(int)
    with pytest.raises(ValueError, match="non-empty tuple"):
        registry.register_layer(_Unrelated, kernels="w")


def test_flat_models_keep_their_campaign_keys():
    """The fields added since (weights, targets, protected, fault_map, array, dataflow)
    did not change any earlier campaign's key: these keys were computed with the code of
    commit 3362c0d, before them."""
    assert FaultSpec(kind="weight", rates=(0.1,), trials=3, seed=2).key() == "850a0505e3295f62"
    assert FaultSpec(kind="node", layers=("a",), seed=1).key() == "081c98e6349c1bf0"
    assert FaultSpec(kind="filter").key() == "a460e5d61cb9176e"


def test_cli_campaign_on_a_nested_model_and_a_users_layer(trained, tmp_path):
    """aftt-faults with --import registering a user's layer, path globs and --per_layer:
    every layer is named by its path in results.json."""
    import json
    import subprocess
    import sys

    model, _, images, labels = trained["custom"]
    nested, _, nested_images, nested_labels = trained["nested"]
    model.save(tmp_path / "custom.keras")
    nested.save(tmp_path / "nested.keras")
    np.savez(tmp_path / "test.npz", x=images, y=labels)
    np.savez(tmp_path / "test4d.npz", x=nested_images, y=nested_labels)
    runs = {
        "custom": [
            "--model=c=" + str(tmp_path / "custom.keras"),
            "--import=tests.own_layers",
            "--data=npz:" + str(tmp_path / "test.npz"),
            "--fault=weight",
        ],
        "nested": [
            "--model=n=" + str(tmp_path / "nested.keras"),
            "--data=npz:" + str(tmp_path / "test4d.npz"),
            "--fault=node",
            "--layers=backbone/*",
            "--per_layer",
        ],
    }
    for name, argv in runs.items():
        out = tmp_path / name
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "aftt_tf.cli.faults",
                *argv,
                "--input_transform=raw",
                "--rates=0,0.3",
                "--trials=2",
                f"--out={out}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[:3000]
        results = json.loads((out / "results.json").read_text())
        coverage = next(iter(results["coverage"].values()))
        if name == "custom":
            assert coverage["targeted_layers"] == ["own", "logits"]
            assert coverage["left_out"] == []
        else:
            assert coverage["targeted_layers"] == ["backbone/conv1", "backbone/conv2"]
            cells = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
            assert {cell["group"] for cell in cells} >= {"backbone/conv1", "backbone/conv2"}


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn"])
def test_unrolled_recurrent_layers_in_tflite_match_keras(kind, tmp_path):
    """Keras 3 LSTM/GRU/SimpleRNN convert to builtin operators when unrolled: one
    FULLY_CONNECTED per step reading the same two constant kernels. The file's layer is
    the Keras layer (input kernel first, recurrent kernel second), each kernel faulted
    once at the rate (not once per step), and the faulty logits equal Keras'. Node faults
    on the carried state are refused with the reason."""
    layer = {
        "lstm": lambda: L.LSTM(16, unroll=True, name="rnn"),
        "gru": lambda: L.GRU(16, unroll=True, name="rnn"),
        "simple_rnn": lambda: L.SimpleRNN(12, unroll=True, name="rnn"),
    }[kind]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 12))
    model = keras.Model(inputs, L.Dense(10, name="logits")(layer()(inputs)))
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if "bias" in weight.path:  # Zero biases would be dropped by the converter.
            weight.assign(rng.normal(0, 0.1, weight.shape))
    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    path = tmp_path / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved")).convert())
    tflite = tflite_runner.TFLiteModel(path)
    assert list(tflite.layers) == ["rnn", "logits"] and tflite.names_from == "tensor names"
    assert len(tflite.layers["rnn"].shared_operators) >= 8  # The other steps' products.
    images = rng.uniform(0, 1, (60, 8, 12)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), axis=-1)
    spec = FaultSpec(kind="weight", rates=(0.3,), trials=1, seed=2)
    keras_run = keras_runner.KerasModel(model).runner(spec, images, labels, 60)
    file_run = tflite.runner(spec, images, labels, 60)
    counts = keras_run.inject(0.3, 0)
    assert counts == file_run.inject(0.3, 0)
    cell = model.get_layer("rnn").cell
    kernels = cell.kernel.shape[0] * cell.kernel.shape[1]
    recurrent = cell.recurrent_kernel.shape[0] * cell.recurrent_kernel.shape[1]
    assert counts["per_layer"]["rnn"]["faulted"] == round(0.3 * kernels) + round(0.3 * recurrent)
    keras_logits = np.asarray(keras_run.faulty(images, training=False))
    np.testing.assert_allclose(
        file_run.logits(), keras_logits, atol=1e-4 * max(1, np.abs(keras_logits).max())
    )
    refused = [c for c in tflite.candidates() if not c.node_faults]
    assert [c.name for c in refused] == ["rnn"] and "unrolled" in refused[0].node_refusal


def test_fault_aware_training_reaches_nested_layers(trained):
    """Fault-aware training draws node masks after the nested backbone's layers (conv2's
    after its BatchNormalization, where campaigns put it) and weight faults in its
    kernels, on a view that shares the model's weights."""
    from aftt_tf.faults import kinds
    from aftt_tf.training import trainers

    model, _, images, _ = trained["nested"]
    view, masks, _ = trainers._with_output_faults(model, kinds.get("node"), [], None)
    assert [tuple(mask.shape) for mask in masks] == [(26, 26, 8), (12, 12, 12), (24,)]
    backbone = view.get_layer("backbone")
    assert backbone.get_layer("conv1") is model.get_layer("backbone").get_layer("conv1")
    names = [layer.name for layer in backbone.layers]
    assert names.index("conv2_training_fault") == names.index("bn") + 1
    np.testing.assert_allclose(view(images[:20]), model(images[:20]), rtol=1e-6)
    masks[0].assign(np.zeros(masks[0].shape, np.float32))
    assert not np.allclose(view(images[:20]), model(images[:20]))
    masks[0].assign(np.ones(masks[0].shape, np.float32))
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.get_layer("backbone").get_layer("bn").trainable = False
    trainer = trainers.ClassifierTrainer(
        clone, fault_aware_kinds=("weight", "node"), fault_aware_max_rate=0.5
    )
    kernels = {id(v) for v in trainer.fault_kernels}
    assert id(clone.get_layer("backbone").get_layer("conv1").kernel) in kernels
    assert len(trainer.fault_kernels) == 4 and len(trainer.node_masks) == 3


def test_one_deep_layer_of_a_residual_graph_is_faulted():
    """A per-layer campaign on a layer inside a residual block (MobileNetV2's shape): the
    cached-prefix split does not apply to such a graph and the whole model is evaluated
    (it raised 'Iterating over a symbolic KerasTensor' from the Add before)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    first = L.Conv2D(4, 3, padding="same", name="c1")(inputs)
    second = L.Conv2D(4, 3, padding="same", name="c2")(first)
    x = L.Conv2D(6, 3, name="c3")(L.Add()([first, second]))
    model = keras.Model(inputs, L.Dense(10, name="logits")(L.GlobalAveragePooling2D()(x)))
    images = np.random.default_rng(0).uniform(0, 1, (40, 12, 12, 3)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    spec = FaultSpec(layers=("c2",), rates=(0.5,), trials=1)
    runner = keras_runner.KerasModel(model).runner(spec, images, labels, 40)
    faulty, _ = keras_runner.faulty_copy(model, spec, 0.5, 0)
    expected = np.mean(np.argmax(np.asarray(faulty(images)), -1) == labels)
    assert runner.evaluate_cell(0.5, 0)["accuracy"] == pytest.approx(expected)
