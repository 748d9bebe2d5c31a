"""Tests with power on autocorrelated series: Newey–West t, effective sample size, block bootstrap.

A daily IC series at horizon h > 1, or a DM loss differential, is autocorrelated (h-day returns
from consecutive origins overlap by h - 1 days), so a t-statistic that treats its T values as
independent overstates confidence. With the long-run variance

    LRV = γ_0 + 2 Σ_{j=1}^{L} (1 - j/(L+1)) γ_j,   γ_j = (1/T) Σ_t (x_t - x̄)(x_{t-j} - x̄)

(Bartlett weights, Newey–West), the HAC t of the mean is x̄ / sqrt(LRV / T), and the effective
number of independent observations is n_eff = T · γ_0 / LRV: the T for which iid data with the
same variance would give the same standard error. The covariance comes from statsmodels (OLS on
a constant with cov_type="HAC"), not a second copy; the lag rule is Newey–West's (1994)
⌊4 (T/100)^{2/9}⌋, raised to h so the h - 1 overlapping lags are always inside the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.forecasting.metrics import hac_mean_se

BOOTSTRAP_REPS = 999
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class HACResult:
    """Mean of a series with its Newey–West standard error, t, two-sided normal p, and n_eff."""

    mean: float
    se: float
    t: float
    pvalue: float
    n: int
    lags: int
    n_eff: float

    @classmethod
    def undefined(cls, n: int = 0) -> HACResult:
        nan = float("nan")
        return cls(nan, nan, nan, nan, n, 0, nan)


def preload() -> None:
    """Import arch (what block_bootstrap_ratio imports when first called) now: before a pool
    forks, so its workers inherit it."""
    from arch.bootstrap import CircularBlockBootstrap  # noqa: F401


def newey_west_lags(n: int, horizon: int = 1) -> int:
    """max(h, ⌊4 (n/100)^{2/9}⌋), capped at n - 1."""
    rule = math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0))
    return int(max(0, min(n - 1, max(horizon, rule))))


def hac_mean_test(series, horizon: int = 1, lags: int | None = None) -> HACResult:
    """Newey–West test of mean(series) = 0; NaNs are dropped; undefined with < 3 values."""
    x = np.asarray(series, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n < 3 or np.all(x == x[0]):
        return HACResult.undefined(n)
    lags = newey_west_lags(n, horizon) if lags is None else int(lags)
    # statsmodels' OLS(x, ones) HAC fit, without its objects (the DM test's arithmetic), and
    # its normal p-value of params / bse. Imported here: the API imports the scoring, and
    # scipy.stats would add half a second to its start.
    from scipy.stats import norm

    beta, bse = hac_mean_se(x, lags)
    pvalue = float(norm.sf(np.abs(beta / bse)) * 2)
    mean, se = float(beta), float(bse)
    gamma0 = float(np.mean((x - mean) ** 2))
    lrv = se * se * n
    n_eff = n * gamma0 / lrv if lrv > 0 else float("nan")
    return HACResult(mean, se, mean / se, pvalue, n, lags, n_eff)


@dataclass(frozen=True)
class Interval:
    """A point estimate with a (lower, upper) confidence interval."""

    estimate: float
    lower: float
    upper: float


def block_bootstrap_ratio(numerator, denominator, block: int, level: float = 0.95,
                          reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> Interval:
    """Percentile interval of Σ a / Σ b, resampling (a_t, b_t) pairs in circular blocks.

    Used for rel MAE: a_t, b_t = the model's and naive's absolute errors summed over the tickers
    of origin date t, so blocks of dates keep both the cross-section and the serial dependence.
    arch's CircularBlockBootstrap draws the blocks.
    """
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 2 or b.sum() <= 0:
        nan = float("nan")
        return Interval(nan, nan, nan)
    from arch.bootstrap import CircularBlockBootstrap

    boot = CircularBlockBootstrap(max(1, min(block, a.size)), a, b, seed=seed)
    ratios = np.array([x.sum() / y.sum() for (x, y), _ in boot.bootstrap(reps)])
    ratios = ratios[np.isfinite(ratios)]
    tail = 50.0 * (1.0 - level)
    lower, upper = np.percentile(ratios, [tail, 100.0 - tail])
    return Interval(float(a.sum() / b.sum()), float(lower), float(upper))


def bootstrap_block_length(n: int, horizon: int = 1) -> int:
    """max(h, ⌈n^{1/3}⌉): a block spans the overlap of h-day errors and grows with n."""
    return int(max(horizon, math.ceil(n ** (1.0 / 3.0))))
