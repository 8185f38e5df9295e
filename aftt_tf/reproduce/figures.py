"""The report's figures: Fig. 2 (weights), Fig. 5 (the games) and Fig. 7 (accuracy vs rate)
analogs, drawn with the campaign plots' helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import vocabulary
from aftt_tf.campaigns import plots
from aftt_tf.reproduce.config import RUNTIME_NAMES


def _save_png(figure, path: Path) -> None:
    plots.save_figure(figure, path.with_suffix(""), formats=("png",), dpi=110)


def kernels(path: str, part: str) -> np.ndarray:
    """All kernel elements of the classifier's extractor (part 'extractor') or of the
    whole classifier ('all')."""
    from aftt_tf.runtimes import keras_runner, targets

    model = keras_runner.load_model(path)
    values = [
        np.ravel(layer.kernel.numpy())
        for layer in targets.weight_layers(model)
        if part == "all" or vocabulary.in_scope(layer.name, "extractor")
    ]
    return np.concatenate(values)


def weight_histograms(trained: dict[str, Any], path: Path) -> dict[str, Any]:
    """Fig. 2 analog: distribution of the extractor's and the classifier's weights.

    Returns per method and part the std, max |w| and L2 norm of the kernels.
    """
    from aftt_tf.campaigns.plots import subplots

    statistics = {}
    figure, axes = subplots(1, 2, figsize=(11, 4))
    for axis, part, title in (
        (axes[0], "extractor", "feature extractor"),
        (axes[1], "all", "whole classifier"),
    ):
        values = {method: kernels(entry["model"], part) for method, entry in trained.items()}
        limit = max(float(np.percentile(np.abs(v), 99.9)) for v in values.values())
        bins = np.linspace(-limit, limit, 121)
        for method, kernel in values.items():
            axis.hist(kernel, bins=bins, histtype="step", density=True, label=method, linewidth=1.2)
            statistics.setdefault(method, {})[part] = {
                "std": float(np.std(kernel)),
                "max_abs": float(np.max(np.abs(kernel))),
                "l2_norm": float(np.linalg.norm(kernel)),
            }
        axis.set_yscale("log")
        axis.set_xlabel("weight value")
        axis.set_ylabel("density (log)")
        axis.set_title(f"weights of the {title}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    _save_png(figure, path)
    return statistics


def aae_losses(history: list[dict[str, Any]], path: Path, method: str) -> None:
    """Fig. 5 analog: Game 1 reconstruction loss and Game 2 discriminator/extractor losses."""
    from aftt_tf.campaigns.plots import subplots

    epochs = [row["epoch"] for row in history]
    figure, axes = subplots(1, 3, figsize=(13, 3.6))
    panels = (
        ("reconstruction_loss", "Game 1: reconstruction loss L_R"),
        ("discriminator_gain", "Game 2: discriminator gain G_D"),
        ("extractor_adversarial_loss", "Game 2: extractor loss L_G"),
    )
    for axis, (key, title) in zip(axes, panels, strict=True):
        axis.plot(epochs, [row[key] for row in history], marker="o", markersize=3)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("pre-training epoch")
        axis.grid(alpha=0.3)
    figure.suptitle(f"adversarial autoencoder pre-training ({method})", fontsize=10)
    _save_png(figure, path)


def accuracy_vs_rate(panels: list[tuple[str, dict[str, Any]]], path: Path, title: str) -> None:
    """Fig. 7 analog: accuracy vs fault rate per method, 95% CI bands, one panel per runtime."""
    titled = [(f"{title}, {RUNTIME_NAMES[runtime]}", summary) for runtime, summary in panels]
    _save_png(plots.accuracy_vs_rate_figure(titled), path)
