"""aftt-reproduce: the paper's comparison (train, export, paired fault campaigns, report).

    aftt-reproduce --flagfile=flags/fmnist_mlp.flags --out=results/fmnist_mlp

On your own model and data (the methods harden it, as aftt-train --model does):

    aftt-reproduce --model=mine.keras --data=npz:train.npz --test_data=npz:test.npz \
        --methods=none,fat,range --epochs=3 --trials=10 --out=results/mine

Takes every aftt-train flag (the flagfiles in flags/ work as they are; --method is
ignored, each method sets its own) plus the flags below. Re-running resumes: finished
trainings, exports and campaign cells are reused.
"""

from __future__ import annotations

import logging

from absl import flags

from aftt_tf import vocabulary
from aftt_tf.cli import common, data_flags, executor_flags, harden_flags, train_flags
from aftt_tf.data import datasets as data
from aftt_tf.io_utils import OutputError

flags.DEFINE_list(
    "methods",
    list(vocabulary.METHODS),
    "Methods to train and compare: none, l1, l2, fat (fault-aware training), aftt, aftt_fat; "
    "with --model also range (activation range restriction; --model's default: none,fat,range).",
)
flags.DEFINE_list("l1_lambda_grid", ["1e-6", "1e-5", "1e-4"], "Lasso weights tried (grid search).")
flags.DEFINE_list(
    "l2_lambda_grid", ["1e-6", "1e-5", "1e-4", "1e-3"], "Tikhonov weights tried (grid search)."
)
flags.DEFINE_list(
    "faults", [], "Fault kinds: weight, node, filter (empty: weight, node, + filter for CNNs)."
)
flags.DEFINE_list("scopes", ["all", "extractor"], "Where to fault: all layers, the extractor.")
flags.DEFINE_list("runtimes", ["keras", "int8"], "keras (float32) and/or int8 (TFLite export).")
flags.DEFINE_list(
    "rates",
    ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.68", "0.7"],
    "Fault rates (fractions of each targeted layer's elements). --model: by default (or "
    "'cliff') 0 and the rates where the first method's model keeps about 90%, 50% and 20% "
    "of its accuracy above chance, found per campaign.",
)
flags.DEFINE_integer("trials", 20, "Trials per rate (fault maps shared by all methods).")
flags.DEFINE_integer("campaign_seed", 0, "Seed of the fault positions.")
flags.DEFINE_integer(
    "campaign_test_examples", 0, "Test images evaluated per campaign cell (0: the whole test set)."
)
flags.DEFINE_integer("campaign_batch_size", 2000, "Evaluation chunk size of the campaigns.")
flags.DEFINE_integer(
    "calibration_steps", 100, "Batches of 32 training images for int8 calibration."
)

flags.DEFINE_enum(
    "sampling",
    "exact",
    ["exact", "bernoulli"],
    "exact: round(rate * n) faults per layer; bernoulli: each element independently "
    "(the paper's Fig. 1 masks).",
)
flags.DEFINE_enum(
    "weight_kernels",
    "all",
    ["all", "4d"],
    "Weight faults on every kernel, or on 4-D (convolution) kernels only as the paper's "
    "Fig. 1 code does.",
)
flags.DEFINE_list(
    "protocols",
    ["deployed"],
    "deployed (faults evaluated as they are) and/or repaired (each cell fine-tuned around "
    "its faults first; Keras float32).",
)
flags.DEFINE_list("repair_epochs", ["5"], "Repair epochs; one repaired campaign per value.")
flags.DEFINE_list(
    "repair_rates",
    [],
    "Rates of the repaired campaigns (empty: 0 and the paper's quoted rate per fault kind).",
)
flags.DEFINE_integer("repair_trials", 0, "Trials per rate of the repaired campaigns (0: --trials).")
flags.DEFINE_integer("repair_train_examples", 0, "Training images per repair (0: all).")
flags.DEFINE_float("repair_learning_rate", 1e-3, "Learning rate of the repairs (RMSprop).")
flags.DEFINE_float("repair_weight_decay", 5e-4, "Decoupled weight decay of the repairs.")
flags.DEFINE_integer("repair_batch_size", 128, "Batch size of the repairs.")

flags.DEFINE_list(
    "int8_modes",
    ["ptq"],
    "int8 exports faulted beside Keras float32: ptq, fault_calibrated (activation ranges "
    "calibrated under weight faults), fault_qat (QAT with weight faults).",
)
flags.DEFINE_list(
    "fault_calibration_rates",
    ["0", "0.3", "0.6"],
    "fault_calibrated: weight fault rates of the calibration draws (ranges averaged).",
)
flags.DEFINE_float("fault_qat_max_rate", 0.6, "fault_qat: weight fault rates drawn below this.")
flags.DEFINE_integer("fault_qat_epochs", 2, "fault_qat: QAT epochs.")
flags.DEFINE_bool(
    "per_layer_stats",
    False,
    "Record per-layer int8 activation statistics (range, distinct levels) under weight "
    "faults for every int8 file.",
)

FLAGS = flags.FLAGS


def _protocol_values() -> dict:
    return {
        "sampling": FLAGS.sampling,
        "weight_kernels": FLAGS.weight_kernels,
        "protocols": tuple(FLAGS.protocols),
        "repair_epochs": common.numbers("repair_epochs", int),
        "repair_rates": common.numbers("repair_rates"),
        "repair_trials": FLAGS.repair_trials,
        "repair_train_examples": FLAGS.repair_train_examples,
        "repair_learning_rate": FLAGS.repair_learning_rate,
        "repair_weight_decay": FLAGS.repair_weight_decay,
        "repair_batch_size": FLAGS.repair_batch_size,
        "int8_modes": tuple(FLAGS.int8_modes),
        "fault_calibration_rates": common.numbers("fault_calibration_rates"),
        "fault_qat_max_rate": FLAGS.fault_qat_max_rate,
        "fault_qat_epochs": FLAGS.fault_qat_epochs,
        "per_layer_stats": FLAGS.per_layer_stats,
    }


def config_from_flags():
    """The ReproduceConfig of the parsed flags; bad values become app.UsageError."""
    if FLAGS.reg_lambda_grid:
        raise common.usage_error(
            "--reg_lambda_grid is an aftt-train flag; aftt-reproduce takes --l1_lambda_grid "
            "and --l2_lambda_grid. Remove --reg_lambda_grid."
        )
    train_config = train_flags.config_from_flags()
    from aftt_tf.reproduce.config import ReproduceConfig

    config = ReproduceConfig(
        train=train_config,
        out=FLAGS.out,
        methods=tuple(FLAGS.methods),
        l1_lambda_grid=common.numbers("l1_lambda_grid"),
        l2_lambda_grid=common.numbers("l2_lambda_grid"),
        faults=tuple(FLAGS.faults),
        scopes=tuple(FLAGS.scopes),
        runtimes=tuple(FLAGS.runtimes),
        rates=common.numbers("rates"),
        trials=FLAGS.trials,
        campaign_seed=FLAGS.campaign_seed,
        campaign_test_examples=FLAGS.campaign_test_examples,
        campaign_batch_size=FLAGS.campaign_batch_size,
        calibration_steps=FLAGS.calibration_steps,
        **executor_flags.values(),
        **_protocol_values(),
    )
    try:
        config.validate()
    except ValueError as error:
        raise common.usage_error(str(error)) from None
    return config


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise common.usage_error(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.out:
        raise common.usage_error("--out is required: the directory of the reproduction.")
    if FLAGS.model:
        _compare_main()
        return
    config = config_from_flags()
    logging.getLogger().setLevel(logging.INFO)
    from aftt_tf.reproduce import pipeline

    try:
        results = pipeline.reproduce(config)
    except (pipeline.ReproduceError, data.DataUnavailableError, OutputError) as error:
        raise common.usage_error(str(error)) from None
    print(f"Report: {FLAGS.out}/report.md and {FLAGS.out}/report.html")
    for line in results["verdicts"]:
        print("verdict: " + line.replace("**", ""))


def _explicit_rates() -> bool:
    """--model comparisons run at the first model's cliff unless --rates gives numbers."""
    return FLAGS["rates"].present and [r.strip().lower() for r in FLAGS.rates] != ["cliff"]


def _compare_config():
    from aftt_tf.reproduce import user_comparison

    methods = tuple(FLAGS.methods) if FLAGS["methods"].present else ("none", "fat", "range")
    return user_comparison.ComparisonConfig(
        model=FLAGS.model,
        out=FLAGS.out,
        methods=methods,
        harden=harden_flags.harden_config(methods[0]),
        data_options=harden_flags.data_options(),
        test_data=FLAGS.test_data,
        faults=tuple(FLAGS.faults),
        rates=common.numbers("rates") if _explicit_rates() else (0.0, 0.1, 0.3, 0.5),
        cliff=not _explicit_rates(),
        trials=FLAGS.trials,
        seed=FLAGS.campaign_seed,
        test_examples=FLAGS.campaign_test_examples,
        runtimes=tuple(FLAGS.runtimes),
    )


def _compare_main() -> None:
    """aftt-reproduce --model: the comparison on the user's model (user_comparison)."""
    from aftt_tf.campaigns import campaign_lib

    with common.usage_errors():
        config = _compare_config()
        config.validate()
    logging.getLogger().setLevel(logging.INFO)
    from aftt_tf.campaigns.engine import ChanceAccuracyError
    from aftt_tf.faults.spec import FaultTargetError
    from aftt_tf.reproduce import user_comparison

    with common.usage_errors(data.DataUnavailableError):
        campaign_lib.import_modules(data_flags.imports())
    with common.refusals(OutputError, ChanceAccuracyError, FaultTargetError):
        results = user_comparison.compare(config)
    print(f"Report: {results['report']} (fault kinds: {', '.join(results['kinds'])})")
    for line in results["verdicts"]:
        print("verdict: " + line)


def run() -> None:
    common.run(
        main,
        "aftt-reproduce",
        (
            __name__,
            train_flags.__name__,
            harden_flags.__name__,
            data_flags.__name__,
            executor_flags.__name__,
        ),
    )


if __name__ == "__main__":
    run()
