"""Sensitivity scores (checked against finite differences), protection plans (exact
budgets, never faulted, better than random protection on a trained model), the same
plan in campaigns on Keras models and .tflite files, and aftt-sensitivity end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.data import datasets as data
from aftt_tf.faults import protection
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import keras_runner, tflite_file, tflite_runner
from aftt_tf.sensitivity import scores as sensitivity
from tests.conftest import fashion_mnist_available, requires_fashion_mnist

L = keras.layers


def _tiny():
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((6,)), L.Dense(5, activation="tanh", name="a"), L.Dense(3, name="b")]
    )
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(64, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 64)
    return model, inputs, labels


def _loss(model, inputs, labels) -> float:
    outputs = model(inputs, training=False)
    return float(
        np.mean(keras.losses.sparse_categorical_crossentropy(labels, outputs, from_logits=True))
    )


def test_gradients_and_hessian_diagonal_equal_finite_differences():
    model, inputs, labels = _tiny()
    scores = sensitivity.kernel_scores(model, inputs, labels, exact_hessian=True)
    assert [(k.layer, k.attribute) for k in scores] == [("a", "kernel"), ("b", "kernel")]
    epsilon = 1e-2
    for kernel, layer in zip(scores, (model.get_layer("a"), model.get_layer("b")), strict=True):
        clean = layer.kernel.numpy().copy()
        for position in range(clean.size):
            values = []
            for step in (-epsilon, 0.0, epsilon):
                changed = clean.copy().reshape(-1)
                changed[position] += step
                layer.kernel.assign(changed.reshape(clean.shape))
                values.append(_loss(model, inputs, labels))
            layer.kernel.assign(clean)
            gradient = (values[2] - values[0]) / (2 * epsilon)
            second = (values[2] - 2 * values[1] + values[0]) / epsilon**2
            assert kernel.gradient.reshape(-1)[position] == pytest.approx(gradient, abs=2e-4)
            assert kernel.hessian_diagonal.reshape(-1)[position] == pytest.approx(second, abs=2e-2)
    # Hutchinson's estimate converges to the exact diagonal.
    estimate = sensitivity.kernel_scores(model, inputs, labels, hutchinson_samples=400, seed=1)
    exact = np.concatenate([k.hessian_diagonal.reshape(-1) for k in scores])
    approximate = np.concatenate([k.hessian_diagonal.reshape(-1) for k in estimate])
    assert np.corrcoef(exact, approximate)[0, 1] > 0.9


def test_scores_do_not_depend_on_the_chunks_they_are_read_in():
    """Examples are read batch_size at a time (a large model's activations need not fit
    at once): gradients, the Hessian diagonal and w^T H w are the same."""
    model, inputs, labels = _tiny()
    whole = sensitivity.kernel_scores(model, inputs, labels, exact_hessian=True, batch_size=64)
    chunked = sensitivity.kernel_scores(model, inputs, labels, exact_hessian=True, batch_size=10)
    for one, other in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(one.gradient, other.gradient, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(
            one.hessian_diagonal, other.hessian_diagonal, rtol=1e-5, atol=1e-6
        )
        assert one.curvature == pytest.approx(other.curvature, rel=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        sensitivity.kernel_scores(model, inputs, labels, batch_size=0)


def test_expected_loss_change_tracks_measured_zeroing():
    """The second-order estimate of zeroing a share of a layer's weights is within a
    factor of two of the mean measured loss change (small model, 30%)."""
    model, inputs, labels = _tiny()
    scores = sensitivity.kernel_scores(model, inputs, labels, exact_hessian=True)
    layer = model.get_layer("b")
    clean_kernel = layer.kernel.numpy().copy()
    base = _loss(model, inputs, labels)
    rng = np.random.default_rng(0)
    changes = []
    for _ in range(400):
        keep = rng.random(clean_kernel.shape) >= 0.3
        layer.kernel.assign(clean_kernel * keep)
        changes.append(_loss(model, inputs, labels) - base)
    layer.kernel.assign(clean_kernel)
    estimate = sensitivity.expected_loss_change([k for k in scores if k.layer == "b"], 0.3)
    assert 0.5 < estimate / np.mean(changes) < 2.0


def test_plans_protect_exactly_their_budget_and_round_trip(tmp_path):
    model, inputs, labels = _tiny()
    scores = sensitivity.kernel_scores(model, inputs, labels)
    total = sum(k.weights.size for k in scores)
    for budget in (0.1, 0.25):
        for random in (False, True):
            plan = sensitivity.build_plan(scores, budget, random=random, seed=2)
            assert plan.count == round(budget * total)
            plan.save(tmp_path / "plan.npz")
            loaded = protection.load(tmp_path / "plan.npz")
            assert loaded.digest() == plan.digest() and loaded.meta["budget"] == budget
    ranked = sensitivity.build_plan(scores, 0.1)
    flat = np.concatenate([k.score("taylor").reshape(-1) for k in scores])
    chosen = np.concatenate(
        [
            ranked.protected.get((k.layer, k.attribute), np.empty(0, np.int64)) + offset
            for k, offset in zip(scores, (0, scores[0].weights.size), strict=True)
        ]
    )
    assert set(chosen) == set(np.argsort(-flat, kind="stable")[: ranked.count])
    with pytest.raises(ValueError, match="share of the weights"):
        sensitivity.build_plan(scores, 1.5)


def test_protected_elements_never_fault_in_keras_and_tflite(tmp_path):
    """Cell by cell: no protected element holds a fault (Keras masks; the .tflite's
    bytes), the other faults are those of the unprotected campaign, and the counts say
    how many drawn faults the plan dropped."""
    model, inputs, labels = _tiny()
    scores = sensitivity.kernel_scores(model, inputs, labels)
    plan = sensitivity.build_plan(scores, 0.4)
    plan.save(tmp_path / "plan.npz")
    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    path = tmp_path / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved")).convert())
    tflite = tflite_runner.TFLiteModel(path)
    for kind in ("weight", "bit"):
        spec = FaultSpec(kind=kind, rates=(0.5,), trials=6, protected=str(tmp_path / "plan.npz"))
        plain = FaultSpec(kind=kind, rates=(0.5,), trials=6)
        keras_run = keras_runner.KerasModel(model).runner(spec, inputs, labels, 64)
        free_run = keras_runner.KerasModel(model).runner(plain, inputs, labels, 64)
        file_run = tflite.runner(spec, inputs, labels, 64)
        for trial in range(6):
            counts = keras_run.inject(0.5, trial)
            free = free_run.inject(0.5, trial)
            assert counts == file_run.inject(0.5, trial)
            for name, row in counts["per_layer"].items():
                assert row["faulted"] + row["protected"] == free["per_layer"][name]["faulted"]
            for name, tensors in keras_run.injector._tensors.items():
                kernel = tensors[0]
                protected = plan.indices(name, "kernel")
                keep = kernel.keep.numpy().reshape(-1)
                assert np.all(keep[protected] == 1.0), (kind, trial, name)
                free_keep = free_run.injector._tensors[name][0].keep.numpy().reshape(-1)
                unprotected = np.setdiff1d(np.arange(keep.size), protected)
                np.testing.assert_array_equal(keep[unprotected], free_keep[unprotected])
                layer = tflite.layers[name]
                stored = tflite_file.read_values(bytes(file_run.buffer), layer.weights)
                clean = tflite_file.read_values(tflite.content, layer.weights)
                positions = layer.keras_to_file_positions(protected)
                np.testing.assert_array_equal(stored[positions], clean[positions])


def test_plan_spec_keys_and_refusals(tmp_path):
    model, inputs, labels = _tiny()
    scores = sensitivity.kernel_scores(model, inputs, labels)
    plan = sensitivity.build_plan(scores, 0.2)
    plan.save(tmp_path / "one.npz")
    plan.save(tmp_path / "two.npz")
    other = sensitivity.build_plan(scores, 0.3)
    other.save(tmp_path / "three.npz")
    keys = [
        FaultSpec(protected=str(tmp_path / name)).key()
        for name in ("one.npz", "two.npz", "three.npz")
    ]
    assert keys[0] == keys[1] != keys[2] != FaultSpec().key()
    with pytest.raises(ValueError, match="node faults"):
        FaultSpec(kind="node", protected=str(tmp_path / "one.npz")).validate()
    with pytest.raises(ValueError, match="does not exist"):
        FaultSpec(protected=str(tmp_path / "missing.npz")).validate()
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a protection plan"):
        FaultSpec(protected=str(tmp_path / "junk.npz")).validate()
    foreign = protection.ProtectionPlan({("conv9", "kernel"): np.arange(3)}, {})
    foreign.save(tmp_path / "foreign.npz")
    spec = FaultSpec(protected=str(tmp_path / "foreign.npz"))
    with pytest.raises(ValueError, match="conv9.*another model"):
        keras_runner.KerasModel(model).runner(spec, inputs, labels, 64)


@pytest.fixture(scope="module")
def trained_mlp(tmp_path_factory):
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed")
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    x = arrays["train"][0][:6000].astype(np.float32) / 255.0
    y = arrays["train"][1][:6000]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Flatten(),
            L.Dense(128, activation="relu", name="h1"),
            L.Dense(64, activation="relu", name="h2"),
            L.Dense(10, name="logits"),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    path = tmp_path_factory.mktemp("sensitivity") / "mlp.keras"
    model.save(path)
    test = arrays["test"][0][:2000].astype(np.float32) / 255.0, arrays["test"][1][:2000]
    return model, path, (x, y), test


@requires_fashion_mnist
def test_plan_beats_random_protection_on_a_trained_model(trained_mlp, tmp_path):
    model, _, (x, y), (test_x, test_y) = trained_mlp
    scores = sensitivity.kernel_scores(model, x[:512], y[:512])
    plan = sensitivity.build_plan(scores, 0.01)
    baseline = sensitivity.build_plan(scores, 0.01, random=True, seed=1)
    plan.save(tmp_path / "plan.npz")
    baseline.save(tmp_path / "random.npz")
    result = sensitivity.verify(
        model,
        {"none": None, "plan": plan, "random": baseline},
        {"plan": str(tmp_path / "plan.npz"), "random": str(tmp_path / "random.npz")},
        test_x,
        test_y,
        "weight",
        (0.5,),
        8,
    )
    row = result["paired_differences"]["plan - random"][0]
    assert row["ci_low"] > 0, row
    # The per-layer estimate ranks layers as per-layer campaigns do.
    table = sensitivity.layer_table(scores, 0.3)
    check = sensitivity.check_against_campaigns(model, table, test_x, test_y, 0.3, 4, 60)
    assert check["layers_checked"] == 3 and check["spearman"]["expected"] > 0


@requires_fashion_mnist
def test_cli_writes_scores_plans_and_their_verification(trained_mlp, tmp_path):
    """aftt-sensitivity on a user's model with npz data, then aftt-faults --protected with
    the plan reproduces the verification's accuracies (same seed, same cells)."""
    _, path, _, (test_x, test_y) = trained_mlp
    np.savez(tmp_path / "data.npz", x=test_x, y=test_y)
    out = tmp_path / "sensitivity"
    argv = [
        f"--model={path}",
        f"--data=npz:{tmp_path / 'data.npz'}",
        "--input_transform=raw",
        "--protect_budget=0.02",
        "--verify_rates=0.4",
        "--verify_trials=3",
        "--check_seconds=5",
        f"--out={out}",
    ]
    run = lambda binary, args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", f"aftt_tf.cli.{binary}", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = run("sensitivity", argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plan - random" in result.stdout
    scores = json.loads((out / "scores.json").read_text())
    assert [row["layer"] for row in scores["layers"]]  # Ranked layers.
    assert scores["bits"]["float32"][0]["bit"] == 30  # The exponent's top bit first.
    manifest = json.loads((out / "manifest.json").read_text())
    assert "plans/plan_0.02.npz" in manifest["artifacts"]
    verification = json.loads((out / "verification.json").read_text())
    plan_accuracy = verification["budgets"]["0.02"]["per_trial"]["plan"]["0.4"]
    # The held-out 20% the verification ran on, as aftt-faults gets it.
    held = np.sort(np.random.default_rng(0).permutation(len(test_y))[:400])
    np.savez(tmp_path / "held.npz", x=test_x[held], y=test_y[held])
    campaign = tmp_path / "campaign"
    result = run(
        "faults",
        [
            f"--model=m={path}",
            f"--data=npz:{tmp_path / 'held.npz'}",
            "--input_transform=raw",
            f"--protected={out / 'plans' / 'plan_0.02.npz'}",
            "--rates=0.4",
            "--trials=3",
            f"--out={campaign}",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cells = [json.loads(line) for line in (campaign / "cells.jsonl").read_text().splitlines()]
    measured = sorted((cell["trial"], cell["accuracy"]) for cell in cells if cell["rate"] == 0.4)
    assert [accuracy for _, accuracy in measured] == pytest.approx(plan_accuracy)
    # The same run again returns the finished one; another config there is refused;
    # nothing there is touched either way.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = run("sensitivity", argv)
    assert again.returncode == 0, again.stderr[-3000:]
    other = run("sensitivity", [*argv, "--protect_budget=0.05"])
    assert other.returncode == 2 and "another config" in other.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_killed_run_starts_over_and_foreign_files_are_refused(tmp_path):
    """What a killed run left (config.json, plans/, no manifest) is cleared by the next
    run of the command; a user's files or another finished run are never touched."""
    from aftt_tf import io_utils
    from aftt_tf.data import frontend
    from aftt_tf.sensitivity import sensitivity_run

    config = sensitivity_run.SensitivityConfig(
        model="m.keras", out=str(tmp_path / "out"), data_options=frontend.DataOptions()
    )
    out = Path(config.out)
    out.mkdir()
    assert sensitivity_run._check_out(out, config) is None  # Empty.
    (out / "config.json").write_text("{}")
    (out / "plans").mkdir()
    assert sensitivity_run._check_out(out, config) is None  # Killed part-way: starts over.
    (out / "mine.txt").write_text("notes")
    with pytest.raises(io_utils.OutputError, match="mine.txt"):
        sensitivity_run._check_out(out, config)
    (out / "mine.txt").unlink()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(io_utils.OutputError, match="another config"):
        sensitivity_run._check_out(out, config)


def test_fault_aware_training_never_faults_protected_elements(tmp_path):
    """The plan file read by fault-aware training (aftt-train --model --method=fat
    --protected): every step's weight faults leave the protected elements as they are."""
    from aftt_tf.training import harden, trainers

    model, inputs, labels = _tiny()
    scores = sensitivity.kernel_scores(model, inputs, labels)
    plan = sensitivity.build_plan(scores, 0.4)
    plan.save(tmp_path / "plan.npz")
    trainer = trainers.ClassifierTrainer(
        model,
        fault_aware_kinds=("weight",),
        fault_aware_max_rate=0.9,
        protected=protection.load(tmp_path / "plan.npz"),
    )
    zeroed = 0
    for step in range(6):
        for variable, value in trainer.fault_mapping(tf.constant(step)):
            layer = variable.path.split("/")[-2]
            indices = plan.indices(layer, "kernel")
            assert indices is not None and len(indices)
            flat, faulty = variable.numpy().reshape(-1), np.asarray(value).reshape(-1)
            np.testing.assert_array_equal(faulty[indices], flat[indices])
            zeroed += int(np.sum((faulty == 0) & (flat != 0)))
    assert zeroed > 0  # Unprotected elements did fault.
    with pytest.raises(ValueError, match="fat or aftt_fat"):
        harden.HardenConfig(method="none", protected=str(tmp_path / "plan.npz")).validate()
