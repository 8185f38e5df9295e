"""Campaign plots: accuracy vs fault rate with 95% CI bands, layer sensitivity.

Figures are drawn on `matplotlib.figure.Figure` objects, never through pyplot's global
state, so a notebook's backend and open figures are left as they are.
`save_figure` and `accuracy_vs_rate_figure` also draw the reproduction report's figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from aftt_tf import io_utils


def subplots(rows: int = 1, columns: int = 1, figsize=(7, 4), squeeze: bool = True):
    """(figure, axes) like `pyplot.subplots`, without pyplot (no backend switch)."""
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, columns, squeeze=squeeze)


def save_figure(figure, stem: Path, formats: tuple[str, ...] = ("png", "svg"), dpi=150) -> None:
    """Writes `stem.<format>` for each format atomically and closes the figure."""
    for suffix in formats:
        path = stem.with_suffix(f".{suffix}")
        with io_utils.atomic_path(path) as temporary:
            figure.savefig(temporary, format=suffix, dpi=dpi, bbox_inches="tight")


# Panels per row of a multi-panel figure (3 x 6 inches: readable in a page or the html).
MAX_COLUMNS = 3


def accuracy_vs_rate_figure(panels: list[tuple[str, dict[str, Any]]], group: str = "all"):
    """One panel per (title, summary); one line per model (like the paper's Fig. 3 and
    Fig. 7), its 95% CI as a shaded band. Rates spanning decades (bit faults at 1e-5 ..
    1e-2) get a logarithmic axis (linear around 0), so small rates are not piled at 0."""
    columns = min(len(panels), MAX_COLUMNS)  # A grid, not one unreadable row of panels.
    rows_ = -(-len(panels) // columns)
    figure, axes = subplots(rows_, columns, figsize=(6 * columns, 4 * rows_), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    for axis, (title, summary) in zip(axes.flat, panels, strict=False):
        for model, groups in summary.items():
            if group not in groups:
                continue
            rows = groups[group]["per_rate"]
            rates = [100 * row["rate"] for row in rows]
            means = [100 * row["mean"] for row in rows]
            (line,) = axis.plot(rates, means, marker="o", markersize=3, label=model)
            axis.fill_between(
                rates,
                [100 * row["ci_low"] for row in rows],
                [100 * row["ci_high"] for row in rows],
                alpha=0.2,
            )
            if any((row.get("non_finite") or {}).get("mean", 0) > 0 for row in rows):
                axis.plot(
                    rates,
                    [100 * (row.get("non_finite") or {}).get("mean", 0.0) for row in rows],
                    linestyle="--",
                    color=line.get_color(),
                    label=f"{model}: NaN/Inf outputs (%)",
                )
        _rate_axis(axis, summary, group)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("fault rate (% of elements per layer)")
        axis.set_ylabel("test accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return figure


def _rate_axis(axis, summary: dict[str, Any], group: str) -> None:
    rates = sorted(
        {
            100 * row["rate"]
            for groups in summary.values()
            if group in groups
            for row in groups[group]["per_rate"]
            if row["rate"] > 0
        }
    )
    if len(rates) >= 2 and rates[-1] / rates[0] >= 100:
        axis.set_xscale("symlog", linthresh=rates[0])


def accuracy_vs_rate(
    summary: dict[str, Any], stem: Path, title: str = "", group: str = "all"
) -> None:
    """A campaign's accuracy-vs-rate plot, as PNG and SVG."""
    save_figure(accuracy_vs_rate_figure([(title, summary)], group), stem)


def layer_sensitivity(summary: dict[str, Any], stem: Path, title: str = "") -> None:
    """Normalised area under the accuracy-vs-rate curve when only one layer is faulted."""
    figure, axis = subplots(figsize=(7, 4))
    models = list(summary)
    width = 0.8 / max(1, len(models))
    for index, model in enumerate(models):
        layers = [g for g in summary[model] if g != "all"]
        positions = [i + index * width for i in range(len(layers))]
        axis.bar(
            positions,
            [100 * summary[model][g]["normalized_auc"] for g in layers],
            width,
            label=model,
        )
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))], layers, rotation=30)
    axis.set_ylabel("mean accuracy over rates (%)")
    axis.set_title(f"per-layer sensitivity: {title}")
    axis.legend()
    save_figure(figure, stem)
