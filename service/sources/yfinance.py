"""Daily bars from Yahoo Finance through yfinance 1.7.0, with its known traps handled.

Traps (each has a test in tests/unit/test_source_yfinance.py):
- `yf.download()` returns MultiIndex columns even for one symbol: we call `Ticker.history`, and
  still flatten a one-symbol MultiIndex defensively (anything else is a clear error);
- the `auto_adjust` default has changed between versions: we pass `auto_adjust=False` and keep
  both Close (Yahoo's is split-adjusted, not dividend-adjusted) and Adj Close (split and
  dividend adjusted); Yahoo re-bases past bars at every split/dividend, which the bar cache detects;
- daily rows are stamped in the exchange's time zone: the trading date is the index's own local
  date (never convert to UTC first: Tokyo's midnight is the previous day in UTC);
- the last day can come twice (keep the last) or be today's unfinished session (dropped until
  the exchange's local clock passes SETTLED_AT);
- `end` is exclusive upstream: we pass end + 1 day so our `end` is inclusive; without `start`,
  `history(end=...)` fetches one month only, so we ask for period="max";
- yfinance 1.7.0 by default LOGS network errors and returns an empty frame, which would read as
  "unknown ticker"; we set `yfinance.config.debug.hide_exceptions = False` (the 1.7.0
  replacement of the deprecated `raise_errors=`) so failures raise and can be told apart;
- an unknown or delisted symbol raises YFTickerMissingError (or, with exceptions hidden, comes
  back empty): both become UnknownTicker. An empty answer for a range with no sessions (a
  weekend) reads the same; the bar cache only asks for ranges that should hold trading days;
- rate limits (YFRateLimitError), "Yahoo is down" (YFDataException) and timeouts/connection
  errors (curl_cffi's, requests', TimeoutError: all OSError) are retried with jittered
  exponential backoff, then raised as SourceUnavailable;
- yfinance keeps tz/cookie caches on disk: they go to a writable dir from settings.
No custom session is passed (yfinance 1.7.0 builds its own curl_cffi session).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import yfinance
from yfinance.exceptions import (
    YFDataException,
    YFRateLimitError,
    YFTickerMissingError,
)

from service.core.errors import SourceUnavailable, UnknownTicker

log = logging.getLogger(__name__)

# yfinance column -> canonical column.
YAHOO_COLUMNS = {
    "Open": "open",
    "High": "high",
    "Low": "low",
    "Close": "close",
    "Adj Close": "adj_close",
    "Volume": "volume",
}
# Today's bar counts as final once the exchange's local clock passes this time: after the
# close of the major exchanges (NYSE 16:00, LSE 16:30, Tokyo 15:30) plus time for Yahoo to
# settle the session. An early drop only delays the bar to the next refresh.
SETTLED_AT = dt.time(18, 0)
RETRYABLE = (YFRateLimitError, YFDataException, OSError)


class YFinanceSource:
    """BarSource over yfinance's Ticker.history (daily OHLC, Close and Adj Close kept apart)."""

    name = "yfinance"

    def __init__(
        self,
        cache_dir: Path,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 10,
        ticker_factory: Callable[[str], object] = yfinance.Ticker,
        download: Callable[..., pd.DataFrame] = yfinance.download,
        sleep: Callable[[float], None] = time.sleep,
        today: Callable[[], dt.datetime] | None = None,
        rng: random.Random | None = None,
    ):
        """`retries` extra attempts after the first; `today` is a clock returning the current
        aware moment (default: the real UTC clock); `rng` draws the backoff jitter."""
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Sets the tz, cookie and ISIN caches together (set_tz_cache_location is its alias).
        yfinance.cache.set_cache_location(str(self.cache_dir))
        # Raise network failures instead of logging them and returning an empty frame.
        yfinance.config.debug.hide_exceptions = False
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.ticker_factory = ticker_factory
        self.download = download
        self.sleep = sleep
        self.today = today or (lambda: dt.datetime.now(dt.UTC))
        self.rng = rng or random.Random()

    def fetch(self, ticker: str, start: dt.date | None = None,
              end: dt.date | None = None) -> pd.DataFrame:
        """Daily bars of one ticker for [start, end] (inclusive), not yet validated."""
        request: dict[str, object] = {
            "interval": "1d", "auto_adjust": False, "actions": False, "timeout": self.timeout}
        if start is None:
            request["period"] = "max"
        else:
            request["start"] = start
        if end is not None:
            request["end"] = end + dt.timedelta(days=1)  # upstream end is exclusive
        history = self._history(ticker, request)
        if history.empty:
            raise UnknownTicker(f"unknown ticker {ticker!r}: the source returned no bars")
        bars = self._to_bars(history, ticker)
        if start is not None:
            bars = bars[bars["date"] >= pd.Timestamp(start)]
        if end is not None:
            bars = bars[bars["date"] <= pd.Timestamp(end)]
        return bars.reset_index(drop=True)

    def fetch_many(self, tickers: Sequence[str], start: dt.date | None = None,
                   end: dt.date | None = None) -> dict[str, pd.DataFrame]:
        """Bars of several tickers from one `yf.download` (its threads), not yet validated.

        Tickers it returned no rows for are left out: yfinance logs why (unknown symbol, a
        failed request) instead of saying so, so the caller asks `fetch` for each of them,
        which tells an unknown ticker from an outage.
        """
        request: dict[str, object] = {
            "tickers": list(tickers), "interval": "1d", "auto_adjust": False,
            "actions": False, "group_by": "ticker", "threads": True, "progress": False,
            "timeout": self.timeout, "multi_level_index": True}
        if start is None:
            request["period"] = "max"
        else:
            request["start"] = start
        if end is not None:
            request["end"] = end + dt.timedelta(days=1)
        label = f"{len(request['tickers'])} tickers ({', '.join(list(tickers)[:3])}...)"
        frame = self._retrying(lambda: self.download(**request), label)
        out = {}
        if frame is None or frame.empty or not isinstance(frame.columns, pd.MultiIndex):
            return out
        symbols = set(frame.columns.get_level_values(0))
        for ticker in tickers:
            if ticker not in symbols:
                continue
            # One ticker's columns; rows where it had no session (another exchange's) are NaN.
            history = frame[ticker].dropna(how="all")
            if history.empty:
                continue
            bars = self._to_bars(history, ticker)
            if start is not None:
                bars = bars[bars["date"] >= pd.Timestamp(start)]
            if end is not None:
                bars = bars[bars["date"] <= pd.Timestamp(end)]
            if not bars.empty:
                out[ticker] = bars.reset_index(drop=True)
        return out

    def _history(self, ticker: str, request: dict[str, object]) -> pd.DataFrame:
        """Ticker.history with retries on rate limits and network errors."""
        return self._retrying(lambda: self.ticker_factory(ticker).history(**request), ticker)

    def _retrying(self, call: Callable[[], pd.DataFrame], ticker: str) -> pd.DataFrame:
        """call() with retries on rate limits and network errors (ticker: for the messages)."""
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except YFTickerMissingError as exc:
                log.debug("yfinance has no bars for %s: %s", ticker, exc)
                raise UnknownTicker(
                    f"unknown ticker {ticker!r}: the source returned no bars") from exc
            except RETRYABLE as exc:
                error = f"{type(exc).__name__}: {exc}"
                if attempt == attempts:
                    raise SourceUnavailable(
                        f"yfinance unavailable for {ticker} after {attempts} attempts: {error}"
                    ) from exc
                # Exponential backoff with +-50% jitter so parallel refreshes spread out.
                delay = self.backoff * 2 ** (attempt - 1) * (0.5 + self.rng.random())
                log.warning("yfinance attempt %d/%d for %s failed (%s); retrying in %.2fs",
                            attempt, attempts, ticker, error, delay)
                self.sleep(delay)
            except Exception as exc:  # anything else upstream (a yfinance bug) is a source fault
                raise SourceUnavailable(
                    f"yfinance failed for {ticker}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    def _to_bars(self, history: pd.DataFrame, ticker: str) -> pd.DataFrame:
        """Yahoo's frame -> canonical bars keyed on the exchange trading date."""
        history = _flat_columns(history, ticker)
        missing = [c for c in YAHOO_COLUMNS if c not in history.columns]
        if missing:
            raise SourceUnavailable(
                f"yfinance returned bars for {ticker} without {', '.join(missing)} "
                f"(columns: {', '.join(map(str, history.columns))}); expected "
                f"{', '.join(YAHOO_COLUMNS)} from history(auto_adjust=False)")
        index = history.index
        if not isinstance(index, pd.DatetimeIndex):
            raise SourceUnavailable(
                f"yfinance returned bars for {ticker} indexed by {type(index).__name__}, "
                "not dates")
        # The index's own zone IS the exchange's: its local date is the trading date.
        # Dropping the zone keeps local wall time (converting to UTC first would shift dates).
        exchange_tz = index.tz or dt.UTC
        local = index.tz_localize(None) if index.tz is not None else index
        bars = pd.DataFrame({"date": local.normalize().astype("datetime64[ns]")})
        for yahoo, canonical in YAHOO_COLUMNS.items():
            bars[canonical] = pd.to_numeric(history[yahoo].to_numpy(), errors="coerce")
        bars = bars.astype({c: "float64" for c in YAHOO_COLUMNS.values()})

        now = pd.Timestamp(self.today())
        now = (now.tz_localize("UTC") if now.tzinfo is None else now).tz_convert(exchange_tz)
        today = now.tz_localize(None).normalize()
        unfinished = (bars["date"] > today) | (
            (bars["date"] == today) & (now.time() < SETTLED_AT))
        bars = bars[~unfinished].sort_values("date", kind="stable")
        # Yahoo may send the last session twice; the later row is the more complete one.
        return bars[~bars["date"].duplicated(keep="last")]


def _flat_columns(history: pd.DataFrame, ticker: str) -> pd.DataFrame:
    """One symbol's (Price, Ticker) MultiIndex columns -> flat price columns; else an error."""
    columns = history.columns
    if not isinstance(columns, pd.MultiIndex):
        return history
    levels = [columns.get_level_values(i) for i in range(columns.nlevels)]
    price = [i for i, level in enumerate(levels) if set(YAHOO_COLUMNS) & set(level)]
    others_single = all(levels[i].nunique() == 1 for i in range(len(levels)) if i not in price)
    if len(price) != 1 or not others_single:
        raise SourceUnavailable(
            f"yfinance returned MultiIndex columns for {ticker} that are not one symbol's "
            f"prices: {list(columns)[:8]}")
    flat = history.copy()
    flat.columns = levels[price[0]]
    return flat
