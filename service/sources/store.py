"""The one way bars enter the cache: validate -> upsert -> refresh state.

`stockcast ingest`/`seed` (sources/ingest.py) and the bar cache's refresh (sources/cache.py)
both write through here: only a ValidationResult (validate_bars' output) can be stored, the
upsert also updates each ticker's stored range, and a refresh records its outcome in the same
transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pandas as pd
from sqlalchemy import Engine

from service.db.bars import UpsertCount, record_refresh, upsert_bars
from service.sources.validate import ValidationResult, validate_bars


def validate(frame: pd.DataFrame, ticker: str | None = None) -> ValidationResult:
    """Validate a source's frame; `ticker` labels a single-ticker frame (a fetch's answer)."""
    return validate_bars(frame if ticker is None else frame.assign(ticker=ticker))


def write_bars(engine: Engine, validated: ValidationResult, source: str, *,
               refreshed: tuple[str, dt.datetime] | None = None,
               progress: Callable[[int], None] | None = None) -> UpsertCount:
    """Upsert the valid bars (ranges updated) and, for a refresh of (ticker, at), record it ok."""
    with engine.begin() as conn:
        count = upsert_bars(conn, validated.bars, source=source, progress=progress)
        if refreshed is not None:
            ticker, at = refreshed
            record_refresh(conn, ticker, "ok", None, at=at)
    return count
