"""Ranking signals scored beside the model, outside the baseline registry.

A signal is a Forecaster whose point forecast is meant to rank tickers, not to predict a level:
its IC, rank IC and long-short book are the comparison, its MAE is not. It is not a BASELINE,
so `stockcast backtest` does not score it; the rolling evaluation does.
"""

from __future__ import annotations

from typing import ClassVar, Self

import numpy as np

from service.forecasting.baselines import Baseline, _origins, _series

REVERSAL = "reversal"


class ReversalSignal(Baseline):
    """1-day reversal: ŷ[t, h] = -(y_t - y_{t-1}) for every h, yesterday's loser ranked first."""

    name: ClassVar[str] = REVERSAL
    title: ClassVar[str] = "1-day reversal"
    min_origin = 1

    def fit(self, train_log_close) -> Self:
        return self

    def predict(self, log_close, origins, horizon: int) -> np.ndarray:
        y = _series(log_close, "log_close")
        t = _origins(y, origins, horizon, self.min_origin, self.name)
        return np.repeat(-(y[t] - y[t - 1])[:, None], horizon, axis=1)
