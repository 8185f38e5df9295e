"""aftt-train: train a classifier with AFTT or a baseline and evaluate it.

aftt-train --flagfile=flags/fmnist_mlp.flags --method=aftt --out=runs/fmnist_mlp_aftt
"""

from __future__ import annotations

import json
import logging

from absl import flags

from aftt_tf import data
from aftt_tf.cli import common, train_flags
from aftt_tf.io_utils import OutputError

flags.DEFINE_bool("overwrite", False, "Delete an existing run directory with another config first.")

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise common.usage_error(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.out:
        raise common.usage_error("--out is required: the run directory to create or resume.")
    config = train_flags.config_from_flags()
    logging.getLogger().setLevel(logging.INFO)
    from aftt_tf.training import train_lib  # TensorFlow is imported only after flags are valid.

    try:
        metrics = train_lib.train_and_evaluate(config, FLAGS.out, overwrite=FLAGS.overwrite)
    except (train_lib.RunDirectoryError, data.DataUnavailableError, OutputError) as error:
        raise common.usage_error(str(error)) from None
    summary = {
        key: metrics[key]
        for key in (
            "method",
            "architecture",
            "train_accuracy",
            "test_accuracy",
            "generalization_error",
        )
    }
    print(json.dumps(summary, indent=2))
    print(f"Run directory: {FLAGS.out}")


def run() -> None:
    common.run(main, "aftt-train", (__name__, "aftt_tf.cli.train_flags"))


if __name__ == "__main__":
    run()
