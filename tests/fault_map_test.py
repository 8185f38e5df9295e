"""Fault maps: a chip's known faults read from a documented JSON/CSV file. A map written
from one campaign cell reads back to the same faults in a Keras campaign, a .tflite
campaign, aftt-repair and the repaired protocol; bad maps are refused naming the entry."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.data import datasets as data
from aftt_tf.data.frontend import DataOptions
from aftt_tf.faults import fault_map
from aftt_tf.faults.spec import FaultSpec, RepairProtocol
from aftt_tf.runtimes import keras_runner, tflite_runner
from aftt_tf.training import repair
from tests.conftest import requires_fashion_mnist

pytestmark = requires_fashion_mnist
L = keras.layers


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_map")
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    x = arrays["train"][0][:3000].astype(np.float32) / 255.0
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(4, 3, strides=2, activation="relu", name="conv"),
            L.Flatten(),
            L.Dense(32, activation="relu", name="hidden"),
            L.Dense(10, name="logits"),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, arrays["train"][1][:3000], epochs=1, batch_size=64, verbose=0)
    path = root / "model.keras"
    model.save(path)
    model.export(str(root / "saved"), format="tf_saved_model", verbose=False)
    tflite = root / "model.tflite"
    tflite.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(root / "saved")).convert())
    test = arrays["test"][0][:500], arrays["test"][1][:500]
    return model, path, tflite, test


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_a_cell_map_reads_back_to_the_same_faults_in_both_runtimes(suffix, trained, tmp_path):
    model, _, tflite, (images, labels) = trained
    for spec in (
        FaultSpec(kind="weight", rates=(0.4,), trials=1, seed=3),
        FaultSpec(kind="stuck_value", rates=(0.05,), trials=1, seed=3, include_bias=True),
    ):
        cell_map = keras_runner.cell_fault_map(
            model, spec, 0.4 if spec.kind == "weight" else 0.05, 0
        )
        cell_map.save(tmp_path / f"map{suffix}")
        loaded = fault_map.load(tmp_path / f"map{suffix}")
        assert loaded.digest() == cell_map.digest()
        rate = spec.rates[0]
        from_map = FaultSpec(
            kind="weight",
            rates=(0.0,),
            trials=1,
            include_bias=spec.selection.include_bias,
            fault_map=str(tmp_path / f"map{suffix}"),
        )
        expected = keras_runner.KerasModel(model).runner(spec, images, labels, 500)
        expected_cell = expected.evaluate_cell(rate, 0)
        keras_cell = (
            keras_runner.KerasModel(model)
            .runner(from_map, images, labels, 500)
            .evaluate_cell(0.0, 0)
        )
        assert keras_cell["accuracy"] == expected_cell["accuracy"]
        assert keras_cell["faulted"] == expected_cell["faulted"] == len(loaded.faults)
        file_spec = FaultSpec(
            kind="weight", rates=(0.0,), trials=1, fault_map=str(tmp_path / f"map{suffix}")
        )
        file_run = tflite_runner.TFLiteModel(tflite).runner(file_spec, images, labels, 500)
        file_run.inject(0.0, 0)
        keras_run = keras_runner.KerasModel(model).runner(from_map, images, labels, 500)
        keras_run.inject(0.0, 0)
        np.testing.assert_allclose(
            file_run.logits(),
            np.asarray(keras_run.faulty(images.astype(np.float32) / 255.0)),
            atol=1e-4,
            rtol=1e-4,
        )
    # A map key is its content: the same map at another path is the same campaign.
    (tmp_path / "copy.json").write_text(
        (tmp_path / "map.json").read_text() if suffix == ".json" else ""
    )
    if suffix == ".json":
        assert (
            FaultSpec(fault_map=str(tmp_path / "copy.json")).key()
            == FaultSpec(fault_map=str(tmp_path / "map.json")).key()
            != FaultSpec().key()
        )


def test_repair_writes_its_map_and_a_repair_from_it_is_the_same(trained, tmp_path):
    """aftt-repair writes fault_map.json of its cell; repairing from that map at rate 0
    places the same faults (the same faulty accuracy before repair) and trains the same."""
    _, path, _, _ = trained
    common = {"fault": "weight", "epochs": 1, "train_examples": 1000}
    common["data_options"] = DataOptions(data="fashion_mnist")
    first = repair.repair(
        repair.RepairConfig(model=str(path), out=str(tmp_path / "one"), rate=0.5, trial=1, **common)
    )
    written = tmp_path / "one" / "fault_map.json"
    assert json.loads(written.read_text())["format"] == fault_map.FORMAT
    assert first["fault_map"]["file"] == "fault_map.json"
    second = repair.repair(
        repair.RepairConfig(
            model=str(path), out=str(tmp_path / "two"), rate=0.0, fault_map=str(written), **common
        )
    )
    assert (
        second["faulty_test_accuracy_before_repair"] == first["faulty_test_accuracy_before_repair"]
    )
    assert second["fault_map"]["faulted"] == first["fault_map"]["faulted"]
    assert second["faulty_test_accuracy_after_repair"] == pytest.approx(
        first["faulty_test_accuracy_after_repair"], abs=0.01
    )


def test_the_repaired_protocol_reads_a_map(trained, tmp_path):
    model, _, _, (images, labels) = trained
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    protocol = RepairProtocol(epochs=1, train_examples=500)
    spec = FaultSpec(kind="weight", rates=(0.5,), trials=1, seed=2, repair=protocol)
    cell_map = keras_runner.cell_fault_map(model, FaultSpec(kind="weight", seed=2), 0.5, 0)
    cell_map.save(tmp_path / "map.json")
    repairing = repair.RepairingModel(model, *arrays["train"])
    direct = repairing.runner(spec, images, labels, 500).evaluate_cell(0.5, 0)
    mapped_spec = FaultSpec(
        kind="weight",
        rates=(0.0,),
        trials=1,
        seed=2,
        repair=protocol,
        fault_map=str(tmp_path / "map.json"),
    )
    mapped = repairing.runner(mapped_spec, images, labels, 500).evaluate_cell(0.0, 0)
    assert mapped["faulted"] == direct["faulted"]
    assert mapped["accuracy"] == pytest.approx(direct["accuracy"], abs=0.01)


def test_bad_maps_are_refused_naming_the_entry(trained, tmp_path):
    model, _, _, (images, labels) = trained

    def refused(content, match, suffix=".json"):
        path = tmp_path / f"bad{suffix}"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(ValueError, match=match):
            spec = FaultSpec(fault_map=str(path))
            spec.validate()
            keras_runner.KerasModel(model).runner(spec, images, labels, 100)
        fault_map._load_cached.cache_clear()

    good = {"layer": "hidden", "attribute": "kernel", "index": 3, "kind": "stuck_at_0"}
    refused("{", "not JSON")
    refused({"faults": [good]}, "format")
    refused({"format": fault_map.FORMAT, "faults": []}, "no faults")
    refused({"format": fault_map.FORMAT, "faults": [{**good, "kind": "melted"}]}, "fault 1: kind")
    refused({"format": fault_map.FORMAT, "faults": [good, good]}, "name the same element")
    refused({"format": fault_map.FORMAT, "faults": [{**good, "layer": "nope"}]}, "nope/kernel")
    refused({"format": fault_map.FORMAT, "faults": [{**good, "index": 10**9}]}, "outside")
    refused({"format": fault_map.FORMAT, "faults": [{**good, "index": [0, 0, 0]}]}, "shape")
    refused("layer,attribute,index\nhidden,kernel,3\n", "header", ".csv")
    with pytest.raises(ValueError, match="node faults"):
        (tmp_path / "ok.json").write_text(
            json.dumps({"format": fault_map.FORMAT, "faults": [good]})
        )
        FaultSpec(kind="node", fault_map=str(tmp_path / "ok.json")).validate()


def test_an_int8_file_refuses_a_stuck_value_it_cannot_store(trained, tmp_path):
    """Clamping 1e6 into an int8 kernel would write another fault than the map's."""
    model, _, _, (images, labels) = trained
    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved"))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    calibration = images[:50].astype(np.float32) / 255.0
    converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(50))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    path = tmp_path / "int8.tflite"
    path.write_bytes(converter.convert())
    entry = {"layer": "hidden", "attribute": "kernel", "index": 3, "kind": "stuck_value"}
    for value, refused in ((1e6, True), (0.0, False)):
        (tmp_path / "map.json").write_text(
            json.dumps({"format": fault_map.FORMAT, "faults": [{**entry, "value": value}]})
        )
        fault_map._load_cached.cache_clear()
        spec = FaultSpec(rates=(0.0,), trials=1, fault_map=str(tmp_path / "map.json"))
        file_model = tflite_runner.TFLiteModel(path)
        if refused:
            with pytest.raises(ValueError, match="hidden/kernel element 3 stuck at 1e\\+06"):
                file_model.runner(spec, images, labels, 100)
        else:
            assert file_model.runner(spec, images, labels, 100).inject(0.0, 0)["faulted"] == 1


def test_a_node_repair_writes_no_map(trained, tmp_path):
    _, path, _, _ = trained
    metrics = repair.repair(
        repair.RepairConfig(
            model=str(path),
            out=str(tmp_path / "node"),
            fault="node",
            rate=0.3,
            epochs=1,
            train_examples=500,
            data_options=DataOptions(data="fashion_mnist"),
        )
    )
    assert metrics["fault_map"]["file"] is None
    assert not (tmp_path / "node" / "fault_map.json").exists()
