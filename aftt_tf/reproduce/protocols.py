"""The deployed and the repaired evaluation protocols side by side (aftt-reproduce
--protocols=deployed,repaired).

At every compared rate (the nonzero rates of the repaired campaigns that the deployed
campaign also ran) and for each protocol: which method wins and by how much over the
runner-up (paired over trials with identical faults), where AFTT ranks and its paired
difference to the winner, what repair gains each method (repaired - deployed, paired:
both protocols draw the same fault positions), and how far each method is from the
paper's quoted number. No TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import methods as training_methods
from aftt_tf.campaigns import outputs
from aftt_tf.campaigns.statistics import confidence_interval
from aftt_tf.reproduce import document
from aftt_tf.reproduce.config import ReproduceConfig, campaign_name
from aftt_tf.reproduce.paper import PAPER_FAULTS

DASH = "–"


def accuracies_at(cells: list[dict[str, Any]], rate: float) -> dict[str, dict[int, float]]:
    """{method: {trial: accuracy}} of the cells at `rate` (group 'all')."""
    by_method: dict[str, dict[int, float]] = {}
    for cell in cells:
        if cell["group"] == "all" and abs(cell["rate"] - rate) < 1e-9:
            by_method.setdefault(cell["model"], {})[cell["trial"]] = cell["accuracy"]
    return by_method


def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """Mean of a - b over the trials both hold, with its 95% t-interval."""
    shared = sorted(set(a) & set(b))
    mean, _, half_width = confidence_interval([a[t] - b[t] for t in shared])
    return {
        "pairs": len(shared),
        "mean": mean,
        "ci_low": max(-1.0, mean - half_width),
        "ci_high": min(1.0, mean + half_width),
    }


def point_verdict(
    cells: list[dict[str, Any]], rate: float, methods: list[str], paper: tuple | None
) -> dict[str, Any]:
    """One protocol at one rate: per-method accuracy, winner, AFTT's place, paper distance.

    `paper` is PAPER_FAULTS' (rate, quantity, values) when the paper quotes this rate.
    """
    at_rate = accuracies_at(cells, rate)
    clean = accuracies_at(cells, 0.0)
    accuracy = {}
    for method in methods:
        if method not in at_rate:
            continue
        mean, _, half_width = confidence_interval(list(at_rate[method].values()))
        accuracy[method] = {  # Clipped as analysis.INTERVAL_METHOD says.
            "mean": mean,
            "ci_low": max(0.0, mean - half_width),
            "ci_high": min(1.0, mean + half_width),
        }
    ranking = sorted(accuracy, key=lambda m: accuracy[m]["mean"], reverse=True)
    result: dict[str, Any] = {"rate": rate, "accuracy": accuracy, "ranking": ranking}
    if len(ranking) > 1:
        lead = paired(at_rate[ranking[0]], at_rate[ranking[1]])
        result["winner_minus_runner_up"] = lead
        result["winner"] = None if lead["ci_low"] <= 0 else ranking[0]
    proposed = training_methods.proposed()  # Reports rank the paper's proposed method.
    if proposed in ranking:
        result["aftt_rank"] = ranking.index(proposed) + 1
        if ranking[0] != proposed:
            result["aftt_minus_best"] = paired(at_rate[proposed], at_rate[ranking[0]])
    if paper and abs(paper[0] - rate) < 1e-9:
        result["paper"] = _paper_distances(paper, accuracy, clean)
    return result


def _paper_distances(paper: tuple, accuracy: dict, clean: dict) -> dict[str, Any]:
    """Ours vs the paper's number per method it quotes ('drop': clean minus faulty)."""
    _, quantity, values = paper
    distances = {}
    for method, value in values.items():
        if method not in accuracy:
            continue
        ours = 100 * accuracy[method]["mean"]
        if quantity == "drop":
            if method not in clean:
                continue
            ours = 100 * float(np.mean(list(clean[method].values()))) - ours
        distances[method] = {"ours": ours, "paper": value, "ours_minus_paper": ours - value}
    return {"quantity": quantity, "methods": distances}


def comparison(
    config: ReproduceConfig, campaigns: dict[str, Any], methods: list[str]
) -> tuple[list[document.Block], list[dict[str, Any]], list[str]]:
    """Blocks, results.json entries and verdict lines of the two-protocol comparison."""
    if "repaired" not in config.protocols:
        return [], [], []
    out = Path(config.out) / "campaigns"
    entries, lines, blocks = [], [], []
    for kind in config.faults:
        paper = PAPER_FAULTS.get((config.train.architecture, kind))
        for scope in config.scopes:
            deployed_name = campaign_name(kind, scope, "keras", config.variant)
            deployed = campaigns.get(deployed_name) or {}
            deployed_cells = (
                outputs.campaign_cells(out / deployed_name, deployed)
                if "summary" in deployed
                else []
            )
            repaired = {}
            for epochs in config.repair_epochs:
                name = campaign_name(kind, scope, "keras", config.variant, epochs)
                result = campaigns.get(name) or {}
                if "summary" in result:
                    repaired[epochs] = outputs.campaign_cells(out / name, result)
            rates = sorted({c["rate"] for cells in repaired.values() for c in cells} - {0.0})
            for rate in rates:
                entry = _rate_entry(kind, scope, rate, methods, paper, deployed_cells, repaired)
                entries.append(entry)
                lines += [_line(entry, protocol) for protocol in entry["protocols"]]
                blocks += _rate_table(entry, methods)
    if blocks:
        blocks.insert(0, document.Heading("Deployed vs repaired protocol"))
        blocks.insert(1, document.Paragraph(_EXPLANATION))
    return blocks, entries, lines


_EXPLANATION = (
    "Deployed: the faults are evaluated as they are. Repaired: each cell's model is "
    "fine-tuned around its fault map (faulted weights held at 0, node masks applied) "
    "before it is evaluated, as the pruning code the paper's Fig. 1 appears adapted from "
    "does. Both protocols draw identical fault positions (same seed, rate and trial), so "
    "the repair gain is paired per trial. Keras float32; 95% t-intervals over trials."
)


def _rate_entry(kind, scope, rate, methods, paper, deployed_cells, repaired) -> dict[str, Any]:
    protocols = []
    at_deployed = accuracies_at(deployed_cells, rate)
    if at_deployed:
        protocols.append(
            {"protocol": "deployed", **point_verdict(deployed_cells, rate, methods, paper)}
        )
    for epochs, cells in sorted(repaired.items()):
        entry = {"protocol": "repaired", "repair_epochs": epochs}
        entry.update(point_verdict(cells, rate, methods, paper))
        at_repaired = accuracies_at(cells, rate)
        if at_deployed:
            entry["repair_gain"] = {
                method: paired(at_repaired[method], at_deployed[method])
                for method in methods
                if method in at_repaired and method in at_deployed
            }
        protocols.append(entry)
    return {"kind": kind, "scope": scope, "rate": rate, "protocols": protocols}


def _percent_interval(row: dict[str, float]) -> str:
    return f"{100 * row['mean']:.2f} [{100 * row['ci_low']:.2f}, {100 * row['ci_high']:.2f}]"


def _signed_interval(row: dict[str, float]) -> str:
    return f"{100 * row['mean']:+.2f} [{100 * row['ci_low']:+.2f}, {100 * row['ci_high']:+.2f}]"


def _protocol_label(protocol: dict[str, Any]) -> str:
    if protocol["protocol"] == "deployed":
        return "deployed"
    return f"repaired ({protocol['repair_epochs']} epoch{'s' if protocol['repair_epochs'] > 1 else ''})"


def _line(entry: dict[str, Any], protocol: dict[str, Any]) -> str:
    head = (
        f"**{entry['kind']} faults at {100 * entry['rate']:g}%, scope {entry['scope']}, "
        f"{_protocol_label(protocol)}**: "
    )
    ranking = protocol["ranking"]
    lead = protocol.get("winner_minus_runner_up")
    if lead is None:
        text = f"{ranking[0]} only"
    elif protocol["winner"]:
        text = f"{ranking[0]} wins, ahead of {ranking[1]} by {_signed_interval(lead)} points"
    else:
        text = f"no clear winner: {ranking[0]} and {ranking[1]} tie ({_signed_interval(lead)})"
    if "aftt_minus_best" in protocol:
        text += (
            f"; AFTT ranks {protocol['aftt_rank']} of {len(ranking)}, aftt − {ranking[0]} = "
            f"{_signed_interval(protocol['aftt_minus_best'])}"
        )
    elif protocol.get("aftt_rank") == 1:
        text += "; AFTT has the highest mean"
    paper = protocol.get("paper")
    if paper and paper["methods"]:
        distances = ", ".join(
            f"{method} {values['ours']:.2f} vs {values['paper']:.2f} ({values['ours_minus_paper']:+.2f})"
            for method, values in paper["methods"].items()
        )
        text += f"; paper ({paper['quantity']}, ours vs paper): {distances}"
    return head + text + "."


def _rate_table(entry: dict[str, Any], methods: list[str]) -> list[document.Block]:
    protocols = entry["protocols"]
    headers = ["method"] + [_protocol_label(p) + " %" for p in protocols]
    repaired = [p for p in protocols if "repair_gain" in p]
    headers += [f"gain, {p['repair_epochs']} ep" for p in repaired]
    paper = next((p["paper"] for p in protocols if "paper" in p), None)
    if paper:
        headers.append(f"paper ({paper['quantity']}) %")
    rows = []
    for method in methods:
        row = [method]
        row += [
            _percent_interval(p["accuracy"][method]) if method in p["accuracy"] else DASH
            for p in protocols
        ]
        row += [
            _signed_interval(p["repair_gain"][method]) if method in p["repair_gain"] else DASH
            for p in repaired
        ]
        if paper:
            values = next((p["paper"]["methods"] for p in protocols if "paper" in p), {})
            row.append(f"{values[method]['paper']:.2f}" if method in values else DASH)
        rows.append(row)
    title = f"{entry['kind']} faults at {100 * entry['rate']:g}%, scope {entry['scope']}"
    return [
        document.Heading(title, 3),
        document.Table(
            headers,
            rows,
            "Mean test accuracy % [95% CI]; gain = repaired − deployed, paired per trial.",
        ),
    ]
