"""Volatility estimators of one ticker's bars, strictly causal: the value at t uses bars <= t.

One definition each, read by the features (model inputs), the scale-free training target and
the EWMA band baseline, so the volatility the network is scaled by is the one the baseline
forecasts with. All are daily (one-session) volatilities of log returns; NaN during warm-up.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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
