"""Dependencies: everything a route needs comes from app.state (built in the lifespan).

They are `async def` on purpose: each only reads app.state, and a plain `def` dependency costs a
threadpool round trip per request.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from service.api.forecasts import ForecastService
from service.api.model_slot import LoadedModel, ModelSlot
from service.api.telemetry import ServiceMetrics
from service.core.config import Settings
from service.sources.cache import BarCache


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_bar_cache(request: Request) -> BarCache:
    return request.app.state.bar_cache


async def get_model_slot(request: Request) -> ModelSlot:
    return request.app.state.models


async def get_loaded_model(request: Request) -> LoadedModel:
    """The model at the start of this request (ModelNotLoaded -> 503); kept to its end."""
    return request.app.state.models.require()


async def require_migrated(request: Request) -> None:
    """Routes that read the database: 503 database-not-migrated unless it is at Alembic's head.

    The revision is re-read once per STOCKCAST_SCHEMA_CHECK_INTERVAL_SECONDS (in the threadpool),
    and by every request while it was wrong; otherwise this only reads the last answer.
    """
    schema = request.app.state.schema
    if schema.claim():
        await run_in_threadpool(schema.check)
    schema.require()


async def get_forecast_service(request: Request) -> ForecastService:
    return request.app.state.forecasts


@dataclass(frozen=True)
class Forecasting:
    """What a forecast route needs: the model at the start of the request and the service."""

    loaded: LoadedModel
    forecasts: ForecastService


async def get_forecasting(request: Request) -> Forecasting:
    """require_migrated, then the loaded model (503s in that order), and the forecast service.

    One call where there were three dependencies (MigratedDep, LoadedModelDep,
    ForecastServiceDep), for the same answers in the same order; `POST /predict/{ticker}` calls
    it from its body, not as a dependency: FastAPI spends about as long resolving one
    dependency as a warm forecast spends on its lookups (bench/serve.py; README "Benchmarks").
    """
    await require_migrated(request)
    return Forecasting(await get_loaded_model(request), request.app.state.forecasts)


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Header(description="The admin key (STOCKCAST_API_KEY).")]
    = None,
) -> None:
    """Admin routes: 503 when no key is configured, 401 when it is missing or wrong."""
    expected = request.app.state.settings.api_key
    if not expected:
        raise HTTPException(503, "admin endpoints are disabled: STOCKCAST_API_KEY is not set")
    if x_api_key is None or not secrets.compare_digest(x_api_key.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong X-API-Key header",
                            headers={"WWW-Authenticate": "X-API-Key"})


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
BarCacheDep = Annotated[BarCache, Depends(get_bar_cache)]
ModelSlotDep = Annotated[ModelSlot, Depends(get_model_slot)]
LoadedModelDep = Annotated[LoadedModel, Depends(get_loaded_model)]
ForecastServiceDep = Annotated[ForecastService, Depends(get_forecast_service)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
ApiKeyDep = Depends(require_api_key)
MigratedDep = Depends(require_migrated)
