"""Volatility estimators of one ticker's bars, strictly causal: the value at t uses bars <= t.

One definition each, read by the features (model inputs), the scale-free training target and
the EWMA band baseline, so the volatility the network is scaled by is the one the baseline
forecasts with. All are daily (one-session) volatilities of log returns; NaN during warm-up.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from service.forecasting.windows import forward_log_returns

# RiskMetrics' daily decay (J.P. Morgan 1996): weight λ^i on the squared return i sessions ago.
EWMA_LAMBDA = 0.94
# Sessions of squared returns before the EWMA counts as defined (its own weights are normalised,
# so there is no arbitrary seed; this only keeps the first, noisiest estimates out).
EWMA_MIN_PERIODS = 20
# Daily volatility below this is treated as this (a flat price path has zero volatility, and the
# scale-free target divides by it). 1e-4 is a 0.01 % daily move, far below any traded stock's.
VOL_FLOOR = 1e-4


def log_returns(log_close: np.ndarray) -> np.ndarray:
    """r_t = y_t - y_{t-1} with r_0 = NaN (same length as the series)."""
    y = np.asarray(log_close, dtype=np.float64)
    out = np.empty_like(y)
    out[:1] = np.nan
    out[1:] = np.diff(y)
    return out


def ewma_volatility(returns: np.ndarray, lam: float = EWMA_LAMBDA,
                    min_periods: int = EWMA_MIN_PERIODS) -> np.ndarray:
    """σ_t = sqrt(Σ_i λ^i r²_{t-i} / Σ_i λ^i) over the defined returns up to t (zero-mean EWMA).

    A leading NaN return (r_0) is skipped; σ_t is NaN until `min_periods` returns are in.
    """
    r = pd.Series(np.asarray(returns, dtype=np.float64))
    var = (r * r).ewm(alpha=1.0 - lam, adjust=True, min_periods=min_periods,
                      ignore_na=True).mean()
    return np.sqrt(var.to_numpy())


def rms_volatility(returns: np.ndarray, window: int) -> np.ndarray:
    """σ_t = sqrt(mean of r² over the last `window` returns), zero-mean like the EWMA."""
    r = pd.Series(np.asarray(returns, dtype=np.float64))
    return np.sqrt((r * r).rolling(window, min_periods=window).mean().to_numpy())


def garman_klass_volatility(open_, high, low, close, window: int) -> np.ndarray:
    """Garman–Klass (1980): σ_t = sqrt(mean over `window` sessions of g_s), per session

    g_s = ½ ln(H_s/L_s)² − (2 ln 2 − 1) ln(C_s/O_s)²  (≥ 0 since |ln C/O| ≤ ln H/L).

    Ratios within one session, so a split or dividend between sessions does not enter it; it
    sees no overnight gap (the close-to-close EWMA does).
    """
    o, h, lo, c = (np.asarray(a, dtype=np.float64) for a in (open_, high, low, close))
    hl = np.log(h / lo)
    co = np.log(c / o)
    g = 0.5 * hl * hl - (2.0 * np.log(2.0) - 1.0) * co * co
    g = np.maximum(g, 0.0)  # rounding can leave -1e-20 on a flat bar
    return np.sqrt(pd.Series(g).rolling(window, min_periods=window).mean().to_numpy())


def origin_scale(sigma: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """max(σ_t, VOL_FLOOR) · √h: the scale of the h-day return from origin t, shape (N, H)."""
    s = np.maximum(np.asarray(sigma, dtype=np.float64), VOL_FLOOR)
    return s[:, None] * np.sqrt(np.asarray(horizons, dtype=np.float64))[None, :]


# --- range-based (HAR) volatility: the band's per-horizon scale ---------------------------------

# The HAR regressors' windows: the day, the week and the month of daily variances (Corsi 2009).
HAR_WINDOWS = (1, 5, 22)
# Bars up to an origin that its HAR σ reads: the monthly mean's 22 variances, each needing the
# bar before it (its gap), so 23 bars, the origin included.
HAR_WARMUP = HAR_WINDOWS[-1] + 1
HAR_KINDS = ("gk",)


def daily_variance(bars: pd.DataFrame, kind: str = "gk") -> np.ndarray:
    """Per-session variance proxy v_t from bar t and the adjusted close of t - 1, floored at
    VOL_FLOOR²: the Garman–Klass intraday term ½ ln(H/L)² − (2 ln 2 − 1) ln(C/O)² (≥ 0) plus
    the overnight gap² (Yang–Zhang style), gap_t = ln(O_t · adj_t / C_t) − ln(adj_{t-1}): the
    open adjusted by the day's adj_close / close factor, so a split or dividend is no gap.
    The first bar has no gap (NaN: its v is NaN, which the floor leaves NaN). A bar without
    trades (volume 0 and a flat range: a carried quote, a halted session) says nothing of the
    variance, and would put v at the floor (a HAR σ a quarter of the usual for a month, through
    the monthly mean): the last traded session's v stands in for it (NaN before any). Volume 0
    alone is no such bar: Yahoo reports none for FX pairs and many indices, whose ranges are
    real."""
    if kind not in HAR_KINDS:
        raise ValueError(f"daily variance kind must be one of {HAR_KINDS}, got {kind!r}")
    o, h, lo, c, adj = (bars[k].to_numpy(np.float64) for k in
                        ("open", "high", "low", "close", "adj_close"))
    log_adj = np.log(adj)
    hl, co = np.log(h / lo), np.log(c / o)
    g = np.maximum(0.5 * hl * hl - (2.0 * np.log(2.0) - 1.0) * co * co, 0.0)
    gap = np.full(log_adj.size, np.nan)
    gap[1:] = np.log(o * adj / c)[1:] - log_adj[:-1]
    v = np.maximum(g + gap * gap, VOL_FLOOR ** 2)
    untraded = (bars["volume"].to_numpy(np.float64) == 0) & (h <= lo)  # flat: no trade
    if untraded.any():
        v = pd.Series(np.where(untraded, np.nan, v)).ffill().to_numpy()
    return v


def _trailing_mean(v: np.ndarray, window: int) -> np.ndarray:
    """mean of v_{t-window+1..t} at every t (NaN before a full window, or over a NaN): each
    window's own sum, so the value at t depends on those `window` values only (not on where the
    series starts, as a running sum's rounding would)."""
    out = np.full(v.size, np.nan)
    if v.size >= window:
        out[window - 1:] = np.lib.stride_tricks.sliding_window_view(v, window).mean(axis=-1)
    return out


def har_regressors(v: np.ndarray) -> np.ndarray:
    """(n, 4): 1, log v_t, log mean v_{t-4..t}, log mean v_{t-21..t}; NaN in warm-up."""
    v = np.asarray(v, dtype=np.float64)
    return np.column_stack([np.ones(v.size), np.log(v),
                            *(np.log(_trailing_mean(v, w)) for w in HAR_WINDOWS[1:])])


def forward_log_mean(v: np.ndarray, h: int) -> np.ndarray:
    """y_t = log mean v_{t+1..t+h} (NaN where it runs past the end): the HAR's h-step target."""
    m = _trailing_mean(np.asarray(v, dtype=np.float64), h)  # mean v_{t-h+1..t}
    out = np.full(m.size, np.nan)
    out[:-h] = np.log(m[h:])
    return out


@dataclass(frozen=True)
class HarVolatility:
    """Direct h-step HAR on the daily variance proxy (daily_variance), one per h = 1..H:
    log mean v_{t+1..t+h} ≈ coef_h · (1, log v_t, log weekly mean, log monthly mean), and the
    h-day σ_h(t) = sqrt(c_h · h · exp ŷ_h(t)), c_h mapping the proxy onto close-to-close h-day
    variance (absorbing the log bias). Tuples, so it is hashable (a frozen ACISettings' field)."""

    coef: tuple[tuple[float, float, float, float], ...]  # (H, 4)
    c: tuple[float, ...]  # (H,)
    kind: str = "gk"

    def __post_init__(self):
        if len(self.coef) != len(self.c) or any(len(row) != 4 for row in self.coef):
            raise ValueError(f"HAR coef must be (H, 4) and c (H,), got "
                             f"{len(self.coef)} rows and {len(self.c)} factors")
        if self.kind not in HAR_KINDS or not all(x > 0 for x in self.c):
            raise ValueError(f"HAR kind must be one of {HAR_KINDS} and c positive")

    @property
    def horizon(self) -> int:
        return len(self.c)

    def sigma(self, bars: pd.DataFrame) -> np.ndarray:
        """(n, H) h-day σ at every bar from bars <= t (NaN in the warm-up)."""
        x = har_regressors(daily_variance(bars, self.kind))
        pred = x @ np.asarray(self.coef, dtype=np.float64).T  # (n, H)
        hs = np.arange(1, self.horizon + 1, dtype=np.float64)
        return np.sqrt(np.asarray(self.c, dtype=np.float64) * hs * np.exp(pred))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "coef": [list(row) for row in self.coef], "c": list(self.c)}

    @classmethod
    def from_dict(cls, d: dict) -> HarVolatility:
        return cls(coef=tuple(tuple(float(x) for x in row) for row in d["coef"]),
                   c=tuple(float(x) for x in d["c"]), kind=str(d.get("kind", "gk")))


def fit_har(bars_by_ticker: dict[str, pd.DataFrame], train_end: dt.date, horizon: int,
            kind: str = "gk") -> HarVolatility:
    """Pooled OLS per h = 1..horizon over the tickers' bars <= train_end only (a target that
    runs past train_end is dropped: the bars are cut there first); c_h the training mean of
    r²_{t,h} / (h exp ŷ_h), r_{t,h} the h-day log return of adj close."""
    xs, ys, rs = [], [[] for _ in range(horizon)], [[] for _ in range(horizon)]
    for bars in bars_by_ticker.values():
        b = bars.loc[pd.DatetimeIndex(bars["date"]) <= pd.Timestamp(train_end)]
        b = b.reset_index(drop=True)
        v = daily_variance(b, kind)
        xs.append(har_regressors(v))
        returns = forward_log_returns(b["adj_close"].to_numpy(np.float64), horizon)
        for i, h in enumerate(range(1, horizon + 1)):
            ys[i].append(forward_log_mean(v, h))
            rs[i].append(returns[:, i])
    x = np.concatenate(xs)
    coef, c = [], []
    for i, h in enumerate(range(1, horizon + 1)):
        y, r = np.concatenate(ys[i]), np.concatenate(rs[i])
        ok = np.isfinite(x).all(axis=1) & np.isfinite(y) & np.isfinite(r)
        if ok.sum() < 4:
            raise ValueError(f"too few training rows for the HAR at h={h}: {int(ok.sum())}")
        beta, *_ = np.linalg.lstsq(x[ok], y[ok], rcond=None)
        fit = x[ok] @ beta
        coef.append(tuple(float(b_) for b_ in beta))
        c.append(float(np.mean(r[ok] ** 2 / (h * np.exp(fit)))))
    return HarVolatility(coef=tuple(coef), c=tuple(c), kind=kind)
