"""Where an int8 model loses its fault tolerance: per-layer activation statistics under
a campaign's faults (aftt-faults --per_layer_stats, aftt-reproduce's int8 diagnosis).

For every weight layer of a full-int8 .tflite, at each rate, with the campaign's fault
positions: the range of the layer's output and how many of the 256 int8 levels it uses
(read from the interpreter's intermediate tensors), how much of it sits on the clamp
levels -128/127, and how much of the calibrated range it spans. The Keras float32
model under the same faults gives the same numbers for its float outputs quantized with
the file's scales: what the activations would use if every earlier layer were exact.
A layer whose levels collapse as the rate grows is where faulty activations fall below
the resolution that calibration on the fault-free network chose.

The .tflite side needs only numpy and ai-edge-litert; the Keras side imports Keras.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aftt_tf.data import inputs
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import tflite_file

INT8_MIN, INT8_MAX = -128, 127


def level_statistics(levels: np.ndarray, scale: float, zero_point: int) -> dict[str, Any]:
    """Statistics of int8 activation values (any shape) with their quantization."""
    levels = np.asarray(levels).astype(np.int64).ravel()
    values = (levels - zero_point) * scale
    calibrated_low = (INT8_MIN - zero_point) * scale
    calibrated_high = (INT8_MAX - zero_point) * scale
    width = calibrated_high - calibrated_low
    return {
        "distinct_levels": int(np.unique(levels).size),
        # Clamped values: on -128 or 127 unless that level is the zero point (a ReLU
        # output's -128 is an exact 0, not a clipped value).
        "saturated_fraction": float(
            np.mean(((levels == INT8_MIN) | (levels == INT8_MAX)) & (levels != zero_point))
        ),
        "zero_fraction": float(np.mean(levels == zero_point)),
        "min": float(values.min()),
        "max": float(values.max()),
        "range_used": float((values.max() - values.min()) / width) if width else 0.0,
        "mean_abs": float(np.mean(np.abs(values))),
        "scale": float(scale),
        "zero_point": int(zero_point),
        "calibrated_range": [float(calibrated_low), float(calibrated_high)],
    }


def quantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float values as the int8 levels a tensor with this quantization would hold
    (rounding half away from zero, as TFLite's requantization does)."""
    scaled = np.asarray(values, np.float64) / scale
    levels = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + zero_point
    return np.clip(levels, INT8_MIN, INT8_MAX).astype(np.int64)


def _activation_tensor(layer) -> int:
    """The tensor after the layer's activation (its node point), else its operator output."""
    return layer.node_tensor if layer.node_tensor is not None else layer.output_tensor


def activation_quantization(model) -> dict[str, tuple[float, int]]:
    """{layer: (scale, zero_point)} of each weight layer's int8 activation tensor."""
    interpreter = model.interpreter(model.content)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    result = {}
    for name, layer in model.layers.items():
        if layer.subgraph:  # A loop body's tensors are not the main graph's.
            continue
        detail = details[_activation_tensor(layer)]
        scale, zero_point = detail["quantization"]
        if detail["dtype"] == np.int8 and scale:
            result[name] = (float(scale), int(zero_point))
    if not result:
        raise ValueError(
            f"{model.path} has no int8 activations (a float32, float16 or dynamic-range "
            "file); per-layer int8 statistics need a full-int8 file."
        )
    return result


def tflite_cells(model, spec: FaultSpec, images: np.ndarray):
    """A function of (rate, trial) -> per-layer statistics of a full-int8 .tflite under
    that cell of `spec`; the file is parsed (and rewritten for node masks) once."""
    from aftt_tf.runtimes.tflite_runner import TFLiteRunner

    quantization = activation_quantization(model)
    runner = TFLiteRunner(  # `images` are model inputs already: passed as they are.
        model, spec, images, np.zeros(len(images), np.int64), len(images), inputs.resolve("raw")
    )
    tensors = {name: _activation_tensor(model.layers[name]) for name in quantization}

    def cell(rate: float, trial: int) -> dict[str, dict[str, Any]]:
        runner.inject(rate, trial)
        values = tflite_file.tensor_values(model, runner.buffer, runner.inputs, tensors.values())
        return {
            name: level_statistics(values[index], *quantization[name])
            for name, index in tensors.items()
        }

    return cell


# Keras layers a converter fuses into (or places after) the operator before them; which
# tensor the file's node point then holds cannot be told from the Keras side.
_ACTIVATION_LAYERS = ("Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax")


def keras_points(model, names) -> tuple[dict[str, str], dict[str, str]]:
    """For each .tflite layer name, the Keras layer whose output the file's activation
    tensor holds: the layer itself, or the BatchNormalization that alone reads it (the
    converter folds it in). Returns (name -> Keras layer, name -> why left out)."""
    from aftt_tf.runtimes import targets

    points, left_out = {}, {}
    for name in names:
        if not _has_layer(model, name):
            left_out[name] = "no Keras layer of this name"
            continue
        point = targets.normalization_after(model, name) or name
        readers = targets.readers(model, point)
        if len(readers) == 1 and type(readers[0]).__name__ in _ACTIVATION_LAYERS:
            left_out[name] = (
                f"a separate {type(readers[0]).__name__} layer follows; whether the file's "
                "tensor holds its output or its input cannot be told"
            )
            continue
        points[name] = point
    return points, left_out


def keras_cells(model, spec: FaultSpec, images: np.ndarray, quantization: dict):
    """A function of (rate, trial) -> per-layer statistics of the Keras model's float
    outputs under that cell, quantized with the int8 file's `quantization`; and the
    layers left out with the reason. One faulty copy and one probe serve every cell."""
    import keras

    from aftt_tf.runtimes import keras_runner, targets

    if not targets.rewritable(model):
        reason = "a subclassed Keras model: its layer outputs cannot be read"
        return None, {name: reason for name in quantization}
    points, left_out = keras_points(model, list(quantization))
    names = keras_runner.KerasModel(model).select_layers(spec)
    faulty = targets.apply_faults(model, spec.kind, names)
    injector = keras_runner.FaultInjector(faulty, spec, names, in_place=False)
    probe = keras.Model(faulty.inputs, [faulty.get_layer(p).output for p in points.values()])
    inputs = np.asarray(images, np.float32)

    def cell(rate: float, trial: int) -> dict[str, dict[str, Any]]:
        injector.inject(rate, trial)
        outputs = probe(inputs, training=False)  # Eager: nothing is traced per cell.
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        result = {}
        for name, values in zip(points, outputs, strict=True):
            values = np.asarray(values)
            scale, zero_point = quantization[name]
            stats = level_statistics(quantize(values, scale, zero_point), scale, zero_point)
            stats["float_min"], stats["float_max"] = float(values.min()), float(values.max())
            result[name] = stats
        return result

    return cell, left_out


def _has_layer(model, name: str) -> bool:
    try:
        model.get_layer(name)
    except ValueError:
        return False
    return True


def summarize(per_trial: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Mean over trials of each layer's statistics (numbers only)."""
    result = {}
    for name in per_trial[0]:
        rows = [trial[name] for trial in per_trial]
        result[name] = {
            key: float(np.mean([row[key] for row in rows]))
            for key in ("distinct_levels", "saturated_fraction", "zero_fraction", "range_used")
        }
        result[name].update(
            {
                "min": min(row["min"] for row in rows),
                "max": max(row["max"] for row in rows),
                "scale": rows[0]["scale"],
                "zero_point": rows[0]["zero_point"],
                "trials": len(rows),
            }
        )
    return result


def diagnose(
    tflite_model,
    spec: FaultSpec,
    images: np.ndarray,
    trials: int = 3,
    keras_model=None,
) -> dict[str, Any]:
    """Per rate, the per-layer statistics (mean over `trials` fault maps) of the .tflite
    and, when given, of the Keras model with the file's scales (layers it cannot match are
    listed in keras_left_out). `images` are model inputs (floats in [0, 1] for our
    classifiers); a few hundred are plenty."""
    quantization = activation_quantization(tflite_model)
    tflite_cell = tflite_cells(tflite_model, spec, images)
    keras_cell, left_out = (None, {})
    if keras_model is not None:
        keras_cell, left_out = keras_cells(keras_model, spec, images, quantization)
    result: dict[str, Any] = {
        "kind": spec.kind,
        "trials": trials,
        "images": len(images),
        "layers": list(quantization),
        "keras_left_out": left_out,
        "rates": {},
    }
    for rate in spec.rates:
        count = 1 if rate == 0 else trials
        entry = {"tflite": summarize([tflite_cell(rate, t) for t in range(count)])}
        if keras_cell is not None:
            entry["keras"] = summarize([keras_cell(rate, t) for t in range(count)])
        result["rates"][f"{rate:g}"] = entry
    return result
