"""Baseline forecasters: the same Forecaster interface as the model, so every backtest has them.

A baseline sees one ticker's log close series y (log of adj_close; a TickerSeries or the bare
array) and, for origin indices t and horizons h = 1..H, returns predicted cumulative log returns
ŷ[t, h] ≈ y[t+h] - y[t] as an array (N, H), using y[:t+1] only. The caller turns them into
prices with P̂ = P_t · exp(ŷ). `fit` gets the training slice only; baselines without parameters
accept and ignore it. Adding one: a class here plus its entry in BASELINES (and its test).
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Callable
from typing import ClassVar, Self

import numpy as np

from service.forecasting.ar1_likelihood import exact_ar1_arima
from service.forecasting.bands import EMPIRICAL_WINDOW, empirical_quantiles, gaussian_quantiles
from service.forecasting.forecaster import Forecaster, HistoricalForecasts, TickerSeries
from service.forecasting.spec import FeatureSpec
from service.forecasting.volatility import VOL_FLOOR


class Baseline(Forecaster):
    """A point forecaster of the log close alone: fit on the training slice, then `predict`."""

    title: ClassVar[str]  # how tables name it
    min_origin: int = 0  # the earliest origin index with enough history to forecast from

    @abstractmethod
    def fit(self, train_log_close) -> Self:
        """Estimate from the training slice (a TickerSeries or log closes) only."""

    @abstractmethod
    def predict(self, log_close, origins, horizon: int) -> np.ndarray:
        """(N,) origin indices -> (N, horizon) cumulative log returns, from y[:t+1] only."""

    def historical_forecasts(self, series: TickerSeries, origins: np.ndarray,
                             horizon: int) -> HistoricalForecasts:
        point = self.predict(series, origins, horizon)  # (N, H)
        return HistoricalForecasts(np.asarray(origins), point[:, :, None], self.quantiles)


def _series(log_close, name: str, min_len: int = 1) -> np.ndarray:
    if isinstance(log_close, TickerSeries):
        log_close = log_close.log_close
    y = np.asarray(log_close, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {y.shape}")
    if y.size < min_len:
        raise ValueError(f"{name} has {y.size} bars; at least {min_len} are needed")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains NaN or inf")
    return y


def _origins(y: np.ndarray, origins, horizon: int, min_origin: int, name: str) -> np.ndarray:
    """Validated integer origins; every one must index a bar with enough history behind it."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    t = np.asarray(origins)
    if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(
            f"origins must be a 1-D array of integer bar indices, got {t.dtype} {t.shape}"
        )
    if t.size and (t.min() < min_origin or t.max() >= y.size):
        raise ValueError(
            f"{name} baseline: origins must lie in [{min_origin}, {y.size - 1}], "
            f"got [{t.min()}, {t.max()}]"
        )
    return t.astype(np.intp)


def _steps(horizon: int) -> np.ndarray:
    return np.arange(1, horizon + 1, dtype=float)


class NaiveBaseline(Baseline):
    """Random walk: P̂_{t+h} = P_t, so ŷ[t, h] = 0."""

    name: ClassVar[str] = "naive"
    title: ClassVar[str] = "naive"
    min_origin = 0

    def fit(self, train_log_close) -> Self:
        _series(train_log_close, "train_log_close")
        return self

    def predict(self, log_close, origins, horizon: int) -> np.ndarray:
        y = _series(log_close, "log_close")
        t = _origins(y, origins, horizon, self.min_origin, self.name)
        return np.zeros((t.size, horizon))


class DriftBaseline(Baseline):
    """Random walk with drift: ŷ[t, h] = h · (y_t - y_0) / t, the mean daily log return up to t."""

    # Re-estimated at every origin from all history the caller passed (y_0 is its first bar),
    # the textbook drift method; HistoricalMeanBaseline is the frozen, training-only variant.
    name: ClassVar[str] = "drift"
    title: ClassVar[str] = "drift"
    min_origin = 1

    def fit(self, train_log_close) -> Self:
        _series(train_log_close, "train_log_close")
        return self

    def predict(self, log_close, origins, horizon: int) -> np.ndarray:
        y = _series(log_close, "log_close", min_len=2)
        t = _origins(y, origins, horizon, self.min_origin, self.name)
        drift = (y[t] - y[0]) / t
        return drift[:, None] * _steps(horizon)[None, :]


class SMABaseline(Baseline):
    """SMA level: P̂_{t+h} = mean(P_{t-w+1..t}) for every h, so ŷ[t, h] = log(SMA_w / P_t)."""

    name: ClassVar[str] = "sma20"
    title: ClassVar[str] = "SMA(20)"

    def __init__(self, window: int = 20):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.min_origin = window - 1

    def fit(self, train_log_close) -> Self:
        _series(train_log_close, "train_log_close")
        return self

    def predict(self, log_close, origins, horizon: int) -> np.ndarray:
        y = _series(log_close, "log_close", min_len=self.window)
        t = _origins(y, origins, horizon, self.min_origin, self.name)
        # The average of prices, not of log prices: the level a chartist reads off the chart.
        # Taken as mean(P_s / P_t) so a flat window gives exactly 0, with no cumsum round-off.
        window = np.lib.stride_tricks.sliding_window_view(y, self.window)[t - self.window + 1]
        level = np.log(np.mean(np.exp(window - y[t][:, None]), axis=1))  # (N, w) -> (N,)
        return np.repeat(level[:, None], horizon, axis=1)


class HistoricalMeanBaseline(Baseline):
    """Historical mean return: ŷ[t, h] = h · μ, μ the mean daily log return of the training bars."""

    # The notebook design's comparison: a constant expected return estimated in-sample, frozen
    # at fit time (μ = (y_last - y_first) / (n - 1) over the training bars).
    name: ClassVar[str] = "mean"
    title: ClassVar[str] = "historical mean"
    min_origin = 0

    def __init__(self):
        self.mean_return: float | None = None

    def fit(self, train_log_close) -> Self:
        y = _series(train_log_close, "train_log_close", min_len=2)
        self.mean_return = float((y[-1] - y[0]) / (y.size - 1))
        return self

    def predict(self, log_close, origins, horizon: int) -> np.ndarray:
        if self.mean_return is None:
            raise RuntimeError("mean baseline: call fit() before predict()")
        y = _series(log_close, "log_close")
        t = _origins(y, origins, horizon, self.min_origin, self.name)
        return np.tile(self.mean_return * _steps(horizon), (t.size, 1))


class ArimaBaseline(Baseline):
    """AR(p) on log returns: r̂_{t+k} = μ + Σ φ_i (r_{t+k-i} - μ), ŷ[t, h] = Σ_{k≤h} r̂_{t+k}."""

    # statsmodels ARIMA(p, 0, 0) with a constant, fitted once (exact Gaussian MLE) on the training
    # slice; at each origin the fixed (μ, φ) are applied to returns ≤ t — no refit, so it is
    # causal and fast (~5 ms fit per ticker, the forecasts are a few array ops).
    # For a pure AR the state is the last p returns, so this recursion equals statsmodels'
    # `results.apply(y[:t+1]).forecast(h)` exactly (tested).
    name: ClassVar[str] = "arima"
    title: ClassVar[str] = "ARIMA(1,0,0)"
    MIN_TRAIN_RETURNS: ClassVar[int] = 30

    def __init__(self, ar_order: int = 1):
        if ar_order < 1:
            raise ValueError(f"ar_order must be >= 1, got {ar_order}")
        self.ar_order = ar_order
        self.min_origin = ar_order  # r_t needs y_t and y_{t-1}; p returns need p + 1 bars
        self.mean: float | None = None
        self.ar: np.ndarray | None = None
        self.sigma2: float | None = None

    def preload(self) -> None:
        import statsmodels.tsa.arima.model  # noqa: F401  (~1.2 s of imports a process)

    def fit(self, train_log_close) -> Self:
        from statsmodels.tsa.arima.model import ARIMA

        y = _series(train_log_close, "train_log_close", min_len=self.MIN_TRAIN_RETURNS + 1)
        # Percent returns: at raw scale (σ ≈ 0.01, σ² ≈ 1e-4) the MLE optimizer stops early with
        # a ConvergenceWarning and a biased mean; scaled, it converges in ~20 likelihoods.
        returns_pct = 100.0 * np.diff(y)
        if np.ptp(returns_pct) < 1e-9:
            # Constant returns (a flat or log-linear price path): σ² = 0, the likelihood is
            # unbounded and the optimizer returns noise. The exact fit is r_t = μ, no AR term.
            self.mean = float(np.mean(returns_pct)) / 100.0
            self.ar = np.zeros(self.ar_order)
            self.sigma2 = 0.0
            return self
        with warnings.catch_warnings():
            # Convergence notes on short or odd training slices are not actionable here: the
            # backtest reports how the fitted baseline actually forecasts.
            warnings.simplefilter("ignore")
            # AR(1): statsmodels' model with its likelihood computed without the per-period
            # BLAS calls, the same floats (service/forecasting/ar1_likelihood.py): the same
            # estimates in ~1/3 of the time.
            model = (exact_ar1_arima() if self.ar_order == 1 else ARIMA)(
                returns_pct, order=(self.ar_order, 0, 0), trend="c")
            # Only the estimates: the same optimizer run, without the results object and its
            # numerical-Hessian covariance (a third of the fit's time, unused here).
            estimates = model.fit(return_params=True)
        params = dict(zip(model.param_names, np.asarray(estimates, dtype=float)))
        self.mean = params["const"] / 100.0
        self.ar = np.array([params[f"ar.L{i}"] for i in range(1, self.ar_order + 1)])
        self.sigma2 = params["sigma2"] / 100.0**2
        return self

    def predict(self, log_close, origins, horizon: int) -> np.ndarray:
        if self.ar is None:
            raise RuntimeError("arima baseline: call fit() before predict()")
        y = _series(log_close, "log_close", min_len=self.ar_order + 1)
        t = _origins(y, origins, horizon, self.min_origin, self.name)
        p = self.ar_order
        # lags[:, i] = r_{t-i} - μ for i = 0..p-1, then rolled forward with each forecast.
        lags = np.stack([y[t - i] - y[t - i - 1] for i in range(p)], axis=1) - self.mean
        out = np.empty((t.size, horizon))
        total = np.zeros(t.size)
        for k in range(horizon):
            dev = lags @ self.ar  # (N, p) @ (p,) -> (N,)
            total += self.mean + dev
            out[:, k] = total
            lags = np.concatenate([dev[:, None], lags[:, :-1]], axis=1)
        return out


# --- band baselines: quantile forecasters of the log close alone -------------------------------


class EwmaBandBaseline(Forecaster):
    """Random walk + Gaussian band: median 0, Q_p(r_{t,h}) = σ_t √h Φ⁻¹(p), σ_t the EWMA
    (λ 0.94) volatility of daily log returns up to t — the one the model's target is scaled by."""

    name: ClassVar[str] = "ewma"
    title: ClassVar[str] = "RW + EWMA σ band"

    def __init__(self, quantiles: tuple[float, ...] = FeatureSpec.quantiles,
                 slots: tuple[int, ...] | None = None):
        self.quantiles = tuple(quantiles)
        self.slots = slots  # accepted like the empirical band's; every horizon is cheap here

    def fit(self, history) -> Self:
        return self  # nothing to estimate: σ_t is recomputed at every origin

    def historical_forecasts(self, series: TickerSeries, origins: np.ndarray,
                             horizon: int) -> HistoricalForecasts:
        _series(series, "log_close")
        t = np.asarray(origins, dtype=np.intp)
        sigma = series.volatility[t]  # ewma_volatility(log_returns(y)), once per series
        keep = np.isfinite(sigma)  # the EWMA's warm-up: no band yet
        q = gaussian_quantiles(np.maximum(sigma[keep], VOL_FLOOR), _steps(horizon),
                               self.quantiles)
        return HistoricalForecasts(t[keep], q, self.quantiles)


class EmpiricalBandBaseline(Forecaster):
    """Rolling empirical band: the quantiles of the last 250 sessions' h-day log returns."""

    name: ClassVar[str] = "empirical"
    title: ClassVar[str] = "empirical 250-session band"

    def __init__(self, quantiles: tuple[float, ...] = FeatureSpec.quantiles,
                 window: int = EMPIRICAL_WINDOW, slots: tuple[int, ...] | None = None):
        self.quantiles = tuple(quantiles)
        self.window = window
        self.slots = slots  # horizons to compute (the backtest scores a few); others are NaN

    def fit(self, history) -> Self:
        return self

    def historical_forecasts(self, series: TickerSeries, origins: np.ndarray,
                             horizon: int) -> HistoricalForecasts:
        y = _series(series, "log_close")
        t = np.asarray(origins, dtype=np.intp)
        hs = [h for h in (self.slots or range(1, horizon + 1)) if h <= horizon]
        q = np.full((t.size, horizon, len(self.quantiles)), np.nan)
        q[:, np.asarray(hs) - 1, :] = empirical_quantiles(y, t, hs, self.quantiles, self.window)
        # Origins with a full window for every computed horizon.
        keep = np.isfinite(q[:, np.asarray(hs) - 1, :]).all(axis=(1, 2))
        return HistoricalForecasts(t[keep], q[keep], self.quantiles)


# Band baselines, scored with and without ACI (service/forecasting/bands.ACIForecaster).
BAND_BASELINES: dict[str, Callable[..., Forecaster]] = {
    "ewma": EwmaBandBaseline,
    "empirical": EmpiricalBandBaseline,
}


# Factories, not instances: fitted baselines hold one ticker's parameters.
BASELINES: dict[str, Callable[[], Baseline]] = {
    "naive": NaiveBaseline,
    "drift": DriftBaseline,
    "sma20": SMABaseline,
    "mean": HistoricalMeanBaseline,
    "arima": ArimaBaseline,
}
