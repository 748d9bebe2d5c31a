"""All SQL of the market series (`market_series`): the closes it is derived from, its rows."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from service.db.bars import _execute
from service.db.locks import xact_lock
from service.db.models import Bar, MarketSession

MARKET_COLUMNS = ("date", "market_return", "n_tickers")
MARKET_LOCK_KEY = 0x6D6B7473  # pg_advisory_xact_lock key of the market series ("mkts")


def session_before(conn: Connection, day: dt.date) -> dt.date | None:
    """The last date any ticker has a bar before `day` (None: nothing earlier is cached)."""
    return conn.execute(select(func.max(Bar.date)).where(Bar.date < day)).scalar()


def sessions_missing(conn: Connection, since: dt.date, until: dt.date) -> bool:
    """Whether the stored series lacks a session of [since, until] that the bars have (a write
    that died between its bars and its series update; the first cached date has no session)."""
    first = conn.execute(select(func.min(Bar.date))).scalar()
    dates = conn.execute(select(func.count(func.distinct(Bar.date))).where(
        Bar.date >= since, Bar.date <= until, Bar.date > first)).scalar()
    stored = conn.execute(select(func.count()).select_from(MarketSession).where(
        MarketSession.date >= since, MarketSession.date <= until)).scalar()
    return stored < dates


def read_adj_closes(conn: Connection, since: dt.date | None = None) -> pd.DataFrame:
    """(ticker, date, adj_close) of every cached ticker on dates >= since (all if None)."""
    stmt = select(Bar.ticker, Bar.date, Bar.adj_close)
    if since is not None:
        stmt = stmt.where(Bar.date >= since)
    frame = pd.DataFrame.from_records([tuple(r) for r in conn.execute(stmt)],
                                      columns=["ticker", "date", "adj_close"])
    frame["date"] = pd.to_datetime(frame["date"])
    frame["adj_close"] = frame["adj_close"].astype(np.float64)
    return frame


def lock_market(conn: Connection) -> None:
    """Serialise market rewrites until this transaction ends.

    A writer then derives the series from bars every earlier writer has committed, so two
    concurrent refreshes of different tickers cannot leave a session computed without one. On
    SQLite too: with the closes read before its lock, another writer's bars and series were
    dropped from every session's count (a hostile pass, forced).
    """
    xact_lock(conn, [MARKET_LOCK_KEY])


def replace_market(conn: Connection, series: pd.DataFrame, since: dt.date | None) -> int:
    """Make the stored sessions >= since (all if None) those of `series`; returns rows written."""
    rows = [{"date": d.date(), "market_return": float(r), "n_tickers": int(n)}
            for d, r, n in zip(pd.DatetimeIndex(series["date"]), series["market_return"],
                               series["n_tickers"], strict=True)]
    gone = delete(MarketSession).where(MarketSession.date.not_in([r["date"] for r in rows]))
    if since is not None:
        gone = gone.where(MarketSession.date >= since)
    conn.execute(gone)
    if rows:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(MarketSession)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["date"],
            set_={"market_return": stmt.excluded.market_return,
                  "n_tickers": stmt.excluded.n_tickers}), rows)
    return len(rows)


def read_market(conn_or_engine: Connection | Engine, start: dt.date | None = None,
                end: dt.date | None = None) -> pd.DataFrame:
    """The stored market series in [start, end], oldest first (columns MARKET_COLUMNS)."""
    stmt = select(MarketSession.date, MarketSession.market_return, MarketSession.n_tickers)
    if start is not None:
        stmt = stmt.where(MarketSession.date >= start)
    if end is not None:
        stmt = stmt.where(MarketSession.date <= end)
    frame = pd.DataFrame.from_records(_execute(conn_or_engine, stmt.order_by(MarketSession.date)),
                                      columns=list(MARKET_COLUMNS))
    frame["date"] = pd.to_datetime(frame["date"])
    frame["market_return"] = frame["market_return"].astype(np.float64)
    frame["n_tickers"] = frame["n_tickers"].astype(np.int64)
    return frame
