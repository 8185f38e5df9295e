"""Campaign speed on the models users bring: a trial against one plain inference pass.

    .venv/bin/python -m benchmarks.nested_campaign

Two models, freshly initialised (speed does not depend on the weights), 2,000 inputs:
1. MobileNetV2 (alpha 0.35, 32x32x3) nested as a backbone in a Functional model with a
   new head (the transfer-learning shape): every convolution of the backbone is faulted.
2. A two-block transformer (MultiHeadAttention + LayerNormalization + feed-forward) on
   28x28 sequences: attention projections faulted in the copy's variables.
For each: seconds per weight-fault trial (masks or variables assigned, then the whole
test set evaluated) over seconds per plain pass (the same model compiled once with
tf.function, same batch size). Target: at most 1.1x.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from aftt_tf.faults.spec import FaultSpec  # noqa: E402
from aftt_tf.runtimes import keras_runner  # noqa: E402
from benchmarks import common  # noqa: E402

L = keras.layers


def nested_mobilenet() -> keras.Model:
    backbone = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False
    )
    inputs = keras.Input((32, 32, 3))
    x = L.GlobalAveragePooling2D()(backbone(inputs))
    return keras.Model(inputs, L.Dense(10, name="logits")(L.Dense(64, activation="relu")(x)))


def transformer(blocks: int = 2) -> keras.Model:
    inputs = keras.Input((28, 28))
    x = L.Dense(64, name="embed")(inputs)
    for index in range(blocks):
        attended = L.MultiHeadAttention(4, 16, name=f"mha_{index}")(x, x)
        x = L.LayerNormalization(name=f"norm_a_{index}")(x + attended)
        hidden = L.Dense(128, activation="relu", name=f"ffn_a_{index}")(x)
        x = L.LayerNormalization(name=f"norm_b_{index}")(
            x + L.Dense(64, name=f"ffn_b_{index}")(hidden)
        )
    return keras.Model(inputs, L.Dense(10, name="logits")(L.GlobalAveragePooling1D()(x)))


def measure(name: str, model, images, labels, batch_size: int, trials: int) -> dict:
    spec = FaultSpec(kind="weight", rates=(0.3,), trials=trials)
    runner = keras_runner.KerasModel(model).runner(spec, images, labels, batch_size)
    coverage = keras_runner.KerasModel(model).coverage(spec)
    runner.evaluate_cell(0.3, 0)  # Trace.
    start = time.perf_counter()
    for trial in range(trials):
        runner.evaluate_cell(0.3, trial)
    trial_seconds = (time.perf_counter() - start) / trials
    plain = common.plain_pass_seconds(model, images, batch_size, trials)
    row = {
        "model": name,
        "targeted_layers": len(runner.target_names),
        "faulted_tensors_share": round(coverage["faulted_tensors_share"], 4),
        "seconds_per_trial": round(trial_seconds, 4),
        "seconds_per_plain_pass": round(plain, 4),
        "trial_over_plain": round(trial_seconds / plain, 3),
    }
    print(
        f"{name}: {row['targeted_layers']} layers, {row['faulted_tensors_share']:.1%} of "
        f"the weights faultable; trial {trial_seconds * 1000:.0f} ms vs plain pass "
        f"{plain * 1000:.0f} ms: {row['trial_over_plain']:.2f}x (target <= 1.1x)"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    rows = [
        measure(
            "mobilenet_v2_nested",
            nested_mobilenet(),
            rng.uniform(0, 1, (args.examples, 32, 32, 3)).astype(np.float32),
            rng.integers(0, 10, args.examples),
            args.batch_size,
            args.trials,
        ),
        measure(
            "transformer_2_blocks",
            transformer(),
            rng.uniform(0, 1, (args.examples, 28, 28)).astype(np.float32),
            rng.integers(0, 10, args.examples),
            args.batch_size,
            args.trials,
        ),
    ]
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
