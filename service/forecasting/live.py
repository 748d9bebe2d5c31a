"""Scoring live forecasts once their outcome is known: pure numpy/pandas, no database.

A forecast made from the bars up to `as_of` for `horizon` trading days is due when the ticker's
`horizon`-th stored bar after `as_of` exists. Counting stored bars (not calendar days) is how the
backtest defines t+h too, so the two agree, whatever exchange the ticker trades on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

POOLED = "*"
SCORE_COLUMNS = ("realized_date", "realized_close", "error", "naive_error", "inside")


def score_forecasts(forecasts: pd.DataFrame, bars: pd.DataFrame) -> pd.DataFrame:
    """The due forecasts among `forecasts`, with their scores.

    forecasts: ticker, as_of, horizon, last_close, lower, median, upper (one row per forecast).
    bars: ticker, date, close, adj_close of the stored bars (at least from the earliest as_of).
    Returns the due rows with realized_date, realized_close, error (median - realized),
    naive_error (last_close - realized) and inside (lower <= realized <= upper).

    As in the backtest (service.evaluation.backtest), the realized close is the origin's
    stored close carried forward by the adjusted move, close_t * adj_{t+h} / adj_t: the quoted
    close_{t+h} unless a split or dividend falls in between, and then not a fake 50% miss.
    When the stored close at as_of differs from the recorded last_close, the source re-based
    past prices after the forecast: its prices are put on the stored base by that ratio.
    """
    out = []
    by_ticker = {t: g.sort_values("date") for t, g in bars.groupby("ticker", sort=False)}
    for ticker, group in forecasts.groupby("ticker", sort=False):
        stored = by_ticker.get(ticker)
        if stored is None or stored.empty:
            continue
        dates = pd.to_datetime(stored["date"]).to_numpy(dtype="datetime64[ns]")
        closes = stored["close"].to_numpy(dtype=np.float64)
        adjusted = stored["adj_close"].to_numpy(dtype=np.float64)
        as_of = pd.to_datetime(group["as_of"]).to_numpy(dtype="datetime64[ns]")
        after = np.searchsorted(dates, as_of, side="right")  # first bar after as_of
        target = after + group["horizon"].to_numpy(dtype=np.int64) - 1
        due = target < len(dates)
        if not due.any():
            continue
        rows = group.loc[due].copy()
        target, origin, as_of = target[due], np.maximum(after[due] - 1, 0), as_of[due]
        has_origin = (after[due] >= 1) & (dates[origin] == as_of)
        last_close = rows["last_close"].to_numpy(dtype=np.float64)
        base = np.where(has_origin, closes[origin] / last_close, 1.0)
        realized = np.where(has_origin, closes[origin] * adjusted[target] / adjusted[origin],
                            closes[target])
        rows["realized_date"] = pd.to_datetime(dates[target]).date
        rows["realized_close"] = realized
        rows["error"] = rows["median"].to_numpy(dtype=np.float64) * base - realized
        rows["naive_error"] = last_close * base - realized
        rows["inside"] = ((rows["lower"].to_numpy(dtype=np.float64) * base <= realized)
                          & (realized <= rows["upper"].to_numpy(dtype=np.float64) * base))
        out.append(rows)
    if not out:
        return forecasts.iloc[0:0].assign(**{c: [] for c in SCORE_COLUMNS})
    return pd.concat(out, ignore_index=True)


def relative_mae(mae: float, naive_mae: float) -> float:
    """mae / naive_mae; NaN when either is NaN or naive's error is 0."""
    return mae / naive_mae if naive_mae > 0 else float("nan")
