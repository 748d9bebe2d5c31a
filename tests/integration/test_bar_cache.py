"""Read-through cache semantics on real SQLite and PostgreSQL; only the network source is scripted."""

from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import pandas as pd
import pytest

from service.core.errors import DatabaseUnavailable, InvalidTicker, SourceUnavailable, UnknownTicker
from service.db import bars as bars_db
from service.db.session import make_engine
from service.sources.cache import REBASE_OVERLAP_DAYS, BarCache
from tests.api_factories import Clock
from tests.bar_factories import ScriptedSource, make_bars, timeout_error

NOW = dt.datetime(2020, 7, 1, 21, 0, tzinfo=dt.UTC)  # a Wednesday evening


def full_history(ticker="AAPL", n=130):
    return make_bars(n, start="2020-01-01", ticker=ticker)  # business days up to 2020-07-01


def cached_40_days_ago(engine, first_bars):
    """A cache that stored `first_bars` 40 days before NOW; its clock is returned to move on."""
    source = ScriptedSource({"AAPL": first_bars})
    clock = Clock(NOW - dt.timedelta(days=40))
    cache = BarCache(engine, source, clock=clock)
    cache.get_bars("AAPL", end=first_bars["date"].iloc[-1].date())
    return source, clock, cache


def test_first_request_fetches_then_serves_from_db(engine):
    source = ScriptedSource({"AAPL": full_history()})
    cache = BarCache(engine, source, clock=Clock(NOW))
    first = cache.get_bars("aapl")
    assert first.ticker == "AAPL" and not first.stale and len(first.bars) == 130
    assert len(source.calls) == 1
    second = cache.get_bars("AAPL")
    assert len(source.calls) == 1  # served from the DB, no network
    pd.testing.assert_frame_equal(first.bars, second.bars)


def test_refresh_fetches_only_missing_dates(engine):
    history = full_history()
    source, clock, cache = cached_40_days_ago(engine, history.iloc[:100])
    source.frames["AAPL"] = history
    clock.now = NOW
    got = cache.get_bars("AAPL")
    last_stored = history["date"].iloc[99].date()
    # Incremental: from a week before the last stored bar (the re-base check), not from scratch.
    assert source.calls[-1][1] == last_stored - dt.timedelta(days=REBASE_OVERLAP_DAYS)
    assert len(source.calls) == 2
    assert len(got.bars) == 130 and got.fetched == 30  # the overlapping bars were unchanged


def test_a_split_upstream_refetches_and_rebases_the_stored_history(engine):
    history = full_history()
    source, clock, cache = cached_40_days_ago(engine, history.iloc[:100])
    # A 2:1 split after bar 100: Yahoo now serves every past price halved.
    rebased = history.copy()
    for c in ("open", "high", "low", "close", "adj_close"):
        rebased.loc[:, c] = rebased[c] / 2
    rebased["volume"] = rebased["volume"] * 2
    source.frames["AAPL"] = rebased
    clock.now = NOW
    got = cache.get_bars("AAPL")
    assert len(source.calls) == 3  # incremental, then the whole history again
    assert source.calls[-1][1] == history["date"].iloc[0].date()
    np.testing.assert_allclose(got.bars["close"], rebased["close"], rtol=1e-12)
    np.testing.assert_allclose(got.bars["adj_close"], rebased["adj_close"], rtol=1e-12)
    log_returns = np.diff(np.log(got.bars["adj_close"].to_numpy()))
    assert np.abs(log_returns).max() < 0.1  # no fake -69% day where the bases met


def test_a_corrected_partial_last_day_is_not_a_rebase(engine):
    history = full_history()
    partial = history.iloc[:100].copy()
    partial.loc[99, "close"] = partial.loc[99, "low"]  # stored mid-session
    source, clock, cache = cached_40_days_ago(engine, partial)
    source.frames["AAPL"] = history
    clock.now = NOW
    got = cache.get_bars("AAPL")
    assert len(source.calls) == 2  # no full re-fetch
    assert got.bars["close"].iloc[99] == pytest.approx(history["close"].iloc[99])  # corrected


def test_past_end_inside_stored_range_needs_no_fetch(engine):
    source = ScriptedSource({"AAPL": full_history()})
    cache = BarCache(engine, source, clock=Clock(NOW))
    cache.get_bars("AAPL")
    got = cache.get_bars("AAPL", end=dt.date(2020, 3, 2), last=10)
    assert len(source.calls) == 1
    assert got.bars["date"].iloc[-1] == pd.Timestamp("2020-03-02") and len(got.bars) == 10


def test_concurrent_refreshes_make_one_upstream_call(engine):
    source = ScriptedSource({"AAPL": full_history()}, delay=0.3)
    cache = BarCache(engine, source, clock=Clock(NOW))
    results, errors = [], []

    def worker():
        try:
            results.append(cache.get_bars("AAPL"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(source.calls) == 1
    assert all(len(r.bars) == 130 for r in results)
    assert bars_db.count_bars(engine, "AAPL") == 130  # no duplicates, nothing lost
    assert len(cache._locks) == 0  # per-ticker locks do not outlive the requests


def test_source_failure_with_cache_returns_stale_and_keeps_bars(engine):
    history = full_history()
    source, clock, cache = cached_40_days_ago(engine, history.iloc[:100])
    clock.now = NOW
    source.fail_with = timeout_error()
    got = cache.get_bars("AAPL")
    assert got.stale is True
    assert got.warnings == (("bars for AAPL may be out of date: yfinance unavailable for AAPL "
                             "after 3 attempts: timed out"),)
    assert len(got.bars) == 100
    # Within the refresh interval the failure is not retried, but still reported as stale.
    again = cache.get_bars("AAPL")
    assert again.stale is True and len(source.calls) == 2
    with engine.connect() as conn:
        state = bars_db.ticker_state(conn, "AAPL")
    assert state.last_refresh_status == "error"
    assert bars_db.count_bars(engine, "AAPL") == 100


def test_source_failure_without_cache_raises_source_unavailable(engine):
    source = ScriptedSource()
    source.fail_with = timeout_error("MSFT")
    cache = BarCache(engine, source, clock=Clock(NOW))
    with pytest.raises(SourceUnavailable, match="yfinance unavailable for MSFT after 3 attempts"):
        cache.get_bars("MSFT")
    assert bars_db.count_bars(engine) == 0


def test_throttled_retry_of_a_failed_first_fetch_still_says_source_unavailable(engine):
    source = ScriptedSource()
    source.fail_with = timeout_error("MSFT")
    cache = BarCache(engine, source, clock=Clock(NOW))
    for _ in range(2):
        with pytest.raises(SourceUnavailable,
                           match="yfinance unavailable for MSFT after 3 attempts: timed out"):
            cache.get_bars("MSFT")
    assert len(source.calls) == 1  # the second request is throttled, not sent upstream


def test_throttled_retry_of_an_unknown_ticker_still_says_unknown(engine):
    source = ScriptedSource()
    cache = BarCache(engine, source, clock=Clock(NOW))
    for _ in range(2):
        with pytest.raises(UnknownTicker, match="unknown ticker 'ZZZZ': the source returned"):
            cache.get_bars("ZZZZ")
    assert len(source.calls) == 1


def test_unknown_ticker_raises_and_stores_nothing(engine):
    source = ScriptedSource({"AAPL": full_history()})
    cache = BarCache(engine, source, clock=Clock(NOW))
    cache.get_bars("AAPL")
    with pytest.raises(UnknownTicker, match="unknown ticker 'ZZZZ': the source returned no bars"):
        cache.get_bars("ZZZZ")
    assert bars_db.count_bars(engine) == 130  # AAPL intact


def _symbols(engine) -> set[str]:
    with engine.connect() as conn:
        return {s for (s,) in conn.exec_driver_sql("select symbol from tickers")}


def test_a_record_of_a_ticker_without_bars_goes_once_it_throttles_nothing(engine):
    """Every unknown symbol asked left a row behind for good (a hostile pass grew the table
    from 489 to 501 with names like '-' and 'ZZZZ'); a record only throttles the next try for
    the refresh interval, so a later failure clears the expired ones (never a ticker with bars,
    nor a failed first fetch still within its interval)."""
    source = ScriptedSource({"AAPL": full_history()})
    clock = Clock(NOW)
    cache = BarCache(engine, source, clock=clock, refresh_interval=dt.timedelta(hours=1))
    cache.get_bars("AAPL")
    for name in ("ZZZZ", "YYYY"):
        with pytest.raises(UnknownTicker):
            cache.get_bars(name)
    assert _symbols(engine) == {"AAPL", "ZZZZ", "YYYY"}
    clock.now = NOW + dt.timedelta(minutes=59)
    source.fail_with = timeout_error("MSFT")
    with pytest.raises(SourceUnavailable):
        cache.get_bars("MSFT")  # a failed first fetch: recorded; ZZZZ, YYYY still within 1 h
    assert _symbols(engine) == {"AAPL", "ZZZZ", "YYYY", "MSFT"}
    clock.now = NOW + dt.timedelta(minutes=61)
    source.fail_with = None
    with pytest.raises(UnknownTicker):
        cache.get_bars("XXXX")
    assert _symbols(engine) == {"AAPL", "MSFT", "XXXX"}  # ZZZZ and YYYY expired, then went
    with pytest.raises(SourceUnavailable):  # MSFT's record still throttles (59 min + 2 min)
        cache.get_bars("MSFT")
    assert [c[0] for c in source.calls] == ["AAPL", "ZZZZ", "YYYY", "MSFT", "XXXX"]
    assert bars_db.count_bars(engine) == 130  # AAPL intact


def test_a_name_without_a_letter_or_digit_is_no_ticker(engine):
    source = ScriptedSource()
    cache = BarCache(engine, source, clock=Clock(NOW))
    for name in ("-", "..", "=^", "^"):
        with pytest.raises(InvalidTicker, match="a symbol needs a letter or a digit"):
            cache.get_bars(name)
    assert source.calls == [] and _symbols(engine) == set()
    for name in ("^GSPC", "BRK-B", "EURUSD=X", "A"):  # Yahoo's own stay valid
        with pytest.raises(UnknownTicker):
            cache.get_bars(name)


def test_bad_rows_from_source_are_dropped_and_counted(engine):
    history = full_history()
    history.loc[5, "high"] = history.loc[5, "low"] / 2  # high < low
    history.loc[6, "close"] = float("nan")
    source = ScriptedSource({"AAPL": history})
    got = BarCache(engine, source, clock=Clock(NOW)).get_bars("AAPL")
    assert len(got.bars) == 128
    assert got.warnings and "AAPL: source returned 130 rows, rejected 2" in got.warnings[0]


def test_a_bar_dated_after_the_clocks_today_is_refused_and_todays_is_stored(engine):
    # A source running ahead of the cache's clock: today's bar (Wed 2020-07-01, NOW) is kept,
    # Thursday's and Friday's are rejected as future_date; before, all three were stored.
    history = full_history(n=133)  # to Fri 2020-07-03
    source, clock, cache = cached_40_days_ago(engine, history.iloc[:100])
    before = bars_db.read_bars(engine, "AAPL")
    source.frames["AAPL"] = history
    clock.now = NOW
    got = cache.get_bars("AAPL")
    offered = int((history["date"] >= pd.Timestamp(source.calls[-1][1])).sum())
    assert got.warnings == (
        f"AAPL: source returned {offered} rows, rejected 2 (future_date=2)",)
    stored = bars_db.read_bars(engine, "AAPL")
    assert len(stored) == 131 and stored["date"].iloc[-1] == pd.Timestamp("2020-07-01")
    assert stored.iloc[:100].equals(before)


def test_invalid_ticker_is_rejected_before_sql_or_source(engine):
    source = ScriptedSource()
    cache = BarCache(engine, source, clock=Clock(NOW))
    with pytest.raises(InvalidTicker):
        cache.get_bars("AAPL; drop table bars")
    assert source.calls == []


def test_database_down_is_a_typed_error(tmp_path):
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    cache = BarCache(engine, ScriptedSource(), clock=Clock(NOW))
    with pytest.raises(DatabaseUnavailable, match="bar database unavailable: OperationalError"):
        cache.get_bars("AAPL")


# -- pruning under concurrency (review) --

RACE_NOW = dt.datetime(2026, 12, 2, 1, 0, tzinfo=dt.UTC)


def _expired_pairs_at_once(engine, prefix, work):
    """30 rounds: two tickers whose records expired, then work(name) for both at once."""
    for round_ in range(30):
        names = [f"{prefix}{round_}A", f"{prefix}{round_}B"]
        with engine.begin() as conn:
            for n in names:
                bars_db.record_refresh(conn, n, "unknown", "x",
                                       at=RACE_NOW - dt.timedelta(hours=2))
        barrier = threading.Barrier(len(names))

        def run(name, barrier=barrier):
            barrier.wait()
            work(name)

        threads = [threading.Thread(target=run, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def test_two_concurrent_no_bar_records_do_not_deadlock(engine):
    errors = []

    def record(name):
        try:
            with engine.begin() as conn:
                bars_db.record_no_bars(conn, name, "unknown", "no", at=RACE_NOW,
                                       expired_before=RACE_NOW - dt.timedelta(hours=1))
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc)[:200])

    _expired_pairs_at_once(engine, "R", record)
    assert errors == []


def test_two_unknown_tickers_asked_at_once_are_both_404_not_503(engine):
    """The same race through the cache: each request ends UnknownTicker (404); deleting the
    expired rows before its own upsert deadlocked Postgres (503; found by review)."""
    cache = BarCache(engine, ScriptedSource(), clock=lambda: RACE_NOW,
                     refresh_interval=dt.timedelta(hours=1))
    outcomes = []

    def ask(name):
        try:
            cache.get_bars(name)
        except Exception as exc:  # noqa: BLE001
            outcomes.append(type(exc).__name__)

    _expired_pairs_at_once(engine, "Q", ask)
    assert set(outcomes) == {UnknownTicker.__name__}, sorted(outcomes)
