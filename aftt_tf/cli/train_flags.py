"""The `aftt-train` training flags, shared by every binary that trains (aftt-train,
aftt-reproduce): one definition per TrainConfig field, and the parsed config.
"""

from __future__ import annotations

from absl import flags

from aftt_tf import vocabulary
from aftt_tf.cli import common
from aftt_tf.training import config as config_lib

_DEFAULTS = config_lib.TrainConfig()

flags.DEFINE_enum(
    "method",
    _DEFAULTS.method,
    vocabulary.USER_METHODS,
    "Training method (range: activation range restriction; range_fat: range, then "
    "fault-aware training through the bounds; both with --model only).",
)
flags.DEFINE_enum("architecture", _DEFAULTS.architecture, vocabulary.ARCHITECTURES, "Network.")
flags.DEFINE_string(
    "dataset", "", f"One of {', '.join(vocabulary.DATASETS)}; empty: the architecture's."
)
flags.DEFINE_enum(
    "data_source", _DEFAULTS.data_source, vocabulary.DATA_SOURCES, "Where to load data from."
)
flags.DEFINE_float(
    "validation_fraction",
    _DEFAULTS.validation_fraction,
    "Fraction of the training set held out for model selection.",
)
flags.DEFINE_integer("train_examples", 0, "Use only this many training examples (0: all).")
flags.DEFINE_integer("test_examples", 0, "Use only this many test examples (0: all).")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Training batch size (global).")
flags.DEFINE_integer("eval_batch_size", _DEFAULTS.eval_batch_size, "Evaluation batch size.")
flags.DEFINE_integer(
    "pretrain_epochs",
    _DEFAULTS.pretrain_epochs,
    "Epochs of adversarial autoencoder pre-training (aftt).",
)
flags.DEFINE_float(
    "reconstruction_learning_rate",
    _DEFAULTS.reconstruction_learning_rate,
    "Adam learning rate of extractor + decoder in Game 1.",
)
flags.DEFINE_float(
    "discriminator_learning_rate",
    _DEFAULTS.discriminator_learning_rate,
    "Adam learning rate of the discriminator (paper: 5e-5).",
)
flags.DEFINE_float(
    "adversarial_learning_rate",
    _DEFAULTS.adversarial_learning_rate,
    "Adam learning rate of the extractor in Game 2.",
)
flags.DEFINE_integer(
    "discriminator_steps",
    _DEFAULTS.discriminator_steps,
    "Discriminator updates per batch (k in Algorithm 1).",
)
flags.DEFINE_float("prior_stddev", _DEFAULTS.prior_stddev, "Sigma of the Gaussian prior.")
flags.DEFINE_integer("finetune_epochs", _DEFAULTS.finetune_epochs, "Epochs of supervised training.")
flags.DEFINE_float(
    "learning_rate",
    _DEFAULTS.learning_rate,
    "Adam learning rate, supervised phase (paper networks; --model runs fine-tune with "
    f"{config_lib.FINETUNE_LEARNING_RATE:g} unless this flag is given).",
)
flags.DEFINE_enum(
    "lr_schedule",
    _DEFAULTS.lr_schedule,
    config_lib.LR_SCHEDULES,
    "Supervised learning rate: constant, or cosine decay to 0 over finetune_epochs.",
)
flags.DEFINE_enum(
    "classification_loss",
    _DEFAULTS.classification_loss,
    vocabulary.CLASSIFICATION_LOSSES,
    "mse: paper Eq. 15; or crossentropy (the default of --model runs unless this flag is given).",
)
flags.DEFINE_bool("freeze_extractor", False, "Fine-tune only the head (aftt).")
flags.DEFINE_float("reg_lambda", _DEFAULTS.reg_lambda, "Penalty weight of l1/l2.")
flags.DEFINE_list("reg_lambda_grid", [], "Lambdas to try; the best by validation accuracy wins.")
flags.DEFINE_list(
    "fault_aware_kinds",
    list(_DEFAULTS.fault_aware_kinds),
    "fat/aftt_fat: fault kinds drawn during supervised training, one per step (the "
    "campaigns' kinds: weight, filter, node, stuck_value; bit and bit_error with "
    "--storage=int8; activation_value with --fault_aware_value).",
)
flags.DEFINE_float(
    "fault_aware_max_rate",
    _DEFAULTS.fault_aware_max_rate,
    "fat/aftt_fat: each step's fault rate is uniform in [0, this].",
)
flags.DEFINE_integer(
    "early_stopping_patience",
    0,
    "Stop after this many epochs without a better validation accuracy (0: off).",
)
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of initialisation, data order and sampling.")
flags.DEFINE_bool("jit_compile", _DEFAULTS.jit_compile, "Compile train steps with XLA.")
flags.DEFINE_enum("strategy", _DEFAULTS.strategy, config_lib.STRATEGIES, "tf.distribute strategy.")
flags.DEFINE_string(
    "out", None, "Output directory (created; resumed if it holds the same configuration)."
)

FLAGS = flags.FLAGS


def config_from_flags() -> config_lib.TrainConfig:
    """Builds the config from parsed flags; bad values become app.UsageError."""
    values = {}
    for field in config_lib.TrainConfig.__dataclass_fields__:
        values[field] = FLAGS[field].value
    try:
        values["reg_lambda_grid"] = tuple(float(v) for v in values["reg_lambda_grid"])
    except ValueError as error:
        raise common.usage_error(
            f"--reg_lambda_grid must be comma-separated numbers: {error}"
        ) from None
    values["fault_aware_kinds"] = tuple(values["fault_aware_kinds"])
    config = config_lib.TrainConfig(**values)
    try:
        config.validate()
    except ValueError as error:
        raise common.usage_error(str(error)) from None
    return config
