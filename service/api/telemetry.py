"""Prometheus metrics of one app beyond request counts/latency: forecast cache, model version,
and gauges read from the database (live forecast metrics, scheduler jobs, drift)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request

from service.api.forecasts import LruCache
from service.api.lane import ForecastLane

log = logging.getLogger(__name__)


# Distinct (method, path) handler labels remembered: paths with a ticker are as many as the
# tickers asked for; a scanner's junk paths only evict the oldest.
HANDLER_LABELS = 4096
# Longer paths are labelled per request, not remembered: uvicorn takes paths up to ~64 KB, and
# 4,096 of those (key and untemplated label) would pin ~0.5 GB. No route's path comes near.
HANDLER_LABEL_PATH = 256


class CachedRouteInstrumentation(PrometheusInstrumentatorMiddleware):
    """The instrumentator's middleware with each path's handler label resolved once.

    prometheus-fastapi-instrumentator (8.1) resolves the label (`/predict/{ticker}` for
    `/predict/AAPL`) on every request by flattening every included router and matching the
    path against each route (`routing.get_route_name`). The routes are fixed once the app has
    started, so the label of a (method, root path, path) is too: the same labels, from a
    bounded LRU after the first request of a path.
    """

    def __init__(self, app, **kwargs):
        super().__init__(app, **kwargs)
        self._labels = LruCache(HANDLER_LABELS)

    def _get_handler(self, request: Request) -> tuple[str, bool]:
        scope = request.scope
        if len(scope["path"]) > HANDLER_LABEL_PATH:
            return super()._get_handler(request)
        key = (scope.get("method"), scope.get("root_path", ""), scope["path"])
        label = self._labels.get(key)
        if label is None:
            label = super()._get_handler(request)
            self._labels.put(key, label)
        return label


def cache_route_labels(app: Starlette) -> None:
    """Swap the middleware `Instrumentator.instrument(app)` added for CachedRouteInstrumentation
    (same arguments); before the app starts, as adding middleware is."""
    for i, entry in enumerate(app.user_middleware):
        if entry.cls is PrometheusInstrumentatorMiddleware:
            app.user_middleware[i] = Middleware(CachedRouteInstrumentation, *entry.args,
                                                **entry.kwargs)
            return
    raise RuntimeError("the instrumentator's middleware is not installed")


class ServiceMetrics:
    """Custom collectors, registered on the app's own registry (one per app, none global)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.forecast_cache = Counter(
            "stockcast_forecast_cache_lookups", "Forecast cache lookups by result (hit or miss).",
            ["result"], registry=registry)
        self.model_info = Gauge(
            "stockcast_model_info", "The served model: 1 for its version and active providers.",
            ["version", "providers"], registry=registry)
        # Both series exist from the start, at 0; bound once (a warm request counts one).
        self._lookups = {hit: self.forecast_cache.labels(result="hit" if hit else "miss")
                         for hit in (True, False)}
        self.database = DatabaseGauges()
        registry.register(self.database)

    def watch_lane(self, lane: ForecastLane) -> None:
        """Export the forecast lane's turns taken, waits timed out (503 busy) and hand-backs."""
        self.registry.register(LaneCollector(lane))

    def record_lookup(self, hit: bool) -> None:
        """Count one forecast cache lookup."""
        self._lookups[hit].inc()

    def set_model(self, version: str, providers: list[str]) -> None:
        """Show only the model now served."""
        self.model_info.clear()
        self.model_info.labels(version=version, providers=",".join(providers)).set(1)


class LaneCollector:
    """The forecast lane's state at scrape time (service.api.lane)."""

    def __init__(self, lane: ForecastLane):
        self.lane = lane

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("stockcast_forecast_lane_busy",
                                f"Forecast lane turns taken now (of {self.lane.slots}).",
                                value=self.lane.busy)
        yield CounterMetricFamily("stockcast_forecast_lane_waits_timed_out",
                                  "Requests answered 503 busy: no lane turn within the wait.",
                                  value=self.lane.waits_timed_out)
        yield CounterMetricFamily("stockcast_forecast_lane_handed_back",
                                  "Lane forecasts that would have waited (a refresh due, the "
                                  "ticker's turn taken), computed in the shared threadpool.",
                                  value=self.lane.handed_back)


class DatabaseGauges:
    """Gauges read from the database at scrape time (at most every `ttl` seconds): the forecast
    ledger's pooled live metrics, the scheduler's last job runs, and drift of the served model.

    The ledger is written by every worker and scored by ingests, refreshes and the scheduler, so
    no single process holds these numbers in memory: each scrape asks the database (cached).
    """

    def __init__(self, ttl: float = 30.0, monotonic: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.monotonic = monotonic
        self.sources: list[Callable[[], Iterable[Metric]]] = []
        self._cached: tuple[float, list[Metric]] | None = None
        self._lock = threading.Lock()

    def add(self, source: Callable[[], Iterable[Metric]]) -> None:
        """A function yielding metric families (it may raise: its families are then left out)."""
        self.sources.append(source)

    def clear(self) -> None:
        """Forget the cached families (the next scrape reads again)."""
        with self._lock:
            self._cached = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self.monotonic()
            if self._cached is None or now - self._cached[0] >= self.ttl:
                families: list[Metric] = []
                for source in self.sources:
                    try:
                        families.extend(source())
                    except Exception as exc:  # noqa: BLE001 - a scrape must not fail on one source
                        log.warning("metrics source %s failed: %s",
                                    getattr(source, "__name__", source), exc.__class__.__name__)
                self._cached = (now, families)
            yield from self._cached[1]

    def describe(self) -> list[Metric]:
        return []  # names are dynamic; nothing to check at registration


def live_metric_families(report) -> list[Metric]:
    """Pooled live metrics (rows of service.evaluation.ledger.live_report) as gauges."""
    labels = ["horizon", "model_version"]
    families = {
        "n_forecasts": GaugeMetricFamily("stockcast_live_forecasts",
                                         "Live forecasts recorded in the ledger.", labels=labels),
        "n_scored": GaugeMetricFamily("stockcast_live_scored_forecasts",
                                      "Live forecasts scored (their bar arrived).", labels=labels),
        "mae": GaugeMetricFamily("stockcast_live_mae",
                                 "Mean |median - realized close| of scored live forecasts, $.",
                                 labels=labels),
        "naive_mae": GaugeMetricFamily("stockcast_live_naive_mae",
                                       "Naive's mean |error| on the same forecasts, $.",
                                       labels=labels),
        "rel_mae": GaugeMetricFamily("stockcast_live_rel_mae",
                                     "Live MAE relative to naive (< 1 beats naive).",
                                     labels=labels),
        "coverage": GaugeMetricFamily("stockcast_live_coverage",
                                      "Share of scored live forecasts inside the band.",
                                      labels=labels),
    }
    for row in report.to_dict("records"):
        values = [str(int(row["horizon"])), row["model_version"]]
        for key, family in families.items():
            value = float(row[key])
            if math.isfinite(value):
                family.add_metric(values, value)
    return list(families.values())


def psi_families(model_version: str, psi: dict[str, float]) -> list[Metric]:
    """Per-feature PSI of the served model's recent inputs against training, as a gauge."""
    family = GaugeMetricFamily("stockcast_feature_psi",
                               "Population stability index of a feature's recent sessions vs "
                               "training.", labels=["feature", "model_version"])
    for feature, value in psi.items():
        if math.isfinite(value):
            family.add_metric([feature, model_version], value)
    return [family]


def job_metric_families(runs: dict) -> list[Metric]:
    """The scheduler's jobs (service.db.jobs.last_runs) as gauges."""
    last = GaugeMetricFamily("stockcast_job_last_run_timestamp_seconds",
                             "When a scheduled job's latest run started, by its status.",
                             labels=["job", "status"])
    ok = GaugeMetricFamily("stockcast_job_last_ok_timestamp_seconds",
                           "When a scheduled job last finished ok.", labels=["job"])
    for name, run in runs.items():
        if name.endswith(":ok"):
            if run.finished_at is not None:
                ok.add_metric([run.job], run.finished_at.timestamp())
        else:
            last.add_metric([run.job, run.status], run.started_at.timestamp())
    return [last, ok]
