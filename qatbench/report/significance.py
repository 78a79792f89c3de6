"""Is a method's accuracy different from its baseline's, given a handful of seeds?

Welch's t-test (unequal variances; Welch 1947) on the per-seed values with its confidence interval of
the difference of means, which the tables print: it agrees with the test's p-value. The percentile
bootstrap interval (Efron & Tibshirani 1993, each group's seeds resampled on their own) is here for
larger seed counts; with 2-5 seeds a group it is too narrow (anti-conservative), so the tables do
not use it. With 3 seeds per group the test has little power: a mark means "unlikely to be seed
noise", its absence means little. Both come from scipy, never hand-rolled.
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
    p_value: float  # Welch's two-sided; NaN when a group has fewer than 2 values or no group varies
    ci_low: float  # Welch's 95% CI of delta; NaN where p is
    ci_high: float
    n: int
    n_baseline: int

    @property
    def significant(self) -> bool:
        return bool(self.p_value < ALPHA)


def welch(values: np.ndarray, baseline: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test; NaN when it is undefined (< 2 values, or no spread at all:
    two constant groups say nothing about seed noise, so they are never marked)."""
    values, baseline = np.asarray(values, float), np.asarray(baseline, float)
    if len(values) < 2 or len(baseline) < 2 or (np.ptp(values) == 0 and np.ptp(baseline) == 0):
        return float("nan")
    with warnings.catch_warnings():  # nearly constant groups: scipy warns, the p-value is still the test's
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(values, baseline, equal_var=False).pvalue)


def welch_ci(values: np.ndarray, baseline: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Welch's confidence interval of mean(values) - mean(baseline) (scipy's, Welch-Satterthwaite df)."""
    values, baseline = np.asarray(values, float), np.asarray(baseline, float)
    if np.isnan(welch(values, baseline)):
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = stats.ttest_ind(values, baseline, equal_var=False).confidence_interval(level)
    return float(interval.low), float(interval.high)


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


def compare(values, baseline, interval: str = "welch") -> Comparison:
    """Delta, Welch's p and a 95% CI of the delta: Welch's (default) or the percentile bootstrap's."""
    values, baseline = np.asarray(values, float), np.asarray(baseline, float)
    low, high = (welch_ci if interval == "welch" else bootstrap_ci)(values, baseline)
    return Comparison(
        float(values.mean() - baseline.mean()), welch(values, baseline), low, high, len(values), len(baseline)
    )
