"""Campaigns on a local Ray instance (2 CPUs): the same cells as a local run, no cell lost
or duplicated when a worker dies, and the CLI's --executor=ray. Skipped without the
`ray` extra (`make test` installs it)."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from aftt_tf.campaigns import cell_log, ray_executor
from aftt_tf.campaigns import engine as campaign
from aftt_tf.data import datasets as data
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import keras_runner, tflite_runner
from tests.conftest import reproduce_smoke, requires_fashion_mnist

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
pytestmark = [requires_fashion_mnist, pytest.mark.slow]
SPEC = FaultSpec(kind="weight", rates=(0.0, 0.3, 0.6), trials=4, seed=7)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A small trained Keras classifier and its float32 .tflite, and 500 test images."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("ray_models")
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(arrays["train"][0][:3000] / 255.0, arrays["train"][1][:3000], epochs=1, verbose=0)
    model.save(root / "model.keras")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    (root / "model.tflite").write_bytes(converter.convert())
    test = arrays["test"][0][:500], arrays["test"][1][:500]
    return root, test


def _campaign_models(root):
    return {
        "keras": keras_runner.KerasModel(keras_runner.load_model(root / "model.keras")),
        "tflite": tflite_runner.TFLiteModel.load(root / "model.tflite"),
    }


def _cells(out) -> list[dict]:
    cells = cell_log.read_cells(out / cell_log.CELLS_FILE)
    return sorted(cells, key=lambda c: (c["model"], c["rate"], c["trial"]))


def test_ray_campaigns_give_the_cells_of_local_runs(cluster, models, tmp_path):
    """Two campaigns on one set of actors (other spec, and the labels swapped between the
    Keras and the TFLite model): each gives exactly its local run's cells and results."""
    root, (images, labels) = models
    swapped = {"keras": "tflite", "tflite": "keras"}
    node = FaultSpec(kind="node", rates=(0.0, 0.4), trials=3, seed=1)
    runs = [("weight", SPEC, dict), ("node", node, lambda m: {swapped[k]: v for k, v in m.items()})]
    local = {
        name: campaign.run_campaign(
            relabel(_campaign_models(root)),
            spec,
            images,
            labels,
            tmp_path / f"local_{name}",
            progress=False,
        )
        for name, spec, relabel in runs
    }
    config = ray_executor.RayConfig(address=cluster, workers=2)
    with ray_executor.RayExecutor(config) as executor:
        for name, spec, relabel in runs:
            remote = campaign.run_campaign(
                relabel(_campaign_models(root)),
                spec,
                images,
                labels,
                tmp_path / f"ray_{name}",
                progress=False,
                executor=executor,
            )
            assert _cells(tmp_path / f"local_{name}") == _cells(tmp_path / f"ray_{name}")
            assert len(_cells(tmp_path / f"ray_{name}")) == 2 * len(spec.rates) * spec.trials
            assert remote["summary"] == local[name]["summary"]
            assert remote["paired_differences"] == local[name]["paired_differences"]
        # Resuming a Ray directory runs nothing.
        again = campaign.run_campaign(
            _campaign_models(root),
            SPEC,
            images,
            labels,
            tmp_path / "ray_weight",
            executor=executor,
        )
    assert again["skipped_cells"] == 2 * len(SPEC.rates) * SPEC.trials


def test_a_killed_worker_loses_no_cell_and_duplicates_none(cluster, models, tmp_path):
    root, (images, labels) = models
    spec = FaultSpec(kind="weight", rates=(0.2, 0.4), trials=6, seed=3)
    tflite = {"tflite": tflite_runner.TFLiteModel.load(root / "model.tflite")}
    campaign.run_campaign(tflite, spec, images, labels, tmp_path / "local", progress=False)
    seen = []
    with ray_executor.RayExecutor(ray_executor.RayConfig(address=cluster, workers=2)) as executor:

        def kill_a_worker(cell):
            seen.append(cell)
            if len(seen) == 3:  # Mid-campaign: cells are in flight on both workers.
                ray.kill(executor.actors[0], no_restart=True)

        campaign.run_campaign(
            tflite,
            spec,
            images,
            labels,
            tmp_path / "ray",
            progress=False,
            on_cell=kill_a_worker,
            executor=executor,
        )
        retried = executor.retried_cells
    cells = _cells(tmp_path / "ray")
    keys = [(c["rate"], c["trial"]) for c in cells]
    assert len(keys) == len(set(keys)) == len(spec.rates) * spec.trials
    assert cells == _cells(tmp_path / "local")
    assert retried >= 1


def test_cli_runs_a_campaign_on_an_existing_cluster(cluster, models, tmp_path):
    root, _ = models
    argv = [
        sys.executable,
        "-m",
        "aftt_tf.cli.faults",
        f"--model={root / 'model.tflite'}",
        "--rates=0,0.3",
        "--trials=3",
        "--test_examples=300",
        "--data=fashion_mnist",
        "--executor=ray",
        f"--ray_address={cluster}",
        "--resources_per_worker=cpu=1",
    ]
    result = subprocess.run(
        [*argv, f"--out={tmp_path / 'cli'}"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cells = cell_log.read_cells(tmp_path / "cli" / cell_log.CELLS_FILE)
    assert len(cells) == 6
    assert json.loads((tmp_path / "cli" / "results.json").read_text())["spec"]["trials"] == 3
    sharded = subprocess.run(
        [*argv, "--num_shards=2", f"--out={tmp_path / 'x'}"], capture_output=True, text=True
    )
    assert sharded.returncode == 2 and "--num_shards is for batch schedulers" in sharded.stderr
    bad = subprocess.run(
        [*argv[:-1], "--resources_per_worker=tpu=1", f"--out={tmp_path / 'y'}"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "cpu=N,gpu=M" in bad.stderr


@requires_fashion_mnist
def test_ray_reproduction_gives_the_numbers_of_the_local_one(cluster, smoke_reproduction, tmp_path):
    """flags/smoke.flags on Ray (training units as tasks in their own processes, campaign
    cells on actors) against the local reproduction: for the methods it trains, the same
    training metrics and the same campaign summaries. (Two methods and the Keras weight
    campaign keep the test short: a model's summary does not depend on the other models
    of a campaign.)"""
    local_out, _ = smoke_reproduction
    result = reproduce_smoke(
        tmp_path / "ray",
        "--methods=none,aftt",
        "--faults=weight",
        "--runtimes=keras",
        "--scopes=all",
        "--executor=ray",
        f"--ray_address={cluster}",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    local = json.loads((local_out / "results.json").read_text())
    remote = json.loads((tmp_path / "ray" / "results.json").read_text())
    for method in ("none", "aftt"):
        skipped = ("seconds", "int8_test_accuracy")  # Timing; no int8 export here.
        assert {k: v for k, v in remote["methods"][method].items() if k not in skipped} == {
            k: v for k, v in local["methods"][method].items() if k not in skipped
        }
    assert set(remote["campaigns"]) == {"weight_all_keras"}
    for name, campaign_result in remote["campaigns"].items():
        for method in ("none", "aftt"):
            assert campaign_result["summary"][method] == local["campaigns"][name]["summary"][method]
    log = json.loads((tmp_path / "ray" / "work_log.json").read_text())
    assert {e["unit"] for e in log if e.get("executor") == "ray"} == {"none", "aftt"}


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ray_executor.RayUnavailableError, match=r"aftt-tf\[ray\]"):
        ray_executor.RayExecutor(ray_executor.RayConfig()).__enter__()


def test_workers_rebuild_models_with_the_drivers_fingerprint(models):
    root, _ = models
    for model in _campaign_models(root).values():
        rebuilt = ray_executor.restore_model(ray_executor.model_payload(model))
        assert rebuilt.fingerprint() == model.fingerprint()
        assert np.all(
            np.asarray(rebuilt.select_layers(SPEC)) == np.asarray(model.select_layers(SPEC))
        )
