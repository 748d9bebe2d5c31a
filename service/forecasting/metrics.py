"""Forecast metrics: price errors, return skill, the Diebold–Mariano test, IC, intervals, strategy.

Conventions, shared with baselines.py and the backtest:
- prices are in dollars (`actual`, `predicted`, `lower`, `upper`, `origin_price`);
- returns are h-day LOG returns log(P_{t+h} / P_t) from an origin t (`realized`, `predicted`);
- inputs are flat arrays of the same shape with no NaN: the caller drops origins whose target
  lies beyond the data before calling; bad input raises ValueError with a message naming it;
- the per-series metrics (price errors, return skill, intervals, a series' strategy) reduce along
  the last axis: one series (n,) gives a float, G series of one length (G, n) an array (G,) of
  the floats each row gives alone (numpy reduces each row as it reduces the row on its own), so
  a backtest scores its tickers in a few calls instead of a few per ticker.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd

TRADING_DAYS_PER_YEAR = 252

Loss = Literal["squared", "absolute"]
ICMethod = Literal["pearson", "spearman"]
StrategyKind = Literal["long_flat", "long_short", "buy_and_hold"]
STRATEGY_KINDS: tuple[str, ...] = ("long_flat", "long_short", "buy_and_hold")


def _arrays(**named) -> list[np.ndarray]:
    """Named inputs as float arrays of one shape, non-empty and finite, or a ValueError."""
    out = [np.asarray(v, dtype=float) for v in named.values()]
    names = list(named)
    for name, a in zip(names, out):
        if a.size == 0:
            raise ValueError(f"{name} is empty")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or inf")
    for name, a in zip(names[1:], out[1:]):
        if a.shape != out[0].shape:
            raise ValueError(f"{names[0]} and {name} differ in shape: {out[0].shape} vs {a.shape}")
    return out


def _value(x) -> float | np.ndarray:
    """A reduction's result: a float for one series, an array (G,) for G rows."""
    return float(x) if np.ndim(x) == 0 else np.asarray(x, dtype=float)


def _share(count, total) -> float | np.ndarray:
    """count / total (the mean of `total` booleans of which `count` are true: the same float),
    NaN where total is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _value(np.where(total == 0, np.nan, count / total))


# --- price errors -------------------------------------------------------------------------------


def mae(actual, predicted) -> float | np.ndarray:
    """Mean absolute error in dollars: MAE = mean(|y - ŷ|)."""
    y, yhat = _arrays(actual=actual, predicted=predicted)
    return _value(np.mean(np.abs(y - yhat), axis=-1))


def rmse(actual, predicted) -> float | np.ndarray:
    """Root mean squared error in dollars: RMSE = sqrt(mean((y - ŷ)²))."""
    y, yhat = _arrays(actual=actual, predicted=predicted)
    return _value(np.sqrt(np.mean((y - yhat) ** 2, axis=-1)))


def mape(actual, predicted) -> float | np.ndarray:
    """Mean absolute percentage error in percent: MAPE = 100 · mean(|y - ŷ| / |y|)."""
    y, yhat = _arrays(actual=actual, predicted=predicted)
    if np.any(y == 0):
        raise ValueError("actual contains zeros; MAPE is undefined")
    return _value(100.0 * np.mean(np.abs(y - yhat) / np.abs(y), axis=-1))


def relative_mae(actual, predicted, naive) -> float | np.ndarray:
    """Relative MAE = MAE(ŷ) / MAE(naive); < 1 beats naive, NaN when MAE(naive) = 0."""
    y, yhat, ynaive = _arrays(actual=actual, predicted=predicted, naive=naive)
    naive_mae = np.mean(np.abs(y - ynaive), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.mean(np.abs(y - yhat), axis=-1) / naive_mae
    return _value(np.where(naive_mae == 0, np.nan, ratio))


# --- return skill -------------------------------------------------------------------------------


def r2_returns(realized, predicted) -> float | np.ndarray:
    """R² of returns = 1 - Σ(r - r̂)² / Σ(r - r̄)², r̄ the mean realized r; NaN if r is flat."""
    # On returns, not price levels: prices trend, so any level forecast near the last close scores
    # R² ≈ 1 while having no skill. Here 0 means "as good as knowing the sample mean return".
    r, rhat = _arrays(realized=realized, predicted=predicted)
    ss_tot = np.sum((r - r.mean(axis=-1, keepdims=True)) ** 2, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - np.sum((r - rhat) ** 2, axis=-1) / ss_tot
    return _value(np.where(ss_tot == 0, np.nan, r2))


def directional_accuracy(realized, predicted) -> float | np.ndarray:
    """Share of sign(r̂) == sign(r) over pairs with r ≠ 0 and r̂ ≠ 0; NaN when no pair is left."""
    # A zero realized move has no direction to call, and a zero forecast makes no call: both are
    # excluded rather than scored. So the naive forecast (always 0) reports NaN, not a fake 0% or
    # 50%, and a model is judged only on the calls it made.
    r, rhat = _arrays(realized=realized, predicted=predicted)
    called = (r != 0) & (rhat != 0)
    right = called & (np.sign(r) == np.sign(rhat))
    return _share(np.count_nonzero(right, axis=-1), np.count_nonzero(called, axis=-1))


# --- Diebold–Mariano ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DMResult:
    """Diebold–Mariano statistic (negative: the forecast beats the benchmark) and two-sided p."""

    statistic: float
    pvalue: float
    n: int


def diebold_mariano(actual, predicted, benchmark, horizon: int, loss: Loss = "squared") -> DMResult:
    """DM test of ŷ vs a benchmark on d_t = L(y_t - ŷ_t) - L(y_t - ŷ_bench,t); L(e) = e² or |e|."""
    y, yhat, ybench = _arrays(actual=actual, predicted=predicted, benchmark=benchmark)
    if loss not in ("squared", "absolute"):
        raise ValueError(f"loss must be 'squared' or 'absolute', got {loss!r}")
    if loss == "squared":
        d = (y - yhat) ** 2 - (y - ybench) ** 2
    else:
        d = np.abs(y - yhat) - np.abs(y - ybench)
    return diebold_mariano_differential(d, horizon)


def diebold_mariano_differential(loss_differential, horizon: int) -> DMResult:
    """DM test on a loss differential series d_t, HLN-corrected, two-sided p from t(T-1).

    DM = d̄ / sqrt(V̂/T), V̂ = γ_0 + 2 Σ_{j=1}^{h-1} (1 - j/h) γ_j,
    γ_j = (1/T) Σ_t (d_t - d̄)(d_{t-j} - d̄)  (h-step errors from consecutive origins overlap by h-1 days, hence lags up to h-1), and
    DM_HLN = DM · sqrt((T + 1 - 2h + h(h-1)/T) / T). The numbers of statsmodels 0.15's
    `diebold_mariano_test(lags=h-1, harvey_adj=True, horizon=h)`, float for float (see
    _hac_t_of_mean); its V̂ weights the autocovariances with the Bartlett kernel (Newey–West)
    instead of the original DM's flat weights, which keeps V̂ ≥ 0; at h = 1 the two coincide.
    Negative DM: the first forecast has the lower loss. Taking d directly lets a caller pool
    tickers (mean d_t per origin date) into one series. d identically 0 means equal accuracy:
    statistic 0, p-value 1.
    """
    (d,) = _arrays(loss_differential=loss_differential)
    if d.ndim != 1:
        raise ValueError(f"loss_differential must be one-dimensional, got shape {d.shape}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    t = d.size
    # The HLN factor's radicand turns non-positive when T is small against h: no valid test then.
    if t < 2 or t + 1 - 2 * horizon + horizon * (horizon - 1) / t <= 0:
        raise ValueError(f"too few forecasts for a DM test at horizon {horizon}: {t}")
    if np.all(d == 0):
        return DMResult(statistic=0.0, pvalue=1.0, n=t)
    from scipy.special import stdtr  # scipy.stats.t.cdf's own kernel, without its checks

    with np.errstate(divide="ignore", invalid="ignore"):
        # A constant non-zero d_t has zero variance: the statistic is ±huge (or inf) and p ≈ 0,
        # which is the right verdict (one forecast is always better).
        dm = float(_hac_t_of_mean(d, horizon - 1))
        adj = np.sqrt((t + 1 - (2 * horizon) + (horizon * (horizon - 1) / t)) / t)
        dm = adj * dm
        pvalue = 2 * stdtr(t - 1, -np.abs(dm))
    return DMResult(statistic=float(dm), pvalue=float(pvalue), n=t)


@lru_cache(maxsize=1024)
def _ols_constant(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(pinv (1, n), its normalized covariance (1, 1)) of the regressor ones((n, 1)), as
    statsmodels' OLS computes them (tools.pinv_extended: numpy's SVD, rcond 1e-15)."""
    x = np.ones((n, 1))
    u, s, vt = np.linalg.svd(x, False)
    cutoff = 1e-15 * np.maximum.reduce(s)
    s = np.where(s > cutoff, 1.0 / s, 0.0)
    pinv = np.dot(np.transpose(vt), np.multiply(s[:, np.newaxis], np.transpose(u)))
    cov = np.dot(pinv, np.transpose(pinv))
    pinv.flags.writeable = cov.flags.writeable = False
    return pinv, cov


def _hac_t_of_mean(d: np.ndarray, lags: int) -> float:
    """t of the mean of d with its Newey–West (Bartlett, `lags`) standard error, no small-sample
    correction: `OLS(d, ones).fit(cov_type="HAC", cov_kwds={"maxlags": lags}).tvalues[0]`."""
    beta, se = hac_mean_se(d, lags)
    return beta / se


def hac_mean_se(d: np.ndarray, lags: int) -> tuple[float, float]:
    """(mean of d, its Newey–West (Bartlett, `lags`) standard error), no small-sample
    correction: statsmodels' `OLS(d, ones).fit(cov_type="HAC", cov_kwds={"maxlags": lags})`
    params[0] and bse[0], the same numpy operations in the same order
    (tests/unit/test_metrics.py checks it bit for bit), without the model and results objects
    (≈ 0.8 ms a call; a universe backtest makes 36,600)."""
    pinv, cov = _ols_constant(d.size)
    beta = np.dot(pinv, d)[0]
    xu = d - beta  # wexog * resid with wexog = 1: d - X @ beta
    weights = 1 - np.arange(lags + 1) / (lags + 1.0)
    # statsmodels' x.T @ x_lag of (n, 1) columns is BLAS's dot of the two vectors.
    s = weights[0] * np.dot(xu, xu)
    for lag in range(1, lags + 1):
        g = np.dot(xu[lag:], xu[:-lag])
        s += weights[lag] * (g + g)
    hac = cov[0, 0] * s * cov[0, 0]
    return beta, np.sqrt(hac)


# --- cross-sectional information coefficient ----------------------------------------------------


@dataclass(frozen=True)
class ICSummary:
    """Mean and std of the daily IC, ICIR = mean / std (per origin date, not annualized)."""

    mean: float
    std: float
    icir: float
    n_dates: int


def daily_ic(dates, predicted, realized, method: ICMethod = "pearson") -> pd.Series:
    """Per origin date, corr(r̂_i, r_i) across tickers i (Pearson, or Spearman = Pearson of ranks).

    Dates with fewer than 3 tickers or with a constant r̂ or r are skipped (the correlation is
    undefined or meaningless there). Returns a Series indexed by date, sorted.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    rhat, r = _arrays(predicted=predicted, realized=realized)
    if rhat.ndim != 1:
        raise ValueError(f"predicted must be one-dimensional, got shape {rhat.shape}")
    dates = np.asarray(dates)
    if dates.shape != rhat.shape:
        raise ValueError(f"dates and predicted differ in shape: {dates.shape} vs {rhat.shape}")
    frame = pd.DataFrame({"date": dates, "p": rhat, "r": r})
    by_date = frame.groupby("date", sort=True)
    if method == "spearman":
        frame["p"] = by_date["p"].rank(method="average")
        frame["r"] = by_date["r"].rank(method="average")
        by_date = frame.groupby("date", sort=True)
    # Constancy by max == min, not by a computed variance: demeaning identical floats can leave
    # 1e-17 residues that would produce a spurious ±1 correlation.
    stats = by_date.agg(
        n=("p", "size"),
        p_min=("p", "min"),
        p_max=("p", "max"),
        r_min=("r", "min"),
        r_max=("r", "max"),
    )
    keep = stats.index[(stats.n >= 3) & (stats.p_max > stats.p_min) & (stats.r_max > stats.r_min)]
    frame = frame[frame["date"].isin(keep)]
    if frame.empty:
        return pd.Series(dtype=float, name="ic")
    grouped = frame.groupby("date", sort=True)
    dp = frame["p"] - grouped["p"].transform("mean")
    dr = frame["r"] - grouped["r"].transform("mean")
    sums = pd.DataFrame({"date": frame["date"], "pr": dp * dr, "pp": dp * dp, "rr": dr * dr})
    sums = sums.groupby("date", sort=True).sum()
    ic = sums["pr"] / np.sqrt(sums["pp"] * sums["rr"])
    return ic.rename("ic")


def ic_summary(dates, predicted, realized, method: ICMethod = "pearson") -> ICSummary:
    """Mean, std (ddof=1) and ICIR = mean/std of daily_ic; std/ICIR NaN with < 2 dates or std 0."""
    return summarize_ic(daily_ic(dates, predicted, realized, method))


def summarize_ic(ic: pd.Series) -> ICSummary:
    """ic_summary of a daily_ic series already computed (a caller that also tests its mean)."""
    n = int(ic.size)
    mean = float(ic.mean()) if n else float("nan")
    std = float(ic.std(ddof=1)) if n >= 2 else float("nan")
    icir = mean / std if n >= 2 and std > 0 else float("nan")
    return ICSummary(mean=mean, std=std, icir=icir, n_dates=n)


# --- prediction intervals -----------------------------------------------------------------------


def interval_coverage(actual, lower, upper) -> float | np.ndarray:
    """Share of actual prices inside the closed band: mean(lower ≤ y ≤ upper)."""
    y, lo, hi = _arrays(actual=actual, lower=lower, upper=upper)
    if np.any(lo > hi):
        raise ValueError("lower exceeds upper for some forecasts (crossed quantiles)")
    return _value(np.mean((y >= lo) & (y <= hi), axis=-1))


@dataclass(frozen=True)
class IntervalWidth:
    """Mean band width in dollars and relative to the origin close."""

    dollars: float
    relative: float


def interval_width(lower, upper, origin_price) -> IntervalWidth:
    """Mean width: dollars = mean(upper - lower), relative = mean((upper - lower) / P_t)."""
    # Relative to the close at the origin, the price known when the forecast was made, so widths
    # compare across tickers and across horizons of one origin.
    lo, hi, p = _arrays(lower=lower, upper=upper, origin_price=origin_price)
    if np.any(lo > hi):
        raise ValueError("lower exceeds upper for some forecasts (crossed quantiles)")
    if np.any(p <= 0):
        raise ValueError("origin_price must be positive")
    width = hi - lo
    return IntervalWidth(dollars=_value(width.mean(axis=-1)),
                         relative=_value((width / p).mean(axis=-1)))


def interval_scores(actual, lower, upper, coverage: float) -> np.ndarray:
    """Per forecast interval (Winkler) score at nominal coverage 1 - α (lower is better):

    IS = (u - l) + (2/α)(l - y)·1{y < l} + (2/α)(y - u)·1{y > u},

    which is (2/α) times the pinball loss of l at α/2 plus that of u at 1 - α/2 (Gneiting &
    Raftery 2007): a wide band pays its width, a narrow one pays 2/α per unit it misses by.
    """
    y, lo, hi = _arrays(actual=actual, lower=lower, upper=upper)
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    if np.any(lo > hi):
        raise ValueError("lower exceeds upper for some forecasts (crossed quantiles)")
    alpha = 1.0 - coverage
    return (hi - lo) + (2.0 / alpha) * (np.maximum(lo - y, 0.0) + np.maximum(y - hi, 0.0))


def interval_score(actual, lower, upper, coverage: float) -> float:
    """Mean interval score (see interval_scores)."""
    return float(np.mean(interval_scores(actual, lower, upper, coverage)))


TERCILES = ("calm", "middle", "turbulent")


def coverage_by_tercile(actual, lower, upper, volatility) -> dict[str, float]:
    """Coverage within the terciles of an ex-ante volatility: {calm, middle, turbulent}.

    Cut at the 1/3 and 2/3 quantiles of `volatility` (known at each origin); a tercile with no
    forecast (all volatilities equal, say) is NaN.
    """
    y, lo, hi, vol = _arrays(actual=actual, lower=lower, upper=upper, volatility=volatility)
    inside = (y >= lo) & (y <= hi)
    low, high = (c[..., None] for c in np.quantile(vol, [1 / 3, 2 / 3], axis=-1))
    groups = (vol <= low, (vol > low) & (vol <= high), vol > high)
    return {name: _share(np.count_nonzero(inside & g, axis=-1), np.count_nonzero(g, axis=-1))
            for name, g in zip(TERCILES, groups)}


# --- trading strategy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StrategyResult:
    """Performance of one strategy over non-overlapping periods; equity starts at 1."""

    kind: str
    cumulative_return: float
    sharpe: float
    max_drawdown: float
    n_periods: int
    equity: np.ndarray


def strategy_returns(predicted, realized, horizon: int, kind: StrategyKind) -> np.ndarray:
    """Simple period returns s_k = mean_{i present} pos_ki · (exp(r_ki) - 1) at rows 0, h, 2h, …

    `predicted` and `realized` are h-day log returns at consecutive origins (trading sessions),
    shape (n_origins,) for one ticker or (n_origins, n_tickers) for an equal-weight book. In a
    book, NaN (at the same places in both) marks a ticker without a forecast at that origin: it
    sits the period out and the weights are equal over the tickers present. Positions: long_flat
    1 if r̂ > 0 else 0; long_short sign(r̂); buy_and_hold 1. Only every h-th origin row is traded
    so holding periods never overlap and each day's return is counted once; no costs, no interest.
    """
    if kind not in STRATEGY_KINDS:
        raise ValueError(f"kind must be one of {', '.join(STRATEGY_KINDS)}; got {kind!r}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    rhat, r = np.asarray(predicted, dtype=float), np.asarray(realized, dtype=float)
    absent = np.zeros(rhat.shape, dtype=bool)
    if rhat.ndim == 2 and rhat.shape == r.shape:
        absent = np.isnan(rhat)
        if not np.array_equal(absent, np.isnan(r)):
            raise ValueError("predicted and realized must be NaN at the same places "
                             "(a ticker absent from the book at an origin)")
        rhat, r = np.where(absent, 0.0, rhat), np.where(absent, 0.0, r)
    rhat, r = _arrays(predicted=rhat, realized=r)
    if rhat.ndim not in (1, 2):
        raise ValueError(f"predicted must be 1-D or 2-D, got shape {rhat.shape}")
    rhat, r, absent = rhat[::horizon], r[::horizon], absent[::horizon]
    period = _period_returns(rhat, r, kind)
    if period.ndim == 1:
        return period
    present = (~absent).sum(axis=1)
    if not present.all():
        row = int(np.argmin(present)) * horizon
        raise ValueError(f"no ticker in the book at traded origin row {row}")
    period[absent] = 0.0  # an absent ticker adds nothing and is not counted
    return period.sum(axis=1) / present


def _period_returns(rhat: np.ndarray, r: np.ndarray, kind: StrategyKind) -> np.ndarray:
    """pos · (exp(r) - 1) of the traded rows: long_flat 1 if r̂ > 0 else 0, long_short sign(r̂),
    buy_and_hold 1."""
    if kind == "long_flat":
        position = (rhat > 0).astype(float)
    elif kind == "long_short":
        position = np.sign(rhat)
    else:
        position = np.ones_like(rhat)
    return position * np.expm1(r)


def series_strategies(predicted, realized, horizon: int, kind: StrategyKind
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """evaluate_strategy of each row of (G, n) one-ticker series: (cumulative return, Sharpe,
    max drawdown), each (G,), the floats each row gives alone."""
    if kind not in STRATEGY_KINDS:
        raise ValueError(f"kind must be one of {', '.join(STRATEGY_KINDS)}; got {kind!r}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    rhat, r = _arrays(predicted=predicted, realized=realized)
    s = _period_returns(rhat[..., ::horizon], r[..., ::horizon], kind)
    return cumulative_return(s), annualized_sharpe(s, horizon), max_drawdown(s)


def cumulative_return(period_returns) -> float | np.ndarray:
    """Compounded return: Π(1 + s_k) - 1."""
    (s,) = _arrays(period_returns=period_returns)
    return _value(np.prod(1.0 + s, axis=-1) - 1.0)


def annualized_sharpe(period_returns, horizon: int) -> float | np.ndarray:
    """Sharpe = mean(s) / std(s, ddof=1) · sqrt(252 / h), risk-free 0; NaN if std = 0 or n < 2."""
    (s,) = _arrays(period_returns=period_returns)
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if s.shape[-1] < 2:
        return _value(np.full(s.shape[:-1], np.nan))
    std = s.std(ddof=1, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = s.mean(axis=-1) / std * np.sqrt(TRADING_DAYS_PER_YEAR / horizon)
    return _value(np.where(std == 0, np.nan, sharpe))


def max_drawdown(period_returns) -> float | np.ndarray:
    """Max drawdown = max_k(1 - E_k / max_{j≤k} E_j), equity E_k = Π_{j≤k}(1 + s_j), E_0 = 1."""
    (s,) = _arrays(period_returns=period_returns)
    equity = np.concatenate([np.ones(s.shape[:-1] + (1,)), np.cumprod(1.0 + s, axis=-1)],
                            axis=-1)
    return _value(np.max(1.0 - equity / np.maximum.accumulate(equity, axis=-1), axis=-1))


def evaluate_strategy(predicted, realized, horizon: int, kind: StrategyKind) -> StrategyResult:
    """strategy_returns, then cumulative return, annualized Sharpe, max drawdown, equity curve."""
    s = strategy_returns(predicted, realized, horizon, kind)
    return StrategyResult(
        kind=kind,
        cumulative_return=cumulative_return(s),
        sharpe=annualized_sharpe(s, horizon),
        max_drawdown=max_drawdown(s),
        n_periods=int(s.size),
        equity=np.concatenate([[1.0], np.cumprod(1.0 + s)]),
    )
