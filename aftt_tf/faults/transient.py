"""*What* transient faults hit: per-inference positions in layer outputs, in numpy.

A transient (soft) fault corrupts one value of one inference and is gone at the next:
the model of TensorFI2, PyTorchFI and MRFI. A cell (rate, trial) of an
'activation_bit' or 'activation_value' campaign is a list of (inference, output
element) pairs per targeted layer, drawn here once for every runtime, so Keras and
.tflite runs of one seed corrupt the same values of the same inferences:

- per element (`faults_per_inference=0`): the rate is the share of all (inference,
  element) pairs of each layer's output that are faulted. 'exact' faults
  round(rate * examples * elements) distinct pairs, so a rate of 1e-6 still means
  faults on a large test set (a per-inference count would round to 0); 'bernoulli'
  draws that count from the binomial and then the pairs, the same distribution as an
  independent coin per pair.
- per inference (`faults_per_inference=N`): the rate is the share of inferences struck
  (round(rate * examples) of them, or a coin each); each struck inference gets N
  distinct faults placed uniformly over every targeted element of every layer
  (PyTorchFI's single-fault-per-inference model with N=1).

Bit faults draw the bit of each fault after its position (`bit_position=-1`), from the
stored width of that layer's values (32 for float32, 8 for int8 activations).
No TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from aftt_tf.faults import sampling
from aftt_tf.faults.spec import FaultSpec, FaultTargetError

# Faults one cell may hold in memory (positions and bits): past it, a campaign would
# spend its time drawing positions; fewer examples or a lower rate measure the same.
MAX_FAULTS_PER_CELL = 20_000_000
_INFERENCES_LABEL = "transient/inferences"


@dataclasses.dataclass(frozen=True)
class LayerFaults:
    """One layer's transient faults in one cell, sorted by inference.

    Attributes:
        examples: index of the inference (test example) of each fault.
        elements: flat index of the faulted value in that inference's output.
        bits: the bit each fault corrupts (activation_bit), else None.
    """

    examples: np.ndarray
    elements: np.ndarray
    bits: np.ndarray | None

    def __len__(self) -> int:
        return len(self.examples)

    def in_examples(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, Any]:
        """(examples, elements, bits) of the faults on examples start..stop-1."""
        low, high = np.searchsorted(self.examples, [start, stop])
        bits = None if self.bits is None else self.bits[low:high]
        return self.examples[low:high], self.elements[low:high], bits


def output_coverage(values: dict[str, int | None], storage) -> dict[str, Any]:
    """What a transient campaign reaches: each targeted layer's output values per
    inference and the type they are stored in (what a bit means)."""
    known = [v for v in values.values() if v is not None]
    return {
        "values_per_inference": dict(values),
        "total_values_per_inference": sum(known) if len(known) == len(values) else None,
        "stored_as": sorted(storage),
    }


def check_size(spec: FaultSpec, sizes: dict[str, int], num_examples: int) -> None:
    """FaultTargetError before any work when the largest rate's cells would hold more
    faults than MAX_FAULTS_PER_CELL, or when N faults cannot fit in one inference."""
    total = sum(sizes.values())
    if spec.timing.faults_per_inference > total:
        raise FaultTargetError(
            f"--faults_per_inference={spec.timing.faults_per_inference} is more than the "
            f"{total} output elements of the targeted layers in one inference."
        )
    check_rate(spec, sizes, num_examples, max(spec.rates))


def check_rate(spec: FaultSpec, sizes: dict[str, int], num_examples: int, rate: float) -> None:
    """FaultTargetError when a cell at `rate` would hold more than MAX_FAULTS_PER_CELL
    transient faults (checked again per cell: a cliff search probes rates of its own)."""
    total = sum(sizes.values())
    expected = (
        rate * num_examples * spec.timing.faults_per_inference
        if spec.timing.faults_per_inference
        else rate * num_examples * total
    )
    if expected > MAX_FAULTS_PER_CELL:
        raise FaultTargetError(
            f"At rate {rate:g} a cell holds about {expected:,.0f} transient faults over "
            f"{num_examples} inferences, more than {MAX_FAULTS_PER_CELL:,}; transient rates "
            "are small (1e-7 to 1e-3 per value): lower --rates, or evaluate fewer examples."
        )


def plan_cell(
    spec: FaultSpec,
    sizes: dict[str, int],
    widths: dict[str, int],
    num_examples: int,
    rate: float,
    trial: int,
) -> dict[str, LayerFaults]:
    """The transient faults of cell (rate, trial): per layer (model order of `sizes`,
    output elements of one inference), sorted by inference. `widths` are the stored
    bits of each layer's values (what a random bit position ranges over)."""
    check_rate(spec, sizes, num_examples, rate)
    if spec.timing.faults_per_inference:
        return _per_inference(spec, sizes, widths, num_examples, rate, trial)
    result = {}
    for name, size in sizes.items():
        rng = sampling.trial_rng(spec.seed, spec.kind, name, rate, trial)
        population = num_examples * size
        flat = np.sort(
            _distinct(population, _count(population, rate, rng, spec.placement.sampling), rng)
        )
        examples, elements = np.divmod(flat, size)
        result[name] = LayerFaults(examples, elements, _bits(spec, widths[name], len(flat), rng))
    return result


def _per_inference(spec, sizes, widths, num_examples, rate, trial) -> dict[str, LayerFaults]:
    rng = sampling.trial_rng(spec.seed, spec.kind, _INFERENCES_LABEL, rate, trial)
    struck = np.sort(
        _distinct(num_examples, _count(num_examples, rate, rng, spec.placement.sampling), rng)
    )
    per = spec.timing.faults_per_inference
    names = sorted(sizes)  # One order for every runtime (their layer orders may differ).
    total = sum(sizes.values())
    flat = _distinct_rows(len(struck), total, per, rng)  # (struck, per) in 0..total-1.
    examples = np.repeat(struck, per)
    flat = flat.reshape(-1)
    starts = np.cumsum([0, *(sizes[name] for name in names)])
    layer_of = np.searchsorted(starts, flat, side="right") - 1
    bit_width = np.array([widths[name] for name in names])[layer_of]
    bits = spec.fault_kind.draw_bits(spec, bit_width, len(flat), rng)
    result = {}
    for index, name in enumerate(names):
        chosen = np.flatnonzero(layer_of == index)  # Already ordered by inference.
        result[name] = LayerFaults(
            examples[chosen],
            flat[chosen] - starts[index],
            None if bits is None else bits[chosen],
        )
    return result


def _count(population: int, rate: float, rng: np.random.Generator, how: str) -> int:
    if how == "exact":
        return int(round(rate * population))
    if how == "bernoulli":  # The number of heads of `population` coins, then which.
        return int(rng.binomial(population, rate))
    raise ValueError(f"Unknown sampling {how!r}.")


def _distinct(population: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct integers in [0, population), uniformly."""
    if count == 0:
        return np.empty(0, np.int64)
    if count == population:
        return np.arange(population, dtype=np.int64)
    if count * 50 < population:  # Floyd's algorithm inside numpy: memory of the count.
        return rng.choice(population, size=count, replace=False).astype(np.int64)
    return rng.permutation(population)[:count].astype(np.int64)


def _distinct_rows(rows: int, population: int, count: int, rng) -> np.ndarray:
    """(rows, count) integers in [0, population), distinct within each row."""
    if rows == 0 or count == 0:
        return np.empty((rows, count), np.int64)
    if count * 4 > population:  # Dense: a permutation per row.
        return np.stack([rng.permutation(population)[:count] for _ in range(rows)])
    draws = rng.integers(0, population, size=(rows, count))
    while True:  # Rows with a repeated value are drawn again, whole.
        ordered = np.sort(draws, axis=1)
        repeated = np.flatnonzero(np.any(ordered[:, 1:] == ordered[:, :-1], axis=1))
        if not len(repeated):
            return draws
        draws[repeated] = rng.integers(0, population, size=(len(repeated), count))


def _bits(spec: FaultSpec, width: int, count: int, rng) -> np.ndarray | None:
    return spec.fault_kind.draw_bits(spec, width, count, rng)


def corrupt(values: np.ndarray, bits: np.ndarray | None, spec: FaultSpec, stored=None):
    """The faulty versions of `values` (the faulted elements, as stored): the kind's
    `corrupt_outputs` (bits flipped or stuck per `spec.value.bit_mode`, or the stuck value;
    `stored`: that value in the tensor's own encoding, for quantized outputs)."""
    return spec.fault_kind.corrupt_outputs(values, bits, spec, stored)
