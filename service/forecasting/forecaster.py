"""One interface for everything the backtest scores: the model and every baseline.

As darts' baselines subclass the same base as its models, a `Forecaster` is fitted on one
ticker's past (`fit`) and then forecasts from many origins of that ticker's bars at once
(`historical_forecasts`), each origin t from bars <= t only. Scoring those forecasts is a
separate step (service/evaluation/scoring.py), so the backtest loops over one list of methods.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Self

import numpy as np
import pandas as pd

from service.forecasting.spec import DEFAULT_LEVEL, band_indices
from service.forecasting.volatility import ewma_volatility, log_returns

MODEL = "model"  # the method name of the served model in every backtest table


class TickerSeries:
    """One ticker's bars (sorted by date, a fresh 0..n-1 index) and their log adjusted close."""

    def __init__(self, ticker: str, bars: pd.DataFrame):
        self.ticker = ticker
        self.bars = bars.reset_index(drop=True)

    @cached_property
    def dates(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self.bars["date"])

    @cached_property
    def log_close(self) -> np.ndarray:
        """log(adj_close), float64: what the baselines forecast and the targets are made of."""
        return np.log(self.bars["adj_close"].to_numpy(dtype=np.float64))

    @cached_property
    def volatility(self) -> np.ndarray:
        """The EWMA volatility of the daily log returns at every bar (NaN in its warm-up): once
        per series for the EWMA band, the blend's short volatility and the backtest's terciles."""
        return ewma_volatility(log_returns(self.log_close))

    def until(self, last: dt.date) -> TickerSeries:
        """The bars up to and including `last`: the past a forecaster may be fitted on."""
        return TickerSeries(self.ticker, self.bars.loc[self.dates <= pd.Timestamp(last)])


@dataclass(frozen=True)
class HistoricalForecasts:
    """One method's forecasts of one ticker: (N,) origin bar indices, (N, H, Q) log returns."""

    origins: np.ndarray  # positions in the ticker's bars the forecasts were made at
    log_returns: np.ndarray  # cumulative log return of adj close from origin to origin + h
    quantiles: tuple[float, ...]  # the Q levels; a point forecaster has (0.5,)

    @property
    def median(self) -> np.ndarray:
        """(N, H) float64 point forecast: the 0.5 quantile."""
        return self.log_returns[:, :, self.quantiles.index(0.5)].astype(np.float64)

    @property
    def band(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(lower, upper) (N, H) float64: the 10-90% band; None for a point forecaster."""
        return self.band_at(DEFAULT_LEVEL)

    def band_at(self, level: float) -> tuple[np.ndarray, np.ndarray] | None:
        """(lower, upper) (N, H) float64 of the central band at `level`; None without one."""
        if len(self.quantiles) < 2:
            return None
        lo, hi = band_indices(self.quantiles, level)
        return (self.log_returns[:, :, lo].astype(np.float64),
                self.log_returns[:, :, hi].astype(np.float64))

    def at(self, origins: np.ndarray) -> HistoricalForecasts:
        """Only the forecasts made at `origins` (a subset of self.origins, in its order)."""
        keep = np.isin(self.origins, origins)
        return HistoricalForecasts(self.origins[keep], self.log_returns[keep], self.quantiles)


class Forecaster(ABC):
    """fit on one ticker's past, then forecast h-day log returns from any of its origins."""

    name: ClassVar[str]
    quantiles: tuple[float, ...] = (0.5,)

    def preload(self) -> None:
        """Import what fitting and forecasting will need (nothing by default): called before a
        pool of processes forks, so each inherits the modules instead of importing them."""

    @abstractmethod
    def fit(self, history) -> Self:
        """Estimate parameters from the past only (a TickerSeries cut at the fit date)."""

    @abstractmethod
    def historical_forecasts(self, series: TickerSeries, origins: np.ndarray,
                             horizon: int) -> HistoricalForecasts:
        """Forecasts at the origins (bar indices) it can forecast from, each from bars <= t."""
