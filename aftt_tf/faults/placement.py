"""*What* one cell faults in one layer, for every runtime: element positions drawn by
`sampling`, or placed by a systolic array's faulty PEs (`systolic`), less what a
protection plan protects. The Keras and .tflite runtimes both call these, each with its
own view of the layer's kernels (in the Keras layout), so one seed places the same faults
in both. No TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from aftt_tf.faults import kinds, sampling, systolic


def kernel_generators(
    spec, name: str, attributes: tuple[str, ...], rate: float, trial: int, layer_rng
) -> Callable[[int], np.random.Generator]:
    """`rng_for(i)`: the generator of kernel i of layer `name`: the layer's own for kernel
    0 (its bias is drawn after it), else a fresh one labelled 'LAYER/ATTRIBUTE'."""

    def rng_for(index: int) -> np.random.Generator:
        if index == 0:
            return layer_rng
        label = f"{name}/{attributes[index]}"
        return sampling.trial_rng(spec.seed, spec.kind, label, rate, trial)

    return rng_for


def parameter_plan(
    spec,
    pes: np.ndarray | None,
    guard,
    name: str,
    kernel_shapes: list[tuple[int, ...]],
    filter_axes: list[int | None],
    attributes: tuple[str, ...],
    bias_size: int,
    rate: float,
    rng_for,
    widths: tuple[list[int], int] | None = None,
) -> sampling.LayerPlan:
    """The kernel (and bias) positions of one layer in one cell: the weight registers of
    the faulty PEs `pes` (weight stationary), or drawn per element; a protection plan
    (`guard`) drops the drawn positions it covers. `widths`: bits per stored kernel and
    bias element (per-bit kinds)."""
    if pes is not None:
        return systolic.layer_plan(spec.placement.array, kernel_shapes, pes)
    return sampling.plan_layer_fault(
        kernel_shapes,
        filter_axes,
        bias_size,
        spec.fault_kind,
        rate,
        rng_for,
        spec.placement.sampling,
        spec.selection.include_bias,
        None if guard is None else [guard.indices(name, attribute) for attribute in attributes],
        widths,
    )


def output_positions(spec, pes: np.ndarray | None, shape, rate: float, rng) -> np.ndarray:
    """Flat positions of one inference's output (`shape`, no batch) that node faults hold
    at 0: the accumulators of the faulty PEs (output stationary), or drawn per unit."""
    if pes is None:
        return sampling.sample_positions(int(np.prod(shape)), rate, rng, spec.placement.sampling)
    return systolic.output_positions(tuple(shape), pes, *systolic.parse_array(spec.placement.array))


def stored_fault(
    stored, positions: np.ndarray, kind, spec, rng, bits: sampling.BitMasks | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(positions, values): `stored.values` with `kind`'s faults, by `kind.corrupt` at
    `positions` or, with per-bit faults `bits`, by `kind.corrupt_bits` at theirs."""
    if bits is not None:
        return bits.positions, kind.corrupt_bits(stored, bits)
    return positions, kind.corrupt(stored, positions, rng, spec)


def int8_kernel_fault(
    codes, positions: np.ndarray, kind, spec, rng, bits: sampling.BitMasks | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(keep_mask, replacement) of a kernel held as int8 codes (`int8_storage.Int8Codes`):
    every element is replaced by what its (faulty) code holds, so the clean elements
    take their quantised values too."""
    _, faulty = stored_fault(codes, positions, kind, spec, rng, bits)
    return np.zeros(codes.shape, np.float32), codes.kernel(faulty)


def parameter_fault(
    parameter: np.ndarray,
    positions: np.ndarray,
    kind,
    spec,
    rng: np.random.Generator,
    bits: sampling.BitMasks | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(keep_mask, replacement) arrays that realise `kind`'s faults at flat `positions`
    of a float parameter (a Keras variable's values): `kind.corrupt`, or with per-bit
    faults `bits`, `kind.corrupt_bits`."""
    stored = kinds.FloatValues(np.asarray(parameter, np.float32).reshape(-1))
    positions, faulty = stored_fault(stored, positions, kind, spec, rng, bits)
    keep = np.ones(parameter.size, np.float32)
    replacement = np.zeros(parameter.size, np.float32)
    keep[positions] = 0.0
    replacement[positions] = faulty[positions]
    return keep.reshape(parameter.shape), replacement.reshape(parameter.shape)


def cell_counts(names, count_of, protected_counts: dict, pes) -> dict:
    """A cell's fault counts, the same record in every runtime: per layer (faulted,
    elements and, with a protection plan, the drawn elements it dropped), the totals, and
    a systolic array's faulty PEs. `count_of(name)` places the layer's faults."""
    per_layer, faulted, total = {}, 0, 0
    for name in names:
        count, elements = count_of(name)
        per_layer[name] = {"faulted": count, "elements": elements}
        if name in protected_counts:
            per_layer[name]["protected"] = protected_counts[name]
        faulted, total = faulted + count, total + elements
    result = {"faulted": faulted, "elements": total, "per_layer": per_layer}
    if pes is not None:
        result["faulty_pes"] = len(pes)
    return result
