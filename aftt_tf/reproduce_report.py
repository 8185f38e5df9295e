"""The `aftt-reproduce` report: tables, figures and computed verdicts from the stage outputs.

Every number in report.md/report.html is also in results.json, computed here from the
training metrics, the exports' manifests and the campaigns' cells; nothing is typed in
except the paper's own published numbers, which are labelled as such.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import io_utils, report
from aftt_tf.faults import campaign
from aftt_tf.reproduce import (
    METHOD_NAMES,
    PAPER_FAULTS,
    PAPER_TABLE_I,
    PAPER_TABLE_II,
    RUNTIME_NAMES,
    ReproduceConfig,
    campaign_name,
)

DASH = "–"


def _percent(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return f"{100 * value:.{digits}f}"


def _signed(value: float) -> str:
    return f"{100 * value:+.2f}"


def _interval(mean: float, low: float, high: float) -> str:
    return f"{_percent(mean)} [{_percent(low)}, {_percent(high)}]"


def _signed_interval(row: dict[str, Any]) -> str:
    return (
        f"{_signed(row['mean_difference'])} [{_signed(row['ci_low'])}, {_signed(row['ci_high'])}]"
    )


def _kernels(path: str, part: str) -> np.ndarray:
    """All kernel elements of the classifier's extractor (or of the whole classifier)."""
    from aftt_tf.faults import keras_runner, kinds

    model = keras_runner.load_model(path)
    values = [
        np.ravel(layer.kernel.numpy())
        for layer in model.layers
        if getattr(layer, "kernel", None) is not None
        and (part == "all" or kinds.in_scope(layer.name, "extractor"))
    ]
    return np.concatenate(values)


def _figure_weight_histograms(trained: dict[str, Any], path: Path) -> dict[str, Any]:
    """Fig. 2 analog: distribution of the extractor's and the classifier's weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    statistics = {}
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, part, title in (
        (axes[0], "extractor", "feature extractor"),
        (axes[1], "all", "whole classifier"),
    ):
        values = {method: _kernels(entry["model"], part) for method, entry in trained.items()}
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
    _save(figure, path)
    return statistics


def _figure_aae_losses(history: list[dict[str, Any]], path: Path, method: str) -> None:
    """Fig. 5 analog: Game 1 reconstruction loss and Game 2 discriminator/extractor losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
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
    _save(figure, path)


def _figure_accuracy_vs_rate(
    panels: list[tuple[str, dict[str, Any]]], path: Path, title: str
) -> None:
    """Fig. 7 analog: accuracy vs fault rate per method, 95% CI bands, one panel per runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for axis, (runtime, summary) in zip(axes[0], panels, strict=True):
        for method, groups in summary.items():
            rows = groups["all"]["per_rate"]
            rates = [100 * row["rate"] for row in rows]
            axis.plot(
                rates, [100 * row["mean"] for row in rows], marker="o", markersize=3, label=method
            )
            axis.fill_between(
                rates,
                [100 * row["ci_low"] for row in rows],
                [100 * row["ci_high"] for row in rows],
                alpha=0.2,
            )
        axis.set_title(f"{title}, {RUNTIME_NAMES[runtime]}", fontsize=10)
        axis.set_xlabel("fault rate (% of elements per layer)")
        axis.set_ylabel("test accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    _save(figure, path)


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    with io_utils.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def _campaign_verdict(name: str, result: dict[str, Any], out: Path) -> dict[str, Any]:
    """The campaign's verdict plus where AFTT stands against the most tolerant method."""
    cells = campaign.campaign_cells(out / "campaigns" / name, result)
    verdict = dict(result["verdict"])
    ranking = verdict.get("ranking", [])
    if "aftt" in ranking and ranking[0] != "aftt":
        verdict["aftt_rank"] = ranking.index("aftt") + 1
        verdict["aftt_minus_best"] = campaign.paired_auc_difference(cells, "aftt", ranking[0])
    elif ranking and ranking[0] == "aftt":
        verdict["aftt_rank"] = 1
    return verdict


def _verdict_line(kind: str, scope: str, runtime: str, verdict: dict[str, Any]) -> str:
    line = f"**{kind} faults, scope {scope}, {RUNTIME_NAMES[runtime]}**: {verdict['text']}."
    if "aftt_minus_best" in verdict:
        difference = verdict["aftt_minus_best"]
        best = verdict["ranking"][0]
        line += (
            f" AFTT does not win: it ranks {verdict['aftt_rank']} of {len(verdict['ranking'])}, "
            f"aftt − {best} = {_signed_interval(difference)} points of normalized AUC."
        )
    elif verdict.get("aftt_rank") == 1 and verdict.get("tie"):
        line += " AFTT has the highest mean but its lead is within the CI."
    return line


def _rate_row(summary: dict[str, Any], method: str, rate: float) -> dict[str, Any] | None:
    for row in summary.get(method, {}).get("all", {}).get("per_rate", []):
        if abs(row["rate"] - rate) < 1e-9:
            return row
    return None


def write(
    config: ReproduceConfig,
    trained: dict[str, Any],
    exports: dict[str, Any],
    campaigns: dict[str, dict[str, Any]],
    campaign_examples: int,
) -> dict[str, Any]:
    """Writes report.md, report.html, figures/ and results.json into OUT; returns the results."""
    out = Path(config.out)
    figures = out / "figures"
    architecture = config.train.architecture
    methods = list(trained)
    first = trained[methods[0]]["metrics"]
    results: dict[str, Any] = {
        "architecture": architecture,
        "dataset": config.train.dataset,
        "data_source": first["data_source"],
        "split_sizes": first["split_sizes"],
        "campaign_test_examples": campaign_examples,
        "config": config.as_dict(),
        "method_order": methods,  # JSON objects below are written with sorted keys.
        "methods": {},
        "sweeps": {},
        "campaigns": {},
        "verdicts": [],
        "versions": io_utils.versions(),
    }
    for method, entry in trained.items():
        metrics = entry["metrics"]
        results["methods"][method] = {
            key: metrics[key]
            for key in (
                "train_accuracy",
                "validation_accuracy",
                "test_accuracy",
                "generalization_error",
                "reg_lambda",
                "seconds",
            )
        }
        results["methods"][method]["int8_test_accuracy"] = exports.get(method, {}).get(
            "test_accuracy"
        )
        if "sweep" in entry:
            results["sweeps"][method] = entry["sweep"]

    blocks: list[report.Block] = [
        report.Heading(f"AFTT reproduction: {architecture} on {config.train.dataset}", 1),
        report.Paragraph(
            f"Data: {first['data_source']}; splits {first['split_sizes']}. Campaigns use "
            f"{campaign_examples} test images, {config.trials} trials per rate, seed "
            f"{config.campaign_seed}; fault positions are identical for every method (paired). "
            "Intervals are 95% t-intervals over trials. Generated by `aftt-reproduce`; every "
            "number here is in `results.json`. Paper numbers are quoted from its Tables I-II "
            "and section VI.D."
        ),
        report.Heading("Verdicts (computed from the paired campaigns)"),
    ]
    verdict_index = len(blocks)

    # Table II analog.
    paper = PAPER_TABLE_II.get(architecture, {})
    rows = []
    for method in methods:
        own = results["methods"][method]
        paper_cells = [f"{value:.2f}" for value in paper[method]] if method in paper else [DASH] * 3
        rows.append(
            [
                f"{method} ({METHOD_NAMES[method]})",
                _percent(own["train_accuracy"]),
                _percent(own["test_accuracy"]),
                _percent(own["generalization_error"]),
                _percent(own["int8_test_accuracy"]),
                f"{own['reg_lambda']:g}" if method in ("l1", "l2") else DASH,
                *paper_cells,
            ]
        )
    blocks += [
        report.Heading("Table II analog: accuracy and generalization error"),
        report.Table(
            [
                "method",
                "train %",
                "test %",
                "gen. error %",
                "int8 test %",
                "lambda",
                "paper train %",
                "paper test %",
                "paper gen. error %",
            ],
            rows,
            "Generalization error = train accuracy − test accuracy (paper Eq. 8). The model "
            "of each method is its best validation epoch; l1/l2 use the lambda with the best "
            "validation accuracy.",
        ),
    ]

    # Table I analog.
    for method in ("l2", "l1"):
        if method not in results["sweeps"]:
            continue
        sweep_rows = [
            [
                f"{row['reg_lambda']:g}",
                _percent(row["train_accuracy"]),
                _percent(row["validation_accuracy"]),
                _percent(row["test_accuracy"]),
                _percent(row["generalization_error"]),
            ]
            for row in results["sweeps"][method]
        ]
        if "none" in results["methods"]:
            none = results["methods"]["none"]
            sweep_rows.insert(
                0,
                [
                    "0 (none)",
                    _percent(none["train_accuracy"]),
                    _percent(none["validation_accuracy"]),
                    _percent(none["test_accuracy"]),
                    _percent(none["generalization_error"]),
                ],
            )
        title = "Table I analog: Tikhonov (L2) sweep" if method == "l2" else "Lasso (L1) sweep"
        blocks += [
            report.Heading(title),
            report.Table(
                ["lambda", "train %", "validation %", "test %", "gen. error %"], sweep_rows
            ),
        ]
        if method == "l2":
            blocks.append(
                report.Table(
                    ["paper lambda", "train %", "test %", "gen. error %"],
                    [[f"{row[0]:g}", *(f"{v:.2f}" for v in row[1:])] for row in PAPER_TABLE_I],
                    "Paper Table I (its architecture and penalty scaling are not stated, so "
                    "lambdas are not comparable one to one).",
                )
            )

    # Fig. 2 and Fig. 5 analogs.
    weight_statistics = _figure_weight_histograms(trained, figures / "fig2_weight_histograms.png")
    results["weight_statistics"] = weight_statistics
    blocks += [
        report.Heading("Fig. 2 analog: weight distributions"),
        report.Figure(
            "figures/fig2_weight_histograms.png",
            "Histogram of the kernel values of every method (log density).",
        ),
        report.Table(
            ["method", "extractor std", "extractor max |w|", "classifier L2 norm"],
            [
                [
                    method,
                    f"{stats['extractor']['std']:.4f}",
                    f"{stats['extractor']['max_abs']:.3f}",
                    f"{stats['all']['l2_norm']:.2f}",
                ]
                for method, stats in weight_statistics.items()
            ],
        ),
    ]
    pretrained = next(
        (
            m
            for m in ("aftt", "aftt_fat")
            if m in trained and trained[m]["metrics"]["history"].get("pretrain")
        ),
        None,
    )
    if pretrained:
        history = trained[pretrained]["metrics"]["history"]["pretrain"]
        _figure_aae_losses(history, figures / "fig5_aae_losses.png", pretrained)
        last = history[-1]
        results["pretraining"] = {"method": pretrained, "last_epoch": last}
        blocks += [
            report.Heading("Fig. 5 analog: the two games during pre-training"),
            report.Figure(
                "figures/fig5_aae_losses.png",
                f"Per-epoch means of the three players' losses ({pretrained}). Last epoch: "
                f"reconstruction {last['reconstruction_loss']:.4f}, discriminator accuracy "
                f"{_percent(last['discriminator_accuracy_fake'], 1)}% on codes / "
                f"{_percent(last['discriminator_accuracy_real'], 1)}% on prior samples.",
            ),
        ]

    # Fig. 7 analogs, fault tables and verdicts.
    verdict_lines = []
    blocks.append(report.Heading("Fig. 7 analog: accuracy under stuck-at-0 faults"))
    for kind in config.faults:
        for scope in config.scopes:
            panels = []
            for runtime in config.runtimes:
                name = campaign_name(kind, scope, runtime)
                result = campaigns.get(name)
                if result is None:
                    continue
                if "skipped" in result:
                    results["campaigns"][name] = {"skipped": result["skipped"]}
                    line = (
                        f"**{kind} faults, scope {scope}, {RUNTIME_NAMES[runtime]}**: not run: "
                        f"{result['skipped']}."
                    )
                    verdict_lines.append(line)
                    continue
                verdict = _campaign_verdict(name, result, out)
                results["campaigns"][name] = {
                    "kind": kind,
                    "scope": scope,
                    "runtime": runtime,
                    "spec": result["spec"],
                    "summary": result["summary"],
                    "verdict": verdict,
                }
                verdict_lines.append(_verdict_line(kind, scope, runtime, verdict))
                panels.append((runtime, result["summary"]))
            if not panels:
                continue
            figure_path = f"figures/fig7_{kind}_{scope}.png"
            _figure_accuracy_vs_rate(panels, out / figure_path, f"{kind} faults, scope {scope}")
            blocks += [
                report.Heading(f"{kind} faults, scope {scope}", 3),
                report.Figure(
                    figure_path,
                    f"Accuracy vs {kind} fault rate, scope {scope} "
                    f"({'all layers of the deployed classifier' if scope == 'all' else 'feature extractor only'}), "
                    "mean and 95% CI band per method.",
                ),
            ]
            rates = sorted(
                {row["rate"] for _, s in panels for g in s.values() for row in g["all"]["per_rate"]}
            )
            headers = ["method", "runtime", "norm. AUC %"] + [f"{100 * r:g}%" for r in rates]
            table_rows = []
            for runtime, summary in panels:
                for method in methods:
                    if method not in summary:
                        continue
                    own = summary[method]["all"]
                    cells = []
                    for rate in rates:
                        row = _rate_row(summary, method, rate)
                        cells.append(
                            DASH
                            if row is None
                            else f"{_percent(row['mean'])} ±{_percent(row['ci_high'] - row['mean'])}"
                        )
                    table_rows.append(
                        [method, RUNTIME_NAMES[runtime], _percent(own["normalized_auc"]), *cells]
                    )
            blocks.append(
                report.Table(headers, table_rows, "Mean test accuracy % ± 95% CI half-width.")
            )

    # The paper's quoted fault numbers beside ours (Keras float32 runtime, scope all).
    paper_rows = []
    results["paper_fault_comparison"] = []
    for (paper_architecture, kind), (rate, quantity, values) in PAPER_FAULTS.items():
        if paper_architecture != architecture:
            continue
        for scope in config.scopes:
            name = campaign_name(kind, scope, "keras")
            entry = results["campaigns"].get(name)
            if not entry or "summary" not in entry:
                continue
            for method in methods:
                row = _rate_row(entry["summary"], method, rate)
                if row is None:
                    continue
                value, low, high = row["mean"], row["ci_low"], row["ci_high"]
                if quantity == "drop":  # The clean accuracy is one deterministic number.
                    value = row["drop_from_clean"]
                    low = value - (row["ci_high"] - row["mean"])
                    high = value + (row["mean"] - row["ci_low"])
                paper_value = values.get(method)
                results["paper_fault_comparison"].append(
                    {
                        "kind": kind,
                        "scope": scope,
                        "rate": rate,
                        "quantity": quantity,
                        "method": method,
                        "value": value,
                        "ci_low": low,
                        "ci_high": high,
                        "paper": paper_value,
                    }
                )
                paper_rows.append(
                    [
                        f"{kind} {100 * rate:g}%",
                        scope,
                        method,
                        quantity,
                        _interval(value, low, high),
                        DASH if paper_value is None else f"{paper_value:.2f}",
                    ]
                )
    if paper_rows:
        blocks += [
            report.Heading("Paper section VI.D beside ours"),
            report.Table(
                ["faults", "scope", "method", "quantity", "ours % [95% CI]", "paper %"],
                paper_rows,
                "Keras float32 models. 'drop' is clean accuracy minus faulty accuracy. The "
                "paper does not say which layers it faulted, hence both scopes.",
            ),
        ]

    results["verdicts"] = verdict_lines
    blocks[verdict_index:verdict_index] = [
        report.BulletList(verdict_lines or ["no campaign was run (see --faults / --runtimes)."]),
        report.Paragraph(
            "The most tolerant method has the highest mean normalized area under its "
            "accuracy-vs-rate curve; the difference to the runner-up is paired per trial "
            "(same faults) and a tie is declared when its 95% CI contains 0."
        ),
    ]
    blocks += [
        report.Heading("Reproduce"),
        report.Code("aftt-reproduce " + " ".join(_command_flags(config))),
    ]
    io_utils.write_json(out / "results.json", results)
    report.write_report(blocks, out, f"AFTT reproduction: {architecture}")
    return results


def _command_flags(config: ReproduceConfig) -> list[str]:
    defaults = ReproduceConfig(train=config.train, out=config.out)
    flags = [f"--out={config.out}"]
    for field in dataclasses.fields(config):
        if field.name in ("train", "out"):
            continue
        value = getattr(config, field.name)
        if value != getattr(defaults, field.name):
            if isinstance(value, tuple):
                value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
            flags.append(f"--{field.name}={value}")
    flags.append("(training flags: see train/<method>/flags.txt)")
    return flags
