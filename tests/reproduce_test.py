"""aftt-reproduce: end to end on the smoke flagfile, resume, verdicts, fault-aware training."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.campaigns import cell_log, outputs
from aftt_tf.reproduce import config as reproduce_config
from aftt_tf.reproduce import document, pipeline, sections
from aftt_tf.training import config as config_lib
from aftt_tf.training import networks, trainers
from tests.conftest import reproduce_smoke, requires_fashion_mnist

pytestmark = pytest.mark.slow  # Minutes: left out by `make test-fast`.

REPO = Path(__file__).resolve().parents[1]


@requires_fashion_mnist
def test_smoke_reproduction_trains_every_method_and_reports(smoke_reproduction):
    out, result = smoke_reproduction
    results = json.loads((out / "results.json").read_text())
    assert results["method_order"] == list(reproduce_config.ALL_METHODS)
    # The grid searches ran and selected by validation accuracy.
    selection = json.loads((out / "train/l2/selection.json").read_text())
    assert [row["reg_lambda"] for row in selection["sweep"]] == [1e-5, 1e-4]
    best = max(selection["sweep"], key=lambda row: row["validation_accuracy"])
    assert selection["selected_lambda"] == best["reg_lambda"]
    # AFTT + fault-aware fine-tuning reused AFTT's pre-training instead of repeating it.
    assert "aftt_fat: pre-training reused from aftt" in result.stderr
    for method in ("aftt", "aftt_fat"):
        assert (out / f"train/{method}/checkpoints/pretrain/variables.npz").exists()
    for method in reproduce_config.ALL_METHODS:
        assert (out / f"export/{method}/model_int8.tflite").exists()
    expected = {
        f"{k}_{s}_{r}"
        for k in ("weight", "node")
        for s in ("all", "extractor")
        for r in ("keras", "int8")
    }
    assert set(results["campaigns"]) == expected
    for name in expected:
        summary = results["campaigns"][name]["summary"]
        assert set(summary) == set(reproduce_config.ALL_METHODS)
        assert all(len(summary[m]["all"]["per_rate"]) == 2 for m in summary)
    # Figures exist and the HTML carries them inline.
    figures = sorted(path.name for path in (out / "figures").glob("*.png"))
    assert "fig2_weight_histograms.png" in figures and "fig5_aae_losses.png" in figures
    assert {f"fig7_{k}_{s}.png" for k in ("weight", "node") for s in ("all", "extractor")} <= set(
        figures
    )
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(figures)
    assert 'src="figures/' not in html
    # The verdicts are printed and are the report's.
    markdown = (out / "report.md").read_text()
    # One per campaign, and one int8-vs-float32 line per fault kind and scope.
    assert len(results["verdicts"]) == len(expected) + 4
    int8_lines = [line for line in results["verdicts"] if "int8 vs float32" in line]
    assert len(int8_lines) == 4 and all("ptq: mean |gap|" in line for line in int8_lines)
    for line in results["verdicts"]:
        assert line in markdown
        assert "verdict: " + line.replace("**", "") in result.stdout
    assert f"Report: {out}/report.md" in result.stdout


@requires_fashion_mnist
def test_report_numbers_match_the_json_results(smoke_reproduction):
    out, _ = smoke_reproduction
    results = json.loads((out / "results.json").read_text())
    markdown = (out / "report.md").read_text()
    rows = {
        line.split(" | ")[0].lstrip("| ").split(" ")[0]: line.split(" | ")
        for line in markdown.splitlines()
        if line.startswith("| ") and "(" in line.split(" | ")[0]
    }
    for method, metrics in results["methods"].items():
        row = rows[method]
        assert row[1] == f"{100 * metrics['train_accuracy']:.2f}"
        assert row[2] == f"{100 * metrics['test_accuracy']:.2f}"
        assert row[3] == f"{100 * metrics['generalization_error']:.2f}"
        assert row[4] == f"{100 * metrics['int8_test_accuracy']:.2f}"
        # And results.json agrees with the training run's own metrics.json.
        run = out / "train" / method
        if method in ("l1", "l2"):
            run = run / f"lambda_{metrics['reg_lambda']:g}"
        own = json.loads((run / "metrics.json").read_text())
        assert own["test_accuracy"] == metrics["test_accuracy"]
    for name, entry in results["campaigns"].items():
        for method, groups in entry["summary"].items():
            auc = f"{100 * groups['all']['normalized_auc']:.2f}"
            runtime = reproduce_config.RUNTIME_NAMES[entry["runtime"]]
            assert re.search(rf"\| {method} \| {runtime} \| {auc} \|", markdown), (name, method)
        # The campaign's own results.json holds the same summary.
        own = json.loads((out / "campaigns" / name / "results.json").read_text())
        assert own["summary"] == entry["summary"]


@requires_fashion_mnist
def test_resumed_reproduction_repeats_no_work(smoke_reproduction):
    out, _ = smoke_reproduction
    models = sorted(out.glob("train/**/classifier.keras")) + sorted(out.glob("export/*/*.tflite"))
    stamps = {path: path.stat().st_mtime_ns for path in models}
    cells = {path: path.read_text() for path in out.glob("campaigns/*/cells.jsonl")}
    result = reproduce_smoke(out)
    assert result.returncode == 0, result.stderr[-3000:]
    log = json.loads((out / "work_log.json").read_text())
    work = [entry for entry in log if entry["stage"] in ("train", "export", "campaigns")]
    assert len(work) == 7 + 6 + 8  # 7 trainings (2 l2 lambdas), 6 exports, 8 campaigns.
    assert all(entry["action"] == "reused" for entry in work), work
    assert all(entry["cells_run"] == 0 for entry in work if entry["stage"] == "campaigns")
    assert {path: path.stat().st_mtime_ns for path in models} == stamps
    assert {path: path.read_text() for path in out.glob("campaigns/*/cells.jsonl")} == cells
    # Restricting the work with --methods/--faults reuses the same cells too.
    result = reproduce_smoke(out, "--methods=none,aftt", "--faults=weight", "--runtimes=keras")
    assert result.returncode == 0, result.stderr[-3000:]
    log = json.loads((out / "work_log.json").read_text())
    assert [e["action"] for e in log if e["stage"] == "campaigns"] == ["reused", "reused"]
    results = json.loads((out / "results.json").read_text())
    assert results["method_order"] == ["none", "aftt"] and set(results["methods"]) == {
        "none",
        "aftt",
    }
    assert set(results["campaigns"]) == {"weight_all_keras", "weight_extractor_keras"}


@requires_fashion_mnist
def test_another_training_config_is_refused_before_any_work(smoke_reproduction, tmp_path):
    out, _ = smoke_reproduction
    before = sorted(str(p) for p in out.rglob("*"))
    result = reproduce_smoke(out, "--finetune_epochs=3")
    assert result.returncode != 0
    assert "finetune_epochs: 2 -> 3" in result.stderr and "Use another --out" in result.stderr
    assert sorted(str(p) for p in out.rglob("*")) == before


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--methods=none,dropout", "unknown: ['dropout']"),
        ("--methods=aftt", "give at least two"),
        ("--faults=filter", "Filter faults need convolutions"),
        ("--trials=1", "trials must be an integer >= 2"),
        ("--reg_lambda_grid=1e-4", "takes --l1_lambda_grid and --l2_lambda_grid"),
        ("--l2_lambda_grid=1e-4,x", "--l2_lambda_grid must be comma-separated numbers"),
        ("--rates=0,1.5", "rates must be fractions in [0, 1]"),
        ("--scopes=head", "scopes ['head'] must be a non-empty subset"),
        ("--fault_aware_max_rate=1.0", "fault_aware_max_rate must be in (0, 1)"),
    ],
)
def test_bad_flags_fail_before_anything_is_written(tmp_path, flag, message):
    out = tmp_path / "never"
    result = reproduce_smoke(out, flag)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert not out.exists()


def test_a_directory_that_is_not_a_reproduction_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    config = reproduce_config.ReproduceConfig(train=config_lib.TrainConfig(), out=str(tmp_path))
    with pytest.raises(pipeline.ReproduceError, match=r"holds \['notes.txt'\]"):
        pipeline.check_output_directory(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_default_faults_follow_the_architecture():
    mlp = reproduce_config.ReproduceConfig(
        train=config_lib.TrainConfig(architecture="fmnist_mlp"), out="x"
    )
    cnn = reproduce_config.ReproduceConfig(
        train=config_lib.TrainConfig(architecture="fmnist_cnn"), out="x"
    )
    assert mlp.faults == ("weight", "node")
    assert cnn.faults == ("weight", "node", "filter")


def test_method_configs_and_shared_pretraining_signature():
    base = config_lib.TrainConfig(architecture="fmnist_mlp", freeze_extractor=True)
    aftt = reproduce_config.method_config(base, "aftt")
    aftt_fat = reproduce_config.method_config(base, "aftt_fat")
    none = reproduce_config.method_config(base, "none")
    l2 = reproduce_config.method_config(base, "l2", 1e-4)
    assert aftt.freeze_extractor and not none.freeze_extractor
    assert (l2.method, l2.reg_lambda, l2.reg_lambda_grid) == ("l2", 1e-4, ())
    for config in (aftt, aftt_fat, none, l2):
        config.validate()
    signature = pipeline._pretrain_signature
    assert signature(aftt) == signature(aftt_fat)
    assert signature(aftt) == signature(dataclasses.replace(aftt, learning_rate=0.5))
    assert signature(aftt) != signature(dataclasses.replace(aftt, pretrain_epochs=3))
    assert signature(aftt) != signature(dataclasses.replace(aftt, seed=1))


def _cells(accuracy_by_model):
    cells = []
    for model, rows in accuracy_by_model.items():
        for rate, accuracies in rows.items():
            for trial, accuracy in enumerate(accuracies):
                cells.append(
                    {
                        "model": model,
                        "model_hash": f"hash-{model}",
                        "spec_key": "spec",
                        "group": "all",
                        "rate": rate,
                        "trial": trial,
                        "accuracy": accuracy,
                        "realized_fraction": rate,
                        "faulted": 0,
                        "per_layer": {},
                    }
                )
    return cells


def _verdict_from_files(tmp_path, accuracy_by_model):
    """Writes hand-made cells as a campaign directory and reads the verdict back."""
    name = "weight_all_keras"
    directory = tmp_path / "campaigns" / name
    directory.mkdir(parents=True)
    cells = _cells(accuracy_by_model)
    (directory / cell_log.CELLS_FILE).write_text("".join(json.dumps(c) + "\n" for c in cells))
    meta = {
        "spec": {"kind": "weight", "scope": "all", "seed": 0},
        "spec_key": "spec",
        "models": {model: f"hash-{model}" for model in accuracy_by_model},
    }
    results = outputs.write_outputs(
        directory, cell_log.read_cells(directory / cell_log.CELLS_FILE), meta
    )
    verdict = sections.campaign_verdict(name, results, tmp_path)
    return verdict, sections.verdict_line("weight", "all", "keras", verdict)


def test_verdict_from_result_files_names_the_winner_and_where_aftt_stands(tmp_path):
    verdict, line = _verdict_from_files(
        tmp_path,
        {
            "l2": {0.0: [0.90] * 4, 0.5: [0.70, 0.72, 0.69, 0.71]},
            "aftt": {0.0: [0.90] * 4, 0.5: [0.60, 0.63, 0.61, 0.62]},
            "none": {0.0: [0.89] * 4, 0.5: [0.50, 0.52, 0.49, 0.51]},
        },
    )
    assert verdict["best"] == "l2" and verdict["runner_up"] == "aftt"
    assert verdict["aftt_rank"] == 2
    # Per-trial AUC differences aftt - l2: (-0.10, -0.09, -0.08, -0.09) / 2.
    assert verdict["aftt_minus_best"]["mean_difference"] == pytest.approx(-0.045)
    assert line.startswith("**weight faults, scope all, Keras float32**: most tolerant: l2")
    assert "AFTT does not win: it ranks 2 of 3, aftt − l2 = -4.50" in line


def test_verdict_from_result_files_reports_a_tie(tmp_path):
    verdict, line = _verdict_from_files(
        tmp_path,
        {
            "aftt": {0.0: [0.90] * 4, 0.5: [0.70, 0.60, 0.72, 0.58]},
            "l2": {0.0: [0.90] * 4, 0.5: [0.62, 0.69, 0.60, 0.68]},
        },
    )
    assert verdict["tie"] and verdict["best"] is None and verdict["aftt_rank"] == 1
    assert "no clear winner: aftt and l2 tie within the 95% CI" in line
    assert "AFTT has the highest mean but its lead is within the CI" in line


def test_report_renders_the_same_blocks_to_markdown_and_html(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure()
    plt.plot([0, 1], [1, 0])
    (tmp_path / "figures").mkdir()
    figure.savefig(tmp_path / "figures/line.png")
    plt.close(figure)
    blocks = [
        document.Heading("Title", 1),
        document.Paragraph("a **bold** `code` <tag>"),
        document.Table(["a", "b|c"], [["1", "2"]], "caption"),
        document.Figure("figures/line.png", "a line"),
        document.BulletList(["x", "y"]),
    ]
    markdown, html = document.write_report(blocks, tmp_path, "t")
    text = markdown.read_text()
    assert "# Title" in text and "| a | b\\|c |" in text and "![a line](figures/line.png)" in text
    page = html.read_text()
    assert "<strong>bold</strong>" in page and "<code>code</code>" in page
    assert "&lt;tag&gt;" in page and "data:image/png;base64," in page


def _fault_aware_trainer(kinds, max_rate=0.5, architecture="fmnist_mlp"):
    # A fixed initialisation: the losses compared below must not depend on the tests that
    # ran before in the process (they moved the global random state).
    keras.utils.set_random_seed(0)
    nets = networks.build_networks(architecture, "fashion_mnist")
    trainer = trainers.ClassifierTrainer(
        nets.classifier, fault_aware_kinds=kinds, fault_aware_max_rate=max_rate, seed=7
    )
    return nets, trainer


def test_fault_aware_maps_depend_only_on_seed_and_step():
    _, trainer = _fault_aware_trainer(("weight", "node"))
    first = trainer.fault_mapping(tf.constant(3))
    again = trainer.fault_mapping(tf.constant(3))
    other = trainer.fault_mapping(tf.constant(4))
    for (_, a), (_, b) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(
        not np.array_equal(a.numpy(), b.numpy())
        for (_, a), (_, b) in zip(first, other, strict=True)
    )


def test_fault_aware_steps_draw_one_kind_at_a_rate_below_the_maximum():
    nets, trainer = _fault_aware_trainer(("weight", "node"), max_rate=0.6)
    kernels = {id(kernel) for kernel in trainer.fault_kernels}
    seen = set()
    for step in range(40):
        weight_fractions, node_fractions = [], []
        for variable, value in trainer.fault_mapping(tf.constant(step)):
            if id(variable) in kernels:
                weight_fractions.append(float(np.mean(value.numpy() == 0)))
            else:
                node_fractions.append(float(np.mean(value.numpy() == 0)))
        faulty_weights = max(weight_fractions) > 0.01
        faulty_nodes = max(node_fractions) > 0.01
        assert not (faulty_weights and faulty_nodes)  # One kind per step.
        assert max(weight_fractions + node_fractions) < 0.65
        seen.add("weight" if faulty_weights else "node" if faulty_nodes else "none")
    assert {"weight", "node"} <= seen
    # Node masks sit on every hidden Dense layer, never on the logits.
    assert [mask.shape for mask in trainer.node_masks] == [(512,), (1024,), (512,), (512,)]


def test_fault_aware_training_step_uses_the_faulty_network(fashion_mnist_small):
    splits = fashion_mnist_small
    images = splits.train_images[:256].astype("float32") / 255.0
    labels = splits.train_labels[:256]
    nets, trainer = _fault_aware_trainer(("weight",), max_rate=0.95)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))  # No update: the loss shows the forward.
    clean_logits = nets.classifier(images)
    clean_loss = float(trainers.classification_loss(labels, clean_logits, "mse"))
    mapping = trainer.fault_mapping(trainer.optimizer.iterations)
    with keras.StatelessScope(state_mapping=mapping):
        faulty_loss = float(trainers.classification_loss(labels, nets.classifier(images), "mse"))
    batch = tf.data.Dataset.from_tensor_slices((images, labels)).batch(256)
    logs = {k: v[0] for k, v in trainer.fit(batch, epochs=1, verbose=0).history.items()}
    assert logs["classification_loss"] == pytest.approx(faulty_loss, rel=1e-5)
    assert faulty_loss != pytest.approx(clean_loss, rel=1e-3)
    # The deployable classifier keeps its fault-free weights.
    np.testing.assert_allclose(nets.classifier(images), clean_logits, atol=1e-6)


def test_faulted_weights_get_no_gradient():
    nets, trainer = _fault_aware_trainer(("weight",), max_rate=0.9)
    images = np.random.default_rng(0).random((16, 28, 28, 1), np.float32)
    labels = np.arange(16) % 10
    for step in range(20):
        mapping = trainer.fault_mapping(tf.constant(step))
        if np.mean(mapping[0][1].numpy() == 0) > 0.2:
            break
    kernel = trainer.fault_kernels[0]
    with tf.GradientTape() as tape:
        mapping = trainer.fault_mapping(tf.constant(step))
        with keras.StatelessScope(state_mapping=mapping):
            logits = nets.classifier(images, training=True)
        loss = trainers.classification_loss(labels, logits, "mse")
    gradient = tape.gradient(loss, kernel).numpy()
    faulted = mapping[0][1].numpy() == 0
    assert faulted.any() and np.all(gradient[faulted] == 0)
    assert np.any(gradient[~faulted] != 0)


def test_fault_aware_config_validation():
    config_lib.TrainConfig(method="fat").validate()
    config_lib.TrainConfig(method="fat", fault_aware_kinds=("filter", "node")).validate()
    with pytest.raises(ValueError, match="activation_bit faults strike layer outputs anew"):
        config_lib.TrainConfig(method="fat", fault_aware_kinds=("activation_bit",)).validate()
    with pytest.raises(ValueError, match=r"fault_aware_max_rate must be in \(0, 1\)"):
        config_lib.TrainConfig(method="fat", fault_aware_max_rate=0.0).validate()
    with pytest.raises(ValueError, match="draws bit faults in int8 storage"):
        trainers.ClassifierTrainer(
            networks.build_networks("fmnist_mlp", "fashion_mnist").classifier,
            fault_aware_kinds=("bit",),
            fault_aware_max_rate=0.5,
        )
    assert config_lib.TrainConfig(method="aftt_fat").pretrains
    assert config_lib.TrainConfig(method="aftt_fat").fault_aware
    assert not config_lib.TrainConfig(method="l2").fault_aware
