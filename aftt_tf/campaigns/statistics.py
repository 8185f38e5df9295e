"""Confidence intervals with numpy and the standard library only (edge devices have no scipy)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_ppf(probability: float, df: float) -> float:
    """Quantile of Student's t distribution (bisection on the CDF, |error| < 1e-10)."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), received {probability}.")
    low, high = -1e3, 1e3
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < probability:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return 0.5 * (low + high)


def confidence_interval(
    values: Iterable[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """(mean, std, half-width) of a t-based confidence interval of the mean."""
    values = np.asarray(list(values), np.float64)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    if np.all(values == values[0]):  # Exact (a rate-0 column): no rounding in the mean.
        return float(values[0]), 0.0, 0.0
    mean = float(values.mean())
    std = float(values.std(ddof=1))
    quantile = student_t_ppf(0.5 + confidence / 2, len(values) - 1)
    return mean, std, quantile * std / math.sqrt(len(values))
