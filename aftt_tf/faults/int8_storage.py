"""A Keras kernel as an int8 `.tflite` stores it: per-channel symmetric int8 codes, the
way the TFLite converter quantises weights (scale = max |w| of the channel / 127, codes
rounded half away from zero into [-127, 127]), so `--storage=int8` campaigns and random
bit-error training fault the same codes as the deployed file. No TensorFlow.

A BatchNormalization the converter folds into the layer multiplies each output channel
by gamma / sqrt(var + eps): the file then stores the folded kernel, whose codes are the
unfolded codes times the sign of that factor (same magnitude, same scale up to the
factor's size). `Int8Codes` takes those signs so it flips the bits the file holds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CODE_LIMIT = 127


def channel_axes(shape: tuple[int, ...], filter_axis: int | None) -> tuple[int, ...]:
    """Axes that index one quantisation channel of a Keras kernel: the last (output
    units of Dense, output channels of convolutions) and a depthwise kernel's input
    channel axis (its file channel is input x multiplier)."""
    rank = len(shape)
    axes = {rank - 1}
    if filter_axis is not None:
        axes.add(filter_axis % rank)
    return tuple(sorted(axes))


def round_half_away(values: np.ndarray) -> np.ndarray:
    """Rounding as TFLite's quantiser does (std::round), not numpy's half to even."""
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


@dataclasses.dataclass
class Int8Codes:
    """A kernel's int8 codes (`kinds.StoredValues`, flat) with each element's scale and
    the sign its channel is stored with."""

    values: np.ndarray  # int8 codes, flat, as the file stores them.
    scales: np.ndarray  # float64 per element (flat).
    signs: np.ndarray  # +1/-1 per element: the folded normalisation's sign.
    shape: tuple[int, ...]

    def reals(self) -> np.ndarray:
        """The stored (folded-sign) real values."""
        return self.values.astype(np.float64) * self.scales

    def zero(self, positions: np.ndarray) -> np.ndarray:
        return np.zeros(len(positions), np.int8)

    def encode(self, value: float, positions: np.ndarray) -> np.ndarray:
        codes = round_half_away(value / self.scales[positions])
        return np.clip(codes, -CODE_LIMIT, CODE_LIMIT).astype(np.int8)

    def kernel(self, codes: np.ndarray | None = None) -> np.ndarray:
        """The Keras kernel (unfolded sign) that `codes` (default: the clean ones) hold."""
        codes = self.values if codes is None else codes
        reals = codes.astype(np.float64) * self.scales * self.signs
        return reals.reshape(self.shape).astype(np.float32)


def quantize(
    kernel: np.ndarray, filter_axis: int | None, channel_signs: np.ndarray | None = None
) -> Int8Codes:
    """`kernel`'s per-channel int8 codes; `channel_signs` (one per output channel, the
    last axis): the signs of a folded normalisation's factors (None: all +1)."""
    kernel = np.asarray(kernel, np.float32)
    axes = channel_axes(kernel.shape, filter_axis)
    reduce = tuple(axis for axis in range(kernel.ndim) if axis not in axes)
    largest = np.max(np.abs(kernel), axis=reduce, keepdims=True).astype(np.float64)
    scales = np.where(largest > 0, largest / CODE_LIMIT, 1.0)
    codes = np.clip(round_half_away(kernel / scales), -CODE_LIMIT, CODE_LIMIT)
    signs = np.ones(kernel.shape)
    if channel_signs is not None:
        signs = np.broadcast_to(np.asarray(channel_signs, np.float64), kernel.shape)
    stored = (codes * signs).astype(np.int8)
    return Int8Codes(
        stored.reshape(-1),
        np.broadcast_to(scales, kernel.shape).reshape(-1).copy(),
        np.array(signs).reshape(-1),
        tuple(kernel.shape),
    )


def tensor_codes(kernel, filter_axis: int | None):
    """TensorFlow (codes as float, scales) of `quantize` for training: the same channels,
    scale and rounding (imported lazily: this module serves .tflite-only installs too)."""
    import tensorflow as tf

    rank = len(kernel.shape)
    axes = channel_axes(tuple(kernel.shape), filter_axis)
    reduce = [axis for axis in range(rank) if axis not in axes]
    largest = tf.reduce_max(tf.abs(kernel), axis=reduce, keepdims=True)
    scales = tf.where(largest > 0, largest / CODE_LIMIT, tf.ones_like(largest))
    scaled = kernel / scales
    codes = tf.clip_by_value(
        tf.sign(scaled) * tf.floor(tf.abs(scaled) + 0.5), -CODE_LIMIT, CODE_LIMIT
    )
    return codes, scales


def straight_through(kernel, faulty):
    """`faulty` forward, the identity backward (the gradient reaches `kernel` as if the
    quantisation and faults were not there: random bit error training, Stutz et al.)."""
    import tensorflow as tf

    return kernel + tf.stop_gradient(faulty - kernel)


def quantized(kernel, filter_axis: int | None):
    """The kernel's int8 values (codes x scales), straight-through."""
    codes, scales = tensor_codes(kernel, filter_axis)
    return straight_through(kernel, codes * scales)


def flip_code_bits(codes, flips):
    """Int8 `codes` (float tensor) with the bits of `flips` (int32 masks, 0..255) flipped
    in their two's-complement bytes, as stored."""
    import tensorflow as tf

    words = tf.bitwise.bitwise_and(tf.cast(codes, tf.int32), 0xFF)
    words = tf.bitwise.bitwise_xor(words, flips)
    return tf.cast(tf.where(words >= 128, words - 256, words), codes.dtype)
