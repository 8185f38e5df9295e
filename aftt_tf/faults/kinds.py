"""Fault kinds, each defined once as an object: what it strikes, which spec fields it
takes and how a faulted value is computed, for a Keras variable and for values as a
.tflite file stores them (float32, float16, int8 codes). No TensorFlow.

Runners, placement, spec checks, the CLI and training ask the kind object; no other
module compares a kind's name. A new kind is a subclass registered with `register`
(see docs/architecture.md; tests/new_fault_kind_test.py defines one in a test file).

Families:
- 'parameter': permanent faults in stored parameters (kernels, biases), drawn per cell.
- 'output': permanent faults that hold layer outputs (node: stuck-at-0 units).
- 'transient': faults in layer outputs drawn anew for every inference.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

import numpy as np

from aftt_tf.faults import sampling

PARAMETER = "parameter"
OUTPUT = "output"
TRANSIENT = "transient"
FAMILIES = (PARAMETER, OUTPUT, TRANSIENT)


class StoredValues(Protocol):
    """One tensor's values as a runtime stores them, and how real values map to them."""

    values: np.ndarray  # Flat, in the stored type (float32, float16, int8, int32, ...).

    def reals(self) -> np.ndarray:
        """Every element's real value (dequantised for integer storage)."""
        ...

    def zero(self, positions: np.ndarray) -> np.ndarray:
        """What the elements at `positions` store to hold real 0 (an int8 zero point)."""
        ...

    def encode(self, value: float, positions: np.ndarray) -> np.ndarray:
        """What the elements at `positions` store to hold real `value` (quantised with
        their scales and zero points, clipped to the type's range)."""
        ...


@dataclasses.dataclass
class FloatValues:
    """Float storage: a Keras variable's host copy, or a float tensor of a file."""

    values: np.ndarray

    def reals(self) -> np.ndarray:
        return self.values.astype(np.float64)

    def zero(self, positions: np.ndarray) -> np.ndarray:
        return np.zeros(len(positions), self.values.dtype)

    def encode(self, value: float, positions: np.ndarray) -> np.ndarray:
        return np.full(len(positions), value, self.values.dtype)


class FaultKind:
    """One fault kind. Subclasses set the class attributes and override what differs.

    Attributes:
        name: the value of --fault and `FaultSpec.kind` (part of every campaign key).
        family: PARAMETER, OUTPUT or TRANSIENT.
        summary: one line for --help and the docs.
        whole_filters: positions are whole filters (convolutions only).
        per_element: faults single stored elements, so it can also reach normalisation
            constants, int8 quantisation metadata (--targets) and a systolic array's
            weight registers.
        non_finite: its faults can make outputs NaN or infinite.
        bit_meaning: its rate or position means a bit of the stored format, so models
            storing weights differently cannot be paired in one campaign.
        needs_value: --stuck_value is required.
        takes_value: --stuck_value is read.
        output_stationary: an output_stationary array's stuck accumulators realise it.
        stuck_at_zero: its faults hold elements at 0 (masks: repair, fault calibration).
        trainable: fault-aware training can draw it each step.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = PARAMETER
    summary: ClassVar[str] = ""
    whole_filters: ClassVar[bool] = False
    per_element: ClassVar[bool] = False
    non_finite: ClassVar[bool] = False
    bit_meaning: ClassVar[bool] = False
    needs_value: ClassVar[bool] = False
    takes_value: ClassVar[bool] = False
    output_stationary: ClassVar[bool] = False
    stuck_at_zero: ClassVar[bool] = False
    trainable: ClassVar[bool] = False
    per_bit: ClassVar[bool] = False  # The rate is per stored bit (sampling.BitMasks positions).

    @property
    def on_parameters(self) -> bool:
        return self.family == PARAMETER

    @property
    def on_outputs(self) -> bool:
        """Placed after a layer, on its output (node and transient kinds)."""
        return self.family in (OUTPUT, TRANSIENT)

    @property
    def transient(self) -> bool:
        return self.family == TRANSIENT

    def check(self, spec: Any) -> None:
        """Kind-specific spec checks; ValueError naming the flag and the fix."""

    # Parameter kinds ---------------------------------------------------------------
    def corrupt(
        self, stored: StoredValues, positions: np.ndarray, rng: np.random.Generator, spec: Any
    ) -> np.ndarray:
        """A copy of `stored.values` with this kind's faults at flat `positions` (in the
        stored layout); `rng` is the cell's generator of the tensor."""
        raise NotImplementedError(f"{self.name} faults do not act on parameters.")

    def corrupt_bits(self, stored: StoredValues, faults: sampling.BitMasks) -> np.ndarray:
        """Per-bit kinds: a copy of `stored.values` with `faults.masks` flipped."""
        raise NotImplementedError(f"{self.name} faults are not drawn per bit.")

    # Transient kinds -----------------------------------------------------------------
    def draw_bits(self, spec: Any, widths, count: int, rng: np.random.Generator):
        """Bit of each of `count` transient faults (None: the kind writes values, not
        bits); `widths`: the stored width, one for all or one per fault."""
        return None

    def corrupt_outputs(
        self, values: np.ndarray, bits: np.ndarray | None, spec: Any, stored=None
    ) -> np.ndarray:
        """Transient kinds: the faulty versions of the struck output values."""
        raise NotImplementedError(f"{self.name} faults do not act on layer outputs.")

    def __repr__(self) -> str:
        return f"FaultKind({self.name!r}, {self.family})"


class _StuckAtZero(FaultKind):
    family = PARAMETER
    stuck_at_zero = True
    trainable = True

    def corrupt(self, stored, positions, rng, spec):
        values = np.array(stored.values, copy=True)
        values[positions] = stored.zero(positions)
        return values


class WeightKind(_StuckAtZero):
    name = "weight"
    summary = "stuck-at-0 weights (kernel elements)"
    per_element = True


class FilterKind(_StuckAtZero):
    name = "filter"
    summary = "stuck-at-0 convolution filters (whole output channels)"
    whole_filters = True


class StuckValueKind(FaultKind):
    name = "stuck_value"
    summary = "weights stuck at --stuck_value (default: the tensor's max |w|)"
    per_element = True
    non_finite = True
    takes_value = True

    def stuck_value(self, stored: StoredValues, spec: Any) -> float:
        if spec.stuck_value is not None:
            return float(spec.stuck_value)
        return float(np.max(np.abs(stored.reals()))) if stored.values.size else 0.0

    def corrupt(self, stored, positions, rng, spec):
        values = np.array(stored.values, copy=True)
        values[positions] = stored.encode(self.stuck_value(stored, spec), positions)
        return values


class BitKind(FaultKind):
    name = "bit"
    summary = "one bit per faulted weight (--bit_position, --bit_mode), the rate per weight"
    per_element = True
    non_finite = True
    bit_meaning = True

    def corrupt(self, stored, positions, rng, spec):
        values = np.array(stored.values, copy=True)
        values[positions] = sampling.corrupt_bits(
            values[positions], rng, spec.bit_position, spec.bit_mode
        )
        return values


class BitErrorKind(FaultKind):
    """Random bit errors in weight memory: the rate is the probability that each stored
    bit flips, independently (several bits of one weight can flip), as low-voltage SRAM
    and the bit-error literature state it (RandBET, Stutz et al., MLSys 2021). Exact
    sampling flips round(rate * bits) distinct bits of each tensor."""

    name = "bit_error"
    summary = "random bit errors: each stored bit of each weight flips with the rate"
    non_finite = True
    bit_meaning = True
    per_bit = True

    def check(self, spec):
        if spec.bit_position != -1 or spec.bit_mode != "flip":
            raise ValueError(
                "--fault=bit_error flips every stored bit with the rate, independently: "
                "--bit_position and --bit_mode do not apply (use --fault=bit for one "
                "chosen bit per weight)."
            )

    def corrupt_bits(self, stored, faults):
        values = np.array(stored.values, copy=True)
        if not len(faults.positions):
            return values
        unsigned = sampling.unsigned_type(values.dtype)
        words = values.view(unsigned)
        words[faults.positions] ^= faults.masks.astype(unsigned)
        return values


class NodeKind(FaultKind):
    name = "node"
    family = OUTPUT
    summary = "stuck-at-0 layer outputs (hidden units, feature-map elements)"
    output_stationary = True
    stuck_at_zero = True
    trainable = True


class ActivationBitKind(FaultKind):
    name = "activation_bit"
    family = TRANSIENT
    summary = "transient bit flips in layer outputs, drawn anew for every inference"
    non_finite = True
    bit_meaning = True

    def draw_bits(self, spec, widths, count, rng):
        if spec.bit_position >= 0:
            return np.full(count, spec.bit_position, np.int32)
        if np.ndim(widths) == 0:
            return rng.integers(0, widths, size=count).astype(np.int32)
        return rng.integers(0, widths).astype(np.int32)

    def corrupt_outputs(self, values, bits, spec, stored=None):
        return sampling.set_bits(np.asarray(values), bits, spec.bit_mode)


class ActivationValueKind(FaultKind):
    name = "activation_value"
    family = TRANSIENT
    summary = "transient layer outputs set to --stuck_value, drawn anew for every inference"
    non_finite = True
    needs_value = True
    takes_value = True

    def check(self, spec):
        if spec.stuck_value is None:
            raise ValueError(
                "--fault=activation_value needs the value the faulted outputs take: give "
                "--stuck_value (e.g. 1e4 for a large corrupted activation)."
            )

    def corrupt_outputs(self, values, bits, spec, stored=None):
        values = np.asarray(values)
        value = spec.stuck_value if stored is None else stored
        return np.full(values.shape, value, values.dtype)


_KINDS: dict[str, FaultKind] = {}


def register(kind: FaultKind | type[FaultKind]) -> FaultKind:
    """Makes `kind` available to every campaign, the CLI (--fault=NAME, from an --import
    module) and training. Registering a second kind under a taken name is refused."""
    kind = kind() if isinstance(kind, type) else kind
    if not kind.name or not kind.name.isidentifier():
        raise ValueError(f"A fault kind needs a name made of letters, digits and _: {kind.name!r}.")
    if kind.family not in FAMILIES:
        raise ValueError(f"Fault kind {kind.name!r}: family must be one of {FAMILIES}.")
    taken = _KINDS.get(kind.name)
    if taken is not None and type(taken) is not type(kind):
        raise ValueError(
            f"A fault kind named {kind.name!r} is already registered ({type(taken).__name__}); "
            "give yours another name."
        )
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Removes a registered kind (tests; a campaign directory keeps its kind's name)."""
    _KINDS.pop(name, None)


def get(name: str) -> FaultKind:
    """The kind named `name`; ValueError listing the registered kinds otherwise."""
    kind = _KINDS.get(name)
    if kind is None:
        raise ValueError(f"Unknown fault kind {name!r}; expected one of {', '.join(_KINDS)}.")
    return kind


def names(family: str | None = None, **traits: bool) -> tuple[str, ...]:
    """Registered kind names (of one family, with these trait values), in registration
    order: `names(per_element=True)`."""
    return tuple(
        n
        for n, k in _KINDS.items()
        if (family is None or k.family == family)
        and all(getattr(k, trait) == value for trait, value in traits.items())
    )


def trainable_names() -> tuple[str, ...]:
    """Kinds fault-aware training can draw each step."""
    return tuple(n for n, k in _KINDS.items() if k.trainable)


for _kind in (
    WeightKind,
    FilterKind,
    NodeKind,
    StuckValueKind,
    BitKind,
    ActivationBitKind,
    ActivationValueKind,
    BitErrorKind,
):
    register(_kind)


def resolve(kind: FaultKind | str) -> FaultKind:
    """A kind object from itself or its registered name (public functions take both)."""
    return kind if isinstance(kind, FaultKind) else get(kind)


def trainable(requested, flag: str = "fault_aware_kinds") -> tuple[FaultKind, ...]:
    """The kind objects of a fault-aware training's `requested` names; ValueError naming
    the flag and the kinds training can draw otherwise."""
    allowed = trainable_names()
    unknown = [name for name in requested if name not in allowed]
    if unknown or not requested:
        raise ValueError(
            f"{flag} must be a non-empty list of {', '.join(allowed)} (the kinds fault-aware "
            f"training can draw each step), received {list(requested)}."
        )
    return tuple(get(name) for name in requested)
