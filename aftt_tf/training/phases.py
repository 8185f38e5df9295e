"""Training phases that checkpoint every epoch and resume exactly where they stopped.

A phase (AFTT pre-training, supervised fine-tuning) is one `fit` of a trainer whose
state (model, optimizer and trainer variables) is saved after every finite epoch as
`checkpoints/<phase>/variables.npz` + `state.json`. A NaN or infinite loss stops the
phase and keeps the last good checkpoint; the best validation epoch is kept as
`best.npz`.
"""

from __future__ import annotations

import logging
import math
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from aftt_tf import io_utils


class RunDirectoryError(RuntimeError):
    """The run directory holds something this run must not overwrite."""


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def _divergence_message(name: str, callback, state: dict[str, Any], phase_state) -> str:
    completed = state["epochs_completed"]
    if phase_state.exists() and completed > 0:
        kept = (
            f"The last good checkpoint (epoch {completed}) is kept in {phase_state.directory}. "
            "Lower the learning rates and re-run with a new --out, or delete that checkpoint "
            "directory."
        )
    else:
        kept = (
            "No epoch of this phase finished, so there is no checkpoint of it. Lower the "
            "learning rates and re-run (delete the run directory or use a new --out)."
        )
    return f"{name}: a loss became NaN or infinite in epoch {callback.diverged_epoch}. {kept}"


class PhaseState:
    """Per-epoch checkpoint of one training phase: variables.npz + state.json."""

    def __init__(self, directory: Path, variables: list[keras.Variable]):
        self.directory = directory
        self.variables = variables
        self.state_path = directory / "state.json"
        self.variables_path = directory / "variables.npz"

    def exists(self) -> bool:
        return self.state_path.exists() and self.variables_path.exists()

    def load(self) -> dict[str, Any]:
        """Restores the variables; a damaged checkpoint raises RunDirectoryError naming the
        file and how to restart the phase."""
        try:
            return self._load()
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise RunDirectoryError(
                f"The checkpoint in {self.directory} cannot be read ({type(error).__name__}: "
                f"{error}); it was cut short or edited. Delete {self.directory} to restart "
                "this phase from its first epoch (the rest of the run is kept)."
            ) from None

    def _load(self) -> dict[str, Any]:
        state = io_utils.read_json(self.state_path)
        with np.load(self.variables_path) as arrays:
            if int(arrays["epoch"]) != state["epochs_completed"]:
                raise RunDirectoryError(
                    f"{self.directory}: variables.npz and state.json disagree on the epoch; "
                    "delete this checkpoint directory to restart the phase."
                )
            if len(arrays.files) - 1 != len(self.variables):
                raise RunDirectoryError(
                    f"{self.directory} holds {len(arrays.files) - 1} variables, this model has "
                    f"{len(self.variables)}; it was written by a different architecture."
                )
            for index, variable in enumerate(self.variables):
                variable.assign(arrays[f"v{index}"])
        return state

    def save(self, state: dict[str, Any]) -> None:
        arrays = {f"v{index}": np.asarray(v.numpy()) for index, v in enumerate(self.variables)}
        with io_utils.atomic_path(self.variables_path) as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, epoch=state["epochs_completed"], **arrays)
        io_utils.write_json(self.state_path, state)


class _EpochCallback(keras.callbacks.Callback):
    """Saves a checkpoint after every finite epoch, stops on NaN/inf, tracks the best epoch."""

    def __init__(
        self,
        phase_state: PhaseState,
        state: dict[str, Any],
        monitor: str | None,
        patience: int,
        best_variables: list[keras.Variable] | None,
    ):
        super().__init__()
        self.phase_state = phase_state
        self.state = state
        self.monitor = monitor
        self.patience = patience
        self.best_variables = best_variables
        self.diverged_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        logs = {key: float(value) for key, value in (logs or {}).items()}
        if not all(math.isfinite(value) for value in logs.values()):
            self.diverged_epoch = epoch + 1
            self.model.stop_training = True
            return
        self.state["history"].append({"epoch": epoch + 1, **logs})
        self.state["epochs_completed"] = epoch + 1
        if self.monitor:
            value = logs[self.monitor]
            if self.state.get("best_value") is None or value > self.state["best_value"]:
                self.state["best_value"] = value
                self.state["best_epoch"] = epoch + 1
                save_arrays(self.phase_state.directory / "best.npz", self.best_variables)
            if self.patience and epoch + 1 - self.state["best_epoch"] >= self.patience:
                self.state["stopped_early"] = True
                self.model.stop_training = True
        self.phase_state.save(self.state)


def save_arrays(path: Path, variables: list[keras.Variable]) -> None:
    with io_utils.atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, *[np.asarray(v.numpy()) for v in variables])


def load_arrays(path: Path, variables: list[keras.Variable]) -> None:
    with np.load(path) as arrays:
        for index, variable in enumerate(variables):
            variable.assign(arrays[f"arr_{index}"])


def optimizer_variables(
    trainer_optimizers: dict[str, keras.optimizers.Optimizer],
    player_variables: dict[str, list[keras.Variable]],
) -> list[keras.Variable]:
    """Builds each optimizer on its player's variables (so state exists before restore)."""
    result = []
    for name, optimizer in trainer_optimizers.items():
        if not optimizer.built:
            optimizer.build(player_variables[name])
        result.extend(optimizer.variables)
    return result


def remove_stale_temporaries(directory: Path) -> None:
    """Removes half-written checkpoint files (`.variables.XXXX.npz`, ...) of a run killed
    mid-save; the caller holds the run's lock, so no live writer owns them."""
    for pattern in (".variables.*.npz", ".state.*.json", ".best.*.npz"):
        for path in directory.glob(pattern):
            if path.is_file() and not path.is_symlink():
                logging.info("Removing %s, left by an interrupted checkpoint.", path)
                path.unlink()


def run_phase(
    name: str,
    trainer: keras.Model,
    state_variables: list[keras.Variable],
    make_dataset,
    epochs: int,
    workdir: Path,
    validation=None,
    monitor: str | None = None,
    patience: int = 0,
    best_variables: list[keras.Variable] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) one phase with `fit`; returns its state (history, best epoch)."""
    phase_state = PhaseState(workdir / "checkpoints" / name, state_variables)
    phase_state.directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(phase_state.directory)
    state = {"phase": name, "epochs_completed": 0, "history": []}
    if phase_state.exists():
        state = phase_state.load()
        logging.info("%s: resuming after epoch %d of %d", name, state["epochs_completed"], epochs)
    done = state["epochs_completed"] >= epochs or state.get("stopped_early")
    if not done:
        dataset, steps = make_dataset(state["epochs_completed"], epochs)
        callback = _EpochCallback(phase_state, state, monitor, patience, best_variables)
        trainer.fit(
            dataset,
            epochs=epochs,
            initial_epoch=state["epochs_completed"],
            steps_per_epoch=steps,
            validation_data=validation,
            shuffle=False,  # The dataset is already shuffled per (seed, epoch).
            callbacks=[
                callback,
                keras.callbacks.TensorBoard(str(workdir / "tensorboard" / name), write_graph=False),
            ],
            verbose=2,
        )
        if callback.diverged_epoch is not None:
            raise TrainingDivergedError(_divergence_message(name, callback, state, phase_state))
    return state
