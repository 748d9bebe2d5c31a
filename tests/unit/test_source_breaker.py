"""The circuit breaker: one upstream failure, then fast failures until the cool-down passes."""

from __future__ import annotations

import datetime as dt

import pytest

from service.core.errors import SourceCoolingDown, SourceUnavailable, UnknownTicker
from service.sources.breaker import CircuitBreaker
from tests.bar_factories import ScriptedSource, make_bars, timeout_error


class Seconds:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def parts():
    upstream = ScriptedSource({"AAA": make_bars(30), "BBB": make_bars(30, seed=1)})
    clock = Seconds()
    return upstream, clock, CircuitBreaker(upstream, dt.timedelta(minutes=5), monotonic=clock)


def _open(upstream, breaker):
    """One failed fetch of AAA (the breaker opens), then the upstream answers again."""
    upstream.fail_with = timeout_error("AAA")
    with pytest.raises(SourceUnavailable):
        breaker.fetch("AAA")
    upstream.fail_with = None


def test_after_a_failure_no_ticker_reaches_the_upstream_until_the_cooldown(parts):
    upstream, clock, breaker = parts
    upstream.fail_with = timeout_error("AAA")
    with pytest.raises(SourceUnavailable):
        breaker.fetch("AAA")
    clock.now += 42
    with pytest.raises(SourceUnavailable) as caught:
        breaker.fetch("BBB")
    assert str(caught.value) == (
        "scripted not asked for BBB: it failed 42 s ago (next try after 300 s): "
        "yfinance unavailable for AAA after 3 attempts: timed out")
    # Not asked (a SourceUnavailable the cache records nothing for), 258 s before it asks again.
    assert isinstance(caught.value, SourceCoolingDown) and caught.value.retry_after == 258
    assert [c[0] for c in upstream.calls] == ["AAA"]
    upstream.fail_with = None
    clock.now += 300
    assert len(breaker.fetch("BBB")) == 30  # asked again, and it answered
    assert [c[0] for c in upstream.calls] == ["AAA", "BBB"]


def test_an_unknown_ticker_answer_closes_the_breaker(parts):
    upstream, clock, breaker = parts
    _open(upstream, breaker)
    clock.now += 301
    with pytest.raises(UnknownTicker):
        breaker.fetch("ZZZ")
    assert len(breaker.fetch("AAA")) == 30  # no cool-down after a reachable answer
    assert breaker.name == "scripted"


def test_after_the_cooldown_one_request_asks_again_and_the_others_do_not_wait(parts):
    """Half-open: with the upstream back but slow, the first request after the cool-down asks
    it; one arriving meanwhile is answered at once (not a second upstream call), then asks
    normally once the first answer closed the breaker (found by review: every waiting request
    went upstream together)."""
    import threading
    import time

    upstream, clock, breaker = parts
    _open(upstream, breaker)
    upstream.delay = 0.5
    clock.now += 301
    probe = threading.Thread(target=breaker.fetch, args=("AAA",))
    probe.start()
    deadline = time.monotonic() + 5
    while len(upstream.calls) < 2:  # the probe has reached the upstream
        assert time.monotonic() < deadline, "the probe never reached the upstream"
        time.sleep(0.001)
    with pytest.raises(SourceCoolingDown) as caught:
        breaker.fetch("BBB")
    assert "another request is asking it again" in str(caught.value)
    assert caught.value.retry_after == 1.0
    probe.join()
    assert [c[0] for c in upstream.calls] == ["AAA", "AAA"]
    upstream.delay = 0.0
    assert len(breaker.fetch("BBB")) == 30  # closed by the probe's answer
    # A probe that fails opens it again for a whole cool-down.
    upstream.fail_with = timeout_error("AAA")
    with pytest.raises(SourceUnavailable):
        breaker.fetch("AAA")
    clock.now += 301
    with pytest.raises(SourceUnavailable):
        breaker.fetch("AAA")  # the probe, failing
    with pytest.raises(SourceCoolingDown) as again:
        breaker.fetch("BBB")
    assert again.value.retry_after == 300


def test_a_successful_probe_admits_no_second_probe(parts):
    """A request arriving after the probe's answer but before the breaker closed went upstream
    as a second probe (the probe's turn ended first; found by review)."""
    import threading

    upstream, clock, breaker = parts
    _open(upstream, breaker)
    clock.now += 301
    original, rival = breaker._reachable, []

    def reachable_after_a_rival():  # another request in that window
        if not rival:
            def ask():
                try:
                    rival.append(len(breaker.fetch("BBB")))
                except SourceCoolingDown as exc:
                    rival.append(exc.retry_after)
            thread = threading.Thread(target=ask)
            thread.start()
            thread.join()
        original()

    breaker._reachable = reachable_after_a_rival
    assert len(breaker.fetch("AAA")) == 30  # the probe, succeeding
    assert [c[0] for c in upstream.calls] == ["AAA", "AAA"]
    assert rival == [1.0]  # refused at once while the probe's answer was being recorded
