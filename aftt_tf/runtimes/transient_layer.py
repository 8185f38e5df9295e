"""*How* transient faults act in Keras: `ActivationFault`, inserted after a layer where a
node fault would go, corrupts the values of the current chunk of inferences.

A campaign evaluates its test set in fixed chunks inside one compiled loop. The layer
holds, for the whole cell, the flat positions (row * elements + element) of its faults
sorted by chunk, the bit of each ('activation_bit'), and where each chunk's faults
start; the loop writes the chunk's index into a variable the layer reads. Variables of
unknown length hold the positions, so a new cell is a few `assign`s and never a new
trace. With no positions assigned the layer is the identity.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

_WORDS = {tf.float32: tf.int32, tf.float16: tf.int16, tf.bfloat16: tf.int16, tf.float64: tf.int64}
_WIDTHS = {"float32": 32, "float16": 16, "bfloat16": 16, "float64": 64}


class ActivationFault(keras.layers.Layer):
    """Corrupts drawn values of a layer's output in drawn inferences (see module doc).

    Args:
        target: path of the layer whose output this is.
    """

    def __init__(self, target: str, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.target = target
        self.writes_value = False  # The kind sets values (True) or corrupts bits.
        self.bit_mode = "flip"
        self.value = 0.0
        self.chunk = None  # The campaign loop's chunk index (a shared tf.Variable).
        self.value_dtype = None  # The dtype of the values it corrupts, seen when called.
        self.elements = None  # Output elements of one inference.
        self.positions = tf.Variable(
            tf.zeros([0], tf.int32), shape=tf.TensorShape([None]), trainable=False
        )
        self.bits = tf.Variable(
            tf.zeros([0], tf.int32), shape=tf.TensorShape([None]), trainable=False
        )
        self.offsets = tf.Variable(
            tf.zeros([2], tf.int32), shape=tf.TensorShape([None]), trainable=False
        )

    def get_config(self):
        return {**super().get_config(), "target": self.target}

    def build(self, input_shape):
        dims = tuple(input_shape[1:])
        if any(d is None for d in dims):
            raise ValueError(
                f"Transient faults in {self.target!r} need a fixed output shape per "
                f"inference; it is {dims}. Give the model fixed input dimensions."
            )
        self.elements = int(np.prod(dims))
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs):
        self.value_dtype = keras.backend.standardize_dtype(inputs.dtype)
        return keras.KerasTensor(inputs.shape, dtype=inputs.dtype)

    @property
    def width(self) -> int:
        """Bits of each stored value (what a random bit position ranges over)."""
        if self.value_dtype not in _WIDTHS:
            raise ValueError(
                f"Transient bit faults in {self.target!r}: its outputs are "
                f"{self.value_dtype}, not a float type."
            )
        return _WIDTHS[self.value_dtype]

    def bind(self, kind, bit_mode: str, value: float | None, chunk: tf.Variable) -> None:
        """Sets the fault's meaning (a transient `kinds.FaultKind`: it sets values or
        corrupts bits) and the loop's chunk variable (before any trace)."""
        self.writes_value, self.bit_mode = kind.takes_value, bit_mode
        self.value = 0.0 if value is None else float(value)
        self.chunk = chunk

    def assign(self, positions: np.ndarray, bits: np.ndarray | None, offsets: np.ndarray):
        self.positions.assign(positions.astype(np.int32))
        self.bits.assign(
            np.zeros(len(positions), np.int32) if bits is None else bits.astype(np.int32)
        )
        self.offsets.assign(offsets.astype(np.int32))

    def call(self, inputs):
        self.value_dtype = keras.backend.standardize_dtype(inputs.dtype)
        if self.chunk is None:
            return inputs
        index = self.chunk.read_value()
        start, stop = self.offsets[index], self.offsets[index + 1]
        positions = self.positions[start:stop]
        flat = tf.reshape(inputs, [-1])
        if self.writes_value:
            new = tf.fill(tf.shape(positions), tf.cast(self.value, inputs.dtype))
        else:
            words = tf.bitcast(tf.gather(flat, positions), _WORDS[inputs.dtype])
            masks = tf.bitwise.left_shift(
                tf.ones_like(words), tf.cast(self.bits[start:stop], words.dtype)
            )
            if self.bit_mode == "flip":
                words = tf.bitwise.bitwise_xor(words, masks)
            elif self.bit_mode == "stuck_at_1":
                words = tf.bitwise.bitwise_or(words, masks)
            else:
                words = tf.bitwise.bitwise_and(words, tf.bitwise.invert(masks))
            new = tf.bitcast(words, inputs.dtype)
        flat = tf.tensor_scatter_nd_update(flat, positions[:, None], new)
        return tf.reshape(flat, tf.shape(inputs))
