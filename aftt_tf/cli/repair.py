"""aftt-repair: fine-tune a classifier around a fixed fault map (defect-aware retraining).

    aftt-repair --model=runs/fmnist_mlp_aftt/classifier.keras --fault=weight --rate=0.6 \
        --seed=0 --trial=0 --epochs=5 --out=runs/fmnist_mlp_aftt_repaired
"""

from __future__ import annotations

import json
import logging

from absl import flags

from aftt_tf.cli import common, data_flags
from aftt_tf.faults import kinds

flags.DEFINE_string("model", None, "classifier.keras to repair (Sequential or Functional).")
flags.DEFINE_string("out", None, "Run directory of the repair (resumed if it holds it).")
flags.DEFINE_enum(
    "fault", "weight", kinds.names(stuck_at_zero=True), "Fault kind of the map (held at 0)."
)
flags.DEFINE_float("rate", 0.5, "Fault rate of the map.")
flags.DEFINE_integer("seed", 0, "Campaign seed of the map (aftt-faults --seed).")
flags.DEFINE_integer("trial", 0, "Campaign trial of the map: the cell (rate, trial).")
flags.DEFINE_list("layers", [], "Fault only these layers (names or glob patterns).")
flags.DEFINE_integer("epochs", 5, "Repair epochs.")
flags.DEFINE_float("learning_rate", 1e-3, "Learning rate.")
flags.DEFINE_float("weight_decay", 5e-4, "Decoupled weight decay (0: none).")
flags.DEFINE_enum("optimizer", "rmsprop", ["rmsprop", "adam", "sgd"], "Optimizer.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_string("loss", "", "mse or crossentropy (default: the run's, from its config.json).")
flags.DEFINE_integer("train_examples", 0, "Train on this many examples (0: all).")
flags.DEFINE_string("dataset", "", "Built-in training data (older spelling of --data=NAME).")
flags.DEFINE_string(
    "data",
    "",
    "Training data: a built-in name or tfds:NAME (their training split), npz:PATH or "
    "folder:PATH. Required unless the model's aftt-train run names its dataset.",
)
flags.DEFINE_string(
    "test_data",
    "",
    "Data the accuracies are measured on (default: the built-in or TFDS test split; for a "
    "file, a seeded 20% of --data held out from the repair).",
)
flags.DEFINE_integer("data_seed", 0, "Seed of the batch order and of the held-out part.")
flags.DEFINE_string(
    "fault_map",
    "",
    "A chip's fault map (.json/.csv; see aftt_tf/faults/fault_map.py), e.g. the "
    "fault_map.json of an earlier repair: repaired with --rate=0, or on top of the cell.",
)
flags.DEFINE_string(
    "protected",
    "",
    "Protection plan (.npz from aftt-sensitivity): the map's faults on its elements are dropped.",
)

FLAGS = flags.FLAGS


def config_from_flags():
    """The RepairConfig of the parsed flags (imports no TensorFlow)."""
    from aftt_tf.training.repair_config import RepairConfig

    return common.from_flags(
        RepairConfig,
        "fault rate seed trial layers epochs learning_rate weight_decay optimizer batch_size "
        "loss train_examples dataset data_seed test_data allow_chance_accuracy protected "
        "fault_map",
        model=FLAGS.model or "",
        out=FLAGS.out or "",
        data_options=data_flags.options(FLAGS.data),
    )


def main(argv: list[str]) -> None:
    common.check_arguments(argv, "model", "out")
    config = config_from_flags()
    from aftt_tf.training import repair_config

    with common.usage_errors():  # Before TensorFlow is imported: bad input fails at once.
        config.validate()
        repair_config.check_directory(config)
    logging.getLogger().setLevel(logging.INFO)
    from aftt_tf.campaigns import campaign_lib
    from aftt_tf.data import datasets as data
    from aftt_tf.faults.spec import FaultTargetError
    from aftt_tf.io_utils import OutputError
    from aftt_tf.training import repair

    with common.refusals(
        FaultTargetError, data.DataUnavailableError, FileNotFoundError, ValueError, OutputError
    ):
        campaign_lib.import_modules(data_flags.imports())
        metrics = repair.repair(config)
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    print(f"Repaired classifier: {FLAGS.out}/classifier.keras")


def run() -> None:
    common.run(main, "aftt-repair", (__name__, data_flags.__name__))


if __name__ == "__main__":
    run()
