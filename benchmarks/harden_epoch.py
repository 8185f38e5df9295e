"""Seconds per fault-aware (fat) epoch of the user's own model vs a plain `model.fit`
epoch of the same model and batch size, and the range statistics pass vs one inference
pass over the same data.

    .venv/bin/python -m benchmarks.harden_epoch [--steps=60] [--batch_size=64]

The model is MobileNetV2-style (keras.applications.MobileNetV2, alpha 0.35, 32x32x3,
10 classes: BatchNormalization, depthwise convolutions, ReLU6), on random inputs (the
cost does not depend on the values). After a warm-up that absorbs tracing, interleaved
best of 5:
  * plain: `model.fit` for `steps` steps (Adam, sparse cross-entropy from logits);
  * fat: the `ClassifierTrainer` harden uses, weight and node faults (each step one map),
    BatchNormalization frozen, the same steps;
  * same trainer without faults: that `ClassifierTrainer` with no fault kinds, the same
    frozen BatchNormalization and input pipeline: what fat costs like for like (the
    plain `fit` also updates BatchNormalization and feeds numpy arrays);
  * range pass: `harden.activation_bounds` over 10,000 examples (its probe built and
    traced inside, as harden does), and one `model.predict` over the same examples.
Targets: fat / the same trainer without faults <= 1.3 (fat / plain is shown too); range pass / inference pass <= 1 (the statistics read the
activations of one inference pass).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from aftt_tf.data import datasets as data  # noqa: E402
from aftt_tf.data import inputs as model_inputs  # noqa: E402
from aftt_tf.training import harden, trainers  # noqa: E402


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None
    )


def _best(function, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def benchmark(steps: int, batch_size: int) -> dict:
    count = steps * batch_size
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-1, 1, (count, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, count).astype(np.int32)
    plain = _model()
    plain.compile(
        keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    faulty = _model()
    frozen = [
        layer for layer in faulty.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    for layer in frozen:
        layer.trainable = False
    trainer = trainers.ClassifierTrainer(
        faulty,
        loss="crossentropy",
        fault_aware_kinds=("weight", "node"),
        fault_aware_max_rate=0.5,
    )
    trainer.compile(optimizer=keras.optimizers.Adam(1e-4))
    twin = _model()  # The same trainer without faults: BatchNormalization frozen too.
    for layer in twin.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    unfaulted = trainers.ClassifierTrainer(twin, loss="crossentropy")
    unfaulted.compile(optimizer=keras.optimizers.Adam(1e-4))

    dataset, _ = data.train_dataset(
        inputs, labels, batch_size, 0, 0, 100, transform=model_inputs.resolve("raw")
    )

    def fit_plain():
        plain.fit(inputs, labels, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)

    def fit_fat():
        trainer.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)

    def fit_unfaulted():
        unfaulted.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)

    fit_plain()
    fit_fat()  # Traces.
    fit_unfaulted()
    plain_seconds, fat_seconds, same_seconds = [], [], []
    for _ in range(5):  # Interleaved: load from other processes hits all alike.
        plain_seconds.append(_best(fit_plain, 1))
        fat_seconds.append(_best(fit_fat, 1))
        same_seconds.append(_best(fit_unfaulted, 1))
    # The range pass builds and traces its probe once per call (a constant of about a
    # second); over the 10,000 examples harden reads by default it is amortised.
    many = np.concatenate([inputs] * max(1, -(-10000 // count)))[:10000]
    config = harden.HardenConfig(method="range", epochs=0, range_examples=len(many))
    plain.predict(many, batch_size=500, verbose=0)  # Traces.
    range_seconds = _best(lambda: harden.activation_bounds(plain, many, config), 3)
    predict_seconds = _best(lambda: plain.predict(many, batch_size=500, verbose=0), 3)
    return {
        "model": "MobileNetV2 alpha=0.35 32x32x3",
        "steps": steps,
        "batch_size": batch_size,
        "plain_fit_epoch_seconds": min(plain_seconds),
        "fat_epoch_seconds": min(fat_seconds),
        "fat_over_plain": min(fat_seconds) / min(plain_seconds),
        "same_trainer_without_faults_epoch_seconds": min(same_seconds),
        "fat_over_same_trainer_without_faults": min(fat_seconds) / min(same_seconds),
        "range_statistics_seconds": range_seconds,
        "inference_pass_seconds": predict_seconds,
        "range_examples": int(len(many)),
        "range_over_inference": range_seconds / predict_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=64)
    arguments = parser.parse_args()
    print(json.dumps(benchmark(arguments.steps, arguments.batch_size), indent=2))


if __name__ == "__main__":
    main()
