"""The ARIMA baseline's AR(1) likelihood: statsmodels' Kalman filter's floats, bit for bit, so its
fit takes statsmodels' optimizer path to statsmodels' estimates."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from statsmodels.tsa.arima.model import ARIMA

from service.forecasting.ar1_likelihood import (
    ar1_loglikeobs,
    exact_ar1_arima,
    stationary_ar1_cov,
)
from service.forecasting.baselines import ArimaBaseline


def pct_returns(seed: int, n: int = 1000, phi: float = 0.05, sigma: float = 1.4) -> np.ndarray:
    """Percent daily returns as the baseline fits them: AR(1) around a small mean, fat tails."""
    rng = np.random.default_rng(seed)
    shocks = rng.standard_t(4, n) * sigma / np.sqrt(2.0)
    r = np.empty(n)
    r[0] = shocks[0]
    for t in range(1, n):
        r[t] = phi * r[t - 1] + shocks[t]
    return 0.04 + r


def statsmodels_filter(y: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(per-period log likelihoods, the stationary P_0, the summed log likelihood) from
    statsmodels' own filter at constrained params (const, ar.L1, sigma2)."""
    from statsmodels.tsa.statespace.kalman_filter import MEMORY_CONSERVE, MEMORY_NO_LIKELIHOOD

    model = ARIMA(y, order=(1, 0, 0), trend="c")
    total = model.loglike(params, transformed=True)
    model.update(params)
    kfilter = model.ssm._filter(conserve_memory=MEMORY_CONSERVE ^ MEMORY_NO_LIKELIHOOD)
    p0 = float(np.asarray(model.ssm._statespaces["d"].initial_state_cov)[0, 0])
    return np.array(kfilter.loglikelihood), p0, total


@pytest.mark.parametrize("seed", range(6))
def test_loglikeobs_equals_statsmodels_filter_bit_for_bit(seed):
    rng = np.random.default_rng(100 + seed)
    y = pct_returns(seed, n=int(rng.integers(40, 1500)))
    # [0, 0.999, 3]: a near-unit root, whose P takes periods to repeat (3.000000000000227, 3.0).
    for params in ([0.04, 0.05, 1.0], [-0.3, -0.9, 0.2], [0.0, 0.999, 3.0],
                   [rng.normal(), rng.uniform(-0.99, 0.99), rng.uniform(0.05, 5.0)]):
        params = np.asarray(params)
        obs, _, total = statsmodels_filter(y, params)
        ours = ar1_loglikeobs(y, *params)
        assert ours is not None
        assert ours.tobytes() == obs.tobytes()
        assert np.sum(ours) == total


def test_stationary_cov_equals_statsmodels_lyapunov_solution():
    rng = np.random.default_rng(7)
    y = pct_returns(0, n=60)
    for _ in range(300):
        ar = rng.uniform(-0.999, 0.999) * 10.0 ** rng.uniform(-6, 0)
        sigma2 = 10.0 ** rng.uniform(-3, 2)
        _, p0, _ = statsmodels_filter(y, np.array([0.0, ar, sigma2]))
        assert stationary_ar1_cov(ar, sigma2) == p0
    assert stationary_ar1_cov(0.5, 1.0) == pytest.approx(1.0 / 0.75, rel=1e-15)


def test_loglikeobs_refuses_what_statsmodels_filter_refuses():
    y = pct_returns(1, n=50)
    assert ar1_loglikeobs(y, 0.0, 0.1, 1e-14) is None  # F < 1e-12: statsmodels raises
    assert ar1_loglikeobs(y, 0.0, 0.1, float("nan")) is None


def _fit(cls, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(cls(y, order=(1, 0, 0), trend="c").fit(return_params=True))


@pytest.mark.parametrize("seed", range(8))
def test_fit_asks_the_same_likelihoods_and_reaches_the_same_estimates(seed, monkeypatch):
    y = pct_returns(seed, n=300 + 150 * seed, phi=(-0.2, 0.0, 0.1, 0.6)[seed % 4])
    exact = exact_ar1_arima()
    asked: list[tuple[bytes, float]] = []
    ours = exact.loglike

    def recorded(self, params, *args, **kwargs):
        value = ours(self, params, *args, **kwargs)
        asked.append((np.asarray(params).tobytes(), value))
        return value

    monkeypatch.setattr(exact, "loglike", recorded)
    estimates = _fit(exact, y)
    monkeypatch.undo()
    assert estimates.tobytes() == _fit(ARIMA, y).tobytes()
    model = ARIMA(y, order=(1, 0, 0), trend="c")
    flags = {"transformed": False, "includes_fixed": False}
    assert len(asked) > 5
    for params, value in asked:  # every likelihood the optimizer asked for: statsmodels' value
        assert value == model.loglike(np.frombuffer(params), flags)


def test_other_calls_are_statsmodels_own():
    y = pct_returns(3, n=200)
    exact = exact_ar1_arima()(y, order=(1, 0, 0), trend="c")
    plain = ARIMA(y, order=(1, 0, 0), trend="c")
    params = np.array([0.05, 0.2, 1.5])
    assert exact.loglike(params) == plain.loglike(params)  # transformed, no flags dict
    assert exact.loglike(params, {"complex_step": True}) == plain.loglike(
        params, {"complex_step": True})


def test_arima_baseline_estimates_unchanged_by_the_exact_likelihood(monkeypatch):
    from service.forecasting import baselines

    y = np.log(40.0) + np.cumsum(pct_returns(5, n=900) / 100.0)
    fast = ArimaBaseline().fit(y)
    monkeypatch.setattr(baselines, "exact_ar1_arima", lambda: ARIMA)
    plain = ArimaBaseline().fit(y)
    assert (fast.mean, fast.sigma2, fast.ar.tobytes()) == (plain.mean, plain.sigma2,
                                                           plain.ar.tobytes())


def test_a_missing_return_is_left_to_statsmodels():
    y = pct_returns(4, n=120)
    y[50] = np.nan
    exact = exact_ar1_arima()(y, order=(1, 0, 0), trend="c")
    flags = {"transformed": False, "includes_fixed": False}
    params = exact.untransform_params(np.array([0.05, 0.2, 1.5]))
    assert not exact._ar1_model()
    plain = ARIMA(y, order=(1, 0, 0), trend="c")
    assert exact.loglike(params, flags) == plain.loglike(params, flags)


def test_the_baseline_fit_takes_the_fast_path(monkeypatch):
    """The speed is the point: every likelihood of the baseline's fit is ar1_loglikeobs's (a
    statsmodels upgrade that made the model check fail would otherwise pass every equality test
    above, only slower)."""
    from service.forecasting import ar1_likelihood

    answers = []
    real = ar1_likelihood.ar1_loglikeobs
    monkeypatch.setattr(ar1_likelihood, "ar1_loglikeobs",
                        lambda *a: answers.append(real(*a)) or answers[-1])
    y = np.log(40.0) + np.cumsum(pct_returns(6, n=900) / 100.0)
    ArimaBaseline().fit(y)
    assert len(answers) > 5
    assert all(a is not None for a in answers)


def test_the_model_check_is_made_again_for_each_fit():
    """A burn-in set between two fits changes the likelihood: the second fit must see it (a check
    cached past its fit gave phi -0.0033 where statsmodels' is -0.0097)."""
    y = pct_returns(7, n=300)
    exact = exact_ar1_arima()(y, order=(1, 0, 0), trend="c")
    plain = ARIMA(y, order=(1, 0, 0), trend="c")
    assert exact.fit(return_params=True).tobytes() == plain.fit(return_params=True).tobytes()
    exact.ssm.loglikelihood_burn = plain.ssm.loglikelihood_burn = 20
    assert not exact._ar1_model()
    assert exact.fit(return_params=True).tobytes() == plain.fit(return_params=True).tobytes()


@pytest.mark.parametrize("ar, mean, sigma2", [(1.0, 0.0, 1.0), (-1.0, 0.0, 1.0),
                                              (0.5, float("nan"), 1.0), (0.5, 0.0, 1e150)])
def test_roots_on_the_unit_circle_and_absurd_scales_are_left_to_statsmodels(ar, mean, sigma2):
    assert ar1_loglikeobs(pct_returns(8, n=100), mean, ar, sigma2) is None


def test_a_series_whose_states_never_settle_is_left_to_statsmodels():
    """Ulp-sized noise on a constant: the state sweeps fix one period each (3,998 sweeps at
    n = 4,000, ~70 ms); past _MAX_SWEEPS they stop and statsmodels' filter answers instead."""
    y = 1.0 + np.random.default_rng(9).standard_normal(4000) * 1e-16
    assert ar1_loglikeobs(y, 1.0, 0.999, 1e-12) is None
    exact = exact_ar1_arima()(y, order=(1, 0, 0), trend="c")
    plain = ARIMA(y, order=(1, 0, 0), trend="c")
    flags = {"transformed": True, "includes_fixed": False}
    params = np.array([1.0, 0.999, 1e-12])
    assert exact.loglike(params, flags) == plain.loglike(params, flags)
