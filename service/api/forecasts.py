"""Serving forecasts: bars from the BarCache, the Predictor on a miss, computed forecasts cached.

Bars change once a day, so a forecast is cached under (ticker, last bar date, model version,
horizon). Knowing the last bar date needs the DB (and maybe an upstream refresh); that check is
shared between requests for `bar_check_ttl` seconds, so a warm request touches neither the DB
nor the features: two dict lookups (`cached`). A new bar reaches forecasts within that TTL.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.api.lane import ForecastLane, WouldWait
from service.core.errors import (
    DatabaseUnavailable,
    InsufficientHistory,
    ServerBusy,
    StockcastError,
)
from service.core.locks import KeyedLocks
from service.db.features import consistent_read
from service.db.health import database_faults
from service.db.ledger import record_forecasts
from service.evaluation.feature_store import save_states, servable, stored_inputs
from service.evaluation.ledger import ledger_rows
from service.forecasting.features import needs_market
from service.inference.predictor import Forecast, Predictor, StoredInput
from service.sources.cache import BarCache, CachedBars

log = logging.getLogger(__name__)

# Seconds after which an expired bar check that one request took on to renew may be taken on by
# another (the first never finished).
RENEWAL_TIMEOUT = 10.0
# Live forecasts known to be in the ledger (kept apart from the forecast cache, whose size may be
# 0): a forecast served again is not written again; one forgotten is re-offered, harmlessly.
RECORDED_KEYS = 65_536
# Forecasts from bars a batch computes between two looks at its deadline (~1 s on 2 cores):
# each chunk's band states are stored and its forecasts cached before the next begins.
BATCH_CHUNK = 25


class LruCache:
    """A bounded, thread-safe mapping that forgets the least recently used entry first."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable):
        """The value under key (now most recently used), or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Hashable, value) -> None:
        """Store value; evicts the oldest entries beyond `size` (size 0 stores nothing)."""
        if self.size <= 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class BarCheck:
    """What one read through the BarCache said about a ticker's bars up to an end date."""

    last_bar_date: dt.date
    stale: bool
    warnings: tuple[str, ...]
    checked_at: float  # monotonic seconds
    latest: dt.date | None = None  # the ticker's last stored bar (beyond end, for an as_of)
    # The ticker's bars revision: a history re-based up to the same last bar is another key.
    revision: int | None = None

    @property
    def live(self) -> bool:
        """Whether a forecast from these bars is the live one: as of the latest cached bar."""
        return self.latest is None or self.last_bar_date >= self.latest


@dataclass(frozen=True)
class ServedForecast:
    """A forecast plus how fresh its bars are and whether it came from the forecast cache."""

    forecast: Forecast
    stale: bool
    warnings: tuple[str, ...]
    cached: bool


class ForecastService:
    """Forecasts for tickers through the BarCache and a Predictor, with the two caches above."""

    def __init__(self, bar_cache: BarCache, *, cache_size: int = 4096,
                 bar_check_ttl: float = 5.0, monotonic: Callable[[], float] = time.monotonic,
                 on_lookup: Callable[[bool], None] | None = None, record_live: bool = True,
                 use_store: bool = True, lane: ForecastLane | None = None,
                 batch_deadline: float = 0.0):
        self.bar_cache = bar_cache
        # Seconds a batch (serve_many) may compute before it is answered busy; 0: unbounded.
        self.batch_deadline = batch_deadline
        # The threads one-ticker cold forecasts compute on (service.api.lane; None: the shared
        # threadpool for all, as before the lane).
        self.lane = lane
        self.use_store = use_store  # read/write the serving stores (features, band states)
        self.record_live = record_live
        self.recorded = LruCache(RECORDED_KEYS)
        self.forecasts = LruCache(cache_size)
        self.checks = LruCache(cache_size)
        self.bodies = LruCache(cache_size)  # rendered responses of cached forecasts (`rendered`)
        self.bar_check_ttl = bar_check_ttl
        self.monotonic = monotonic
        self.on_lookup = on_lookup
        self._count_lock = threading.Lock()
        # Bar checks being renewed: when one expires under load, one request renews it from
        # the DB while concurrent requests keep answering from it (no stampede on the DB).
        # key -> (when, by whom) a request took it on; only that request gives it back.
        self._renewing: dict[Hashable, tuple[float, Hashable]] = {}
        self._renewing_lock = threading.Lock()
        # A ticker's turn lock lives while a request holds or waits for it, then drops out:
        # one entry per ticker ever asked for would grow without bound.
        self._ticker_locks = KeyedLocks()
        self.hits = 0
        self.misses = 0
        self.computed = 0  # forecasts computed (from the stores or from bars)
        self.from_store = 0  # of those, from the serving stores

    # -- per request: what the routes call -----------------------------------------------------

    async def serve(self, predictor: Predictor, ticker: str, horizon: int = 1,
                    as_of: dt.date | None = None) -> ServedForecast:
        """One request's forecast: from memory on the event loop, else computed in the threadpool.

        Tickers arrive normalized (the API's Ticker type). Raises the StockcastError that
        stopped it.
        """
        claimant = object()  # this request, should its lookup take on renewing the bar check
        served = self.cached(predictor, ticker, horizon, as_of, claimant)
        if served is None and self.lane is not None:  # the lane, unless it would wait
            try:
                served = await self.lane.run(self.forecast, predictor, ticker, horizon, as_of,
                                             claimant)
            except WouldWait:  # a refresh due, or another request's turn: as before the lane
                pass
        if served is None:  # DB, maybe the source, features, onnxruntime: off the event loop
            served = await run_in_threadpool(self.forecast, predictor, ticker, horizon, as_of,
                                             claimant)
        return served

    async def serve_many(self, predictor: Predictor, tickers: Sequence[str], horizon: int = 1,
                         as_of: dt.date | None = None) -> list[ServedForecast | StockcastError]:
        """One request's forecasts of several tickers: the misses computed together, within
        `batch_deadline` seconds (else ServerBusy; what was computed by then is kept)."""
        claimant = object()  # this request, should a lookup take on renewing a bar check
        deadline = self.monotonic() + self.batch_deadline if self.batch_deadline else None
        results = [self.cached(predictor, t, horizon, as_of, claimant) for t in tickers]
        missing = [i for i, result in enumerate(results) if result is None]
        if missing:  # computed together (forecast_many) in the threadpool
            computed = await run_in_threadpool(
                self.forecast_many, predictor, [tickers[i] for i in missing], horizon, as_of,
                claimant, deadline)
            for i, result in zip(missing, computed):
                results[i] = result
        return results  # type: ignore[return-value]

    # -- the steps -----------------------------------------------------------------------------

    def forecast(self, predictor: Predictor, ticker: str, horizon: int = 1,
                 as_of: dt.date | None = None, claimant: Hashable = None) -> ServedForecast:
        """One ticker's forecast from its bars up to as_of (default: the latest bar).

        Requests for one ticker take turns here: when a new bar lands, the concurrent requests
        that all miss wait for the first one's forecast instead of each computing it.
        `claimant`: the request, as passed to `cached` before (see there).
        """
        # Without a forecast cache there is nothing to wait for: no turns.
        turn = self._ticker_locks(ticker) if self.forecasts.size else None
        if turn is not None and not turn.acquire(blocking=False):
            if self.lane is not None:
                self.lane.refuse_wait(f"{ticker}'s turn")  # no waiting in the lane
            turn.acquire()
        try:
            result = self.forecast_many(predictor, [ticker], horizon, as_of, claimant)[0]
        finally:
            if turn is not None:
                turn.release()
        if isinstance(result, StockcastError):
            raise result
        return result

    def cached(self, predictor: Predictor, ticker: str, horizon: int = 1,
               as_of: dt.date | None = None, claimant: Hashable = None) -> ServedForecast | None:
        """The forecast from memory alone (no DB, no features), or None.

        Found only while the ticker's shared bar check is fresh and its forecast is cached;
        never blocks, so an async route can answer warm requests on the event loop. When the
        check has expired, the first caller gets None and takes on renewing it (the others
        keep being answered from it): it passes the same `claimant` (one object per request;
        callers that pass none share one) to `forecast`/`forecast_many`, which give the claim
        back.
        """
        key = (ticker, self._end(as_of))
        check = self.checks.get(key)
        if check is None:
            return None
        if (self.monotonic() - check.checked_at >= self.bar_check_ttl
                and self._claim(key, claimant)):
            return None  # this request renews the check; the others keep using it meanwhile
        key = (ticker, check.last_bar_date, predictor.model_version, horizon)
        forecast = self.forecasts.get((*key, check.revision))
        if forecast is None:
            return None
        if self.record_live and check.live and self.recorded.get(key) is None:
            return None  # first served live (it was computed as a what-if): record it
        self._count(hit=True)
        return ServedForecast(forecast, check.stale, check.warnings + forecast.warnings, True)

    def forecast_many(self, predictor: Predictor, tickers: Sequence[str], horizon: int = 1,
                      as_of: dt.date | None = None, claimant: Hashable = None,
                      deadline: float | None = None) -> list[ServedForecast | StockcastError]:
        """Per ticker a ServedForecast or the error that stopped it; misses share one ORT call.

        DatabaseUnavailable is not per ticker: it is raised for the whole request, and so is
        ServerBusy once `deadline` (monotonic seconds) has passed between two tickers or two
        chunks; the forecasts and band states finished by then are kept, nothing is recorded.
        `claimant`: the request, as passed to `cached` before.
        Live forecasts (as of the ticker's latest cached bar, asked with or without an as_of)
        enter the ledger here, once each; what-ifs as of an earlier day never do.
        """
        distinct = list(dict.fromkeys(tickers))
        if len(distinct) < len(tickers):  # a ticker asked twice is computed (and refreshed) once
            answers = dict(zip(distinct, self.forecast_many(predictor, distinct, horizon, as_of,
                                                            claimant, deadline)))
            return [answers[t] for t in tickers]
        lookups: list[bool] = []  # the forecast cache's answers (hit?), counted at the end
        try:
            return self._forecast_many(predictor, tickers, horizon, as_of, claimant, lookups,
                                       deadline)
        except WouldWait:  # handed to the shared threadpool, whose re-run counts them
            lookups.clear()
            raise
        except ServerBusy:  # past the deadline: the renewals not reached are given back
            for ticker in tickers:
                self._release((ticker, self._end(as_of)), claimant)
            raise
        finally:
            for hit in lookups:
                self._count(hit)

    def _forecast_many(self, predictor: Predictor, tickers: Sequence[str], horizon: int,
                       as_of: dt.date | None, claimant: Hashable, lookups: list[bool],
                       deadline: float | None) -> list[ServedForecast | StockcastError]:
        """forecast_many of distinct tickers; the cache lookups made go into `lookups`."""
        end = self._end(as_of)
        results: list[ServedForecast | StockcastError | None] = [None] * len(tickers)
        misses: list[tuple[int, CachedBars, BarCheck]] = []
        live: set[int] = set()  # results as of their ticker's latest cached bar
        with ExitStack() as snapshot:
            # The due bar checks read on one connection, in one snapshot, and the stored
            # inputs of their live misses read in it too: one checkout for a cold request's
            # check and store read, where there were two. Closed before anything else: a
            # refresh from the source or a model run may outlast a checkout's time bound.
            try:
                conn, read = self._latest_bars(tickers, end, snapshot)
            except DatabaseUnavailable:  # the whole request fails: give back its renewal claims
                for ticker in tickers:
                    self._release((ticker, end), claimant)
                raise
            self._check_each(predictor, tickers, [i for i, t in enumerate(tickers) if t in read],
                             horizon, end, claimant, read, results, misses, live, lookups,
                             deadline)
            # Live misses fresh in the serving stores: their stored forecasts (a window and one
            # onnxruntime call together for states stored without one).
            stored = self._stored(predictor, [tickers[i] for i, _, c in misses if c.live],
                                  horizon, conn)
        # The others (a check shared from an earlier request, a refresh due, an unknown ticker,
        # an as_of) as before: each check on its own, their stored inputs read together.
        checked = len(misses)
        self._check_each(predictor, tickers, [i for i, t in enumerate(tickers) if t not in read],
                         horizon, end, claimant, read, results, misses, live, lookups, deadline)
        stored.update(self._stored(
            predictor, [tickers[i] for i, _, c in misses[checked:] if c.live], horizon))
        return self._computed(predictor, tickers, horizon, end, results, misses, live, stored,
                              deadline)

    def _check_each(self, predictor: Predictor, tickers: Sequence[str], indices: list[int],
                    horizon: int, end: dt.date | None, claimant: Hashable,
                    read: dict[str, CachedBars], results: list, misses: list,
                    live: set[int], lookups: list[bool], deadline: float | None) -> None:
        """The bar checks of tickers[i] for i in indices: a cached forecast into `results`, a
        miss into `misses` (with its bars, if the check read them), an error into `results`;
        a live one's index into `live`."""
        for i in indices:
            self._in_time(deadline)  # a check may refresh from the source: seconds, at worst
            ticker = tickers[i]
            try:
                check, bars = self._check(predictor, ticker, end, claimant, read.get(ticker))
                if check.live:
                    live.add(i)
                key = (ticker, check.last_bar_date, predictor.model_version, horizon,
                       check.revision)
                cached = self.forecasts.get(key)
                lookups.append(cached is not None)
                if cached is not None:
                    results[i] = ServedForecast(cached, check.stale,
                                                check.warnings + cached.warnings, True)
                    continue
                misses.append((i, bars, check))
            except DatabaseUnavailable:
                raise
            except StockcastError as exc:
                results[i] = exc

    def _computed(self, predictor: Predictor, tickers: Sequence[str], horizon: int,
                  end: dt.date | None, results: list, misses: list, live: set[int],
                  stored: dict[str, StoredInput], deadline: float | None
                  ) -> list[ServedForecast | StockcastError]:
        """The misses forecast from the stores or their bars, cached; the live ones recorded
        (once all are: past the deadline, none is)."""
        from_store = [(i, None, c) for i, _, c in misses if tickers[i] in stored]
        from_bars = []
        for i, bars, check in misses:
            if tickers[i] in stored:
                continue
            if bars is None:
                self._in_time(deadline)
            try:
                if bars is None:
                    bars = self._read(predictor, tickers[i], end)
                if len(bars.bars) < predictor.min_bars:
                    raise InsufficientHistory(tickers[i], len(bars.bars), predictor.min_bars)
                from_bars.append((i, bars, check))
            except DatabaseUnavailable:
                raise
            except StockcastError as exc:
                results[i] = exc

        def keep(items: list, computed: list[Forecast]) -> None:
            with self._count_lock:
                self.computed += len(computed)
            for (i, bars, check), forecast in zip(items, computed):
                # Keyed by the bar actually used, which may be newer than the shared check's.
                # And by the bars revision it came from (the stores' state: the check's or
                # newer).
                revision = check.revision if bars is None else bars.revision
                self.forecasts.put((forecast.ticker, forecast.as_of, forecast.model_version,
                                    horizon, revision), forecast)
                # The check holds the outcome of any refresh attempted for this request.
                stale, warnings = ((check.stale, check.warnings) if check.stale or bars is None
                                   else (bars.stale, bars.warnings))
                results[i] = ServedForecast(forecast, stale, warnings + forecast.warnings, False)

        if from_store:
            keep(from_store, predictor.forecast_stored(
                [stored[tickers[i]] for i, _, _ in from_store], horizon))
            with self._count_lock:
                self.from_store += len(from_store)
        for start in range(0, len(from_bars), BATCH_CHUNK):
            self._in_time(deadline)
            chunk = from_bars[start:start + BATCH_CHUNK]
            pairs = predictor.forecast_with_states([(b.ticker, b.bars) for _, b, _ in chunk],
                                                   horizon)
            self._save_states(predictor, [(state, bars.revision) for (i, bars, _), (_, state)
                                          in zip(chunk, pairs) if i in live
                                          and state is not None and bars.revision is not None])
            keep(chunk, [f for f, _ in pairs])
        self._record(predictor, [r.forecast for i, r in enumerate(results)
                                 if i in live and isinstance(r, ServedForecast)], horizon)
        return results  # type: ignore[return-value]

    def rendered(self, served: ServedForecast, variant: Hashable,
                 render: Callable[[ServedForecast], bytes]) -> bytes:
        """render(served), kept beside the cached forecast: a warm request reuses the bytes.

        `variant`: what else the bytes depend on (the route's horizon and level); the served
        staleness and warnings are part of the key too. Bytes are reused only for the very Forecast
        object they were rendered from, so a forecast computed again is rendered again.
        """
        f = served.forecast
        key = (f.ticker, f.as_of, f.model_version, variant, served.stale, served.warnings)
        entry = self.bodies.get(key)
        if entry is not None and entry[0] is f:
            return entry[1]
        body = render(served)
        self.bodies.put(key, (f, body))
        return body

    def _stored(self, predictor: Predictor, tickers: Sequence[str], horizon: int,
                conn: Connection | None = None) -> dict[str, StoredInput]:
        """The tickers' fresh stored inputs (read on `conn` if given, else in a snapshot of
        their own); none when the stores are off or fail (logged)."""
        if not self.use_store or not tickers:
            return {}
        try:
            with nullcontext(conn) if conn is not None else consistent_read(
                    self.bar_cache.engine) as read:
                return stored_inputs(read, predictor, tickers, horizon)
        except DatabaseUnavailable:
            raise
        except SQLAlchemyError as exc:
            log.warning("serving stores unreadable, forecasting from bars: %s",
                        exc.__class__.__name__)
            return {}

    def _save_states(self, predictor: Predictor, states: list) -> None:
        """Store the band states forecasts from bars were served with; errors only skip it."""
        if not self.use_store or not states or not servable(predictor):
            return
        try:
            with self.bar_cache.engine.begin() as conn:
                save_states(conn, predictor, states)
        except (SQLAlchemyError, DatabaseUnavailable) as exc:
            log.warning("band states not stored: %s", exc.__class__.__name__)

    def clear(self) -> None:
        """Forget cached forecasts, their rendered bodies and bar checks (after a model reload or
        bar rewrite)."""
        self.forecasts.clear()
        self.checks.clear()
        self.bodies.clear()

    # -- internals -----------------------------------------------------------------------------

    def _end(self, as_of: dt.date | None) -> dt.date | None:
        """The BarCache end date: None (latest) unless as_of lies before today."""
        if as_of is None or as_of >= self.bar_cache.clock().date():
            return None
        return as_of

    def _read(self, predictor: Predictor, ticker: str, end: dt.date | None) -> CachedBars:
        return self.bar_cache.get_bars(ticker, end=end, last=predictor.serving_bars,
                                       market=needs_market(predictor.spec))

    def _claim(self, key: Hashable, claimant: Hashable) -> bool:
        """True for the one caller that should renew an expired check (until it has)."""
        now = self.monotonic()
        with self._renewing_lock:
            taken = self._renewing.get(key)
            # A renewal that never finished (a request lost on the way) is retried after a while.
            if taken is not None and now - taken[0] < RENEWAL_TIMEOUT:
                return False
            self._renewing[key] = (now, claimant)
            return True

    def _release(self, key: Hashable, claimant: Hashable) -> None:
        """Give back the claim on renewing key's check, if this claimant holds it."""
        with self._renewing_lock:
            taken = self._renewing.get(key)
            if taken is not None and taken[1] is claimant:
                del self._renewing[key]

    def _latest_bars(self, tickers: Sequence[str], end: dt.date | None, stack: ExitStack
                     ) -> tuple[Connection | None, dict[str, CachedBars]]:
        """The latest bars of the tickers whose checks are due, read together (one statement;
        tickers a refresh is due for are left to `_check`), on a connection opened in `stack`
        as a consistent snapshot, returned for the stored inputs' read: one connection and
        one snapshot for a cold request's bar check and store read, where there were two (a
        checkout, a ping and a rollback each). (None, {}) when the stores are off or for an
        as_of: `_check` reads the bars then."""
        if not self.use_store or end is not None:
            return None, {}
        now = self.monotonic()
        due = [t for t in tickers if (c := self.checks.get((t, None))) is None
               or now - c.checked_at >= self.bar_check_ttl]
        if not due:
            return None, {}
        with database_faults():  # as BarCache says it
            conn = stack.enter_context(consistent_read(self.bar_cache.engine))
        return conn, self.bar_cache.latest_bars(due, conn)

    def _check(self, predictor: Predictor, ticker: str, end: dt.date | None,
               claimant: Hashable = None, latest: CachedBars | None = None
               ) -> tuple[BarCheck, CachedBars | None]:
        """The ticker's last bar date up to end: shared for bar_check_ttl, else asked now.

        Asking goes through the BarCache, which refreshes from the source when due. Renewing
        an expired check reads the last bar only (its forecast is most likely cached); a
        ticker seen for the first time reads the bars a forecast needs, returned for reuse.
        A claim the claimant took in `cached` is given back here, whether or not it renewed
        (another request may have been first); a request that took none leaves others' alone.
        `latest`: the ticker's latest bar as read just now (`_latest_bars`), used
        instead of asking when the check is due.
        """
        now = self.monotonic()
        key = (ticker, end)
        check = self.checks.get(key)
        if check is not None and now - check.checked_at < self.bar_check_ttl:
            self._release(key, claimant)
            return check, None
        try:
            # With the stores on, a first read is the last bar too: the forecast's inputs
            # most likely come from the stores (the bars are read after, on a miss).
            read = (latest if latest is not None
                    else self.bar_cache.get_bars(ticker, end=end, last=1) if check is not None
                    else self.bar_cache.latest_bar(ticker, end) if self.use_store
                    else self._read(predictor, ticker, end))
            if read.bars.empty:  # bars exist, but none on or before `end`
                raise InsufficientHistory(ticker, 0, predictor.min_bars)
            check = BarCheck(pd.Timestamp(read.bars["date"].to_numpy()[-1]).date(), read.stale,
                             read.warnings, now, read.latest, read.revision)
            self.checks.put(key, check)
        except WouldWait:
            # Handed to the shared threadpool: the claim goes with the request, whose re-run
            # renews the check and gives it back (the others keep the old check meanwhile).
            raise
        except BaseException:
            self._release(key, claimant)
            raise
        self._release(key, claimant)
        return check, (read if len(read.bars) > 1 else None)

    def _record(self, predictor: Predictor, forecasts: Sequence[Forecast], horizon: int) -> None:
        """Put live forecasts into the ledger once; a database error only skips the record."""
        if not self.record_live:
            return
        keys = [(f.ticker, f.as_of, f.model_version, horizon) for f in forecasts]
        todo = [(k, f) for k, f in zip(keys, forecasts) if self.recorded.get(k) is None]
        if not todo:
            return
        rows = [row for _, f in todo for row in ledger_rows(f, predictor.spec.quantiles)]
        try:
            with self.bar_cache.engine.begin() as conn:
                record_forecasts(conn, rows)
        except (SQLAlchemyError, DatabaseUnavailable) as exc:  # the guard's timeouts too
            log.warning("forecasts served but not recorded in the ledger: %s",
                        exc.__class__.__name__)
            return
        for key, _ in todo:
            self.recorded.put(key, True)

    def _in_time(self, deadline: float | None) -> None:
        """ServerBusy once a batch's deadline (monotonic seconds) has passed."""
        if deadline is not None and self.monotonic() >= deadline:
            raise ServerBusy(f"server busy: the batch was not forecast within "
                             f"{self.batch_deadline:g} s; the forecasts done are kept, "
                             "a retry computes the rest")

    def _count(self, hit: bool) -> None:
        with self._count_lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1
        if self.on_lookup is not None:
            self.on_lookup(hit)
