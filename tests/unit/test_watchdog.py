"""The database watchdog: a kill at its deadline, the thread woken only when it must be."""

from __future__ import annotations

import math
import threading
import time

from service.db.guard import Watchdog


def _sleeping(watchdog: Watchdog, timeout: float = 5.0) -> None:
    """Wait until the watchdog's thread sleeps (on a deadline or on nothing)."""
    started = time.monotonic()
    while watchdog._sleeps_until == -math.inf:
        assert time.monotonic() - started < timeout, "the watchdog thread never slept"
        time.sleep(0.005)


def test_a_later_deadline_leaves_the_thread_asleep_and_an_earlier_one_wakes_it():
    watchdog = Watchdog()
    fired: dict[str, float] = {}
    done = threading.Event()

    def kill(name: str):
        def call():
            fired[name] = time.monotonic()
            done.set()
        return call

    watchdog.arm(1, 30.0, kill("first"))
    _sleeping(watchdog)
    watchdog.arm(2, 60.0, kill("later"))  # after the one it sleeps until: no wake-up
    watchdog.arm(1, 45.0, kill("first"))  # re-armed later still: none either
    assert watchdog.wakeups == 0
    armed = time.monotonic()
    watchdog.arm(3, 0.05, kill("earlier"))  # before it: woken, and killed on time
    assert watchdog.wakeups == 1
    assert done.wait(5.0)
    assert list(fired) == ["earlier"]
    assert 0.04 <= fired["earlier"] - armed < 2.0
    watchdog.disarm(1)
    watchdog.disarm(2)


def test_a_deadline_armed_while_the_thread_is_awake_is_still_kept():
    # Armed between two looks of the thread (no notification sent): it reads the deadlines
    # again before it sleeps, so the kill still comes on time.
    watchdog = Watchdog()
    fired = threading.Event()
    watchdog.arm(1, 0.01, lambda: watchdog.arm(2, 0.05, fired.set))  # from the thread itself
    assert fired.wait(5.0)
    assert watchdog.wakeups == 0
