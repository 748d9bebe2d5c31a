"""The one way bars enter the cache: validate -> upsert -> refresh state.

`stockcast ingest`/`seed` (sources/ingest.py) and the bar cache's refresh (sources/cache.py)
both write through here: only a ValidationResult (validate_bars' output) can be stored, the
upsert also updates each ticker's stored range, and a refresh records its outcome in the same
transaction; the market series derived from the cross-section (sources/market.py) follows in
its own.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence

import pandas as pd
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from service.core.errors import DatabaseUnavailable
from service.db.bars import UpsertCount, record_refresh, upsert_bars
from service.sources.market import update_market
from service.sources.validate import ValidationResult, validate_bars

log = logging.getLogger(__name__)

# Called with (connection, tickers) after bars of those tickers were written (the forecast
# ledger scores what became due); its failure never undoes the bars.
AfterWrite = Callable[[Connection, Sequence[str]], object]


def validate(frame: pd.DataFrame, ticker: str | None = None,
             today: dt.date | None = None) -> ValidationResult:
    """Validate a source's frame; `ticker` labels a single-ticker frame (a fetch's answer),
    `today` is the caller's clock's date (default: the UTC date now; later bars are refused)."""
    return validate_bars(frame if ticker is None else frame.assign(ticker=ticker), today)


def write_bars(engine: Engine, validated: ValidationResult, source: str, *,
               refreshed: tuple[str, dt.datetime] | None = None,
               progress: Callable[[int], None] | None = None,
               after_write: AfterWrite | None = None, market: bool = True) -> UpsertCount:
    """Upsert the valid bars (ranges updated) and, for a refresh of (ticker, at), record it ok;
    then (unless `market` is False: a batch that rebuilds the series once at its end) rewrite
    the market series from their first date.

    When rows were new or changed, `after_write(conn, tickers)` then runs in its own
    transaction (the ledger scores what became due); if it fails the bars stay, logged.
    """
    with engine.begin() as conn:
        count = upsert_bars(conn, validated.bars, source=source, progress=progress)
        if refreshed is not None:
            ticker, at = refreshed
            record_refresh(conn, ticker, "ok", None, at=at)
    if count.written and market:
        # The derived market series follows in its own transaction, after the bars commit: it
        # reads the cross-section over the written span (≈1.5 s for a new ticker's five years
        # on a full Postgres cache), which must never cost a request its valid bars. If it
        # fails (the API's 2 s guard), the bars stay and `rebuild_market` — run by every
        # `stockcast refresh` and daily cycle — repairs it.
        try:
            with engine.begin() as conn:
                update_market(conn, pd.Timestamp(validated.bars["date"].min()).date())
        except (SQLAlchemyError, DatabaseUnavailable) as exc:
            log.warning("bars stored, but the market series was not updated "
                        "(the next refresh rebuilds it): %s", exc)
    if count.written and after_write is not None:
        tickers = sorted(validated.bars["ticker"].unique())
        try:
            with engine.begin() as conn:
                after_write(conn, tickers)
        except (SQLAlchemyError, DatabaseUnavailable) as exc:  # the guard's timeouts too
            log.warning("bars stored, but the after-write step failed: %s", exc)
    return count
