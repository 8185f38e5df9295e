"""aftt-export: SavedModel and TFLite (float32, int8 PTQ, int8 QAT) exports of a classifier.

    aftt-export --model=runs/fmnist_mlp_aftt/classifier.keras --out=export/fmnist_mlp_aftt \
        --formats=saved_model,tflite_float32,tflite_int8,tflite_int8_qat

Fault-tolerant int8 files (opt-in): tflite_int8_fault_calibrated (activation ranges
calibrated on the network with sampled faults, --fault_calibration_*) and
tflite_int8_fault_qat (quantization-aware training with stuck-at-0 weight faults in
every step, --fault_qat_max_rate).
"""

from __future__ import annotations

import json
import logging

from absl import flags

from aftt_tf.cli import common, data_flags
from aftt_tf.faults import kinds
from aftt_tf.vocabulary import DEFAULT_EXPORT_FORMATS
from aftt_tf.vocabulary import EXPORT_FORMATS as FORMATS

flags.DEFINE_string("model", None, "classifier.keras of an aftt-train run.")
flags.DEFINE_string("out", None, "Export directory, e.g. export/NAME (default root: export/).")
flags.DEFINE_list("formats", list(DEFAULT_EXPORT_FORMATS), f"Any of {', '.join(FORMATS)}.")
flags.DEFINE_integer(
    "calibration_steps", 100, "Representative-dataset batches for int8 calibration."
)
flags.DEFINE_integer("calibration_batch_size", 32, "Images per calibration batch.")
flags.DEFINE_integer("qat_epochs", 2, "Quantization-aware fine-tuning epochs.")
flags.DEFINE_integer("qat_examples", 0, "Training examples for QAT (0: all).")
flags.DEFINE_float("qat_learning_rate", 1e-4, "Adam learning rate of QAT.")
flags.DEFINE_string("dataset", "", "Built-in data (older spelling of --data=NAME).")
flags.DEFINE_string(
    "data",
    "",
    "Data the manifest's accuracies are measured on: a built-in name or tfds:NAME (their "
    "test split), npz:PATH or folder:PATH. Required unless the model's aftt-train run "
    "names its dataset.",
)
flags.DEFINE_string(
    "calibration_data",
    "",
    "int8 calibration and QAT data (default: a built-in or TFDS training split; for a "
    "file, the --data file itself, recorded in the manifest).",
)
flags.DEFINE_integer("test_examples", 0, "Test images for the manifest's accuracies (0: all).")
flags.DEFINE_integer("seed", 0, "Seed of calibration order and QAT.")
flags.DEFINE_bool("overwrite", False, "Replace an existing export directory.")
flags.DEFINE_enum(
    "fault_calibration_kind",
    "weight",
    kinds.names(stuck_at_zero=True),
    "Faults of the calibration.",
)
flags.DEFINE_list(
    "fault_calibration_rates",
    ["0", "0.3", "0.6"],
    "Fault rates of the calibration draws (0: fault-free); ranges are the mean over draws.",
)
flags.DEFINE_integer("fault_calibration_draws", 4, "Fault maps per calibration rate.")
flags.DEFINE_float(
    "fault_qat_max_rate", 0.6, "Fault-aware QAT: weight fault rates drawn below this per step."
)

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    common.check_arguments(argv, "model", "out")
    unknown = [name for name in FLAGS.formats if name not in FORMATS]
    if unknown:
        raise common.usage_error(
            f"Unknown export formats {unknown}; expected any of {', '.join(FORMATS)}."
        )
    try:
        rates = tuple(float(rate) for rate in FLAGS.fault_calibration_rates)
    except ValueError:
        raise common.usage_error(
            f"--fault_calibration_rates must be numbers, received {FLAGS.fault_calibration_rates}."
        ) from None
    logging.getLogger().setLevel(logging.INFO)
    from aftt_tf import io_utils
    from aftt_tf.data import datasets as data
    from aftt_tf.deploy import export_lib

    config = _config_from_flags(export_lib, rates)
    from aftt_tf.campaigns import campaign_lib

    with common.usage_errors(data.DataUnavailableError):
        campaign_lib.import_modules(data_flags.imports())
        prepared = export_lib.prepare(config)
    with common.refusals(io_utils.OutputError):
        manifest = export_lib.export_classifier(config, prepared)
    summary = {
        name: artifact.get("test_accuracy") for name, artifact in manifest["artifacts"].items()
    }
    print(json.dumps({"keras": manifest["keras_test_accuracy"], **summary}, indent=2))
    for name, reason in manifest["not_exported"].items():
        print(f"not exported: {name}: {reason}")
    print(f"Export directory: {FLAGS.out}")
    failed = [name for name in manifest["not_exported"] if name not in prepared.left_out]
    if failed:
        raise RuntimeError(
            f"{len(failed)} of the requested formats failed ({', '.join(failed)}); the others "
            f"are in {FLAGS.out}, and its manifest.json records why (not_exported)."
        )


def _config_from_flags(export_lib, rates: tuple[float, ...]):
    """The ExportConfig of the parsed flags."""
    return common.from_flags(
        export_lib.ExportConfig,
        "model out formats calibration_steps calibration_batch_size qat_epochs qat_examples "
        "qat_learning_rate dataset test_examples overwrite seed fault_calibration_kind "
        "fault_calibration_draws fault_qat_max_rate calibration_data allow_chance_accuracy",
        fault_calibration_rates=rates,
        data_options=data_flags.options(FLAGS.data),
        formats_given=FLAGS["formats"].present,
    )


def run() -> None:
    common.run(main, "aftt-export", (__name__, data_flags.__name__))


if __name__ == "__main__":
    run()
