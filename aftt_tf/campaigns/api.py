"""`evaluate`: a fault campaign from Python, on models and data already in memory.

    from aftt_tf.faults import FaultSpec
    from aftt_tf.campaigns import evaluate

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

from aftt_tf.campaigns import engine as campaign
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import load_campaign_model


@dataclasses.dataclass
class CampaignResult:
    """A campaign's results: the same numbers `aftt-faults` writes to results.json."""

    summary: dict[str, Any]  # model -> group -> per_rate rows, clean accuracy, normalized AUC
    paired_differences: dict[str, list[dict[str, Any]]]  # "a - b" -> per-rate rows
    verdict: dict[str, Any] | None  # the most tolerant model (None for one model)
    coverage: dict[str, Any]  # model -> targeted weight share and what was left out
    data: dict[str, Any]  # examples, sha256, input transform
    results: dict[str, Any]  # everything, as results.json holds it

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per (model, group, rate): the per-rate statistics, flat."""
        rows = []
        for model, groups in self.summary.items():
            for group, entry in groups.items():
                for row in entry["per_rate"]:
                    non_finite = row.get("non_finite") or {}
                    rows.append(
                        {
                            "model": model,
                            "group": group,
                            "rate": row["rate"],
                            "trials": row["trials"],
                            "accuracy": row["mean"],
                            "ci_low": row["ci_low"],
                            "ci_high": row["ci_high"],
                            "drop_from_clean": row["drop_from_clean"],
                            "non_finite": non_finite.get("mean"),
                            "sdc": (row.get("sdc") or {}).get("mean"),
                            "realized_fraction": row["realized_fraction"],
                        }
                    )
        return rows

    def to_dataframe(self):
        """The per-rate statistics as a pandas DataFrame (pandas is imported only here)."""
        try:
            import pandas
        except ImportError:
            raise ImportError(
                "to_dataframe needs pandas (pip install pandas); to_rows() gives the same "
                "rows as dicts without it."
            ) from None
        return pandas.DataFrame(self.to_rows())

    def plot(self, group: str = "all", title: str = ""):
        """Accuracy vs rate (95% CI bands) as a matplotlib Figure, drawn without pyplot:
        a notebook's backend and open figures are left alone; display or save it."""
        from aftt_tf.campaigns import plots

        return plots.accuracy_vs_rate_figure([(title or self._title(), self.summary)], group)

    def _title(self) -> str:
        spec = self.results.get("spec", {})
        return f"{spec.get('kind', '')} faults, seed {spec.get('seed', '')}"

    def _repr_html_(self) -> str:
        """A table of accuracy per model and rate, for notebooks."""
        import html

        rates = sorted({row["rate"] for row in self.to_rows()})
        head = "".join(f"<th>{100 * rate:g}%</th>" for rate in rates)
        body = []
        for model, groups in self.summary.items():
            for group, entry in groups.items():
                by_rate = {row["rate"]: row for row in entry["per_rate"]}
                cells = "".join(
                    f"<td>{100 * by_rate[r]['mean']:.2f} "
                    f"[{100 * by_rate[r]['ci_low']:.2f}, {100 * by_rate[r]['ci_high']:.2f}]</td>"
                    if r in by_rate
                    else "<td>–</td>"
                    for r in rates
                )
                body.append(
                    f"<tr><td>{html.escape(model)}</td><td>{html.escape(group)}</td>{cells}</tr>"
                )
        verdict = self.verdict["text"] if self.verdict else ""
        return (
            f"<table><thead><tr><th>model</th><th>group</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
            f"<p>Accuracy % [95% CI] per fault rate. {html.escape(verdict)}</p>"
        )

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
    try:
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
    except ValueError as error:  # Messages written for the CLI name its flags.
        raise type(error)(python_names(str(error))) from None
    return CampaignResult(
        summary=results["summary"],
        paired_differences=results["paired_differences"],
        verdict=results["verdict"],
        coverage=results["coverage"],
        data=results["data"],
        results=results,
    )


# CLI flags in messages -> the argument of `evaluate` that does the same.
_ARGUMENTS = {
    "--allow_chance_accuracy": "allow_chance_accuracy=True",
    "--input_transform=raw": "transform='raw'",
    "--input_transform=unit": "transform='unit'",
    "--input_transform": "transform",
    "--batch_size": "batch_size",
    "--out": "out_dir",
    "--trials": "FaultSpec(trials=...)",
    "--target_margin": "FaultSpec(target_margin=...)",
}


def python_names(message: str) -> str:
    """A message that names CLI flags, naming `evaluate`'s arguments instead."""
    for flag, argument in _ARGUMENTS.items():
        message = message.replace(f"Pass {flag} ", f"Pass {argument} ").replace(flag, argument)
    return message


def _model(value: Any):
    if isinstance(value, (bytes, bytearray)):
        from aftt_tf.runtimes import tflite_runner

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
