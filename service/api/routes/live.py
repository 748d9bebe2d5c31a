"""GET /metrics/live: how the served forecasts have done, from the forecast ledger."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import EngineDep
from service.api.problems import problem_responses, query_ticker
from service.api.schemas import LiveMetricsPublic, LiveMetricsRowPublic
from service.artifacts.manifest import VERSION_PATTERN
from service.evaluation.ledger import live_report
from service.forecasting.live import POOLED

router = APIRouter(prefix="/metrics", tags=["backtest"])


def _number(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@router.get(
    "/live",
    summary="Live forecast metrics",
    response_model=LiveMetricsPublic,
    description=(
        "Every live forecast the API served (as of the latest cached bar; `as_of` what-ifs are "
        "not recorded) is kept once per (ticker, as_of, model version, horizon) and scored when "
        "its target bar arrives. Per (ticker or pooled `*`, horizon, model version): forecasts "
        "recorded and scored, MAE and naive's MAE on the same forecasts in dollars, their ratio "
        "and the band's coverage; null until something is scored. An empty list when nothing "
        "matches."),
    responses=problem_responses(422, 503),
)
def get_live_metrics(
    engine: EngineDep,
    ticker: Annotated[str | None, Query(
        description="One ticker (default: pooled and every ticker).", max_length=15)] = None,
    horizon: Annotated[int | None, Query(ge=1, le=10_000,
                                         description="One horizon (default: all).")] = None,
    model_version: Annotated[str | None, Query(
        pattern=VERSION_PATTERN, description="One model version (default: all).")] = None,
) -> LiveMetricsPublic:
    """The ledger's metrics, filtered."""
    if ticker is not None and ticker != POOLED:
        ticker = query_ticker(ticker)  # an invalid one: 422, location query
    # A database fault is the problem handler's (503 database-unavailable); a client's bad
    # value is refused above, on every backend alike.
    with engine.connect() as conn:
        report = live_report(conn, ticker=None if ticker == POOLED else ticker,
                             horizon=horizon, model_version=model_version,
                             per_ticker=ticker != POOLED)
    return LiveMetricsPublic(metrics=[
        LiveMetricsRowPublic(
            ticker=r["ticker"], horizon=int(r["horizon"]), model_version=r["model_version"],
            n_forecasts=int(r["n_forecasts"]), n_scored=int(r["n_scored"]),
            **{k: _number(r[k]) for k in ("mae", "naive_mae", "rel_mae", "coverage")})
        for r in report.to_dict("records")
    ])
