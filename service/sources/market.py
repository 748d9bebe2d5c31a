"""The market series: the equal-weighted cross-section of the cached tickers, kept as bars arrive.

On each session t (a date any cached ticker has a bar) the market return is

    m_t = mean over tickers i with bars on t and on the session before of log(adj_i,t / adj_i,t-1)

with n_t such tickers. Session t reads bars on t and the one session before, so the series is
causal, and rewriting it from a date d on only needs the bars from the session before d. The
one bar write path (store.write_bars) rewrites it from the first date it wrote, in the same
transaction as the bars; features read it (forecasting/features.py: market_return,
excess_return, market_vol) as a column joined onto a ticker's bars by date.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine

from service.db.market import lock_market, read_adj_closes, replace_market, session_before


def market_series(closes: pd.DataFrame) -> pd.DataFrame:
    """(date, market_return, n_tickers) per session after the first of a (ticker, date,
    adj_close) frame; a session where no ticker has a bar on the one before is left out."""
    if closes.empty:
        return pd.DataFrame({"date": pd.Series(dtype="datetime64[ns]"),
                             "market_return": pd.Series(dtype=np.float64),
                             "n_tickers": pd.Series(dtype=np.int64)})
    wide = closes.pivot(index="date", columns="ticker", values="adj_close").sort_index()
    returns = np.log(wide).diff().iloc[1:]  # NaN unless the ticker has both sessions' bars
    n = returns.count(axis=1)
    out = pd.DataFrame({"date": returns.index, "market_return": returns.mean(axis=1).to_numpy(),
                        "n_tickers": n.to_numpy(dtype=np.int64)})
    return out[out["n_tickers"] > 0].reset_index(drop=True)


def update_market(conn: Connection, since: dt.date | None = None) -> int:
    """Rewrite the stored market sessions >= since (all if None) from the cached bars."""
    lock_market(conn)
    before = None if since is None else session_before(conn, since)
    series = market_series(read_adj_closes(conn, before if before is not None else since))
    if since is not None:
        series = series[series["date"] >= pd.Timestamp(since)]
    return replace_market(conn, series, since)


def rebuild_market(engine: Engine) -> int:
    """Rewrite the whole market series from the cached bars (its own transaction): the repair
    for a write whose market update failed; `stockcast refresh` and the daily cycle run it."""
    with engine.begin() as conn:
        return update_market(conn, None)
