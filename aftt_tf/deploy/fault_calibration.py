"""Fault-aware int8 calibration: activation ranges measured on the faulty network.

Post-training int8 quantization fixes every activation tensor's scale from its range on
the representative data, measured on the fault-free network. Stuck-at-0 faults shrink
the activations, layer after layer, so under faults the deep tensors (and the logits)
fall onto a handful of int8 levels (aftt-faults --per_layer_stats shows it). Here the
converter calibrates as usual, then every tensor's recorded range is replaced by the
mean, over fault draws at the given rates (0 = fault-free operation), of the range the
float network computes with those faults in its weights (or nodes); the weights
themselves stay clean. The MLIR quantizer then builds the full-int8 file from those
ranges, exactly as the converter does from its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

from aftt_tf.data import inputs
from aftt_tf.deploy import int8_converter
from aftt_tf.faults import kinds
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import tflite_file, tflite_runner


@dataclasses.dataclass(frozen=True)
class FaultCalibration:
    """Faults the calibration ranges are measured under.

    Attributes:
        kind: 'weight', 'filter' or 'node'.
        rates: fault rates of the draws (0: fault-free); each range is the mean over all
            draws of every rate.
        draws: fault maps per rate (seeds 0..draws-1 of `seed`).
        seed: seed of the fault positions (use another seed than the campaigns').
    """

    kind: str = "weight"
    rates: tuple[float, ...] = (0.0, 0.3, 0.6)
    draws: int = 4
    seed: int = 1000

    def validate(self) -> None:
        held_at_zero = kinds.names(stuck_at_zero=True)
        if self.kind not in held_at_zero:
            raise ValueError(
                f"fault calibration kind must be one of {', '.join(held_at_zero)}, received "
                f"{self.kind!r}."
            )
        if not self.rates or any(not 0.0 <= rate < 1.0 for rate in self.rates):
            raise ValueError(
                f"fault calibration rates must be fractions in [0, 1), received {list(self.rates)}."
            )
        if self.draws < 1:
            raise ValueError(f"fault calibration draws must be >= 1, received {self.draws}.")

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "rates": [float(r) for r in self.rates]}


def calibrated_float_model(saved_model: str, representative) -> bytes:
    """The converter's calibration result: the float model with a min/max per tensor."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    int8_converter.full_int8(converter, representative)
    converter._experimental_calibrate_only = True  # The converter's own calibration step.
    return converter.convert()


def recorded_ranges(content: bytes) -> dict[int, tuple[float, float]]:
    """{tensor index: (min, max)} the calibration recorded (graph 0)."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    ranges = {}
    for index, tensor in enumerate(model.subgraphs[0].tensors):
        quantization = tensor.quantization
        if quantization is not None and quantization.min is not None and len(quantization.min):
            ranges[index] = (float(quantization.min[0]), float(quantization.max[0]))
    return ranges


def faulty_ranges(
    calibrated: bytes, images: np.ndarray, calibration: FaultCalibration
) -> dict[int, tuple[float, float]]:
    """Mean over fault draws of each recorded tensor's (min, max) on `images`."""
    model = tflite_runner.TFLiteModel.from_bytes(calibrated, "calibrated.tflite")
    tensors = sorted(recorded_ranges(calibrated))
    spec = FaultSpec(
        kind=calibration.kind,
        rates=tuple(calibration.rates),
        trials=calibration.draws,
        seed=calibration.seed,
    )
    runner = tflite_runner.TFLiteRunner(  # `images` are model inputs already.
        model, spec, images, np.zeros(len(images)), len(images), inputs.resolve("raw")
    )
    lows, highs = [], []
    for rate in calibration.rates:
        for draw in range(calibration.draws):
            runner.inject(rate, draw)
            values = tflite_file.tensor_values(model, runner.buffer, runner.inputs, tensors)
            lows.append([float(values[i].min()) for i in tensors])
            highs.append([float(values[i].max()) for i in tensors])
    low, high = np.mean(lows, axis=0), np.mean(highs, axis=0)
    return {index: (float(lo), float(hi)) for index, lo, hi in zip(tensors, low, high, strict=True)}


def with_ranges(content: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
    """The calibrated model with these recorded ranges (every other byte as it was)."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    tensors = model.subgraphs[0].tensors
    for index, (low, high) in ranges.items():
        quantization = tensors[index].quantization or schema.QuantizationParametersT()
        quantization.min = np.array([min(low, 0.0)], np.float32)
        quantization.max = np.array([max(high, 0.0)], np.float32)
        tensors[index].quantization = quantization
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quantize_calibrated(content: bytes) -> bytes:
    """Full-int8 quantization of a calibrated model (int8 input and output), as the
    converter quantizes after its own calibration."""
    from tensorflow.lite.python import convert

    return convert.mlir_quantize(
        content,
        disable_per_channel=False,
        input_data_type=tf.int8,
        output_data_type=tf.int8,
    )


def fault_calibrated_int8(
    saved_model: str, representative, calibration: FaultCalibration
) -> tuple[bytes, dict[str, Any]]:
    """The full-int8 file calibrated under `calibration`'s faults, and a record of the
    ranges it changed (how many tensors, the median ratio of new to clean width)."""
    calibration.validate()
    calibrated = calibrated_float_model(saved_model, representative)
    images = np.concatenate([batch[0] for batch in representative()])
    clean = recorded_ranges(calibrated)
    ranges = faulty_ranges(calibrated, images, calibration)
    ratios = [
        (ranges[i][1] - ranges[i][0]) / (clean[i][1] - clean[i][0])
        for i in ranges
        if clean[i][1] > clean[i][0]
    ]
    content = quantize_calibrated(with_ranges(calibrated, ranges))
    record = {
        **calibration.as_dict(),
        "tensors_recalibrated": len(ranges),
        "median_width_ratio": float(np.median(ratios)) if ratios else None,
        "ranges": "mean over draws of each tensor's min and max on the representative data",
    }
    return content, record


def per_rate_int8(
    saved_model: str, representative, kind: str, rates: tuple[float, ...], draws: int, seed: int
) -> dict[float, bytes]:
    """One full-int8 file per fault rate, each calibrated under faults at that rate only
    (a chip whose fault rate was measured runs the file of its rate). The converter's
    calibration runs once; each rate measures its ranges and quantizes."""
    calibrated = calibrated_float_model(saved_model, representative)
    images = np.concatenate([batch[0] for batch in representative()])
    files = {}
    for rate in rates:
        calibration = FaultCalibration(kind=kind, rates=(rate,), draws=draws, seed=seed)
        calibration.validate()
        ranges = faulty_ranges(calibrated, images, calibration)
        files[float(rate)] = quantize_calibrated(with_ranges(calibrated, ranges))
    return files
