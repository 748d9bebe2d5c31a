"""Forward-return targets, their inverse back to prices, and sliding feature windows."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def forward_log_returns(adj_close: np.ndarray, horizon: int) -> np.ndarray:
    """(T, horizon) targets: [t, h-1] = log(adj_close[t+h] / adj_close[t]); NaN past the end."""
    prices = np.asarray(adj_close, dtype=np.float64)
    if prices.ndim != 1:
        raise ValueError(f"adj_close must be 1-D, got shape {prices.shape}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if not (np.isfinite(prices) & (prices > 0)).all():
        raise ValueError("adj_close must be finite and positive")
    log_price = np.log(prices)
    t = len(prices)
    targets = np.full((t, horizon), np.nan)
    # Each horizon is a direct cumulative return from the origin, not a chain of forecasts.
    for h in range(1, min(horizon, t - 1) + 1):
        targets[: t - h, h - 1] = log_price[h:] - log_price[: t - h]
    return targets


def prices_from_log_returns(close, log_returns) -> np.ndarray:
    """Prices P = close · exp(r): each origin's close carried by its log returns (any trailing axes).

    `close` holds one price per origin, shape (N,) (or a scalar); `log_returns` has shape (N, ...)
    such as (N,), (N, H) or (N, H, Q), and close broadcasts over its trailing axes. The one place
    the model's, the baselines' and the realized log returns become dollars (predictor, backtest,
    plots), so what the API serves and what the backtest scores are the same numbers.
    """
    close = np.asarray(close, dtype=np.float64)
    returns = np.asarray(log_returns, dtype=np.float64)
    if returns.shape[: close.ndim] != close.shape:
        raise ValueError(
            f"close {close.shape} must match the leading axes of log_returns {returns.shape}"
        )
    if not (np.isfinite(close) & (close > 0)).all():
        raise ValueError("close must be finite and positive")
    return close.reshape(close.shape + (1,) * (returns.ndim - close.ndim)) * np.exp(returns)


def make_windows(
    features: np.ndarray, targets: np.ndarray | None, window: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Windows X (N, window, F) float32, targets Y (N, H) float32 or None, origin rows (N,).

    Origin t is the window's last row (t >= window - 1); with targets, origins whose target row
    has any NaN (too close to the end of the series) are left out.
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (T, F), got shape {features.shape}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not np.isfinite(features).all():
        raise ValueError("features must be finite; drop warm-up rows first")
    n_rows, n_features = features.shape
    if targets is not None:
        targets = np.asarray(targets)
        if targets.ndim != 2 or len(targets) != n_rows:
            raise ValueError(
                f"targets must be 2-D with {n_rows} rows like features, got shape {targets.shape}"
            )

    if n_rows < window:
        origins = np.empty(0, dtype=np.int64)
        x = np.empty((0, window, n_features), dtype=np.float32)
    else:
        origins = np.arange(window - 1, n_rows, dtype=np.int64)
        # (N, F, window) view -> (N, window, F); no copy until the selection below.
        x = sliding_window_view(features, window, axis=0).transpose(0, 2, 1)
    if targets is None:
        return x.astype(np.float32), None, origins

    y = targets[origins]
    keep = ~np.isnan(y).any(axis=1)
    return x[keep].astype(np.float32), y[keep].astype(np.float32), origins[keep]


def last_window(features: np.ndarray, window: int) -> np.ndarray:
    """The most recent window (1, window, F) float32, the serving model's input."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (T, F), got shape {features.shape}")
    if len(features) < window:
        raise ValueError(f"need {window} feature rows for one window, got {len(features)}")
    return features[-window:][np.newaxis].astype(np.float32)
