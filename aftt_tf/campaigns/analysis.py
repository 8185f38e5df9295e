"""Statistics of a campaign's cells: per-rate summaries with 95% CIs, paired differences
between models, normalised areas under the accuracy-vs-rate curve, and the verdict.

Trials of every model in a campaign share fault positions, so differences are paired
per trial. No TensorFlow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aftt_tf.campaigns.statistics import confidence_interval

# How the intervals of a campaign are computed; written into results.json.
INTERVAL_METHOD = (
    "95% Student-t interval of the mean over trials; accuracy intervals clipped to [0, 1] "
    "and paired-difference intervals to [-1, 1] (with few trials the t interval can pass "
    "those bounds)"
)


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model and group: per-rate statistics, drop from clean accuracy, area under the curve."""
    summary: dict[str, Any] = {}
    keys = sorted({(c["model"], c["group"]) for c in cells})
    for model, group in keys:
        own = [c for c in cells if c["model"] == model and c["group"] == group]
        rows = []
        for rate in sorted({c["rate"] for c in own}):
            accuracies = [c["accuracy"] for c in own if c["rate"] == rate]
            mean, std, half_width = confidence_interval(accuracies)
            rows.append(
                {
                    "rate": rate,
                    "trials": len(accuracies),
                    "mean": mean,
                    "std": std,
                    "ci_low": max(0.0, mean - half_width),
                    "ci_high": min(1.0, mean + half_width),
                    "ci_half_width": half_width,
                    "realized_fraction": float(
                        np.mean([c["realized_fraction"] for c in own if c["rate"] == rate])
                    ),
                    "non_finite": _non_finite([c for c in own if c["rate"] == rate]),
                    "sdc": _share([c for c in own if c["rate"] == rate], "sdc"),
                }
            )
        clean = next((row["mean"] for row in rows if row["rate"] == 0.0), None)
        fault_free = [c["fault_free_accuracy"] for c in own if "fault_free_accuracy" in c]
        mapped = None
        if fault_free:  # A fault map's rate 0 is the mapped chip; clean is fault-free.
            mapped, clean = clean, float(np.mean(fault_free))
        for row in rows:
            row["drop_from_clean"] = None if clean is None else clean - row["mean"]
        rates = np.array([row["rate"] for row in rows])
        means = np.array([row["mean"] for row in rows])
        span = rates.max() - rates.min() if len(rates) > 1 else 0.0
        auc = float(np.trapezoid(means, rates) / span) if span > 0 else float(means[0])
        summary.setdefault(model, {})[group] = {
            "per_rate": rows,
            "clean_accuracy": clean,
            "normalized_auc": auc,
            **({"mapped_chip_accuracy": mapped} if fault_free else {}),
        }
    return summary


def _non_finite(cells: list[dict[str, Any]]) -> dict[str, float] | None:
    """Share of inferences with a NaN/Inf output (a detected error, DUE, not a class): mean
    and 95% interval over trials; None for cells recorded before outcomes were counted."""
    return _share(cells, "non_finite")


def _share(cells: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    """Mean and 95% interval over trials of a per-cell share ('non_finite'; 'sdc': finite
    outputs whose top-1 differs from the fault-free run's); None when a cell lacks it
    (recorded by an earlier version)."""
    if not cells or any(key not in c for c in cells):
        return None
    mean, _, half_width = confidence_interval([c[key] for c in cells])
    return {
        "mean": mean,
        "ci_low": max(0.0, mean - half_width),
        "ci_high": min(1.0, mean + half_width),
    }


def paired_differences(
    cells: list[dict[str, Any]], model_a: str, model_b: str, group: str = "all"
) -> list[dict]:
    """Per rate: mean of accuracy(a) - accuracy(b) over trials with identical faults, with 95% CI."""
    by_key = {(c["model"], c["group"], c["rate"], c["trial"]): c["accuracy"] for c in cells}
    rows = []
    for rate in sorted({c["rate"] for c in cells if c["model"] == model_a and c["group"] == group}):
        trials = sorted(
            t
            for (m, g, r, t) in by_key
            if m == model_a and g == group and r == rate and (model_b, group, rate, t) in by_key
        )
        diffs = [
            by_key[(model_a, group, rate, t)] - by_key[(model_b, group, rate, t)] for t in trials
        ]
        if not diffs:
            continue
        mean, std, half_width = confidence_interval(diffs)
        rows.append(
            {
                "rate": rate,
                "pairs": len(diffs),
                "mean_difference": mean,
                "std": std,
                "ci_low": max(-1.0, mean - half_width),
                "ci_high": min(1.0, mean + half_width),
            }
        )
    return rows


def per_trial_auc(cells: list[dict[str, Any]], model: str, group: str) -> dict[int, float]:
    """Normalised area under each trial's accuracy-vs-rate curve (trials present at every rate)."""
    own = [c for c in cells if c["model"] == model and c["group"] == group]
    rates = sorted({c["rate"] for c in own})
    by_key = {(c["rate"], c["trial"]): c["accuracy"] for c in own}
    trials = sorted({c["trial"] for c in own if all((r, c["trial"]) in by_key for r in rates)})
    span = rates[-1] - rates[0] if len(rates) > 1 else 0.0
    result = {}
    for trial in trials:
        curve = np.array([by_key[(rate, trial)] for rate in rates])
        result[trial] = float(np.trapezoid(curve, rates) / span) if span else float(curve[0])
    return result


def paired_auc_difference(
    cells: list[dict[str, Any]], model_a: str, model_b: str, group: str = "all"
) -> dict[str, Any]:
    """Mean of AUC(a) - AUC(b) over trials with identical faults, with its 95% CI."""
    auc_a = per_trial_auc(cells, model_a, group)
    auc_b = per_trial_auc(cells, model_b, group)
    shared = sorted(set(auc_a) & set(auc_b))
    mean, _, half_width = confidence_interval([auc_a[t] - auc_b[t] for t in shared])
    return {
        "model_a": model_a,
        "model_b": model_b,
        "pairs": len(shared),
        "mean_difference": mean,
        "ci_low": mean - half_width,
        "ci_high": mean + half_width,
    }


def verdict(cells: list[dict[str, Any]], group: str = "all") -> dict[str, Any]:
    """The most fault-tolerant model by normalised AUC, with the paired difference to the
    runner-up and its 95% CI; a tie when that interval contains 0.

    Trials of every model share fault positions, so the per-trial AUCs are paired.
    """
    models = sorted({c["model"] for c in cells if c["group"] == group})
    aucs = {model: per_trial_auc(cells, model, group) for model in models}
    means = {
        model: float(np.mean(list(values.values()))) for model, values in aucs.items() if values
    }
    if len(means) < 2:
        return {
            "group": group,
            "best": next(iter(means), None),
            "text": "only one model: no comparison",
        }
    ranked = sorted(means, key=means.get, reverse=True)
    best, runner_up = ranked[0], ranked[1]
    shared = sorted(set(aucs[best]) & set(aucs[runner_up]))
    mean, _, half_width = confidence_interval([aucs[best][t] - aucs[runner_up][t] for t in shared])
    low, high = mean - half_width, mean + half_width
    tie = low <= 0.0
    interval = f"{100 * mean:+.2f} points [{100 * low:+.2f}, {100 * high:+.2f}]"
    if tie:
        text = (
            f"no clear winner: {best} and {runner_up} tie within the 95% CI of the paired "
            f"difference in normalized AUC ({interval}, {len(shared)} trials)"
        )
    else:
        text = (
            f"most tolerant: {best}, ahead of {runner_up} by {interval} normalized AUC "
            f"(paired, 95% CI, {len(shared)} trials)"
        )
    return {
        "group": group,
        "best": None if tie else best,
        "tie": tie,
        "runner_up": runner_up,
        "mean_difference": mean,
        "ci_low": low,
        "ci_high": high,
        "ranking": ranked,
        "text": text,
    }


# A method that loses more clean accuracy than this against the baseline is flagged.
CLEAN_COST_FLAG = 0.02


def tolerance_verdict(
    cells: list[dict[str, Any]], chance: float | None, group: str = "all"
) -> dict[str, Any] | None:
    """Tolerance apart from clean accuracy: per trial, the mean over the faulty rates of
    the share of a model's own accuracy above chance that it keeps, (accuracy - chance) /
    (clean - chance); models ranked by it, best against runner-up paired over trials
    (95% CI; a tie when it holds 0). Beside it, each model's clean accuracy against the
    baseline (the model labelled 'none', else the first) and the models that cost more
    than CLEAN_COST_FLAG of it. None without a chance level or two models."""
    models = list(dict.fromkeys(c["model"] for c in cells if c["group"] == group))
    if chance is None or len(models) < 2:
        return None
    clean = {m: _mean_at(cells, m, group, 0.0) for m in models}
    kept = {m: _kept_per_trial(cells, m, group, clean[m], chance) for m in models}
    means = {m: float(np.mean(list(v.values()))) for m, v in kept.items() if v}
    if len(means) < 2:
        return None
    ranked = sorted(means, key=means.get, reverse=True)
    best, runner_up = ranked[0], ranked[1]
    shared = sorted(set(kept[best]) & set(kept[runner_up]))
    mean, _, half_width = confidence_interval([kept[best][t] - kept[runner_up][t] for t in shared])
    low, high = mean - half_width, mean + half_width
    baseline = "none" if "none" in models else models[0]
    costs = {
        m: clean[m] - clean[baseline]
        for m in models
        if m != baseline and clean[m] is not None and clean[baseline] is not None
    }
    flagged = sorted(m for m, cost in costs.items() if cost < -CLEAN_COST_FLAG)
    interval = f"{100 * mean:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]"
    text = (
        f"no clear winner on tolerance: {best} and {runner_up} tie ({interval} of kept share)"
        if low <= 0
        else f"most tolerant apart from clean accuracy: {best}, keeping {100 * means[best]:.1f}% "
        f"of its accuracy above chance vs {100 * means[runner_up]:.1f}% for {runner_up} "
        f"({interval}, paired, {len(shared)} trials)"
    )
    if flagged:
        text += (
            "; costs more than 2 clean points against "
            + baseline
            + ": "
            + ", ".join(f"{m} ({100 * costs[m]:+.1f})" for m in flagged)
        )
    return {
        "group": group,
        "chance": chance,
        "kept_share": means,
        "best": None if low <= 0 else best,
        "runner_up": runner_up,
        "mean_difference": mean,
        "ci_low": low,
        "ci_high": high,
        "baseline": baseline,
        "clean_accuracy": clean,
        "clean_cost": costs,
        "clean_cost_flagged": flagged,
        "text": text,
    }


def _mean_at(cells, model: str, group: str, rate: float) -> float | None:
    values = [
        c["accuracy"] for c in cells if (c["model"], c["group"], c["rate"]) == (model, group, rate)
    ]
    return float(np.mean(values)) if values else None


def _kept_per_trial(cells, model: str, group: str, clean: float | None, chance: float):
    """{trial: mean kept share over the faulty rates} (trials present at every one)."""
    if clean is None or clean - chance <= 0:
        return {}
    own = [c for c in cells if c["model"] == model and c["group"] == group and c["rate"] > 0]
    rates = sorted({c["rate"] for c in own})
    by_key = {(c["rate"], c["trial"]): c["accuracy"] for c in own}
    trials = sorted({t for (_, t) in by_key if all((r, t) in by_key for r in rates)})
    return {
        t: float(np.mean([(by_key[(r, t)] - chance) / (clean - chance) for r in rates]))
        for t in trials
    }
