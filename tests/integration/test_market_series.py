"""The market series follows the bars through the one write path, on SQLite and Postgres."""

from __future__ import annotations

import numpy as np
import pandas as pd
import sqlalchemy as sa

from service.db.bars import read_bars, read_bars_many
from service.db.market import read_market
from service.db.session import downgrade, make_engine, upgrade
from service.sources.ingest import ingest_frame
from service.sources.market import market_series
from service.sources.store import validate, write_bars
from tests.api_factories import store_bars
from tests.tiny_model import synthetic_bars_multi

BARS = synthetic_bars_multi(("AAA", "BBB", "CCC", "DDD"), n=90)
DATES = np.sort(BARS["date"].unique())


def _from_scratch(engine) -> pd.DataFrame:
    """The series a full recompute over every stored bar gives."""
    return market_series(read_bars_many(engine)[["ticker", "date", "adj_close"]])


def test_ingest_and_refresh_keep_the_series_equal_to_a_full_recompute(engine):
    early = BARS[BARS["date"] < DATES[60]]
    # DDD arrives late: its first 60 sessions are missing until the refresh below.
    ingest_frame(engine, early[early["ticker"] != "DDD"], source="test")
    first = read_market(engine)
    pd.testing.assert_frame_equal(first, _from_scratch(engine))
    assert first["n_tickers"].max() == 3
    # A refresh of two tickers' later bars, then DDD's whole history: each through write_bars.
    later = BARS[(BARS["date"] >= DATES[60]) & BARS["ticker"].isin(["AAA", "BBB"])]
    write_bars(engine, validate(later), "test")
    write_bars(engine, validate(BARS[BARS["ticker"] == "DDD"]), "test")
    write_bars(engine, validate(BARS[BARS["ticker"] == "CCC"]), "test")
    now = read_market(engine)
    pd.testing.assert_frame_equal(now, _from_scratch(engine))
    # DDD's history reached back to the first session: every session now counts all four.
    assert len(now) == len(DATES) - 1 and (now["n_tickers"] == 4).all()
    # A repeat write changes nothing, and reads carry the series on each bar's date.
    write_bars(engine, validate(BARS), "test")
    pd.testing.assert_frame_equal(read_market(engine), now)
    bars = read_bars(engine, "AAA", market=True)
    lookup = now.set_index("date")["market_return"]
    np.testing.assert_array_equal(bars["market_return"].to_numpy()[1:],
                                  lookup.reindex(bars["date"]).to_numpy()[1:])
    assert np.isnan(bars["market_return"].iloc[0])  # the first session has no market return
    assert "market_return" not in read_bars(engine, "AAA").columns


def test_a_later_write_leaves_earlier_sessions_bit_identical(engine):
    ingest_frame(engine, BARS[BARS["date"] < DATES[70]], source="test")
    before = read_market(engine)
    moved = BARS[BARS["date"] >= DATES[70]].copy()
    moved["adj_close"] *= 1.7  # any later bars whatever
    write_bars(engine, validate(moved), "test")
    after = read_market(engine)
    pd.testing.assert_frame_equal(after.iloc[: len(before)], before)
    pd.testing.assert_frame_equal(after, _from_scratch(engine))


def test_the_migration_derives_the_series_from_bars_already_cached(sqlite_url):
    upgrade(sqlite_url)
    store_bars(sqlite_url, BARS)
    downgrade(sqlite_url, "0003")
    engine = make_engine(sqlite_url)
    try:
        assert "market_series" not in sa.inspect(engine).get_table_names()
        upgrade(sqlite_url)
        pd.testing.assert_frame_equal(read_market(engine), _from_scratch(engine))
        assert len(read_market(engine)) == len(DATES) - 1
    finally:
        engine.dispose()


def test_the_bar_cache_serves_the_market_to_a_model_that_reads_it(engine):
    import datetime as dt

    from service.sources.cache import BarCache
    from tests.api_factories import Clock
    from tests.bar_factories import ScriptedSource

    ingest_frame(engine, BARS[BARS["ticker"] != "AAA"], source="test")
    history = BARS[BARS["ticker"] == "AAA"].drop(columns="ticker")
    now = dt.datetime.combine(history["date"].iloc[-1].date(), dt.time(21), tzinfo=dt.UTC)
    cache = BarCache(engine, ScriptedSource({"AAA": history}), clock=Clock(now))
    got = cache.get_bars("AAA", market=True)  # a cold read: fetched, written, the series moved
    assert got.fetched == len(history)
    market = read_market(engine)
    pd.testing.assert_frame_equal(market, _from_scratch(engine))
    lookup = market.set_index("date")["market_return"].reindex(got.bars["date"]).to_numpy()
    np.testing.assert_array_equal(got.bars["market_return"].to_numpy()[1:], lookup[1:])
    assert "market_return" not in cache.get_bars("AAA").bars.columns


def test_a_market_update_that_times_out_keeps_the_bars_and_the_refresh_rebuilds_it(
        pg_server_url):
    """Postgres: another writer holds the market lock past the API engine's statement bound. The
    bars commit anyway (their market update fails after them, logged), and `rebuild_market` —
    what `stockcast refresh` and the daily cycle run — then makes the series whole again."""
    from service.db.guard import DbBounds
    from service.db.market import MARKET_LOCK_KEY
    from service.db.session import reset_database
    from service.sources.market import rebuild_market

    reset_database(pg_server_url)
    setup = make_engine(pg_server_url)
    api = make_engine(pg_server_url, DbBounds(statement_seconds=0.5))
    try:
        ingest_frame(setup, BARS[BARS["ticker"] != "DDD"], source="test")
        before = read_market(setup)
        with setup.connect() as holder:  # a long market rewrite elsewhere, lock held
            holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MARKET_LOCK_KEY})
            count = write_bars(api, validate(BARS[BARS["ticker"] == "DDD"]), "test")
            holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MARKET_LOCK_KEY})
            holder.commit()
        assert count.written == len(DATES)
        assert len(read_bars(setup, "DDD")) == len(DATES)  # the bars are stored
        pd.testing.assert_frame_equal(read_market(setup), before)  # the series lags them
        rebuild_market(setup)
        pd.testing.assert_frame_equal(read_market(setup), _from_scratch(setup))
        assert (read_market(setup)["n_tickers"] == 4).all()
    finally:
        api.dispose()
        setup.dispose()


def test_rerunning_an_ingest_that_died_after_its_bars_repairs_the_series_and_features(engine):
    """Killed between its bars' commit and the steps after them, an ingest left 0 market
    sessions and 0 feature sets, and running it again wrote nothing and repaired nothing
    (`0 new or changed`; a hostile pass). Now the re-run fills what is missing, and a run with
    everything current changes nothing."""
    from service.db import features as store_db
    from service.db.bars import upsert_bars
    from service.evaluation import feature_store

    with engine.begin() as conn:  # the bars alone, as the killed run left them
        upsert_bars(conn, validate(BARS).bars, source="test")
    assert read_market(engine).empty
    again = ingest_frame(engine, BARS, source="test",
                         after_write=feature_store.after_bars_written)
    assert again.written == 0
    pd.testing.assert_frame_equal(read_market(engine), _from_scratch(engine))
    with engine.connect() as conn:
        sets = store_db.feature_sets(conn, feature_store.STORE_VERSION, ["AAA", "DDD"])
    assert sorted(sets) == ["AAA", "DDD"]
    series = read_market(engine)
    ingest_frame(engine, BARS, source="test", after_write=feature_store.after_bars_written)
    pd.testing.assert_frame_equal(read_market(engine), series)
    with engine.begin() as conn:
        assert feature_store.update_features(conn) == 0
