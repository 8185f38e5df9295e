"""Repair configuration: a plain dataclass validated without TensorFlow (aftt-repair's flags).

The repair itself is `aftt_tf.training.repair`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from aftt_tf import io_utils, vocabulary
from aftt_tf.data.frontend import DataOptions, flat_record
from aftt_tf.faults import kinds

OPTIMIZERS = ("rmsprop", "adam", "sgd")


@dataclasses.dataclass
class RepairConfig:
    """One repair.

    Attributes:
        model: the classifier.keras to repair (Sequential or Functional).
        out: the repair's run directory (resumed if it holds this repair).
        fault, rate, seed, trial, layers: the fault map: the cell (rate, trial) of an
            `aftt-faults --fault=... --seed=... --layers=...` campaign.
        epochs, learning_rate, weight_decay, optimizer, batch_size: the fine-tuning (the
            defaults follow the pruning scripts the paper's fault code comes from:
            RMSprop, lr 1e-3, weight decay 5e-4, 5 epochs).
        loss: classification loss; '' takes the run's (config.json beside the model),
            else 'crossentropy'.
        train_examples: train on only this many examples (0: all).
        dataset: built-in training data (older spelling of `data_options.data`).
        data_seed: order of the training batches (and of the held-out part of a file).
        data_options: the training data in any form (a built-in name, tfds:NAME,
            npz:PATH, folder:PATH; default: the dataset the model's aftt-train run names),
            its directories and input transform, as in aftt-faults.
        test_data: the data the accuracies are measured on (default: the built-in or
            TFDS test split; for a file, a seeded 20% of it, held out from training).
        allow_chance_accuracy: repair even when the model is at chance level before faults.
    """

    model: str
    out: str
    fault: str = "weight"
    rate: float = 0.5
    seed: int = 0
    trial: int = 0
    layers: tuple[str, ...] = ()
    epochs: int = 5
    learning_rate: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "rmsprop"
    batch_size: int = 128
    loss: str = ""
    train_examples: int = 0
    dataset: str = ""
    data_seed: int = 0
    data_options: DataOptions = DataOptions()
    test_data: str = ""
    allow_chance_accuracy: bool = False
    protected: str = ""  # A protection plan: its elements keep their values in the map.
    fault_map: str = ""  # A chip's fault map: its faults on top of the (rate, trial) cell.

    def validate(self) -> None:
        """Raises ValueError for bad values (files are checked when the repair starts)."""
        repairable = kinds.names(stuck_at_zero=True)  # Held at 0 by masks training keeps.
        if self.fault not in repairable:
            raise ValueError(f"--fault must be one of {', '.join(repairable)}, got {self.fault!r}.")
        if not (math.isfinite(self.rate) and 0.0 <= self.rate <= 1.0):
            raise ValueError(f"--rate must be in [0, 1], received {self.rate}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}.")
        if self.loss and self.loss not in vocabulary.CLASSIFICATION_LOSSES:
            raise ValueError(
                f"--loss must be one of {', '.join(vocabulary.CLASSIFICATION_LOSSES)} or empty."
            )
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, received {getattr(self, name)}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0) or not (
            math.isfinite(self.weight_decay) and self.weight_decay >= 0
        ):
            raise ValueError(
                f"--learning_rate must be a finite number > 0 and --weight_decay a finite "
                f"number >= 0; received {self.learning_rate} and {self.weight_decay}."
            )
        if self.train_examples < 0 or self.seed < 0 or self.trial < 0:
            raise ValueError("--train_examples, --seed and --trial must be >= 0.")
        self.data_options.or_dataset(self.dataset).validate()
        if self.test_data:
            replace = dataclasses.replace(self.data_options, data=self.test_data)
            replace.validate()
        if not math.isfinite(self.rate):
            raise ValueError(f"--rate must be in [0, 1], received {self.rate}.")

    def spec(self):
        """The campaign spec whose cell (rate, trial) is the fault map."""
        from aftt_tf.faults.spec import FaultSpec

        return FaultSpec(
            kind=self.fault,
            rates=(self.rate,),
            trials=self.trial + 1,
            seed=self.seed,
            layers=tuple(self.layers),
            protected=self.protected,
            fault_map=self.fault_map,
        )


def check_directory(config: RepairConfig) -> bool:
    """Refuses an --out holding anything but this repair; True when resuming."""
    out = Path(config.out)
    io_utils.check_output_path(out)
    if not out.exists() or not io_utils.entries(out):
        return False
    recorded = out / "config.json"
    # Repairs written before the data flags existed recorded none: their defaults.
    added = {
        "data": "",
        "test_data": "",
        "tfds_data_dir": "",
        "npz_keys": ["x", "y"],
        "input_transform": "auto",
        "input_scale": None,
        "input_offset": None,
        "allow_chance_accuracy": False,
        "protected": "",
        "fault_map": "",
    }
    if not recorded.exists() or {**added, **io_utils.read_json(recorded)} != record(config):
        raise io_utils.OutputError(
            f"{out} holds something other than this repair (another model, fault map or "
            "training setting). Choose another --out."
        )
    return True


def record(config: RepairConfig) -> dict[str, Any]:
    """What config.json holds: the config (its data options at the top level, as repairs
    have always recorded them) and the repaired model's sha256."""
    values = flat_record(dataclasses.asdict(config))
    values["layers"] = list(config.layers)
    values["npz_keys"] = list(config.data_options.npz_keys)
    values["model_sha256"] = io_utils.sha256_file(Path(config.model))
    return values
