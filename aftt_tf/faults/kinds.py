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
    takes_value: ClassVar[bool] = False
    output_stationary: ClassVar[bool] = False
    stuck_at_zero: ClassVar[bool] = False
    trainable: ClassVar[bool] = False
    # Why fault-aware training cannot draw a kind (said when it is asked for).
    training_refusal: ClassVar[str] = ""
    # Storages fault-aware training can draw it in ('float32' variables, 'int8' codes).
    training_storages: ClassVar[tuple[str, ...]] = ("float32", "int8")
    training_max_rate: ClassVar[float] = 1.0  # Largest fault-aware max rate that makes sense.
    per_bit: ClassVar[bool] = False  # The rate is per stored bit (sampling.BitMasks positions).
    # Why its training faults need each struck output bounded before the next layer
    # reads it ('': they do not); trainers say it when they refuse an unbounded output.
    training_needs_bounds: ClassVar[str] = ""

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

    # Training ----------------------------------------------------------------------
    def training_value(self, variable, rate, seed, step: TrainingStep):
        """This training step's faulty value of `variable` (a kernel; for output kinds a
        node mask of ones) at `rate`, drawn with the stateless `seed`: TensorFlow, the
        gradient reaching the fault-free elements (straight-through for int8 codes)."""
        raise NotImplementedError(f"Fault-aware training cannot draw {self.name} faults.")

    def training_outputs(self, outputs, rate, seed, value):
        """Transient kinds: this training step's faulty `outputs` of one layer (a batch),
        each element struck with probability `rate`, drawn anew for every inference
        (row) with the stateless `seed`; `value` is what a value kind writes."""
        raise NotImplementedError(f"Fault-aware training cannot draw {self.name} faults.")

    def training_faults(self, variable, rate, seed, step: TrainingStep):
        """`training_value`, the elements a protection plan covers kept clean (what the
        trainer calls: every kind honours a plan the same way)."""
        faulty = self.training_value(variable, rate, seed, step)
        return faulty if step.guard is None else step.protect(variable, faulty)

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


class _HeldAtZero(FaultKind):
    """Elements held at 0 (kernel elements, filters, layer outputs): one training draw,
    a keep mask; kernels and node masks alike are multiplied by it."""

    stuck_at_zero = True
    trainable = True

    def training_value(self, variable, rate, seed, step):
        import tensorflow as tf

        uniform = tf.random.stateless_uniform(self._draw_shape(variable, step), seed=seed)
        keep = tf.cast(uniform >= rate, variable.dtype)
        return step.stored(variable) * self._spread(keep, variable, step)

    def _draw_shape(self, variable, step):
        return variable.shape

    def _spread(self, keep, variable, step):
        return keep


class _StuckAtZero(_HeldAtZero):
    family = PARAMETER

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

    def training_value(self, variable, rate, seed, step):
        if step.filter_axis is None:  # A kernel without filters (Dense) keeps them all.
            return step.stored(variable)
        return super().training_value(variable, rate, seed, step)

    def _draw_shape(self, variable, step):
        return [variable.shape[step.filter_axis]]

    def _spread(self, keep, variable, step):
        shape = [1] * len(variable.shape)
        shape[step.filter_axis] = variable.shape[step.filter_axis]
        import tensorflow as tf

        return tf.reshape(keep, shape)


class StuckValueKind(FaultKind):
    name = "stuck_value"
    summary = "weights stuck at --stuck_value (default: the tensor's max |w|)"
    per_element = True
    non_finite = True
    takes_value = True
    trainable = True  # At the campaigns' default value: the tensor's largest |w|.

    def stuck_value(self, stored: StoredValues, spec: Any) -> float:
        if spec.value.stuck_value is not None:
            return float(spec.value.stuck_value)
        return float(np.max(np.abs(stored.reals()))) if stored.values.size else 0.0

    def corrupt(self, stored, positions, rng, spec):
        values = np.array(stored.values, copy=True)
        values[positions] = stored.encode(self.stuck_value(stored, spec), positions)
        return values

    def training_value(self, variable, rate, seed, step):
        import tensorflow as tf

        held = step.stored(variable)
        uniform = tf.random.stateless_uniform(variable.shape, seed=seed)
        faulted = tf.cast(uniform < rate, variable.dtype)
        value = tf.stop_gradient(tf.reduce_max(tf.abs(held)))  # The campaigns' default.
        return held * (1 - faulted) + faulted * value


class BitKind(FaultKind):
    name = "bit"
    summary = "one bit per faulted weight (--bit_position, --bit_mode), the rate per weight"
    per_element = True
    non_finite = True
    bit_meaning = True
    trainable = True
    training_storages = ("int8",)  # A float32 exponent flip would make the loss Inf.

    def training_value(self, variable, rate, seed, step):
        import tensorflow as tf

        uniform = tf.random.stateless_uniform([2, *variable.shape], seed=seed)
        faulted = tf.cast(uniform[0] < rate, tf.int32)
        bits = tf.cast(tf.floor(uniform[1] * 8), tf.int32)
        return step.flipped(variable, faulted * tf.bitwise.left_shift(1, bits))

    def corrupt(self, stored, positions, rng, spec):
        values = np.array(stored.values, copy=True)
        values[positions] = sampling.corrupt_bits(
            values[positions], rng, spec.value.bit_position, spec.value.bit_mode
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
    trainable = True
    training_storages = ("int8",)  # Random bit error training (RandBET) on int8 codes.
    training_max_rate = 0.1

    def training_value(self, variable, rate, seed, step):
        import tensorflow as tf

        uniform = tf.random.stateless_uniform([*variable.shape, 8], seed=seed)
        flips = tf.cast(uniform < rate, tf.int32) * tf.bitwise.left_shift(1, tf.range(8))
        return step.flipped(variable, tf.reduce_sum(flips, axis=-1))

    def check(self, spec):
        if spec.value.bit_position != -1 or spec.value.bit_mode != "flip":
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


class NodeKind(_HeldAtZero):
    name = "node"
    family = OUTPUT
    summary = "stuck-at-0 layer outputs (hidden units, feature-map elements)"
    output_stationary = True


class ActivationBitKind(FaultKind):
    name = "activation_bit"
    family = TRANSIENT
    summary = "transient bit flips in layer outputs, drawn anew for every inference"
    non_finite = True
    bit_meaning = True
    trainable = True
    training_needs_bounds = (
        "a flipped float32 exponent bit makes a struck output up to 3.4e38 or infinite, "
        "which makes the loss infinite"
    )

    def draw_bits(self, spec, widths, count, rng):
        if spec.value.bit_position >= 0:
            return np.full(count, spec.value.bit_position, np.int32)
        if np.ndim(widths) == 0:
            return rng.integers(0, widths, size=count).astype(np.int32)
        return rng.integers(0, widths).astype(np.int32)

    def corrupt_outputs(self, values, bits, spec, stored=None):
        return sampling.set_bits(np.asarray(values), bits, spec.value.bit_mode)

    def training_outputs(self, outputs, rate, seed, value):
        """One uniformly drawn bit of the float32 word flipped in each struck output, as a
        campaign's default (--bit_position=-1, --bit_mode=flip) on a Keras model. A flip
        that makes a NaN (an exponent bit of a value in [1, 2)) is trained as an infinity
        of its sign, which the bound after the layer saturates: a NaN has no order to
        clip and no gradient to learn from. Gradients reach the unstruck outputs only."""
        import tensorflow as tf

        shape = tf.shape(outputs)
        uniform = tf.random.stateless_uniform(tf.concat([[2], shape], 0), seed=seed)
        struck = uniform[0] < rate
        bits = tf.cast(tf.floor(uniform[1] * 32), tf.int32)
        words = tf.bitcast(tf.cast(outputs, tf.float32), tf.int32)
        words = tf.bitwise.bitwise_xor(words, tf.bitwise.left_shift(1, bits))
        flipped = tf.bitcast(words, tf.float32)
        infinity = tf.where(words < 0, -np.inf, np.inf)  # The sign bit as flipped.
        flipped = tf.where(tf.math.is_nan(flipped), tf.cast(infinity, tf.float32), flipped)
        return tf.where(struck, tf.cast(tf.stop_gradient(flipped), outputs.dtype), outputs)


class ActivationValueKind(FaultKind):
    name = "activation_value"
    family = TRANSIENT
    summary = "transient layer outputs set to --stuck_value, drawn anew for every inference"
    non_finite = True
    takes_value = True
    trainable = True

    def training_outputs(self, outputs, rate, seed, value):
        import tensorflow as tf

        struck = tf.random.stateless_uniform(tf.shape(outputs), seed=seed) < rate
        return tf.where(struck, tf.cast(value, outputs.dtype), outputs)

    def check(self, spec):
        if spec.value.stuck_value is None:
            raise ValueError(
                "--fault=activation_value needs the value the faulted outputs take: give "
                "--stuck_value (e.g. 1e4 for a large corrupted activation)."
            )

    def corrupt_outputs(self, values, bits, spec, stored=None):
        values = np.asarray(values)
        value = spec.value.stuck_value if stored is None else stored
        return np.full(values.shape, value, values.dtype)


@dataclasses.dataclass(frozen=True)
class TrainingStep:
    """What a kind's `training_value` needs besides the variable: the kernel's filter
    axis, a protection plan's mask (1 where protected) and the storage it trains in
    ('float32' variables, or 'int8' codes: `int8_storage`, straight-through)."""

    filter_axis: int | None = None
    guard: Any = None
    storage: str = "float32"
    output: bool = False  # The variable is a node mask (output kinds), not a kernel.

    def stored(self, variable):
        """The variable as the hardware holds it (int8: its quantised values)."""
        if self.storage == "int8" and not self.output:
            from aftt_tf.faults import int8_storage

            return int8_storage.quantized(variable, self.filter_axis)
        return variable

    def protect(self, variable, faulty):
        """`faulty` where the plan's mask is 0, the clean stored value where it is 1."""
        return self.stored(variable) * self.guard + faulty * (1 - self.guard)

    def flipped(self, variable, flips):
        """The kernel with the bits `flips` (int32 masks) of its int8 codes flipped."""
        from aftt_tf.faults import int8_storage

        codes, scales = int8_storage.tensor_codes(variable, self.filter_axis)
        faulty = int8_storage.flip_code_bits(codes, flips) * scales
        return int8_storage.straight_through(variable, faulty)


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


def trainable(
    requested,
    flag: str = "fault_aware_kinds",
    storage: str = "float32",
    max_rate: float | None = None,
) -> tuple[FaultKind, ...]:
    """The kind objects of a fault-aware training's `requested` names; ValueError naming
    the flag and the kinds training can draw (in `storage`) otherwise."""
    allowed = trainable_names()
    unknown = [name for name in requested if name not in allowed]
    refused = [name for name in unknown if name in _KINDS and get(name).training_refusal]
    if refused:
        raise ValueError(
            f"{flag}={','.join(requested)}: fault-aware training cannot draw {refused[0]} "
            f"faults: {get(refused[0]).training_refusal}."
        )
    if unknown or not requested or len(set(requested)) != len(requested):
        raise ValueError(
            f"{flag}={','.join(requested)}: it takes a non-empty list of distinct kinds among "
            f"{', '.join(allowed)} (the kinds fault-aware training can draw each step)."
        )
    if storage not in ("float32", "int8"):
        raise ValueError(f"Unknown storage {storage!r}; expected float32 or int8.")
    if storage != "float32" and not any(get(name).on_parameters for name in requested):
        raise ValueError(
            f"--storage={storage} trains on int8 codes of the kernels, which "
            f"{','.join(requested)} faults do not touch (nothing would be quantised): add a "
            "kind that faults weights (bit_error, weight, ...) or leave --storage out."
        )
    for name in requested:
        if storage not in get(name).training_storages:
            raise ValueError(
                f"Fault-aware training draws {name} faults in "
                f"{' or '.join(get(name).training_storages)} storage (a flipped float32 "
                "exponent bit makes the loss infinite); pass --storage=int8 (random bit "
                "error training on the int8 codes the deployed file holds)."
            )
        limit = get(name).training_max_rate
        if max_rate is not None and max_rate > limit:
            raise ValueError(
                f"{name} rates are per stored bit: a fault-aware max rate of {max_rate:g} "
                f"would flip up to {100 * max_rate:g}% of all bits (random bit error training "
                f"trains at about 1%). Pass --fault_aware_max_rate <= {limit:g}."
            )
    return tuple(get(name) for name in requested)
