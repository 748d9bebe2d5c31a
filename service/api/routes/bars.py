"""GET /tickers and GET /bars/{ticker}: the cached data the web page charts."""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Query

from service.api.deps import BarCacheDep, EngineDep, MigratedDep, ModelSlotDep
from service.api.problems import InvalidField, problem_responses
from service.api.routes.predict import TickerPath
from service.api.schemas import (
    ApiDate,
    BarsPublic,
    IndicatorsPublic,
    TickerListPublic,
    TickerPublic,
)
from service.db.bars import list_tickers
from service.forecasting.indicators import INDICATOR_NAMES, chart_indicators

router = APIRouter(tags=["bars"], dependencies=[MigratedDep])

# Default chart range when start is not given.
DEFAULT_RANGE = dt.timedelta(days=365)
# Calendar days read before `start` so the exponential indicators have settled by then
# (~310 sessions, the same margin the forecasts use).
INDICATOR_LEAD = dt.timedelta(days=450)


@router.get("/tickers", summary="Cached tickers", response_model=TickerListPublic,
            description="Every ticker with stored bars and its date range, by symbol.",
            responses=problem_responses(503))
def list_cached_tickers(engine: EngineDep, models: ModelSlotDep) -> TickerListPublic:
    """The cache's tickers, and whether the served model was trained on each."""
    with engine.connect() as conn:
        states = list_tickers(conn)
    loaded = models.current
    manifest = loaded.predictor.manifest if loaded is not None else None
    return TickerListPublic(tickers=[
        TickerPublic(ticker=s.symbol, first_bar_date=s.first_bar_date,
                     last_bar_date=s.last_bar_date, last_refresh_status=s.last_refresh_status,
                     seen_in_training=(manifest.seen_in_training(s.symbol)
                                       if manifest is not None else None))
        for s in states
    ])


def _column(values) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


@router.get(
    "/bars/{ticker}",
    summary="Bars and indicators of one ticker",
    description=("Daily OHLCV bars in [start, end] (default: the year up to the latest bar) "
                 "with SMA20/50, Bollinger bands (20, 2), RSI(14) and MACD (12, 26, 9) on the "
                 "close, computed with the `ta` library like the model's features. A ticker "
                 "not in the cache is fetched from the source."),
    response_model=BarsPublic,
    responses=problem_responses(404, 422, 503),
)
def get_bars(
    ticker: TickerPath,
    bar_cache: BarCacheDep,
    start: Annotated[ApiDate | None, Query(
        description="First date (inclusive), YYYY-MM-DD, 1900-01-01..2100-12-31.")] = None,
    end: Annotated[ApiDate | None, Query(
        description="Last date (inclusive), YYYY-MM-DD, 1900-01-01..2100-12-31.")] = None,
) -> BarsPublic:
    """Bars of one ticker in columns, with chart indicators."""
    if start is not None and end is not None and start > end:
        raise InvalidField("start", "query", f"must be on or before end ({end.isoformat()})")
    today = bar_cache.clock().date()
    cache_end = end if end is not None and end < today else None
    lead_start = start - INDICATOR_LEAD if start is not None else None
    cached = bar_cache.get_bars(ticker, start=lead_start, end=cache_end)
    bars = cached.bars
    if start is None and not bars.empty:
        start = bars["date"].iloc[-1].date() - DEFAULT_RANGE
    indicators = chart_indicators(bars)
    keep = (bars["date"] >= pd.Timestamp(start) if start is not None
            else bars["date"].notna()).to_numpy()
    shown, shown_ind = bars.loc[keep], indicators.loc[keep]
    return BarsPublic(
        ticker=cached.ticker, stale=cached.stale, warnings=list(cached.warnings),
        dates=[d.date() for d in shown["date"]],
        open=shown["open"].tolist(), high=shown["high"].tolist(), low=shown["low"].tolist(),
        close=shown["close"].tolist(), adj_close=shown["adj_close"].tolist(),
        volume=[int(v) for v in shown["volume"]],
        indicators=IndicatorsPublic(**{name: _column(shown_ind[name].to_numpy())
                                       for name in INDICATOR_NAMES}),
    )
