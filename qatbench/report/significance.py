"""Is a method's accuracy different from its baseline's, given a handful of seeds?

Welch's t-test (unequal variances; Welch 1947) on the per-seed values, and a percentile bootstrap
confidence interval of the difference of means (Efron & Tibshirani 1993) by resampling each group's
seeds independently. With 3 seeds per group neither has much power: a mark means "unlikely to be
seed noise", its absence means little. Both come from scipy, never hand-rolled.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # a report must not change from one rendering to the next


@dataclass(frozen=True)
class Comparison:
    """method minus baseline, in the units of the inputs."""

    delta: float
    p_value: float  # Welch's two-sided; NaN when a group has fewer than 2 values
    ci_low: float  # bootstrap CI of delta; NaN when a group has fewer than 2 values
    ci_high: float
    n: int
    n_baseline: int

    @property
    def significant(self) -> bool:
        return bool(self.p_value < ALPHA)


def welch(values: np.ndarray, baseline: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test; NaN when it is undefined (< 2 values, or no spread at all)."""
    values, baseline = np.asarray(values, float), np.asarray(baseline, float)
    if len(values) < 2 or len(baseline) < 2:
        return float("nan")
    if np.ptp(values) == 0 and np.ptp(baseline) == 0:
        return 0.0 if values[0] != baseline[0] else 1.0  # two constants: scipy returns NaN
    with warnings.catch_warnings():  # nearly constant groups: scipy warns, the p-value is still the test's
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(values, baseline, equal_var=False).pvalue)


def bootstrap_ci(values: np.ndarray, baseline: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(values) - mean(baseline), each group resampled on its own."""
    values, baseline = np.asarray(values, float), np.asarray(baseline, float)
    if len(values) < 2 or len(baseline) < 2:
        return float("nan"), float("nan")
    result = stats.bootstrap(
        (values, baseline),
        lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis),
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare(values, baseline) -> Comparison:
    values, baseline = np.asarray(values, float), np.asarray(baseline, float)
    low, high = bootstrap_ci(values, baseline)
    return Comparison(
        float(values.mean() - baseline.mean()), welch(values, baseline), low, high, len(values), len(baseline)
    )
