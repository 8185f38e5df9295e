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

from aftt_tf import data
from aftt_tf.cli import common, train_flags
from aftt_tf.io_utils import OutputError

flags.DEFINE_bool("overwrite", False, "Delete an existing run directory with another config first.")
flags.DEFINE_string(
    "model",
    None,
    "Your own trained .keras classifier: hardened with --method (none, l1, l2, fat, aftt, "
    "aftt_fat, range) instead of training a paper --architecture.",
)
flags.DEFINE_string(
    "data",
    "",
    "--model: training data (a built-in name or tfds:NAME: its training split; npz:PATH, "
    "folder:PATH). A seeded 10% is held out for validation unless --validation_data.",
)
flags.DEFINE_string("validation_data", "", "--model: validation data (same forms as --data).")
flags.DEFINE_string(
    "test_data", "", "--model: test data (default: a built-in or TFDS name's test split)."
)
flags.DEFINE_list("npz_keys", ["x", "y"], "Names of the inputs and labels arrays of npz: data.")
flags.DEFINE_string(
    "input_transform",
    "auto",
    "--model: stored data -> model input (auto, unit, raw, symmetric, MODULE:FUNCTION).",
)
flags.DEFINE_float("input_scale", None, "Affine input transform x * scale + offset instead.")
flags.DEFINE_float("input_offset", None, "Offset of the affine input transform.")
flags.DEFINE_integer("epochs", 3, "--model: supervised epochs (fine-tuning, or all from scratch).")
flags.DEFINE_bool("from_scratch", False, "--model: re-initialise every weight first.")
flags.DEFINE_string(
    "split_layer",
    "",
    "--model, aftt/aftt_fat: the feature extractor's last layer (default: the input of the "
    "final Dense block).",
)
flags.DEFINE_integer("decoder_width", 256, "--model, aftt: width of the generated decoder.")
flags.DEFINE_enum(
    "range_statistic", "max", ["max", "percentile"], "--model, range: bound statistic."
)
flags.DEFINE_float("range_percentile", 99.99, "--model, range: percentile of the bounds.")
flags.DEFINE_integer(
    "range_examples", 10000, "--model, range: training examples the bounds are read from."
)
flags.DEFINE_bool(
    "allow_chance_accuracy", False, "--model: train even when the model is at chance level."
)
flags.DEFINE_multi_string("import", [], "Module to import first (custom layers of --model).")

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise common.usage_error(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.out:
        raise common.usage_error("--out is required: the run directory to create or resume.")
    if FLAGS.model:
        _harden_main()
        return
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


def _harden_config():
    from aftt_tf.faults.frontend import DataOptions
    from aftt_tf.training import harden, harden_run

    learning_rate = FLAGS.learning_rate if FLAGS["learning_rate"].present else 1e-4
    return harden_run.HardenRunConfig(
        model=FLAGS.model,
        out=FLAGS.out,
        harden=harden.HardenConfig(
            method=FLAGS.method,
            epochs=FLAGS.epochs,
            from_scratch=FLAGS.from_scratch,
            learning_rate=learning_rate,
            batch_size=FLAGS.batch_size,
            loss=FLAGS.classification_loss
            if FLAGS["classification_loss"].present
            else "crossentropy",
            reg_lambda=FLAGS.reg_lambda,
            fault_kinds=tuple(FLAGS.fault_aware_kinds),
            fault_max_rate=FLAGS.fault_aware_max_rate,
            split_layer=FLAGS.split_layer,
            pretrain_epochs=FLAGS.pretrain_epochs,
            decoder_width=FLAGS.decoder_width,
            prior_stddev=FLAGS.prior_stddev,
            discriminator_steps=FLAGS.discriminator_steps,
            range_statistic=FLAGS.range_statistic,
            range_percentile=FLAGS.range_percentile,
            range_examples=FLAGS.range_examples,
            seed=FLAGS.seed,
        ),
        data_options=DataOptions(
            data=FLAGS.data or FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            tfds_data_dir=FLAGS.tfds_data_dir,
            npz_keys=tuple(FLAGS.npz_keys),
            input_transform=FLAGS.input_transform,
            input_scale=FLAGS.input_scale,
            input_offset=FLAGS.input_offset,
        ),
        validation_data=FLAGS.validation_data,
        test_data=FLAGS.test_data,
        train_examples=FLAGS.train_examples,
        allow_chance_accuracy=FLAGS.allow_chance_accuracy,
    )


def _harden_main() -> None:
    """aftt-train --model: the user's model through `harden` (harden_run)."""
    ignored = [name for name in ("architecture", "reg_lambda_grid") if FLAGS[name].present]
    if ignored:
        raise common.usage_error(
            f"--{ignored[0]} is for the paper's networks; with --model the network is yours."
        )
    with common.usage_errors():
        config = _harden_config()
        config.validate()  # Before TensorFlow loads: bad values cost nothing.
    logging.getLogger().setLevel(logging.INFO)
    from aftt_tf.faults import campaign_lib
    from aftt_tf.training import harden_run

    with common.usage_errors(data.DataUnavailableError):
        campaign_lib.import_modules(tuple(FLAGS["import"].value))
        metrics = harden_run.run(config)
    summary = {
        key: metrics.get(key)
        for key in (
            "method",
            "validation_accuracy_before",
            "validation_accuracy",
            "test_accuracy_before",
            "test_accuracy",
            "batch_normalization",
        )
    }
    print(json.dumps(summary, indent=2))
    print(f"Hardened classifier: {FLAGS.out}/classifier.keras")


def run() -> None:
    common.run(main, "aftt-train", (__name__, "aftt_tf.cli.train_flags"))


if __name__ == "__main__":
    run()
