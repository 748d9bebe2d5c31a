"""The yfinance adapter, fed recorded history() frames: each known upstream trap, no network."""

from __future__ import annotations

import datetime as dt
import inspect
import random
from pathlib import Path

import curl_cffi.requests.exceptions as curl_errors
import pandas as pd
import pytest
import yfinance
import yfinance.cache
from yfinance.exceptions import (
    YFDataException,
    YFPricesMissingError,
    YFRateLimitError,
    YFTzMissingError,
)
from yfinance.scrapers.history import PriceHistory

from service.core.config import Settings
from service.core.errors import SourceUnavailable, UnknownTicker
from service.sources.base import BarSource, make_source
from service.sources.validate import validate_bars
from service.sources.yfinance import YFinanceSource

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "yfinance"
NEW_YORK, TOKYO = "America/New_York", "Asia/Tokyo"
BAR_COLUMNS = ["date", "open", "high", "low", "close", "adj_close", "volume"]
HISTORY_SIGNATURE = inspect.signature(PriceHistory.history)
# After the close: 2024-03-18 09:00 in New York, a Monday with nothing unfinished before it.
AFTER_THE_FACT = dt.datetime(2024, 3, 18, 13, 0, tzinfo=dt.UTC)


def load_recorded(name: str, tz: str) -> pd.DataFrame:
    """A recorded frame rebuilt exactly as yfinance 1.7.0's history() returns it."""
    frame = pd.read_csv(FIXTURES / name)
    stamps = pd.to_datetime(frame.pop("Date"), utc=True)
    frame.index = pd.DatetimeIndex(stamps).tz_convert(tz).rename("Date")
    frame["Volume"] = frame["Volume"].astype("int64")
    return frame


class RecordedYahoo:
    """Stands in for yfinance.Ticker (the network): serves recorded frames or scripted failures.

    Arguments are bound against the real PriceHistory.history signature, so a misspelled or
    removed keyword fails here as it would upstream; start/end follow yfinance's semantics
    (start inclusive, end exclusive, both at the exchange's local midnight).
    """

    def __init__(self, frames: dict[str, pd.DataFrame], failures: list[BaseException] = ()):
        self.frames = frames
        self.failures = list(failures)
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, symbol: str) -> RecordedTicker:
        return RecordedTicker(self, symbol)


class RecordedTicker:
    def __init__(self, yahoo: RecordedYahoo, symbol: str):
        self.yahoo, self.symbol = yahoo, symbol

    def history(self, *args, **kwargs) -> pd.DataFrame:
        HISTORY_SIGNATURE.bind(None, *args, **kwargs)
        self.yahoo.calls.append((self.symbol, kwargs))
        if self.yahoo.failures:
            raise self.yahoo.failures.pop(0)
        if self.symbol not in self.yahoo.frames:
            raise YFTzMissingError(self.symbol)  # what 1.7.0 raises for an unknown symbol
        frame = self.yahoo.frames[self.symbol]
        if isinstance(frame.index, pd.DatetimeIndex) and frame.index.tz is not None:
            if kwargs.get("start") is not None:
                frame = frame[frame.index >= pd.Timestamp(kwargs["start"]).tz_localize(
                    frame.index.tz)]
            if kwargs.get("end") is not None:
                frame = frame[frame.index < pd.Timestamp(kwargs["end"]).tz_localize(
                    frame.index.tz)]
        return frame.copy()


@pytest.fixture(autouse=True)
def restore_yfinance_globals():
    """The adapter sets yfinance's process-wide cache dir and exception mode; undo after."""
    managers = (yfinance.cache._TzDBManager, yfinance.cache._CookieDBManager,
                yfinance.cache._ISINDBManager)
    locations = [m.get_location() for m in managers]
    hide = yfinance.config.debug.hide_exceptions
    yield
    for manager, location in zip(managers, locations):
        manager.set_location(location)
    yfinance.config.debug.hide_exceptions = hide


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def recorded_source(tmp_path, yahoo: RecordedYahoo, now: dt.datetime = AFTER_THE_FACT,
                **options) -> tuple[YFinanceSource, Sleeps]:
    sleeps = Sleeps()
    source = YFinanceSource(cache_dir=tmp_path / "yf-cache", ticker_factory=yahoo,
                            sleep=sleeps, today=lambda: now, **options)
    return source, sleeps


def aapl_yahoo(**failures) -> RecordedYahoo:
    return RecordedYahoo({"AAPL": load_recorded("aapl_2024-03.csv", NEW_YORK)}, **failures)


def iso_dates(bars: pd.DataFrame) -> list[str]:
    return bars["date"].dt.strftime("%Y-%m-%d").tolist()


def test_recorded_frames_have_yfinance_shape():
    frame = load_recorded("aapl_2024-03.csv", NEW_YORK)
    assert list(frame.columns) == ["Open", "High", "Low", "Close", "Adj Close", "Volume"]
    assert frame.index.name == "Date" and str(frame.index.tz) == NEW_YORK
    assert frame.index[0] == pd.Timestamp("2024-03-04", tz=NEW_YORK)
    assert frame["Volume"].dtype == "int64"


def test_fetch_asks_for_unadjusted_daily_bars_and_keeps_both_closes(tmp_path):
    yahoo = aapl_yahoo()
    source, _ = recorded_source(tmp_path, yahoo)
    bars = source.fetch("AAPL", dt.date(2024, 3, 4), dt.date(2024, 3, 15))
    assert yahoo.calls == [("AAPL", {
        "interval": "1d", "auto_adjust": False, "actions": False, "timeout": 10,
        "start": dt.date(2024, 3, 4), "end": dt.date(2024, 3, 16)})]
    assert list(bars.columns) == BAR_COLUMNS
    assert bars["date"].dtype == "datetime64[ns]"
    assert len(bars) == 10
    first = bars.iloc[0]
    assert first.tolist() == [pd.Timestamp("2024-03-04"), 176.15, 176.90, 173.79, 175.10,
                              174.31, 81_510_100.0]
    # Both series survive, unmixed: close as traded, adj_close dividend-adjusted below it.
    assert bars["close"].tolist()[-3:] == [171.13, 173.00, 172.62]
    assert bars["adj_close"].tolist()[-3:] == [170.36, 172.22, 171.84]
    assert validate_bars(bars).rejected == {}


def test_end_is_inclusive(tmp_path):
    source, _ = recorded_source(tmp_path, aapl_yahoo())
    bars = source.fetch("AAPL", dt.date(2024, 3, 5), dt.date(2024, 3, 7))
    assert iso_dates(bars) == ["2024-03-05", "2024-03-06", "2024-03-07"]


def test_without_start_the_whole_history_is_asked_for(tmp_path):
    # history(end=...) alone would fetch one month only.
    yahoo = aapl_yahoo()
    source, _ = recorded_source(tmp_path, yahoo)
    bars = source.fetch("AAPL", end=dt.date(2024, 3, 8))
    assert yahoo.calls[0][1] == {"interval": "1d", "auto_adjust": False, "actions": False,
                                 "timeout": 10, "period": "max", "end": dt.date(2024, 3, 9)}
    assert iso_dates(bars) == ["2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07",
                               "2024-03-08"]


def test_trading_dates_are_local_midnights_across_the_dst_switch(tmp_path):
    source, _ = recorded_source(tmp_path, aapl_yahoo())
    bars = source.fetch("AAPL")
    assert iso_dates(bars) == ["2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07",
                               "2024-03-08", "2024-03-11", "2024-03-12", "2024-03-13",
                               "2024-03-14", "2024-03-15"]
    assert (bars["date"] == bars["date"].dt.normalize()).all()


def test_new_york_evening_stamps_keep_the_new_york_date(tmp_path):
    frame = load_recorded("aapl_2024-03_evening_stamps.csv", NEW_YORK)
    # The trap: in UTC these stamps are already the next day.
    assert frame.index.tz_convert("UTC").strftime("%Y-%m-%d").tolist() == [
        "2024-03-08", "2024-03-09", "2024-03-12"]
    source, _ = recorded_source(tmp_path, RecordedYahoo({"AAPL": frame}))
    assert iso_dates(source.fetch("AAPL")) == ["2024-03-07", "2024-03-08", "2024-03-11"]


def test_tokyo_midnight_keeps_the_tokyo_date(tmp_path):
    frame = load_recorded("toyota_7203T_2024-03.csv", TOKYO)
    assert frame.index.tz_convert("UTC").strftime("%Y-%m-%d").tolist()[0] == "2024-03-03"
    source, _ = recorded_source(tmp_path, RecordedYahoo({"7203.T": frame}))
    bars = source.fetch("7203.T", dt.date(2024, 3, 4), dt.date(2024, 3, 8))
    assert iso_dates(bars) == ["2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07",
                               "2024-03-08"]
    assert bars["close"].tolist() == [3670.0, 3630.0, 3567.0, 3540.0, 3600.0]


def test_a_last_day_sent_twice_keeps_the_later_row(tmp_path):
    frame = load_recorded("aapl_2024-03_last_day_twice.csv", NEW_YORK)
    source, _ = recorded_source(tmp_path, RecordedYahoo({"AAPL": frame}))
    bars = source.fetch("AAPL")
    assert iso_dates(bars) == ["2024-03-13", "2024-03-14", "2024-03-15"]
    assert bars.iloc[-1][["close", "volume"]].tolist() == [172.62, 121_136_800.0]


@pytest.mark.parametrize(
    ("now_utc", "last_date"),
    [
        (dt.datetime(2024, 3, 15, 15, 0), "2024-03-14"),  # 11:00 in New York: session open
        (dt.datetime(2024, 3, 15, 21, 30), "2024-03-14"),  # 17:30: closed, not yet settled
        (dt.datetime(2024, 3, 15, 22, 30), "2024-03-15"),  # 18:30: settled
        (dt.datetime(2024, 3, 16, 3, 0), "2024-03-15"),  # 23:00 in New York, already 16th UTC
    ],
)
def test_todays_unfinished_bar_is_dropped(tmp_path, now_utc, last_date):
    now = now_utc.replace(tzinfo=dt.UTC)
    source, _ = recorded_source(tmp_path, aapl_yahoo(), now=now)
    assert iso_dates(source.fetch("AAPL"))[-1] == last_date


def test_today_is_the_exchanges_today(tmp_path):
    # 2024-03-08 02:00 UTC is 11:00 on the 8th in Tokyo: the 8th's bar is unfinished there.
    frame = load_recorded("toyota_7203T_2024-03.csv", TOKYO)
    now = dt.datetime(2024, 3, 8, 2, 0, tzinfo=dt.UTC)
    source, _ = recorded_source(tmp_path, RecordedYahoo({"7203.T": frame}), now=now)
    assert iso_dates(source.fetch("7203.T"))[-1] == "2024-03-07"


def download_shaped(frame: pd.DataFrame, symbols: list[str]) -> pd.DataFrame:
    """yf.download()'s layout: (Price, Ticker) MultiIndex columns."""
    wide = pd.concat({s: frame for s in symbols}, axis=1).swaplevel(0, 1, axis=1)
    wide.columns.names = ["Price", "Ticker"]
    return wide


def test_one_symbol_multiindex_columns_are_flattened(tmp_path):
    frame = load_recorded("aapl_2024-03.csv", NEW_YORK)
    flat_source, _ = recorded_source(tmp_path, RecordedYahoo({"AAPL": frame}))
    wide_source, _ = recorded_source(tmp_path, RecordedYahoo(
        {"AAPL": download_shaped(frame, ["AAPL"])}))
    pd.testing.assert_frame_equal(wide_source.fetch("AAPL"), flat_source.fetch("AAPL"))


def test_several_symbols_in_multiindex_columns_are_a_clear_error(tmp_path):
    frame = load_recorded("aapl_2024-03.csv", NEW_YORK).iloc[:, :2]
    source, _ = recorded_source(tmp_path, RecordedYahoo(
        {"AAPL": download_shaped(frame, ["AAPL", "MSFT"])}))
    with pytest.raises(SourceUnavailable) as err:
        source.fetch("AAPL")
    assert str(err.value) == (
        "yfinance returned MultiIndex columns for AAPL that are not one symbol's prices: "
        "[('Open', 'AAPL'), ('High', 'AAPL'), ('Open', 'MSFT'), ('High', 'MSFT')]")


def test_a_frame_without_adj_close_is_a_clear_error(tmp_path):
    # What auto_adjust=True returns: Close already adjusted, no Adj Close column.
    frame = load_recorded("aapl_2024-03.csv", NEW_YORK).drop(columns=["Adj Close"])
    source, _ = recorded_source(tmp_path, RecordedYahoo({"AAPL": frame}))
    with pytest.raises(SourceUnavailable) as err:
        source.fetch("AAPL")
    assert str(err.value) == (
        "yfinance returned bars for AAPL without Adj Close (columns: Open, High, Low, Close, "
        "Volume); expected Open, High, Low, Close, Adj Close, Volume from "
        "history(auto_adjust=False)")


@pytest.mark.parametrize(
    "upstream",
    [
        "empty_frame",  # 1.7.0 with exceptions hidden: logs and returns utils.empty_df()
        YFTzMissingError("ZZZZ"),
        YFPricesMissingError("ZZZZ", "(1d 2024-03-04 -> 2024-03-16)"),
    ],
)
def test_unknown_symbol_is_unknown_ticker(tmp_path, upstream):
    if upstream == "empty_frame":
        yahoo = RecordedYahoo({"ZZZZ": yfinance.utils.empty_df()})
    else:
        yahoo = RecordedYahoo({}, failures=[upstream])
    source, sleeps = recorded_source(tmp_path, yahoo)
    with pytest.raises(UnknownTicker) as err:
        source.fetch("ZZZZ", dt.date(2024, 3, 4), dt.date(2024, 3, 15))
    assert str(err.value) == "unknown ticker 'ZZZZ': the source returned no bars"
    assert len(yahoo.calls) == 1 and sleeps == []  # not retried


def test_rate_limit_is_retried_with_backoff_then_source_unavailable(tmp_path):
    yahoo = aapl_yahoo(failures=[YFRateLimitError() for _ in range(4)])
    source, sleeps = recorded_source(tmp_path, yahoo, retries=3, backoff=0.5)
    with pytest.raises(SourceUnavailable) as err:
        source.fetch("AAPL", dt.date(2024, 3, 4), dt.date(2024, 3, 15))
    assert str(err.value) == (
        "yfinance unavailable for AAPL after 4 attempts: YFRateLimitError: Too Many Requests. "
        "Rate limited. Try after a while.")
    assert len(yahoo.calls) == 4
    assert len(sleeps) == 3
    for k, seconds in enumerate(sleeps):  # 0.5 * 2**k, jittered by +-50%
        assert 0.25 * 2**k <= seconds < 0.75 * 2**k


def test_jitter_is_drawn_from_the_given_rng(tmp_path):
    yahoo = aapl_yahoo(failures=[YFRateLimitError() for _ in range(3)])
    source, sleeps = recorded_source(tmp_path, yahoo, retries=2, backoff=1.0,
                                 rng=random.Random(7))
    with pytest.raises(SourceUnavailable):
        source.fetch("AAPL")
    draws = random.Random(7)
    assert sleeps == [1.0 * (0.5 + draws.random()), 2.0 * (0.5 + draws.random())]


@pytest.mark.parametrize(
    "failure",
    [
        curl_errors.Timeout("Failed to perform, curl: (28) Operation timed out after 10002 ms"),
        curl_errors.ConnectionError("Failed to perform, curl: (7) Couldn't connect to server"),
        TimeoutError("timed out"),
        YFDataException("*** YAHOO! FINANCE IS CURRENTLY DOWN! ***"),
    ],
    ids=["curl-timeout", "curl-connection", "timeout", "yahoo-down"],
)
def test_success_after_two_transient_failures(tmp_path, failure):
    yahoo = aapl_yahoo(failures=[failure, failure])
    source, sleeps = recorded_source(tmp_path, yahoo)
    bars = source.fetch("AAPL", dt.date(2024, 3, 4), dt.date(2024, 3, 15))
    assert len(bars) == 10
    assert len(yahoo.calls) == 3 and len(sleeps) == 2


def test_timeouts_exhausting_the_retries_name_the_last_error(tmp_path):
    timeout = curl_errors.Timeout("Failed to perform, curl: (28) Operation timed out")
    yahoo = aapl_yahoo(failures=[timeout] * 2)
    source, sleeps = recorded_source(tmp_path, yahoo, retries=1)
    with pytest.raises(SourceUnavailable) as err:
        source.fetch("AAPL")
    assert str(err.value) == ("yfinance unavailable for AAPL after 2 attempts: Timeout: "
                              "Failed to perform, curl: (28) Operation timed out")
    assert len(sleeps) == 1


def test_an_unexpected_upstream_error_is_source_unavailable_without_retry(tmp_path):
    yahoo = aapl_yahoo(failures=[KeyError("exchangeTimezoneName")])
    source, sleeps = recorded_source(tmp_path, yahoo)
    with pytest.raises(SourceUnavailable) as err:
        source.fetch("AAPL")
    assert str(err.value) == "yfinance failed for AAPL: KeyError: 'exchangeTimezoneName'"
    assert len(yahoo.calls) == 1 and sleeps == []


def test_cache_dir_is_created_and_handed_to_yfinance(tmp_path):
    cache_dir = tmp_path / "var" / "yfinance-cache"
    YFinanceSource(cache_dir=cache_dir, ticker_factory=aapl_yahoo())
    assert cache_dir.is_dir()
    assert yfinance.cache._TzDBManager.get_location() == str(cache_dir)
    assert yfinance.cache._CookieDBManager.get_location() == str(cache_dir)
    # Failures must raise, not be logged and turned into an "unknown ticker" empty frame.
    assert yfinance.config.debug.hide_exceptions is False


def test_make_source_builds_yfinance_from_settings(tmp_path):
    source = make_source(Settings(source="yfinance", yfinance_cache_dir=tmp_path / "yf"))
    assert isinstance(source, YFinanceSource) and isinstance(source, BarSource)
    assert source.name == "yfinance"
    assert source.cache_dir == tmp_path / "yf"
    assert source.ticker_factory is yfinance.Ticker
    assert (tmp_path / "yf").is_dir()


def test_negative_retries_are_refused(tmp_path):
    with pytest.raises(ValueError) as err:
        YFinanceSource(cache_dir=tmp_path, retries=-1)
    assert str(err.value) == "retries must be >= 0, got -1"
