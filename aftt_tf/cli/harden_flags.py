"""The flags of the user's own model (`--model`), shared by aftt-train (hardening) and
aftt-reproduce (the comparison on it), and the configs they make. Training settings
(--method, --batch_size, --learning_rate, --fault_aware_*, --reg_lambda, --pretrain_epochs,
--prior_stddev, --discriminator_steps, --seed) come from train_flags.
"""

from __future__ import annotations

from absl import flags

from aftt_tf.cli import (
    common,
    data_flags,
    train_flags,  # noqa: F401  (defines the training flags read here)
)

flags.DEFINE_string(
    "model",
    None,
    "Your own trained .keras classifier: hardened with --method (any of them; range and "
    "range_fat only here) instead of training a paper --architecture.",
)
flags.DEFINE_string(
    "data",
    "",
    "--model: training data (a built-in name or tfds:NAME: its training split; npz:PATH, "
    "folder:PATH). aftt-train holds a seeded 10% out for validation unless --validation_data.",
)
flags.DEFINE_string("validation_data", "", "--model: validation data (same forms as --data).")
flags.DEFINE_string(
    "test_data", "", "--model: test data (default: a built-in or TFDS name's test split)."
)
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
flags.DEFINE_enum(
    "range_mode",
    "clip",
    ["clip", "zero"],
    "--model, range: values outside the bounds saturate (clip, Ranger) or become 0 "
    "(zero, FT-ClipAct).",
)
flags.DEFINE_float("range_percentile", 99.99, "--model, range: percentile of the bounds.")
flags.DEFINE_integer(
    "range_examples", 10000, "--model, range: training examples the bounds are read from."
)

flags.DEFINE_string(
    "protected",
    "",
    "--model, fat/aftt_fat: protection plan (.npz from aftt-sensitivity) whose weight "
    "elements fault-aware training never faults (the hardware protects them).",
)

flags.DEFINE_string(
    "weight_clip",
    "",
    "--model: hold every kernel in [-b, b] through training ('auto': per layer, 3 standard "
    "deviations of its kernel at the start; 'Kstd' such as '2.5std': K of them; or a "
    "number for all layers); composes with "
    "every method (clip + fat, clip + range); the int8 export's scales follow.",
)

flags.DEFINE_enum(
    "prior",
    "auto",
    ["auto", "gaussian", "rectified_gaussian"],
    "--model, aftt/aftt_fat: Game 2's prior. auto fits the latent code: a non-negative latent "
    "(after a ReLU) gets a rectified Gaussian, any other a Gaussian, each with the latent's "
    "second moment; gaussian / rectified_gaussian use --prior_stddev.",
)

flags.DEFINE_float(
    "fault_aware_value",
    None,
    "--model, fat/aftt_fat with --fault_aware_kinds=activation_value: the value the struck "
    "outputs take (e.g. 1e4, a large corrupted activation).",
)

flags.DEFINE_bool(
    "fault_aware_clean_loss",
    False,
    "--model, fat/aftt_fat: each step's loss is the mean of the faulty pass's and a "
    "fault-free pass's over the same stored weights (RandBET trains on clean and perturbed "
    "weights together): less clean accuracy lost, a second forward and backward pass per step.",
)

flags.DEFINE_enum(
    "storage",
    "float32",
    ["float32", "int8"],
    "--model, fat/aftt_fat: what fault-aware training faults: float32 weights, or int8 (the "
    "per-channel int8 codes the deployed file holds, straight-through gradients: with "
    "--fault_aware_kinds=bit_error, random bit error training; bit and bit_error need it).",
)

FLAGS = flags.FLAGS
# Flags that only the user-model path reads (the paper's networks refuse them).
MODEL_ONLY = (
    "data",
    "validation_data",
    "test_data",
    "from_scratch",
    "split_layer",
    "decoder_width",
    "range_statistic",
    "range_mode",
    "range_percentile",
    "range_examples",
    "protected",
    "weight_clip",
    "fault_aware_clean_loss",
    "fault_aware_value",
    "prior",
    "storage",
)


def data_options():
    """The `frontend.DataOptions` of the parsed flags."""
    return data_flags.options(FLAGS.data or FLAGS.dataset)


def harden_config(method: str):
    """The `harden.HardenConfig` of the parsed flags (fine-tuning learning rate 1e-4
    unless --learning_rate is given; loss crossentropy unless --classification_loss)."""
    from aftt_tf.training import harden
    from aftt_tf.training.config import FINETUNE_LEARNING_RATE

    if FLAGS.prior == "auto" and FLAGS["prior_stddev"].present:
        raise common.usage_error(
            "--prior_stddev sets an explicit prior's sigma; --prior=auto measures it from "
            "the latent code. Pass --prior=gaussian or --prior=rectified_gaussian with it."
        )
    return common.from_flags(
        harden.HardenConfig,
        "epochs from_scratch batch_size reg_lambda split_layer pretrain_epochs decoder_width "
        "prior_stddev discriminator_steps range_statistic range_mode range_percentile "
        "range_examples seed protected weight_clip storage prior",
        fault_clean_loss=FLAGS.fault_aware_clean_loss,
        fault_value=FLAGS.fault_aware_value,
        method=method,
        learning_rate=(
            FLAGS.learning_rate if FLAGS["learning_rate"].present else FINETUNE_LEARNING_RATE
        ),
        loss=FLAGS.classification_loss if FLAGS["classification_loss"].present else "crossentropy",
        fault_kinds=tuple(FLAGS.fault_aware_kinds),
        fault_max_rate=FLAGS.fault_aware_max_rate,
    )


def run_config():
    """The `harden_run.HardenRunConfig` of aftt-train --model."""
    from aftt_tf.training import harden_run

    return common.from_flags(
        harden_run.HardenRunConfig,
        "model out validation_data test_data train_examples allow_chance_accuracy",
        harden=harden_config(FLAGS.method),
        data_options=data_options(),
    )
