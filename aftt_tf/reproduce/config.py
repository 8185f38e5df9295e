"""`ReproduceConfig`: what `aftt-reproduce` trains, exports, faults and reports; validated
without TensorFlow, and the training units it implies.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from aftt_tf import vocabulary
from aftt_tf.faults import kinds
from aftt_tf.reproduce.paper import PAPER_FAULTS
from aftt_tf.training.config import TrainConfig

ALL_METHODS = vocabulary.METHODS
REPRODUCE_FAULTS = ("weight", "node", "filter")
RUNTIMES = vocabulary.COMPARISON_RUNTIMES
# int8 exports compared under faults: post-training quantization as the converter does
# it, fault-aware calibration, fault-aware QAT (aftt-export's fault-tolerant formats).
# chip_calibrated: one file per fault rate, calibrated under faults at that rate (a chip
# tested after fabrication has a measured fault rate); a fault-free chip runs the PTQ file.
INT8_MODES = ("ptq", "fault_calibrated", "fault_qat", "chip_calibrated")
INT8_MODE_FORMATS = {
    "ptq": "tflite_int8",
    "fault_calibrated": "tflite_int8_fault_calibrated",
    "fault_qat": "tflite_int8_fault_qat",
}
RUNTIME_NAMES = {
    "keras": "Keras float32",
    "int8": "TFLite int8",
    "int8_fault_calibrated": "TFLite int8, fault-calibrated",
    "int8_fault_qat": "TFLite int8, fault-aware QAT",
    "int8_chip_calibrated": "TFLite int8, calibrated per chip's fault rate",
}


def int8_runtime(mode: str) -> str:
    """The runtime (and campaign name part) of an int8 mode: 'int8' is plain PTQ."""
    return "int8" if mode == "ptq" else f"int8_{mode}"


# 'deployed': faults evaluated as they are; 'repaired': each cell's model fine-tuned
# around its fault map first (FaultSpec.repair), as the pruning code the paper's Fig. 1
# appears adapted from retrains with its masks held fixed.
PROTOCOLS = ("deployed", "repaired")
# Which kernels weight faults reach: every weight layer, or only 4-D (convolution)
# kernels, as the paper's Fig. 1 code (`if len(p.data.size()) == 4`) does.
WEIGHT_KERNELS = ("all", "4d")
# Paper section VI.D quotes 60% weight, 68% node and 40% filter faults.
DEFAULT_RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.68, 0.7)
# Fields of TrainConfig that only the supervised phase reads: two pre-training methods
# whose configs agree on every other field pre-train identically.
SUPERVISED_FIELDS = (
    "method",
    "finetune_epochs",
    "learning_rate",
    "lr_schedule",
    "classification_loss",
    "freeze_extractor",
    "reg_lambda",
    "reg_lambda_grid",
    "fault_aware_kinds",
    "fault_aware_max_rate",
    "early_stopping_patience",
    "eval_batch_size",
    "test_examples",
)


@dataclasses.dataclass
class ReproduceConfig:
    """What `aftt-reproduce` trains, exports, faults and reports.

    Attributes:
        train: the shared training configuration (its `method`, `reg_lambda` and
            `reg_lambda_grid` are set per method).
        out: output directory.
        methods: subset of ALL_METHODS.
        l1_lambda_grid, l2_lambda_grid: penalty weights tried; the best by validation
            accuracy is the method's model (the paper tuned its baselines by grid search).
        faults: fault kinds (weight, node, filter); empty: weight and node, plus
            filter for convolutional networks.
        scopes: 'all' (every layer of the deployed classifier) and/or 'extractor'.
        runtimes: 'keras' (float32) and/or 'int8' (full-int8 TFLite export).
        rates, trials, campaign_seed: the paired campaigns.
        campaign_test_examples: test images per campaign cell (0: the whole test set).
        campaign_batch_size: evaluation chunk size.
        calibration_steps: batches of 32 training images for int8 calibration.
        executor: 'local', or 'ray' (training units as Ray tasks in their own processes,
            campaign cells on Ray actors); ray_address, ray_workers and
            resources_per_worker as in aftt-faults. Not part of the reproduction's
            identity: a run may resume under another executor.
        sampling: 'exact' (round(rate * n) faults per layer) or 'bernoulli' (each element
            independently, the paper's Fig. 1 masks).
        weight_kernels: 'all' or '4d' (weight faults on convolution kernels only, as the
            paper's Fig. 1 code).
        protocols: 'deployed' and/or 'repaired' (Keras float32 campaigns whose cells are
            fine-tuned around their faults first, once per entry of repair_epochs).
        repair_rates: rates of the repaired campaigns; empty: 0 and the paper's quoted
            rate of each kind on this architecture (kinds it quotes none for are left out).
        repair_trials: trials per rate of the repaired campaigns (0: trials).
        repair_train_examples, repair_learning_rate, repair_weight_decay,
            repair_batch_size: the repairs (RMSprop, the run's loss).
        int8_modes: int8 exports faulted beside Keras float32 when runtimes holds 'int8':
            ptq (the converter's calibration), fault_calibrated (ranges measured under
            weight faults at fault_calibration_rates), fault_qat (QAT for
            fault_qat_epochs with weight faults below fault_qat_max_rate).
        per_layer_stats: record per-layer int8 activation statistics under weight faults
            (int8_stats) for every int8 file, in results.json and the report.
    """

    train: TrainConfig
    out: str
    methods: tuple[str, ...] = ALL_METHODS
    l1_lambda_grid: tuple[float, ...] = (1e-6, 1e-5, 1e-4)
    l2_lambda_grid: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3)
    faults: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ("all", "extractor")
    runtimes: tuple[str, ...] = RUNTIMES
    rates: tuple[float, ...] = DEFAULT_RATES
    trials: int = 20
    campaign_seed: int = 0
    campaign_test_examples: int = 0
    campaign_batch_size: int = 2000
    calibration_steps: int = 100
    executor: str = "local"
    ray_address: str = ""
    ray_workers: int = 0
    resources_per_worker: str = "cpu=1"
    sampling: str = "exact"
    weight_kernels: str = "all"
    protocols: tuple[str, ...] = ("deployed",)
    repair_epochs: tuple[int, ...] = (5,)
    repair_rates: tuple[float, ...] = ()
    repair_trials: int = 0
    repair_train_examples: int = 0
    repair_learning_rate: float = 1e-3
    repair_weight_decay: float = 5e-4
    repair_batch_size: int = 128
    int8_modes: tuple[str, ...] = ("ptq",)
    fault_calibration_rates: tuple[float, ...] = (0.0, 0.3, 0.6)
    fault_qat_max_rate: float = 0.6
    fault_qat_epochs: int = 2
    per_layer_stats: bool = False

    def __post_init__(self):
        self.fault_calibration_rates = tuple(float(r) for r in self.fault_calibration_rates)
        for name in ("methods", "faults", "scopes", "runtimes", "protocols", "int8_modes"):
            setattr(self, name, tuple(str(value) for value in getattr(self, name)))
        for name in ("l1_lambda_grid", "l2_lambda_grid", "rates", "repair_rates"):
            setattr(self, name, tuple(float(value) for value in getattr(self, name)))
        self.repair_epochs = tuple(self.repair_epochs)
        if not self.faults:
            self.faults = ("weight", "node") + (
                ("filter",) if _has_convolutions(self.train.architecture) else ()
            )

    def validate(self) -> None:
        """Raises ValueError naming the bad field, the value and what is expected."""
        self.train.validate()
        _subset("methods", self.methods, ALL_METHODS)
        self._check_comparison_and_executor()
        _subset("faults", self.faults, REPRODUCE_FAULTS)
        _subset("scopes", self.scopes, ("all", "extractor"))
        _subset("runtimes", self.runtimes, RUNTIMES)
        self._check_protocols()
        if self.train.reg_lambda_grid:
            raise ValueError(
                "reg_lambda_grid is an aftt-train flag; aftt-reproduce takes "
                "--l1_lambda_grid and --l2_lambda_grid. Remove --reg_lambda_grid."
            )
        for method in vocabulary.PENALTY_METHODS:
            grid = getattr(self, f"{method}_lambda_grid")
            if method in self.methods:
                if not grid:
                    raise ValueError(f"{method}_lambda_grid is empty; give at least one lambda.")
                bad = [value for value in grid if not (math.isfinite(value) and value > 0)]
                if bad or len(set(grid)) != len(grid):
                    raise ValueError(
                        f"{method}_lambda_grid must hold distinct finite values > 0, "
                        f"received {list(grid)}."
                    )
                if len(grid) > 1 and self.train.validation_fraction == 0:
                    raise ValueError(
                        f"{method}_lambda_grid selects by validation accuracy; set "
                        "validation_fraction > 0 or give one lambda."
                    )
        if any(kinds.get(kind).whole_filters for kind in self.faults) and not _has_convolutions(
            self.train.architecture
        ):
            raise ValueError(
                f"Filter faults need convolutions; {self.train.architecture} has none. "
                "Drop 'filter' from --faults."
            )
        if not self.rates or any(not 0.0 <= rate <= 1.0 for rate in self.rates):
            raise ValueError(f"rates must be fractions in [0, 1], received {list(self.rates)}.")
        if len(set(self.rates)) != len(self.rates):
            raise ValueError(f"rates contain duplicates: {list(self.rates)}.")
        if not isinstance(self.trials, int) or self.trials < 2:
            raise ValueError(
                f"trials must be an integer >= 2 (a confidence interval needs two), "
                f"received {self.trials!r}."
            )
        for name in ("campaign_seed", "campaign_test_examples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(
                    f"{name} must be an integer >= 0, received {getattr(self, name)!r}."
                )
        for name in ("campaign_batch_size", "calibration_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be an integer >= 1, received {getattr(self, name)!r}."
                )

    def _check_comparison_and_executor(self) -> None:
        if len(self.methods) < 2:
            raise ValueError(
                f"methods={list(self.methods)}: aftt-reproduce compares methods (paired "
                "campaigns, verdicts); give at least two, e.g. --methods=none,aftt. One "
                "method alone is an aftt-train run plus an aftt-faults campaign."
            )
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor must be local or ray, received {self.executor!r}.")
        if self.executor == "ray":
            self.ray_config()

    def _check_int8_modes(self) -> None:
        _subset("int8_modes", self.int8_modes, INT8_MODES)
        if self.per_layer_stats and "int8" not in self.runtimes:
            raise ValueError(
                "per_layer_stats describes the int8 files; add int8 to --runtimes or drop "
                "--per_layer_stats."
            )
        if self.int8_modes != ("ptq",) and "int8" not in self.runtimes:
            raise ValueError(
                f"int8_modes {list(self.int8_modes)} need the int8 runtime; add int8 to --runtimes."
            )
        if "fault_calibrated" in self.int8_modes and (
            not self.fault_calibration_rates
            or any(not 0.0 <= rate < 1.0 for rate in self.fault_calibration_rates)
        ):
            raise ValueError(
                "fault_calibration_rates must be fractions in [0, 1), received "
                f"{list(self.fault_calibration_rates)}."
            )
        if "chip_calibrated" in self.int8_modes and self.executor == "ray":
            raise ValueError(
                "int8 mode chip_calibrated (one file per rate) runs locally; drop it or "
                "--executor=ray."
            )
        if "fault_qat" in self.int8_modes and not (
            0.0 < self.fault_qat_max_rate < 1.0 and self.fault_qat_epochs >= 1
        ):
            raise ValueError(
                "fault_qat needs fault_qat_max_rate in (0, 1) and fault_qat_epochs >= 1, "
                f"received {self.fault_qat_max_rate} and {self.fault_qat_epochs}."
            )

    def int8_runtimes(self) -> tuple[str, ...]:
        """The campaign runtimes: 'keras' and one per int8 mode."""
        result = ("keras",) if "keras" in self.runtimes else ()
        if "int8" in self.runtimes:
            result += tuple(int8_runtime(mode) for mode in self.int8_modes)
        return result

    def _check_protocols(self) -> None:
        self._check_int8_modes()
        _subset("protocols", self.protocols, PROTOCOLS)
        if self.sampling not in vocabulary.SAMPLINGS:
            raise ValueError(
                f"sampling must be one of {', '.join(vocabulary.SAMPLINGS)}, received "
                f"{self.sampling!r}."
            )
        if self.weight_kernels not in WEIGHT_KERNELS:
            raise ValueError(f"weight_kernels must be all or 4d, received {self.weight_kernels!r}.")
        if "repaired" not in self.protocols:
            if self.repair_rates or self.repair_trials:
                raise ValueError(
                    "repair_rates and repair_trials set the repaired campaigns; add repaired "
                    "to --protocols or drop them."
                )
            return
        if self.executor == "ray":
            raise ValueError(
                "The repaired protocol runs locally (each cell fine-tunes a model); drop "
                "--executor=ray or 'repaired' from --protocols."
            )
        epochs = self.repair_epochs
        if not epochs or any(not isinstance(e, int) or e < 1 for e in epochs):
            raise ValueError(f"repair_epochs must be integers >= 1, received {list(epochs)}.")
        if len(set(epochs)) != len(epochs):
            raise ValueError(f"repair_epochs contains duplicates: {list(epochs)}.")
        if any(not 0.0 <= rate <= 1.0 for rate in self.repair_rates) or len(
            set(self.repair_rates)
        ) != len(self.repair_rates):
            raise ValueError(
                f"repair_rates must be distinct fractions in [0, 1], received "
                f"{list(self.repair_rates)}."
            )
        if (
            not isinstance(self.repair_trials, int)
            or self.repair_trials in (1,)
            or (self.repair_trials < 0)
        ):
            raise ValueError(
                f"repair_trials must be 0 (= trials) or an integer >= 2, received "
                f"{self.repair_trials!r}."
            )
        for epoch_count in epochs:
            self.repair_protocol(epoch_count).validate()

    def repair_protocol(self, epochs: int):
        """The `RepairProtocol` of the repaired campaigns with `epochs` repair epochs."""
        from aftt_tf.faults.spec import RepairProtocol

        return RepairProtocol(
            epochs=epochs,
            learning_rate=self.repair_learning_rate,
            weight_decay=self.repair_weight_decay,
            batch_size=self.repair_batch_size,
            train_examples=self.repair_train_examples,
            loss=self.train.classification_loss,
            data_seed=self.train.seed,
        )

    def repair_rates_for(self, kind: str) -> tuple[float, ...]:
        """Rates of `kind`'s repaired campaigns; () when there are none to run."""
        if self.repair_rates:
            return self.repair_rates
        quoted = PAPER_FAULTS.get((self.train.architecture, kind))
        return (0.0, quoted[0]) if quoted else ()

    @property
    def variant(self) -> str:
        """Suffix of campaign names for non-default sampling (the default keeps the names
        of campaigns written before these options existed)."""
        suffix = "_bernoulli" if self.sampling == "bernoulli" else ""
        return suffix + ("_4d" if self.weight_kernels == "4d" else "")

    def ray_config(self):
        """The `ray_executor.RayConfig` of executor='ray' (Ray itself is not imported)."""
        from aftt_tf.campaigns import ray_executor

        return ray_executor.config_from_flags(
            self.ray_address, self.ray_workers, self.resources_per_worker
        )

    def fixed(self) -> dict[str, Any]:
        """What a resumed run must share with the first one (everything else may change)."""
        return {
            "train": self.train.as_dict(),
            "campaign_test_examples": self.campaign_test_examples,
            "calibration_steps": self.calibration_steps,
        }

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["train"] = self.train.as_dict()
        return values


def _has_convolutions(architecture: str) -> bool:
    return architecture in vocabulary.ARCHITECTURES_WITH_CONVOLUTIONS


def _subset(name: str, values: tuple[str, ...], valid: tuple[str, ...]) -> None:
    unknown = [value for value in values if value not in valid]
    if unknown or not values:
        raise ValueError(
            f"{name} {list(values)} must be a non-empty subset of {', '.join(valid)}"
            + (f"; unknown: {unknown}" if unknown else "")
            + "."
        )
    if len(set(values)) != len(values):
        raise ValueError(f"{name} contains duplicates: {list(values)}.")


def method_config(base: TrainConfig, method: str, reg_lambda: float = 0.0) -> TrainConfig:
    """The training config of one method (and lambda), as `aftt-train --method=...` builds it."""
    if method not in vocabulary.METHODS:
        raise ValueError(
            f"Unknown method {method!r}; expected one of {', '.join(vocabulary.METHODS)}."
        )
    config = dataclasses.replace(
        base, method=method, reg_lambda=reg_lambda, reg_lambda_grid=(), freeze_extractor=False
    )
    if config.pretrains:
        config.freeze_extractor = base.freeze_extractor
    return config


@dataclasses.dataclass
class TrainingUnit:
    method: str
    config: TrainConfig
    directory: Path


def training_units(config: ReproduceConfig) -> list[TrainingUnit]:
    """Every training run, in order: methods in ALL_METHODS order, lambdas as given."""
    out = Path(config.out) / "train"
    units = []
    for method in config.methods:
        if method in vocabulary.PENALTY_METHODS:
            for reg_lambda in getattr(config, f"{method}_lambda_grid"):
                units.append(
                    TrainingUnit(
                        method,
                        method_config(config.train, method, reg_lambda),
                        out / method / f"lambda_{reg_lambda:g}",
                    )
                )
        else:
            units.append(TrainingUnit(method, method_config(config.train, method), out / method))
    return units


def campaign_name(
    kind: str, scope: str, runtime: str, variant: str = "", repair_epochs: int = 0
) -> str:
    """OUT/campaigns/<name>: deployed campaigns '<kind>_<scope>_<runtime><variant>', the
    repaired ones (Keras) '<kind>_<scope>_keras<variant>_repaired<N>'."""
    name = f"{kind}_{scope}_{runtime}{variant}"
    return f"{name}_repaired{repair_epochs}" if repair_epochs else name
