"""Synthetic bars and a stand-in for the network source (the only thing tests stub)."""

from __future__ import annotations

import datetime as dt
import threading
import time

import numpy as np
import pandas as pd

from service.core.errors import SourceUnavailable, UnknownTicker


def make_bars(n: int = 120, start: str = "2020-01-02", seed: int = 0, price: float = 100.0,
              ticker: str | None = None) -> pd.DataFrame:
    """A valid random-walk bars frame on business days."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, periods=n)
    close = price * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = close * np.exp(rng.normal(0, 0.003, n))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n))
    df = pd.DataFrame({"date": dates, "open": open_, "high": high, "low": low, "close": close,
                       "adj_close": close * 0.98, "volume": rng.integers(1e5, 1e7, n)})
    if ticker:
        df.insert(0, "ticker", ticker)
    return df


def random_future(bars: pd.DataFrame, after, seed: int = 0) -> pd.DataFrame:
    """`bars` with every bar dated after `after` replaced by independently drawn valid OHLCV.

    The look-ahead tests' future: each bar's close, open, adj_close / close ratio and volume
    drawn afresh (prices anywhere in e^±2 of the last kept close, volumes in e^±3 of the kept
    bars' median, so the future's extremes are seldom the past's), high >= max(open, close),
    low <= min(open, close): nothing a feature computes (a ratio, a rank, a demeaned or
    scale-free value, an extreme) survives it by accident. Dates stay as they were.
    """
    out = bars.copy()
    later = (out["date"] > pd.Timestamp(after)).to_numpy()
    n = int(later.sum())
    if n == 0:
        raise ValueError(f"no bar after {after}: nothing to scramble")
    rng = np.random.default_rng(seed)
    ref = float(out.loc[~later, "close"].iloc[-1]) if (~later).any() else 100.0
    ref_volume = float(out.loc[~later, "volume"].median()) if (~later).any() else 1e6
    close = ref * np.exp(rng.uniform(-2.0, 2.0, n))
    open_ = ref * np.exp(rng.uniform(-2.0, 2.0, n))
    high = np.maximum(open_, close) * np.exp(rng.uniform(0.0, 0.2, n))
    low = np.minimum(open_, close) * np.exp(-rng.uniform(0.0, 0.2, n))
    values = {"open": open_, "high": high, "low": low, "close": close,
              "adj_close": close * rng.uniform(0.3, 1.0, n),
              "volume": np.round(max(ref_volume, 1.0) * np.exp(rng.uniform(-3.0, 3.0, n)))}
    for column, drawn in values.items():
        out.loc[later, column] = drawn.astype(out[column].dtype)
    return out


class ScriptedSource:
    """A BarSource that serves prepared frames, counts calls, and can fail on demand."""

    name = "scripted"

    def __init__(self, frames: dict[str, pd.DataFrame] | None = None, delay: float = 0.0):
        self.frames = frames or {}
        self.delay = delay
        self.calls: list[tuple[str, dt.date | None, dt.date | None]] = []
        self.fail_with: Exception | None = None
        self._lock = threading.Lock()

    def fetch(self, ticker, start=None, end=None):
        with self._lock:
            self.calls.append((ticker, start, end))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        if ticker not in self.frames:
            raise UnknownTicker(f"unknown ticker {ticker!r}: the source returned no bars")
        df = self.frames[ticker]
        mask = pd.Series(True, index=df.index)
        if start is not None:
            mask &= df["date"] >= pd.Timestamp(start)
        if end is not None:
            mask &= df["date"] <= pd.Timestamp(end)
        out = df.loc[mask].drop(columns=["ticker"], errors="ignore").reset_index(drop=True)
        if out.empty:
            raise UnknownTicker(f"unknown ticker {ticker!r}: the source returned no bars")
        return out


def timeout_error(ticker: str = "AAPL") -> SourceUnavailable:
    return SourceUnavailable(f"yfinance unavailable for {ticker} after 3 attempts: timed out")
