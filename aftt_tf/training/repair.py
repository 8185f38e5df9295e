"""Defect-aware repair: fine-tune a classifier around a fixed fault map (a chip's defects).

A chip tested after fabrication has a known defect map; the network can be retrained for
that chip. `repair` draws the fault map of one campaign cell (the same positions an
`aftt-faults` campaign with that seed, rate and trial faults), or takes it as given,
and fine-tunes the faulty model with the map held fixed: faulted weights stay at their
stuck value and get no gradient (the fault layers compute weight * keep + replacement),
node masks multiply the outputs in every forward pass. The run directory is an ordinary
resumable one (config.json, checkpoints/repair per epoch, metrics.json) and its
`classifier.keras` keeps the fault layers, so evaluating or exporting it reproduces the
chip (aftt-export bakes the faults into the exported weights and masks).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from aftt_tf import data, io_utils, vocabulary
from aftt_tf.faults import keras_runner, targets
from aftt_tf.training import phases, trainers
from aftt_tf.training.repair_config import RepairConfig

__all__ = ["RepairConfig", "check_directory", "repair"]

REPAIR_PHASE = "repair"


def _run_loss(config: RepairConfig) -> str:
    if config.loss:
        return config.loss
    run_config = Path(config.model).parent / "config.json"
    if run_config.exists():
        return io_utils.read_json(run_config).get("classification_loss", "crossentropy")
    return "crossentropy"


def check_directory(config: RepairConfig) -> bool:
    """Refuses an --out holding anything but this repair; True when resuming."""
    out = Path(config.out)
    io_utils.check_output_path(out)
    if not out.exists() or not io_utils.entries(out):
        return False
    recorded = out / "config.json"
    if not recorded.exists() or io_utils.read_json(recorded) != _record(config):
        raise io_utils.OutputError(
            f"{out} holds something other than this repair (another model, fault map or "
            "training setting). Choose another --out."
        )
    return True


def _record(config: RepairConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    values["layers"] = list(config.layers)
    values["model_sha256"] = io_utils.sha256_file(Path(config.model))
    return values


def _optimizer(config: RepairConfig) -> keras.optimizers.Optimizer:
    options = {"learning_rate": config.learning_rate, "weight_decay": config.weight_decay or None}
    return {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.AdamW if config.weight_decay else keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
    }[config.optimizer](**options)


def _accuracy(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    logits = model.predict(images.astype(np.float32) / 255.0, batch_size=1000, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def repair(config: RepairConfig) -> dict[str, Any]:
    """Runs (or resumes) one repair; returns its metrics (also OUT/metrics.json)."""
    config.validate()
    check_directory(config)
    model = keras_runner.load_model(config.model)  # Missing or foreign files: clear errors.
    if not targets.rewritable(model):
        raise ValueError(
            f"{config.model} is a subclassed model: repair holds faults in fault layers, "
            "which need a Sequential or Functional model."
        )
    dataset = config.dataset or vocabulary.dataset_for_input_shape(tuple(model.input_shape[1:]))
    arrays, _ = data.load_arrays(dataset, config.data_dir or None)
    train_images, train_labels = arrays["train"]
    if config.train_examples:
        train_images = train_images[: config.train_examples]
        train_labels = train_labels[: config.train_examples]
    test_images, test_labels = arrays["test"]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with io_utils.DirectoryLock(out / io_utils.LOCK_FILE, str(out)):
        check_directory(config)
        io_utils.write_json(out / "config.json", _record(config))
        return _repair_in(
            config, out, model, (train_images, train_labels), (test_images, test_labels)
        )


def _repair_in(config, out: Path, model, train, test) -> dict[str, Any]:
    spec = config.spec()
    faulty, counts = keras_runner.faulty_copy(model, spec, config.rate, config.trial)
    before = _accuracy(faulty, *test)
    trainer = trainers.ClassifierTrainer(faulty, loss=_run_loss(config))
    optimizer = _optimizer(config)
    trainer.compile(optimizer=optimizer)
    state_variables = faulty.variables + phases.optimizer_variables(
        {"optimizer": optimizer}, {"optimizer": trainer.trainable_variables_list()}
    )
    start = time.perf_counter()
    state = phases.run_phase(
        REPAIR_PHASE,
        trainer,
        state_variables,
        lambda first, last: data.train_dataset(
            *train, config.batch_size, config.data_seed, first, last
        ),
        config.epochs,
        out,
    )
    faulty.save(out / "classifier.keras")
    metrics = {
        "clean_test_accuracy": _accuracy(model, *test),
        "faulty_test_accuracy_before_repair": before,
        "faulty_test_accuracy_after_repair": _accuracy(faulty, *test),
        "fault_map": {
            "kind": spec.kind,
            "rate": config.rate,
            "seed": spec.seed,
            "trial": config.trial,
            "layers": list(counts["per_layer"]),
            "faulted": counts["faulted"],
            "elements": counts["elements"],
        },
        "epochs": state["epochs_completed"],
        "history": state["history"],
        "seconds": time.perf_counter() - start,
    }
    io_utils.write_json(out / "metrics.json", metrics)
    return metrics
