"""The one way bars enter the cache: validate -> upsert -> refresh state.

`stockcast ingest`/`seed` (sources/ingest.py) and the bar cache's refresh (sources/cache.py)
both write through here: only a ValidationResult (validate_bars' output) can be stored, the
upsert also updates each ticker's stored range and the market series derived from the
cross-section (sources/market.py), and a refresh records its outcome in the same transaction.
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


def validate(frame: pd.DataFrame, ticker: str | None = None) -> ValidationResult:
    """Validate a source's frame; `ticker` labels a single-ticker frame (a fetch's answer)."""
    return validate_bars(frame if ticker is None else frame.assign(ticker=ticker))


def write_bars(engine: Engine, validated: ValidationResult, source: str, *,
               refreshed: tuple[str, dt.datetime] | None = None,
               progress: Callable[[int], None] | None = None,
               after_write: AfterWrite | None = None) -> UpsertCount:
    """Upsert the valid bars (ranges updated, the market series rewritten from their first
    date) and, for a refresh of (ticker, at), record it ok.

    When rows were new or changed, `after_write(conn, tickers)` then runs in its own
    transaction (the ledger scores what became due); if it fails the bars stay, logged.
    """
    with engine.begin() as conn:
        count = upsert_bars(conn, validated.bars, source=source, progress=progress)
        if count.written:
            # The derived market series follows the bars in the same transaction.
            update_market(conn, pd.Timestamp(validated.bars["date"].min()).date())
        if refreshed is not None:
            ticker, at = refreshed
            record_refresh(conn, ticker, "ok", None, at=at)
    if count.written and after_write is not None:
        tickers = sorted(validated.bars["ticker"].unique())
        try:
            with engine.begin() as conn:
                after_write(conn, tickers)
        except (SQLAlchemyError, DatabaseUnavailable) as exc:  # the guard's timeouts too
            log.warning("bars stored, but the after-write step failed: %s", exc)
    return count
