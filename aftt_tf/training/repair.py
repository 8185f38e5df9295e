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

import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from aftt_tf import io_utils
from aftt_tf.campaigns import engine as campaign
from aftt_tf.data import datasets as data
from aftt_tf.data import frontend
from aftt_tf.faults.spec import (
    CampaignModel,
    CellRunner,
    FaultSpec,
    FaultTargetError,
    cell_result,
    check_classifier_outputs,
    outcome_of,
    predictions,
)
from aftt_tf.runtimes import keras_runner, targets
from aftt_tf.training import phases, trainers
from aftt_tf.training.repair_config import RepairConfig, check_directory, record

__all__ = ["RepairConfig", "check_directory", "repair"]

REPAIR_PHASE = "repair"


def _run_loss(config: RepairConfig) -> str:
    if config.loss:
        return config.loss
    run_config = Path(config.model).parent / "config.json"
    if run_config.exists():
        return io_utils.read_json(run_config).get("classification_loss", "crossentropy")
    return "crossentropy"


def _optimizer(name: str, learning_rate: float, weight_decay: float) -> keras.optimizers.Optimizer:
    options = {"learning_rate": learning_rate, "weight_decay": weight_decay or None}
    return {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.AdamW if weight_decay else keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
    }[name](**options)


def _accuracy(model: keras.Model, examples, transform) -> float:
    """Top-1 accuracy on stored examples made into model inputs by `transform`."""
    from aftt_tf.training.harden_run import accuracy

    return accuracy(
        model, np.asarray(transform.apply(examples.images), np.float32), examples.labels
    )


def repair_data(config: RepairConfig, input_shape, outputs):
    """(train, test, transform, record): the repair's training examples, the examples its
    accuracies are measured on, the input transform and what they were, in words.

    --data names the training data (a built-in dataset or TFDS name: its training split);
    --test_data the evaluation data (default: the built-in or TFDS test split; for a
    file, a seeded 20% of it held out and never trained on)."""
    options = config.data_options.or_dataset(config.dataset)
    source = frontend.resolve_source(options.data, config.model)
    train = frontend.load(source, "train", options)
    if config.test_data:
        test = frontend.load(config.test_data, "test", options)
    elif ":" not in source or source.startswith("tfds:"):
        test = frontend.load(source, "test", options)
    else:
        train, test = frontend.split_off(train, HELD_OUT_FRACTION, config.data_seed)
    for examples in (train, test):
        frontend.check_fits(examples, input_shape, outputs)
    train = train.head(config.train_examples)
    transform = options.transform(train.images)
    if test.images.dtype != train.images.dtype:
        raise ValueError(
            f"The training data are stored as {train.images.dtype} and the test data as "
            f"{test.images.dtype}; one input transform cannot serve both. Store them alike."
        )
    record_ = {
        "train": {**train.description, "examples": len(train.labels)},
        "test": {**test.description, "examples": len(test.labels)},
        "input_transform": transform.record(),
    }
    return train, test, transform, record_


HELD_OUT_FRACTION = 0.2


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
    adapter = keras_runner.KerasModel(model)
    check_classifier_outputs(adapter.output_shapes, config.model)
    output_kind = frontend.training_output_kind(model, config.model)
    train, test, transform, data_record = repair_data(
        config, adapter.input_shape, adapter.num_outputs
    )
    clean = _accuracy(model, test, transform)
    if not config.allow_chance_accuracy:
        campaign.check_accuracy(clean, test.labels, config.model)
    # The fault map is placed before anything is written: a map that does not fit the
    # model (no such layer) is refused with an empty --out.
    faulty, counts = keras_runner.faulty_copy(model, config.spec(), config.rate, config.trial)
    out = Path(config.out)
    created = io_utils.first_missing(out)
    try:
        with io_utils.DirectoryLock(out / io_utils.LOCK_FILE, str(out)):
            check_directory(config)
            io_utils.write_json(out / "config.json", record(config))
            setup = _Setup(model, faulty, counts, train, test, transform, output_kind)
            return _repair_in(config, out, setup, {**data_record, "clean": clean})
    except io_utils.OutputError:
        io_utils.remove_created(created, out)  # Refused at the lock: nothing of ours there.
        raise


class _Setup:
    """What one repair trains and measures."""

    def __init__(self, model, faulty, counts, train, test, transform, output_kind):
        self.model, self.faulty, self.counts = model, faulty, counts
        self.train, self.test, self.transform = train, test, transform
        self.output_kind = output_kind


def _repair_in(config, out: Path, setup: _Setup, data_record: dict) -> dict[str, Any]:
    spec = config.spec()
    faulty, counts = setup.faulty, setup.counts
    if spec.fault_kind.on_parameters and not (out / "fault_map.json").exists():
        # The repaired weight faults, readable back (node faults hold outputs, not
        # weights, and a cell without faults has no map to write).
        cell_map = keras_runner.cell_fault_map(setup.model, spec, config.rate, config.trial)
        if cell_map.faults:
            cell_map.save(out / "fault_map.json")
    before = _accuracy(faulty, setup.test, setup.transform)
    trainer = trainers.ClassifierTrainer(
        faulty, loss=_run_loss(config), output_kind=setup.output_kind
    )
    optimizer = _optimizer(config.optimizer, config.learning_rate, config.weight_decay)
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
            setup.train.images,
            setup.train.labels,
            config.batch_size,
            config.data_seed,
            first,
            last,
            transform=setup.transform,
        ),
        config.epochs,
        out,
    )
    with io_utils.atomic_path(out / "classifier.keras") as temporary:
        faulty.save(temporary)
    metrics = {
        "clean_test_accuracy": data_record.pop("clean"),
        "faulty_test_accuracy_before_repair": before,
        "faulty_test_accuracy_after_repair": _accuracy(faulty, setup.test, setup.transform),
        "output_kind": setup.output_kind,
        "data": data_record,
        "fault_map": {
            "kind": spec.kind,
            "rate": config.rate,
            "seed": spec.seed,
            "trial": config.trial,
            "layers": list(counts["per_layer"]),
            "faulted": counts["faulted"],
            "elements": counts["elements"],
            "file": "fault_map.json" if (out / "fault_map.json").exists() else None,
            "read_from": config.fault_map or None,
        },
        "epochs": state["epochs_completed"],
        "history": state["history"],
        "seconds": time.perf_counter() - start,
    }
    io_utils.write_json(out / "metrics.json", metrics)
    return metrics


class RepairingModel(CampaignModel):
    """A Keras classifier whose campaign cells are evaluated after a repair (the
    'repaired' protocol of `FaultSpec.repair`): a `CampaignModel` holding training data."""

    runtime = "keras"  # A Ray worker rebuilds the Keras model (`runtimes`).

    def __init__(self, model: keras.Model, train_images: np.ndarray, train_labels: np.ndarray):
        self.keras_model = keras_runner.KerasModel(model)
        self.model = model
        self.train = (train_images, train_labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.keras_model.input_shape

    @property
    def num_outputs(self):
        return self.keras_model.num_outputs

    @property
    def output_shapes(self):
        return self.keras_model.output_shapes

    def fingerprint(self) -> str:
        return self.keras_model.fingerprint()

    def select_layers(self, spec: FaultSpec) -> list[str]:
        return self.keras_model.select_layers(spec)

    def coverage(self, spec: FaultSpec) -> dict[str, Any]:
        return self.keras_model.coverage(spec)

    def kernel_elements(self, spec: FaultSpec) -> dict[str, int]:
        return self.keras_model.kernel_elements(spec)

    def weight_storage(self, spec: FaultSpec) -> set[str]:
        return self.keras_model.weight_storage(spec)

    def runner(self, spec, images, labels, batch_size: int, transform=None) -> RepairCellRunner:
        return RepairCellRunner(
            self.model, spec, (images, labels), self.train, batch_size, transform
        )


class RepairCellRunner(CellRunner):
    """Evaluates cells of the repaired protocol: per cell, the clean weights and optimizer
    state are put back, the cell's faults are placed (the campaign's positions), the
    faulty model is fine-tuned with them held fixed, then evaluated. One faulty model,
    one trainer and one compiled training function serve every cell (no retrace)."""

    def __init__(self, model, spec: FaultSpec, test, train, batch_size: int, transform=None):
        from aftt_tf.data import inputs

        if not targets.rewritable(model):
            raise FaultTargetError(
                "The repaired protocol holds faults in fault layers, which need a Sequential "
                f"or Functional model; {type(model).__name__} is subclassed."
            )
        protocol = spec.repair
        self.model, self.spec, self.protocol, self.batch_size = model, spec, protocol, batch_size
        names = keras_runner.KerasModel(model).select_layers(spec)
        self.faulty = targets.apply_faults(model, spec.kind, names)
        self.injector = keras_runner.FaultInjector(self.faulty, spec, names, in_place=False)
        self.injector.check_masked("The repaired protocol")
        self.trainer = trainers.ClassifierTrainer(
            self.faulty,
            loss=protocol.loss,
            output_kind=frontend.training_output_kind(model, f"{model.name!r}"),
        )
        self.optimizer = _optimizer(
            protocol.optimizer, protocol.learning_rate, protocol.weight_decay
        )
        self.trainer.compile(optimizer=self.optimizer)
        self.optimizer.build(self.trainer.trainable_variables_list())
        self.initial_weights = [np.asarray(v.numpy()) for v in self.faulty.weights]
        self.initial_optimizer = [np.asarray(v.numpy()) for v in self.optimizer.variables]
        train_images, train_labels = train
        if protocol.train_examples:
            train_images = train_images[: protocol.train_examples]
            train_labels = train_labels[: protocol.train_examples]
        images, self.labels = np.asarray(test[0]), np.asarray(test[1])
        transform = transform or inputs.resolve("auto", dtype=images.dtype, sample=images)
        # The repairs train on inputs made the way the evaluation's are.
        self.dataset, self.steps = data.train_dataset(
            train_images,
            train_labels,
            protocol.batch_size,
            protocol.data_seed,
            0,
            protocol.epochs,
            transform=transform,
        )
        self.inputs = transform.apply(images).astype(np.float32)
        self._golden: np.ndarray | None = None

    def close(self) -> None:
        """Nothing to restore: cells train a copy of the model, never the caller's."""

    def unrepaired_clean_accuracy(self) -> float:
        """The model's accuracy before any fault or repair (the campaign's data check)."""
        logits = self.model.predict(self.inputs, batch_size=self.batch_size, verbose=0)
        return outcome_of(logits, self.labels).accuracy

    def evaluate_cell(self, rate: float, trial: int) -> dict[str, Any]:
        for variable, value in zip(self.faulty.weights, self.initial_weights, strict=True):
            variable.assign(value)
        for variable, value in zip(self.optimizer.variables, self.initial_optimizer, strict=True):
            variable.assign(value)
        counts = self.injector.inject(rate, trial)
        self.trainer.fit(
            self.dataset,
            epochs=self.protocol.epochs,
            steps_per_epoch=self.steps,
            shuffle=False,
            verbose=0,
        )
        logits = self.faulty.predict(self.inputs, batch_size=self.batch_size, verbose=0)
        return cell_result(rate, trial, outcome_of(logits, self.labels, self.golden()), counts)

    def golden(self) -> np.ndarray:
        """Top-1 classes of the model before any fault or repair (computed once)."""
        if self._golden is None:
            logits = self.model.predict(self.inputs, batch_size=self.batch_size, verbose=0)
            self._golden = predictions(logits)
        return self._golden
