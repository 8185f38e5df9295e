"""`run(config)`: the library behind `aftt-faults`: models from files, test data, one campaign.

Everything is checked in the order a user fixes it (spec, shards, model files, layers,
input shapes, data) before the first cell runs, so a bad input costs no campaign time.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import data, vocabulary
from aftt_tf.faults import campaign
from aftt_tf.faults.runtimes import load_campaign_model
from aftt_tf.faults.spec import CampaignModel, FaultSpec


@dataclasses.dataclass
class CampaignConfig:
    """One `aftt-faults` invocation.

    Attributes:
        models: model files, each `PATH` or `LABEL=PATH` (label: its run directory's name
            for a classifier.keras, else the file's stem).
        out: campaign directory (resumed if it holds the same campaign).
        spec: the faults.
        dataset: test data (empty: inferred from the models' input shape).
        data_dir: local raw data directory.
        test_examples: evaluate only this many test examples (0: all).
        batch_size: evaluation chunk size.
        num_shards, shard_index: this process's share of the cells.
        per_layer: fault one layer at a time (sensitivity).
    """

    models: tuple[str, ...]
    out: str
    spec: FaultSpec
    dataset: str = ""
    data_dir: str = ""
    test_examples: int = 0
    batch_size: int = 2000
    num_shards: int = 1
    shard_index: int = 0
    per_layer: bool = False

    def validate(self) -> None:
        """Raises ValueError for bad values, before any file is read."""
        if not self.models:
            raise ValueError("--model is required (a classifier.keras from aftt-train).")
        if self.test_examples < 0 or self.batch_size < 1:
            raise ValueError(
                f"--test_examples must be >= 0 and --batch_size >= 1; received "
                f"{self.test_examples} and {self.batch_size}."
            )
        self.spec.validate()
        campaign.shard_cells([], self.num_shards, self.shard_index)
        campaign.check_campaign_directory(self.out, self.spec)


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


def load_models(config: CampaignConfig) -> dict[str, CampaignModel]:
    """The campaign models, each checked to take the spec's faults and one input shape."""
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
    config: CampaignConfig, input_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Test images and labels (raises data.DataUnavailableError when none can be read)."""
    dataset = config.dataset or vocabulary.dataset_for_input_shape(input_shape)
    if not dataset:
        raise ValueError("Cannot infer the dataset from the model's input shape; pass --dataset.")
    if dataset in vocabulary.DATASETS:  # Known shape: refuse before reading any data.
        _check_shape(vocabulary.input_shape_for(dataset), input_shape, dataset)
    arrays, source = data.load_arrays(dataset, data_dir=config.data_dir or None)
    images, labels = arrays["test"]
    _check_shape(images.shape[1:], input_shape, dataset)
    if config.test_examples:
        images, labels = images[: config.test_examples], labels[: config.test_examples]
    logging.info("Test data: %d %s images from %s", len(labels), dataset, source)
    return images, labels


def _check_shape(data_shape: tuple[int, ...], input_shape: tuple[int, ...], dataset: str) -> None:
    if tuple(data_shape) != tuple(input_shape):
        raise ValueError(
            f"The models take inputs of shape {tuple(input_shape)} but {dataset} images have "
            f"shape {tuple(data_shape)}; pass the --dataset the models were trained on."
        )


def run(
    config: CampaignConfig,
    models: dict[str, CampaignModel] | None = None,
    test_data: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Runs or resumes the campaign; loads the models and test data unless given."""
    config.validate()
    models = models or load_models(config)
    input_shape = next(iter(models.values())).input_shape
    images, labels = test_data or load_test_data(config, input_shape)
    return campaign.run_campaign(
        models,
        config.spec,
        images,
        labels,
        config.out,
        batch_size=config.batch_size,
        num_shards=config.num_shards,
        shard_index=config.shard_index,
        per_layer=config.per_layer,
    )
