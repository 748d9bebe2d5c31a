"""GET /metrics/backtest: stored backtest results (filled in by the backtest; empty until then).

All backtest response schemas live in this file.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

router = APIRouter(prefix="/metrics", tags=["backtest"])


class BacktestRunPublic(BaseModel):
    """One stored backtest run."""

    model_config = ConfigDict(protected_namespaces=())

    id: int
    model_version: str


class BacktestMetricPublic(BaseModel):
    """One number of a run: (ticker or ALL, horizon, method, metric) -> value."""

    ticker: str
    horizon: int
    method: str = Field(description="model, or a baseline's name.")
    metric: str
    value: float | None


class BacktestPublic(BaseModel):
    """The latest (or chosen) run and its metrics; run is null when none is stored."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"run": None, "metrics": []}]})

    run: BacktestRunPublic | None = None
    metrics: list[BacktestMetricPublic] = Field(default_factory=list)


@router.get("/backtest", summary="Backtest metrics", response_model=BacktestPublic,
            description="Metrics of the model and every baseline from the latest stored "
                        "backtest run (none stored yet: an empty result).")
async def get_backtest() -> BacktestPublic:
    """The stored backtest results."""
    return BacktestPublic()
