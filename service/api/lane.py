"""The forecast lane: the few threads cold forecasts compute on, each request's wait bounded.

A cold forecast is short Python around short database calls that let go of the GIL. Run on
the shared threadpool (40 threads), 16 requests in flight are 16 runnable threads taking the
GIL from each other and from the event loop: at 16 connections the CPU per request doubled
and one in a hundred waited ~0.6 s (bench/cold.py). The lane lets `slots` of them run at
once (2 by default: the event loop and one database call can overlap; more only adds
switching) and queues the rest on the event loop, where a waiting request costs nothing.

Every wait is bounded: a request that gets no turn within `wait` seconds is answered 503
(ServerBusy, Retry-After), as the database pool answers one that gets no connection. A turn is
held for CPU and database work only: a thread waiting on the network (a refresh from the bar
source: retries, seconds) or on another request's forecast of the same ticker steps out of the
lane (`stepped_out`) and takes a turn again after, so a slow source cannot starve it.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import pandas as pd

from service.core.errors import ServerBusy
from service.sources.base import BarSource

T = TypeVar("T")


class ForecastLane:
    """At most `slots` forecasts computing at once; a turn waited for at most `wait` seconds."""

    def __init__(self, slots: int, wait: float):
        if slots < 1:
            raise ValueError(f"a forecast lane needs at least one slot, got {slots}")
        self.slots = slots
        self.wait = wait
        self._limiter: anyio.CapacityLimiter | None = None  # made on the event loop
        self._turn = threading.local()  # in a lane thread: its request's borrower token
        self.waits_timed_out = 0

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.slots)
        return self._limiter

    @property
    def busy(self) -> int:
        """Turns taken now."""
        return 0 if self._limiter is None else int(self._limiter.borrowed_tokens)

    async def run(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) in a thread, once this request has a turn (ServerBusy if none comes)."""
        borrower = object()
        await self._take(borrower)
        held = [True]
        try:
            return await anyio.to_thread.run_sync(self._in_turn, borrower, held, fn, *args)
        finally:
            if held[0]:
                self.limiter.release_on_behalf_of(borrower)

    async def _take(self, borrower: object) -> None:
        try:
            with anyio.fail_after(self.wait):
                await self.limiter.acquire_on_behalf_of(borrower)
        except TimeoutError:
            self.waits_timed_out += 1
            raise ServerBusy(
                f"server busy: {self.slots} forecasts computing and no turn for this one "
                f"within {self.wait:g} s") from None

    def _in_turn(self, borrower: object, held: list[bool], fn: Callable[..., T], *args) -> T:
        self._turn.current = (borrower, held)
        try:
            return fn(*args)
        finally:
            self._turn.current = None

    @contextmanager
    def stepped_out(self) -> Iterator[None]:
        """Inside a lane thread: give the turn up while waiting (the network, a lock), and take
        one again after (ServerBusy if none comes in time). Elsewhere: nothing."""
        current = getattr(self._turn, "current", None)
        if current is None:
            yield
            return
        borrower, held = current
        anyio.from_thread.run_sync(self.limiter.release_on_behalf_of, borrower)
        held[0] = False
        try:
            yield
        finally:
            anyio.from_thread.run(self._take, borrower)
            held[0] = True


@contextmanager
def waiting(lock: threading.Lock, lane: ForecastLane | None) -> Iterator[None]:
    """Hold `lock`; a lane thread that must wait for it steps out of the lane meanwhile."""
    acquired = lock.acquire(blocking=False)
    try:
        if not acquired:
            with lane.stepped_out() if lane is not None else nullcontext():
                acquired = lock.acquire()
        yield
    finally:
        if acquired:  # also when no turn came back after the wait (ServerBusy)
            lock.release()


class SteppingOutSource:
    """A bar source whose fetches step out of the lane: a turn is not held over the network."""

    def __init__(self, source: BarSource, lane: ForecastLane):
        self.source = source
        self.lane = lane
        self.name = source.name

    def fetch(self, ticker: str, start: dt.date | None = None,
              end: dt.date | None = None) -> pd.DataFrame:
        with self.lane.stepped_out():
            return self.source.fetch(ticker, start, end)

    def fetch_many(self, tickers, start: dt.date | None = None,
                   end: dt.date | None = None) -> dict[str, pd.DataFrame]:
        fetch_many = getattr(self.source, "fetch_many", None)
        if fetch_many is None:
            return {}
        with self.lane.stepped_out():
            return fetch_many(tickers, start, end)

    def __getattr__(self, name: str):
        return getattr(self.source, name)  # the breaker's reachable, last_error, ...
