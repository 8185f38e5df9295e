import numpy as np
import pytest

from aftt_tf.campaigns import statistics


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 29, 100, 1000])
@pytest.mark.parametrize("probability", [0.6, 0.9, 0.975, 0.995])
def test_student_t_quantile_matches_scipy(df, probability):
    scipy_stats = pytest.importorskip("scipy.stats")
    assert statistics.student_t_ppf(probability, df) == pytest.approx(
        scipy_stats.t.ppf(probability, df), rel=1e-7, abs=1e-9
    )


def test_confidence_interval():
    values = [0.80, 0.82, 0.81, 0.79]
    mean, std, half = statistics.confidence_interval(values)
    assert mean == pytest.approx(0.805)
    assert std == pytest.approx(np.std(values, ddof=1))
    assert half == pytest.approx(3.182446305 * std / 2, rel=1e-8)  # t(0.975, 3)
    assert statistics.confidence_interval([0.5]) == (0.5, 0.0, 0.0)
    with pytest.raises(ValueError, match="probability must be in"):
        statistics.student_t_ppf(1.0, 3)
