"""Verdicts that separate tolerance from clean accuracy (issue 32 item 5): the share of
its own accuracy above chance a model keeps, paired over trials, beside a flag for a
method that costs more than 2 clean points against the baseline."""

from __future__ import annotations

import numpy as np

from aftt_tf.campaigns import analysis, console


def _cells(model: str, clean: float, faulty: dict[float, float], trials: int = 8):
    rng = np.random.default_rng(len(model))
    cells = []
    for trial in range(trials):
        cells.append(
            {"model": model, "group": "all", "rate": 0.0, "trial": trial, "accuracy": clean}
        )
        for rate, accuracy in faulty.items():
            noisy = accuracy + rng.normal(0, 0.01)
            cells.append(
                {"model": model, "group": "all", "rate": rate, "trial": trial, "accuracy": noisy}
            )
    return cells


def test_tolerance_is_ranked_apart_from_clean_accuracy_and_costs_are_flagged():
    """'none' leads on absolute accuracy (AUC) but keeps less of its accuracy above
    chance than 'fat', which costs 30 clean points: both facts are said."""
    cells = _cells("none", 0.9, {0.1: 0.6, 0.3: 0.4}) + _cells("fat", 0.6, {0.1: 0.5, 0.3: 0.4})
    by_area = analysis.verdict(cells)
    assert by_area["ranking"][0] == "none"
    tolerance = analysis.tolerance_verdict(cells, chance=0.1)
    assert tolerance["best"] == "fat" and tolerance["ci_low"] > 0
    assert tolerance["kept_share"]["fat"] > tolerance["kept_share"]["none"]
    np.testing.assert_allclose(
        tolerance["kept_share"]["none"], np.mean([(0.6 - 0.1) / 0.8, (0.4 - 0.1) / 0.8]), atol=0.01
    )
    assert tolerance["clean_cost_flagged"] == ["fat"]
    assert "costs more than 2 clean points against none: fat (-30.0)" in tolerance["text"]
    lines = console.summary_lines(
        {
            "summary": {},
            "paired_differences": {},
            "verdict": None,
            "tolerance_verdict": tolerance,
            "spec": {"kind": "weight", "scope": "all"},
            "coverage": {},
        }
    )
    assert any(line.startswith("tolerance: most tolerant apart from clean") for line in lines)


def test_equal_tolerance_is_a_tie_and_small_costs_are_not_flagged():
    cells = _cells("none", 0.8, {0.2: 0.45}) + _cells("range", 0.79, {0.2: 0.445})
    tolerance = analysis.tolerance_verdict(cells, chance=0.1)
    assert tolerance["best"] is None and "no clear winner" in tolerance["text"]
    assert tolerance["clean_cost_flagged"] == []
    assert analysis.tolerance_verdict(cells, chance=None) is None
