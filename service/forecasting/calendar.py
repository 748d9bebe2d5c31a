"""Future trading dates from the real NYSE calendar (exchange_calendars XNYS), not a holiday list."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import exchange_calendars as xcals
import pandas as pd

# exchange_calendars' default range ends about a year after today; forecasts for as_of dates in
# the past or far future need explicit bounds. The calendar is built per span of years and cached.
_FIRST_YEAR = 2000
_LAST_YEAR = 2040


@lru_cache(maxsize=8)
def _xnys(first_year: int, last_year: int) -> xcals.ExchangeCalendar:
    return xcals.get_calendar("XNYS", start=f"{first_year}-01-01", end=f"{last_year}-12-31")


def check_date_range(start, end) -> None:
    """ValueError "start ... is after end ..." when both are given and start is the later: the
    one wording of a reversed range, in ingest, train, backtest and evaluate alike."""
    if start is not None and end is not None and start > end:
        raise ValueError(f"start {start} is after end {end}")


def next_trading_days(after: dt.date, n: int) -> list[dt.date]:
    """The first `n` NYSE sessions strictly after `after`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return []
    return list(_next_sessions(after, n))


@lru_cache(maxsize=4096)  # a cold forecast's dates: most tickers share their last bar's date
def _next_sessions(after: dt.date, n: int) -> tuple[dt.date, ...]:
    # n sessions fit in n * 7/5 + holidays calendar days; 2n + 14 is ample and stays in range.
    last_needed = after + dt.timedelta(days=2 * n + 14)
    calendar = _xnys(min(_FIRST_YEAR, after.year - 1), max(_LAST_YEAR, last_needed.year + 1))
    sessions = calendar.sessions_in_range(
        pd.Timestamp(after + dt.timedelta(days=1)), pd.Timestamp(last_needed)
    )
    return tuple(ts.date() for ts in sessions[:n])


def last_closed_session(now: dt.datetime, settle: dt.timedelta = dt.timedelta(hours=2)
                        ) -> dt.date:
    """The latest NYSE session whose close lies at least `settle` before `now` (aware)."""
    calendar = _xnys(min(_FIRST_YEAR, now.year - 1), max(_LAST_YEAR, now.year + 1))
    day = now.astimezone(dt.UTC).date()
    sessions = calendar.sessions_in_range(pd.Timestamp(day - dt.timedelta(days=14)),
                                          pd.Timestamp(day))
    for session in reversed(sessions):
        if calendar.session_close(session) + settle <= pd.Timestamp(now):
            return session.date()
    raise ValueError(f"no NYSE session closed in the two weeks before {now}")
