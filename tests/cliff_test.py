"""Rates at a model's cliff (`aftt-faults --rates=cliff`, issue 32 item 4): the rates where
the first model keeps about 90%, 50% and 20% of its accuracy above chance, found before
the campaign, used for every model, recorded and printed."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from aftt_tf.campaigns import campaign_lib, cliff, console
from aftt_tf.data import inputs
from aftt_tf.data.frontend import DataOptions
from aftt_tf.faults.spec import FaultSpec, FaultTargetError
from aftt_tf.runtimes import keras_runner
from tests import tiny_models

L = keras.layers
RAW = inputs.resolve("raw")


def _model(seed: int = 0) -> keras.Model:
    return tiny_models.dense_classifier(features=12, hidden=32, classes=4, seed=seed)


def _data(model, count: int = 400):
    return tiny_models.own_labels(model, count)


def test_the_rates_found_keep_what_they_say():
    """Each rate found keeps its share of the accuracy above chance, measured again on
    other trials (within 0.15), and the rates grow as the share falls."""
    model = _model()
    images, labels = _data(model)
    spec = FaultSpec(kind="weight", rates=(0.0,), seed=0)
    runner = keras_runner.KerasModel(model).runner(spec, images, labels, 400, RAW)
    try:
        found = cliff.find_rates(runner, labels, cliff.CliffSearch())
        chance = np.bincount(labels).max() / len(labels)
        rates = found["rates"]
        assert None not in rates and rates == sorted(rates) and rates[0] < rates[-1]
        for keep, rate in zip(found["keeps"], rates, strict=True):
            accuracy = np.mean([runner.evaluate_cell(rate, t)["accuracy"] for t in range(10, 20)])
            share = (accuracy - chance) / (found["clean"] - chance)
            assert abs(share - keep) <= 0.15, (keep, rate, share)
    finally:
        runner.close()


def test_a_campaign_at_the_cliff_records_and_prints_its_rates(tmp_path):
    model = _model()
    other = keras.models.clone_model(model)  # Another training of the same network.
    noise = np.random.default_rng(1)
    other.set_weights([w + noise.normal(0, 0.05, w.shape) for w in model.get_weights()])
    images, labels = _data(model)
    model.save(tmp_path / "a.keras")
    other.save(tmp_path / "b.keras")
    config = campaign_lib.CampaignConfig(
        models=(f"a={tmp_path / 'a.keras'}", f"b={tmp_path / 'b.keras'}"),
        out=str(tmp_path / "c"),
        spec=FaultSpec(kind="weight", rates=(0.0,), trials=3),
        data_options=DataOptions(input_transform="raw"),
        cliff=True,
    )
    results = campaign_lib.run(
        config, models={"a": model, "b": other}, test_data=(images, labels, {"source": "t"})
    )
    choice = results["rate_choice"]
    assert choice["model"] == "a" and len(choice["rates"]) == 3
    rates = [row["rate"] for row in results["summary"]["b"]["all"]["per_rate"]]
    assert rates == [0.0, *sorted(choice["rates"])]  # Both models at the same rates.
    assert "rates at the cliff of a" in "\n".join(console.summary_lines(results))
    again = campaign_lib.run(  # The same rates again: the campaign resumes, no new cell.
        config, models={"a": model, "b": other}, test_data=(images, labels, {"source": "t"})
    )
    assert again["rate_choice"]["rates"] == choice["rates"] and again["skipped_cells"] > 0


def test_a_model_at_chance_has_no_cliff():
    model = _model()
    images = np.random.default_rng(0).random((200, 12)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 4, 200)
    spec = FaultSpec(kind="weight", rates=(0.0,))
    runner = keras_runner.KerasModel(model).runner(spec, images, labels, 200, RAW)
    try:
        with pytest.raises(ValueError, match="no cliff to find"):
            cliff.find_rates(runner, labels, cliff.CliffSearch())
    finally:
        runner.close()


class _Tolerant:
    """A runner whose model loses a third of its accuracy by rate 0.01 and cannot place
    faults beyond it (as transient campaigns cap the faults a cell holds)."""

    def evaluate_cell(self, rate: float, trial: int) -> dict:
        if rate > 0.01:
            raise FaultTargetError(f"At rate {rate:g} a cell holds too many transient faults.")
        return {"accuracy": 0.9 - 30 * rate}


def test_a_search_stopped_by_what_a_cell_holds_measures_its_highest_rate():
    labels = np.arange(100) % 10
    found = cliff.find_rates(_Tolerant(), labels, cliff.CliffSearch())
    assert found["rates"][0] is not None and found["rates"][1:] == [None, None]
    assert 0.001 < found["highest_placeable"] <= 0.01 and "too many" in found["limit"]
    assert cliff.campaign_rates(found) == (0.0, found["rates"][0], found["highest_placeable"])


def test_a_transient_cell_beyond_what_a_cell_holds_is_refused_when_drawn():
    """The cliff search probes rates of its own: each cell checks its rate, so the search
    stops where the campaign would be refused (it found 0.293 and then failed, before)."""
    from aftt_tf.faults import transient

    spec = FaultSpec(kind="activation_bit", rates=(0.0,))
    with pytest.raises(FaultTargetError, match="more than 20,000,000"):
        transient.plan_cell(spec, {"a": 4000}, {"a": 32}, 10_000, 0.6, 0)
    assert len(transient.plan_cell(spec, {"a": 40}, {"a": 32}, 100, 0.5, 0)["a"]) == 2000
