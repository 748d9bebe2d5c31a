"""The forecast lane: at most `slots` at once, bounded waits, turns given up while waiting."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from service.api.lane import ForecastLane, SteppingOutSource, waiting
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
    return anyio.run(main)


def test_at_most_slots_run_at_once_and_a_turn_not_given_in_time_is_server_busy():
    lane = ForecastLane(slots=2, wait=0.75)
    gauge = Gauge()
    outcomes: dict[int, object] = {}

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


def test_a_thread_waiting_on_the_network_gives_its_turn_to_the_next_request():
    lane = ForecastLane(slots=1, wait=0.5)
    finished: dict[str, float] = {}
    t0 = time.monotonic()

    class SlowSource:
        name = "slow"
        reachable = True

        def fetch(self, ticker, start=None, end=None):
            time.sleep(1.0)  # a refresh: the network, with retries
            return ticker

    source = SteppingOutSource(SlowSource(), lane)

    def refreshing() -> str:
        got = source.fetch("AAA")
        assert lane.busy == 1  # its turn taken again before it goes on
        return got

    def quick() -> str:
        return "BBB"

    async def request(name, fn):
        assert await lane.run(fn) == name.upper()
        finished[name] = time.monotonic() - t0

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(request, "aaa", refreshing)
            await anyio.sleep(0.1)
            tg.start_soon(request, "bbb", quick)

    _run(main)
    # Held over the fetch, the one turn would have kept BBB out past its 0.5 s wait (busy).
    assert finished["bbb"] < 0.5 and finished["aaa"] > 1.0
    assert source.reachable is True and source.name == "slow"  # the wrapped source's state


def test_no_turn_back_after_stepping_out_is_server_busy_and_releases_what_it_held():
    lane = ForecastLane(slots=1, wait=0.3)
    lock = threading.Lock()
    outcomes = {}

    def holder():  # holds the ticker's lock, waits outside the lane for 0.6 s
        with waiting(lock, lane):
            with lane.stepped_out():
                time.sleep(0.6)
            outcomes["holder went on"] = True  # never: no turn came back
        return "held"

    def hog():  # takes the one turn meanwhile and keeps it 1.2 s
        time.sleep(1.2)
        return "hog"

    async def request(name, fn):
        try:
            outcomes[name] = await lane.run(fn)
        except ServerBusy as exc:
            outcomes[name] = exc

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(request, "holder", holder)
            await anyio.sleep(0.1)
            tg.start_soon(request, "hog", hog)

    _run(main)
    # The holder wants its turn back at 0.6 s and waits 0.3 s; the hog keeps it to 1.3 s.
    assert isinstance(outcomes["holder"], ServerBusy) and outcomes["hog"] == "hog"
    assert "holder went on" not in outcomes
    assert not lock.locked() and lane.busy == 0 and lane.waits_timed_out == 1


def test_waiting_for_a_lock_held_by_another_request_steps_out_of_the_lane():
    lane = ForecastLane(slots=1, wait=0.4)
    lock = threading.Lock()
    order = []

    def first():  # holds the ticker's lock over a wait outside the lane (its refresh)
        with waiting(lock, lane):
            with lane.stepped_out():
                time.sleep(0.6)
            order.append("first")
        return 1

    def second():  # the same ticker: waits for the lock, outside the lane
        with waiting(lock, lane):
            order.append("second")
        return 2

    def other():  # another ticker: must not wait behind either
        order.append("other")
        return 3

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(lane.run, first)
            await anyio.sleep(0.1)
            tg.start_soon(lane.run, second)
            await anyio.sleep(0.1)
            tg.start_soon(lane.run, other)

    _run(main)
    assert order == ["other", "first", "second"]
    assert not lock.locked() and lane.busy == 0


def test_outside_a_lane_thread_stepping_out_is_nothing():
    lane = ForecastLane(slots=1, wait=0.1)
    with lane.stepped_out():
        pass
    lock = threading.Lock()
    with waiting(lock, None):
        assert lock.locked()
    assert not lock.locked()


@pytest.mark.parametrize("slots", [0])
def test_a_lane_needs_a_slot(slots):
    with pytest.raises(ValueError, match="a forecast lane needs at least one slot, got 0"):
        ForecastLane(slots=slots, wait=1.0)
