"""The read-through bar cache: serve bars from the DB, fetch only what is missing, once."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from service.core.errors import (
    InvalidTicker,
    SourceCoolingDown,
    SourceNotConfigured,
    SourceUnavailable,
    UnknownTicker,
)
from service.core.locks import KeyedLocks
from service.core.tickers import normalize_ticker
from service.db import bars as bars_db
from service.db.health import database_faults, is_database_fault
from service.sources.base import BarSource
from service.sources.store import AfterWrite, validate, write_bars

log = logging.getLogger(__name__)

# How far back the first fetch of a never-seen ticker reaches.
DEFAULT_HISTORY_DAYS = 5 * 366
# Calendar days of stored bars each incremental refresh asks for again, to detect re-basing.
REBASE_OVERLAP_DAYS = 7
# Relative price change on an already-stored date that counts as a re-base (rounding is ~1e-6;
# the smallest dividend adjustments are ~1e-3).
REBASE_RTOL = 1e-4

def repriced(stored: pd.DataFrame, other: pd.DataFrame) -> np.ndarray:
    """Per date both frames hold (in date order), whether `other` prices it differently from
    `stored`: its close or adj_close off by more than REBASE_RTOL. A re-base moves every past
    date (the refresh path refetches on any; ingest refuses a stretch differing on all)."""
    both = stored.merge(other, on="date", suffixes=("_stored", "_other"))
    differs = np.zeros(len(both), dtype=bool)
    for c in ("close", "adj_close"):
        differs |= ~np.isclose(both[f"{c}_stored"], both[f"{c}_other"], rtol=REBASE_RTOL, atol=0)
    return differs


@dataclass(frozen=True)
class CachedBars:
    """Bars served for one request, and whether they may be out of date."""

    ticker: str
    bars: pd.DataFrame
    stale: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)
    fetched: int = 0  # rows written by a refresh made for this request
    latest: dt.date | None = None  # the ticker's last stored bar, whatever the end asked for
    # The ticker's bars revision read before the bars: a store row computed from these bars
    # and labelled with it is never newer than its label.
    revision: int | None = None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@lru_cache(maxsize=64)  # most tickers share their last bar's date; callers only read it
def _dated(day: dt.date | None) -> pd.DataFrame:
    """A bars frame holding only the date column, of `day` (empty for None)."""
    return pd.DataFrame({"date": pd.to_datetime([] if day is None else [day])})


REFRESH_OUTCOMES = ("updated", "unchanged", "current", "throttled", "unknown", "failed")
DEFAULT_CHUNK = 50  # tickers per batched upstream call


@dataclass
class RefreshReport:
    """Per ticker what a batched refresh did: updated (new or changed bars), unchanged, current
    (nothing newer due), throttled (tried within the refresh interval), unknown, failed."""

    outcomes: dict[str, str] = field(default_factory=dict)
    written: int = 0
    upstream_calls: int = 0

    def counts(self) -> dict[str, int]:
        return {o: sum(1 for v in self.outcomes.values() if v == o) for o in REFRESH_OUTCOMES}

    def summary(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts().items() if v)
        return (f"refreshed {len(self.outcomes)} tickers ({counts or 'none'}): {self.written} "
                f"bars new or changed, {self.upstream_calls} batches")


class BarCache:
    """get_bars() reads through the DB to a BarSource, one upstream call per ticker at a time."""

    def __init__(self, engine: Engine, source: BarSource, *,
                 refresh_interval: dt.timedelta = dt.timedelta(hours=1),
                 clock=_utcnow, history_days: int = DEFAULT_HISTORY_DAYS,
                 after_write: AfterWrite | None = None, update_market: bool = True,
                 refresh_gate: Callable[[str], None] | None = None):
        self.engine = engine
        # Called with what is about to be waited for when a refresh is due, before the ticker's
        # lock: it may raise instead (the API's forecast lane: service.api.lane).
        self.refresh_gate = refresh_gate
        self.after_write = after_write
        # Whether each bars write rewrites the market series from its first date; a batch
        # refresh (refresh_tickers) turns it off and rebuilds the series once at its end.
        self.update_market = update_market
        self.source = source
        self.refresh_interval = refresh_interval
        self.clock = clock
        self.history_days = history_days
        self._locks = KeyedLocks()

    def get_bars(self, ticker: str, start: dt.date | None = None, end: dt.date | None = None,
                 last: int | None = None, market: bool = False) -> CachedBars:
        """Bars of `ticker` in [start, end] (or the `last` N up to end), refreshing if missing.

        `market`: with the market series' return on each bar's date (a model that reads it).

        Raises UnknownTicker / SourceUnavailable only when nothing is cached; with cached bars a
        failed refresh returns them with stale=True and a warning.
        """
        ticker = normalize_ticker(ticker)
        with database_faults():
            state, fetched, stale, warnings = self._current(ticker, start, end)
            bars = bars_db.read_bars(self.engine, ticker, start, end, last=last, market=market)
        return self._answer(ticker, state, bars, fetched, stale, warnings)

    def latest_bar(self, ticker: str, end: dt.date | None = None) -> CachedBars:
        """As get_bars(ticker, end=end, last=1), but without end the last bar is only dated
        (from the ticker's stored range; bars has its `date` column alone): no bar is read."""
        if end is not None:
            return self.get_bars(ticker, end=end, last=1)
        ticker = normalize_ticker(ticker)
        with database_faults():
            state, fetched, stale, warnings = self._current(ticker, None, None)
        last = None if state is None else state.last_bar_date
        return self._answer(ticker, state, _dated(last), fetched, stale, warnings)

    def latest_bars(self, tickers: Sequence[str], conn: Connection | None = None
                    ) -> dict[str, CachedBars]:
        """latest_bar(ticker) of each of `tickers` with nothing due from the source, their
        states read in one statement (on `conn` if given: a caller's snapshot); a ticker a
        refresh is due for (or an unknown one) is left out, for latest_bar to refresh it on
        its own."""
        names = {}  # as given -> normalized; a name that is no ticker is left out too
        for ticker in tickers:
            try:
                names[ticker] = normalize_ticker(ticker)
            except InvalidTicker:
                continue
        with database_faults(), \
                nullcontext(conn) if conn is not None else self.engine.connect() as read:
            states = bars_db.ticker_states(read, list(names.values()))
        out = {}
        for given, ticker in names.items():
            state = states.get(ticker)
            if state is None or state.last_bar_date is None or self._needs_refresh(state, None):
                continue
            _, fetched, stale, warnings = self._current(ticker, None, None, state)
            out[given] = self._answer(ticker, state, _dated(state.last_bar_date), fetched,
                                      stale, warnings)
        return out

    def _current(self, ticker: str, start: dt.date | None, end: dt.date | None,
                 state: bars_db.TickerState | None = None
                 ) -> tuple[bars_db.TickerState | None, int, bool, list[str]]:
        """The ticker's state (read now unless given) after any refresh due: (state, rows
        fetched, stale, warnings)."""
        state = self._state(ticker) if state is None else state
        fetched, stale, warnings = 0, False, []
        if self._needs_refresh(state, end):
            if self.refresh_gate is not None:
                self.refresh_gate(f"a refresh of {ticker}")
            with self._locks(ticker):
                state = self._state(ticker)  # another thread may have refreshed meanwhile
                if self._needs_refresh(state, end):
                    fetched, stale, warnings = self._refresh(ticker, state, start, end)
                    state = self._state(ticker)
        if not stale and state is not None and state.last_refresh_status == "error":
            # A recent failed attempt is not retried before refresh_interval; say so.
            stale = self._wants_newer(state, end)
            if stale:
                warnings.append(f"bars for {ticker} may be out of date: last refresh failed "
                                f"({state.last_refresh_error})")
        return state, fetched, stale, warnings

    @staticmethod
    def _answer(ticker: str, state: bars_db.TickerState | None, bars: pd.DataFrame,
                fetched: int, stale: bool, warnings: list[str]) -> CachedBars:
        latest = state.last_bar_date if state is not None else None
        revision = state.bars_revision if state is not None else None
        if bars.empty:
            if latest is not None:
                return CachedBars(ticker, bars, stale, tuple(warnings), fetched, latest,
                                  revision)
            # Nothing cached: repeat the last refresh outcome (throttled, not retried yet).
            if state is not None and state.last_refresh_status == "error":
                raise SourceUnavailable(state.last_refresh_error or f"source failed for {ticker}")
            if state is not None and state.last_refresh_error:
                raise UnknownTicker(state.last_refresh_error)
            raise UnknownTicker(f"no bars stored for {ticker}")
        return CachedBars(ticker, bars, stale, tuple(warnings), fetched, latest, revision)

    def refresh_many(self, tickers: Sequence[str], chunk: int = DEFAULT_CHUNK,
                     progress: Callable[[int], object] | None = None) -> RefreshReport:
        """Refresh many tickers, asking the source for `chunk` of them per call.

        Each ticker then goes the way a single refresh goes (same validator, same re-base
        check, same bookkeeping); a ticker the batch left out is fetched on its own. Tickers
        with nothing newer due, or tried within refresh_interval, are not asked for at all.
        """
        report = RefreshReport()
        due: list[tuple[str, bars_db.TickerState | None]] = []
        for ticker in (normalize_ticker(t) for t in tickers):
            state = self._state(ticker)
            if not self._wants_newer(state, None):
                report.outcomes[ticker] = "current"
            elif not self._needs_refresh(state, None):
                report.outcomes[ticker] = "throttled"
            else:
                due.append((ticker, state))
        if progress and len(report.outcomes):
            progress(len(report.outcomes))
        for i in range(0, len(due), max(1, chunk)):
            part = due[i : i + max(1, chunk)]
            start = min(self._fetch_start(state, None) for _, state in part)
            try:
                fetched = self.source.fetch_many([t for t, _ in part], start, None)
                report.upstream_calls += 1
            except SourceUnavailable as exc:
                log.warning("batched fetch of %d tickers failed: %s", len(part), exc)
                fetched = {}
            for ticker, _ in part:
                with self._locks(ticker):
                    state = self._state(ticker)
                    frame = fetched.get(ticker)
                    if frame is not None:  # the ticker's own incremental range of the batch
                        frame = frame[frame["date"] >= pd.Timestamp(
                            self._fetch_start(state, None))]
                    try:
                        written, stale, _ = self._refresh(ticker, state, None, None, frame)
                    except UnknownTicker:
                        report.outcomes[ticker] = "unknown"
                    except SourceUnavailable:
                        report.outcomes[ticker] = "failed"
                    else:
                        report.written += written
                        report.outcomes[ticker] = ("failed" if stale else
                                                   "updated" if written else "unchanged")
            if progress:
                progress(len(part))
        return report

    # -- internals ---------------------------------------------------------------------------

    def _state(self, ticker: str) -> bars_db.TickerState | None:
        with self.engine.connect() as conn:
            return bars_db.ticker_state(conn, ticker)

    def _wants_newer(self, state: bars_db.TickerState | None, end: dt.date | None) -> bool:
        """True when the stored range stops before the last weekday session up to `end`.

        Without `end`, today's bar is unfinished, so the expected last bar is the previous
        weekday. Exchange holidays can cause one needless (throttled) refresh; that is cheap.
        """
        if state is None or state.last_bar_date is None:
            return True
        expected = end if end is not None else self.clock().date() - dt.timedelta(days=1)
        while expected.weekday() >= 5:
            expected -= dt.timedelta(days=1)
        return state.last_bar_date < expected

    def _needs_refresh(self, state: bars_db.TickerState | None, end: dt.date | None) -> bool:
        if not self._wants_newer(state, end):
            return False
        if state is not None and state.last_refresh_at is not None:
            return self.clock() - state.last_refresh_at >= self.refresh_interval
        return True

    def _fetch_start(self, state: bars_db.TickerState | None, start: dt.date | None) -> dt.date:
        if state is not None and state.last_bar_date is not None:
            # Incremental, overlapping the stored tail: Yahoo re-bases past prices at every
            # split (Close and Adj Close) and dividend (Adj Close); the overlap is how we notice.
            return state.last_bar_date - dt.timedelta(days=REBASE_OVERLAP_DAYS)
        return start or (self.clock().date() - dt.timedelta(days=self.history_days))

    def _record(self, ticker: str, status: str, error: str, have_bars: bool) -> None:
        """A refresh attempt's outcome; for a ticker left without bars the records of other
        such tickers past their refresh interval go too (bars_db.record_no_bars)."""
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                if have_bars:
                    bars_db.record_refresh(conn, ticker, status, error, at=now)
                else:
                    bars_db.record_no_bars(conn, ticker, status, error, at=now,
                                           expired_before=now - self.refresh_interval)
        except DBAPIError as exc:
            # Bookkeeping (it throttles the next attempt), as the ledger and band-state writes
            # are: a database that refuses writes (read-only, full) while it still reads must
            # not fail the read of the bars it holds (a hostile pass: every cold forecast was a
            # 503 then). A silent one raised DatabaseUnavailable in the guard: that stands.
            if not is_database_fault(exc):
                raise
            log.warning("refresh outcome of %s not recorded: %s", ticker,
                        exc.__class__.__name__)

    def _refresh(self, ticker: str, state: bars_db.TickerState | None,
                 start: dt.date | None, end: dt.date | None,
                 fetched: pd.DataFrame | None = None) -> tuple[int, bool, list[str]]:
        """Fetch (or take `fetched`, a batch's rows of this ticker), validate, check for a
        re-base, store; (bars written, stale, warnings)."""
        have_bars = state is not None and state.last_bar_date is not None
        fetch_start = self._fetch_start(state, start)
        try:
            if fetched is None:
                fetched = self.source.fetch(ticker, fetch_start, end)
            today = self.clock().date()  # a bar dated later is refused (future_date)
            result = validate(fetched, ticker, today)
            if have_bars and self._rebased(ticker, result.bars, fetch_start, state.last_bar_date):
                # Mixing bases would put a fake -69% return into the features at a 2:1 split.
                log.info("%s: source re-based past prices; fetching its whole history again",
                         ticker)
                result = validate(self.source.fetch(ticker, state.first_bar_date, end), ticker,
                                  today)
        except UnknownTicker as exc:
            self._record(ticker, "ok" if have_bars else "unknown", str(exc), have_bars)
            if have_bars:  # nothing new upstream for an incremental range is not an error
                return 0, False, []
            raise
        except SourceCoolingDown as exc:
            # The source was not asked (the breaker's cool-down): nothing was tried for this
            # ticker, so nothing is recorded against it — a record would throttle it for
            # refresh_interval after the source is back, and repeat this message meanwhile.
            if have_bars:
                return 0, True, [f"bars for {ticker} may be out of date: {exc}"]
            raise
        except SourceUnavailable as exc:
            if not have_bars and isinstance(exc, SourceNotConfigured):
                # Cache-only and not cached: nothing will ever fetch it, so a 404, not a 503.
                message = f"no bars cached for {ticker}, and {exc}"
                self._record(ticker, "unknown", message, have_bars)
                raise UnknownTicker(message) from exc
            self._record(ticker, "error", str(exc), have_bars)
            if have_bars:
                log.warning("refresh of %s failed, serving cached bars: %s", ticker, exc)
                return 0, True, [f"bars for {ticker} may be out of date: {exc}"]
            raise
        warnings = []
        if result.n_rejected:
            warnings.append(f"{ticker}: source returned {result.read} rows, "
                            f"{result.summary()}")
        count = write_bars(self.engine, result, self.source.name,
                           refreshed=(ticker, self.clock()), after_write=self.after_write,
                           market=self.update_market)
        if not have_bars and count.offered == 0:
            self._record(ticker, "unknown", "no valid bars", have_bars)
            raise UnknownTicker(f"unknown ticker {ticker!r}: the source returned no valid bars")
        return count.written, False, warnings

    def _rebased(self, ticker: str, fetched: pd.DataFrame, start: dt.date,
                 last_stored: dt.date) -> bool:
        """True when the source's prices for already-stored dates differ from what is stored."""
        # The last stored day is left out: a file's partial last session is corrected, not re-based.
        stored = bars_db.read_bars(self.engine, ticker, start, last_stored - dt.timedelta(days=1))
        return bool(repriced(stored, fetched).any())
