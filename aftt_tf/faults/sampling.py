"""*What* is faulted: seeded sampling of fault positions and faulty values, in numpy.

Seeds are derived from (campaign seed, fault kind, layer name, rate, trial) only,
so two models with the same architecture evaluated with the same seed see the
same fault positions: comparisons between training methods are paired.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from aftt_tf.vocabulary import BIT_MODES, SAMPLINGS


@dataclasses.dataclass(frozen=True)
class BitMasks:
    """Per-bit faults of one tensor: the elements hit (distinct, ascending) and, per
    element, the bits flipped as an OR of 1 << bit of the stored word."""

    positions: np.ndarray
    masks: np.ndarray  # uint64, one per position.

    @property
    def bits(self) -> int:
        return int(np.sum(np.bitwise_count(self.masks))) if len(self.masks) else 0

    def keep(self, chosen: np.ndarray) -> BitMasks:
        return BitMasks(self.positions[chosen], self.masks[chosen])


def bit_masks(
    num_elements: int, width: int, rate: float, rng: np.random.Generator, sampling: str
) -> BitMasks:
    """Per-bit faults over `num_elements` words of `width` bits: each bit with
    probability `rate` ('bernoulli') or round(rate * bits) distinct bits ('exact')."""
    drawn = sample_positions(num_elements * width, rate, rng, sampling)
    elements, inverse = np.unique(drawn // width, return_inverse=True)
    masks = np.zeros(len(elements), np.uint64)
    np.bitwise_or.at(masks, inverse, np.left_shift(np.uint64(1), (drawn % width).astype(np.uint64)))
    return BitMasks(elements.astype(np.int64), masks)


def trial_rng(seed: int, kind: str, layer: str, rate: float, trial: int) -> np.random.Generator:
    """Generator for one (layer, rate, trial) cell, independent of the model's weights."""
    key = [
        int(seed),
        zlib.crc32(kind.encode()),
        zlib.crc32(layer.encode()),
        int(round(rate * 1_000_000)),
        int(trial),
    ]
    return np.random.default_rng(np.random.SeedSequence(key))


def sample_positions(
    num_elements: int, rate: float, rng: np.random.Generator, sampling: str
) -> np.ndarray:
    """Flat indices of faulted elements.

    'exact': round(rate * n) distinct elements, uniformly without replacement.
    'bernoulli': each element independently with probability `rate` (paper Fig. 1).
    """
    if sampling == "exact":
        count = int(round(rate * num_elements))
        if count == 0:
            return np.empty(0, np.int64)
        if count == num_elements:
            return np.arange(num_elements)
        # Unsorted on purpose: sorting costs 4x the draw, and every runtime uses this order.
        return rng.choice(num_elements, size=count, replace=False)
    if sampling == "bernoulli":
        return np.flatnonzero(rng.random(num_elements) < rate)
    raise ValueError(f"Unknown sampling {sampling!r}; expected one of {', '.join(SAMPLINGS)}.")


_UNSIGNED = {
    np.dtype(np.float32): np.uint32,
    np.dtype(np.float16): np.uint16,
    np.dtype(np.int8): np.uint8,
    np.dtype(np.uint8): np.uint8,
    np.dtype(np.int16): np.uint16,
    np.dtype(np.int32): np.uint32,
    np.dtype(np.int64): np.uint64,
}


def unsigned_type(dtype) -> type:
    """The unsigned integer type of a value type's width (what its bits are read as)."""
    dtype = np.dtype(dtype)
    if dtype not in _UNSIGNED:
        raise ValueError(f"Bit faults support float32/16 and integer values, received {dtype}.")
    return _UNSIGNED[dtype]


def corrupt_bits(
    values: np.ndarray, rng: np.random.Generator, bit_position: int, bit_mode: str
) -> np.ndarray:
    """Values (float32/16, int8/16/32/64, uint8) with one bit, chosen or random per
    element, flipped or stuck: the bits as stored. float32: bit 31 is the sign, 30..23 the
    exponent, 22..0 the mantissa; float16: 15, 14..10, 9..0.
    """
    if bit_mode not in BIT_MODES:
        raise ValueError(f"Unknown bit_mode {bit_mode!r}; expected one of {', '.join(BIT_MODES)}.")
    values = np.asarray(values)
    unsigned_type(values.dtype)  # A clear error for a type without a bit layout here.
    num_bits = values.dtype.itemsize * 8
    if not -1 <= bit_position < num_bits:
        raise ValueError(
            f"bit_position must be in 0..{num_bits - 1} for {values.dtype} (or -1: random), "
            f"received {bit_position}."
        )
    if bit_position >= 0:
        positions = np.full(values.shape, bit_position)
    else:
        positions = rng.integers(0, num_bits, size=values.shape)
    return set_bits(values, positions, bit_mode)


def set_bits(values: np.ndarray, bits: np.ndarray, bit_mode: str) -> np.ndarray:
    """`values` with bit `bits[i]` of element i flipped or stuck (`bit_mode`), on the bits
    as stored (see `corrupt_bits`)."""
    values = np.asarray(values)
    unsigned = unsigned_type(values.dtype)
    words = np.ascontiguousarray(values).view(unsigned).copy()
    masks = np.left_shift(unsigned(1), np.asarray(bits).astype(unsigned)).astype(unsigned)
    if bit_mode == "flip":
        words ^= masks
    elif bit_mode == "stuck_at_1":
        words |= masks
    elif bit_mode == "stuck_at_0":
        words &= ~masks
    else:
        raise ValueError(f"Unknown bit_mode {bit_mode!r}; expected one of {', '.join(BIT_MODES)}.")
    return words.view(values.dtype)


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """Which elements of each of a layer's kernels (Keras layout, flat) and its bias fail."""

    kernel_positions: tuple[np.ndarray, ...]
    bias_positions: np.ndarray
    faulted: int  # Elements, filters for 'filter' faults, bits for per-bit kinds.
    elements: int
    protected: int = 0  # Drawn kernel elements dropped because a plan protects them.
    kernel_bits: tuple[BitMasks, ...] | None = None  # Per-bit kinds: the bits of each.
    bias_bits: BitMasks | None = None


def plan_layer_fault(
    kernel_shapes: list[tuple[int, ...]],
    filter_axes: list[int | None],
    bias_size: int,
    kind,
    rate: float,
    rng_for,
    sampling: str,
    include_bias: bool,
    protected: list[np.ndarray | None] | None = None,
    widths: tuple[list[int], int] | None = None,
) -> LayerPlan:
    """Fault positions of one layer with one or more kernels, in the Keras layout.

    Keras and TFLite runtimes both draw positions here with the same generators, so one
    seed gives the same faulted elements everywhere; each runtime then writes the faulty
    values in its own representation. `rng_for(i)` is the generator of kernel i: the
    first kernel (and the bias, drawn after it) uses the layer's generator. `kind` (a
    `kinds.FaultKind`) with `whole_filters` removes whole filters along each kernel's
    filter axis (the same filter indices in every kernel that has one); a `per_bit` kind
    draws bits of the stored words, `widths` = (bits per kernel element, per bias
    element). `protected[i]` (a protection plan's flat indices of kernel i) drops the
    drawn positions it holds, after drawing: the other positions are those of the
    unprotected campaign.
    """
    if kind.whole_filters:
        plan = _plan_filters(
            kernel_shapes, filter_axes, bias_size, rate, rng_for(0), sampling, include_bias
        )
    elif kind.per_bit:
        if widths is None:
            raise ValueError(f"{kind.name} faults are drawn per bit: give the stored widths.")
        plan = _plan_bits(kernel_shapes, bias_size, widths, rate, rng_for, sampling, include_bias)
    else:
        plan = _plan_elements(kernel_shapes, bias_size, rate, rng_for, sampling, include_bias)
    if not protected or all(p is None for p in protected):
        return plan
    chosen = [
        np.ones(len(positions), bool) if guard is None else ~np.isin(positions, guard)
        for positions, guard in zip(plan.kernel_positions, protected, strict=True)
    ]
    kept = tuple(p[c] for p, c in zip(plan.kernel_positions, chosen, strict=True))
    dropped = sum(len(a) - len(b) for a, b in zip(plan.kernel_positions, kept, strict=True))
    if plan.kernel_bits is not None:
        bits = tuple(b.keep(c) for b, c in zip(plan.kernel_bits, chosen, strict=True))
        faulted = sum(b.bits for b in bits) + (plan.bias_bits.bits if plan.bias_bits else 0)
        return dataclasses.replace(
            plan, kernel_positions=kept, faulted=faulted, protected=dropped, kernel_bits=bits
        )
    faulted = plan.faulted if kind.whole_filters else plan.faulted - dropped
    return LayerPlan(kept, plan.bias_positions, faulted, plan.elements, dropped)


def _plan_bits(kernel_shapes, bias_size, widths, rate, rng_for, sampling, include_bias):
    kernel_widths, bias_width = widths
    masks, faulted, elements = [], 0, 0
    bias = BitMasks(np.empty(0, np.int64), np.empty(0, np.uint64))
    for index, shape in enumerate(kernel_shapes):
        size = int(np.prod(shape))
        rng = rng_for(index)
        masks.append(bit_masks(size, kernel_widths[index], rate, rng, sampling))
        faulted, elements = faulted + masks[-1].bits, elements + size * kernel_widths[index]
        if index == 0 and include_bias and bias_size:
            bias = bit_masks(bias_size, bias_width, rate, rng, sampling)
            faulted, elements = faulted + bias.bits, elements + bias_size * bias_width
    positions = tuple(m.positions for m in masks)
    return LayerPlan(positions, bias.positions, faulted, elements, 0, tuple(masks), bias)


def _plan_elements(kernel_shapes, bias_size, rate, rng_for, sampling, include_bias):
    positions, faulted, elements = [], 0, 0
    bias = np.empty(0, np.int64)
    for index, shape in enumerate(kernel_shapes):
        size = int(np.prod(shape))
        rng = rng_for(index)
        positions.append(sample_positions(size, rate, rng, sampling))
        faulted, elements = faulted + len(positions[-1]), elements + size
        if index == 0 and include_bias and bias_size:
            bias = sample_positions(bias_size, rate, rng, sampling)
            faulted, elements = faulted + len(bias), elements + bias_size
    return LayerPlan(tuple(positions), bias, faulted, elements)


def _plan_filters(kernel_shapes, filter_axes, bias_size, rate, rng, sampling, include_bias):
    axis = next(a for a in filter_axes if a is not None)
    count = kernel_shapes[filter_axes.index(axis)][axis]
    filters = sample_positions(count, rate, rng, sampling)
    positions = tuple(
        np.empty(0, np.int64) if a is None else filter_positions(shape, filters, a)
        for shape, a in zip(kernel_shapes, filter_axes, strict=True)
    )
    bias = np.empty(0, np.int64)
    if include_bias and bias_size:
        group = bias_size // count  # Depthwise: one bias per (channel, multiplier).
        bias = (filters[:, None] * group + np.arange(group)[None, :]).reshape(-1)
    return LayerPlan(positions, bias, len(filters), count)


def filter_positions(
    kernel_shape: tuple[int, ...], filters: np.ndarray, axis: int = -1
) -> np.ndarray:
    """Flat kernel indices of whole filters: the slices at `filters` along `axis`
    (Conv2D kernels are H, W, in, out: axis -1)."""
    grid = np.arange(int(np.prod(kernel_shape))).reshape(kernel_shape)
    return np.sort(np.take(grid, filters, axis=axis).reshape(-1))
