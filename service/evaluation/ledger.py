"""The forecast ledger: live forecasts in, scores when their bars arrive, live metrics out.

Every live forecast served (as of the latest cached bar, never an `as_of` what-if) is recorded
once per (ticker, as_of, model version, horizon), one row per horizon of the request: a 5-day
forecast records horizons 1..5. Whenever bars are written (ingest, refresh), `score_ledger`
scores the forecasts that have become due (service.forecasting.live has the numerics).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd
from sqlalchemy import Connection

from service.db import ledger as ledger_db
from service.db.bars import read_bars_many
from service.forecasting.live import POOLED, relative_mae, score_forecasts
from service.forecasting.spec import DEFAULT_LEVEL, band_indices
from service.inference.predictor import Forecast


def ledger_rows(forecast: Forecast, quantiles: Sequence[float]) -> list[dict]:
    """The ledger rows of one served forecast: one per step (horizon 1..len(steps)).

    `quantiles`: the model's. A row holds the step's `lower`/`upper`, the DEFAULT_LEVEL (80 %)
    band, so it is labelled with that band's quantiles (0.1, 0.9), not the model's outermost
    (0.05, 0.95, which the rows said until migration 0007 relabelled them).
    """
    lower_quantile, upper_quantile = (float(quantiles[i])
                                      for i in band_indices(tuple(quantiles), DEFAULT_LEVEL))
    return [
        {"ticker": forecast.ticker, "as_of": forecast.as_of,
         "model_version": forecast.model_version, "horizon": step.step,
         "target_date": step.date, "last_close": forecast.last_close, "lower": step.lower,
         "median": step.close, "upper": step.upper, "lower_quantile": lower_quantile,
         "upper_quantile": upper_quantile}
        for step in forecast.steps
    ]


def score_ledger(conn: Connection, tickers: Sequence[str] | None = None,
                 at: dt.datetime | None = None) -> int:
    """Score every recorded forecast (of `tickers`, or all) whose target bar is now stored."""
    due = ledger_db.unscored(conn, tickers)
    if due.empty:
        return 0
    bars = read_bars_many(conn, sorted(due["ticker"].unique()),
                          start=min(due["as_of"]))
    return ledger_db.store_scores(conn, score_forecasts(due, bars[["ticker", "date", "close", "adj_close"]]),
                                  at)


def live_report(conn: Connection, *, ticker: str | None = None, horizon: int | None = None,
                model_version: str | None = None, per_ticker: bool = True) -> pd.DataFrame:
    """Live metrics per (ticker or POOLED, horizon, model version) for the filters given.

    With a ticker, only that ticker's rows; without, per (horizon, model version) the pooled
    row first, then (per_ticker) each ticker's. rel_mae = mae / naive_mae on the same forecasts.
    """
    filters = {"horizon": horizon, "model_version": model_version}
    parts = []
    if ticker is None:
        parts.append(ledger_db.summarize(conn, pooled=POOLED, **filters))
    if ticker is not None or per_ticker:
        parts.append(ledger_db.summarize(conn, ticker=ticker, **filters))
    report = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    report["rel_mae"] = [relative_mae(m, n) for m, n in zip(report["mae"], report["naive_mae"])]
    order = report["ticker"].ne(POOLED)
    report = report.assign(_order=order).sort_values(
        ["model_version", "horizon", "_order", "ticker"], kind="stable")
    return report.drop(columns="_order").reset_index(drop=True)
