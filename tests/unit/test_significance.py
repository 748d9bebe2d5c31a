"""Newey–West t and n_eff against the formula and a series of known autocorrelation; bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from service.forecasting.significance import (
    block_bootstrap_ratio,
    hac_mean_test,
    newey_west_lags,
)


def _ar1(n: int, rho: float, mean: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty(n)
    x[0] = rng.normal() / np.sqrt(1 - rho**2)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + rng.normal()
    return mean + x


def _newey_west_by_hand(x: np.ndarray, lags: int) -> tuple[float, float]:
    """(t, n_eff) from LRV = γ0 + 2 Σ_{j≤L} (1 - j/(L+1)) γ_j, γ_j with 1/T."""
    n, d = x.size, x - x.mean()
    gamma = [np.sum(d[j:] * d[: n - j]) / n for j in range(lags + 1)]
    lrv = gamma[0] + 2 * sum((1 - j / (lags + 1)) * gamma[j] for j in range(1, lags + 1))
    return x.mean() / np.sqrt(lrv / n), n * gamma[0] / lrv


def test_hac_t_is_the_newey_west_formula():
    x = _ar1(500, 0.5, 0.1)
    res = hac_mean_test(x, horizon=5)
    assert res.lags == newey_west_lags(500, 5) == 5
    t, n_eff = _newey_west_by_hand(x, res.lags)
    assert res.t == pytest.approx(t, rel=1e-10)
    assert res.n_eff == pytest.approx(n_eff, rel=1e-10)
    assert res.mean == pytest.approx(x.mean())


def test_hac_sees_the_known_autocorrelation_of_an_ar1():
    # AR(1) with rho 0.6: long-run variance = γ0 (1 + rho) / (1 - rho), so n_eff / n = 0.25 and
    # the iid t overstates the HAC t by sqrt(4) = 2.
    x = _ar1(20_000, 0.6, 0.02, seed=3)
    res = hac_mean_test(x, lags=60)
    assert res.n_eff / res.n == pytest.approx(0.25, abs=0.03)
    iid_t = x.mean() / (x.std() / np.sqrt(x.size))
    assert iid_t / res.t == pytest.approx(2.0, rel=0.07)
    # White noise: n_eff ≈ n.
    noise = hac_mean_test(np.random.default_rng(1).normal(size=20_000), lags=60)
    assert noise.n_eff / noise.n == pytest.approx(1.0, abs=0.1)


def test_hac_is_undefined_on_too_few_or_constant_values():
    assert np.isnan(hac_mean_test([1.0, 2.0]).t)
    assert np.isnan(hac_mean_test([0.3] * 10).t)
    assert hac_mean_test([np.nan, 1.0, 2.0, 4.0]).n == 3


def test_block_bootstrap_interval_holds_the_ratio_and_widens_with_dependence():
    rng = np.random.default_rng(0)
    b = rng.uniform(1, 2, 400)
    a = b * 0.95 + rng.normal(0, 0.05, 400)
    ci = block_bootstrap_ratio(a, b, block=8)
    assert ci.estimate == pytest.approx(a.sum() / b.sum())
    assert ci.lower < ci.estimate < ci.upper < 1.0
    # Persistent errors (an AR(1) in the ratio) give a wider interval than iid ones.
    shock = _ar1(400, 0.9, 0.0, seed=2) * 0.05
    wide = block_bootstrap_ratio(b * (0.95 + shock), b, block=20)
    narrow = block_bootstrap_ratio(b * (0.95 + rng.permutation(shock)), b, block=20)
    assert wide.upper - wide.lower > 1.5 * (narrow.upper - narrow.lower)
    assert block_bootstrap_ratio(a, b, block=8) == ci  # seeded: reproducible
