"""Transient activation faults (issue 24, item 1): per-inference faults in layer outputs,
Keras and .tflite, on a paper-style MLP and a user-style Sequential CNN (Rescaling,
BatchNormalization, ReLU layers) trained briefly on real Fashion-MNIST."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.data import datasets as data
from aftt_tf.data import inputs as input_transforms
from aftt_tf.faults import transient
from aftt_tf.faults.spec import FaultSpec, FaultTargetError
from aftt_tf.runtimes import keras_runner, tflite_runner, tflite_transient
from tests import cli_helpers, conversion
from tests.conftest import requires_fashion_mnist

pytestmark = requires_fashion_mnist
L = keras.layers
EXAMPLES = 200
RAW = input_transforms.resolve("raw")  # The test inputs are what the models take.


def _mlp() -> keras.Model:
    inputs = keras.Input((28, 28))
    x = L.Flatten()(inputs)
    x = L.Dense(32, activation="relu", name="dense1")(x)
    x = L.Dense(24, activation="relu", name="dense2")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x))


def _cnn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Rescaling(1 / 255.0),
            L.Conv2D(8, 3, name="conv1"),
            L.BatchNormalization(momentum=0.9, name="bn1"),
            L.ReLU(name="relu1"),
            L.Conv2D(8, 3, strides=2, activation="relu", name="conv2"),
            L.Flatten(),
            L.Dense(10, activation="softmax", name="probabilities"),
        ]
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """name -> (model, {float32, int8: path}, test inputs (as the model takes them), labels)."""
    root = tmp_path_factory.mktemp("transient")
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    train_x, train_y = arrays["train"][0][:3000, ..., 0], arrays["train"][1][:3000]
    test_x, test_y = arrays["test"][0][:EXAMPLES, ..., 0], arrays["test"][1][:EXAMPLES]
    result = {}
    for index, (name, build) in enumerate({"mlp": _mlp, "cnn": _cnn}.items()):
        keras.utils.set_random_seed(index)
        model = build()
        if name == "mlp":
            x, t = train_x.astype(np.float32) / 255.0, test_x.astype(np.float32) / 255.0
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        else:
            x, t = train_x[..., None].astype(np.float32), test_x[..., None].astype(np.float32)
            loss = "sparse_categorical_crossentropy"
        model.compile("adam", loss)
        model.fit(x, train_y, epochs=1, batch_size=64, verbose=0)
        paths = conversion.tflite_files(model, root, name, x)
        model.save(root / f"{name}.keras")
        result[name] = (model, paths, t, test_y)
    return result


def _keras(model, spec, inputs, labels, rate, trial=0):
    runner = keras_runner.CampaignRunner(model, spec, inputs, labels, 64, transform=RAW)
    try:
        counts = runner.inject(rate, trial)
        return runner.logits(), counts, runner.evaluate_cell(rate, trial)
    finally:
        runner.close()


def test_faults_change_only_drawn_values_of_drawn_inferences(trained):
    """The Keras runtime's faulty outputs equal a numpy forward pass that corrupts the
    plan's (inference, value) pairs; every other inference is exactly the clean one,
    and each layer holds round(rate * inferences * values) faults."""
    model, _, inputs, labels = trained["mlp"]
    spec = FaultSpec(kind="activation_bit", rates=(0.01,), seed=3)
    logits, counts, _ = _keras(model, spec, inputs, labels, 0.01)
    sizes = {"dense1": 32, "dense2": 24}
    plan = transient.plan_cell(spec, sizes, {"dense1": 32, "dense2": 32}, EXAMPLES, 0.01, 0)
    for name, size in sizes.items():
        assert counts["per_layer"][name]["faulted"] == round(0.01 * EXAMPLES * size)
        assert len(plan[name]) == counts["per_layer"][name]["faulted"]
    weights = {n: model.get_layer(n).get_weights() for n in ("dense1", "dense2", "logits")}
    x = inputs.reshape(EXAMPLES, -1)
    with np.errstate(all="ignore"):
        for name in ("dense1", "dense2"):
            x = np.maximum(x @ weights[name][0] + weights[name][1], np.float32(0))
            faults = plan[name]
            x[faults.examples, faults.elements] = transient.corrupt(
                x[faults.examples, faults.elements], faults.bits, spec
            )
        reference = x @ weights["logits"][0] + weights["logits"][1]
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)
    clean = np.asarray(model(inputs, training=False))
    struck = np.union1d(plan["dense1"].examples, plan["dense2"].examples)
    untouched = np.setdiff1d(np.arange(EXAMPLES), struck)
    np.testing.assert_array_equal(logits[untouched], clean[untouched])
    changed = np.flatnonzero(np.any(~np.isclose(logits, clean, equal_nan=False), axis=1))
    assert set(changed) <= set(struck) and len(changed) > 0


def test_a_fixed_count_strikes_whole_inferences(trained):
    """--faults_per_inference=N: round(rate * inferences) inferences struck, each with
    exactly N distinct faults over all targeted values; the rest are the clean ones."""
    model, _, inputs, labels = trained["mlp"]
    spec = FaultSpec(kind="activation_value", stuck_value=50.0, faults_per_inference=3)
    sizes = {"dense1": 32, "dense2": 24}
    plan = transient.plan_cell(spec, sizes, {"dense1": 32, "dense2": 32}, EXAMPLES, 0.25, 1)
    examples = np.concatenate([plan[n].examples for n in sizes])
    reordered = transient.plan_cell(  # Runtimes may list layers in other orders.
        spec, dict(reversed(sizes.items())), {"dense1": 32, "dense2": 32}, EXAMPLES, 0.25, 1
    )
    for name in sizes:
        np.testing.assert_array_equal(reordered[name].examples, plan[name].examples)
        np.testing.assert_array_equal(reordered[name].elements, plan[name].elements)
    flat = np.concatenate([plan["dense1"].elements, 32 + plan["dense2"].elements])
    struck, per = np.unique(examples, return_counts=True)
    assert len(struck) == round(0.25 * EXAMPLES) and set(per) == {3}
    for example in struck:
        assert len(set(flat[examples == example])) == 3
    logits, counts, _ = _keras(model, spec, inputs, labels, 0.25, 1)
    assert counts["faulted"] == 3 * len(struck)
    clean = np.asarray(model(inputs, training=False))
    untouched = np.setdiff1d(np.arange(EXAMPLES), struck)
    np.testing.assert_array_equal(logits[untouched], clean[untouched])
    assert np.all(np.any(logits[struck] != clean[struck], axis=1))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_keras_and_float32_file_corrupt_the_same_values(name, trained):
    """One seed, the same faults in both runtimes: equal counts per layer, equal outputs
    (NaN where one has NaN: an exponent bit fault is a detected error in both), equal
    outcomes. The CNN's faults sit after its folded BatchNormalization and fused ReLU."""
    model, paths, inputs, labels = trained[name]
    tflite = tflite_runner.TFLiteModel(paths["float32"])
    for spec in (
        FaultSpec(kind="activation_bit", rates=(0.02,), seed=1),
        FaultSpec(kind="activation_bit", rates=(0.05,), bit_position=30),
        FaultSpec(kind="activation_value", rates=(0.02,), stuck_value=30.0),
        FaultSpec(kind="activation_bit", rates=(0.5,), faults_per_inference=2, seed=5),
    ):
        rate = spec.rates[0]
        logits, counts, cell = _keras(model, spec, inputs, labels, rate)
        runner = tflite.runner(spec, inputs, labels, 64, RAW)
        file_counts = runner.inject(rate, 0)
        file_logits = runner.logits()
        assert file_counts["per_layer"] == counts["per_layer"]
        np.testing.assert_array_equal(np.isnan(logits), np.isnan(file_logits))
        finite = np.isfinite(logits) & np.isfinite(file_logits)
        np.testing.assert_allclose(logits[finite], file_logits[finite], rtol=1e-4, atol=1e-4)
        file_cell = runner.evaluate_cell(rate, 0)
        for key in ("accuracy", "non_finite", "sdc"):
            assert file_cell[key] == pytest.approx(cell[key], abs=1.5 / EXAMPLES), key
        if spec.value.bit_position == 30:  # The exponent's top bit: detected errors in both.
            assert cell["non_finite"] > 0


def test_int8_file_corrupts_the_stored_int8_codes(trained):
    """In an int8 file the faulted values are the int8 codes of the cut tensor: between
    pieces exactly the drawn codes change, each in exactly the drawn bit."""
    _, paths, inputs, labels = trained["cnn"]
    model = tflite_runner.TFLiteModel(paths["int8"])
    spec = FaultSpec(kind="activation_bit", rates=(0.01,), seed=2)
    names = model.select_layers(spec)
    points = {n: model.layers[n].transient_tensor for n in names}
    split = tflite_transient.SplitModel(model, points, EXAMPLES)
    assert set(split.widths.values()) == {8}
    plan = transient.plan_cell(spec, split.sizes, split.widths, EXAMPLES, 0.01, 0)
    quantized = model.quantize_inputs(inputs)
    first, point = next(iter(split.points.items()))
    values = {split.input_index: quantized}
    split.pieces[0].run(values)
    clean = values[point].reshape(EXAMPLES, -1).copy()
    faulty = clean.copy()
    faults = plan[first]
    faulty[faults.examples, faults.elements] = transient.corrupt(
        clean[faults.examples, faults.elements], faults.bits, spec
    )
    changed = np.argwhere(faulty != clean)
    assert len(changed) == len(faults) > 0
    difference = clean.view(np.uint8) ^ faulty.view(np.uint8)
    expected = np.left_shift(1, faults.bits).astype(np.uint8)
    np.testing.assert_array_equal(difference[faults.examples, faults.elements], expected)


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_pieces_without_faults_compute_the_file(mode, trained):
    """Struck inferences run through the cut pieces, the others (and the golden run)
    through the uncut file: without faults the pieces give exactly the file's outputs."""
    _, paths, inputs, _ = trained["cnn"]
    model = tflite_runner.TFLiteModel(paths[mode])
    spec = FaultSpec(kind="activation_bit")
    points = {n: model.layers[n].transient_tensor for n in model.select_layers(spec)}
    split = tflite_transient.SplitModel(model, points, 64)
    quantized = model.quantize_inputs(inputs)
    whole = split.whole.outputs(quantized)
    pieces = split.piece_outputs(quantized, np.arange(EXAMPLES), {}, spec)
    np.testing.assert_array_equal(pieces, whole)
    # Positions are drawn for the declared shape: a tensor of another size at run time
    # (a dynamic shape) is refused, never indexed with them.
    name = next(iter(split.sizes))
    plan = transient.plan_cell(spec, split.sizes, split.widths, EXAMPLES, 0.01, 0)
    split.sizes[name] += 1
    with pytest.raises(FaultTargetError, match="at run time"):
        split.piece_outputs(quantized, np.arange(EXAMPLES), plan, spec)


def test_refusals_name_the_cause(trained, monkeypatch):
    model, paths, inputs, labels = trained["cnn"]
    with pytest.raises(ValueError, match="needs the value"):
        FaultSpec(kind="activation_value").validate()
    with pytest.raises(ValueError, match="--include_bias"):
        FaultSpec(kind="activation_bit", include_bias=True).validate()
    with pytest.raises(ValueError, match="transient faults"):
        FaultSpec(kind="weight", faults_per_inference=2).validate()
    int8 = tflite_runner.TFLiteModel(paths["int8"])
    with pytest.raises(FaultTargetError, match="8-bit outputs"):
        int8.runner(FaultSpec(kind="activation_bit", bit_position=30), inputs, labels, 64, RAW)
    with pytest.raises(FaultTargetError, match="cannot be stored"):
        int8.runner(FaultSpec(kind="activation_value", stuck_value=1e6), inputs, labels, 64, RAW)
    users = keras_runner._IEEE_USERS[0]  # Runners of other tests may still hold it.
    monkeypatch.setattr(transient, "MAX_FAULTS_PER_CELL", 100_000)  # 200 x 6,560 values.
    with pytest.raises(FaultTargetError, match="more than 100,000"):
        keras_runner.CampaignRunner(
            model, FaultSpec(kind="activation_bit", rates=(1.0,)), inputs, labels, 64, RAW
        )
    assert keras_runner._IEEE_USERS[0] == users  # A refused runner leaves nothing held.
    monkeypatch.undo()
    runner = keras_runner.CampaignRunner(
        model, FaultSpec(kind="activation_bit"), inputs, labels, 64, RAW
    )
    with pytest.raises(FaultTargetError, match="int32"):  # 5,408 values x 400,000 rows.
        runner.injector.set_chunk_size(400_000)
    runner.close()


def test_cli_pairs_the_keras_model_and_its_float32_file(trained, tmp_path):
    """aftt-faults --fault=activation_bit on the .keras and its float32 .tflite: one
    campaign with coverage of the outputs and SDC per cell; both runtimes fault the same
    counts and reach the same accuracy in every cell."""
    _, paths, inputs, labels = trained["mlp"]
    np.savez(tmp_path / "test.npz", x=inputs, y=labels)
    out = tmp_path / "campaign"
    result = cli_helpers.run(
        "aftt_tf.cli.faults",
        f"--model=keras={paths['float32'].parent / 'mlp.keras'}",
        f"--model=file={paths['float32']}",
        f"--data=npz:{tmp_path / 'test.npz'}",
        "--fault=activation_bit",
        "--rates=0,0.001,0.01",
        "--trials=2",
        f"--out={out}",
    )
    assert "transient faults reach the outputs of 2 layers: 56 values" in result.stdout
    results = json.loads((out / "results.json").read_text())
    outputs = results["coverage"]["keras"]["outputs"]
    assert outputs["stored_as"] == ["float32"]
    assert results["coverage"]["file"]["outputs"]["values_per_inference"] == {
        "dense1": 32,
        "dense2": 24,
    }
    by_model = cli_helpers.cells_by_model(out)
    for key, cell in by_model["keras"].items():
        other = by_model["file"][key]
        assert other["faulted"] == cell["faulted"]
        assert other["accuracy"] == pytest.approx(cell["accuracy"], abs=1.5 / EXAMPLES)
    assert any(cell.get("sdc", 0) > 0 for cell in by_model["keras"].values())
    from aftt_tf.reproduce import campaign_report

    markdown, _ = campaign_report.write([out], tmp_path / "report")
    text = markdown.read_text()
    assert "transient faults in the outputs of 2 layers, 56 values per inference" in text
    assert "SDC" in text


def test_mixed_precision_outputs_take_float16_bits():
    """A layer computing in float16 (mixed precision) stores float16 outputs: a bit is one
    of its 16, and a bit position beyond them is refused."""
    keras.utils.set_random_seed(0)
    inputs_ = keras.Input((8,))
    x = L.Dense(16, activation="relu", name="d1", dtype="mixed_float16")(inputs_)
    model = keras.Model(inputs_, L.Dense(4, name="out", dtype="float32")(x))
    data = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    labels = np.zeros(40, np.int64)
    adapter = keras_runner.KerasModel(model)
    spec = FaultSpec(kind="activation_bit", rates=(0.1,), bit_position=9, bit_mode="stuck_at_1")
    assert adapter.coverage(spec)["outputs"]["stored_as"] == ["float16"]
    runner = adapter.runner(spec, data, labels, 16, RAW)
    assert runner.injector.widths == {"d1": 16}
    runner.inject(0.1, 0)
    faults = transient.plan_cell(spec, {"d1": 16}, {"d1": 16}, 40, 0.1, 0)["d1"]
    hidden = np.maximum(
        data @ model.get_layer("d1").kernel.numpy() + model.get_layer("d1").bias.numpy(), 0
    ).astype(np.float16)
    hidden[faults.examples, faults.elements] = transient.corrupt(
        hidden[faults.examples, faults.elements], faults.bits, spec
    )
    out = model.get_layer("out")
    reference = hidden.astype(np.float32) @ out.kernel.numpy() + out.bias.numpy()
    np.testing.assert_allclose(runner.logits(), reference, rtol=2e-2, atol=2e-2)
    runner.close()
    with pytest.raises(FaultTargetError, match="16-bit outputs"):
        adapter.runner(FaultSpec(kind="activation_bit", bit_position=20), data, labels, 16, RAW)


def test_an_activation_the_converter_does_not_fuse_is_on_the_same_side(tmp_path):
    """Transient faults sit after a ReLU/ReLU6/tanh layer that alone reads a layer's
    output, in Keras whether or not the converter fuses it: an Embedding's ReLU stays a
    separate operator in the file, and a negative stuck value shows which side a fault is
    on (the file faulted before it, off by 3.69 in the logits, until this was mirrored)."""
    keras.utils.set_random_seed(1)
    inputs_ = keras.Input((6,), dtype="int32")
    x = L.ReLU(name="relu")(L.Embedding(20, 8, name="embed")(inputs_))
    x = L.Activation("tanh", name="act")(L.Dense(16, name="dense")(L.Flatten()(x)))
    model = keras.Model(inputs_, L.Dense(4, name="logits")(x))
    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    path = tmp_path / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved")).convert())
    data = np.random.default_rng(1).integers(0, 20, size=(40, 6)).astype(np.int32)
    labels = np.zeros(40, np.int64)
    tflite = tflite_runner.TFLiteModel(path)
    assert tflite.layers["embed"].transient_tensor != tflite.layers["embed"].node_tensor
    spec = FaultSpec(kind="activation_value", rates=(0.1,), stuck_value=-3.0)
    keras_run = keras_runner.CampaignRunner(model, spec, data, labels, 20, RAW)
    file_run = tflite.runner(spec, data, labels, 20, RAW)
    assert keras_run.inject(0.1, 0)["per_layer"] == file_run.inject(0.1, 0)["per_layer"]
    np.testing.assert_allclose(keras_run.logits(), file_run.logits(), rtol=1e-4, atol=1e-4)
    keras_run.close()
