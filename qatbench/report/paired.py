"""Paired statistics for claims: runs that share a seed and a test domain (or a QAT run and its own FP
parent) differ by one thing, so their per-pair differences carry far less seed noise than two
unpaired groups do.

- the mean paired difference and its 95% confidence interval from the one-sample t distribution
  (Student 1908; scipy's `ttest_1samp(...).confidence_interval`);
- the paired t-test's two-sided p (the test that interval inverts, so the two always agree);
- a two-sided sign-flip permutation p-value (Fisher 1935), the check that assumes no normal
  distribution: under "no effect" each difference is as likely negative as positive; scipy's
  `permutation_test` with `permutation_type='samples'` flips the signs and enumerates all 2^n flips
  when 2^n <= PERMUTATIONS, so it is exact at the seed counts a benchmark has. Its floor is 2 / 2^n:
  with n = 6 pairs no p is below 1/32, so after Holm over a table of claims it can never be small,
  which is why verdicts.py judges on the t-test and prints this one beside it;
- Holm's step-down correction (Holm 1979) across the claims of one table;
- the smallest difference this n could detect with 80% power (two-sided t-test at ALPHA), from the
  noncentral t distribution and the observed spread (Cohen 1988, ch. 2): what "inconclusive" rules out.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8
PERMUTATIONS = 2**16  # exact enumeration up to n = 16 pairs; seeded Monte Carlo above
PERMUTATION_SEED = 0  # a report must not change from one rendering to the next


@dataclass(frozen=True)
class Paired:
    """mean(differences) with its t interval and p, sign-flip p and detectable effect; NaN where undefined."""

    mean: float
    ci_low: float
    ci_high: float
    t_p: float
    flip_p: float
    n: int
    detectable: float


def paired(differences) -> Paired:
    """Statistics of per-pair differences (method minus baseline, one per seed and test domain)."""
    d = np.asarray(differences, float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 2:
        return Paired(float(d.mean()) if n else math.nan, math.nan, math.nan, math.nan, math.nan, n, math.nan)
    low, high = t_interval(d)
    detectable = detectable_effect(n - 1, float(d.std(ddof=1) / math.sqrt(n)))
    return Paired(float(d.mean()), low, high, t_p(d), sign_flip_p(d), n, detectable)


def t_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The t confidence interval of the mean; (mean, mean) when every difference is equal."""
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0])
    interval = stats.ttest_1samp(d, 0.0).confidence_interval(level)
    return float(interval.low), float(interval.high)


def t_p(d: np.ndarray) -> float:
    """Two-sided p of the paired (one-sample) t-test; NaN when every difference is equal (no spread)."""
    if np.ptp(d) == 0:
        return math.nan
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def sign_flip_p(d: np.ndarray) -> float:
    """Two-sided p of the mean under random sign flips; 1.0 when every difference is zero."""
    if not np.any(d):
        return 1.0
    result = stats.permutation_test(
        (d,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=PERMUTATIONS,
        alternative="two-sided",
        rng=np.random.default_rng(PERMUTATION_SEED),
    )
    return float(result.pvalue)


def detectable_effect(df: float, standard_error: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The true difference a two-sided t-test (df, this standard error) finds with probability `power`:
    the noncentrality nc with P(|T'| > t_crit) = power, T' ~ nct(df, nc), times the standard error."""
    if not (df >= 1 and np.isfinite(standard_error)) or standard_error <= 0:
        return math.nan
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(nc: float) -> float:
        # far tails come back NaN from scipy's series; the lower tail there is 0 for nc >= 0
        upper, lower = np.nan_to_num([stats.nct.sf(critical, df, nc), stats.nct.cdf(-critical, df, nc)])
        return float(upper + lower - power)

    with warnings.catch_warnings():  # nct's series warns far out in the tail, where the root is not
        warnings.simplefilter("ignore", RuntimeWarning)
        high = critical + 3.0  # widened until the power passes the target (heavy tails at df = 1, 2)
        while not shortfall(high) > 0:
            if high > 1e4:
                return math.nan
            high *= 2
        nc = optimize.brentq(shortfall, 0.0, high)
    return float(nc * standard_error)


def welch_detectable(values: np.ndarray, baseline: np.ndarray) -> float:
    """detectable_effect for two unpaired groups: Welch's standard error and Welch–Satterthwaite df."""
    a, b = np.asarray(values, float), np.asarray(baseline, float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return math.nan
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return detectable_effect(df, math.sqrt(va + vb))


def kendall_detectable(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The tau a two-sided test over n runs detects with `power`, from tau's null variance
    2(2n + 5) / (9n(n - 1)) (Kendall 1938) and the normal approximation."""
    if n < 3:
        return math.nan
    se = math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1)))
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order; NaN stays NaN and does not count in m):
    the k-th smallest of m becomes max over j <= k of min(1, (m - j + 1) p_(j))."""
    p = np.asarray(p_values, float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted
