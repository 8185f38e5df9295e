"""The report's sections: one builder per table or figure, each returning its blocks and the
numbers it shows (which also go to results.json).

Every number is computed from the training metrics, the exports' manifests and the
campaigns' cells; nothing is typed in except the paper's own published numbers
(`paper`), which are labelled as such.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from aftt_tf import methods, vocabulary
from aftt_tf.campaigns import analysis, outputs
from aftt_tf.reproduce import document, figures
from aftt_tf.reproduce.config import RUNTIME_NAMES, ReproduceConfig, campaign_name
from aftt_tf.reproduce.paper import (
    PAPER_FAULTS,
    PAPER_SWEEP_TABLES,
    PAPER_TABLE_I,
    PAPER_TABLE_II,
)

DASH = "–"
METHOD_COLUMNS = (
    "train_accuracy",
    "validation_accuracy",
    "test_accuracy",
    "generalization_error",
    "reg_lambda",
    "seconds",
)
SWEEP_COLUMNS = ("train_accuracy", "validation_accuracy", "test_accuracy", "generalization_error")


def percent(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return f"{100 * value:.{digits}f}"


def _signed(value: float) -> str:
    return f"{100 * value:+.2f}"


def _interval(mean: float, low: float, high: float) -> str:
    return f"{percent(mean)} [{percent(low)}, {percent(high)}]"


def _signed_interval(row: dict[str, Any]) -> str:
    return (
        f"{_signed(row['mean_difference'])} [{_signed(row['ci_low'])}, {_signed(row['ci_high'])}]"
    )


def method_numbers(trained: dict[str, Any], exports: dict[str, Any]) -> dict[str, Any]:
    """Per method: accuracies, generalization error, lambda, seconds, int8 test accuracy."""
    result = {}
    for method, entry in trained.items():
        result[method] = {key: entry["metrics"][key] for key in METHOD_COLUMNS}
        result[method]["int8_test_accuracy"] = exports.get(method, {}).get("test_accuracy")
        modes = exports.get(method, {}).get("modes", {})
        if len(modes) > 1:
            result[method]["int8_modes_test_accuracy"] = {
                runtime: values["test_accuracy"] for runtime, values in modes.items()
            }
    return result


def table_ii(architecture: str, methods: dict[str, Any]) -> list[document.Block]:
    """Table II analog: accuracy and generalization error beside the paper's."""
    paper = PAPER_TABLE_II.get(architecture, {})
    rows = []
    for method, own in methods.items():
        paper_cells = [f"{value:.2f}" for value in paper[method]] if method in paper else [DASH] * 3
        rows.append(
            [
                f"{method} ({vocabulary.METHOD_NAMES[method]})",
                percent(own["train_accuracy"]),
                percent(own["test_accuracy"]),
                percent(own["generalization_error"]),
                percent(own["int8_test_accuracy"]),
                f"{own['reg_lambda']:g}" if method in vocabulary.PENALTY_METHODS else DASH,
                *paper_cells,
            ]
        )
    headers = ["method", "train %", "test %", "gen. error %", "int8 test %", "lambda"]
    headers += ["paper train %", "paper test %", "paper gen. error %"]
    return [
        document.Heading("Table II analog: accuracy and generalization error"),
        document.Table(
            headers,
            rows,
            "Generalization error = train accuracy − test accuracy (paper Eq. 8). The model "
            "of each method is its best validation epoch; l1/l2 use the lambda with the best "
            "validation accuracy.",
        ),
    ]


def table_i(sweeps: dict[str, Any], methods: dict[str, Any]) -> list[document.Block]:
    """Table I analog: the L2 (and L1) lambda sweeps, 'none' as lambda 0, and the paper's."""
    blocks: list[document.Block] = []
    for method in sorted(vocabulary.PENALTY_METHODS, key=lambda m: m not in PAPER_SWEEP_TABLES):
        if method not in sweeps:
            continue
        rows = [
            [f"{row['reg_lambda']:g}", *(percent(row[key]) for key in SWEEP_COLUMNS)]
            for row in sweeps[method]
        ]
        if "none" in methods:
            rows.insert(0, ["0 (none)", *(percent(methods["none"][key]) for key in SWEEP_COLUMNS)])
        title = f"{PAPER_SWEEP_TABLES.get(method, '')}{vocabulary.METHOD_NAMES[method]} sweep"
        blocks += [
            document.Heading(title),
            document.Table(["lambda", "train %", "validation %", "test %", "gen. error %"], rows),
        ]
        if method in PAPER_SWEEP_TABLES:
            blocks.append(
                document.Table(
                    ["paper lambda", "train %", "test %", "gen. error %"],
                    [[f"{row[0]:g}", *(f"{v:.2f}" for v in row[1:])] for row in PAPER_TABLE_I],
                    "Paper Table I (its architecture and penalty scaling are not stated, so "
                    "lambdas are not comparable one to one).",
                )
            )
    return blocks


def weight_distributions(trained: dict[str, Any], out: Path) -> tuple[list, dict[str, Any]]:
    """Fig. 2 analog and its table; returns (blocks, weight statistics per method)."""
    statistics = figures.weight_histograms(trained, out / "figures" / "fig2_weight_histograms.png")
    rows = [
        [
            method,
            f"{stats['extractor']['std']:.4f}",
            f"{stats['extractor']['max_abs']:.3f}",
            f"{stats['all']['l2_norm']:.2f}",
        ]
        for method, stats in statistics.items()
    ]
    blocks = [
        document.Heading("Fig. 2 analog: weight distributions"),
        document.Figure(
            "figures/fig2_weight_histograms.png",
            "Histogram of the kernel values of every method (log density).",
        ),
        document.Table(
            ["method", "extractor std", "extractor max |w|", "classifier L2 norm"], rows
        ),
    ]
    return blocks, statistics


def pretraining_games(trained: dict[str, Any], out: Path) -> tuple[list, dict[str, Any] | None]:
    """Fig. 5 analog of the first pre-trained method; (blocks, its last epoch) or ([], None)."""
    method = next(
        (
            m
            for m in vocabulary.PRETRAINING_METHODS
            if m in trained and trained[m]["metrics"]["history"].get("pretrain")
        ),
        None,
    )
    if method is None:
        return [], None
    history = trained[method]["metrics"]["history"]["pretrain"]
    figures.aae_losses(history, out / "figures" / "fig5_aae_losses.png", method)
    last = history[-1]
    caption = (
        f"Per-epoch means of the three players' losses ({method}). Last epoch: "
        f"reconstruction {last['reconstruction_loss']:.4f}, discriminator accuracy "
        f"{percent(last['discriminator_accuracy_fake'], 1)}% on codes / "
        f"{percent(last['discriminator_accuracy_real'], 1)}% on prior samples."
    )
    blocks = [
        document.Heading("Fig. 5 analog: the two games during pre-training"),
        document.Figure("figures/fig5_aae_losses.png", caption),
    ]
    return blocks, {"method": method, "last_epoch": last}


def campaign_verdict(name: str, result: dict[str, Any], out: Path) -> dict[str, Any]:
    """The campaign's verdict plus where AFTT stands against the most tolerant method."""
    cells = outputs.campaign_cells(out / "campaigns" / name, result)
    verdict = dict(result["verdict"])
    ranking = verdict.get("ranking", [])
    proposed = methods.proposed()  # Reports rank the paper's proposed method.
    if proposed in ranking:
        verdict["aftt_rank"] = ranking.index(proposed) + 1
        if ranking[0] != proposed:
            verdict["aftt_minus_best"] = analysis.paired_auc_difference(cells, proposed, ranking[0])
    return verdict


def verdict_line(kind: str, scope: str, runtime: str, verdict: dict[str, Any]) -> str:
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


def rate_row(summary: dict[str, Any], method: str, rate: float) -> dict[str, Any] | None:
    for row in summary.get(method, {}).get("all", {}).get("per_rate", []):
        if abs(row["rate"] - rate) < 1e-9:
            return row
    return None


def fault_campaigns(
    config: ReproduceConfig, campaigns: dict[str, Any], methods: list[str]
) -> tuple[list, dict[str, Any], list[str]]:
    """Fig. 7 analogs with their tables; returns (blocks, campaign results, verdict lines)."""
    out = Path(config.out)
    blocks: list[document.Block] = [
        document.Heading("Fig. 7 analog: accuracy under stuck-at-0 faults")
    ]
    results: dict[str, Any] = {}
    lines: list[str] = []
    for kind in config.faults:
        for scope in config.scopes:
            panels = []
            for runtime in config.int8_runtimes():
                name = campaign_name(kind, scope, runtime, config.variant)
                result = campaigns.get(name)
                if result is None:
                    continue
                if "skipped" in result:
                    results[name] = {"skipped": result["skipped"]}
                    lines.append(
                        f"**{kind} faults, scope {scope}, {RUNTIME_NAMES[runtime]}**: not run: "
                        f"{result['skipped']}."
                    )
                    continue
                verdict = campaign_verdict(name, result, out)
                results[name] = {
                    "kind": kind,
                    "scope": scope,
                    "runtime": runtime,
                    "spec": result["spec"],
                    "summary": result["summary"],
                    "verdict": verdict,
                }
                lines.append(verdict_line(kind, scope, runtime, verdict))
                panels.append((runtime, result["summary"]))
            if panels:
                blocks += _campaign_panel(out, kind, scope, panels, methods)
    return blocks, results, lines


def _campaign_panel(
    out: Path, kind: str, scope: str, panels: list[tuple[str, dict]], methods: list[str]
) -> list[document.Block]:
    """One (kind, scope): its figure (a panel per runtime) and its accuracy table."""
    figure_path = f"figures/fig7_{kind}_{scope}.png"
    figures.accuracy_vs_rate(panels, out / figure_path, f"{kind} faults, scope {scope}")
    where = "all layers of the deployed classifier" if scope == "all" else "feature extractor only"
    rates = sorted(
        {row["rate"] for _, s in panels for g in s.values() for row in g["all"]["per_rate"]}
    )
    rows = []
    for runtime, summary in panels:
        for method in methods:
            if method not in summary:
                continue
            cells = []
            for rate in rates:
                row = rate_row(summary, method, rate)
                cells.append(
                    DASH
                    if row is None
                    else f"{percent(row['mean'])} ±{percent(row['ci_high'] - row['mean'])}"
                )
            auc = percent(summary[method]["all"]["normalized_auc"])
            rows.append([method, RUNTIME_NAMES[runtime], auc, *cells])
    headers = ["method", "runtime", "norm. AUC %"] + [f"{100 * r:g}%" for r in rates]
    return [
        document.Heading(f"{kind} faults, scope {scope}", 3),
        document.Figure(
            figure_path,
            f"Accuracy vs {kind} fault rate, scope {scope} ({where}), "
            "mean and 95% CI band per method.",
        ),
        document.Table(headers, rows, "Mean test accuracy % ± 95% CI half-width."),
        document.Paragraph(_non_finite_note(panels)),
    ]


def _non_finite_note(panels: list[tuple[str, dict]]) -> str:
    """Which methods had NaN/Inf outputs (detected errors, never counted as a class)."""
    seen = []
    for runtime, summary in panels:
        for method, groups in summary.items():
            for row in groups["all"]["per_rate"]:
                non_finite = row.get("non_finite")
                if non_finite and non_finite["mean"] > 0:
                    seen.append(
                        f"{method} ({RUNTIME_NAMES[runtime]}) at {100 * row['rate']:g}%: "
                        f"{percent(non_finite['mean'])}% "
                        f"[{percent(non_finite['ci_low'])}, {percent(non_finite['ci_high'])}]"
                    )
    if not seen:
        return "No inference had a NaN or infinite output (every wrong answer is a wrong class)."
    return (
        "Inferences with NaN/Inf outputs (detected errors, counted as not correct): "
        + "; ".join(seen)
        + "."
    )


def paper_faults(
    config: ReproduceConfig, campaign_results: dict[str, Any], methods: list[str]
) -> tuple[list, list[dict[str, Any]]]:
    """The paper's quoted fault numbers (section VI.D) beside ours (Keras float32)."""
    rows, numbers = [], []
    for (architecture, kind), (rate, quantity, values) in PAPER_FAULTS.items():
        if architecture != config.train.architecture:
            continue
        for scope in config.scopes:
            entry = campaign_results.get(campaign_name(kind, scope, "keras", config.variant))
            if not entry or "summary" not in entry:
                continue
            for method in methods:
                row = rate_row(entry["summary"], method, rate)
                if row is None:
                    continue
                value, low, high = row["mean"], row["ci_low"], row["ci_high"]
                if quantity == "drop":  # The clean accuracy is one deterministic number.
                    value = row["drop_from_clean"]
                    low = value - (row["ci_high"] - row["mean"])
                    high = value + (row["mean"] - row["ci_low"])
                paper_value = values.get(method)
                numbers.append(
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
                paper_text = DASH if paper_value is None else f"{paper_value:.2f}"
                interval = _interval(value, low, high)
                rows.append(
                    [f"{kind} {100 * rate:g}%", scope, method, quantity, interval, paper_text]
                )
    if not rows:
        return [], numbers
    blocks = [
        document.Heading("Paper section VI.D beside ours"),
        document.Table(
            ["faults", "scope", "method", "quantity", "ours % [95% CI]", "paper %"],
            rows,
            "Keras float32 models. 'drop' is clean accuracy minus faulty accuracy. The "
            "paper does not say which layers it faulted, hence both scopes.",
        ),
    ]
    return blocks, numbers
