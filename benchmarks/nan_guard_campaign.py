"""What the one NaN rule costs (`runtimes/nan_semantics.py`), per runtime.

    .venv/bin/python -m benchmarks.nan_guard_campaign

A CIFAR-style CNN of the kind the rule is for (three Conv2D + MaxPooling2D blocks, a
sigmoid-gated Dense head; freshly initialised: speed does not depend on the weights) and
2,000 inputs, under random bit faults in every kernel at 1e-3 (a kind that can make NaN,
so the rule is on). Seconds per trial with the rule against the same trial without it
(the Keras model's layers left unguarded; the file's guard outputs left out), one
process, one run: the ratio is the rule's cost. Targets: Keras at most 1.15x; the file
at most 1.3x (each guarded tensor becomes a graph output, copied out of XNNPACK and
scanned per batch: the first pooling input here is 32x32x32 values per inference).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from aftt_tf.data import inputs  # noqa: E402
from aftt_tf.faults.spec import FaultSpec  # noqa: E402
from aftt_tf.runtimes import keras_runner, nan_semantics, tflite_runner  # noqa: E402
from benchmarks import common  # noqa: E402

RAW = inputs.resolve("raw")
L = keras.layers


def _model() -> keras.Model:
    inputs_ = keras.Input((32, 32, 3))
    x = inputs_
    for width in (32, 64, 128):
        x = L.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(128, activation="sigmoid")(x)
    return keras.Model(inputs_, L.Dense(10)(x))


def _keras(model, images, labels, spec, batch, trials, guarded: bool) -> float:
    if not guarded:
        saved = nan_semantics.guard_layers
        nan_semantics.guard_layers = lambda model: []
    try:
        runner = keras_runner.CampaignRunner(model, spec, images, labels, batch, RAW)
    finally:
        if not guarded:
            nan_semantics.guard_layers = saved
    try:
        return common.trial_seconds(runner, spec.rates[0], trials)
    finally:
        runner.close()


def _tflite(path, images, labels, spec, batch, trials, guarded: bool) -> float:
    model = tflite_runner.TFLiteModel(path)
    if not guarded:
        model.__dict__["_guarded"] = model  # The file as it is: no guard outputs.
    runner = model.runner(spec, images, labels, batch, RAW)
    return common.trial_seconds(runner, spec.rates[0], trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=500)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    model = _model()
    rng = np.random.default_rng(0)
    images = rng.random((args.examples, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, args.examples)
    spec = FaultSpec(kind="bit", rates=(1e-3,), seed=0)
    with tempfile.TemporaryDirectory() as folder:
        model.export(str(Path(folder) / "saved"), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(folder) / "saved"))
        path = Path(folder) / "model.tflite"
        path.write_bytes(converter.convert())
        rows = {}
        for name, measure, target in (("keras", _keras, model), ("tflite", _tflite, path)):
            plain = measure(target, images, labels, spec, args.batch_size, args.trials, False)
            ruled = measure(target, images, labels, spec, args.batch_size, args.trials, True)
            rows[name] = {
                "seconds_per_trial_without_rule": round(plain, 4),
                "seconds_per_trial_with_rule": round(ruled, 4),
                "ratio": round(ruled / plain, 3),
            }
            print(
                f"{name}: trial {ruled * 1000:.0f} ms with the NaN rule, {plain * 1000:.0f} ms "
                f"without: {ruled / plain:.2f}x (target <= {1.15 if name == 'keras' else 1.3}x)"
            )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
