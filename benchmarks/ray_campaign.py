"""A campaign on Ray workers against the local runner, on this machine.

    .venv/bin/python -m benchmarks.ray_campaign [--workers=2] [--trials=8]

For a Keras fmnist_cnn and its int8 .tflite file (freshly initialised: speed does not
depend on the weights), one weight-fault campaign on the full 10k Fashion-MNIST test
set, run (1) by the local runner in this process and (2) on a local Ray instance with
`--workers` actors of one CPU each. Reported separately: Ray's fixed start-up cost
(`ray.init`, the actors' start with their imports, and each actor building its runner:
model transfer, data transfer, compilation) and the time the cells take once running,
with the ratio local / Ray for the cells and for the whole run. Checks that both runs
give identical cells.
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

from aftt_tf.campaigns import cell_log, ray_executor
from aftt_tf.campaigns import engine as campaign  # noqa: E402
from aftt_tf.data import datasets as data  # noqa: E402
from aftt_tf.faults.spec import FaultSpec  # noqa: E402
from aftt_tf.runtimes import keras_runner, tflite_runner  # noqa: E402
from aftt_tf.training import networks  # noqa: E402


def _models(root: Path, images: np.ndarray) -> dict[str, object]:
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = networks.build_networks("fmnist_cnn").classifier
    model.export(str(root / "saved"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(root / "saved"))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [images[i : i + 1].astype(np.float32) / 255.0] for i in range(50)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    (root / "model_int8.tflite").write_bytes(converter.convert())
    return {
        "keras": keras_runner.KerasModel(model),
        "int8": tflite_runner.TFLiteModel(root / "model_int8.tflite"),
    }


def _cells(out: Path) -> list[dict]:
    return sorted(
        cell_log.read_cells(out / cell_log.CELLS_FILE),
        key=lambda c: (c["model"], c["rate"], c["trial"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    import ray

    arrays, _ = data.load_arrays("fashion_mnist", source="local")
    images, labels = arrays["test"]
    spec = FaultSpec(kind="weight", rates=(0.1, 0.2, 0.3, 0.4, 0.5), trials=args.trials)
    cells = len(spec.rates) * spec.trials
    report = {"cpus": os.cpu_count(), "workers": args.workers, "examples": len(labels)}
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        models = _models(root, images[:50])
        for name, model in models.items():
            options = {"progress": False, "allow_chance_accuracy": True}
            start = time.perf_counter()
            campaign.run_campaign(
                {name: model}, spec, images, labels, root / f"local_{name}", **options
            )
            local_seconds = time.perf_counter() - start

            start = time.perf_counter()
            ray.init(num_cpus=os.cpu_count(), log_to_driver=False, include_dashboard=False)
            init_seconds = time.perf_counter() - start
            config = ray_executor.RayConfig(workers=args.workers)
            with ray_executor.RayExecutor(config) as executor:
                actor_seconds = time.perf_counter() - start - init_seconds
                ray_cells = []
                first_cell = []

                def on_cell(cell, first_cell=first_cell, ray_cells=ray_cells):
                    ray_cells.append(time.perf_counter())
                    if not first_cell:
                        first_cell.append(time.perf_counter())

                before = time.perf_counter()
                campaign.run_campaign(
                    {name: model},
                    spec,
                    images,
                    labels,
                    root / f"ray_{name}",
                    executor=executor,
                    on_cell=on_cell,
                    **options,
                )
                ray_total = time.perf_counter() - start
            ray.shutdown()
            identical = _cells(root / f"local_{name}") == _cells(root / f"ray_{name}")
            # The clean-accuracy check and the actors' runner builds precede the first cell.
            prepare_seconds = first_cell[0] - before
            cell_seconds = ray_cells[-1] - first_cell[0]
            local_per_cell = local_seconds / cells
            ray_per_cell = cell_seconds / max(1, cells - 1)
            report[name] = {
                "cells": cells,
                "local_seconds": round(local_seconds, 2),
                "ray_init_seconds": round(init_seconds, 2),
                "ray_actor_start_seconds": round(actor_seconds, 2),
                "ray_prepare_and_first_cell_seconds": round(prepare_seconds, 2),
                "ray_fixed_startup_seconds": round(
                    init_seconds + actor_seconds + prepare_seconds, 2
                ),
                "ray_cells_seconds": round(cell_seconds, 2),
                "ray_total_seconds": round(ray_total, 2),
                "local_seconds_per_cell": round(local_per_cell, 3),
                "ray_seconds_per_cell": round(ray_per_cell, 3),
                "cells_ratio_local_over_ray": round(local_per_cell / ray_per_cell, 2),
                "total_ratio_local_over_ray": round(local_seconds / ray_total, 2),
                "identical_cells": identical,
            }
            print(json.dumps({name: report[name]}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
