"""aftt-reproduce --protocols=deployed,repaired and --int8_modes: campaign plans, per-rate
verdicts, and one end-to-end run on the smoke reproduction (Bernoulli sampling, two
repair lengths, four int8 modes with per-layer statistics)."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest

from aftt_tf.reproduce import config as reproduce_config
from aftt_tf.reproduce import pipeline, protocols
from aftt_tf.training import config as config_lib
from aftt_tf.training import networks
from tests.conftest import reproduce_smoke, requires_fashion_mnist

pytestmark = pytest.mark.slow  # Minutes: left out by `make test-fast`.


def _config(architecture="fmnist_mlp", **changes):
    return reproduce_config.ReproduceConfig(
        train=config_lib.TrainConfig(architecture=architecture), out="x", **changes
    )


def test_repaired_campaigns_default_to_the_papers_quoted_rates():
    mlp = _config(protocols=("deployed", "repaired"), repair_epochs=(1, 5))
    mlp.validate()
    assert mlp.repair_rates_for("weight") == (0.0, 0.6)
    assert mlp.repair_rates_for("node") == (0.0, 0.68)
    cnn = _config("fmnist_cnn", protocols=("repaired",))
    assert cnn.repair_rates_for("filter") == (0.0, 0.4)
    assert cnn.repair_rates_for("weight") == ()  # The paper quotes no CNN weight rate.
    assert _config("fmnist_cnn", repair_rates=(0.0, 0.3)).repair_rates_for("weight") == (0.0, 0.3)
    protocol = mlp.repair_protocol(5)
    assert (protocol.epochs, protocol.optimizer, protocol.learning_rate) == (5, "rmsprop", 1e-3)
    assert protocol.loss == mlp.train.classification_loss


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"protocols": ("fixed",)}, r"protocols \['fixed'\] must be a non-empty subset"),
        ({"protocols": ("repaired",), "repair_epochs": (0,)}, "repair_epochs must be integers"),
        ({"protocols": ("repaired",), "repair_epochs": (1, 1)}, "repair_epochs contains dup"),
        ({"protocols": ("repaired",), "repair_rates": (0.0, 1.5)}, "repair_rates must be"),
        ({"protocols": ("repaired",), "repair_trials": 1}, "repair_trials must be 0"),
        ({"protocols": ("repaired",), "repair_learning_rate": 0.0}, "learning_rate must be"),
        ({"protocols": ("repaired",), "executor": "ray"}, "The repaired protocol runs locally"),
        ({"sampling": "poisson"}, "sampling must be one of exact, bernoulli"),
        ({"weight_kernels": "3d"}, "weight_kernels must be all or 4d"),
        ({"repair_rates": (0.0, 0.5)}, "add repaired to --protocols"),
        ({"per_layer_stats": True, "runtimes": ("keras",)}, "add int8 to --runtimes"),
    ],
)
def test_bad_protocol_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        _config(**changes).validate()


def test_campaign_plans_name_each_protocol_and_the_papers_fig1_kernels():
    keras.utils.set_random_seed(0)
    mlp = networks.build_networks("fmnist_mlp").classifier
    config = _config(
        faults=("weight", "node"),
        scopes=("all",),
        runtimes=("keras", "int8"),
        protocols=("deployed", "repaired"),
        repair_epochs=(1, 5),
        sampling="bernoulli",
    )
    plans = {name: (plan, reason) for name, plan, reason in pipeline._campaign_plans(config, mlp)}
    assert sorted(plans) == sorted(
        f"{kind}_all_{suffix}"
        for kind in ("weight", "node")
        for suffix in (
            "keras_bernoulli",
            "int8_bernoulli",
            "keras_bernoulli_repaired1",
            "keras_bernoulli_repaired5",
        )
    )
    (runtime, spec), _ = plans["weight_all_keras_bernoulli_repaired5"]
    assert runtime == "repaired" and spec.repair.epochs == 5 and spec.rates == (0.0, 0.6)
    assert spec.placement.sampling == "bernoulli" and spec.protocol == "repaired"
    (runtime, deployed), _ = plans["weight_all_keras_bernoulli"]
    assert deployed.repair is None and deployed.rates == config.rates
    # Same kind, seed, sampling and layers: the two protocols draw the same positions.
    assert {k: v for k, v in spec.as_dict().items() if k not in ("rates", "trials", "repair")} == {
        k: v for k, v in deployed.as_dict().items() if k not in ("rates", "trials", "repair")
    }
    # The paper's Fig. 1 code masks 4-D kernels only: none on the MLP, every conv on the CNN.
    fig1 = dataclass_replace(config, weight_kernels="4d", protocols=("deployed",))
    plans = {name: (plan, reason) for name, plan, reason in pipeline._campaign_plans(fig1, mlp)}
    plan, reason = plans["weight_all_keras_bernoulli_4d"]
    assert plan is None and "no 4-D (convolution) kernel" in reason
    assert plans["node_all_keras_bernoulli_4d"][0] is not None
    cnn = networks.build_networks("fmnist_cnn").classifier
    cnn_config = dataclass_replace(fig1, train=config_lib.TrainConfig(architecture="fmnist_cnn"))
    plans = {name: plan for name, plan, _ in pipeline._campaign_plans(cnn_config, cnn)}
    _, spec = plans["weight_all_keras_bernoulli_4d"]
    convolutions = [layer.name for layer in cnn.layers if isinstance(layer, keras.layers.Conv2D)]
    assert list(spec.selection.layers) == convolutions and convolutions


def dataclass_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def _cell(model, rate, trial, accuracy):
    return {"model": model, "group": "all", "rate": rate, "trial": trial, "accuracy": accuracy}


def test_point_verdict_by_hand():
    cells = [
        _cell(model, rate, trial, accuracy)
        for model, rows in {
            "aftt": {0.0: [0.90] * 3, 0.6: [0.50, 0.52, 0.54]},
            "l2": {0.0: [0.88] * 3, 0.6: [0.80, 0.81, 0.85]},
            "l1": {0.0: [0.89] * 3, 0.6: [0.79, 0.80, 0.81]},
        }.items()
        for rate, accuracies in rows.items()
        for trial, accuracy in enumerate(accuracies)
    ]
    paper = (0.6, "accuracy", {"aftt": 84.36, "l2": 81.66, "l1": 61.42})
    verdict = protocols.point_verdict(cells, 0.6, ["l1", "l2", "aftt"], paper)
    assert verdict["ranking"] == ["l2", "l1", "aftt"]
    lead = verdict["winner_minus_runner_up"]  # l2 - l1 per trial: 0.01, 0.01, 0.04.
    assert lead["pairs"] == 3 and lead["mean"] == pytest.approx(0.02)
    assert verdict["winner"] is None  # t(2) interval of (0.01, 0.01, 0.04) contains 0.
    assert verdict["aftt_rank"] == 3
    assert verdict["aftt_minus_best"]["mean"] == pytest.approx(-0.30)
    distances = verdict["paper"]["methods"]
    assert distances["aftt"]["ours_minus_paper"] == pytest.approx(52.0 - 84.36)
    assert distances["l2"]["ours"] == pytest.approx(82.0)
    drop = protocols.point_verdict(cells, 0.6, ["l2"], (0.6, "drop", {"l2": 24.98}))
    assert drop["paper"]["methods"]["l2"]["ours"] == pytest.approx(88.0 - 82.0)
    assert "paper" not in protocols.point_verdict(cells, 0.6, ["l2"], (0.4, "drop", {}))


@requires_fashion_mnist
def test_two_protocols_end_to_end_on_the_smoke_reproduction(smoke_reproduction, tmp_path):
    source, _ = smoke_reproduction
    out = tmp_path / "protocols"
    shutil.copytree(source, out)
    result = reproduce_smoke(
        out,
        "--methods=none,aftt",
        "--faults=weight,node",
        "--scopes=all",
        "--runtimes=keras,int8",
        "--int8_modes=ptq,fault_calibrated,fault_qat,chip_calibrated",
        "--fault_qat_epochs=1",
        "--per_layer_stats",
        "--protocols=deployed,repaired",
        "--repair_epochs=1,2",
        "--repair_rates=0,0.5",
        "--repair_train_examples=512",
        "--sampling=bernoulli",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    names = {
        f"{k}_all_{s}"
        for k in ("weight", "node")
        for s in (
            "keras_bernoulli",
            "keras_bernoulli_repaired1",
            "keras_bernoulli_repaired2",
            "int8_bernoulli",
            "int8_fault_calibrated_bernoulli",
            "int8_fault_qat_bernoulli",
            "int8_chip_calibrated_bernoulli",
        )
    }
    assert set(results["campaigns"]) == names
    log = json.loads((out / "work_log.json").read_text())
    assert all(e["action"] == "reused" for e in log if e["stage"] == "train")
    cells = {
        name: [json.loads(line) for line in (out / "campaigns" / name / "cells.jsonl").open()]
        for name in names
    }
    deployed = {(c["model"], c["rate"], c["trial"]): c for c in cells["weight_all_keras_bernoulli"]}
    repaired = cells["weight_all_keras_bernoulli_repaired2"]
    assert {c["rate"] for c in repaired} == {0.0, 0.5}
    for cell in repaired:  # Identical fault positions: identical per-layer counts.
        twin = deployed[(cell["model"], cell["rate"], cell["trial"])]
        assert cell["per_layer"] == twin["per_layer"]
    fractions = {c["realized_fraction"] for c in repaired if c["rate"] == 0.5}
    assert all(0.45 < f < 0.55 for f in fractions) and 0.5 not in fractions  # Bernoulli.
    campaign_results = json.loads(
        (out / "campaigns" / "weight_all_keras_bernoulli_repaired1" / "results.json").read_text()
    )
    assert campaign_results["protocol"] == "repaired"
    entries = results["protocol_comparison"]
    assert [(e["kind"], e["rate"]) for e in entries] == [("weight", 0.5), ("node", 0.5)]
    protocols_seen = [(p["protocol"], p.get("repair_epochs")) for p in entries[0]["protocols"]]
    assert protocols_seen == [("deployed", None), ("repaired", 1), ("repaired", 2)]
    by_hand = np.mean(
        [c["accuracy"] for c in repaired if c["model"] == "aftt" and c["rate"] == 0.5]
    )
    assert entries[0]["protocols"][2]["accuracy"]["aftt"]["mean"] == pytest.approx(by_hand)
    gain = entries[0]["protocols"][2]["repair_gain"]["aftt"]
    assert gain["mean"] == pytest.approx(
        by_hand - entries[0]["protocols"][0]["accuracy"]["aftt"]["mean"]
    )
    assert "weight faults at 50%, scope all, repaired (2 epochs)" in result.stdout
    report = (out / "report.md").read_text()
    assert "## Deployed vs repaired protocol" in report and "gain, 2 ep" in report

    _check_int8_modes(out, results, cells)


def _check_int8_modes(out, results, cells):
    """The int8 part of the end-to-end run: exports, per-rate files, verdicts, statistics."""
    for mode in ("fault_calibrated", "fault_qat"):
        for method in ("none", "aftt"):
            assert (out / f"export_{mode}" / method / f"model_int8_{mode}.tflite").exists()
    chip = out / "export_chip_calibrated" / "aftt"
    assert sorted(p.name for p in chip.glob("*.tflite")) == ["node_0.5.tflite", "weight_0.5.tflite"]
    # A fault-free chip runs the PTQ file: identical rate-0 cells.
    ptq = {
        (c["model"], c["trial"]): c["accuracy"]
        for c in cells["weight_all_int8_bernoulli"]
        if c["rate"] == 0
    }
    chip_cells = cells["weight_all_int8_chip_calibrated_bernoulli"]
    assert {(c["model"], c["trial"]): c["accuracy"] for c in chip_cells if c["rate"] == 0} == ptq
    entries = {(e["kind"], e["scope"]): e for e in results["int8_comparison"]}
    assert set(entries) == {("weight", "all"), ("node", "all")}
    modes = entries[("weight", "all")]["modes"]
    assert set(modes) == {"ptq", "fault_calibrated", "fault_qat", "chip_calibrated"}
    gap = modes["ptq"]["per_method"]["aftt"]["0.5"]
    float_cells = {
        (c["trial"]): c["accuracy"]
        for c in cells["weight_all_keras_bernoulli"]
        if c["model"] == "aftt" and c["rate"] == 0.5
    }
    int8_cells = {
        (c["trial"]): c["accuracy"]
        for c in cells["weight_all_int8_bernoulli"]
        if c["model"] == "aftt" and c["rate"] == 0.5
    }
    assert gap["mean"] == pytest.approx(
        np.mean([int8_cells[t] - float_cells[t] for t in int8_cells])
    )
    statistics = results["int8_layer_statistics"]
    assert set(statistics) == {
        f"{m}, TFLite int8{suffix}"
        for m in ("none", "aftt")
        for suffix in ("", ", fault-calibrated", ", fault-aware QAT")
    }
    assert (out / "int8_stats" / "aftt_int8_fault_qat.json").exists()
    report = (out / "report.md").read_text()
    assert "## int8 vs float32 under the same faults, per int8 mode" in report
    assert "## Where int8 loses its levels (per-layer statistics)" in report
