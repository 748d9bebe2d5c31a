"""Baselines: exact answers on flat and log-linear series, causality, ARIMA fitted on train only."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from statsmodels.tsa.arima.model import ARIMA

from service.forecasting.baselines import (
    BASELINES,
    ArimaBaseline,
    Baseline,
    DriftBaseline,
    HistoricalMeanBaseline,
    NaiveBaseline,
    SMABaseline,
)

H = 5
N_BARS = 120
N_TRAIN = 80
ORIGINS = np.arange(40, N_BARS - H)  # every origin has its targets inside the series


def realized(y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """y[t+h] - y[t] for h = 1..H, the target every baseline forecasts."""
    return np.stack([y[origins + h] - y[origins] for h in range(1, horizon + 1)], axis=1)


def random_walk(seed: int = 0, n: int = N_BARS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return math.log(40.0) + np.cumsum(rng.normal(0.0005, 0.015, n))


def ar1_returns_series(phi: float, mu: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = np.empty(n)
    r[0] = mu
    for i in range(1, n):
        r[i] = mu + phi * (r[i - 1] - mu) + rng.normal(0, 0.01)
    return math.log(30.0) + np.concatenate([[0.0], np.cumsum(r)])


def test_registry_holds_the_five_baselines_with_one_interface():
    assert list(BASELINES) == ["naive", "drift", "sma20", "mean", "arima"]
    for name, make in BASELINES.items():
        baseline = make()
        assert isinstance(baseline, Baseline)
        assert baseline.name == name


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_is_exact_on_a_constant_series(name):
    y = np.full(N_BARS, math.log(50.0))
    baseline = BASELINES[name]().fit(y[:N_TRAIN])
    forecast = baseline.predict(y, ORIGINS, H)
    assert forecast.shape == (ORIGINS.size, H)
    np.testing.assert_array_equal(forecast, np.zeros((ORIGINS.size, H)))


def test_drift_and_mean_are_exact_on_a_log_linear_series_and_naive_misses_by_h_slope():
    slope = 0.001
    y = math.log(20.0) + slope * np.arange(N_BARS)
    target = realized(y, ORIGINS, H)
    for baseline in (DriftBaseline(), HistoricalMeanBaseline(), ArimaBaseline()):
        forecast = baseline.fit(y[:N_TRAIN]).predict(y, ORIGINS, H)
        np.testing.assert_allclose(forecast, target, rtol=0, atol=1e-12, err_msg=baseline.name)
    naive_error = target - NaiveBaseline().predict(y, ORIGINS, H)
    np.testing.assert_allclose(naive_error, np.tile(slope * np.arange(1, H + 1), (ORIGINS.size, 1)))


def test_sma_on_a_log_linear_series_is_the_mean_of_the_last_20_prices():
    slope = 0.002
    y = math.log(20.0) + slope * np.arange(N_BARS)
    forecast = SMABaseline().fit(y[:N_TRAIN]).predict(y, ORIGINS, H)
    prices = np.exp(y)
    for row, t in zip(forecast, ORIGINS):
        sma = sum(prices[t - j] for j in range(20)) / 20
        np.testing.assert_allclose(row, np.full(H, math.log(sma / prices[t])), rtol=1e-12)
    # Closed form: log(mean_j exp(-slope·j)), the same below the trend at every origin.
    level = math.log(sum(math.exp(-slope * j) for j in range(20)) / 20)
    np.testing.assert_allclose(forecast, level, rtol=1e-10)


def test_drift_uses_all_history_up_to_the_origin():
    y = random_walk()
    forecast = DriftBaseline().fit(y[:N_TRAIN]).predict(y, np.array([50]), 3)
    per_day = (y[50] - y[0]) / 50
    np.testing.assert_allclose(forecast, [[per_day, 2 * per_day, 3 * per_day]])


def test_mean_is_frozen_at_the_training_mean_return():
    y = random_walk()
    baseline = HistoricalMeanBaseline().fit(y[:N_TRAIN])
    per_day = np.mean(np.diff(y[:N_TRAIN]))
    assert baseline.mean_return == pytest.approx(per_day)
    forecast = baseline.predict(y, np.array([45, 110]), 2)
    np.testing.assert_allclose(forecast, [[per_day, 2 * per_day]] * 2)


@pytest.mark.parametrize("name", list(BASELINES))
def test_forecasts_at_origin_t_ignore_bars_after_t(name):
    y = random_walk(seed=1)
    cut = 90
    scrambled = y.copy()
    scrambled[cut + 1 :] = np.random.default_rng(7).permutation(y[cut + 1 :]) + 0.5
    before = ORIGINS[ORIGINS <= cut]
    baseline = BASELINES[name]().fit(y[:N_TRAIN])
    np.testing.assert_array_equal(
        baseline.predict(y, before, H), baseline.predict(scrambled, before, H)
    )
    # ... and the scramble does show up after the cut, so the comparison above has teeth.
    after = np.array([N_BARS - H - 1])
    if name not in ("naive", "mean"):
        assert not np.array_equal(
            baseline.predict(y, after, H), baseline.predict(scrambled, after, H)
        )


def test_arima_parameters_come_from_the_training_slice_only():
    y = ar1_returns_series(phi=0.4, mu=0.0005, n=600, seed=3)
    other_future = y.copy()
    other_future[400:] = other_future[400:] * 1.3
    fitted = ArimaBaseline().fit(y[:400])
    fitted_other = ArimaBaseline().fit(other_future[:400])
    assert (fitted.mean, fitted.ar[0], fitted.sigma2) == (
        fitted_other.mean,
        fitted_other.ar[0],
        fitted_other.sigma2,
    )
    # Fitting on everything gives different parameters, so train-only is a real constraint.
    assert ArimaBaseline().fit(other_future).ar[0] != fitted.ar[0]
    assert fitted.ar[0] == pytest.approx(0.4, abs=0.1)


@pytest.mark.parametrize("ar_order", [1, 2])
def test_arima_recursion_equals_statsmodels_forecast_without_refit(ar_order):
    y = ar1_returns_series(phi=0.3, mu=0.001, n=400, seed=5)
    baseline = ArimaBaseline(ar_order=ar_order).fit(y[:300])
    origins = np.array([300, 350, 398])
    forecast = baseline.predict(y, origins, 4)
    # statsmodels on the same (percent) scale, its parameters applied to data ≤ t, no refit.
    res = ARIMA(100 * np.diff(y[:300]), order=(ar_order, 0, 0), trend="c").fit()
    for row, t in zip(forecast, origins):
        sm = res.apply(100 * np.diff(y[: t + 1])).forecast(4) / 100
        np.testing.assert_allclose(row, np.cumsum(sm), rtol=1e-6, atol=1e-12)


def test_predict_before_fit_is_refused():
    y = random_walk()
    with pytest.raises(RuntimeError) as exc:
        ArimaBaseline().predict(y, ORIGINS, H)
    assert str(exc.value) == "arima baseline: call fit() before predict()"
    with pytest.raises(RuntimeError) as exc:
        HistoricalMeanBaseline().predict(y, ORIGINS, H)
    assert str(exc.value) == "mean baseline: call fit() before predict()"


@pytest.mark.parametrize(
    "baseline, origins, message",
    [
        (
            SMABaseline(),
            np.array([18, 30]),
            "sma20 baseline: origins must lie in [19, 119], got [18, 30]",
        ),
        (
            DriftBaseline(),
            np.array([0]),
            "drift baseline: origins must lie in [1, 119], got [0, 0]",
        ),
        (
            NaiveBaseline(),
            np.array([5, 120]),
            "naive baseline: origins must lie in [0, 119], got [5, 120]",
        ),
        (
            NaiveBaseline(),
            np.array([5.0]),
            "origins must be a 1-D array of integer bar indices, got float64 (1,)",
        ),
    ],
)
def test_origins_without_history_or_outside_the_series_are_refused(baseline, origins, message):
    with pytest.raises(ValueError) as exc:
        baseline.fit(random_walk()[:N_TRAIN]).predict(random_walk(), origins, H)
    assert str(exc.value) == message


def test_nan_bars_and_short_training_slices_are_refused():
    y = random_walk()
    y[10] = np.nan
    with pytest.raises(ValueError) as exc:
        NaiveBaseline().predict(y, ORIGINS, H)
    assert str(exc.value) == "log_close contains NaN or inf"
    with pytest.raises(ValueError) as exc:
        ArimaBaseline().fit(random_walk()[:20])
    assert str(exc.value) == "train_log_close has 20 bars; at least 31 are needed"


# ---- band baselines ----------------------------------------------------------------------------


def test_ewma_band_baseline_is_the_gaussian_band_of_the_ewma_volatility():
    from statistics import NormalDist

    from service.forecasting.baselines import EwmaBandBaseline
    from service.forecasting.forecaster import TickerSeries

    rng = np.random.default_rng(4)
    adj = 30.0 * np.exp(np.cumsum(rng.normal(0.0, 0.015, 120)))
    bars = pd.DataFrame({"date": pd.bdate_range("2016-01-04", periods=120), "adj_close": adj})
    made = EwmaBandBaseline((0.1, 0.5, 0.9)).fit(None).historical_forecasts(
        TickerSeries("X", bars), np.array([5, 60, 119]), 4)
    np.testing.assert_array_equal(made.origins, [60, 119])  # 5 is in the EWMA's warm-up
    r = np.diff(np.log(adj))
    for row, t in enumerate((60, 119)):
        w = 0.94 ** np.arange(t)[::-1]
        sigma = np.sqrt(np.sum(w * r[:t] ** 2) / w.sum())
        for h in (1, 4):
            z = NormalDist().inv_cdf(0.9)
            np.testing.assert_allclose(made.log_returns[row, h - 1],
                                       [-sigma * np.sqrt(h) * z, 0.0, sigma * np.sqrt(h) * z],
                                       rtol=1e-10, atol=1e-15)
    assert made.band is not None and (made.median == 0).all()
