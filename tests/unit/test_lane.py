"""The forecast lane: at most `slots` at once, bounded waits, nothing waited for inside it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import anyio.to_thread
import pytest

from service.api.lane import ForecastLane, WouldWait
from service.core.errors import ServerBusy


class Gauge:
    """How many callers are inside at once (the most seen)."""

    def __init__(self):
        self.now = self.most = 0
        self._lock = threading.Lock()

    def __enter__(self):
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc):
        with self._lock:
            self.now -= 1


def _run(main):
    """anyio.run(main) on a thread of its own: the browser tests' Playwright keeps an event loop
    running on the main thread for the whole session."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(anyio.run, main).result()


def test_at_most_slots_run_at_once_and_a_turn_not_given_in_time_is_server_busy():
    lane = ForecastLane(slots=2, wait=0.75)
    gauge = Gauge()
    outcomes: dict[int, tuple[object, float]] = {}

    def work(i: int) -> int:
        with gauge:
            time.sleep(0.5)
        return i

    async def request(i: int) -> None:
        started = time.monotonic()
        try:
            outcomes[i] = (await lane.run(work, i), time.monotonic() - started)
        except ServerBusy as exc:
            outcomes[i] = (exc, time.monotonic() - started)

    async def main():
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(request, i)
                await anyio.sleep(0.01)  # in this order

    _run(main)
    # Two run at 0 s, two more when they end (0.5 s: within the 0.75 s wait), the fifth would
    # start at 1.0 s: it is answered busy at 0.75 s instead.
    assert gauge.most == 2
    assert [outcomes[i][0] for i in range(4)] == [0, 1, 2, 3]
    busy, took = outcomes[4]
    assert isinstance(busy, ServerBusy)
    assert str(busy) == ("server busy: 2 forecasts computing and no turn for this one "
                         "within 0.75 s")
    assert 0.7 < took < 0.95
    assert lane.waits_timed_out == 1 and lane.busy == 0  # every turn given back


def test_what_would_wait_in_the_lane_raises_would_wait_and_gives_the_turn_back():
    lane = ForecastLane(slots=1, wait=0.5)
    seen = []

    def refresh_due() -> str:
        seen.append(lane.in_lane())
        lane.refuse_wait("a refresh of AAA")
        return "waited"  # never: the lane does not wait

    async def main():
        with pytest.raises(WouldWait, match="a refresh of AAA"):
            await lane.run(refresh_due)
        assert lane.busy == 0
        assert await lane.run(lambda: "next") == "next"  # the turn is free at once
        # Outside the lane (the shared threadpool, the caller's own thread) it may wait.
        assert await anyio.to_thread.run_sync(refresh_due) == "waited"

    _run(main)
    assert refresh_due() == "waited"
    assert seen == [True, False, False] and lane.handed_back == 1 and lane.busy == 0


def test_an_exception_in_the_lane_gives_the_turn_back():
    lane = ForecastLane(slots=1, wait=0.2)

    def fails():
        raise KeyError("boom")

    async def main():
        for _ in range(3):
            with pytest.raises(KeyError):
                await lane.run(fails)
        return await lane.run(lambda: lane.in_lane())

    assert _run(main) is True and lane.busy == 0 and not lane.in_lane()


def test_the_lane_has_threads_of_its_own_when_the_shared_pool_is_taken():
    lane = ForecastLane(slots=1, wait=0.5)
    release = threading.Event()

    async def main():
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, release.wait)  # the shared pool's one
            await anyio.sleep(0.05)
            started = time.monotonic()
            try:
                with anyio.fail_after(1.0):  # on the shared pool it would wait for ever
                    assert await lane.run(lambda: "ran") == "ran"
            finally:
                release.set()
            took = time.monotonic() - started
        return took

    assert _run(main) < 0.3


def test_a_lane_needs_a_slot():
    with pytest.raises(ValueError, match="a forecast lane needs at least one slot, got 0"):
        ForecastLane(slots=0, wait=1.0)
