"""What a campaign is and what a runtime must offer: `FaultSpec`, the cell record, and the
runtime interface (`CampaignModel`, `CellRunner`). No TensorFlow.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import math
from typing import Any

import numpy as np

from aftt_tf import vocabulary
from aftt_tf.faults import fault_map as fault_map_module
from aftt_tf.faults import kinds, protection

FLOAT32_MAX = 3.4028234663852886e38
# Bounds that keep a typo (--trials=1000000000) from planning billions of cells in memory.
MAX_TRIALS = 100_000
MAX_RATES = 1_000


class FaultTargetError(ValueError):
    """The requested fault cannot be placed on this model."""


@dataclasses.dataclass(frozen=True)
class RepairProtocol:
    """The 'repaired' evaluation protocol: each cell fine-tunes a copy of the model around
    its fault map (held fixed) before it is evaluated (aftt-faults --repair_epochs).

    Attributes:
        epochs, learning_rate, weight_decay, optimizer, batch_size: the fine-tuning.
        train_examples: training examples used (0: all).
        loss: the classification loss ('crossentropy' or 'mse').
        data_seed: order of the training batches (the same in every cell, so a rate-0
            cell is plain fine-tuning of the same length).
    """

    epochs: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "rmsprop"
    batch_size: int = 128
    train_examples: int = 0
    loss: str = "crossentropy"
    data_seed: int = 0

    def validate(self) -> None:
        _choice("repair optimizer", self.optimizer, ("rmsprop", "adam", "sgd"))
        _choice("repair loss", self.loss, vocabulary.CLASSIFICATION_LOSSES)
        if not isinstance(self.epochs, int) or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"repair epochs and batch size must be >= 1, received {self.epochs} and "
                f"{self.batch_size}."
            )
        if not self.learning_rate > 0 or self.weight_decay < 0 or self.train_examples < 0:
            raise ValueError(
                "repair learning_rate must be > 0, weight_decay and train_examples >= 0."
            )


@dataclasses.dataclass(frozen=True)
class Selection:
    """*Where* faults may go: the layers, the kinds of stored values and the elements a
    protection plan holds back.

    Attributes:
        scope: 'all', 'extractor' or 'head'.
        layers: restrict to these layer names or glob patterns (empty: every layer the
            kind can take).
        exclude_layers: leave out layers matching these names or glob patterns.
        weights: 'registered' (the kernels of registered layer types, nested ones
            included) or 'all_trainable' (also every trainable variable of rank >= 2 of
            layers no registry entry describes).
        include_bias: fault biases too (parameter kinds).
        include_normalization: parameter faults also reach the scale (gamma) and offset
            (beta) of BatchNormalization, LayerNormalization and GroupNormalization layers
            (in .tflite files: the constants that hold them, see docs).
        include_output_nodes: allow node faults in the output layer.
        targets: what parameter faults reach: 'weights' (kernels), and in int8 .tflite
            files 'scales' (each kernel's per-channel float32 scales), 'zero_points' (the
            int8 zero point of the layer's output tensor) and 'biases' (the stored biases,
            int32 in int8 files) as targets of their own.
        protected: path of a protection plan (`protection`): faults drawn on the elements
            it names are dropped ('': none). The key holds the plan's content hash.
    """

    scope: str = "all"
    layers: tuple[str, ...] = ()
    exclude_layers: tuple[str, ...] = ()
    weights: str = "registered"
    include_bias: bool = False
    include_normalization: bool = False
    include_output_nodes: bool = False
    targets: tuple[str, ...] = ("weights",)
    protected: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _choice("scope", self.scope, vocabulary.SCOPES)
        _choice("weights", self.weights, ("registered", "all_trainable"))
        targets = tuple(self.targets)
        unknown = [t for t in targets if t not in TARGETS]
        if not targets or unknown or len(set(targets)) != len(targets):
            raise ValueError(
                f"targets must be distinct names among {', '.join(TARGETS)}, received "
                f"{list(targets)}."
            )
        if "biases" in targets and self.include_bias:
            raise ValueError("--targets=biases already faults the biases; drop --include_bias.")
        if self.protected and targets != ("weights",):
            raise ValueError("A protection plan covers weights: use it with --targets=weights.")

    @property
    def site_weights(self) -> str:
        """What `registry.sites` finds: `weights`, plus normalisation layers when
        `include_normalization`."""
        return self.weights + ("+normalization" if self.include_normalization else "")


@dataclasses.dataclass(frozen=True)
class FaultValue:
    """*What* a faulted element becomes, beyond what its kind says, and in which storage.

    Attributes:
        stuck_value: value of 'stuck_value' faults; None: the layer's max |w|.
        bit_position: float32 bit for 'bit' faults (0..31), -1: random per element.
        bit_mode: 'flip', 'stuck_at_1' or 'stuck_at_0'.
        storage: how parameter faults see the targeted kernels: 'float32' (Keras: the
            float32 variables; a file: as it stores them) or 'int8' (Keras simulates the
            per-channel symmetric int8 codes the converter stores, `int8_storage`, and
            faults those codes; a file must store int8 kernels).
    """

    stuck_value: float | None = None
    bit_position: int = -1
    bit_mode: str = "flip"
    storage: str = "float32"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _choice("bit_mode", self.bit_mode, vocabulary.BIT_MODES)
        _choice("storage", self.storage, STORAGES)
        if not -1 <= self.bit_position <= 31:
            raise ValueError(
                "bit_position must be in 0..31 (float32) or -1 (random), received "
                f"{self.bit_position}."
            )
        if self.stuck_value is not None and not (
            math.isfinite(self.stuck_value) and abs(self.stuck_value) <= FLOAT32_MAX
        ):
            raise ValueError(
                f"stuck_value must be a finite float32 value (|v| <= {FLOAT32_MAX:.4g}), "
                f"received {self.stuck_value}; a NaN or infinite weight is not a stuck-at "
                "fault. Use --fault=bit to corrupt the exponent bits instead."
            )


@dataclasses.dataclass(frozen=True)
class Placement:
    """*How* positions are drawn: per element, by faulty processing elements of a
    systolic array, and on top of a chip's known faults.

    Attributes:
        sampling: 'exact' (round(rate*n) distinct elements) or 'bernoulli'.
        array: 'ROWSxCOLS' of a systolic array: the rate is the share of faulty
            processing elements, placed by `dataflow` ('weight_stationary': their weight
            registers, parameter kinds; 'output_stationary': their accumulators, node
            faults); '' : faults drawn per element (`systolic`).
        dataflow: see `array`.
        fault_map: path of a fault map (`fault_map`): the chip's known faults, applied in
            every cell on top of the sampled ones ('': none). The key holds its hash.
    """

    sampling: str = "exact"
    array: str = ""
    dataflow: str = "weight_stationary"
    fault_map: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from aftt_tf.faults import systolic

        _choice("sampling", self.sampling, vocabulary.SAMPLINGS)
        _choice("dataflow", self.dataflow, systolic.DATAFLOWS)
        if self.array:
            systolic.parse_array(self.array)


@dataclasses.dataclass(frozen=True)
class Timing:
    """*When* faults strike. Permanent kinds strike every inference; transient kinds
    (`kinds.TRANSIENT`) are drawn anew per inference: per output element at the rate, or
    `faults_per_inference` faults in each struck inference (a rate r strikes
    round(r * examples) inferences)."""

    faults_per_inference: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        count = self.faults_per_inference
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(
                f"faults_per_inference must be an integer >= 0 (0: a rate per element), "
                f"received {count!r}."
            )


# Each group's fields, by name: FaultSpec(layers=...) and the flat records (campaign.json,
# Ray payloads, the key) route a field to its group through this table.
_GROUPS: dict[str, type] = {
    "selection": Selection,
    "value": FaultValue,
    "placement": Placement,
    "timing": Timing,
}
_GROUP_OF = {
    field.name: group for group, cls in _GROUPS.items() for field in dataclasses.fields(cls)
}
DEFAULT_RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


@dataclasses.dataclass(frozen=True, init=False)
class FaultSpec:
    """One seeded fault campaign; the same spec gives the same fault positions on any
    model with the same layer names and shapes.

    Composed of the fault `kind` (a registered `kinds.FaultKind`), the campaign's design
    (rates, trials, seed, target margin), `selection` (where), `value` (what a faulted
    element becomes), `placement` (how positions are drawn), `timing` (when) and the
    protocol (`repair`). Each group checks its own fields when it is made; the spec checks
    how they go with the kind, once, at construction. The groups' fields may also be given
    flat (`FaultSpec(kind="bit", bit_position=30, layers=("dense",))`): the flat form is
    the one the CLI, campaign.json and the key use.

    Attributes:
        kind: the name of a registered fault kind (`kinds`): 'weight', 'filter',
            'node', 'stuck_value', 'bit', 'bit_error' (permanent faults), or
            'activation_bit' / 'activation_value' (transient faults in the targeted
            layers' outputs, drawn anew for every inference: `transient`); `fault_kind`
            is its object.
        rates: fractions of each targeted layer's elements (filters, nodes) faulted; for
            transient faults the fraction of output elements faulted over all inferences
            (or, with `faults_per_inference`, the fraction of inferences struck).
        trials: trials per rate (the maximum when target_margin > 0).
        seed: campaign seed.
        target_margin: > 0 sizes trials per rate sequentially until the 95% CI
            half-width of the accuracy is at most this (statistical fault injection,
            Leveugle et al., DATE 2009), between `min_trials` and `trials`.
        min_trials: first trials before the margin is checked.
        selection, value, placement, timing: the groups above.
        repair: None: the 'deployed' protocol (faults evaluated as they are); a
            `RepairProtocol`: each cell is evaluated after a repair around its faults.
    """

    kind: str
    rates: tuple[float, ...]
    trials: int
    seed: int
    target_margin: float
    min_trials: int
    selection: Selection
    value: FaultValue
    placement: Placement
    timing: Timing
    repair: RepairProtocol | None

    def __init__(
        self,
        kind: str = "weight",
        rates: tuple[float, ...] = DEFAULT_RATES,
        trials: int = 30,
        seed: int = 0,
        *,  # The rest by name: a positional fifth argument was once `scope`.
        target_margin: float = 0.0,
        min_trials: int = 5,
        selection: Selection | None = None,
        value: FaultValue | None = None,
        placement: Placement | None = None,
        timing: Timing | None = None,
        repair: RepairProtocol | None = None,
        **fields: Any,
    ) -> None:
        unknown = sorted(set(fields) - set(_GROUP_OF))
        if unknown:
            raise TypeError(
                f"FaultSpec has no field(s) {', '.join(unknown)}; its fields are kind, "
                f"rates, trials, seed, target_margin, min_trials, repair and "
                f"{', '.join(sorted(_GROUP_OF))} (or their groups {', '.join(_GROUPS)})."
            )
        if isinstance(rates, (str, bytes)) or not isinstance(rates, (list, tuple, np.ndarray)):
            raise ValueError(
                f"rates must be a sequence of fractions in [0, 1], e.g. (0.0, 0.1, 0.2); "
                f"received {rates!r}."
            )
        given = {"selection": selection, "value": value, "placement": placement, "timing": timing}
        for group, cls in _GROUPS.items():
            if given[group] is not None and not isinstance(given[group], cls):
                raise TypeError(
                    f"FaultSpec {group} must be a {cls.__name__} (or give its fields flat), "
                    f"received {type(given[group]).__name__} {given[group]!r}."
                )
            flat = {name: v for name, v in fields.items() if _GROUP_OF[name] == group}
            base = given[group] if given[group] is not None else cls()
            # Flat fields over a given group: what dataclasses.replace(spec, layers=...) does.
            object.__setattr__(self, group, dataclasses.replace(base, **flat) if flat else base)
        for name, item in (
            ("kind", kind),
            ("rates", tuple(rates)),
            ("trials", trials),
            ("seed", seed),
            ("target_margin", target_margin),
            ("min_trials", min_trials),
            ("repair", repair),
        ):
            object.__setattr__(self, name, item)
        self._check()  # A FaultSpec that exists is valid: no caller checks it again.

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FaultSpec:
        """The spec recorded as `as_dict()` (campaign.json, Ray payloads); fields a
        record written before they existed lacks take their defaults."""
        values = dict(values)
        for name in ("rates", "layers", "exclude_layers", "targets"):
            if name in values:
                values[name] = tuple(values[name])
        if isinstance(values.get("repair"), dict):
            values["repair"] = RepairProtocol(**values["repair"])
        return cls(**values)

    def validate(self) -> None:
        """Raises ValueError naming the field, the value received and what is expected
        (at construction; again only where files it names may have changed)."""
        for group in _GROUPS:
            getattr(self, group).validate()
        self._check()

    def _check(self) -> None:
        """The campaign's design, then how each group goes with the kind."""
        kind = kinds.get(self.kind)  # ValueError listing the registered kinds.
        _check_design(self)
        _check_targets(self)
        _check_array(self)
        _check_files(self)
        _check_transient(self)
        _check_storage(self)
        kind.check(self)
        if self.selection.include_normalization and not kind.per_element:
            raise ValueError(
                f"--include_normalization adds normalisation scales and offsets to parameter "
                f"faults: use it with --fault={' or '.join(_per_element_names())}, not "
                f"{self.kind}."
            )
        if self.repair is not None:
            self.repair.validate()

    @property
    def protocol(self) -> str:
        """'deployed' (faults as they are) or 'repaired' (each cell repaired first)."""
        return "deployed" if self.repair is None else "repaired"

    @property
    def fault_kind(self) -> kinds.FaultKind:
        """The registered kind object of `kind` (`kinds`)."""
        return kinds.get(self.kind)

    def as_dict(self) -> dict[str, Any]:
        """The flat record (campaign.json, the key): every group's fields by name."""
        result: dict[str, Any] = {
            "kind": self.kind,
            "rates": [float(r) for r in self.rates],
            "trials": self.trials,
            "seed": self.seed,
            "target_margin": self.target_margin,
            "min_trials": self.min_trials,
            "repair": None if self.repair is None else dataclasses.asdict(self.repair),
        }
        for group in _GROUPS:
            result.update(dataclasses.asdict(getattr(self, group)))
        for name in ("layers", "exclude_layers", "targets"):
            result[name] = list(result[name])
        return result

    def key(self) -> str:
        """Hash of everything that determines the cells' values (not how many trials run)."""
        values = self.as_dict()
        for name in ("trials", "rates", "target_margin", "min_trials"):
            values.pop(name)
        for name, default in _FIELDS_ADDED_LATER.items():
            if values[name] == default:  # Keys of campaigns written before them stay valid.
                values.pop(name)
        if values.get("fault_map"):
            values["fault_map"] = fault_map_module.digest_of(self.placement.fault_map)
        if values.get("protected"):  # The plan's content, wherever its file lies.
            values["protected"] = protection.digest_of(self.selection.protected)
        if self.fault_kind.non_finite:
            # Cells of these kinds written before outcomes were counted called NaN outputs
            # class 0: a new key, so they are never resumed or averaged with new ones.
            values["outcomes"] = "correct/wrong/non_finite"
            # Cells written before NaN propagated through fused ReLUs (keras_runner.ieee_nan)
            # and through pooling layers (nan_semantics) counted some NaN inferences as
            # classes.
            values["nan"] = "propagated, pooling"
        if "zero_points" in self.selection.targets and self.fault_kind.takes_value:
            # Cells written before took max |code| in int8, where |-128| overflows to -128:
            # a zero point of -128 was "stuck" at itself. A new key: never mixed.
            values["zero_point_value"] = "max |code| without overflow"
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


# Fields added after campaigns were written, with their defaults; they enter the key
# only when set, so earlier campaign directories resume.
_FIELDS_ADDED_LATER = {
    "targets": ["weights"],
    "exclude_layers": [],
    "repair": None,
    "weights": "registered",
    "protected": "",
    "fault_map": "",
    "array": "",
    "dataflow": "weight_stationary",
    "faults_per_inference": 0,
    "include_normalization": False,
    "storage": "float32",
}
STORAGES = ("float32", "int8")


def _per_element_names() -> tuple[str, ...]:
    return kinds.names(per_element=True)


TARGETS = ("weights", "scales", "zero_points", "biases")
METADATA_TARGETS = ("scales", "zero_points")


def _check_design(spec: FaultSpec) -> None:
    """Rates, trials, margins and seed: numbers in range."""
    if not spec.rates:
        raise ValueError("rates is empty; give at least one fault rate in [0, 1].")
    for rate in spec.rates:
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0.0 <= rate <= 1.0):
            raise ValueError(
                f"Fault rate {rate!r} is outside [0, 1]; rates are fractions (0.7 = 70%)."
            )
    if len(set(spec.rates)) != len(spec.rates):
        raise ValueError(f"rates contain duplicates: {list(spec.rates)}.")
    if len(spec.rates) > MAX_RATES:
        raise ValueError(
            f"{len(spec.rates)} rates is more than the {MAX_RATES} a campaign takes; "
            "split the campaign into several directories."
        )
    if not isinstance(spec.trials, int) or isinstance(spec.trials, bool) or spec.trials < 1:
        raise ValueError(f"trials must be an integer >= 1, received {spec.trials!r}.")
    if spec.trials > MAX_TRIALS:
        raise ValueError(
            f"trials={spec.trials} is more than {MAX_TRIALS} per rate (the 95% interval "
            "of 10,000 trials is already about 1% of the spread); for a target precision "
            "use --target_margin, or run shards."
        )
    if not math.isfinite(spec.target_margin) or spec.target_margin < 0:
        raise ValueError(
            f"target_margin must be a finite number >= 0 (0: off), received {spec.target_margin}."
        )
    if spec.target_margin and (not isinstance(spec.min_trials, int) or spec.min_trials < 2):
        raise ValueError("min_trials must be an integer >= 2 when target_margin is used.")
    if not isinstance(spec.seed, int) or spec.seed < 0:
        raise ValueError(f"seed must be an integer >= 0, received {spec.seed!r}.")


def _check_storage(spec: FaultSpec) -> None:
    """--storage=int8 faults int8 kernel codes: parameter faults on kernels only (int8
    files keep biases as int32 with activation-dependent scales, and fold normalisation
    layers), and no fault map (it holds real values)."""
    if spec.value.storage == "float32":
        return
    extras = {
        "--include_bias": spec.selection.include_bias,
        "--include_normalization": spec.selection.include_normalization,
        "--fault_map": spec.placement.fault_map,
        "--targets": tuple(spec.selection.targets) != ("weights",),
        "--repair_epochs": spec.repair is not None,
    }
    given = [flag for flag, value in extras.items() if value]
    if not spec.fault_kind.on_parameters or given:
        raise ValueError(
            f"--storage={spec.value.storage} faults the int8 codes of kernels with parameter "
            f"fault kinds ({', '.join(kinds.names(kinds.PARAMETER))}); "
            + (f"leave out {', '.join(given)}." if given else f"not {spec.kind}.")
        )


def _check_targets(spec: FaultSpec) -> None:
    if tuple(spec.selection.targets) != ("weights",) and not spec.fault_kind.per_element:
        raise ValueError(
            f"--targets={','.join(spec.selection.targets)} takes "
            f"{', '.join(_per_element_names())} faults; {spec.kind} faults do not act on "
            "single stored elements."
        )


def _check_transient(spec: FaultSpec) -> None:
    """Transient faults live in one inference's outputs: no weights, plans, maps or
    arrays go with them, and a stuck activation needs its value."""
    if not spec.fault_kind.transient:
        if spec.timing.faults_per_inference:
            raise ValueError(
                "--faults_per_inference places transient faults: use it with --fault="
                f"{' or '.join(kinds.names(kinds.TRANSIENT))}."
            )
        return
    extras = {
        "--include_bias": spec.selection.include_bias,
        "--protected": spec.selection.protected,
        "--fault_map": spec.placement.fault_map,
        "--array": spec.placement.array,
        "--repair_epochs": spec.repair is not None,
    }
    given = [flag for flag, value in extras.items() if value]
    if given:
        raise ValueError(
            f"--fault={spec.kind} draws transient faults in layer outputs anew for every "
            f"inference; {', '.join(given)} describe(s) permanent faults in weights. Leave "
            "them out, or use a weight fault kind."
        )


def _check_files(spec: FaultSpec) -> None:
    """A fault map and a protection plan hold weight elements: readable, and not with
    node faults (which hold outputs at 0)."""
    parameter_names = ", ".join(kinds.names(kinds.PARAMETER))
    if spec.placement.fault_map:
        if spec.fault_kind.family == kinds.OUTPUT:
            raise ValueError(
                f"A fault map holds faults in weights; {spec.kind} faults hold outputs. Use "
                f"it with {parameter_names} faults."
            )
        fault_map_module.load(spec.placement.fault_map)
    if spec.selection.protected:
        if spec.fault_kind.family == kinds.OUTPUT:
            raise ValueError(
                f"A protection plan protects weight elements; {spec.kind} faults hold layer "
                f"outputs. Use it with {parameter_names} faults."
            )
        protection.load(spec.selection.protected)  # A missing or damaged plan: one clear error.


def _check_array(spec: FaultSpec) -> None:
    placement = spec.placement
    if not placement.array:
        return
    stationary = kinds.names(output_stationary=True)
    if placement.dataflow == "weight_stationary" and not spec.fault_kind.per_element:
        raise ValueError(
            "--dataflow=weight_stationary places faulty weight registers: use --fault="
            f"{' or '.join(_per_element_names())}; stuck accumulators are "
            f"--dataflow=output_stationary with --fault={' or '.join(stationary)}."
        )
    if placement.dataflow == "output_stationary" and not spec.fault_kind.output_stationary:
        raise ValueError(
            "--dataflow=output_stationary places stuck-at-0 accumulators, which hold outputs "
            f"at 0: use --fault={' or '.join(stationary)}."
        )
    selection = spec.selection
    if selection.include_bias or selection.protected or tuple(selection.targets) != ("weights",):
        raise ValueError(
            "--array places faults by PE: without --include_bias, --protected or --targets."
        )


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {', '.join(valid)}.")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the inferences of one cell came to: correct predictions, predictions of another
    class, and non-finite outputs (a NaN or infinite logit is a detected error, never a
    class: argmax would call it class 0)."""

    correct: int
    non_finite: int
    examples: int
    masked: int | None = None  # Finite and the fault-free (golden) run's top-1 class.

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.examples else 0.0

    @property
    def sdc_rate(self) -> float | None:
        """Silent data corruption: a finite output whose top-1 class differs from the
        golden run's (PyTorchALFI's SDC; a non-finite output is a detected error, DUE)."""
        if self.masked is None or not self.examples:
            return None
        return (self.examples - self.masked - self.non_finite) / self.examples

    @property
    def non_finite_rate(self) -> float:
        return self.non_finite / self.examples if self.examples else 0.0


def predictions(outputs: np.ndarray) -> np.ndarray:
    """Top-1 classes of (examples, classes) outputs; -1 for a row with a NaN/Inf output."""
    outputs = np.asarray(outputs)
    finite = np.all(np.isfinite(outputs), axis=-1)
    classes = np.argmax(np.where(np.isfinite(outputs), outputs, 0), axis=-1)
    return np.where(finite, classes, -1)


def outcome_of(
    outputs: np.ndarray, labels: np.ndarray, golden: np.ndarray | None = None
) -> Outcome:
    """The `Outcome` of a batch of (examples, classes) outputs against integer labels and,
    when given, the golden (fault-free) run's top-1 classes (`predictions`)."""
    predicted = predictions(outputs)
    finite = predicted >= 0
    hits = finite & (predicted == labels)
    masked = None if golden is None else int(np.sum(finite & (predicted == golden)))
    return Outcome(int(np.sum(hits)), int(np.sum(~finite)), int(len(labels)), masked)


def cell_result(
    rate: float, trial: int, outcome: Outcome, counts: dict[str, Any]
) -> dict[str, Any]:
    """One cell's record, the same for every runtime: accuracy counts only correct,
    finite predictions; `non_finite` is the share of inferences with a NaN/Inf output."""
    result = {
        "rate": float(rate),
        "trial": int(trial),
        "accuracy": float(outcome.accuracy),
        "non_finite": float(outcome.non_finite_rate),
        "realized_fraction": counts["faulted"] / counts["elements"] if counts["elements"] else 0.0,
        "faulted": counts["faulted"],
        "per_layer": {name: value["faulted"] for name, value in counts["per_layer"].items()},
    }
    if "faulty_pes" in counts:
        result["faulty_pes"] = counts["faulty_pes"]
    if outcome.sdc_rate is not None:  # Masked = 1 - sdc - non_finite (DUE).
        result["sdc"] = float(outcome.sdc_rate)
    return result


def check_classifier_outputs(shapes: list[tuple[int | None, ...]], label: str) -> None:
    """ValueError unless the model has one output of shape (batch, classes >= 2): top-1
    accuracy is defined only there (two outputs' accuracies would be summed, a 4-D map's
    argmax is per pixel, one unit has no argmax)."""
    if len(shapes) != 1:
        raise ValueError(
            f"{label} has {len(shapes)} outputs {shapes}; a campaign scores one classifier "
            "output of shape (batch, classes). Save a model that returns only the logits or "
            "probabilities of the classes."
        )
    shape = tuple(shapes[0])
    if len(shape) != 2:
        raise ValueError(
            f"{label}'s output has shape {shape}; a campaign scores (batch, classes) outputs "
            "by top-1 accuracy. Add a classification head (e.g. pooling and Dense) or save "
            "the classifier part."
        )
    if shape[-1] is not None and shape[-1] < 2:
        raise ValueError(
            f"{label}'s output has {shape[-1]} unit; top-1 accuracy needs (batch, classes) "
            "with 2 or more classes (a regression or single-sigmoid model has no class to "
            "pick). Give a binary classifier two output units."
        )


class CellRunner(abc.ABC):
    """Evaluates the (rate, trial) cells of one spec on one model and test set. Every
    runtime's runner subclasses it: the engine calls these and nothing else."""

    @abc.abstractmethod
    def evaluate_cell(self, rate: float, trial: int) -> dict[str, Any]:
        """Places the cell's faults and returns its `cell_result` record."""

    @abc.abstractmethod
    def close(self) -> None:
        """Releases what the runner holds (a model's variables restored, interpreters)."""

    def unrepaired_clean_accuracy(self) -> float | None:
        """The model's accuracy before any repair (repaired protocol), else None."""
        return None


class CampaignModel(abc.ABC):
    """What the campaign engine needs of a model, whatever runs it (Keras, TFLite). Every
    runtime subclasses it (`runtimes`): a missing method is an error when the class is
    instantiated, not a silently skipped check. Attributes every runtime sets:

        input_shape: one example's input shape (no batch).
        num_outputs: classes of its output (None: not known before it runs).
        output_shapes: the shapes of its outputs (None: not known).
    """

    runtime: str  # Its entry in `runtimes` (loading, Ray payloads).
    input_shape: tuple[int, ...]
    num_outputs: int | None
    output_shapes: list[tuple[int | None, ...]] | None

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A hash of everything that determines the model's outputs (architecture, weights)."""

    @abc.abstractmethod
    def select_layers(self, spec: FaultSpec) -> list[str]:
        """Names of the layers `spec` faults; FaultTargetError when there are none."""

    @abc.abstractmethod
    def coverage(self, spec: FaultSpec) -> dict[str, Any]:
        """What `spec` faults of the model's weights, and what it leaves out and why."""

    @abc.abstractmethod
    def kernel_elements(self, spec: FaultSpec) -> dict[str, int]:
        """Faulted elements per layer (what a paired model must match)."""

    @abc.abstractmethod
    def weight_storage(self, spec: FaultSpec) -> set[str]:
        """Storage types of the values `spec` faults (what a bit position means)."""

    @abc.abstractmethod
    def runner(
        self,
        spec: FaultSpec,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        transform: Any = None,
    ) -> CellRunner:
        """A runner that evaluates `spec`'s cells on these test data."""
