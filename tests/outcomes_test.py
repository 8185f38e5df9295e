"""Outcome classes per inference: masked (the fault-free run's top-1 class), silent data
corruption (another class) and detected errors (NaN/Inf outputs), counted by both
runtimes against a hand count, and summarised with intervals."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.campaigns import console, evaluate
from aftt_tf.faults.spec import FaultSpec, predictions
from aftt_tf.runtimes import keras_runner, tflite_runner

L = keras.layers


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [keras.Input((10,)), L.Dense(16, activation="relu", name="hidden"), L.Dense(4, name="out")]
    )
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(300, 10)).astype(np.float32)
    golden = np.argmax(np.asarray(model(inputs)), -1)
    labels = np.where(rng.random(300) < 0.8, golden, rng.integers(0, 4, 300))  # 80% right.
    root = tmp_path_factory.mktemp("outcomes")
    model.export(str(root / "saved"), format="tf_saved_model", verbose=False)
    path = root / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(root / "saved")).convert())
    return model, path, inputs, labels, golden


def _hand_count(model, spec, rate, trial, inputs, labels, golden):
    faulty, _ = keras_runner.faulty_copy(model, spec, rate, trial)
    predicted = predictions(np.asarray(faulty(inputs)))
    finite = predicted >= 0
    return {
        "accuracy": np.mean(finite & (predicted == labels)),
        "sdc": np.mean(finite & (predicted != golden)),
        "non_finite": np.mean(~finite),
        "masked": np.mean(finite & (predicted == golden)),
    }


@pytest.mark.parametrize(
    "spec",
    [
        FaultSpec(kind="weight", rates=(0.4,), trials=3, seed=1),
        FaultSpec(kind="bit", rates=(0.05,), trials=3, bit_position=30, bit_mode="stuck_at_1"),
    ],
    ids=["weight", "exponent_bit"],
)
def test_masked_sdc_and_due_equal_a_hand_count_in_both_runtimes(spec, small):
    model, path, inputs, labels, golden = small
    keras_run = keras_runner.KerasModel(model).runner(spec, inputs, labels, 100)
    file_run = tflite_runner.TFLiteModel(path).runner(spec, inputs, labels, 100)
    seen_due = False
    for trial in range(3):
        rate = spec.rates[0]
        expected = _hand_count(model, spec, rate, trial, inputs, labels, golden)
        for run in (keras_run, file_run):
            cell = run.evaluate_cell(rate, trial)
            assert cell["accuracy"] == pytest.approx(expected["accuracy"])
            assert cell["sdc"] == pytest.approx(expected["sdc"])
            assert cell["non_finite"] == pytest.approx(expected["non_finite"])
            assert cell["sdc"] + cell["non_finite"] == pytest.approx(1 - expected["masked"])
        seen_due |= expected["non_finite"] > 0
    assert seen_due == (spec.kind == "bit")  # Exponent bits stuck at 1 give Inf/NaN.


def test_sdc_is_summarised_with_an_interval_and_printed(small):
    model, _, inputs, labels, _ = small
    result = evaluate(
        {"m": model},
        FaultSpec(kind="weight", rates=(0.0, 0.5), trials=4),
        (inputs, labels),
        transform="raw",
        allow_chance_accuracy=True,
    )
    rows = result.summary["m"]["all"]["per_rate"]
    assert rows[0]["sdc"]["mean"] == 0.0  # Rate 0 is the golden run itself.
    assert 0 < rows[1]["sdc"]["mean"] < 1 and rows[1]["sdc"]["ci_low"] <= rows[1]["sdc"]["mean"]
    lines = console.summary_lines(
        {"summary": result.summary, "coverage": {}, "paired_differences": {}, "spec": {}}
    )
    assert any("SDC" in line for line in lines)


def test_the_golden_run_is_computed_once_per_model_and_data(small):
    """The runners of one campaign's layer groups (--per_layer) share the fault-free
    predictions of their model and data; other data get their own."""
    model, path, inputs, labels, golden = small
    for adapter in (keras_runner.KerasModel(model), tflite_runner.TFLiteModel(path)):
        for name in ("hidden", "out"):
            runner = adapter.runner(FaultSpec(layers=(name,)), inputs, labels, 100)
            result = runner.evaluate_cell(0.0, 0)
            assert result["sdc"] == 0.0 and result["accuracy"] == np.mean(labels == golden)
        assert len(adapter.golden_cache) == 1
        adapter.runner(FaultSpec(layers=("out",)), inputs[:200], labels[:200], 100).evaluate_cell(
            0.0, 0
        )
        assert len(adapter.golden_cache) == 2
