"""The `aftt-reproduce` report: report.md, report.html, figures/ and results.json.

`write` composes the sections of `sections` in order; every number the report shows is
also in results.json.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from aftt_tf import io_utils
from aftt_tf.reproduce import document, int8_modes, protocols, sections
from aftt_tf.reproduce.config import ReproduceConfig


def write(
    config: ReproduceConfig,
    trained: dict[str, Any],
    exports: dict[str, Any],
    campaigns: dict[str, dict[str, Any]],
    campaign_examples: int,
    statistics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes report.md, report.html, figures/ and results.json into OUT; returns the results."""
    out = Path(config.out)
    methods = list(trained)
    first = trained[methods[0]]["metrics"]
    numbers = sections.method_numbers(trained, exports)
    sweeps = {method: entry["sweep"] for method, entry in trained.items() if "sweep" in entry}
    weights_blocks, weight_statistics = sections.weight_distributions(trained, out)
    games_blocks, pretraining = sections.pretraining_games(trained, out)
    fault_blocks, campaign_results, verdicts = sections.fault_campaigns(config, campaigns, methods)
    paper_blocks, paper_numbers = sections.paper_faults(config, campaign_results, methods)
    extra_blocks, extra_results, extra_lines = _protocol_and_int8_sections(
        config, campaigns, methods, statistics or {}
    )
    campaign_results.update(_repaired_results(config, campaigns))
    verdicts += extra_lines
    blocks = [
        *_introduction(config, first, campaign_examples, verdicts),
        *sections.table_ii(config.train.architecture, numbers),
        *sections.table_i(sweeps, numbers),
        *weights_blocks,
        *games_blocks,
        *fault_blocks,
        *paper_blocks,
        *extra_blocks,
        document.Heading("Reproduce"),
        document.Code("aftt-reproduce " + " ".join(_command_flags(config))),
    ]
    results: dict[str, Any] = {
        "architecture": config.train.architecture,
        "dataset": config.train.dataset,
        "data_source": first["data_source"],
        "split_sizes": first["split_sizes"],
        "campaign_test_examples": campaign_examples,
        "config": config.as_dict(),
        "method_order": methods,  # JSON objects below are written with sorted keys.
        "methods": numbers,
        "sweeps": sweeps,
        "campaigns": campaign_results,
        "verdicts": verdicts,
        "versions": io_utils.versions(),
        "weight_statistics": weight_statistics,
        "paper_fault_comparison": paper_numbers,
        **extra_results,
    }
    if pretraining is not None:
        results["pretraining"] = pretraining
    io_utils.write_json(out / "results.json", results)
    document.write_report(blocks, out, f"AFTT reproduction: {config.train.architecture}")
    return results


def _protocol_and_int8_sections(
    config: ReproduceConfig, campaigns: dict[str, Any], methods: list[str], statistics: dict
) -> tuple[list[document.Block], dict[str, Any], list[str]]:
    """The deployed-vs-repaired and int8-mode comparisons and the int8 statistics."""
    protocol_blocks, protocol_numbers, protocol_lines = protocols.comparison(
        config, campaigns, methods
    )
    int8_blocks, int8_numbers, int8_lines = int8_modes.comparison(config, campaigns, methods)
    blocks = protocol_blocks + int8_blocks + int8_modes.statistics_blocks(statistics)
    results = {
        "protocol_comparison": protocol_numbers,
        "int8_comparison": int8_numbers,
        "int8_layer_statistics": statistics,
    }
    return blocks, results, protocol_lines + int8_lines


def _repaired_results(config: ReproduceConfig, campaigns: dict[str, Any]) -> dict[str, Any]:
    """results.json entries of the repaired campaigns (their verdicts are per rate, in
    protocol_comparison)."""
    results = {}
    for name, result in campaigns.items():
        if "_repaired" not in name:
            continue
        if "skipped" in result:
            results[name] = {"skipped": result["skipped"]}
            continue
        spec = result["spec"]
        results[name] = {
            "kind": spec["kind"],
            "scope": spec["scope"],
            "runtime": "keras",
            "protocol": "repaired",
            "spec": spec,
            "summary": result["summary"],
        }
    return results


def _introduction(
    config: ReproduceConfig, first: dict[str, Any], campaign_examples: int, verdicts: list[str]
) -> list[document.Block]:
    return [
        document.Heading(
            f"AFTT reproduction: {config.train.architecture} on {config.train.dataset}", 1
        ),
        document.Paragraph(
            f"Data: {first['data_source']}; splits {first['split_sizes']}. Campaigns use "
            f"{campaign_examples} test images, {config.trials} trials per rate, seed "
            f"{config.campaign_seed}; fault positions are identical for every method (paired). "
            "Intervals are 95% t-intervals over trials. Generated by `aftt-reproduce`; every "
            "number here is in `results.json`. Paper numbers are quoted from its Tables I-II "
            "and section VI.D."
        ),
        document.Heading("Verdicts (computed from the paired campaigns)"),
        document.BulletList(verdicts or ["no campaign was run (see --faults / --runtimes)."]),
        document.Paragraph(
            "The most tolerant method has the highest mean normalized area under its "
            "accuracy-vs-rate curve; the difference to the runner-up is paired per trial "
            "(same faults) and a tie is declared when its 95% CI contains 0."
        ),
    ]


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
