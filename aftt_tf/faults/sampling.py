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
class ValueFault:
    """How a faulted parameter element changes."""

    kind: str  # 'zero' | 'value' | 'bit'
    value: float | None = None  # For 'value'; None means the layer's max |w| (stuck at V_max).
    bit_position: int = -1  # For 'bit': 0..31, or -1 for a random position per element.
    bit_mode: str = "flip"


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


def parameter_fault(
    parameter: np.ndarray,
    positions: np.ndarray,
    value_fault: ValueFault,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(keep_mask, replacement) arrays that realise a fault at flat `positions`."""
    keep = np.ones(parameter.size, np.float32)
    replacement = np.zeros(parameter.size, np.float32)
    keep[positions] = 0.0
    if value_fault.kind == "value":
        value = value_fault.value
        if value is None:
            value = float(np.max(np.abs(parameter))) if parameter.size else 0.0
        replacement[positions] = value
    elif value_fault.kind == "bit":
        replacement[positions] = corrupt_bits(
            parameter.reshape(-1)[positions].astype(np.float32),
            rng,
            value_fault.bit_position,
            value_fault.bit_mode,
        )
    elif value_fault.kind != "zero":
        raise ValueError(f"Unknown value fault {value_fault.kind!r}.")
    return keep.reshape(parameter.shape), replacement.reshape(parameter.shape)


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """Which elements of each of a layer's kernels (Keras layout, flat) and its bias fail."""

    kernel_positions: tuple[np.ndarray, ...]
    bias_positions: np.ndarray
    faulted: int  # Elements, or filters for 'filter' faults.
    elements: int
    protected: int = 0  # Drawn kernel elements dropped because a plan protects them.


def plan_layer_fault(
    kernel_shapes: list[tuple[int, ...]],
    filter_axes: list[int | None],
    bias_size: int,
    kind: str,
    rate: float,
    rng_for,
    sampling: str,
    include_bias: bool,
    protected: list[np.ndarray | None] | None = None,
) -> LayerPlan:
    """Fault positions of one layer with one or more kernels, in the Keras layout.

    Keras and TFLite runtimes both draw positions here with the same generators, so one
    seed gives the same faulted elements everywhere; each runtime then writes the faulty
    values in its own representation. `rng_for(i)` is the generator of kernel i: the
    first kernel (and the bias, drawn after it) uses the layer's generator. 'filter'
    faults remove whole filters along each kernel's filter axis (the same filter indices
    in every kernel that has one). `protected[i]` (a protection plan's flat indices of
    kernel i) drops the drawn positions it holds, after drawing: the other positions are
    those of the unprotected campaign.
    """
    if kind == "filter":
        plan = _plan_filters(
            kernel_shapes, filter_axes, bias_size, rate, rng_for(0), sampling, include_bias
        )
    else:
        plan = _plan_elements(kernel_shapes, bias_size, rate, rng_for, sampling, include_bias)
    if not protected or all(p is None for p in protected):
        return plan
    kept = tuple(
        positions if guard is None else positions[~np.isin(positions, guard)]
        for positions, guard in zip(plan.kernel_positions, protected, strict=True)
    )
    dropped = sum(len(a) - len(b) for a, b in zip(plan.kernel_positions, kept, strict=True))
    faulted = plan.faulted if kind == "filter" else plan.faulted - dropped
    return LayerPlan(kept, plan.bias_positions, faulted, plan.elements, dropped)


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
