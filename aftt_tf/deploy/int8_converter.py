"""The project's one full-integer converter setting, shared by every int8 file (PTQ, QAT,
fault-calibrated) so they stay quantized alike."""

from __future__ import annotations

import tensorflow as tf


def full_int8(converter, representative) -> None:
    """Sets `converter` to full-integer quantization with int8 input and output, calibrated
    on `representative`."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
