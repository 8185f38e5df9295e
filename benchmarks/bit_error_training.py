"""Seconds per random-bit-error-training epoch (int8 codes, per-bit flips, straight-through
gradients) vs the same trainer without faults, like for like.

    .venv/bin/python -m benchmarks.bit_error_training [--steps=40] [--batch_size=64]

The model is MobileNetV2-style (keras.applications.MobileNetV2, alpha 0.35, 32x32x3, 10
classes: BatchNormalization, depthwise convolutions), on random inputs. Both trainers are
`ClassifierTrainer`s with every BatchNormalization frozen and the same `tf.data` pipeline:
  * same trainer without faults: no fault kinds;
  * bit-error training: fault_aware_kinds=('bit_error',), fault_storage='int8', max rate
    0.02: every kernel quantised per channel, 8 coins per code, straight-through;
  * with the clean term (--fault_aware_clean_loss): the same, plus a fault-free pass per
    step (reported, no target: it is opt-in and costs a second forward and backward pass).
After a warm-up that absorbs tracing, interleaved, the best of 5 epochs each.
Target: bit-error training / the same trainer without faults <= 1.5.
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
from aftt_tf.training import trainers  # noqa: E402


def _trainer(**faults) -> trainers.ClassifierTrainer:
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    trainer = trainers.ClassifierTrainer(model, loss="crossentropy", **faults)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-4))
    return trainer


def benchmark(steps: int, batch_size: int) -> dict:
    count = steps * batch_size
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-1, 1, (count, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, count).astype(np.int32)
    dataset, _ = data.train_dataset(
        inputs, labels, batch_size, 0, 0, 100, transform=model_inputs.resolve("raw")
    )
    plain = _trainer()
    bit_errors = _trainer(
        fault_aware_kinds=("bit_error",), fault_aware_max_rate=0.02, fault_storage="int8"
    )
    clean_term = _trainer(
        fault_aware_kinds=("bit_error",),
        fault_aware_max_rate=0.02,
        fault_storage="int8",
        fault_aware_clean_loss=True,
    )
    runs = {
        "same_trainer_without_faults": plain,
        "bit_error_training": bit_errors,
        "bit_error_training_with_clean_loss": clean_term,
    }
    for trainer in runs.values():  # Traces.
        trainer.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    seconds = {name: [] for name in runs}
    for _ in range(5):  # Interleaved: load from other processes hits both alike.
        for name, trainer in runs.items():
            start = time.perf_counter()
            trainer.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
            seconds[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in seconds.items()}
    return {
        "model": "MobileNetV2 alpha=0.35 32x32x3",
        "steps": steps,
        "batch_size": batch_size,
        **{f"{name}_epoch_seconds": value for name, value in best.items()},
        "bit_error_over_same_trainer": best["bit_error_training"]
        / best["same_trainer_without_faults"],
        "with_clean_loss_over_same_trainer": best["bit_error_training_with_clean_loss"]
        / best["same_trainer_without_faults"],
        "target": "<= 1.5 (bit_error_training)",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(benchmark(args.steps, args.batch_size), indent=2))


if __name__ == "__main__":
    main()
