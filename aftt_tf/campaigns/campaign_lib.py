"""`run(config)`: the library behind `aftt-faults`: models from files, test data, one campaign.

Everything is checked in the order a user fixes it (spec, shards, output, model files,
layers, input shapes, data, labels) before the first cell runs, so a bad input costs no
campaign time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import checks, io_utils
from aftt_tf.campaigns import cell_log, cliff, shards
from aftt_tf.campaigns import engine as campaign
from aftt_tf.data import datasets as data
from aftt_tf.data import frontend, inputs
from aftt_tf.faults import kinds
from aftt_tf.faults.spec import CampaignModel, FaultSpec
from aftt_tf.runtimes import as_campaign_model, load_campaign_model


@dataclasses.dataclass
class CampaignConfig:
    """One `aftt-faults` invocation.

    Attributes:
        models: model files, each `PATH` or `LABEL=PATH` (label: its run directory's name
            for a classifier.keras, else the file's stem).
        out: campaign directory (resumed if it holds the same campaign).
        spec: the faults.
        dataset: built-in test data (empty: inferred from the models' input shape);
            `data_options.data` overrides it.
        data_options: the test data (a built-in name, `tfds:NAME:SPLIT`, `npz:PATH` or
            `folder:PATH`), its directories and how it becomes model inputs.
        test_examples: evaluate only this many test examples (0: all).
        allow_chance_accuracy: run even when a model is at chance level before faults.
        repair_data: training data of the repaired protocol (same forms as `data`;
            default: the built-in dataset the models' run names).
        imports: modules to import when the config is made (they register a model's
            custom classes).
        batch_size: evaluation chunk size.
        num_shards, shard_index: this process's share of the cells.
        per_layer: fault one layer at a time (sensitivity).
        executor: 'local' (this process) or 'ray' (actors on a Ray cluster).
        ray_address: the cluster ('' starts a local Ray instance).
        ray_workers: actors to start (0: as many as the cluster's CPUs allow).
        resources_per_worker: 'cpu=N,gpu=M' each Ray actor reserves.
    """

    models: tuple[str, ...]
    out: str
    spec: FaultSpec
    dataset: str = ""
    data_options: frontend.DataOptions = frontend.DataOptions()
    test_examples: int = 0
    allow_chance_accuracy: bool = False
    repair_data: str = ""
    imports: tuple[str, ...] = ()
    batch_size: int = 2000
    num_shards: int = 1
    shard_index: int = 0
    per_layer: bool = False
    executor: str = "local"
    ray_address: str = ""
    ray_workers: int = 0
    resources_per_worker: str = "cpu=1"
    cliff: bool = False  # --rates=cliff: rates found on the first model (faults.cliff).

    def __post_init__(self) -> None:
        self.validate()  # A CampaignConfig that exists is valid: `run` does not check again.

    @property
    def resolved_data(self) -> frontend.DataOptions:
        """The data options with --dataset filled in where --data is empty."""
        return self.data_options.or_dataset(self.dataset)

    def validate(self) -> None:
        """Raises ValueError for bad values, before any model or data file is read (at
        construction; the engine checks the directory again when it claims it). Imports
        the --import modules: they register the models' custom classes."""
        import_modules(self.imports)
        if not self.models:
            raise ValueError("--model is required (a classifier.keras from aftt-train).")
        if self.test_examples < 0 or self.batch_size < 1:
            raise ValueError(
                f"--test_examples must be >= 0 and --batch_size >= 1; received "
                f"{self.test_examples} and {self.batch_size}."
            )
        if self.executor not in ("local", "ray"):
            raise ValueError(f"--executor must be local or ray, received {self.executor!r}.")
        if self.executor == "ray" and self.num_shards > 1:
            raise ValueError(
                "--executor=ray spreads the cells itself; --num_shards is for batch schedulers "
                "that start one process per shard. Use one of them."
            )
        if self.executor == "ray":
            self.ray_config()
        shards.shard_cells([], self.num_shards, self.shard_index)
        self.data_options.validate()
        for path in parse_models(self.models).values():  # Before TensorFlow loads.
            checks.model_file(path)
        if self.repair_data:
            data.check_data_spec(self.repair_data, tuple(self.data_options.npz_keys))
        cell_log.check_campaign_directory(self.out, self.spec.as_dict())

    def ray_config(self):
        """The `ray_executor.RayConfig` of --executor=ray (Ray itself is not imported)."""
        from aftt_tf.campaigns import ray_executor

        return ray_executor.config_from_flags(
            self.ray_address, self.ray_workers, self.resources_per_worker, self.imports
        )


def parse_models(values: tuple[str, ...] | list[str]) -> dict[str, Path]:
    """{label: path} of `PATH` / `LABEL=PATH` entries; two equal labels are refused."""
    models = {}
    for value in values:
        label, _, path = value.rpartition("=") if "=" in value else ("", "", value)
        path = Path(path)
        label = label or (path.parent.name if path.name == "classifier.keras" else path.stem)
        if label in models:
            raise ValueError(f"Two models are labelled {label!r}; name them with LABEL=PATH.")
        models[label] = path
    return models


def import_modules(names: tuple[str, ...]) -> None:
    """Imports the user's modules (they register custom layers and models with Keras).

    This runs the module's code, as `python -c 'import MODULE'` would; the current
    directory is searched first. Whatever the module raises, or a `sys.exit` in it,
    becomes one ValueError naming the module (never a traceback or a silent exit). A
    module that is not on the path is named before any of them runs."""
    for name in names:
        checks.module_exists(name, f"--import={name}")
    for name in names:
        checks.user_import(name, f"--import={name}")


def import_kind_modules(imports: tuple[str, ...], kind: str) -> None:
    """Imports the --import modules first when `kind` is none of the registered kinds:
    they may register it (`kinds.register`) before a FaultSpec naming it is built."""
    if imports and kind not in kinds.names():
        import_modules(imports)


def load_models(config: CampaignConfig) -> dict[str, CampaignModel]:
    """The campaign models, each checked to take the spec's faults and one input shape
    (the config imported the modules that register their custom classes)."""
    models = {
        label: load_campaign_model(path) for label, path in parse_models(config.models).items()
    }
    for model in models.values():
        model.select_layers(config.spec)
    shapes = {model.input_shape for model in models.values()}
    if len(shapes) != 1:
        raise ValueError(
            f"Models take different input shapes {sorted(shapes)}; compare like with like."
        )
    return models


def load_test_data(
    config: CampaignConfig, model: CampaignModel, given: frontend.Examples | None = None
) -> tuple[frontend.Examples, inputs.InputTransform]:
    """The test examples (`given`, else read from the data options) checked to fit the
    models, and their input transform (raises data.DataUnavailableError when none can be
    read, ValueError when they do not fit the models or none is named)."""
    first_path = next(iter(parse_models(config.models).values()), None)
    examples, transform = frontend.for_model(
        config.resolved_data,
        "test",
        first_path,
        model.input_shape,
        model.num_outputs,
        config.test_examples,
        given,
    )
    logging.info(
        "Test data: %d examples from %s",
        len(examples.labels),
        examples.description.get("source", "the given arrays"),
    )
    return examples, transform


def load_train_data(config: CampaignConfig, model: CampaignModel) -> frontend.Examples:
    """The examples the repaired protocol trains on: --repair_data (a built-in dataset's
    training split, or the whole file), separate from the evaluation data."""
    first_path = next(iter(parse_models(config.models).values()), None)
    source = frontend.resolve_source(
        config.repair_data or config.dataset, first_path, "--repair_data"
    )
    examples = frontend.load(source, "train", config.resolved_data)
    # No transform of its own: the repairs feed it through the test data's (an 'auto'
    # guess on these examples alone could refuse them wrongly).
    frontend.check_fits(examples, model.input_shape, model.num_outputs)
    logging.info(
        "Repair data: %d examples from %s", len(examples.labels), examples.description["source"]
    )
    return examples


def run(
    config: CampaignConfig,
    models: dict[str, CampaignModel] | None = None,
    test_data: frontend.Examples | tuple[np.ndarray, np.ndarray, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Runs or resumes the campaign; loads the models and test data unless given (test
    data as `frontend.Examples` or (images, labels, description))."""
    models = models or load_models(config)
    models = {label: as_campaign_model(model) for label, model in models.items()}
    first = next(iter(models.values()))
    if isinstance(test_data, tuple):  # The Python API's (images, labels[, description]).
        if len(test_data) not in (2, 3):
            raise ValueError(
                f"test_data is a tuple of {len(test_data)} items; give (images, labels) or "
                "(images, labels, description), or a frontend.Examples."
            )
        test_data = frontend.Examples.of(*test_data)
    examples, transform = load_test_data(config, first, test_data)
    images, labels = examples.images, examples.labels
    spec, rate_choice = config.spec, None
    if config.cliff:
        label, first = next(iter(models.items()))
        rate_choice = find_cliff(first, label, spec, images, labels, config.batch_size, transform)
        spec = dataclasses.replace(spec, rates=cliff.campaign_rates(rate_choice))
    options = {
        "rate_choice": rate_choice,
        "batch_size": config.batch_size,
        "num_shards": config.num_shards,
        "shard_index": config.shard_index,
        "per_layer": config.per_layer,
        "transform": transform,
        "data_description": examples.record(),
        "allow_chance_accuracy": config.allow_chance_accuracy,
    }
    with _executor(config) as executor:  # None: this process runs the cells.
        return campaign.run_campaign(
            models, spec, images, labels, config.out, executor=executor, **options
        )


def _executor(config: CampaignConfig):
    """The cells' executor as a context: Ray actors (--executor=ray), else None."""
    if config.executor == "local":
        return contextlib.nullcontext(None)
    from aftt_tf.campaigns import ray_executor

    return ray_executor.RayExecutor(config.ray_config())


def find_cliff(model, label: str, spec: FaultSpec, images, labels, batch_size: int, transform):
    """`cliff.find_rates` on `model` (the campaign's first), logged: the chosen rates."""
    search = cliff.CliffSearch()
    adapter = campaign.as_campaign_model(model)
    runner = adapter.runner(spec, images, labels, batch_size, transform=transform)
    try:
        found = cliff.find_rates(runner, labels, search)
    finally:
        runner.close()
    found["model"] = label
    chosen = ", ".join(
        f"{rate:g} (keeps {100 * keep:.0f}%)"
        if rate is not None
        else f"none keeps {100 * keep:.0f}%"
        for keep, rate in zip(found["keeps"], found["rates"], strict=True)
    )
    if found.get("highest_placeable") and None in found["rates"]:
        chosen += f"; the highest rate a cell can hold, {found['highest_placeable']:g}, too"
    logging.info("Rates at the cliff of %s (%s faults): %s.", label, spec.kind, chosen)
    return found


def layer_statistics(
    config: CampaignConfig,
    models: dict[str, CampaignModel],
    test_data: frontend.Examples,
    trials: int = 3,
    count: int = 500,
) -> dict[str, Any]:
    """Per-layer int8 activation statistics under the campaign's faults (`int8_stats`) of
    every full-int8 .tflite, beside the campaign's .keras model it was exported from (by
    the export manifest's source hash); OUT/per_layer_stats.json. Models it cannot
    describe are listed with the reason."""
    from aftt_tf.campaigns import int8_stats
    from aftt_tf.runtimes.tflite_runner import TFLiteModel

    transform = config.resolved_data.transform(test_data.images)
    values = transform.apply(test_data.images[:count]).astype(np.float32)
    paths = parse_models(config.models)
    keras_by_hash = {
        io_utils.sha256_file(paths[label]): model
        for label, model in models.items()
        if not isinstance(model, TFLiteModel)
    }
    result: dict[str, Any] = {"models": {}, "not_described": {}}
    for label, model in models.items():
        if not isinstance(model, TFLiteModel):
            continue
        try:
            int8_stats.activation_quantization(model)
        except ValueError as error:
            result["not_described"][label] = str(error)
            continue
        twin = keras_by_hash.get(_export_source_hash(Path(paths[label])))
        keras_model = getattr(twin, "model", None)
        result["models"][label] = int8_stats.diagnose(
            model, config.spec, values, trials, keras_model
        )
        result["models"][label]["keras_twin"] = None if twin is None else _label_of(models, twin)
    for label, model in models.items():
        if not isinstance(model, TFLiteModel) and label not in result["not_described"]:
            described = any(r["keras_twin"] == label for r in result["models"].values())
            if not described:
                result["not_described"][label] = (
                    "a Keras model is described beside a full-int8 .tflite exported from it "
                    "(aftt-export manifest); none in this campaign"
                )
    io_utils.write_json(Path(config.out) / "per_layer_stats.json", result)
    return result


def _export_source_hash(path: Path) -> str | None:
    manifest = path.parent / "manifest.json"
    if not manifest.exists():
        return None
    return io_utils.read_json(manifest).get("source_model", {}).get("sha256")


def _label_of(models: dict[str, CampaignModel], model: CampaignModel) -> str:
    return next(label for label, candidate in models.items() if candidate is model)
