"""`evaluate`: a fault campaign from Python, on models and data already in memory.

    from aftt_tf.faults import FaultSpec, evaluate

    result = evaluate({"mine": model}, FaultSpec(kind="weight", rates=(0, 0.3), trials=10),
                      (images, labels))
    result.accuracy("mine", 0.3)  # (mean, low, high) over trials, 95% CI

Models are Keras models (Sequential, Functional, subclassed), paths of `.keras` or
`.tflite` files, or `.tflite` bytes; data is `(inputs, labels)` arrays or a
`tf.data.Dataset` of `(inputs, labels)` batches. Nothing is written unless `out_dir`
is given (then the campaign resumes and is locked like `aftt-faults`). TensorFlow is
imported only for Keras models and datasets.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf.faults import campaign
from aftt_tf.faults.runtimes import load_campaign_model
from aftt_tf.faults.spec import FaultSpec


@dataclasses.dataclass
class CampaignResult:
    """A campaign's results: the same numbers `aftt-faults` writes to results.json."""

    summary: dict[str, Any]  # model -> group -> per_rate rows, clean accuracy, normalized AUC
    paired_differences: dict[str, list[dict[str, Any]]]  # "a - b" -> per-rate rows
    verdict: dict[str, Any] | None  # the most tolerant model (None for one model)
    coverage: dict[str, Any]  # model -> targeted weight share and what was left out
    data: dict[str, Any]  # examples, sha256, input transform
    results: dict[str, Any]  # everything, as results.json holds it

    def accuracy(self, model: str, rate: float, group: str = "all") -> tuple[float, float, float]:
        """(mean, 95% CI low, high) of `model`'s accuracy at `rate`."""
        for row in self.summary[model][group]["per_rate"]:
            if abs(row["rate"] - rate) < 1e-9:
                return row["mean"], row["ci_low"], row["ci_high"]
        raise KeyError(f"No rate {rate} in the campaign of {model!r}.")


def evaluate(
    models: dict[str, Any],
    spec: FaultSpec,
    data: Any,
    out_dir: str | Path | None = None,
    transform: Any = "auto",
    batch_size: int = 2000,
    allow_chance_accuracy: bool = False,
    progress: bool = False,
) -> CampaignResult:
    """Runs a paired campaign of `spec` over `models` on `data`; see the module docstring.

    `transform` turns stored inputs into model inputs ('auto': x / 255 for uint8 data,
    'raw', 'unit', 'symmetric', or an `inputs.InputTransform`).
    """
    images, labels = _arrays(data)
    loaded = {label: _model(value) for label, value in models.items()}
    results = campaign.run_campaign(
        loaded,
        spec,
        images,
        labels,
        out_dir,
        batch_size=batch_size,
        progress=progress,
        transform=transform,
        allow_chance_accuracy=allow_chance_accuracy,
    )
    return CampaignResult(
        summary=results["summary"],
        paired_differences=results["paired_differences"],
        verdict=results["verdict"],
        coverage=results["coverage"],
        data=results["data"],
        results=results,
    )


def _model(value: Any):
    if isinstance(value, (bytes, bytearray)):
        from aftt_tf.faults import tflite_runner

        return tflite_runner.TFLiteModel.from_bytes(bytes(value))
    if isinstance(value, (str, Path)):
        return load_campaign_model(value)
    return value


def _arrays(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) from a pair of arrays or a tf.data.Dataset of (inputs, labels)."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return np.asarray(data[0]), np.asarray(data[1])
    if hasattr(data, "as_numpy_iterator"):
        pairs = list(data.as_numpy_iterator())
        if not pairs or len(pairs[0]) != 2:
            raise ValueError("The dataset must yield (inputs, labels) pairs.")
        batched = np.ndim(pairs[0][1]) > 0
        join = np.concatenate if batched else np.stack
        return join([x for x, _ in pairs]), join([y for _, y in pairs])
    raise ValueError(
        f"data must be (inputs, labels) arrays or a tf.data.Dataset, not {type(data).__name__}."
    )
