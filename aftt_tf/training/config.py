"""Training configuration: one plain dataclass, validated before any work is done.

Field names equal the `aftt-train` flag names, so a config can be written back as a
flagfile that reproduces the run. Validation imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from aftt_tf import methods, vocabulary
from aftt_tf.faults import kinds
from aftt_tf.vocabulary import METHODS, PRETRAINING_METHODS

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a training run.

    `method` picks the algorithm: 'aftt' (adversarial autoencoder pre-training of the
    extractor, then supervised fine-tuning), plain supervised training with no
    regularisation ('none'), Lasso ('l1') or Tikhonov ('l2') weight penalties,
    fault-aware training ('fat': random stuck-at-0 faults in every supervised step), or
    AFTT pre-training followed by fault-aware fine-tuning ('aftt_fat').
    """

    method: str = "aftt"
    architecture: str = "fmnist_mlp"
    dataset: str = ""  # Empty: the architecture's dataset.
    data_dir: str = ""  # Empty: the dataset's default local directory.
    tfds_data_dir: str = ""
    data_source: str = "auto"
    validation_fraction: float = 0.1
    train_examples: int = 0  # 0: all.
    test_examples: int = 0  # 0: all.
    batch_size: int = 128
    eval_batch_size: int = 1000
    # Unsupervised phase (aftt only).
    pretrain_epochs: int = 10
    reconstruction_learning_rate: float = 1e-3
    discriminator_learning_rate: float = 5e-5  # Paper section VI.B.
    adversarial_learning_rate: float = 5e-5
    discriminator_steps: int = 1
    prior_stddev: float = 1.0
    # Supervised phase.
    finetune_epochs: int = 20
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # Supervised phase: 'constant' or 'cosine' decay to 0.
    classification_loss: str = "mse"  # Paper Eq. 15.
    freeze_extractor: bool = False
    reg_lambda: float = 0.0
    reg_lambda_grid: tuple[float, ...] = ()
    # Fault-aware training ('fat', 'aftt_fat'): per step, one kind and a rate in [0, max].
    fault_aware_kinds: tuple[str, ...] = ("weight", "node")
    fault_aware_max_rate: float = 0.5
    early_stopping_patience: int = 0  # 0: off; the best validation epoch is kept either way.
    # Execution.
    seed: int = 0
    jit_compile: bool = False
    strategy: str = "default"

    def __post_init__(self):
        self.reg_lambda_grid = tuple(float(value) for value in self.reg_lambda_grid)
        self.fault_aware_kinds = tuple(str(kind) for kind in self.fault_aware_kinds)
        if not self.dataset and self.architecture in vocabulary.ARCHITECTURE_DATASETS:
            self.dataset = vocabulary.ARCHITECTURE_DATASETS[self.architecture]

    def validate(self) -> None:
        """Raises ValueError naming the field, the value received and what is expected."""
        if self.method in vocabulary.USER_METHODS and not methods.get(self.method).paper:
            raise ValueError(
                f"--method={self.method} ({methods.get(self.method).title}) hardens a trained "
                "model: pass it with --model=FILE.keras."
            )
        _choice("method", self.method, METHODS)
        _choice("architecture", self.architecture, vocabulary.ARCHITECTURES)
        _choice("dataset", self.dataset, vocabulary.DATASETS)
        _choice("data_source", self.data_source, vocabulary.DATA_SOURCES)
        _choice("classification_loss", self.classification_loss, vocabulary.CLASSIFICATION_LOSSES)
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        expected = vocabulary.input_shape_for(vocabulary.ARCHITECTURE_DATASETS[self.architecture])
        if vocabulary.input_shape_for(self.dataset) != expected:
            raise ValueError(
                f"architecture {self.architecture!r} expects {expected} images but dataset "
                f"{self.dataset!r} has {vocabulary.input_shape_for(self.dataset)}; pick a "
                "matching --dataset."
            )
        self._validate_numbers()
        self._validate_combinations()

    def _validate_numbers(self) -> None:
        for name in ("batch_size", "eval_batch_size", "discriminator_steps"):
            _at_least(name, getattr(self, name), 1)
        if self.finetune_epochs == 0:
            raise ValueError(
                "finetune_epochs is 0: the classifier head would never be trained and the run "
                "would save a chance-level classifier. Give finetune_epochs >= 1."
            )
        for name in (
            "pretrain_epochs",
            "finetune_epochs",
            "train_examples",
            "test_examples",
            "early_stopping_patience",
            "seed",
        ):
            _at_least(name, getattr(self, name), 0)
        for name in ("pretrain_epochs", "finetune_epochs"):
            check_epochs(name, getattr(self, name))
        for name in (
            "reconstruction_learning_rate",
            "discriminator_learning_rate",
            "adversarial_learning_rate",
            "learning_rate",
            "prior_stddev",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, received {value}.")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction must be in [0, 1), received {self.validation_fraction}."
            )
        for value in (self.reg_lambda, *self.reg_lambda_grid):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"reg_lambda values must be finite and >= 0, received {value}.")
        if not (math.isfinite(self.fault_aware_max_rate) and 0 < self.fault_aware_max_rate < 1):
            raise ValueError(
                f"fault_aware_max_rate must be in (0, 1), received {self.fault_aware_max_rate}."
            )

    def _validate_combinations(self) -> None:
        if self.reg_lambda_grid and self.regularization == "none":
            raise ValueError(
                f"reg_lambda_grid selects the penalty weight of 'l1'/'l2'; method is "
                f"{self.method!r}. Drop --reg_lambda_grid or use --method=l1/l2."
            )
        if self.reg_lambda_grid and self.validation_fraction == 0:
            raise ValueError(
                "reg_lambda_grid selects by validation accuracy; set validation_fraction > 0."
            )
        if self.early_stopping_patience and self.validation_fraction == 0:
            raise ValueError(
                "early_stopping_patience needs a validation split; set validation_fraction > 0."
            )
        kinds.trainable(self.fault_aware_kinds)
        transient = [name for name in self.fault_aware_kinds if kinds.get(name).transient]
        if transient:
            raise ValueError(
                f"fault_aware_kinds={','.join(self.fault_aware_kinds)}: {transient[0]} faults "
                "strike layer outputs anew for every inference, which the paper's networks "
                "do not train against; use it on your own model (aftt-train --model)."
            )
        if self.freeze_extractor and not self.pretrains:
            raise ValueError(
                "freeze_extractor keeps a pre-trained extractor fixed; only methods "
                f"{', '.join(PRETRAINING_METHODS)} pre-train one (method is {self.method!r})."
            )

    @property
    def pretrains(self) -> bool:
        """Whether the extractor is first trained as an adversarial autoencoder."""
        return methods.get(self.method).pretrains

    @property
    def fault_aware(self) -> bool:
        return methods.get(self.method).fault_aware

    @property
    def regularization(self) -> str:
        return methods.get(self.method).penalty

    def as_dict(self) -> dict[str, Any]:
        result = dataclasses.asdict(self)
        result["reg_lambda_grid"] = list(self.reg_lambda_grid)
        result["fault_aware_kinds"] = list(self.fault_aware_kinds)
        return result

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown config keys {unknown}; expected a subset of {sorted(known)}."
            )
        return cls(**values)

    def to_flagfile(self) -> str:
        """absl flagfile text that reproduces this config with `aftt-train`."""
        lines = []
        for name, value in self.as_dict().items():
            if isinstance(value, bool):
                lines.append(f"--{name}" if value else f"--no{name}")
            elif isinstance(value, list):
                lines.append(f"--{name}={','.join(str(v) for v in value)}")
            else:
                lines.append(f"--{name}={value}")
        return "\n".join(lines) + "\n"


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {', '.join(valid)}.")


# Fine-tuning a user's trained model (aftt-train --model, harden()): a tenth of the
# paper's from-scratch rate, so a trained model is adjusted rather than retrained.
FINETUNE_LEARNING_RATE = 1e-4
# More epochs than any run here needs (one epoch of the paper's networks takes seconds
# to minutes): a larger count is a typo that would run for years.
MAX_EPOCHS = 100_000


def check_epochs(name: str, value: int) -> None:
    """ValueError for an epoch count beyond `MAX_EPOCHS`, naming the flag."""
    if value > MAX_EPOCHS:
        raise ValueError(
            f"--{name}={value} is beyond {MAX_EPOCHS:,} epochs (years of training here); "
            "pass the number of passes over the data you mean (e.g. 10)."
        )


def _at_least(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, received {value!r}.")
