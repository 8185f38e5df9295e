"""`train_and_evaluate(config, workdir)`: the library behind `aftt-train`.

A run directory documents and restores itself:

    RUN/config.json          resolved TrainConfig
    RUN/flags.txt            flagfile that reproduces the run (aftt-train --flagfile=RUN/flags.txt)
    RUN/checkpoints/<phase>/ state.json + variables.npz after every completed epoch
    RUN/tensorboard/<phase>/ TensorBoard logs (Fig. 5 curves for the pretrain phase)
    RUN/metrics.json         accuracies, generalization error, losses, complexity, history
    RUN/classifier.keras     deployable extractor + head (keras.saving.load_model after import aftt_tf)
    RUN/manifest.json        versions, sha256 and size of the artifacts

Re-running the same config on the same directory resumes from the last completed
epoch; a different config is refused rather than overwriting anything.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from aftt_tf import io_utils
from aftt_tf.data import datasets as data
from aftt_tf.training import complexity, networks, phases, trainers
from aftt_tf.training.config import TrainConfig
from aftt_tf.training.phases import RunDirectoryError, TrainingDivergedError

__all__ = [
    "RunDirectoryError",
    "TrainingDivergedError",
    "best_by_validation",
    "check_run_directory",
    "load_config_splits",
    "prepare_run_directory",
    "sweep_row",
    "train_and_evaluate",
    "train_once",
]

PRETRAIN = "pretrain"
FINETUNE = "finetune"


def make_strategy(name: str) -> tf.distribute.Strategy:
    """A tf.distribute strategy by name; 'mirrored' uses every GPU, else every logical CPU."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(
        f"Unknown strategy {name!r}; expected default, mirrored, multi_worker_mirrored."
    )


def check_run_directory(workdir: Path, config: TrainConfig, overwrite: bool = False) -> bool:
    """Raises unless `workdir` is absent, empty, or holds this config; writes nothing.

    Returns True when the run will resume (or reuse) what is there.
    """
    io_utils.check_output_path(workdir)
    config_path = workdir / "config.json"
    if not workdir.exists() or not io_utils.entries(workdir):
        return False
    if not config_path.exists():
        raise RunDirectoryError(
            f"{workdir} exists, is not empty and is not an aftt-train run directory (no "
            "config.json). Choose another --out, or empty it yourself"
            + (" (--overwrite replaces only run directories)." if overwrite else ".")
        )
    if overwrite:
        return False
    # Fields added to TrainConfig after a run was written take their defaults there.
    previous = {**TrainConfig().as_dict(), **io_utils.read_json(config_path)}
    current = config.as_dict()
    differences = {
        key: (previous.get(key), current.get(key))
        for key in sorted(set(previous) | set(current))
        if previous.get(key) != current.get(key)
    }
    if differences:
        listed = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in differences.items())
        raise RunDirectoryError(
            f"{workdir} holds a run with a different config ({listed}). Use another --out to "
            "keep both, or --overwrite to replace it."
        )
    return True


def prepare_run_directory(workdir: Path, config: TrainConfig, overwrite: bool = False) -> bool:
    """Creates `workdir` (replacing it when `overwrite`) or checks that it belongs to this
    config. Returns True when resuming."""
    if check_run_directory(workdir, config, overwrite):
        return True
    if workdir.exists() and overwrite:
        io_utils.empty_directory(workdir)  # Only a run directory: checked above.
    workdir.mkdir(parents=True, exist_ok=True)
    io_utils.write_text(workdir / "config.json", config.to_json() + "\n")
    io_utils.write_text(workdir / "flags.txt", config.to_flagfile())
    return False


def describe_complexity(nets: networks.Networks) -> dict[str, dict[str, int]]:
    return {
        name: complexity.model_complexity(getattr(nets, name)).as_dict()
        for name in ("classifier", "extractor", "head", "decoder", "discriminator")
    }


def _evaluate(trainer: trainers.ClassifierTrainer, images, labels, batch_size) -> dict[str, float]:
    results = trainer.evaluate(
        data.eval_dataset(images, labels, batch_size), verbose=0, return_dict=True
    )
    return {key: float(value) for key, value in results.items()}


def train_once(
    config: TrainConfig, workdir: Path, splits: data.Splits | None = None
) -> dict[str, Any]:
    """Trains one model per `config` into `workdir` (resuming) and returns its metrics."""
    start = time.time()
    metrics_path = workdir / "metrics.json"
    if metrics_path.exists():
        logging.info("%s is complete; reusing its results.", workdir)
        return io_utils.read_json(metrics_path)
    if splits is None:
        splits = load_config_splits(config)
    keras.utils.set_random_seed(config.seed)
    with make_strategy(config.strategy).scope():
        nets = networks.build_networks(config.architecture, config.dataset)
        costs = describe_complexity(nets)
        for name, cost in costs.items():
            logging.info(
                "%-13s parameters=%d weight_bytes=%d forward_flops=%d",
                name,
                cost["parameters"],
                cost["weight_bytes"],
                cost["forward_flops"],
            )
        histories = {}
        pretrain_history = _pretrain(config, nets, splits, workdir)
        if pretrain_history is not None:
            histories[PRETRAIN] = pretrain_history
        trainer, finetune_state = _finetune(config, nets, splits, workdir)
        histories[FINETUNE] = finetune_state["history"]
        evaluation = {
            split: _evaluate(trainer, images, labels, config.eval_batch_size)
            for split, images, labels in (
                ("train", splits.train_images, splits.train_labels),
                ("validation", splits.validation_images, splits.validation_labels),
                ("test", splits.test_images, splits.test_labels),
            )
            if len(labels)
        }
    metrics = {
        "method": config.method,
        "architecture": config.architecture,
        "dataset": config.dataset,
        "data_source": splits.source,
        "split_sizes": splits.sizes(),
        **_accuracies(evaluation),
        "reg_lambda": config.reg_lambda,
        "best_epoch": finetune_state.get("best_epoch", finetune_state["epochs_completed"]),
        "stopped_early": bool(finetune_state.get("stopped_early", False)),
        "complexity": costs,
        "history": histories,
        "seconds": time.time() - start,
    }
    with io_utils.atomic_path(workdir / "classifier.keras") as temporary:
        nets.classifier.save(temporary)
    io_utils.write_json(metrics_path, metrics)
    io_utils.write_manifest(workdir, ["classifier.keras", "metrics.json", "config.json"])
    return metrics


def _accuracies(evaluation: dict[str, dict[str, float]]) -> dict[str, Any]:
    train, test = evaluation["train"], evaluation["test"]
    return {
        "train_accuracy": train["accuracy"],
        "validation_accuracy": evaluation.get("validation", {}).get("accuracy"),
        "test_accuracy": test["accuracy"],
        # Paper Eq. 8: generalization error = train accuracy - test accuracy.
        "generalization_error": train["accuracy"] - test["accuracy"],
        "train_loss": train["classification_loss"],
        "test_loss": test["classification_loss"],
    }


def _pretrain(
    config: TrainConfig, nets: networks.Networks, splits: data.Splits, workdir: Path
) -> list[dict[str, Any]] | None:
    """Runs (or resumes) the adversarial autoencoder phase; returns its history, if any.

    Once fine-tuning has started the pre-training is over: its history is read back.
    """
    finetune_started = (workdir / "checkpoints" / FINETUNE / "state.json").exists()
    if not (config.pretrains and config.pretrain_epochs > 0 and not finetune_started):
        state_path = workdir / "checkpoints" / PRETRAIN / "state.json"
        return io_utils.read_json(state_path)["history"] if state_path.exists() else None
    autoencoder = trainers.AdversarialAutoencoder(
        nets.extractor,
        nets.decoder,
        nets.discriminator,
        prior_stddev=config.prior_stddev,
        discriminator_steps=config.discriminator_steps,
        seed=config.seed,
    )
    autoencoder.compile(
        reconstruction_optimizer=keras.optimizers.Adam(config.reconstruction_learning_rate),
        discriminator_optimizer=keras.optimizers.Adam(config.discriminator_learning_rate),
        adversarial_optimizer=keras.optimizers.Adam(config.adversarial_learning_rate),
        jit_compile=config.jit_compile,
    )
    state_variables = autoencoder.variables + phases.optimizer_variables(
        autoencoder.optimizers, autoencoder.player_variables()
    )
    return phases.run_phase(
        PRETRAIN,
        autoencoder,
        state_variables,
        lambda first, last: data.train_dataset(
            splits.train_images, None, config.batch_size, config.seed, first, last
        ),
        config.pretrain_epochs,
        workdir,
    )["history"]


def _classifier_trainer(config: TrainConfig, nets: networks.Networks) -> trainers.ClassifierTrainer:
    frozen = ()
    if config.freeze_extractor:
        frozen = tuple(
            layer.name
            for layer in nets.classifier.layers
            if layer.name not in networks.HEAD_LAYER_NAMES
        )
    return trainers.ClassifierTrainer(
        nets.classifier,
        loss=config.classification_loss,
        regularization=config.regularization,
        reg_lambda=config.reg_lambda,
        frozen_layer_names=frozen,
        fault_aware_kinds=config.fault_aware_kinds if config.fault_aware else (),
        fault_aware_max_rate=config.fault_aware_max_rate,
        seed=config.seed,
    )


def _finetune(
    config: TrainConfig, nets: networks.Networks, splits: data.Splits, workdir: Path
) -> tuple[trainers.ClassifierTrainer, dict[str, Any]]:
    """Runs (or resumes) supervised training; leaves the best validation epoch's weights."""
    trainer = _classifier_trainer(config, nets)
    learning_rate = config.learning_rate
    if config.lr_schedule == "cosine":
        steps_per_epoch = len(splits.train_labels) // config.batch_size
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=max(1, config.finetune_epochs * steps_per_epoch)
        )
    optimizer = keras.optimizers.Adam(learning_rate)
    trainer.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    state_variables = nets.classifier.variables + phases.optimizer_variables(
        {"optimizer": optimizer}, {"optimizer": trainer.trainable_variables_list()}
    )
    has_validation = len(splits.validation_labels) > 0
    state = phases.run_phase(
        FINETUNE,
        trainer,
        state_variables,
        lambda first, last: data.train_dataset(
            splits.train_images, splits.train_labels, config.batch_size, config.seed, first, last
        ),
        config.finetune_epochs,
        workdir,
        validation=data.eval_dataset(
            splits.validation_images, splits.validation_labels, config.eval_batch_size
        )
        if has_validation
        else None,
        monitor="val_accuracy" if has_validation else None,
        patience=config.early_stopping_patience,
        best_variables=nets.classifier.variables,
    )
    best_path = workdir / "checkpoints" / FINETUNE / "best.npz"
    if has_validation and best_path.exists():
        phases.load_arrays(best_path, nets.classifier.variables)
    return trainer, state


def load_config_splits(config: TrainConfig) -> data.Splits:
    return data.load_splits(
        config.dataset,
        data_dir=config.data_dir or None,
        tfds_data_dir=config.tfds_data_dir or None,
        source=config.data_source,
        validation_fraction=config.validation_fraction,
        seed=config.seed,
        train_examples=config.train_examples,
        test_examples=config.test_examples,
    )


def sweep_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """One lambda's line of a grid search (paper Table I columns plus validation)."""
    keys = (
        "reg_lambda",
        "train_accuracy",
        "validation_accuracy",
        "test_accuracy",
        "generalization_error",
    )
    return {key: metrics[key] for key in keys}


def best_by_validation(rows: list[dict[str, Any]]) -> int:
    """Index of the grid point with the best validation accuracy (never the test set:
    configs validate that grids have a validation split); the first one on ties."""
    return max(range(len(rows)), key=lambda index: rows[index]["validation_accuracy"] or 0.0)


def train_and_evaluate(
    config: TrainConfig, workdir: str | Path, overwrite: bool = False
) -> dict[str, Any]:
    """Trains per `config` in `workdir` (resuming if it holds this config) and returns metrics.

    With `reg_lambda_grid`, trains one model per lambda in `workdir/lambda_<value>`,
    selects the one with the best validation accuracy (the paper tuned its baselines
    by grid search), and copies it to `workdir/classifier.keras`.
    """
    config.validate()
    workdir = Path(workdir)
    # Bad directories and missing data are reported before anything is written.
    check_run_directory(workdir, config, overwrite)
    splits = load_config_splits(config)
    with io_utils.locked_directory(workdir):  # Refused: leaves nothing behind.
        prepare_run_directory(workdir, config, overwrite)
        logging.info("Data: %s from %s", splits.sizes(), splits.source)
        if not config.reg_lambda_grid:
            return train_once(config, workdir, splits)
        return _grid_search(config, workdir, splits)


def _grid_search(config: TrainConfig, workdir: Path, splits: data.Splits) -> dict[str, Any]:
    """One run per lambda in `workdir/lambda_<value>`; the best by validation accuracy wins."""
    sweep = []
    for reg_lambda in config.reg_lambda_grid:
        child_config = dataclasses.replace(config, reg_lambda=reg_lambda, reg_lambda_grid=())
        child_dir = workdir / f"lambda_{reg_lambda:g}"
        prepare_run_directory(child_dir, child_config)
        child = train_once(child_config, child_dir, splits)
        sweep.append(sweep_row(child))
    best = sweep[best_by_validation(sweep)]
    best_dir = workdir / f"lambda_{best['reg_lambda']:g}"
    metrics = {
        **io_utils.read_json(best_dir / "metrics.json"),
        "lambda_sweep": sweep,
        "selected_by": "validation_accuracy",
    }
    with io_utils.atomic_path(workdir / "classifier.keras") as temporary:
        shutil.copyfile(best_dir / "classifier.keras", temporary)
    io_utils.write_json(workdir / "metrics.json", metrics)
    io_utils.write_manifest(workdir, ["classifier.keras", "metrics.json", "config.json"])
    return metrics
