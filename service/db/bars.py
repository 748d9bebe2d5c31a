"""All SQL for bars and tickers: idempotent upserts (per dialect), reads, refresh bookkeeping."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, and_, bindparam, func, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite

from service.core.bars import MARKET_RETURN, NUMERIC_COLUMNS, PRICE_COLUMNS, TICKER_BAR_COLUMNS
from service.db.guard import driver_errors
from service.db.models import Bar, MarketSession, Ticker

IN_CHUNK = 500  # tickers per IN (...) list


def in_chunks(items: Sequence, size: int = IN_CHUNK) -> Iterator[list]:
    """`items` in lists of at most `size` (an IN list, an executemany batch)."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])

COPY_TYPES = ["varchar", "date", "float8", "float8", "float8", "float8", "float8", "int8",
              "varchar"]
SQLITE_CHUNK_ROWS = 20_000  # rows per executemany call (progress granularity)


@dataclass(frozen=True)
class UpsertCount:
    """Rows offered to an upsert and how many of them were new or changed."""

    offered: int
    written: int

    @property
    def unchanged(self) -> int:
        return self.offered - self.written


def _prepare(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Dedupe on (ticker, date) keeping the last row: a key twice in one statement fails."""
    missing = [c for c in TICKER_BAR_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"bars frame lacks columns {missing}")
    out = frame.loc[:, list(TICKER_BAR_COLUMNS)].copy()
    out["date"] = pd.to_datetime(out["date"]).dt.date
    out = out.drop_duplicates(subset=["ticker", "date"], keep="last")
    out["volume"] = out["volume"].astype(np.int64)
    out["source"] = source
    return out


def _changed_clause(table, excluded):
    """Only rewrite a row whose values differ, so a re-ingest writes nothing."""
    return or_(*[table.c[c].is_distinct_from(excluded[c]) for c in NUMERIC_COLUMNS])


def _upsert_sqlite(conn: Connection, frame: pd.DataFrame,
                   progress: Callable[[int], None] | None) -> int:
    """SQLite path: one prepared INSERT ... ON CONFLICT DO UPDATE, executemany over chunks.

    Re-using one prepared statement is SQLite's fast path; compiling multi-row VALUES lists
    through the ORM costs more than the inserts themselves (measured in bench/ingest.py).
    """
    cols = [*TICKER_BAR_COLUMNS, "source"]
    changed = " OR ".join(f"{c} IS NOT excluded.{c}" for c in NUMERIC_COLUMNS)
    sets = ", ".join(f"{c} = excluded.{c}" for c in (*NUMERIC_COLUMNS, "source"))
    sql = (f"INSERT INTO bars ({', '.join(cols)}, ingested_at) "
           f"VALUES ({', '.join('?' for _ in cols)}, CURRENT_TIMESTAMP) "
           f"ON CONFLICT (ticker, date) DO UPDATE SET {sets}, ingested_at = CURRENT_TIMESTAMP "
           f"WHERE {changed}")
    frame = frame.assign(date=frame["date"].map(dt.date.isoformat))
    columns = [frame[c].tolist() for c in cols]
    rows = list(zip(*columns))
    cursor = conn.connection.driver_connection.cursor()
    written = 0
    try:
        with driver_errors(conn, sql):
            for i in range(0, len(rows), SQLITE_CHUNK_ROWS):
                part = rows[i : i + SQLITE_CHUNK_ROWS]
                before = conn.connection.driver_connection.total_changes
                cursor.executemany(sql, part)
                written += conn.connection.driver_connection.total_changes - before
                if progress:
                    progress(len(part))
    finally:
        cursor.close()
    return written


def _upsert_copy(conn: Connection, frame: pd.DataFrame,
                 progress: Callable[[int], None] | None) -> int:
    """Postgres fast path: COPY into a temp table, then one INSERT ... SELECT ... ON CONFLICT."""
    conn.execute(text(
        "CREATE TEMP TABLE bars_incoming (LIKE bars INCLUDING DEFAULTS) ON COMMIT DROP"
    ))
    cols = [*TICKER_BAR_COLUMNS, "source"]
    raw = conn.connection.driver_connection  # psycopg 3 connection
    step = 100_000
    # Binary COPY fed row tuples: ~5x faster than rendering the frame to CSV text first.
    copy_sql = f"COPY bars_incoming ({', '.join(cols)}) FROM STDIN (FORMAT BINARY)"
    with driver_errors(conn, copy_sql), raw.cursor() as cur, cur.copy(copy_sql) as cp:
        cp.set_types(COPY_TYPES)
        for i in range(0, len(frame), step):
            part = frame.iloc[i : i + step]
            for row in zip(*(part[c].tolist() for c in cols)):
                cp.write_row(row)
            if progress:
                progress(len(part))
    changed = " OR ".join(f"bars.{c} IS DISTINCT FROM excluded.{c}" for c in NUMERIC_COLUMNS)
    sets = ", ".join(f"{c} = excluded.{c}" for c in (*NUMERIC_COLUMNS, "source"))
    result = conn.execute(text(
        f"INSERT INTO bars ({', '.join(cols)}) SELECT {', '.join(cols)} FROM bars_incoming "
        f"ON CONFLICT (ticker, date) DO UPDATE SET {sets}, ingested_at = now() WHERE {changed}"
    ))
    return result.rowcount


def upsert_bars(conn: Connection, frame: pd.DataFrame, source: str,
                progress: Callable[[int], None] | None = None) -> UpsertCount:
    """Insert or update validated bars idempotently; returns offered and written row counts.

    Postgres goes through COPY + INSERT ... SELECT ... ON CONFLICT; SQLite through chunked
    multi-row INSERT ... ON CONFLICT DO UPDATE. Both skip rows whose values are unchanged.
    """
    if frame.empty:
        return UpsertCount(0, 0)
    prepared = _prepare(frame, source)
    if conn.dialect.name == "postgresql":
        written = _upsert_copy(conn, prepared, progress)
    else:
        written = _upsert_sqlite(conn, prepared, progress)
    tickers = prepared["ticker"].unique().tolist()
    refresh_ticker_ranges(conn, tickers)
    if written:
        bump_revisions(conn, tickers)
    return UpsertCount(len(prepared), written)


def bump_revisions(conn: Connection, tickers: Sequence[str]) -> None:
    """Mark the tickers' bars as changed (what the serving stores hold from before is stale).

    Every ticker of the written frame is bumped: which of them had a row change is not known
    per ticker, and a needless bump only costs one recomputation.
    """
    table = Ticker.__table__
    for part in in_chunks(tickers):
        conn.execute(table.update().where(table.c.symbol.in_(part))
                     .values(bars_revision=table.c.bars_revision + 1))


def refresh_ticker_ranges(conn: Connection, tickers: Sequence[str]) -> None:
    """Recompute first/last bar dates of `tickers` from the bars table."""
    if not tickers:
        return
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    for part in in_chunks(tickers):
        ranges = select(Bar.ticker, func.min(Bar.date), func.max(Bar.date)).where(
            Bar.ticker.in_(part)).group_by(Bar.ticker)
        stmt = insert(Ticker.__table__).from_select(
            ["symbol", "first_bar_date", "last_bar_date"], ranges)
        stmt = stmt.on_conflict_do_update(
            index_elements=["symbol"],
            set_={"first_bar_date": stmt.excluded.first_bar_date,
                  "last_bar_date": stmt.excluded.last_bar_date},
        )
        conn.execute(stmt)


def bar_revisions(conn: Connection, tickers: Sequence[str] | None = None) -> dict[str, int]:
    """Each ticker's bars revision (of `tickers`, or every ticker with stored bars)."""
    table = Ticker.__table__
    stmt = select(table.c.symbol, table.c.bars_revision).where(
        table.c.last_bar_date.is_not(None))
    if tickers is None:
        return {r[0]: r[1] for r in conn.execute(stmt)}
    out = {}
    for part in in_chunks(tickers):
        out.update({r[0]: r[1] for r in conn.execute(stmt.where(table.c.symbol.in_(part)))})
    return out


def record_refresh(conn: Connection, ticker: str, status: str, error: str | None = None,
                   at: dt.datetime | None = None) -> None:
    """Store the outcome of a refresh attempt (ok, unknown, error) for one ticker."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    at = at or dt.datetime.now(dt.UTC)
    values = {"last_refresh_at": at, "last_refresh_status": status, "last_refresh_error": error}
    stmt = insert(Ticker.__table__).values(symbol=ticker, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["symbol"], set_=values))


def record_no_bars(conn: Connection, ticker: str, status: str, error: str | None,
                   at: dt.datetime, expired_before: dt.datetime) -> None:
    """record_refresh for a ticker that has no bars (an unknown symbol, a failed first fetch),
    then deleting the records of such tickers last tried before `expired_before`: a record
    only throttles the next try for the refresh interval, so past it it is kept for nothing,
    and every symbol ever asked would otherwise stay a row. Never a ticker that ever had bars
    (bars_revision > 0: the serving stores' freshness counts on its revision)."""
    # The record first, then only the expired rows no other transaction holds (SKIP LOCKED):
    # deleting first took the other requests' rows before their own upserts (a deadlock).
    record_refresh(conn, ticker, status, error, at=at)
    table = Ticker.__table__
    expired = select(table.c.symbol).where(
        table.c.last_bar_date.is_(None), table.c.bars_revision == 0,
        table.c.last_refresh_at < expired_before, table.c.symbol != ticker)
    if conn.dialect.name == "postgresql":
        expired = expired.with_for_update(skip_locked=True)
    conn.execute(table.delete().where(table.c.symbol.in_(expired.scalar_subquery())))


@dataclass(frozen=True)
class TickerState:
    """The cache's bookkeeping for one ticker."""

    symbol: str
    first_bar_date: dt.date | None
    last_bar_date: dt.date | None
    last_refresh_at: dt.datetime | None
    last_refresh_status: str | None
    last_refresh_error: str | None
    bars_revision: int = 0


def _state(row) -> TickerState:
    at = row.last_refresh_at
    if at is not None and at.tzinfo is None:  # SQLite drops the offset; we always store UTC
        at = at.replace(tzinfo=dt.UTC)
    return TickerState(row.symbol, row.first_bar_date, row.last_bar_date, at,
                       row.last_refresh_status, row.last_refresh_error, row.bars_revision)


_TICKER_STATE = select(Ticker.__table__).where(Ticker.__table__.c.symbol == bindparam("ticker"))


def ticker_state(conn: Connection, ticker: str) -> TickerState | None:
    """The stored state of one ticker, or None if the cache has never seen it."""
    row = conn.execute(_TICKER_STATE, {"ticker": ticker}).first()  # built once: every request
    return None if row is None else _state(row)


def ticker_states(conn: Connection, tickers: Sequence[str]) -> dict[str, TickerState]:
    """The stored states of the tickers the cache has seen (one statement per IN_CHUNK; one
    ticker's is `ticker_state`'s, a statement built once)."""
    if len(tickers) == 1:
        state = ticker_state(conn, tickers[0])
        return {} if state is None else {tickers[0]: state}
    table = Ticker.__table__
    out: dict[str, TickerState] = {}
    for part in in_chunks(list(dict.fromkeys(tickers))):
        out.update((r.symbol, _state(r)) for r in conn.execute(
            select(table).where(table.c.symbol.in_(part))))
    return out


def list_tickers(conn: Connection) -> list[TickerState]:
    """Every ticker with at least one stored bar, by symbol."""
    table = Ticker.__table__
    rows = conn.execute(select(table).where(table.c.last_bar_date.is_not(None))
                        .order_by(table.c.symbol))
    return [_state(r) for r in rows]


def _frame(rows: Iterable[tuple], with_ticker: bool, market: bool = False) -> pd.DataFrame:
    cols = list(TICKER_BAR_COLUMNS if with_ticker else TICKER_BAR_COLUMNS[1:])
    if market:
        cols.append(MARKET_RETURN)
    df = pd.DataFrame.from_records(list(rows), columns=cols)
    df["date"] = pd.to_datetime(df["date"])
    for c in PRICE_COLUMNS:
        df[c] = df[c].astype(np.float64)
    df["volume"] = df["volume"].astype(np.int64)
    if market:  # NULL (a session the series lacks) -> NaN
        df[MARKET_RETURN] = pd.to_numeric(df[MARKET_RETURN], errors="coerce").astype(np.float64)
    return df


def _with_market(cols: list, market: bool):
    """The select with the market series' return on each bar's date (LEFT JOIN), if asked."""
    if not market:
        return select(*cols).select_from(Bar)
    return (select(*cols, MarketSession.market_return)
            .select_from(Bar).outerjoin(MarketSession, MarketSession.date == Bar.date))


def _range_filter(start: dt.date | None, end: dt.date | None):
    conds = []
    if start is not None:
        conds.append(Bar.date >= start)
    if end is not None:
        conds.append(Bar.date <= end)
    return conds


def read_bars(conn_or_engine: Connection | Engine, ticker: str, start: dt.date | None = None,
              end: dt.date | None = None, last: int | None = None,
              market: bool = False) -> pd.DataFrame:
    """One ticker's stored bars in [start, end] (or only the `last` N of them), oldest first.

    `market`: with a MARKET_RETURN column, the market series' return on each bar's date.
    """
    cols = [Bar.date, Bar.open, Bar.high, Bar.low, Bar.close, Bar.adj_close, Bar.volume]
    where = and_(Bar.ticker == ticker, *_range_filter(start, end))
    base = _with_market(cols, market)
    if last is not None:
        stmt = base.where(where).order_by(Bar.date.desc()).limit(last)
    else:
        stmt = base.where(where).order_by(Bar.date)
    rows = _execute(conn_or_engine, stmt)
    df = _frame(rows, with_ticker=False, market=market)
    if last is not None:
        df = df.iloc[::-1].reset_index(drop=True)
    return df


def read_bars_many(conn_or_engine: Connection | Engine, tickers: Sequence[str] | None = None,
                   start: dt.date | None = None, end: dt.date | None = None,
                   market: bool = False) -> pd.DataFrame:
    """Bars of several tickers (all if None) as one frame with a leading `ticker` column
    (and MARKET_RETURN, the market series' return on each bar's date, if `market`)."""
    cols = [Bar.ticker, Bar.date, Bar.open, Bar.high, Bar.low, Bar.close, Bar.adj_close,
            Bar.volume]
    conds = _range_filter(start, end)
    if tickers is not None:
        conds.append(Bar.ticker.in_(list(tickers)))
    stmt = _with_market(cols, market).where(*conds).order_by(Bar.ticker, Bar.date)
    return _frame(_execute(conn_or_engine, stmt), with_ticker=True, market=market)


def count_bars(conn_or_engine: Connection | Engine, ticker: str | None = None) -> int:
    """Number of stored bars (of one ticker, or all)."""
    stmt = select(func.count()).select_from(Bar)
    if ticker is not None:
        stmt = stmt.where(Bar.ticker == ticker)
    return int(_execute(conn_or_engine, stmt)[0][0])


def _execute(conn_or_engine: Connection | Engine, stmt) -> list[tuple]:
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.connect() as conn:
            return [tuple(r) for r in conn.execute(stmt)]
    return [tuple(r) for r in conn_or_engine.execute(stmt)]
