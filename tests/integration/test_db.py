"""Schema, migrations and the idempotent upsert against real SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import inspect

from service.db import bars as bars_db
from service.db.session import downgrade, make_engine, upgrade
from tests.bar_factories import make_bars


def test_migrations_upgrade_downgrade_upgrade(db_url):
    engine = make_engine(db_url)
    assert {"bars", "tickers"} <= set(inspect(engine).get_table_names())
    downgrade(db_url, "base")
    assert not {"bars", "tickers"} & set(inspect(engine).get_table_names())
    upgrade(db_url)
    assert {"bars", "tickers"} <= set(inspect(engine).get_table_names())
    pk = inspect(engine).get_pk_constraint("bars")["constrained_columns"]
    assert pk == ["ticker", "date"]
    engine.dispose()


def test_sqlite_runs_in_wal_mode_with_busy_timeout(sqlite_url):
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    engine.dispose()


def test_upsert_is_idempotent_and_dedupes_the_batch(db_url):
    engine = make_engine(db_url)
    bars = make_bars(50, ticker="AAA")
    batch = pd.concat([bars, bars.iloc[[3]]])  # a key twice in one statement
    with engine.begin() as conn:
        first = bars_db.upsert_bars(conn, batch, source="test")
    assert (first.offered, first.written) == (50, 50)
    with engine.begin() as conn:
        again = bars_db.upsert_bars(conn, bars, source="test")
    assert (again.offered, again.written) == (50, 0)
    changed = bars.copy()
    changed.loc[10, "close"] = changed.loc[10, "high"]
    with engine.begin() as conn:
        third = bars_db.upsert_bars(conn, changed, source="test")
    assert third.written == 1
    stored = bars_db.read_bars(engine, "AAA")
    assert len(stored) == 50
    assert stored["close"].iloc[10] == pytest.approx(changed["close"].iloc[10])
    with engine.connect() as conn:
        state = bars_db.ticker_state(conn, "AAA")
    assert state.first_bar_date == bars["date"].iloc[0].date()
    assert state.last_bar_date == bars["date"].iloc[-1].date()
    engine.dispose()


def test_read_bars_range_and_last(db_url):
    engine = make_engine(db_url)
    bars = make_bars(30, ticker="BBB")
    with engine.begin() as conn:
        bars_db.upsert_bars(conn, bars, source="test")
    start, end = bars["date"].iloc[5].date(), bars["date"].iloc[9].date()
    part = bars_db.read_bars(engine, "BBB", start, end)
    assert part["date"].dt.date.tolist() == [d.date() for d in bars["date"].iloc[5:10]]
    tail = bars_db.read_bars(engine, "BBB", end=end, last=3)
    assert tail["date"].dt.date.tolist() == [d.date() for d in bars["date"].iloc[7:10]]
    assert list(tail.columns) == ["date", "open", "high", "low", "close", "adj_close", "volume"]
    many = bars_db.read_bars_many(engine, ["BBB"], start=dt.date(2000, 1, 1))
    assert many.columns[0] == "ticker" and len(many) == 30
    engine.dispose()


def test_a_reused_pooled_connection_is_pinged_on_postgres_only(db_url):
    # The API engine's checkout ping finds a server restarted or fallen silent; a SQLite file
    # has no server, and its `select 1` read nothing: not pinged.
    from service.db.guard import DbBounds

    engine = make_engine(db_url, DbBounds())
    pings = []
    ping = engine.dialect.do_ping
    engine.dialect.do_ping = lambda conn: pings.append(conn) or ping(conn)
    try:
        for _ in range(3):
            with engine.connect() as conn:
                assert conn.exec_driver_sql("select 1").scalar() == 1
    finally:
        engine.dispose()
    assert len(pings) == (0 if db_url.startswith("sqlite") else 2)  # the first is fresh
