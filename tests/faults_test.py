import json

import keras
import numpy as np
import pytest

import aftt_tf  # noqa: F401
from aftt_tf.campaigns import analysis, shards, statistics
from aftt_tf.campaigns import engine as campaign
from aftt_tf.faults import sampling
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import keras_runner, layers, targets
from aftt_tf.training import networks


def _model(architecture="fmnist_mlp", seed=0):
    keras.utils.set_random_seed(seed)
    return networks.build_networks(architecture).classifier


def _images(count=64, shape=(28, 28, 1), seed=0):
    return np.random.default_rng(seed).uniform(size=(count, *shape)).astype("float32")


def _runner(model, count=64, **spec_values):
    spec = FaultSpec(**{"rates": (0.0, 0.5), "trials": 2, **spec_values})
    images = _images(count, model.input_shape[1:])
    labels = np.argmax(np.asarray(model(images)), -1)  # Clean accuracy = 1.
    return keras_runner.CampaignRunner(model, spec, images, labels, batch_size=32)


@pytest.mark.parametrize("rate", [0.1, 0.37, 0.7, 1.0])
def test_exact_fraction_per_layer(rate):
    runner = _runner(_model(), kind="weight")
    counts = runner.inject(rate, trial=0)
    for name, layer in runner.fault_layers.items():
        size = int(np.prod(layer.kernel.shape))
        assert counts["per_layer"][name]["faulted"] == round(rate * size)
        assert int((layer.kernel_keep.numpy() == 0).sum()) == round(rate * size)
        assert float(layer.bias_keep.numpy().min()) == 1.0  # biases excluded by default


def test_bernoulli_fraction_is_close_and_recorded():
    runner = _runner(_model(), kind="weight", sampling="bernoulli")
    result = runner.evaluate_cell(0.3, 0)
    assert abs(result["realized_fraction"] - 0.3) < 0.01
    assert result["realized_fraction"] != 0.3


def test_only_selected_layers_change():
    model = _model()
    runner = _runner(model, kind="weight", layers=("dense_2",))
    runner.inject(0.5, 0)
    assert runner.target_names == ["dense_2"]
    for layer in runner.faulty.layers:
        if isinstance(layer, layers.FaultyDense):
            assert layer.name == "dense_2"
    head = _runner(model, kind="weight", scope="head")
    assert head.target_names == ["head_dense", "logits"]
    extractor = _runner(model, kind="weight", scope="extractor")
    assert extractor.target_names == ["dense_1", "dense_2", "latent"]


def test_filter_faults_zero_whole_output_channels():
    runner = _runner(_model("fmnist_cnn"), kind="filter")
    counts = runner.inject(0.4, 0)
    for name, layer in runner.fault_layers.items():
        keep = layer.kernel_keep.numpy()
        per_filter = keep.reshape(-1, keep.shape[-1])
        dead = np.flatnonzero(per_filter.max(axis=0) == 0)
        assert len(dead) == round(0.4 * keep.shape[-1]) == counts["per_layer"][name]["faulted"]
        # Every filter is either fully dead or fully alive.
        assert set(np.unique(per_filter.min(axis=0) + per_filter.max(axis=0))) <= {0.0, 2.0}
        effective = layer.faulty_kernel().numpy()
        assert np.all(effective[..., dead] == 0)


def test_filter_faults_refused_without_convolutions():
    with pytest.raises(targets.FaultTargetError, match="Filter faults need convolutions"):
        _runner(_model(), kind="filter")


def test_node_mask_is_shared_by_all_samples():
    model = _model()
    runner = _runner(model, kind="node", layers=("dense_2",))
    runner.inject(0.5, 0)
    probe = keras.Model(runner.faulty.inputs, runner.faulty.get_layer("dense_2_node_fault").output)
    activations = np.asarray(probe(_images(16)))
    dead = activations == 0
    mask = runner.fault_layers["dense_2"].node_keep.numpy() == 0
    assert mask.sum() == 512
    assert np.all(dead[:, mask])  # faulted units are 0 for every sample
    assert np.all(activations[:, mask] == activations[:1, mask])


def test_output_nodes_excluded_unless_asked():
    model = _model()
    assert "logits" not in targets.select_layers(model, "node")
    assert "logits" in targets.select_layers(model, "node", include_output_nodes=True)


def test_rate_zero_is_the_clean_model():
    model = _model("fmnist_cnn")
    for kind in ("weight", "filter", "node", "bit", "stuck_value"):
        runner = _runner(model, kind=kind)
        runner.inject(0.0, 0)
        images = _images(8)
        np.testing.assert_array_equal(np.asarray(runner.faulty(images)), np.asarray(model(images)))


def test_weight_rate_one_on_dense_gives_its_bias():
    model = _model()
    logits = model.get_layer("logits")
    logits.bias.assign(np.arange(10, dtype="float32"))
    runner = _runner(model, kind="weight", layers=("logits",))
    runner.inject(1.0, 0)
    outputs = np.asarray(runner.faulty(_images(5)))
    np.testing.assert_array_equal(outputs, np.tile(np.arange(10, dtype="float32"), (5, 1)))


def test_seeds_are_deterministic_and_paired_across_models():
    first = _runner(_model(seed=0), kind="weight", seed=7)
    again = _runner(_model(seed=0), kind="weight", seed=7)
    other_seed = _runner(_model(seed=0), kind="weight", seed=8)
    other_model = _runner(
        _model(seed=123), kind="weight", seed=7
    )  # other weights, same architecture
    masks = []
    for runner in (first, again, other_seed, other_model):
        runner.inject(0.3, 2)
        masks.append(runner.fault_layers["dense_1"].kernel_keep.numpy().copy())
    np.testing.assert_array_equal(masks[0], masks[1])
    assert not np.array_equal(masks[0], masks[2])
    np.testing.assert_array_equal(masks[0], masks[3])
    assert first.evaluate_cell(0.3, 1) == again.evaluate_cell(0.3, 1)
    first.inject(0.3, 3)
    assert not np.array_equal(masks[0], first.fault_layers["dense_1"].kernel_keep.numpy())


def test_strip_restores_original_outputs_and_faulty_model_round_trips(tmp_path):
    model = _model("fmnist_cnn")
    for kind in ("weight", "node"):
        faulty = targets.apply_faults(model, kind, targets.select_layers(model, kind))
        runner_layers = [
            targets.fault_layer(faulty, n, kind) for n in targets.select_layers(model, kind)
        ]
        images = _images(8)
        np.testing.assert_allclose(np.asarray(faulty(images)), np.asarray(model(images)), atol=1e-6)
        if kind == "weight":
            runner_layers[0].kernel_keep.assign(np.zeros(runner_layers[0].kernel.shape, "float32"))
        else:
            runner_layers[0].node_keep.assign(np.zeros(runner_layers[0].node_keep.shape, "float32"))
        faulted = np.asarray(faulty(images))
        assert not np.allclose(faulted, np.asarray(model(images)))
        runner_layers[0].clear_faults()
        np.testing.assert_allclose(np.asarray(faulty(images)), np.asarray(model(images)), atol=1e-6)
        if kind == "weight":
            runner_layers[0].kernel_keep.assign(np.zeros(runner_layers[0].kernel.shape, "float32"))
        else:
            runner_layers[0].node_keep.assign(np.zeros(runner_layers[0].node_keep.shape, "float32"))
        path = tmp_path / f"faulty_{kind}.keras"
        faulty.save(path)
        reloaded = keras.saving.load_model(path)
        np.testing.assert_array_equal(np.asarray(reloaded(images)), faulted)
        stripped = targets.strip_faults(faulty)
        assert not any(
            isinstance(layer, (layers.FaultyConv2D, layers.FaultyDense, layers.NodeFault))
            for layer in stripped.layers
        )
        np.testing.assert_array_equal(np.asarray(stripped(images)), np.asarray(model(images)))


@pytest.mark.parametrize(
    "value, bit, mode, expected",
    [
        (1.0, 31, "flip", -1.0),  # sign bit
        (1.0, 30, "flip", float("inf")),  # top exponent bit: 2^128 overflows to inf
        (1.0, 23, "flip", 0.5),  # lowest exponent bit
        (1.0, 22, "stuck_at_1", 1.5),  # top mantissa bit
        (1.5, 22, "stuck_at_0", 1.0),
        (2.0, 31, "stuck_at_0", 2.0),
    ],
)
def test_float32_bit_faults(value, bit, mode, expected):
    rng = np.random.default_rng(0)
    result = sampling.corrupt_bits(np.array([value], np.float32), rng, bit, mode)
    assert result[0] == np.float32(expected)


def test_stuck_value_defaults_to_layer_max_abs():
    model = _model()
    runner = _runner(model, kind="stuck_value", layers=("dense_1",))
    runner.inject(0.2, 0)
    layer = runner.fault_layers["dense_1"]
    faulted = layer.kernel_keep.numpy() == 0
    expected = np.max(np.abs(layer.kernel.numpy()))
    np.testing.assert_allclose(layer.faulty_kernel().numpy()[faulted], expected)


def test_one_trace_per_campaign():
    runner = _runner(_model(), kind="weight", count=70)  # 70 = 2 full chunks + a partial one
    for rate in (0.0, 0.2, 0.5):
        for trial in range(3):
            runner.evaluate_cell(rate, trial)
    assert runner.trace_count == 1


def test_prefix_is_computed_once_for_head_campaigns():
    model = _model("fmnist_cnn")
    runner = _runner(model, kind="weight", scope="head")
    assert runner.prefix_layer == "latent"
    full = _runner(model, kind="weight", scope="all")
    assert full.prefix_layer is None
    for rate in (0.0, 0.3):
        assert runner.evaluate_cell(rate, 0)["accuracy"] == pytest.approx(
            _runner(model, kind="weight", scope="head").evaluate_cell(rate, 0)["accuracy"]
        )
    # Same accuracy whether or not the prefix is cached: compare with direct evaluation.
    runner.inject(0.3, 1)
    images = _images(64)
    labels = np.argmax(np.asarray(model(images)), -1)
    direct = np.mean(np.argmax(np.asarray(runner.faulty(images)), -1) == labels)
    assert runner.accuracy() == pytest.approx(direct)


def _campaign(tmp_path, name, **kwargs):
    models = {"a": _model(seed=0), "b": _model(seed=1)}
    images = _images(96)
    labels = np.random.default_rng(1).integers(0, 10, 96)
    spec = FaultSpec(kind="weight", rates=(0.0, 0.3, 0.6), trials=3, seed=5)
    return campaign.run_campaign(
        models,
        spec,
        images,
        labels,
        tmp_path / name,
        batch_size=40,
        progress=False,
        allow_chance_accuracy=True,
        **kwargs,
    )


def test_resume_skips_finished_cells_and_ends_with_same_numbers(tmp_path):
    reference = _campaign(tmp_path, "reference")
    seen = []

    class Stop(Exception):
        pass

    def stop_after_five(cell):
        seen.append(cell)
        if len(seen) == 5:
            raise Stop()

    with pytest.raises(Stop):
        _campaign(tmp_path, "resumed", on_cell=stop_after_five)
    later = []
    resumed = _campaign(tmp_path, "resumed", on_cell=later.append)
    assert resumed["skipped_cells"] == 5
    assert len(later) == 2 * 9 - 5
    assert resumed["summary"] == reference["summary"]
    assert resumed["paired_differences"] == reference["paired_differences"]


def test_shard_and_merge_equals_unsharded(tmp_path):
    reference = _campaign(tmp_path, "reference")
    for index in range(3):
        _campaign(tmp_path, f"shard{index}", num_shards=3, shard_index=index)
    merged = shards.merge_shards([tmp_path / f"shard{i}" for i in range(3)], tmp_path / "merged")
    assert merged["summary"] == reference["summary"]
    assert merged["paired_differences"] == reference["paired_differences"]
    with pytest.raises(ValueError, match=r"Expected shards 0..2"):
        shards.merge_shards([tmp_path / "shard0", tmp_path / "shard1"], tmp_path / "bad")


def test_outputs_statistics_and_plots(tmp_path):
    results = _campaign(tmp_path, "out")
    out = tmp_path / "out"
    for name in ("results.json", "trials.csv", "accuracy_vs_rate.png", "accuracy_vs_rate.svg"):
        assert (out / name).stat().st_size > 0
    assert len((out / "trials.csv").read_text().splitlines()) == 1 + 2 * 9
    row = results["summary"]["a"]["all"]["per_rate"][1]
    cells = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    accuracies = [c["accuracy"] for c in cells if c["model"] == "a" and c["rate"] == 0.3]
    mean, std, half = statistics.confidence_interval(accuracies)
    assert row["mean"] == pytest.approx(np.mean(accuracies))
    assert row["ci_high"] - row["ci_low"] == pytest.approx(2 * half)
    # t(0.975, 2) = 4.303
    assert half == pytest.approx(4.3027 * np.std(accuracies, ddof=1) / np.sqrt(3), rel=1e-4)
    paired = results["paired_differences"]["a - b"][1]
    by = {(c["model"], c["trial"]): c["accuracy"] for c in cells if c["rate"] == 0.3}
    assert paired["mean_difference"] == pytest.approx(
        np.mean([by[("a", t)] - by[("b", t)] for t in range(3)])
    )


def test_target_margin_stops_early_when_precise(tmp_path):
    models = {"a": _model()}
    images = _images(64)
    labels = np.argmax(np.asarray(models["a"](images)), -1)
    spec = FaultSpec(kind="weight", rates=(0.0, 0.05), trials=50, target_margin=0.5, min_trials=3)
    results = campaign.run_campaign(models, spec, images, labels, tmp_path / "m", progress=False)
    rows = results["summary"]["a"]["all"]["per_rate"]
    assert [row["trials"] for row in rows] == [3, 3]


def test_per_layer_sensitivity(tmp_path):
    model = _model()
    images = _images(64)
    labels = np.argmax(np.asarray(model(images)), -1)
    spec = FaultSpec(kind="weight", rates=(0.0, 0.5), trials=2)
    results = campaign.run_campaign(
        {"m": model}, spec, images, labels, tmp_path / "s", per_layer=True, progress=False
    )
    assert set(results["summary"]["m"]) == {"dense_1", "dense_2", "latent", "head_dense", "logits"}
    assert (tmp_path / "s" / "layer_sensitivity.png").exists()


@pytest.mark.parametrize(
    "values, message",
    [
        ({"rates": (0.1, 1.5)}, "outside [0, 1]"),
        ({"rates": (-0.1,)}, "outside [0, 1]"),
        ({"kind": "gamma_ray"}, "Unknown fault kind 'gamma_ray'"),
        ({"trials": 0}, "trials must be an integer >= 1, received 0"),
        ({"bit_position": 40}, "bit_position must be in 0..31"),
        ({"scope": "middle"}, "Unknown scope 'middle'"),
    ],
)
def test_bad_spec_is_refused(values, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        FaultSpec(**values).validate()


def test_unknown_layer_names_are_refused():
    with pytest.raises(targets.FaultTargetError, match=r"Layers \['conv_9'\] do not exist"):
        targets.select_layers(_model(), "weight", layer_names=("conv_9",))
    with pytest.raises(targets.FaultTargetError, match="cannot take 'weight' faults"):
        targets.select_layers(_model(), "weight", layer_names=("flatten",))


def test_model_without_faultable_layers_is_refused():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.ReLU()(inputs))
    with pytest.raises(targets.FaultTargetError, match="no Dense or Conv2D layer"):
        targets.select_layers(model, "weight")


def test_bad_model_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        keras_runner.load_model(tmp_path / "missing.keras")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="is not a .keras or .tflite file"):
        keras_runner.load_model(tmp_path / "notes.txt")
    (tmp_path / "corrupt.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="is not a readable .keras archive"):
        keras_runner.load_model(tmp_path / "corrupt.keras")


def test_integer_bit_faults():
    rng = np.random.default_rng(0)
    int8 = sampling.corrupt_bits(np.array([1, -1, 0], np.int8), rng, 7, "flip")
    np.testing.assert_array_equal(int8, np.array([-127, 127, -128], np.int8))
    int32 = sampling.corrupt_bits(np.array([5], np.int32), rng, 0, "stuck_at_0")
    np.testing.assert_array_equal(int32, np.array([4], np.int32))
    with pytest.raises(ValueError, match="bit_position must be in 0..7 for int8"):
        sampling.corrupt_bits(np.array([1], np.int8), rng, 9, "flip")


def _hand_made_cells(accuracy_by_model):
    cells = []
    for model, rows in accuracy_by_model.items():
        for rate, accuracies in rows.items():
            for trial, accuracy in enumerate(accuracies):
                cells.append(
                    {
                        "model": model,
                        "group": "all",
                        "rate": rate,
                        "trial": trial,
                        "accuracy": accuracy,
                    }
                )
    return cells


def test_verdict_names_the_most_tolerant_model():
    cells = _hand_made_cells(
        {
            "aftt": {0.0: [0.90] * 4, 0.5: [0.70, 0.72, 0.69, 0.71]},
            "l2": {0.0: [0.90] * 4, 0.5: [0.60, 0.63, 0.61, 0.62]},
            "none": {0.0: [0.89] * 4, 0.5: [0.50, 0.52, 0.49, 0.51]},
        }
    )
    result = analysis.verdict(cells)
    assert result["best"] == "aftt" and result["runner_up"] == "l2" and not result["tie"]
    # Per-trial AUC difference is (0.10, 0.09, 0.08, 0.09) / 2.
    assert result["mean_difference"] == pytest.approx(0.045)
    assert result["text"].startswith("most tolerant: aftt, ahead of l2 by +4.50 points")


def test_verdict_reports_a_tie_within_the_interval():
    cells = _hand_made_cells(
        {
            "aftt": {0.0: [0.90] * 4, 0.5: [0.70, 0.60, 0.72, 0.58]},
            "l2": {0.0: [0.90] * 4, 0.5: [0.62, 0.69, 0.60, 0.68]},
        }
    )
    result = analysis.verdict(cells)
    assert result["tie"] and result["best"] is None
    assert result["ci_low"] < 0 < result["ci_high"]
    assert "tie within the 95% CI" in result["text"]
