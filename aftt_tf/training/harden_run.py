"""`run(config)`: the library behind `aftt-train --model=FILE.keras`: the user's own
classifier and data through `harden`, in a run directory that documents and resumes
itself like the paper's runs:

    RUN/config.json        the resolved HardenRunConfig and the source model's sha256
    RUN/checkpoints/<phase>/  per-epoch checkpoints (pretrain, warmup, finetune)
    RUN/classifier.keras   the hardened model: the user's architecture and layer names
                           (range: plus its ActivationClip layers), no fault layers
    RUN/metrics.json       accuracies (train part, validation, test), what was done
    RUN/manifest.json      versions, sha256 and size of the artifacts
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import checks, io_utils
from aftt_tf.data import frontend

HELD_OUT_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class HardenRunConfig:
    """One `aftt-train --model` run.

    Attributes:
        model: the user's .keras classifier (trained; `harden.from_scratch` re-initialises).
        out: the run directory.
        harden: the method and its settings (`harden.HardenConfig`).
        data_options: the training data and input transform (`frontend.DataOptions`;
            a built-in or TFDS name trains on its training split).
        validation_data: validation data (default: a seeded 10% of the training data).
        test_data: test data (default: the built-in or TFDS test split; none for a file).
        train_examples: use only this many training examples (0: all).
        allow_chance_accuracy: train even when the model is at chance level on the data.
    """

    model: str
    out: str
    harden: Any
    data_options: frontend.DataOptions
    validation_data: str = ""
    test_data: str = ""
    train_examples: int = 0
    allow_chance_accuracy: bool = False

    def validate(self) -> None:
        self.harden.validate()
        self.data_options.validate()
        for extra in (self.validation_data, self.test_data):
            if extra:
                dataclasses.replace(self.data_options, data=extra).validate()
        if self.train_examples < 0:
            raise ValueError(f"--train_examples must be >= 0, got {self.train_examples}.")
        checks.model_file(self.model)
        check_directory(self)

    def record(self) -> dict[str, Any]:
        values = {
            "model": str(Path(self.model).resolve()),
            "model_sha256": io_utils.sha256_file(self.model),
            "harden": self.harden.as_dict(),
            "data_options": dataclasses.asdict(self.data_options),
            "validation_data": self.validation_data,
            "test_data": self.test_data,
            "train_examples": self.train_examples,
        }
        values["data_options"]["npz_keys"] = list(self.data_options.npz_keys)
        return values


def check_directory(config: HardenRunConfig) -> bool:
    """OutputError unless --out is absent, empty or holds this run; True when resuming."""
    out = Path(config.out)
    io_utils.check_output_path(out)
    if not out.exists() or not io_utils.entries(out):
        return False
    recorded = out / "config.json"
    if not recorded.is_file():
        raise io_utils.OutputError(
            f"{out} holds files of something other than an aftt-train --model run (no "
            "config.json). Choose another --out."
        )
    differing = io_utils.differing_fields(io_utils.read_json(recorded), config.record())
    if differing:
        raise io_utils.OutputError(
            f"{out} holds another run: {'; '.join(differing[:6])}. Choose another --out, "
            "or give the same settings to resume it."
        )
    return True


def load_data(config: HardenRunConfig, input_shape, outputs) -> dict[str, Any]:
    """{'train', 'validation', 'test': frontend.Examples or None, 'transform'}."""
    options = config.data_options
    source = frontend.resolve_source(options.data, config.model)
    train = frontend.load(source, "train", options)
    if config.validation_data:
        validation = frontend.load(config.validation_data, "test", options)
    else:
        train, validation = frontend.split_off(train, HELD_OUT_FRACTION, config.harden.seed)
    test = None
    if config.test_data:
        test = frontend.load(config.test_data, "test", options)
    elif ":" not in source or source.startswith("tfds:"):
        test = frontend.load(source, "test", options)
    train = train.head(config.train_examples)
    for examples in (train, validation, test):
        if examples is not None:
            frontend.check_fits(examples, input_shape, outputs)
    transform = options.transform(train.images)
    return {"train": train, "validation": validation, "test": test, "transform": transform}


def _inputs(transform, examples) -> np.ndarray:
    return np.asarray(transform.apply(examples.images), np.float32)


def accuracy(model, inputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of correct, finite outputs."""
    from aftt_tf.faults.spec import outcome_of

    outputs = model.predict(inputs, batch_size=1000, verbose=0)
    return outcome_of(outputs, labels).accuracy


def run(config: HardenRunConfig) -> dict[str, Any]:
    """Hardens the model into the run directory (resuming); returns its metrics."""
    import keras

    from aftt_tf.campaigns import engine as campaign
    from aftt_tf.runtimes import keras_runner
    from aftt_tf.training import harden

    config.validate()
    out = Path(config.out)
    if (out / "metrics.json").is_file():
        return io_utils.read_json(out / "metrics.json")
    model = keras_runner.load_model(config.model)
    adapter = keras_runner.KerasModel(model)
    harden.check_model(model, config.harden)
    loaded = load_data(config, adapter.input_shape, adapter.num_outputs)
    transform = loaded["transform"]
    arrays = {
        name: harden.TrainingData(_inputs(transform, examples), examples.labels)
        for name, examples in loaded.items()
        if name != "transform" and examples is not None
    }
    before = accuracy(model, arrays["validation"].inputs, arrays["validation"].labels)
    if not (config.allow_chance_accuracy or config.harden.from_scratch):
        campaign.check_accuracy(before, arrays["validation"].labels, config.model)
    with io_utils.locked_directory(out):  # Refused: leaves nothing behind.
        check_directory(config)
        io_utils.write_json(out / "config.json", config.record())
        start = time.perf_counter()
        hardened, record = harden.harden(
            model, config.harden, arrays["train"], arrays["validation"], out
        )
        metrics = _metrics(model, hardened, arrays, loaded, record, before)
        metrics["seconds"] = time.perf_counter() - start
        with io_utils.atomic_path(out / "classifier.keras") as temporary:
            hardened.save(temporary)
        keras.saving.load_model(out / "classifier.keras", compile=False)  # Round-trips.
        io_utils.write_json(out / "metrics.json", metrics)
        io_utils.write_manifest(out, ["classifier.keras", "metrics.json", "config.json"])
        return metrics


def _metrics(model, hardened, arrays, loaded, record, before) -> dict[str, Any]:
    result: dict[str, Any] = {
        "method": record["method"],
        "output_kind": record["output_kind"],
        "batch_normalization": record["batch_normalization"],
        "validation_accuracy_before": before,
        "input_transform": loaded["transform"].record(),
        "data": {
            name: {**examples.description, "examples": int(len(examples.labels))}
            for name, examples in loaded.items()
            if name != "transform" and examples is not None
        },
        "phases": record["phases"],
    }
    if "bounds" in record:
        result["bounds"] = record["bounds"]
    if "weight_clip" in record:
        result["weight_clip"] = record["weight_clip"]
    for name, split in arrays.items():
        result[f"{name}_accuracy"] = accuracy(hardened, split.inputs, split.labels)
        if name == "test":
            result["test_accuracy_before"] = accuracy(model, split.inputs, split.labels)
    result["generalization_error"] = result["train_accuracy"] - result.get(
        "test_accuracy", result["validation_accuracy"]
    )
    return result
