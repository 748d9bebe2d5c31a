"""The forecast lane: the few threads one-ticker cold forecasts compute on, waits bounded.

A cold forecast is short Python around short database calls that let go of the GIL. Run on
the shared threadpool (40 threads), 16 requests in flight are 16 runnable threads taking the
GIL from each other and from the event loop: at 16 connections the CPU per request doubled
and one in a hundred waited ~0.6 s (bench/cold.py). The lane lets `slots` of them run at
once (2 by default: the event loop and one database call can overlap; more only adds
switching) on threads of its own, and queues the rest on the event loop, where a waiting
request costs nothing. A request that gets no turn within `wait` seconds is answered 503
(ServerBusy, Retry-After), as the database pool answers one that gets no connection.

Nothing in the lane waits for the network or for another request: a forecast that would (a
refresh from the bar source is due; another request holds the ticker's turn, computing the
same forecast or refreshing its bars) raises WouldWait before it waits, and its request
goes on in the shared threadpool as before the lane, the lane's turn given back. So a slow
source or a slow neighbour never holds a turn; the cost is that request's bar check read
twice. Batches (`POST /predict`) keep the shared threadpool: one request, many tickers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from service.core.errors import ServerBusy

T = TypeVar("T")


class WouldWait(Exception):
    """Raised in a lane thread instead of waiting (the source, another request's turn)."""


class ForecastLane:
    """At most `slots` forecasts computing at once; a turn waited for at most `wait` seconds."""

    def __init__(self, slots: int, wait: float):
        if slots < 1:
            raise ValueError(f"a forecast lane needs at least one slot, got {slots}")
        self.slots = slots
        self.wait = wait
        self._turns: anyio.CapacityLimiter | None = None  # made on the event loop
        # Its own threads: never waiting for the shared pool's 40 while holding a turn.
        self._threads: anyio.CapacityLimiter | None = None
        self._local = threading.local()
        self.waits_timed_out = 0
        self.handed_back = 0  # forecasts that would have waited, gone to the shared pool

    @property
    def busy(self) -> int:
        """Turns taken now."""
        return 0 if self._turns is None else int(self._turns.borrowed_tokens)

    def in_lane(self) -> bool:
        """Whether the calling thread runs a lane turn (then it must not wait)."""
        return getattr(self._local, "active", False)

    def refuse_wait(self, what: str) -> None:
        """In a lane thread: raise WouldWait (`what` would have been waited for); else no-op."""
        if self.in_lane():
            raise WouldWait(what)

    async def run(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) on a lane thread once this request has a turn (ServerBusy if none comes
        in time); WouldWait if fn would have waited (the caller goes on elsewhere)."""
        if self._turns is None:
            self._turns = anyio.CapacityLimiter(self.slots)
            self._threads = anyio.CapacityLimiter(self.slots)
        borrower = object()
        try:
            with anyio.fail_after(self.wait):
                await self._turns.acquire_on_behalf_of(borrower)
        except TimeoutError:
            self.waits_timed_out += 1
            raise ServerBusy(
                f"server busy: {self.slots} forecasts computing and no turn for this one "
                f"within {self.wait:g} s") from None
        try:
            return await anyio.to_thread.run_sync(self._in_lane, fn, *args,
                                                  limiter=self._threads)
        except WouldWait:
            self.handed_back += 1
            raise
        finally:
            self._turns.release_on_behalf_of(borrower)

    def _in_lane(self, fn: Callable[..., T], *args) -> T:
        self._local.active = True
        try:
            return fn(*args)
        finally:
            self._local.active = False
