"""Keras models converted to .tflite as a user would (SavedModel export, then the
TFLite converter): float32, and full int8 calibrated on the first 100 examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf


def tflite_files(
    model, root: Path, name: str, calibration: np.ndarray, modes=("float32", "int8")
) -> dict[str, Path]:
    """{'float32': path, 'int8': path} (those of `modes`) of `model` written under `root`."""
    model.export(str(root / name), format="tf_saved_model", verbose=False)
    paths = {}
    for mode in modes:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(root / name))
        if mode == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: (
                [calibration[i : i + 1]] for i in range(100)
            )
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        paths[mode] = root / f"{name}_{mode}.tflite"
        paths[mode].write_bytes(converter.convert())
    return paths
