"""Hardening the user's own model (aftt_tf.training.harden, aftt-train --model): every
method on models we did not design (a Sequential CNN with Rescaling, BatchNormalization
and DepthwiseConv2D; a Functional model around a nested backbone; a Dense model with a
softmax output), BatchNormalization frozen under fault-aware training, activation range
restriction in the .keras and the int8 .tflite, and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from aftt_tf import methods
from aftt_tf.campaigns import evaluate
from aftt_tf.data import datasets as data
from aftt_tf.data.frontend import DataOptions
from aftt_tf.faults import FaultSpec, kinds
from aftt_tf.training import harden
from tests.conftest import requires_fashion_mnist

pytestmark = requires_fashion_mnist
REPO = Path(__file__).resolve().parents[1]
L = keras.layers


@pytest.fixture(scope="module")
def fashion():
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    return (train_x[:4000], train_y[:4000]), (test_x[:1000], test_y[:1000])


def _cnn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Rescaling(1 / 255.0, name="rescale"),
            L.Conv2D(16, 3, strides=2, use_bias=False, name="conv1"),
            L.BatchNormalization(momentum=0.9, name="bn1"),
            L.ReLU(name="relu1"),
            L.DepthwiseConv2D(3, name="depthwise"),
            L.BatchNormalization(momentum=0.9, name="bn2"),
            L.ReLU(name="relu2"),
            L.Flatten(name="flatten"),
            L.Dense(32, activation="relu", name="fc"),
            L.Dense(10, name="logits"),
        ],
        name="user_cnn",
    )


def _nested() -> keras.Model:
    backbone = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(8, 3, strides=2, activation="relu", name="backbone_conv1"),
            L.Conv2D(16, 3, strides=2, activation="relu", name="backbone_conv2"),
        ],
        name="backbone",
    )
    inputs = keras.Input((28, 28, 1), name="image")
    x = L.GlobalAveragePooling2D(name="pool")(backbone(inputs))
    x = L.Dense(32, activation="relu", name="head_fc")(x)
    return keras.Model(inputs, L.Dense(10, name="head_logits")(x), name="transfer")


def _dense() -> keras.Model:
    inputs = keras.Input((784,))
    x = L.Dense(64, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, L.Dense(10, activation="softmax", name="probabilities")(x))


_INPUTS = {
    "cnn": lambda x: x.astype(np.float32),  # Raw pixels: the model rescales.
    "nested": lambda x: x.astype(np.float32) / 255,
    "dense": lambda x: (x.astype(np.float32) / 255).reshape(-1, 784),
}
_BUILD = {"cnn": _cnn, "nested": _nested, "dense": _dense}


@pytest.fixture(scope="module")
def trained(fashion):
    """{name: (model, train TrainingData, test TrainingData)}, each trained 3 epochs."""
    (train_x, train_y), (test_x, test_y) = fashion
    result = {}
    for name, build in _BUILD.items():
        keras.utils.set_random_seed(0)
        model = build()
        model.compile(
            "adam",
            keras.losses.SparseCategoricalCrossentropy(from_logits=name != "dense"),
        )
        model.fit(_INPUTS[name](train_x), train_y, epochs=3, batch_size=64, verbose=0)
        result[name] = (
            model,
            harden.TrainingData(_INPUTS[name](train_x), train_y),
            harden.TrainingData(_INPUTS[name](test_x), test_y),
        )
    return result


def _accuracy(model, split: harden.TrainingData) -> float:
    outputs = model.predict(split.inputs, batch_size=1000, verbose=0)
    return float(np.mean(np.argmax(outputs, -1) == split.labels))


@pytest.mark.parametrize("name", ["cnn", "nested", "dense"])
@pytest.mark.parametrize("method", harden.HARDEN_METHODS)
def test_every_method_keeps_the_users_architecture(name, method, trained):
    model, train, test = trained[name]
    before = [w.copy() for w in model.get_weights()]
    shared = harden.HardenConfig(epochs=1, pretrain_epochs=1, range_examples=1000)
    config = shared.for_method(method)  # range_examples only where the method reads it.
    hardened, record = harden.harden(model, config, train)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)  # The caller's model is untouched.
    names = [layer.name for layer in model.layers]
    kept = [layer.name for layer in hardened.layers if not layer.name.endswith("_range_clip")]
    assert kept == names
    assert type(hardened) is type(model)
    assert _accuracy(hardened, test) > max(0.3, _accuracy(model, test) - 0.15)
    if method in ("range", "range_fat"):
        clips = [n for n in (layer.name for layer in hardened.layers) if n.endswith("_range_clip")]
        assert clips or name == "nested"  # The nested model's clips are inside the backbone.
        assert all(low <= high for low, high in record["bounds"].values())
    if method in ("aftt", "aftt_fat"):
        games = record["phases"]["pretrain"]
        assert {"reconstruction_loss", "discriminator_gain"} <= set(games["history"][0])


def test_fat_freezes_batch_normalization_and_beats_the_start_under_faults(trained, tmp_path):
    """Fault-aware fine-tuning of the BatchNormalization CNN: clean accuracy within 1.5
    points of plain fine-tuning of the same length, and higher accuracy than the starting
    model at 50% weight faults (paired campaign, 95% interval above 0)."""
    model, train, test = trained["cnn"]
    common = {"epochs": 6, "learning_rate": 1e-3, "seed": 0, "batch_size": 64}
    plain, _ = harden.harden(model, harden.HardenConfig(method="none", **common), train)
    config = harden.HardenConfig(
        method="fat", fault_kinds=("weight",), fault_max_rate=0.3, **common
    )
    fat, record = harden.harden(model, config, train)
    assert record["batch_normalization"] == "frozen during fault-aware training"
    moving = {w.path: np.asarray(w) for w in model.weights if "moving" in w.path}
    for weight in fat.weights:  # Statistics never learned from faulty passes.
        if weight.path in moving:
            np.testing.assert_array_equal(np.asarray(weight), moving[weight.path])
    assert all(layer.trainable for layer in fat.layers)  # Restored for the user.
    assert _accuracy(fat, test) > _accuracy(plain, test) - 0.015
    spec = FaultSpec(kind="weight", rates=(0.0, 0.5), trials=8, seed=0)
    result = evaluate(
        {"fat": fat, "start": model}, spec, (test.inputs, test.labels), transform="raw"
    )
    row = next(r for r in result.paired_differences["fat - start"] if r["rate"] == 0.5)
    assert row["ci_low"] > 0, row


def test_range_restriction_beats_no_clipping_under_large_stuck_values(trained, tmp_path):
    """Under weights stuck at a huge value (1e30: an exponent fault's size) the model with
    its activations restricted (mode 'zero', FT-ClipAct) holds more accuracy than the same
    model without (paired interval above 0), with clean accuracy within 0.3 points; the
    int8 .tflite holds the restriction (its comparison and select operators) and runs."""
    model, train, test = trained["cnn"]
    config = harden.HardenConfig(method="range", range_mode="zero", epochs=0, range_examples=2000)
    clipped, _ = harden.harden(model, config, train)
    assert abs(_accuracy(clipped, test) - _accuracy(model, test)) <= 0.003
    spec = FaultSpec(kind="stuck_value", stuck_value=1e30, rates=(0.0, 0.002), trials=8, seed=0)
    result = evaluate(
        {"range": clipped, "plain": model}, spec, (test.inputs, test.labels), transform="raw"
    )
    row = next(r for r in result.paired_differences["range - plain"] if r["rate"] == 0.002)
    assert row["ci_low"] > 0, row
    path = tmp_path / "clipped.keras"
    clipped.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert [layer.mode for layer in loaded.layers if isinstance(layer, harden.ActivationClip)]
    fresh = subprocess.run(  # Every loader reads it (aftt-faults never imports harden).
        [
            sys.executable,
            "-c",
            "import sys; from aftt_tf.runtimes import keras_runner; "
            "print(len(keras_runner.load_model(sys.argv[1]).layers))",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert fresh.returncode == 0 and int(fresh.stdout.split()[-1]) == len(clipped.layers)
    np.testing.assert_allclose(loaded.predict(test.inputs[:50]), clipped.predict(test.inputs[:50]))
    from aftt_tf.deploy import export_lib
    from aftt_tf.runtimes.tflite_file import TFLiteFile

    np.savez(tmp_path / "test.npz", x=test.inputs[:500], y=test.labels[:500])
    manifest = export_lib.export_classifier(
        export_lib.ExportConfig(
            model=str(path),
            out=str(tmp_path / "export"),
            formats=("tflite_float32", "tflite_int8"),
            data_options=DataOptions(data=f"npz:{tmp_path / 'test.npz'}", input_transform="raw"),
            calibration_steps=20,
        )
    )
    for name in ("model_float32.tflite", "model_int8.tflite"):
        operators = _operators(TFLiteFile(tmp_path / "export" / name))
        assert "SELECT_V2" in operators or "SELECT" in operators, operators
        assert manifest["artifacts"][name]["test_accuracy"] > _accuracy(model, test) - 0.03


def _operators(tflite) -> set[str]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(tflite.content, 0)
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if key.isupper()}
    graph = model.Subgraphs(0)
    codes = [
        max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
        for i in range(model.OperatorCodesLength())
    ]
    return {names[codes[graph.Operators(i).OpcodeIndex()]] for i in range(graph.OperatorsLength())}


def test_aftt_moves_the_latent_toward_the_prior(trained):
    """At the paper's rates (--learning_rate=1e-3 scales the games to 1e-3/1e-4), Game 2
    pulls the latent toward N(0, 1). At the fine-tuning default (a tenth) three epochs of
    games on this model moved it away (W2 2.1 -> 4.3): docs/training.md says so."""
    model, train, _ = trained["dense"]
    config = harden.HardenConfig(
        method="aftt",
        epochs=1,
        pretrain_epochs=3,
        batch_size=64,
        prior="gaussian",
        learning_rate=1e-3,
    )
    _, record = harden.harden(model, config, train)
    games = record["phases"]["pretrain"]

    after, before = games["latent_moments_after"], games["latent_moments_before"]
    assert after["wasserstein2_to_prior"] < before["wasserstein2_to_prior"], (before, after)
    assert games["split_layer"] == "hidden"


def test_the_auto_prior_fits_the_latent_and_the_games_keep_normalization_statistics(
    trained, tmp_path
):
    """A latent after a ReLU is non-negative: 'auto' gives it a rectified Gaussian of its
    own second moment (a zero-mean N(0, 1) cannot match it), and the games train the
    extractor's weights while its BatchNormalization statistics stay as the head reads."""
    model, train, _ = trained["cnn"]
    copy = harden.copy_model(model)
    config = harden.HardenConfig(method="aftt", pretrain_epochs=1, batch_size=64)
    extractor, _ = harden.split_models(copy, "flatten")
    codes = np.asarray(extractor.predict(train.inputs[:1000], verbose=0)).reshape(1000, -1)
    statistics = {
        name: [w.numpy().copy() for w in copy.get_layer(name).non_trainable_weights]
        for name in ("bn1", "bn2")
    }
    kernel = copy.get_layer("conv1").kernel.numpy().copy()
    games = harden._games(copy, config, train, tmp_path)
    prior = games["prior"]
    assert prior["kind"] == "rectified_gaussian", prior
    np.testing.assert_allclose(prior["stddev"], np.sqrt(2 * np.mean(codes.astype(np.float64) ** 2)))
    for name, before in statistics.items():
        for old, new in zip(before, copy.get_layer(name).non_trainable_weights, strict=True):
            np.testing.assert_array_equal(old, new.numpy())
    assert copy.get_layer("bn1").trainable  # Frozen for the games only.
    assert not np.array_equal(kernel, copy.get_layer("conv1").kernel.numpy())
    assert games["batch_normalization_frozen"] == ["bn1", "bn2"]
    flat = keras.Model(extractor.inputs, L.Flatten(name="latent")(extractor.output))
    fitted = harden.latent_moments(flat, train.inputs, prior)
    paper = harden.latent_moments(flat, train.inputs, {"kind": "gaussian", "stddev": 1.0})
    assert fitted["wasserstein2_to_prior"] < paper["wasserstein2_to_prior"]


def test_a_signed_latent_gets_a_gaussian_of_its_scale():
    inputs = keras.Input((6,))
    code = L.Dense(8, name="code")(inputs)  # Linear: values of both signs.
    model = keras.Model(inputs, L.Dense(3, name="out")(code))
    extractor, _ = harden.split_models(model, "code")
    values = np.random.default_rng(0).normal(0, 3, (200, 6)).astype(np.float32)
    prior = harden.choose_prior(extractor, values, harden.HardenConfig(method="aftt"))
    codes = np.asarray(extractor(values), np.float64)
    assert prior["kind"] == "gaussian"
    np.testing.assert_allclose(prior["stddev"], np.sqrt(np.mean(codes**2)), rtol=1e-6)
    explicit = harden.HardenConfig(method="aftt", prior="gaussian", prior_stddev=0.5)
    assert harden.choose_prior(extractor, values, explicit)["stddev"] == 0.5
    with pytest.raises(ValueError, match="--prior must be auto, gaussian or rectified_gaussian"):
        harden.HardenConfig(method="aftt", prior="laplace").validate()


def test_bad_models_and_layers_are_refused(trained):
    model, train, _ = trained["cnn"]
    with pytest.raises(ValueError, match="is no layer of"):
        harden.harden(model, harden.HardenConfig(method="aftt", split_layer="nope"), train)
    inputs = keras.Input((8,))
    skip = L.Dense(8, name="a")(inputs)
    merged = L.Add(name="add")([L.Dense(8, name="b")(skip), skip])
    branchy = keras.Model(inputs, L.Dense(3, name="out")(merged))
    branch_data = harden.TrainingData(np.zeros((64, 8), np.float32), np.zeros(64, np.int64))
    with pytest.raises(ValueError, match="does not separate"):
        harden.harden(branchy, harden.HardenConfig(method="aftt", split_layer="b"), branch_data)
    sigmoid = keras.Sequential([keras.Input((8,)), L.Dense(3, activation="sigmoid")])
    with pytest.raises(ValueError, match="ends in a sigmoid"):
        harden.harden(sigmoid, harden.HardenConfig(method="none"), branch_data)
    two = keras.Model(inputs, [L.Dense(3)(inputs), L.Dense(3)(inputs)])
    with pytest.raises(ValueError, match="has 2 outputs"):
        harden.harden(two, harden.HardenConfig(method="none"), branch_data)


def test_trainer_refuses_fault_aware_training_with_live_batch_statistics(trained):
    from aftt_tf.training import trainers

    model, _, _ = trained["cnn"]
    with pytest.raises(ValueError, match="statistics would come from faulty passes"):
        trainers.ClassifierTrainer(model, fault_aware_kinds=("weight",), fault_aware_max_rate=0.5)


@pytest.mark.parametrize("kind", kinds.trainable_names())
def test_every_fault_kind_is_trainable_on_a_users_cnn(kind, trained):
    """Every kind campaigns measure trains from harden() on the BatchNorm + depthwise
    CNN, each with what its traits ask for: int8 codes for bit kinds, a value for
    activation_value, bounds (range_fat) for activation_bit."""
    model, train, _ = trained["cnn"]
    fault_kind = kinds.get(kind)
    bounded = methods.names(restricts_range=True, fault_aware=True)[0]
    config = harden.HardenConfig(
        method=bounded if fault_kind.training_needs_bounds else "fat",
        epochs=1,
        fault_kinds=(kind,),
        fault_max_rate=min(0.05, fault_kind.training_max_rate),
        storage="float32" if "float32" in fault_kind.training_storages else "int8",
        fault_value=1e3 if fault_kind.transient and fault_kind.takes_value else None,
        range_examples=1000 if fault_kind.training_needs_bounds else 10000,
    )
    config.validate()
    hardened, record = harden.harden(model, config, train)
    history = record["phases"]["finetune"]["history"]
    assert np.isfinite(history[0]["loss"])
    assert not np.array_equal(
        hardened.get_layer("fc").kernel.numpy(), model.get_layer("fc").kernel.numpy()
    )


@pytest.mark.slow
def test_cli_hardens_and_resumes(trained, tmp_path):
    model, train, test = trained["cnn"]
    model.save(tmp_path / "mine.keras")
    np.savez(tmp_path / "train.npz", x=train.inputs[:2000].astype(np.uint8), y=train.labels[:2000])
    np.savez(tmp_path / "test.npz", x=test.inputs.astype(np.uint8), y=test.labels)
    argv = [
        sys.executable,
        "-m",
        "aftt_tf.cli.train",
        f"--model={tmp_path / 'mine.keras'}",
        f"--data=npz:{tmp_path / 'train.npz'}",
        f"--test_data=npz:{tmp_path / 'test.npz'}",
        "--input_transform=raw",
        "--method=fat",
        "--epochs=1",
        f"--out={tmp_path / 'run'}",
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    hardened = keras.saving.load_model(tmp_path / "run" / "classifier.keras", compile=False)
    assert [layer.name for layer in hardened.layers] == [layer.name for layer in model.layers]
    assert metrics["test_accuracy"] == pytest.approx(_accuracy(hardened, test), abs=1e-9)
    assert metrics["data"]["validation"]["examples"] == 200  # A seeded 10% held out.
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert (
        again.returncode == 0
        and json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    )
    other = subprocess.run(
        [*argv[:-1], "--method=range", f"--out={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert (
        other.returncode == 2
        and "holds another run: harden.method: recorded 'fat', now 'range'" in other.stderr
    )
    bad = subprocess.run(
        [*argv[:-1], "--split_layer=nope", "--method=aftt", f"--out={tmp_path / 'bad'}"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert bad.returncode == 2 and "is no layer of" in bad.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_reproduce_compares_methods_on_the_users_model(trained, tmp_path):
    """aftt-reproduce --model: methods harden the user's model, int8 exports, paired
    campaigns of the kinds that apply (range compared: stuck_value, bit and transient
    activation bit flips too), one report."""
    model, train, test = trained["dense"]
    model.save(tmp_path / "mine.keras")
    np.savez(tmp_path / "train.npz", x=train.inputs[:2000], y=train.labels[:2000])
    np.savez(tmp_path / "test.npz", x=test.inputs[:500], y=test.labels[:500])
    argv = [
        sys.executable,
        "-m",
        "aftt_tf.cli.reproduce",
        f"--model={tmp_path / 'mine.keras'}",
        f"--data=npz:{tmp_path / 'train.npz'}",
        f"--test_data=npz:{tmp_path / 'test.npz'}",
        "--methods=none,fat,range",
        "--epochs=1",
        "--rates=0,0.3",
        "--trials=2",
        f"--out={tmp_path / 'compare'}",
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "verdict: keras, weight faults:" in run.stdout
    campaigns = sorted(p.name for p in (tmp_path / "compare" / "campaigns").iterdir())
    assert campaigns == [
        f"{runtime}_{kind}"
        for runtime in ("int8", "keras")
        for kind in ("activation_bit", "bit", "node", "stuck_value", "weight")
    ]
    results = json.loads((tmp_path / "compare/campaigns/keras_weight/results.json").read_text())
    for method in ("none", "fat", "range"):
        hardened = keras.saving.load_model(
            tmp_path / "compare" / "runs" / method / "classifier.keras", compile=False
        )
        expected = _accuracy(hardened, harden.TrainingData(test.inputs[:500], test.labels[:500]))
        assert results["summary"][method]["all"]["clean_accuracy"] == pytest.approx(expected)
    assert "By mean drop from clean accuracy" in (tmp_path / "compare" / "report.md").read_text()
    missing = subprocess.run(
        [*argv[:5], "--methods=none,fat", f"--out={tmp_path / 'x'}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert missing.returncode == 2 and "--test_data is required" in missing.stderr


def test_the_games_move_a_trained_extractor_as_far_as_fine_tuning_does():
    """The games' extractor rates scale with the supervised rate from the paper's 1e-3:
    at the fine-tuning default 1e-4 they are a tenth of the paper's; the new
    discriminator keeps the paper's rate."""
    rates = harden.game_learning_rates(harden.HardenConfig(method="aftt"))
    assert rates == pytest.approx(
        {"reconstruction": 1e-4, "discriminator": 5e-5, "adversarial": 1e-5}
    )
    paper = harden.game_learning_rates(harden.HardenConfig(method="aftt", learning_rate=1e-3))
    assert paper == pytest.approx(
        {"reconstruction": 1e-3, "discriminator": 5e-5, "adversarial": 1e-4}
    )
