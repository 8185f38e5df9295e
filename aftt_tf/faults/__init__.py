"""Fault injection: *where* (targets), *what* (sampling), *how* (layers), campaigns."""

from aftt_tf.faults.layers import FaultyConv2D, FaultyDense, NodeFault
from aftt_tf.faults.targets import apply_faults, select_layers, strip_faults

__all__ = [
    "FaultyConv2D",
    "FaultyDense",
    "NodeFault",
    "apply_faults",
    "select_layers",
    "strip_faults",
]
