"""`BarCache.refresh_many` / `stockcast refresh` over recorded multi-ticker yfinance frames:
one batched download per chunk, then each ticker through the single-refresh path."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from yfinance.exceptions import YFTickerMissingError

from service.db.bars import read_bars, ticker_state
from service.db.session import make_engine
from service.sources.breaker import CircuitBreaker
from service.sources.cache import BarCache
from service.sources.yfinance import YFinanceSource
from tests.api_factories import store_bars

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "yfinance"
# Saturday noon: Friday 2024-03-15 is the last session due, and it is over everywhere.
NOW = dt.datetime(2024, 3, 16, 12, 0, tzinfo=dt.UTC)


def load_download(name: str = "download_aapl_msft_zzzz_2024-03.csv") -> pd.DataFrame:
    """A recorded yf.download(group_by="ticker") frame: (Ticker, Price) columns, naive dates."""
    return pd.read_csv(FIXTURES / name, header=[0, 1], index_col=0, parse_dates=True)


class RecordedDownload:
    """yf.download stand-in: the recorded frame restricted to the asked tickers and range."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.calls: list[dict] = []

    def __call__(self, **request) -> pd.DataFrame:
        self.calls.append(request)
        frame = self.frame
        if "start" in request:
            frame = frame[frame.index >= pd.Timestamp(request["start"])]
        if "end" in request:
            frame = frame[frame.index < pd.Timestamp(request["end"])]  # exclusive upstream
        wanted = [t for t in request["tickers"] if t in frame.columns.get_level_values(0)]
        return frame.loc[:, wanted]


class SingleHistory:
    """yf.Ticker stand-in for the single-ticker path: history() from the same recording."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, ticker: str):
        outer = self

        class _Ticker:
            def history(self, **request):
                outer.calls.append((ticker, request))
                if ticker not in outer.frame.columns.get_level_values(0):
                    raise YFTickerMissingError(ticker, "no data found, symbol may be delisted")
                history = outer.frame[ticker].dropna(how="all")
                if "start" in request:
                    history = history[history.index >= pd.Timestamp(request["start"])]
                return history

        return _Ticker()


def recorded_source(tmp_path, frame: pd.DataFrame):
    download, single = RecordedDownload(frame), SingleHistory(frame)
    source = YFinanceSource(cache_dir=tmp_path / "yf", retries=0, download=download,
                            ticker_factory=single, today=lambda: NOW)
    return source, download, single


def stored_first_week(url: str, frame: pd.DataFrame, scale: float = 1.0) -> None:
    """AAPL and MSFT bars 2024-03-04..08 as they were recorded (scaled: a re-base later)."""
    rows = []
    for ticker in ("AAPL", "MSFT"):
        week = frame[ticker].loc[:"2024-03-08"]
        rows.append(pd.DataFrame({
            "ticker": ticker, "date": week.index, "open": week["Open"] * scale,
            "high": week["High"] * scale, "low": week["Low"] * scale,
            "close": week["Close"] * scale, "adj_close": week["Adj Close"] * scale,
            "volume": week["Volume"].astype("int64")}))
    store_bars(url, pd.concat(rows, ignore_index=True))


def test_a_batched_refresh_stores_each_ticker_as_a_single_refresh_would(db_url, tmp_path):
    frame = load_download()
    stored_first_week(db_url, frame)
    source, download, single = recorded_source(tmp_path, frame)
    engine = make_engine(db_url)
    try:
        cache = BarCache(engine, CircuitBreaker(source), clock=lambda: NOW)
        report = cache.refresh_many(["AAPL", "msft", "ZZZZ"], chunk=2)
        assert report.outcomes == {"AAPL": "updated", "MSFT": "updated", "ZZZZ": "unknown"}
        # One download per chunk; ZZZZ, left out of its batch, was asked on its own.
        assert [c["tickers"] for c in download.calls] == [["AAPL", "MSFT"], ["ZZZZ"]]
        assert download.calls[0]["group_by"] == "ticker" and download.calls[0]["threads"]
        assert download.calls[0]["start"] == dt.date(2024, 3, 1)  # last stored bar - 7 days
        assert [t for t, _ in single.calls] == ["ZZZZ"]
        aapl = read_bars(engine, "AAPL")
        msft = read_bars(engine, "MSFT")
        assert aapl["date"].iloc[-1] == pd.Timestamp("2024-03-15")
        # MSFT's partial last session (no volume yet) is rejected by the validator.
        assert msft["date"].iloc[-1] == pd.Timestamp("2024-03-14")
        assert msft["close"].iloc[-1] == pytest.approx(425.22)
        assert report.written == (len(aapl) - 5) + (len(msft) - 5) == 9
        with engine.connect() as conn:
            assert ticker_state(conn, "ZZZZ").last_refresh_status == "unknown"
            assert ticker_state(conn, "AAPL").last_refresh_status == "ok"
        # Run again: nothing is due (AAPL current; MSFT and ZZZZ tried within the interval).
        again = cache.refresh_many(["AAPL", "MSFT", "ZZZZ"])
        assert again.counts()["current"] == 1 and again.counts()["throttled"] == 2
        assert len(download.calls) == 2
        assert "updated=2, unknown=1" in report.summary()
    finally:
        engine.dispose()


def test_a_batch_refresh_rebuilds_the_market_series_once_at_its_end(db_url, tmp_path,
                                                                    monkeypatch):
    # refresh_tickers' writes leave the market series alone (each would rewrite it over the
    # whole cross-section from its first date) and rebuild it once at the end: the series then
    # equals a full recompute over every stored bar, as the per-write updates left it.
    from service.core.config import Settings
    from service.db.bars import read_bars_many
    from service.db.market import read_market
    from service.sources import base
    from service.sources.ingest import refresh_tickers
    from service.sources.market import market_series
    from service.sources.store import validate, write_bars

    frame = load_download()
    stored_first_week(db_url, frame)
    source, download, _ = recorded_source(tmp_path, frame)
    monkeypatch.setattr(base, "make_source", lambda settings: source)  # the recorded network
    engine = make_engine(db_url)
    try:
        before = read_market(engine)
        report = refresh_tickers(engine, Settings(database_url=db_url), ["AAPL", "MSFT"])
        assert report.written == 9 and len(download.calls) == 1
        after = read_market(engine)
        assert len(after) > len(before)
        pd.testing.assert_frame_equal(after, market_series(
            read_bars_many(engine)[["ticker", "date", "adj_close"]]))
        # A write with market=False leaves the series as it was (the rebuild is what moved it).
        aapl = read_bars(engine, "AAPL").assign(ticker="AAPL")
        write_bars(engine, validate(aapl.assign(adj_close=aapl["adj_close"] * 2)), "test",
                   market=False)
        pd.testing.assert_frame_equal(read_market(engine), after)
    finally:
        engine.dispose()


def test_a_batched_refresh_notices_a_re_base_and_fetches_that_history_again(db_url, tmp_path):
    frame = load_download()
    stored_first_week(db_url, frame, scale=2.0)  # stored before a 2:1 split
    source, _, single = recorded_source(tmp_path, frame)
    engine = make_engine(db_url)
    try:
        report = BarCache(engine, CircuitBreaker(source), clock=lambda: NOW).refresh_many(
            ["AAPL", "MSFT"])
        assert report.outcomes == {"AAPL": "updated", "MSFT": "updated"}
        # Both re-based: each fetched again from its first stored bar, on its own.
        assert [(t, r["start"]) for t, r in single.calls] == [
            ("AAPL", dt.date(2024, 3, 4)), ("MSFT", dt.date(2024, 3, 4))]
        aapl = read_bars(engine, "AAPL")
        assert aapl["close"].iloc[0] == pytest.approx(175.10)  # the new base, whole history
    finally:
        engine.dispose()


def test_a_source_down_fails_every_due_ticker_and_keeps_the_bars(db_url, tmp_path):
    frame = load_download()
    stored_first_week(db_url, frame)

    def down(**request):
        raise OSError("could not resolve host")

    source = YFinanceSource(cache_dir=tmp_path / "yf", retries=0, download=down,
                            ticker_factory=lambda t: (_ for _ in ()).throw(OSError("down")),
                            today=lambda: NOW)
    engine = make_engine(db_url)
    try:
        report = BarCache(engine, CircuitBreaker(source), clock=lambda: NOW).refresh_many(
            ["AAPL", "MSFT"])
        assert report.outcomes == {"AAPL": "failed", "MSFT": "failed"}
        assert len(read_bars(engine, "AAPL")) == 5
    finally:
        engine.dispose()


def test_refresh_command_needs_exactly_one_selection(cli_env):
    from typer.testing import CliRunner

    from service.cli import app

    out = CliRunner().invoke(app, ["refresh"])
    assert out.exit_code == 1
    assert "error: give exactly one of --universe NAME, --all or --tickers LIST" in out.output
    both = CliRunner().invoke(app, ["refresh", "--all", "--universe", "top24"])
    assert both.exit_code == 1
    unknown = CliRunner().invoke(app, ["refresh", "--universe", "nasdaq"])
    assert "error: unknown universe 'nasdaq'" in unknown.output


def test_refresh_command_with_no_source_reports_every_ticker_failed(cli_env, monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app
    from service.core.config import get_settings

    monkeypatch.setenv("STOCKCAST_SOURCE", "none")
    get_settings.cache_clear()
    out = CliRunner().invoke(app, ["refresh", "--all", "--no-progress"])
    # The tiny bars end in 2021: all three are due, and no source can give them.
    assert out.exit_code == 1, out.output
    assert "refreshed 3 tickers (failed=3): 0 bars new or changed, 1 batches" \
        in out.output
    # `--universe all`, the other spelling of every ticker: the same three, now tried within
    # the refresh interval, so none is asked again.
    again = CliRunner().invoke(app, ["refresh", "--universe", "all", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "refreshed 3 tickers (throttled=3): 0 bars new or changed, 0 batches" \
        in again.output
