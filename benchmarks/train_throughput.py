"""Seconds per epoch of AFTT's unsupervised phase vs a supervised epoch, against FLOP ratios.

    .venv/bin/python -m benchmarks.train_throughput [--steps=100] [--batch_size=128]

For fmnist_mlp and fmnist_cnn, on the same extractor and batch size, measures one
epoch (after a warm-up epoch that absorbs tracing) of
  * the AdversarialAutoencoder train_step (Algorithm 1: Game 1, k=1 discriminator
    step, extractor step) and
  * the supervised ClassifierTrainer train_step,
and prints the time ratio next to the FLOP ratio of the two steps
(`complexity.aae_step_flops` / `complexity.supervised_step_flops`). Target: time
ratio <= 1.15 x FLOP ratio. Also prints the supervised phase's achieved GFLOP/s next
to this machine's float32 matmul rate measured in the same run (target >= 50%), and
the cost of fault-aware training (a fresh stuck-at-0 fault map every step) as the
ratio of its epoch time to the plain supervised epoch's.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from aftt_tf.data import datasets as data  # noqa: E402
from aftt_tf.training import complexity, networks, trainers  # noqa: E402
from benchmarks.common import matmul_gflops  # noqa: E402


class _EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def _epoch_seconds(trainer, dataset, steps) -> float:
    timer = _EpochTimer()
    # Epoch 1 traces; epoch 2 is timed.
    trainer.fit(dataset, epochs=2, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    return timer.seconds


def _images(steps: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        splits = data.load_splits("fashion_mnist", source="local", validation_fraction=0)
        return splits.train_images, splits.train_labels
    except data.DataUnavailableError:
        rng = np.random.default_rng(0)
        count = steps * batch_size
        return rng.integers(0, 256, (count, 28, 28, 1), np.uint8), rng.integers(0, 10, count)


def benchmark(architecture: str, steps: int, batch_size: int, jit_compile: bool) -> dict:
    images, labels = _images(steps, batch_size)
    images, labels = images[: steps * batch_size], labels[: steps * batch_size].astype(np.int32)
    keras.utils.set_random_seed(0)
    nets = networks.build_networks(architecture)
    autoencoder = trainers.AdversarialAutoencoder(
        nets.extractor, nets.decoder, nets.discriminator, seed=0
    )
    autoencoder.compile(
        keras.optimizers.Adam(1e-3),
        keras.optimizers.Adam(5e-5),
        keras.optimizers.Adam(5e-5),
        jit_compile=jit_compile,
    )
    classifier = trainers.ClassifierTrainer(nets.classifier)
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    unsupervised, steps_per_epoch = data.train_dataset(images, None, batch_size, 0, 0, 2)
    supervised, _ = data.train_dataset(images, labels, batch_size, 0, 0, 2)
    fault_aware = trainers.ClassifierTrainer(
        nets.classifier, fault_aware_kinds=("weight", "node"), fault_aware_max_rate=0.5
    )
    fault_aware.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    aae_seconds = _epoch_seconds(autoencoder, unsupervised, steps_per_epoch)
    supervised_seconds = _epoch_seconds(classifier, supervised, steps_per_epoch)
    fault_aware_seconds = _epoch_seconds(fault_aware, supervised, steps_per_epoch)
    cost = {
        name: complexity.model_complexity(getattr(nets, name))
        for name in ("extractor", "decoder", "discriminator", "classifier")
    }
    aae_flops = complexity.aae_step_flops(
        cost["extractor"], cost["decoder"], cost["discriminator"], discriminator_steps=1
    )
    supervised_flops = complexity.supervised_step_flops(cost["classifier"])
    flop_ratio = aae_flops / supervised_flops
    time_ratio = aae_seconds / supervised_seconds
    return {
        "architecture": architecture,
        "batch_size": batch_size,
        "steps": steps_per_epoch,
        "aae_seconds_per_epoch": aae_seconds,
        "supervised_seconds_per_epoch": supervised_seconds,
        "fault_aware_seconds_per_epoch": fault_aware_seconds,
        "fault_aware_over_supervised": fault_aware_seconds / supervised_seconds,
        "time_ratio": time_ratio,
        "flop_ratio": flop_ratio,
        "time_over_flop_ratio": time_ratio / flop_ratio,
        "supervised_gflops": supervised_flops
        * batch_size
        * steps_per_epoch
        / supervised_seconds
        / 1e9,
        "aae_gflops": aae_flops * batch_size * steps_per_epoch / aae_seconds / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--architectures", default="fmnist_mlp,fmnist_cnn")
    parser.add_argument("--jit_compile", action="store_true")
    parser.add_argument("--json", default="", help="Also write the results to this file.")
    args = parser.parse_args()
    peak = matmul_gflops()
    rows = [
        benchmark(name, args.steps, args.batch_size, args.jit_compile)
        for name in args.architectures.split(",")
    ]
    print(f"float32 matmul rate (2048^3, this machine, this run): {peak:.1f} GFLOP/s")
    header = (
        "architecture   aae s/epoch  sup s/epoch  time ratio  FLOP ratio  time/FLOP  "
        "sup GFLOP/s (% of matmul)  aae GFLOP/s  fat/sup time"
    )
    print(header)
    for row in rows:
        print(
            f"{row['architecture']:<14} {row['aae_seconds_per_epoch']:>11.2f}  "
            f"{row['supervised_seconds_per_epoch']:>11.2f}  {row['time_ratio']:>10.2f}  "
            f"{row['flop_ratio']:>10.2f}  {row['time_over_flop_ratio']:>9.2f}  "
            f"{row['supervised_gflops']:>11.1f} ({100 * row['supervised_gflops'] / peak:4.1f}%)"
            f"        {row['aae_gflops']:>8.1f}  {row['fault_aware_over_supervised']:>12.2f}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"matmul_gflops": peak, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
