"""Transient-fault campaign speed: a trial against one plain inference pass, per runtime.

    .venv/bin/python -m benchmarks.transient_campaign

A MobileNetV2 (alpha 0.35, 32x32x3, freshly initialised: speed does not depend on the
weights) and 2,000 inputs; random bit flips in the outputs of all its 52 hidden
weight layers, drawn anew per inference, at 1e-4 per value (about 5 faults in every
inference) and 1e-6 (about 5% of the inferences struck: the rates of soft errors).
1. Keras: seconds per trial (positions drawn, assigned, the test set evaluated) over
   seconds per plain pass (the model compiled once with tf.function, same batch size,
   TensorFlow's default graph optimisations). The trial runs with the ReLU fusion off
   (NaN must propagate, `keras_runner.ieee_nan`); the plain pass without that is
   also reported, to show what the fusion is worth here.
2. TFLite: the model's float32 file cut into 53 pieces at the faulted outputs (struck
   inferences run through them, copying every cut tensor into the next piece; the
   others run on the uncut file), against the uncut file, same batch.
Targets: Keras at most 1.3x; TFLite at most 2x when every inference is struck and at
most 1.3x at 1e-6.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from aftt_tf.data import inputs  # noqa: E402
from aftt_tf.faults.spec import FaultSpec  # noqa: E402
from aftt_tf.runtimes import (  # noqa: E402
    keras_runner,
    tflite_file,  # noqa: E402
    tflite_runner,
)
from benchmarks import common  # noqa: E402

RAW = inputs.resolve("raw")


def measure_keras(model, images, labels, spec, batch_size, trials) -> dict:
    rate = spec.rates[0]
    plain = common.plain_pass_seconds(model, images, batch_size, trials)
    runner = keras_runner.CampaignRunner(model, spec, images, labels, batch_size, RAW)
    try:
        trial = common.trial_seconds(runner, rate, trials)
        unfused = common.plain_pass_seconds(model, images, batch_size, trials)  # ieee_nan still on.
    finally:
        runner.close()
    row = {
        "runtime": "keras",
        "rate": rate,
        "targeted_layers": len(runner.target_names),
        "seconds_per_trial": round(trial, 4),
        "seconds_per_plain_pass": round(plain, 4),
        "seconds_per_plain_pass_relu_unfused": round(unfused, 4),
        "trial_over_plain": round(trial / plain, 3),
    }
    print(
        f"keras at {rate:g}: {row['targeted_layers']} layers; trial {trial * 1000:.0f} ms vs plain pass "
        f"{plain * 1000:.0f} ms: {row['trial_over_plain']:.2f}x (target <= 1.3x); plain pass "
        f"with ReLU unfused {unfused * 1000:.0f} ms"
    )
    return row


def measure_tflite(path: Path, images, labels, spec, batch_size, trials) -> dict:
    rate = spec.rates[0]
    model = tflite_runner.TFLiteModel(path)
    runner = model.runner(spec, images, labels, batch_size, RAW)
    trial = common.trial_seconds(runner, rate, trials)
    interpreter = tflite_file.BatchedInterpreter(model, model.content, batch_size)
    quantized = model.quantize_inputs(images)
    interpreter.outputs(quantized)
    start = time.perf_counter()
    for _ in range(trials):
        interpreter.outputs(quantized)
    plain = (time.perf_counter() - start) / trials
    row = {
        "runtime": "tflite_float32",
        "rate": rate,
        "pieces": len(runner.split.pieces),
        "seconds_per_trial": round(trial, 4),
        "seconds_per_plain_pass": round(plain, 4),
        "trial_over_plain": round(trial / plain, 3),
    }
    print(
        f"tflite float32 at {rate:g}: {row['pieces']} pieces; trial {trial * 1000:.0f} ms vs "
        f"plain pass {plain * 1000:.0f} ms: {row['trial_over_plain']:.2f}x (target <= "
        f"{'2' if rate >= 1e-4 else '1.3'}x)"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    images = rng.uniform(-1, 1, (args.examples, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, args.examples)
    specs = [FaultSpec(kind="activation_bit", rates=(r,), trials=args.trials) for r in (1e-4, 1e-6)]
    rows = [measure_keras(model, images, labels, s, args.batch_size, args.trials) for s in specs]
    with tempfile.TemporaryDirectory() as folder:
        model.export(f"{folder}/saved", format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(f"{folder}/saved")
        path = Path(folder) / "model.tflite"
        path.write_bytes(converter.convert())
        for spec in specs:
            rows.append(measure_tflite(path, images, labels, spec, args.batch_size, args.trials))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
