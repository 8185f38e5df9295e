"""Picks the runtime of a campaign model: TFLite files (no TensorFlow) or Keras models.

The runners are imported only when their runtime is used, so a .tflite campaign on a
device without TensorFlow never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aftt_tf.faults.spec import CampaignModel


def as_campaign_model(model: Any) -> CampaignModel:
    """`model` as a `CampaignModel`: objects that already are one pass through (TFLite
    models); anything else is taken as a Keras model (TensorFlow is imported only then)."""
    if isinstance(model, CampaignModel):
        return model
    from aftt_tf.faults import keras_runner

    return keras_runner.KerasModel(model)


def load_campaign_model(path: str | Path) -> CampaignModel:
    """A campaign model from a file: `.tflite` (no TensorFlow needed) or `.keras`."""
    path = Path(path)
    if path.suffix == ".tflite":
        from aftt_tf.faults import tflite_runner

        return tflite_runner.TFLiteModel.load(path)
    from aftt_tf.faults import keras_runner

    return keras_runner.KerasModel(keras_runner.load_model(path))
