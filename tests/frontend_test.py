"""The shared model/data front end and the small silent cases of issue 21: output kinds,
data sources named or refused, bit positions with one meaning, rates printed with their
digits, a log axis for rates spanning decades, no empty plot, an unmet --target_margin
said, TensorFlow's log quiet by default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from aftt_tf.campaigns import console, plots
from aftt_tf.campaigns import engine as campaign
from aftt_tf.data import frontend
from aftt_tf.faults.spec import CampaignModel, FaultSpec

REPO = Path(__file__).resolve().parents[1]
L = keras.layers


def _functional(activation=None):
    inputs = keras.Input((6,))
    return keras.Model(inputs, L.Dense(3, activation=activation)(L.Dense(8)(inputs)))


@pytest.mark.parametrize(
    "model, kind",
    [
        (_functional(), "logits"),
        (_functional("softmax"), "probabilities"),
        (_functional("sigmoid"), "sigmoid"),
        (keras.Sequential([keras.Input((6,)), L.Dense(3), L.Softmax()]), "probabilities"),
        (
            keras.Sequential([keras.Input((6,)), L.Dense(3), L.Activation("softmax")]),
            "probabilities",
        ),
    ],
)
def test_output_kind_is_read_from_the_final_activation(model, kind):
    assert frontend.output_kind(model) == kind


def test_a_built_in_dataset_only_when_named(tmp_path):
    model = tmp_path / "run" / "classifier.keras"
    model.parent.mkdir()
    with pytest.raises(ValueError, match="--data is required"):
        frontend.resolve_source("", model)
    (model.parent / "config.json").write_text('{"dataset": "fashion_mnist"}')
    assert frontend.resolve_source("", model) == "fashion_mnist"
    assert frontend.resolve_source("npz:x.npz", model) == "npz:x.npz"
    with pytest.raises(ValueError, match="Unknown --data"):
        frontend.DataOptions(data="cifar100").validate()


def test_a_held_out_part_is_seeded_and_disjoint():
    examples = frontend.Examples(np.arange(100)[:, None], np.arange(100) % 10, {"source": "s"})
    rest, held = frontend.split_off(examples, 0.2, seed=3)
    assert len(held.labels) == 20 and len(rest.labels) == 80
    assert not set(held.images[:, 0]) & set(rest.images[:, 0])
    again, _ = frontend.split_off(examples, 0.2, seed=3)
    np.testing.assert_array_equal(again.images, rest.images)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    wide = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    x = L.Dense(8, activation="relu", kernel_initializer=wide, name="hidden")(inputs - 0.5)
    return keras.Model(inputs, L.Dense(3, kernel_initializer=wide, name="out")(x))


def test_a_bit_campaign_of_differently_stored_models_is_refused():
    class Int8Model(CampaignModel):
        """A stand-in runtime model whose faulted weights are int8."""

        input_shape = (6,)
        num_outputs = 3
        output_shapes = [(None, 3)]

        def weight_storage(self, spec):
            return {"int8"}

        def fingerprint(self):
            return "int8"

        def select_layers(self, spec):
            return ["hidden"]

        def coverage(self, spec):
            return {}

        def kernel_elements(self, spec):
            return {"hidden": 48}

        def runner(self, *args, **kwargs):
            raise AssertionError("refused before any runner")

    model = _model()
    images = np.random.default_rng(0).random((32, 6)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    spec = FaultSpec(kind="bit", bit_position=7, rates=(0.0, 0.01), trials=1)
    with pytest.raises(ValueError, match="another bit of another number format"):
        campaign.check_inputs({"keras": model, "int8": Int8Model()}, spec, images, labels)


def test_rates_are_printed_with_the_digits_they_need():
    assert console.rate_text(0.3) == "0.300"
    assert console.rate_text(0.0) == "0.000"
    assert console.rate_text(1e-5) == "1e-05"
    assert console.rate_text(0.0004) == "0.0004"


def test_rates_spanning_decades_get_a_log_axis_and_per_layer_has_no_empty_plot(tmp_path):
    model = _model()
    images = np.random.default_rng(0).random((64, 6)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    spec = FaultSpec(kind="bit", bit_position=30, rates=(0.0, 0.0001, 0.01, 0.1), trials=2)
    result = campaign.run_campaign({"m": model}, spec, images, labels, None, progress=False)
    figure = plots.accuracy_vs_rate_figure([("bits", result["summary"])])
    assert figure.axes[0].get_xscale() == "symlog"
    linear = FaultSpec(kind="weight", rates=(0.0, 0.3, 0.6), trials=2)
    result = campaign.run_campaign({"m": model}, linear, images, labels, None, progress=False)
    assert (
        plots.accuracy_vs_rate_figure([("w", result["summary"])]).axes[0].get_xscale() == "linear"
    )
    campaign.run_campaign(
        {"m": model}, linear, images, labels, tmp_path / "c", per_layer=True, progress=False
    )
    assert not (tmp_path / "c" / "accuracy_vs_rate.png").exists()
    assert (tmp_path / "c" / "layer_sensitivity.png").exists()


def test_an_unmet_target_margin_is_said(tmp_path):
    model = _model()
    images = np.random.default_rng(0).random((64, 6)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    spec = FaultSpec(kind="weight", rates=(0.0, 0.5), trials=5, target_margin=1e-6)
    results = campaign.run_campaign({"m": model}, spec, images, labels, None, progress=False)
    rows = {row["rate"]: row for row in results["summary"]["m"]["all"]["per_rate"]}
    assert rows[0.0]["margin_reached"] is True and rows[0.5]["margin_reached"] is False
    assert any("NOT reached" in line for line in console.summary_lines(results))


def test_tensorflow_log_is_quiet_by_default(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-m", "aftt_tf.cli.faults", "--model=m.keras", f"--out={tmp_path}/c"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=environment,
    )
    assert result.returncode == 2
    assert "cuInit" not in result.stderr and "oneDNN" not in result.stderr


def test_rate_zero_is_evaluated_once_per_model(monkeypatch):
    from aftt_tf.runtimes import keras_runner

    calls = []
    original = keras_runner.CampaignRunner.evaluate_cell

    def counting(self, rate, trial):
        calls.append(rate)
        return original(self, rate, trial)

    monkeypatch.setattr(keras_runner.CampaignRunner, "evaluate_cell", counting)
    model = _model()
    images = np.random.default_rng(0).random((64, 6)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    spec = FaultSpec(kind="weight", rates=(0.0, 0.5), trials=3)
    result = campaign.run_campaign(
        {"m": model}, spec, images, labels, None, per_layer=True, progress=False
    )
    assert calls.count(0.0) == 1  # Two groups (layers) x 3 trials, one clean evaluation.
    assert calls.count(0.5) == 6
    zero = [c for c in result["cells"] if c["rate"] == 0.0]
    assert {tuple(c["per_layer"]) for c in zero} == {("hidden",), ("out",)}
    assert len({c["accuracy"] for c in zero}) == 1


def test_for_model_checks_given_arrays_as_it_checks_loaded_ones():
    """The Python API's arrays go through the same checks as data read from files: shape,
    one class folder per output, labels that index an output; then `count` and the
    transform."""
    images = np.arange(40 * 6, dtype=np.uint8).reshape(40, 6)
    labels = np.arange(40) % 3
    options = frontend.DataOptions()
    given = frontend.Examples.of(images, labels, {})
    examples, transform = frontend.for_model(options, "test", None, (6,), 3, 10, given)
    assert len(examples.labels) == 10 and transform.name == "unit"
    assert examples.record() == {"class_names": []}
    with pytest.raises(ValueError, match=r"inputs of shape \(7,\) but the data examples"):
        frontend.for_model(options, "test", None, (7,), 3, given=given)
    with pytest.raises(ValueError, match=r"range over \[0, 2\] but the model has 2 outputs"):
        frontend.for_model(options, "test", None, (6,), 2, given=given)
    folder = frontend.Examples.of(images, labels, {"source": "f", "class_names": ["a", "b"]})
    with pytest.raises(ValueError, match="f has 2 classes .* but the model has 3 outputs"):
        frontend.for_model(options, "test", None, (6,), 3, given=folder)
    with pytest.raises(ValueError, match="hold no examples"):
        frontend.for_model(
            options, "test", None, (6,), 3, given=frontend.Examples.of(images[:0], labels[:0], {})
        )


def test_repair_data_get_no_transform_guess_of_their_own(tmp_path):
    """Training data of the repaired protocol go through the test data's transform: float
    pixels in [0, 255] (which 'auto' alone would refuse as ambiguous) are read, checked
    for shape and labels, and returned; labels beyond the outputs are refused."""
    from aftt_tf.campaigns import campaign_lib

    model = keras.Sequential([keras.Input((6,)), L.Dense(3)])
    model.save(tmp_path / "m.keras")
    pixels = np.random.default_rng(0).integers(0, 256, (30, 6)).astype(np.float32)
    np.savez(tmp_path / "train.npz", x=pixels, y=np.arange(30) % 3)
    np.savez(tmp_path / "bad.npz", x=pixels, y=np.arange(30) % 5)

    def config(repair_data):
        return campaign_lib.CampaignConfig(
            models=(str(tmp_path / "m.keras"),),
            out=str(tmp_path / "out"),
            spec=FaultSpec(kind="weight", rates=(0.0,)),
            repair_data=repair_data,
        )

    adapter = campaign.as_campaign_model(model)
    train = campaign_lib.load_train_data(config(f"npz:{tmp_path / 'train.npz'}"), adapter)
    np.testing.assert_array_equal(train.images, pixels)
    with pytest.raises(ValueError, match=r"range over \[0, 4\] but the model has 3 outputs"):
        campaign_lib.load_train_data(config(f"npz:{tmp_path / 'bad.npz'}"), adapter)
