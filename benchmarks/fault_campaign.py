"""Fault-campaign speed and memory on Keras models.

    .venv/bin/python -m benchmarks.fault_campaign [--model=runs/fmnist_mlp_aftt/classifier.keras]

Measured in one run, on the full 10k Fashion-MNIST test set:
1. fmnist_mlp weight-fault campaign: achieved GFLOP/s (forward FLOPs x images / time
   per trial) next to this machine's float32 matmul rate. Target >= 60%.
2. The same campaign (10 rates x 30 trials) against the naive way: per trial, clone the
   model, set the masked weights and call `model.evaluate` (default batch size). The
   naive way is timed on `--naive_cells` cells and its per-cell time is scaled to the
   300 cells (said in the output). Target >= 5x faster.
3. fmnist_cnn: a head-only campaign (activations entering the head computed once)
   against a full-network campaign, time per trial. Target >= 3x.
4. Peak RSS of campaigns whose test set or number of trials grows (subprocesses).
Uses trained models when given, else freshly initialised ones (speed does not depend
on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from aftt_tf.campaigns import engine as campaign  # noqa: E402
from aftt_tf.campaigns import shards
from aftt_tf.data import datasets as data  # noqa: E402
from aftt_tf.faults import sampling  # noqa: E402
from aftt_tf.faults.spec import FaultSpec  # noqa: E402
from aftt_tf.runtimes import keras_runner  # noqa: E402
from aftt_tf.training import complexity, networks  # noqa: E402
from benchmarks.common import matmul_gflops, reset_peak_rss, rss_status_mib  # noqa: E402

RATES = tuple(round(0.1 * i, 1) for i in range(10))


def _model(path: str, architecture: str) -> keras.Model:
    if path:
        return keras_runner.load_model(path)
    keras.utils.set_random_seed(0)
    return networks.build_networks(architecture).classifier


def _seconds_per_trial(runner: keras_runner.CampaignRunner, cells) -> float:
    runner.evaluate_cell(*cells[0])  # Trace.
    start = time.perf_counter()
    for rate, trial in cells:
        runner.evaluate_cell(rate, trial)
    return (time.perf_counter() - start) / len(cells)


def _naive_seconds_per_cell(model, spec, images, labels, cells) -> float:
    """Per trial: masks from the same sampler, clone + set_weights + compile + evaluate."""
    start = time.perf_counter()
    for rate, trial in cells:
        weights = []
        for layer in model.layers:
            for variable in layer.weights:
                value = np.asarray(variable.numpy())
                if variable is getattr(layer, "kernel", None):
                    rng = sampling.trial_rng(spec.seed, spec.kind, layer.name, rate, trial)
                    positions = sampling.sample_positions(
                        value.size, rate, rng, spec.placement.sampling
                    )
                    value = value.copy().reshape(-1)
                    value[positions] = 0
                    value = value.reshape(variable.shape)
                weights.append(value)
        clone = keras.models.clone_model(model)
        clone.set_weights(weights)
        clone.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        clone.evaluate(images, labels, verbose=0)
    return (time.perf_counter() - start) / len(cells)


def _rss_child(args) -> None:
    model = _model(args.model, "fmnist_mlp")
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    images, labels = arrays["test"]
    repeats = args.rss_examples // len(labels) + 1
    images = np.concatenate([images] * repeats)[: args.rss_examples]
    labels = np.concatenate([labels] * repeats)[: args.rss_examples]
    spec = FaultSpec(kind="weight", rates=(0.3,), trials=args.rss_trials)
    before = rss_status_mib()["current"]
    if not reset_peak_rss():
        raise SystemExit("cannot reset the peak RSS on this system (/proc/self/clear_refs)")
    with tempfile.TemporaryDirectory() as out:
        campaign.run_campaign({"m": model}, spec, images, labels, out, progress=False)
    peak = rss_status_mib()["peak"]
    print(
        json.dumps(
            {
                "rss_before_mib": before,
                "campaign_peak_rss_mib": peak,
                "campaign_increase_mib": peak - before,
            }
        )
    )


def _rss(args, examples: int, trials: int) -> float:
    command = [
        sys.executable,
        "-m",
        "benchmarks.fault_campaign",
        "--rss_child",
        f"--rss_examples={examples}",
        f"--rss_trials={trials}",
    ]
    if args.model:
        command.append(f"--model={args.model}")
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _report_rss(args) -> dict:
    """Campaign memory: peak RSS during the campaign over the RSS before it, per size."""
    rows = {
        f"{examples}_examples_{trials}_trials": _rss(args, examples, trials)
        for examples, trials in ((10000, 10), (10000, 100), (40000, 10))
    }
    for key, row in rows.items():
        print(
            f"{key.replace('_', ' ')}: RSS before campaign {row['rss_before_mib']:.0f} MiB, peak during "
            f"campaign {row['campaign_peak_rss_mib']:.0f} MiB (+{row['campaign_increase_mib']:.0f} MiB)"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="fmnist_mlp classifier.keras (optional)")
    parser.add_argument("--cnn_model", default="", help="fmnist_cnn classifier.keras (optional)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--naive_cells", type=int, default=20)
    parser.add_argument("--json", default="")
    parser.add_argument("--only_rss", action="store_true", help="Run only the memory part.")
    parser.add_argument("--rss_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rss_examples", type=int, default=10000, help=argparse.SUPPRESS)
    parser.add_argument("--rss_trials", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _rss_child(args)
        return

    if args.only_rss:
        _report_rss(args)
        return
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    images, labels = arrays["test"]
    float_images = images.astype(np.float32) / 255.0
    peak = matmul_gflops()
    results = {"matmul_gflops": peak, "test_examples": len(labels)}

    mlp = _model(args.model, "fmnist_mlp")
    spec = FaultSpec(kind="weight", rates=RATES, trials=args.trials)
    runner = keras_runner.CampaignRunner(mlp, spec, images, labels)
    cells = shards.cell_plan(spec)
    sample = [cell for cell in cells if cell[0] > 0][:: max(1, len(cells) // 40)]
    per_trial = _seconds_per_trial(runner, sample)
    flops = complexity.model_complexity(mlp).forward_flops * len(labels)
    results["mlp_weight_seconds_per_trial"] = per_trial
    results["mlp_weight_gflops"] = flops / per_trial / 1e9
    start = time.perf_counter()
    for rate, trial in cells:
        runner.evaluate_cell(rate, trial)
    results["mlp_weight_campaign_seconds"] = time.perf_counter() - start
    results["mlp_weight_campaign_cells"] = len(cells)
    results["trace_count"] = runner.trace_count

    naive_cells = [cell for cell in cells if cell[0] > 0][: args.naive_cells]
    naive = _naive_seconds_per_cell(mlp, spec, float_images, labels, naive_cells)
    results["naive_seconds_per_cell"] = naive
    results["naive_cells_timed"] = len(naive_cells)
    results["naive_campaign_seconds_scaled"] = naive * len(cells)

    cnn = _model(args.cnn_model, "fmnist_cnn")
    cnn_cells = [(0.3, trial) for trial in range(10)]
    for scope in ("all", "head"):
        cnn_runner = keras_runner.CampaignRunner(
            cnn,
            FaultSpec(kind="weight", rates=(0.3,), trials=10, scope=scope),
            images,
            labels,
        )
        results[f"cnn_{scope}_seconds_per_trial"] = _seconds_per_trial(cnn_runner, cnn_cells)

    print(f"float32 matmul rate (2048^3, this run): {peak:.1f} GFLOP/s")
    print(
        f"fmnist_mlp weight campaign: {per_trial * 1000:.0f} ms/trial over {len(labels)} images = "
        f"{results['mlp_weight_gflops']:.1f} GFLOP/s ({100 * results['mlp_weight_gflops'] / peak:.0f}% of matmul); "
        f"traces: {runner.trace_count}"
    )
    print(
        f"10 rates x {args.trials} trials: {results['mlp_weight_campaign_seconds']:.1f} s; naive "
        f"(clone + set_weights + evaluate, {naive * 1000:.0f} ms/cell timed on {len(naive_cells)} cells, "
        f"scaled to {len(cells)}): {results['naive_campaign_seconds_scaled']:.1f} s -> "
        f"{results['naive_campaign_seconds_scaled'] / results['mlp_weight_campaign_seconds']:.1f}x faster"
    )
    print(
        f"fmnist_cnn weight faults, full network: {results['cnn_all_seconds_per_trial'] * 1000:.0f} ms/trial; "
        f"head only: {results['cnn_head_seconds_per_trial'] * 1000:.0f} ms/trial -> "
        f"{results['cnn_all_seconds_per_trial'] / results['cnn_head_seconds_per_trial']:.1f}x"
    )
    results["rss"] = _report_rss(args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
