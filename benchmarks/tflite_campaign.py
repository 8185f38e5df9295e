"""TFLite fault-campaign throughput against the Keras campaign of the same model.

    .venv/bin/python -m benchmarks.tflite_campaign [--mlp_export=export/fmnist_mlp_aftt]

For fmnist_mlp and fmnist_cnn: images/s of a weight-fault campaign (rate 0.3) over the
10k Fashion-MNIST test set, for the float32 and int8 files with 1 and 2 threads,
next to the Keras campaign of the same model; and the cost of patching the buffers
(plus building the interpreter) per trial as a fraction of a trial. Exports are
made in a temporary directory from freshly initialised models unless given (speed
does not depend on the weights).
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

from aftt_tf.data import datasets as data  # noqa: E402
from aftt_tf.deploy import export_lib  # noqa: E402
from aftt_tf.faults.spec import FaultSpec  # noqa: E402
from aftt_tf.runtimes import keras_runner, tflite_runner  # noqa: E402
from aftt_tf.training import networks  # noqa: E402


def _export(architecture: str, root: Path) -> Path:
    keras.utils.set_random_seed(0)
    model_path = root / architecture / "classifier.keras"
    model_path.parent.mkdir(parents=True)
    networks.build_networks(architecture).classifier.save(model_path)
    out = root / f"{architecture}_export"
    export_lib.export_classifier(
        export_lib.ExportConfig(
            model=str(model_path),
            out=str(out),
            formats=("tflite_float32", "tflite_int8"),
            calibration_steps=20,
            test_examples=1000,
            dataset="fashion_mnist",
        )
    )
    return out


def _images_per_second(runner, trials: int) -> tuple[float, float]:
    runner.evaluate_cell(0.3, 0)  # Warm-up (trace / first interpreter).
    overhead_before = getattr(runner, "patch_seconds", 0.0) + getattr(runner, "build_seconds", 0.0)
    start = time.perf_counter()
    for trial in range(1, trials + 1):
        runner.evaluate_cell(0.3, trial)
    seconds = time.perf_counter() - start
    overhead = getattr(runner, "patch_seconds", 0.0) + getattr(runner, "build_seconds", 0.0)
    patch = overhead - overhead_before
    count = len(runner.labels) if hasattr(runner, "labels") else runner.num_examples
    return count * trials / seconds, patch / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlp_export", default="")
    parser.add_argument("--cnn_export", default="")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    images, labels = arrays["test"]
    spec = FaultSpec(kind="weight", rates=(0.3,), trials=args.trials)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        exports = {
            "fmnist_mlp": Path(args.mlp_export)
            if args.mlp_export
            else _export("fmnist_mlp", Path(temporary)),
            "fmnist_cnn": Path(args.cnn_export)
            if args.cnn_export
            else _export("fmnist_cnn", Path(temporary)),
        }
        for architecture, export_dir in exports.items():
            manifest = json.loads((export_dir / "manifest.json").read_text())
            keras_model = keras_runner.KerasModel(
                keras_runner.load_model(manifest["source_model"]["path"])
            )
            keras_rate, _ = _images_per_second(
                keras_model.runner(spec, images, labels, 2000), args.trials
            )
            rows.append(
                {
                    "architecture": architecture,
                    "runtime": "keras",
                    "threads": "all",
                    "images_per_second": keras_rate,
                    "patch_fraction": None,
                }
            )
            for file_name in ("model_float32.tflite", "model_int8.tflite"):
                for threads in (1, 2):
                    model = tflite_runner.TFLiteModel.load(
                        export_dir / file_name, num_threads=threads
                    )
                    rate, patch = _images_per_second(
                        model.runner(spec, images, labels, 1000), args.trials
                    )
                    rows.append(
                        {
                            "architecture": architecture,
                            "runtime": file_name,
                            "threads": threads,
                            "images_per_second": rate,
                            "patch_fraction": patch,
                        }
                    )
    print(f"weight faults at rate 0.3, {len(labels)} test images, {args.trials} trials per row")
    print("architecture  runtime               threads  images/s   patch+build share of a trial")
    for row in rows:
        patch = "" if row["patch_fraction"] is None else f"{100 * row['patch_fraction']:.1f}%"
        print(
            f"{row['architecture']:<13} {row['runtime']:<21} {row['threads']!s:>7}  "
            f"{row['images_per_second']:>8.0f}   {patch}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
