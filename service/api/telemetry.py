"""Prometheus metrics of one app beyond request counts/latency: forecast cache, model version."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


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
        for result in ("hit", "miss"):  # both series exist from the start, at 0
            self.forecast_cache.labels(result=result)

    def record_lookup(self, hit: bool) -> None:
        """Count one forecast cache lookup."""
        self.forecast_cache.labels(result="hit" if hit else "miss").inc()

    def set_model(self, version: str, providers: list[str]) -> None:
        """Show only the model now served."""
        self.model_info.clear()
        self.model_info.labels(version=version, providers=",".join(providers)).set(1)
