"""The FastAPI app: create_app() wires routes, problem handlers and metrics; the lifespan loads
the settings' database engine, bar cache and current model once per worker, and each worker
follows `models/current` from then on.

`uvicorn --factory service.api.main:create_app` (what `stockcast serve` runs). Nothing here
imports torch.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from pydantic import ValidationError

from service import package_version
from service.api.forecasts import ForecastService
from service.api.lane import ForecastLane
from service.api.middleware import BodyLimit, CatchAll, HeadAsGet
from service.api.model_slot import LoadedModel, ModelSlot
from service.api.problems import PROBLEM_MEDIA_TYPE, problem_responses, register_problem_handlers
from service.api.routes import (
    admin,
    backtest,
    bars,
    data_source,
    health,
    jobs,
    live,
    models,
    page,
    predict,
)
from service.api.telemetry import (
    ServiceMetrics,
    cache_route_labels,
    job_metric_families,
    live_metric_families,
    psi_families,
)
from service.core.config import Settings, get_settings, setting_errors
from service.core.errors import ManifestMismatch, ModelNotLoaded
from service.db.guard import DbBounds
from service.db.health import SchemaCheck, head_revision
from service.db.jobs import last_runs
from service.db.session import make_engine
from service.evaluation.drift import DriftCache
from service.evaluation.feature_store import after_bars_written
from service.evaluation.ledger import live_report
from service.forecasting.calendar import next_trading_days
from service.sources.base import BarSource, make_source
from service.sources.breaker import CircuitBreaker
from service.sources.cache import BarCache

log = logging.getLogger(__name__)

DESCRIPTION = """Stock forecasts from one LSTM + ticker-embedding model served with onnxruntime.

`POST /predict/{ticker}` forecasts the next trading days' closes with a 10-90% interval from
cached daily bars (fetched on demand). Errors are `application/problem+json` (RFC 9457).
"""

TAGS = [
    {"name": "predict", "description": "Forecasts."},
    {"name": "bars", "description": "Cached bars and chart indicators."},
    {"name": "models", "description": "The served model."},
    {"name": "backtest", "description": "How good past forecasts were."},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
    {"name": "admin", "description": "Operations that need the X-API-Key header."},
]


def _problem_openapi(app: FastAPI) -> Callable[[], dict]:
    """app.openapi with every error response documented as problem+json only.

    FastAPI documents a response `model` as application/json and adds its own 422
    (HTTPValidationError) to every route with parameters; the handlers answer both as
    application/problem+json, so the schema says so.
    """
    problem_422 = problem_responses(422)[422]["content"]

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes,
                                 tags=app.openapi_tags)
            for operations in schema["paths"].values():
                for operation in operations.values():
                    for response in operation.get("responses", {}).values():
                        content = response.get("content", {})
                        ref = content.get("application/json", {}).get("schema", {}).get("$ref")
                        if ref == "#/components/schemas/HTTPValidationError":
                            response["content"] = dict(problem_422)
                        elif PROBLEM_MEDIA_TYPE in content:
                            content.pop("application/json", None)
            for unused in ("HTTPValidationError", "ValidationError"):
                schema["components"]["schemas"].pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def db_bounds(settings: Settings) -> DbBounds:
    """The API engine's time bounds, from the settings."""
    return DbBounds(connect_seconds=settings.db_connect_timeout_seconds,
                    ping_seconds=settings.db_ping_timeout_seconds,
                    statement_seconds=settings.db_statement_timeout_seconds,
                    pool_timeout_seconds=settings.db_pool_timeout_seconds,
                    retry_seconds=settings.db_retry_seconds)


def create_app(settings: Settings | None = None, *, source: BarSource | None = None,
               clock: Callable[[], dt.datetime] | None = None) -> FastAPI:
    """The app for `settings` (default: the environment's); `source`/`clock` replace the
    bar source and the bar cache's UTC clock (tests)."""
    if settings is None:
        try:
            settings = get_settings()
        except ValidationError as exc:
            # `uvicorn --factory service.api.main:create_app` (the CLI's serve checks first):
            # uvicorn shows a factory's exception as a traceback of 50 lines; SystemExit with
            # the lines prints them alone and exits 1.
            raise SystemExit("\n".join(setting_errors(exc))) from None
    # One registry per app: two apps in a process (tests) never share or clash on collectors.
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = make_engine(settings.database_url, db_bounds(settings))
        slot: ModelSlot | None = None
        # Opened at once: whatever fails from here on (an unwritable source cache folder, say)
        # must not leave the engine's pool behind.
        try:
            cache_options = {"clock": clock} if clock is not None else {}
            upstream = source if source is not None else make_source(settings)
            breaker = CircuitBreaker(upstream,
                                     dt.timedelta(seconds=settings.source_cooldown_seconds))
            lane = (ForecastLane(settings.forecast_threads, settings.forecast_wait_seconds)
                    if settings.forecast_threads else None)
            if lane is not None:
                metrics.watch_lane(lane)
            bar_cache = BarCache(
                engine, breaker, refresh_gate=None if lane is None else lane.refuse_wait,
                refresh_interval=dt.timedelta(minutes=settings.refresh_interval_minutes),
                after_write=after_bars_written, **cache_options)
            forecasts = ForecastService(
                bar_cache, cache_size=settings.forecast_cache_size,
                bar_check_ttl=settings.bar_check_ttl_seconds, on_lookup=metrics.record_lookup,
                use_store=settings.serving_store, lane=lane,
                batch_deadline=settings.batch_deadline_seconds)

            def on_load(previous: LoadedModel | None, loaded: LoadedModel) -> None:
                if previous is None or previous.version != loaded.version:
                    forecasts.clear()  # old entries are keyed by the old version; free them
                metrics.set_model(loaded.version, loaded.predictor.model.active_providers)

            slot = ModelSlot(settings.model_dir, settings.ort_provider,
                             settings.ort_intra_op_threads, on_load=on_load)
            try:
                slot.load()
            except (ModelNotLoaded, ManifestMismatch) as exc:
                # Still serve: /healthz answers, /readyz and /predict say 503 until a load works.
                log.warning("starting without a model: %s", exc)
            # Building the exchange calendar takes seconds; do it before a forecast needs it.
            next_trading_days(dt.date.today(), 1)
            app.state.engine = engine
            app.state.schema = SchemaCheck(engine, head_revision(),
                                           settings.schema_check_interval_seconds)
            app.state.bar_cache = bar_cache
            app.state.models = slot
            app.state.forecasts = forecasts
            def live_families():
                with engine.connect() as conn:
                    return live_metric_families(live_report(conn, per_ticker=False))

            metrics.database.add(live_families)
            drift = DriftCache(engine)

            def drift_families():
                loaded = slot.current
                if loaded is None:
                    return []
                return psi_families(loaded.version,
                                    drift.get(loaded.predictor.manifest)["psi"])

            metrics.database.add(drift_families)

            def job_families():
                with engine.connect() as conn:
                    return job_metric_families(last_runs(conn))

            metrics.database.add(job_families)
            app.state.drift = drift
            # Every worker follows models/current by itself: a reload reaches only one of them.
            slot.watch(settings.model_check_interval_seconds)
            yield
        finally:
            if slot is not None:
                slot.stop_watching()
            engine.dispose()

    # No redirect from /predict/ to /predict: a bare 307 is no answer; 404 problem+json is.
    # FastAPIOffline: FastAPI whose /docs and /redoc load Swagger UI and ReDoc from files
    # served here (/static-offline-docs), not from a CDN this machine may not reach.
    app = FastAPIOffline(title="stockcast", version=package_version(), description=DESCRIPTION,
                         openapi_tags=TAGS, lifespan=lifespan, redirect_slashes=False)
    app.state.settings = settings
    app.state.metrics = metrics
    register_problem_handlers(app)
    # Added before the instrumentator, so it wraps them and counts their 413s and 500s.
    app.add_middleware(CatchAll)
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(HeadAsGet)
    # instrument() adds a middleware, which Starlette only allows before the app starts.
    # excluded_handlers are regexes searched in the path: anchored, so that /metrics/backtest and
    # /metrics/live are counted and only the exposition is not.
    instrumentator = Instrumentator(registry=registry, excluded_handlers=["^/metrics$"])
    instrumentator.instrument(app)
    if settings.cors_origins:
        # Outermost (added last): every answer, a 413, 503 or 500 problem included, carries the
        # CORS headers, or a browser hides it from the calling page. Preflights are answered
        # here. Off by default: no middleware, nothing on the hot path.
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "HEAD", "POST"],
                           allow_headers=["Content-Type", "X-API-Key"],
                           expose_headers=["Retry-After"], max_age=600)
    cache_route_labels(app)  # its handler label per path resolved once, not per request
    for module in (predict, bars, data_source, models, backtest, live, health, jobs, admin,
                   page):
        app.include_router(module.router)
    # After the routers: /metrics/backtest is its own route and must stay reachable.
    instrumentator.expose(app, endpoint="/metrics", tags=["health"],
                          summary="Prometheus metrics", response_class=PlainTextResponse,
                          description="Request counts and latencies, forecast cache hits and "
                                      "misses, and the served model's version.")
    app.openapi = _problem_openapi(app)  # type: ignore[method-assign]
    return app
