"""aftt-train: train a classifier with AFTT or a baseline and evaluate it.

The paper's networks:
    aftt-train --flagfile=flags/fmnist_mlp.flags --method=aftt --out=runs/fmnist_mlp_aftt
Your own model and data (fine-tunes from its weights; --from_scratch re-initialises):
    aftt-train --model=mine.keras --data=npz:train.npz --method=fat --epochs=3 --out=runs/mine_fat
"""

from __future__ import annotations

import json
import logging

from absl import flags

from aftt_tf.cli import common, data_flags, harden_flags, train_flags
from aftt_tf.data import datasets as data
from aftt_tf.io_utils import OutputError

flags.DEFINE_bool("overwrite", False, "Delete an existing run directory with another config first.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise common.usage_error(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.out:
        raise common.usage_error("--out is required: the run directory to create or resume.")
    if FLAGS.model:
        _harden_main()
        return
    given = [name for name in harden_flags.MODEL_ONLY if FLAGS[name].present]
    if given:
        raise common.usage_error(
            f"--{given[0]} is for your own model (--model); the paper's networks do not read it."
        )
    config = train_flags.config_from_flags()
    logging.getLogger().setLevel(logging.INFO)
    from aftt_tf.training import train_lib  # TensorFlow is imported only after flags are valid.

    try:
        metrics = train_lib.train_and_evaluate(config, FLAGS.out, overwrite=FLAGS.overwrite)
    except (train_lib.RunDirectoryError, data.DataUnavailableError, OutputError) as error:
        raise common.usage_error(str(error)) from None
    keys = ("method", "architecture", "train_accuracy", "test_accuracy", "generalization_error")
    print(json.dumps({key: metrics[key] for key in keys}, indent=2))
    print(f"Run directory: {FLAGS.out}")


def _harden_main() -> None:
    """aftt-train --model: the user's model through `harden` (harden_run)."""
    ignored = [name for name in ("architecture", "reg_lambda_grid") if FLAGS[name].present]
    if ignored:
        raise common.usage_error(
            f"--{ignored[0]} is for the paper's networks; with --model the network is yours."
        )
    with common.usage_errors():
        config = harden_flags.run_config()
        config.validate()  # Before TensorFlow loads: bad values cost nothing.
    logging.getLogger().setLevel(logging.INFO)
    from aftt_tf.campaigns import campaign_lib
    from aftt_tf.training import harden_run

    with common.usage_errors(data.DataUnavailableError):
        campaign_lib.import_modules(data_flags.imports())
        metrics = harden_run.run(config)
    keys = (
        "method",
        "validation_accuracy_before",
        "validation_accuracy",
        "test_accuracy_before",
        "test_accuracy",
        "batch_normalization",
    )
    print(json.dumps({key: metrics.get(key) for key in keys}, indent=2))
    print(f"Hardened classifier: {FLAGS.out}/classifier.keras")


def run() -> None:
    common.run(
        main,
        "aftt-train",
        (__name__, train_flags.__name__, harden_flags.__name__, data_flags.__name__),
    )


if __name__ == "__main__":
    run()
