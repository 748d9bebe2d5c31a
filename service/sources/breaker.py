"""A circuit breaker around a BarSource: after the upstream fails, stop asking it for a while.

Offline, yfinance fails every fetch only after its retries and backoff (about 2-4 s). The
BarCache throttles refreshes per ticker, but each ticker would still pay that once; with the
breaker only the first one does, and requests for every other ticker answer at once (stale from
the cache, or 503 when nothing is cached) until the cool-down has passed.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

import pandas as pd

from service.core.errors import (
    SourceCoolingDown,
    SourceNotConfigured,
    SourceUnavailable,
    UnknownTicker,
)
from service.sources.base import BarSource

# Seconds a request refused while another one probes the recovered upstream is told to wait.
PROBE_RETRY_AFTER = 1.0


class CircuitBreaker:
    """A BarSource that fails fast for `cooldown` after its upstream raised SourceUnavailable."""

    def __init__(self, source: BarSource, cooldown: dt.timedelta = dt.timedelta(minutes=5),
                 monotonic: Callable[[], float] = time.monotonic):
        self.source = source
        self.name = source.name
        self.cooldown = cooldown.total_seconds()
        self.monotonic = monotonic
        self._failed_at: float | None = None
        self._failure = ""
        self._probing = False  # after the cool-down, one request is asking the upstream again
        self._lock = threading.Lock()
        # The last answer's outcome, for the page's freshness line: None = never asked yet.
        self.reachable: bool | None = None
        self.last_error: str | None = None
        self.last_answer_at: dt.datetime | None = None

    def fetch(self, ticker: str, start: dt.date | None = None,
              end: dt.date | None = None) -> pd.DataFrame:
        """The upstream's fetch, unless it failed less than `cooldown` ago (then at once)."""
        return self._call(ticker, lambda: self.source.fetch(ticker, start, end))

    def fetch_many(self, tickers, start: dt.date | None = None,
                   end: dt.date | None = None) -> dict[str, pd.DataFrame]:
        """The upstream's batched fetch (or nothing, for a source without one): the caller
        fetches what is left out one by one."""
        fetch_many = getattr(self.source, "fetch_many", None)
        if fetch_many is None:
            return {}
        return self._call(f"{len(tickers)} tickers", lambda: fetch_many(tickers, start, end))

    def _call(self, ticker: str, call):
        probe = False
        with self._lock:
            if self._failed_at is not None:
                age = self.monotonic() - self._failed_at
                if age < self.cooldown:
                    raise SourceCoolingDown(
                        f"{self.name} not asked for {ticker}: it failed {age:.0f} s ago "
                        f"(next try after {self.cooldown:.0f} s): {self._failure}",
                        self.cooldown - age)
                if self._probing:  # half-open: one request asks again, the others wait for it
                    raise SourceCoolingDown(
                        f"{self.name} not asked for {ticker}: another request is asking it "
                        f"again, {age:.0f} s after it failed: {self._failure}", PROBE_RETRY_AFTER)
                self._probing = probe = True
        try:
            bars = call()
        except SourceNotConfigured:
            raise  # not an outage: nothing to wait for (and it answers at once anyway)
        except SourceUnavailable as exc:
            with self._lock:
                self._failed_at, self._failure = self.monotonic(), str(exc)
                self.reachable, self.last_error = False, str(exc)
                self.last_answer_at = dt.datetime.now(dt.UTC)
            raise
        except UnknownTicker:
            self._reachable()  # an answer, if not the hoped-for one
            raise
        else:  # closed before the probe's turn ends: no second probe in between (review)
            self._reachable()
        finally:
            if probe:
                with self._lock:
                    self._probing = False
        return bars

    def _reachable(self) -> None:
        with self._lock:
            self._failed_at = None
            self.reachable, self.last_error = True, None
            self.last_answer_at = dt.datetime.now(dt.UTC)
