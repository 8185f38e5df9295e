"""`write(directories, out)`: a report (report.md and report.html, figures embedded) of
any aftt-faults campaign directories: the user's own models, Keras and .tflite files,
deployed and repaired protocols, side by side.

Everything in it is read from the directories' results.json: per model and rate the
mean accuracy with its 95% interval, the share of NaN/Inf outputs, the drop from clean
accuracy, the normalised area under the curve, two rankings (by area and by mean drop,
which differ when clean accuracies differ), paired differences and the verdict. Nothing
is recomputed from a guess: a directory without results.json is refused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aftt_tf import io_utils
from aftt_tf.reproduce import document

DASH = "–"


def load(directory: str | Path) -> dict[str, Any]:
    """The results.json of a finished campaign directory (ValueError naming it otherwise)."""
    path = Path(directory) / "results.json"
    if not path.is_file():
        raise ValueError(
            f"{directory} holds no results.json: not a finished aftt-faults campaign (a "
            "sharded one needs `aftt-faults --merge` first)."
        )
    results = io_utils.read_json(path)
    if not isinstance(results, dict) or "summary" not in results or "spec" not in results:
        raise ValueError(f"{path} is not the results.json of an aftt-faults campaign.")
    return results


def _percent(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.2f}"


def _name(directory: Path, results: dict[str, Any]) -> str:
    spec = results["spec"]
    protocol = results.get("protocol", "deployed")
    return f"{directory.name} ({spec['kind']} faults, scope {spec['scope']}, {protocol})"


def _rates(results: dict[str, Any]) -> list[float]:
    return sorted(
        {
            row["rate"]
            for groups in results["summary"].values()
            for row in groups.get("all", {}).get("per_rate", [])
        }
    )


def _campaign_rows(label: str, results: dict[str, Any], rates: list[float]) -> list[list[str]]:
    rows = []
    for model, groups in results["summary"].items():
        entry = groups.get("all")
        if entry is None:
            continue
        by_rate = {row["rate"]: row for row in entry["per_rate"]}
        cells = []
        for rate in rates:
            row = by_rate.get(rate)
            if row is None:
                cells.append(DASH)
                continue
            text = (
                f"{_percent(row['mean'])} [{_percent(row['ci_low'])}, {_percent(row['ci_high'])}]"
            )
            sdc = row.get("sdc")
            if sdc and sdc["mean"] > 0:
                text += f", SDC {_percent(sdc['mean'])}"
            non_finite = row.get("non_finite")
            if non_finite and non_finite["mean"] > 0:
                text += f", NaN/Inf {_percent(non_finite['mean'])}"
            cells.append(text)
        drops = [row["drop_from_clean"] for row in entry["per_rate"] if row["rate"] > 0]
        mean_drop = sum(drops) / len(drops) if drops and None not in drops else None
        rows.append(
            [
                label,
                model,
                _percent(entry["clean_accuracy"]),
                _percent(entry["normalized_auc"]),
                _percent(mean_drop),
                *cells,
            ]
        )
    return rows


def _rankings(results: dict[str, Any]) -> list[str]:
    """Models ranked by normalised AUC and by mean drop from clean accuracy."""
    entries = {m: g["all"] for m, g in results["summary"].items() if "all" in g}
    if len(entries) < 2:
        return []
    by_auc = sorted(entries, key=lambda m: -entries[m]["normalized_auc"])

    def mean_drop(model: str) -> float:
        drops = [r["drop_from_clean"] for r in entries[model]["per_rate"] if r["rate"] > 0]
        return sum(drops) / len(drops) if drops and None not in drops else float("inf")

    by_drop = sorted(entries, key=mean_drop)
    lines = [
        "By normalised AUC (absolute accuracy over the rates): " + " > ".join(by_auc) + ".",
        "By mean drop from clean accuracy (tolerance whatever the clean accuracy): "
        + " < ".join(by_drop)
        + ".",
    ]
    if by_auc != by_drop:
        lines.append(
            "The two rankings differ: a model with higher clean accuracy can lead on area "
            "while losing more to faults."
        )
    if results.get("tolerance_verdict"):
        lines.append(
            "Tolerance apart from clean accuracy: " + results["tolerance_verdict"]["text"] + "."
        )
    return lines


def _paired(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for pair, entries in results.get("paired_differences", {}).items():
        for row in entries:
            rows.append(
                [
                    pair,
                    f"{100 * row['rate']:g}%",
                    f"{100 * row['mean_difference']:+.2f}",
                    f"[{100 * row['ci_low']:+.2f}, {100 * row['ci_high']:+.2f}]",
                    str(row["pairs"]),
                ]
            )
    return rows


def _outputs_text(coverage: dict[str, Any]) -> str:
    """'; transient faults in N values per inference (float32)' for transient campaigns."""
    outputs = coverage.get("outputs")
    if not outputs:
        return ""
    total = outputs["total_values_per_inference"]
    return (
        f"; transient faults in the outputs of {len(outputs['values_per_inference'])} layers, "
        f"{total if total is not None else 'an unknown number of'} values per inference "
        f"stored as {'/'.join(outputs['stored_as'])}"
    )


def _describe(results: dict[str, Any]) -> list[str]:
    spec, data = results["spec"], results.get("data", {})
    items = [
        f"Faults: {spec['kind']}, rates {', '.join(f'{100 * r:g}%' for r in spec['rates'])}, "
        f"{spec['trials']} trials per rate (max), seed {spec['seed']}, sampling "
        f"{spec['sampling']}, protocol {results.get('protocol', 'deployed')}.",
        f"Data: {data.get('source', DASH)}, {data.get('examples', DASH)} examples, input "
        f"transform {data.get('input_transform', {}).get('name', DASH)}, sha256 "
        f"{str(data.get('sha256', DASH))[:16]}.",
    ]
    for model, coverage in (results.get("coverage") or {}).items():
        if coverage:
            items.append(
                f"{model}: the targeted layers hold "
                f"{100 * coverage['targeted_layers_weight_share']:.1f}% of its "
                f"{coverage['model_weight_elements']} weights"
                + (f"; {len(coverage['left_out'])} left out" if coverage["left_out"] else "")
                + _outputs_text(coverage)
                + "."
            )
    if results.get("verdict"):
        items.append(f"Verdict: {results['verdict']['text']}")
    return items


# What marks a directory as aftt-report's own: only such a directory is written again.
REPORT_MARKER = "aftt-report.json"
_REPORT_FILES = {REPORT_MARKER, "report.md", "report.html", "figures", io_utils.LOCK_FILE}


def check_directories(directories: list[str | Path]) -> list[Path]:
    """The campaign directories, each once (ValueError for one given twice)."""
    seen: dict[Path, str] = {}
    for directory in directories:
        resolved = Path(directory).resolve()
        if resolved in seen:
            raise ValueError(
                f"{directory} is given twice (also as {seen[resolved]}); each campaign "
                "directory goes into the report once."
            )
        seen[resolved] = str(directory)
        load(directory)
    return [Path(d) for d in directories]


def check_out(out: str | Path, directories: list[Path]) -> None:
    """OutputError unless `out` is new, empty or an earlier aftt-report output: a report
    never overwrites a user's files or writes into a campaign or training run."""
    out = Path(out)
    io_utils.check_output_path(out)
    resolved = out.resolve()
    for directory in directories:
        if resolved == directory.resolve() or directory.resolve() in resolved.parents:
            raise io_utils.OutputError(
                f"--out {out} is inside the campaign directory {directory}; give the report "
                "a directory of its own (e.g. reports/NAME)."
            )
    if not out.is_dir() or (out / REPORT_MARKER).is_file():
        return
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in _REPORT_FILES)
    if foreign or any((out / name).exists() for name in ("report.md", "report.html", "figures")):
        shown = ", ".join((foreign or ["report.md/report.html/figures"])[:5])
        raise io_utils.OutputError(
            f"--out {out} holds files aftt-report did not write ({shown}); it would "
            "overwrite or mix with them. Give a new or empty directory."
        )


def _running_note(directory: Path) -> list[str]:
    """A note when another process holds the campaign's lock: its results are partial."""
    lock = directory / io_utils.LOCK_FILE
    if not lock.exists():
        return []
    try:
        with io_utils.DirectoryLock(lock, str(directory)):
            return []
    except io_utils.OutputError:
        return [
            f"Still running (locked by another process): these are the results written "
            f"before {time.strftime('%Y-%m-%d %H:%M', time.localtime(lock.stat().st_mtime))}."
        ]


def write(directories: list[str | Path], out: str | Path, owner: str = "") -> tuple[Path, Path]:
    """report.md and report.html in `out` for the campaign `directories` (one view).
    `owner`: the run whose directory `out` is (aftt-reproduce's), which holds its own
    files beside the report; otherwise `out` must be aftt-report's (`check_out`)."""
    from aftt_tf.campaigns import plots

    paths = check_directories(directories)
    if not owner:
        check_out(out, paths)
    loaded = [(path, load(path)) for path in paths]
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    io_utils.write_json(
        out / REPORT_MARKER,
        {"written_by": owner or "aftt-report", "campaigns": [str(path) for path in paths]},
    )
    panels = [(_name(d, r), r["summary"]) for d, r in loaded]
    figure = plots.accuracy_vs_rate_figure(panels)
    plots.save_figure(figure, out / "figures" / "accuracy_vs_rate", formats=("png",))
    rates = sorted({rate for _, results in loaded for rate in _rates(results)})
    rows = [row for d, r in loaded for row in _campaign_rows(d.name, r, rates)]
    headers = ["campaign", "model", "clean %", "norm. AUC %", "mean drop (points)"] + [
        f"{100 * rate:g}%" for rate in rates
    ]
    blocks: list[document.Block] = [
        document.Heading("Fault campaigns", 1),
        document.Paragraph(
            "Accuracy under faults of "
            + ", ".join(f"`{d}`" for d, _ in loaded)
            + ". Means over trials with 95% t-intervals; trials share fault positions "
            "across the models of a campaign (paired)."
        ),
        document.Figure(
            "figures/accuracy_vs_rate.png",
            "Accuracy vs fault rate, one panel per campaign (95% CI bands; dashed: share "
            "of NaN/Inf outputs where there were any).",
        ),
        document.Table(headers, rows, "Mean test accuracy % [95% CI] per rate."),
    ]
    for directory, results in loaded:
        blocks += [
            document.Heading(_name(directory, results), 2),
            document.BulletList(_running_note(directory) + _describe(results) + _rankings(results)),
        ]
        paired = _paired(results)
        if paired:
            blocks.append(
                document.Table(
                    ["pair", "rate", "mean difference (points)", "95% CI", "pairs"],
                    paired,
                    "Paired accuracy differences over trials with the same faults.",
                )
            )
    return document.write_report(blocks, out, "Fault campaigns")
