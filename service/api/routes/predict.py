"""POST /predict/{ticker} and POST /predict: forecasts from the served model.

A cold forecast reads the DB, builds features and runs onnxruntime, all blocking: that work runs
in the threadpool (`run_in_threadpool`), never on the event loop, so GET /healthz answers while
forecasts are in flight. A warm forecast is two in-memory lookups (`ForecastService.cached`),
answered on the event loop itself: as a plain `def` route every request, warm or not, paid two
threadpool round trips (endpoint and response validation), which halved warm throughput
(bench/serve.py: 0.45x the trivial endpoint as `def`, 0.75x this way).
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Body, Path, Request, Response
from pydantic import TypeAdapter

from service.api.deps import get_forecasting
from service.api.forecasts import ServedForecast
from service.api.model_slot import LoadedModel
from service.api.problems import InvalidField, error_problem, problem_responses
from service.api.routes import JsonRoute
from service.api.schemas import (
    TICKER_DOC_PATTERN,
    BandPublic,
    BatchForecastRequest,
    ForecastListPublic,
    ForecastPublic,
    ForecastRequest,
    ForecastStepPublic,
    Ticker,
    TickerErrorPublic,
)
from service.core.tickers import clipped

router = APIRouter(prefix="/predict", tags=["predict"], route_class=JsonRoute)
DEFAULT_REQUEST = ForecastRequest()  # no body: the next trading day
# What FastAPI renders a ForecastPublic response with (its dump_json path): the same bytes.
FORECAST_JSON = TypeAdapter(ForecastPublic)

TickerPath = Annotated[Ticker, Path(
    description="A Yahoo symbol, case-insensitive (`^GSPC` is sent URL-encoded as `%5EGSPC`).",
    json_schema_extra={"pattern": TICKER_DOC_PATTERN},
    openapi_examples={
        "stock": {"value": "AAPL"}, "index": {"summary": "URL-encoded ^GSPC", "value": "^GSPC"},
        "class share": {"value": "BRK-B"}, "fx": {"value": "EURUSD=X"},
    },
)]


def forecast_public(served: ServedForecast, horizon: int, level: int = 80) -> ForecastPublic:
    """The response body of one served forecast, its band at `level` percent."""
    f = served.forecast
    recent = f.recent_coverage if math.isfinite(f.recent_coverage) else None
    return ForecastPublic(
        ticker=f.ticker, as_of=f.as_of, last_close=f.last_close, model_version=f.model_version,
        seen_in_training=f.seen_in_training, horizon=horizon,
        band=BandPublic(method=f.band_method, level=level, nominal_coverage=level / 100,
                        recent_coverage=recent, recent_sessions=f.recent_sessions),
        forecasts=[ForecastStepPublic(step=s.step, date=s.date, close=s.close,
                                      lower=s.bands[level][0], upper=s.bands[level][1],
                                      predicted_return=s.predicted_return)
                   for s in f.steps],
        stale=served.stale, warnings=list(served.warnings),
    )


def forecast_json(served: ServedForecast, horizon: int, level: int) -> bytes:
    """The JSON response body of one served forecast (as FastAPI renders ForecastPublic)."""
    return FORECAST_JSON.dump_json(forecast_public(served, horizon, level), by_alias=True)


def _no_query(http_request: Request) -> None:
    """POST /predict takes its options in the body: `?horizon=5` was silently a 1-day forecast."""
    if http_request.query_params:
        name = clipped(next(iter(http_request.query_params)))
        raise InvalidField(name, "query", "this route takes no query parameters: send "
                           "horizon, as_of and level in the JSON body")


def _check_horizon(loaded: LoadedModel, horizon: int) -> None:
    limit = loaded.predictor.spec.horizon
    if horizon > limit:
        raise InvalidField("horizon", "body",
                           f"must be at most {limit}, the served model's horizon")


@router.post(
    "/{ticker}",
    summary="Forecast one ticker",
    description=(
        "Next trading days' closes (median) with a band (`level` 50/80/90, default the 10-90% "
        "band, recalibrated online by ACI; `band` says how and its recent coverage) from the "
        "bars up to `as_of` "
        "(default: the latest cached bar). A ticker not in the cache is fetched from the "
        "source; if a refresh fails but bars are cached, the answer has `stale: true` and a "
        "warning. Dates follow the NYSE calendar."),
    response_model=ForecastPublic,
    responses=problem_responses(400, 404, 413, 415, 422, 503),
)
async def predict_ticker(
    ticker: TickerPath,
    http_request: Request,
    request: Annotated[ForecastRequest, Body(openapi_examples={
        "next day": {"value": {"horizon": 1}},
        "a week": {"value": {"horizon": 5}},
        "in the past": {"summary": "What the model said on a past date",
                        "value": {"horizon": 5, "as_of": "2017-06-30"}},
        "90% band": {"value": {"horizon": 5, "level": 90}},
    })] = DEFAULT_REQUEST,
) -> Response:
    """Forecast `horizon` trading days of one ticker.

    Answers the rendered bytes itself (kept beside a cached forecast), not the model for FastAPI
    to validate and render again per request: the same body and headers, ≈ 30 µs less per warm
    request (bench/serve.py). The migration and model checks (`get_forecasting`, the same 503s
    in the same order) are called here rather than declared as a dependency: FastAPI resolving
    it cost ≈ 12 µs of a warm request's 122 µs (app alone, bench/serve.py). So a malformed body
    is answered 422 before a missing model's 503: the request is wrong whatever the server's
    state.
    """
    _no_query(http_request)
    serving = await get_forecasting(http_request)
    _check_horizon(serving.loaded, request.horizon)
    served = await serving.forecasts.serve(serving.loaded.predictor, ticker, request.horizon,
                                           request.as_of)
    body = serving.forecasts.rendered(
        served, (request.horizon, request.level),
        lambda s: forecast_json(s, request.horizon, request.level))
    return Response(body, media_type="application/json")


@router.post(
    "",
    summary="Forecast several tickers",
    description=(
        "One forecast per ticker (up to 500 tickers, each distinct one computed once: the whole universe in one request); "
        "tickers whose band state and forecast are fresh in the serving stores are answered "
        "from them, the others from their bars. A ticker that "
        "cannot be forecast (unknown, too little history, source down) is listed in `errors` "
        "with the status its own request would get; the others are still answered. A batch "
        "not done within STOCKCAST_BATCH_DEADLINE_SECONDS (30 s) is answered 503 busy with "
        "Retry-After; what it computed is kept, so the retry goes on from there."),
    response_model=ForecastListPublic,
    responses=problem_responses(400, 413, 415, 422, 503),
)
async def predict_batch(request: BatchForecastRequest, http_request: Request
                        ) -> ForecastListPublic:
    """Forecast `horizon` trading days of each ticker (the checks as `predict_ticker`'s: a
    malformed body is 422 before a missing model's 503)."""
    _no_query(http_request)
    serving = await get_forecasting(http_request)
    loaded, forecasts = serving.loaded, serving.forecasts
    _check_horizon(loaded, request.horizon)
    results = await forecasts.serve_many(loaded.predictor, request.tickers, request.horizon,
                                         request.as_of)
    out = ForecastListPublic(forecasts=[], errors=[])
    for ticker, result in zip(request.tickers, results):
        if isinstance(result, ServedForecast):
            out.forecasts.append(forecast_public(result, request.horizon, request.level))
        else:
            problem = error_problem(result)
            out.errors.append(TickerErrorPublic(ticker=ticker, status=problem.status,
                                                title=problem.title, detail=problem.detail))
    return out
