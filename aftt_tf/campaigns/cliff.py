"""Rates at a model's cliff (`aftt-faults --rates=cliff`): where it keeps about 90%, 50%
and 20% of its accuracy above chance.

A comparison at rates where every model is at chance says nothing, and one at rates
where none has lost anything says little: tolerance shows between the two. The rates are
found on one model (the campaign's first), so every model is then measured at the same
rates, paired. Share kept at rate r: (accuracy(r) - chance) / (clean - chance), with
chance the most frequent label's share; its mean over a few trials (the campaign's own
first trials: the same faults the campaign then measures) is searched on a log grid and
refined by bisection in log space. No TensorFlow here: the model's runner does the work.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from aftt_tf.faults.spec import FaultTargetError

KEEPS = (0.9, 0.5, 0.2)


@dataclasses.dataclass(frozen=True)
class CliffSearch:
    """How the rates are searched: `trials` per probe, a log grid of `grid` rates from
    `lowest` (low enough for bit and transient faults, which break models at rates far
    below stuck-at-0's; for those a probe there faults almost nothing and costs little) to
    `highest`, then `refinements` bisection steps per kept share."""

    keeps: tuple[float, ...] = KEEPS
    trials: int = 3
    grid: int = 14
    lowest: float = 1e-7
    refinements: int = 5
    highest: float = 0.95

    def validate(self) -> None:
        if not self.keeps or any(not 0.0 < k < 1.0 for k in self.keeps):
            raise ValueError(f"Kept shares must be in (0, 1), received {list(self.keeps)}.")
        if self.trials < 1 or self.grid < 3 or self.refinements < 0:
            raise ValueError("A cliff search needs trials >= 1, grid >= 3, refinements >= 0.")


def find_rates(runner, labels: np.ndarray, search: CliffSearch) -> dict:
    """{'rates': one rate per kept share (None where the highest rate keeps more), 'keeps',
    'clean', 'chance', 'probes': [[rate, kept share], ...]} of the model `runner` runs."""
    search.validate()
    counts = np.bincount(np.asarray(labels, np.int64))
    chance = float(counts.max()) / len(labels)
    clean = float(runner.evaluate_cell(0.0, 0)["accuracy"])
    if clean - chance < 0.05:
        raise ValueError(
            f"The model's clean accuracy {100 * clean:.2f}% is within 5 points of chance "
            f"({100 * chance:.2f}%): it has no cliff to find. Give --rates explicitly."
        )
    probes: dict[float, float] = {}

    def kept(rate: float) -> float:
        rate = _rounded(rate)
        if rate not in probes:
            accuracies = [runner.evaluate_cell(rate, t)["accuracy"] for t in range(search.trials)]
            probes[rate] = (float(np.mean(accuracies)) - chance) / (clean - chance)
        return probes[rate]

    grid = np.geomspace(search.lowest, search.highest, search.grid)
    shares, limit = [], None
    for rate in grid:
        try:
            shares.append(kept(rate))
        except FaultTargetError as error:  # More transient faults than a cell can hold.
            limit = str(error)
            break
        if shares[-1] < min(search.keeps) - 0.1:
            break  # Past the last cliff asked for: higher rates cost time and say nothing.
    if not shares:
        raise ValueError(f"No rate of the cliff search can be placed: {limit}")
    rates = [_rate_for(keep, grid, shares, kept, search.refinements) for keep in search.keeps]
    return {
        # When the search hit what a cell can hold before the model fell past a kept
        # share: the highest rate placed (measured too, so the campaign compares there).
        "highest_placeable": _rounded(float(grid[len(shares) - 1])) if limit else None,
        "limit": limit,
        "method": "mean share of clean accuracy above chance kept, over the campaign's "
        f"first {search.trials} trials; log grid {search.lowest:g}..{search.highest:g}, "
        f"then {search.refinements} bisection steps",
        "keeps": list(search.keeps),
        "rates": rates,
        "clean": clean,
        "chance": chance,
        "probes": sorted([rate, share] for rate, share in probes.items()),
    }


def _rate_for(keep: float, grid, shares: list[float], kept, refinements: int) -> float | None:
    """The rate where the kept share crosses `keep`: bisection in log space between the
    last grid rate above it and the first below it."""
    below = next((i for i, share in enumerate(shares) if share < keep), None)
    if below is None:
        return None  # The highest rate searched keeps more than `keep`.
    if below == 0:
        return _rounded(float(grid[0]))
    low, high = math.log(grid[below - 1]), math.log(grid[below])
    for _ in range(refinements):
        middle = (low + high) / 2
        if kept(math.exp(middle)) < keep:
            high = middle
        else:
            low = middle
    return _rounded(math.exp((low + high) / 2))


def _rounded(rate: float) -> float:
    """Three significant digits: rates read and record cleanly."""
    return float(f"{rate:.3g}")


def campaign_rates(found: dict[str, Any]) -> tuple[float, ...]:
    """The campaign's rates: 0 (clean) and every rate found, ascending, once each; and
    the highest placeable rate when the search stopped there short of a kept share."""
    rates = {0.0, *(rate for rate in found["rates"] if rate is not None)}
    if found.get("highest_placeable") and None in found["rates"]:
        rates.add(found["highest_placeable"])
    return tuple(sorted(rates))
