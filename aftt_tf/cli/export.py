"""aftt-export: SavedModel and TFLite (float32, int8 PTQ, int8 QAT) exports of a classifier.

    aftt-export --model=runs/fmnist_mlp_aftt/classifier.keras --out=export/fmnist_mlp_aftt \
        --formats=saved_model,tflite_float32,tflite_int8,tflite_int8_qat
"""

from __future__ import annotations

import json
import logging

from absl import flags

from aftt_tf.cli import common
from aftt_tf.vocabulary import EXPORT_FORMATS as FORMATS

flags.DEFINE_string("model", None, "classifier.keras of an aftt-train run.")
flags.DEFINE_string("out", None, "Export directory, e.g. export/NAME (default root: export/).")
flags.DEFINE_list("formats", list(FORMATS), f"Any of {', '.join(FORMATS)}.")
flags.DEFINE_integer(
    "calibration_steps", 100, "Representative-dataset batches for int8 calibration."
)
flags.DEFINE_integer("calibration_batch_size", 32, "Images per calibration batch.")
flags.DEFINE_integer("qat_epochs", 2, "Quantization-aware fine-tuning epochs.")
flags.DEFINE_integer("qat_examples", 0, "Training examples for QAT (0: all).")
flags.DEFINE_float("qat_learning_rate", 1e-4, "Adam learning rate of QAT.")
flags.DEFINE_string("dataset", "", "Data for calibration/QAT/accuracy (default: the run's).")
flags.DEFINE_string("data_dir", "", "Local raw data directory.")
flags.DEFINE_integer("test_examples", 0, "Test images for the manifest's accuracies (0: all).")
flags.DEFINE_integer("seed", 0, "Seed of calibration order and QAT.")
flags.DEFINE_bool("overwrite", False, "Replace an existing export directory.")

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise common.usage_error(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.model or not FLAGS.out:
        raise common.usage_error("--model and --out are required.")
    unknown = [name for name in FLAGS.formats if name not in FORMATS]
    if unknown:
        raise common.usage_error(
            f"Unknown export formats {unknown}; expected any of {', '.join(FORMATS)}."
        )
    logging.getLogger().setLevel(logging.INFO)
    from aftt_tf import data, io_utils
    from aftt_tf.deploy import export_lib

    config = export_lib.ExportConfig(
        model=FLAGS.model,
        out=FLAGS.out,
        formats=tuple(FLAGS.formats),
        calibration_steps=FLAGS.calibration_steps,
        calibration_batch_size=FLAGS.calibration_batch_size,
        qat_epochs=FLAGS.qat_epochs,
        qat_examples=FLAGS.qat_examples,
        qat_learning_rate=FLAGS.qat_learning_rate,
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        test_examples=FLAGS.test_examples,
        overwrite=FLAGS.overwrite,
        seed=FLAGS.seed,
    )
    with common.usage_errors(data.DataUnavailableError):
        prepared = export_lib.prepare(config)
    with common.refusals(io_utils.OutputError):
        manifest = export_lib.export_classifier(config, prepared)
    summary = {
        name: artifact.get("test_accuracy") for name, artifact in manifest["artifacts"].items()
    }
    print(json.dumps({"keras": manifest["keras_test_accuracy"], **summary}, indent=2))
    print(f"Export directory: {FLAGS.out}")


def run() -> None:
    common.run(main, "aftt-export", (__name__,))


if __name__ == "__main__":
    run()
