"""GET /source: whether the market-data source answered its last call (the page's freshness)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.api.deps import BarCacheDep
from service.api.schemas import SourcePublic, Ticker
from service.core.errors import DatabaseUnavailable, StockcastError
from service.db.bars import TickerState, ticker_state

router = APIRouter(tags=["bars"])


@router.get("/source", summary="The market-data source", response_model=SourcePublic,
            description="Its name and whether its last answer (on this worker) came through; "
                        "with `STOCKCAST_SOURCE=none` it is never reachable. With `ticker`, a "
                        "source not asked yet is asked now, by refreshing that ticker the way "
                        "a forecast would (throttled per ticker like every refresh).")
async def get_source(
    bar_cache: BarCacheDep,
    ticker: Annotated[Ticker | None, Query(
        description="A ticker to refresh when the source was not asked yet.")] = None,
) -> SourcePublic:
    """The source's last outcome; asks it through one ticker's refresh if it never answered."""
    source = bar_cache.source
    name = getattr(source, "name", "unknown")
    if name == "none":
        return SourcePublic(name=name, reachable=False, last_answer_at=None,
                            detail="no bar source configured (STOCKCAST_SOURCE=none)")
    if ticker is not None and getattr(source, "reachable", None) is None:
        try:
            await run_in_threadpool(bar_cache.get_bars, ticker, last=1)
        except StockcastError:
            pass  # the outcome is what the source recorded
        if getattr(source, "reachable", None) is None:
            # Not asked: the ticker's refresh is throttled after an earlier attempt (by another
            # worker, or before a restart), whose outcome the database kept.
            state = await run_in_threadpool(_state, bar_cache, ticker)
            if state is not None and state.last_refresh_at is not None:
                failed = state.last_refresh_status == "error"
                return SourcePublic(
                    name=name, reachable=not failed, last_answer_at=state.last_refresh_at,
                    detail=(f"the last refresh of {ticker} failed: {state.last_refresh_error}"
                            if failed else None))
    return SourcePublic(name=name, reachable=getattr(source, "reachable", None),
                        last_answer_at=getattr(source, "last_answer_at", None),
                        detail=getattr(source, "last_error", None))


def _state(bar_cache, ticker: str) -> TickerState | None:
    try:
        with bar_cache.engine.connect() as conn:
            return ticker_state(conn, ticker)
    except (SQLAlchemyError, DatabaseUnavailable):  # the guard's timeouts too
        return None
