"""GET /metrics/backtest: the stored walk-forward backtest of the model against every baseline.

All backtest response schemas live in this file. The metric fields are generated from
`service.evaluation.scoring.METRICS`, so the API documents exactly what the backtest stores.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import pandas as pd
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, create_model

from service.api.deps import EngineDep, MigratedDep
from service.api.problems import problem_responses, query_ticker
from service.api.schemas import MAX_HORIZON, MAX_INT32, TICKER_DOC_PATTERN
from service.artifacts.manifest import VERSION_PATTERN
from service.db.backtests import RunInfo, get_metrics, get_run, latest_run
from service.evaluation.scoring import BUY_AND_HOLD, METRICS, MODEL, POOLED
from service.forecasting.baselines import BASELINES

router = APIRouter(prefix="/metrics", tags=["backtest"])

METHOD_ORDER = (MODEL, *BASELINES, BUY_AND_HOLD)
METHOD_PATTERN = r"^[a-z0-9_]{1,32}$"
TICKER_PATTERN_OR_POOLED = rf"^(\*|{TICKER_DOC_PATTERN[1:-1]})$"


class BacktestRunPublic(BaseModel):
    """One stored backtest run: which model, over which origins and tickers."""

    model_config = ConfigDict(protected_namespaces=())

    id: int
    model_version: str
    start: dt.date = Field(description="First forecast origin scored.")
    end: dt.date = Field(description="Last forecast origin scored.")
    tickers: list[str]
    created_at: dt.datetime
    horizons: list[int] = Field(description="Horizons scored, in trading days.")
    baselines: list[str] = Field(description="Baselines scored on the identical origins.")
    config: dict = Field(description="Everything else the run recorded (fit range, timings...).")


_metric_fields = {
    name: (float | None, Field(default=None, description=metric.meaning))
    for name, metric in METRICS.items()
}

BacktestMetricsPublic = create_model(
    "BacktestMetricsPublic",
    __doc__="The metrics of one method on one ticker (or all pooled) at one horizon; null where "
            "a metric does not apply to this row or is undefined (e.g. naive's direction).",
    ticker=(str, Field(description=f"A ticker, or {POOLED!r} for all tickers pooled.")),
    horizon=(int, Field(description="Trading days from origin to target.")),
    method=(str, Field(description=f"model, a baseline ({', '.join(BASELINES)}), or "
                                   "buy_and_hold (strategy metrics only).")),
    **_metric_fields,
)

# The shipped model's stored run on the shared dataset's test segment (pooled, 1 day ahead).
EXAMPLE = {
    "run": {
        "id": 1, "model_version": "e993aed2a66b", "start": "2017-05-11", "end": "2017-12-05",
        "tickers": ["AAPL", "AMZN", "BA"], "created_at": "2026-11-21T07:53:55Z",
        "horizons": [1, 5, 30], "baselines": ["naive", "drift", "sma20", "mean", "arima"],
        "config": {"baseline_fit_end": "2016-01-25", "in_sample_origins": False},
    },
    "metrics": [
        {"ticker": POOLED, "horizon": 1, "method": MODEL, "n_forecasts": 3480, "mae": 1.2995,
         "rmse": 3.9565, "mape": 0.7392, "rel_mae": 0.9994, "r2_returns": -0.0048,
         "directional_accuracy": 0.5154, "dm_squared_stat": -0.8426,
         "dm_squared_pvalue": 0.4008, "dm_absolute_pvalue": 0.7784, "ic_mean": -0.0351,
         "coverage": 0.8833, "width_dollars": 4.8362, "long_flat_sharpe": 2.4192},
        {"ticker": POOLED, "horizon": 1, "method": "naive", "n_forecasts": 3480, "mae": 1.3003,
         "rmse": 3.9621, "mape": 0.7381, "rel_mae": 1.0, "directional_accuracy": None},
    ],
}


class BacktestPublic(BaseModel):
    """A stored backtest run and its metrics, model first, then each baseline."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})

    run: BacktestRunPublic
    metrics: list[BacktestMetricsPublic]  # type: ignore[valid-type]


class MetricPublic(BaseModel):
    """One metric of the backtest's catalogue: what it is called, means, and which way wins."""

    name: str = Field(description="The field name in `GET /metrics/backtest` rows.")
    label: str = Field(description="Short column header (the CLI and README tables).")
    title: str = Field(description="A few words naming it (the page's rows).")
    meaning: str = Field(description="How it is computed.")
    unit: str = Field(description="count, dollars, percent, ratio, share, statistic, p-value "
                                  "or return.")
    better: Literal["lower", "higher"] | None = Field(
        description="Which way beats the other method; null when neither does.")


CATALOGUE = [MetricPublic(**metric.public()) for metric in METRICS.values()]


@router.get(
    "/backtest/catalogue",
    summary="Backtest metric catalogue",
    response_model=list[MetricPublic],
    description="Every metric `GET /metrics/backtest` can return, in display order: its label, "
                "meaning, unit and which direction is better. The page reads its labels here.",
)
def get_catalogue() -> list[MetricPublic]:
    """The one catalogue of backtest metrics."""
    return CATALOGUE


def run_public(run: RunInfo) -> BacktestRunPublic:
    """The public view of a stored run."""
    return BacktestRunPublic(
        id=run.id, model_version=run.model_version, start=run.start, end=run.end,
        tickers=run.tickers, created_at=run.created_at,
        horizons=list(run.config.get("horizons", [])),
        baselines=list(run.config.get("baselines", [])), config=run.config,
    )


def metrics_public(frame: pd.DataFrame) -> list:
    """Long (ticker, horizon, method, metric, value) rows -> one object per (ticker, h, method)."""
    wide = frame.pivot(index=["ticker", "horizon", "method"], columns="metric", values="value")
    wide = wide.astype(object).where(wide.notna(), None).reset_index()
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    wide["_pooled"] = wide["ticker"] != POOLED
    wide["_method"] = wide["method"].map(lambda m: order.get(m, len(order)))
    wide = wide.sort_values(["horizon", "_pooled", "ticker", "_method"])
    known = [c for c in wide.columns if c in METRICS]
    return [
        BacktestMetricsPublic(ticker=r["ticker"], horizon=int(r["horizon"]), method=r["method"],
                              **{name: r[name] for name in known})
        for r in wide.to_dict("records")
    ]


@router.get(
    "/backtest",
    dependencies=[MigratedDep],  # the catalogue above is static: it needs no database
    summary="Backtest metrics",
    response_model=BacktestPublic,
    response_model_exclude_none=False,
    description=(
        "Metrics of the model and every baseline ("
        + ", ".join(BASELINES[b].title for b in BASELINES)
        + ") from the latest stored walk-forward backtest, or the run chosen by `run_id` or "
        "`model_version`: MAE/RMSE in dollars, MAPE, MAE relative to naive (< 1 beats naive), "
        "R² of returns, directional accuracy, Diebold–Mariano vs naive, cross-sectional IC "
        "(pooled rows, ticker `*`), 10-90% interval coverage (model), and long/flat, "
        "long/short and buy-and-hold strategy results. 404 when no run or no row matches."
    ),
    responses=problem_responses(404, 422, 503),
)
def get_backtest(
    engine: EngineDep,
    ticker: Annotated[str | None, Query(
        description=f"One ticker, or {POOLED!r} for the pooled rows (default: all).",
        json_schema_extra={"pattern": TICKER_PATTERN_OR_POOLED})] = None,
    horizon: Annotated[int | None, Query(
        ge=1, le=MAX_HORIZON, description="One horizon (default: all).")] = None,
    model_version: Annotated[str | None, Query(
        pattern=VERSION_PATTERN, description="The latest run of this model version.")] = None,
    run_id: Annotated[int | None, Query(ge=1, le=MAX_INT32, description="This run.")] = None,
    method: Annotated[str | None, Query(
        pattern=METHOD_PATTERN,
        description="model, a baseline or buy_and_hold (default: all).")] = None,
) -> BacktestPublic:
    """One run's metrics, filtered."""
    if ticker is not None and ticker != POOLED:
        ticker = query_ticker(ticker)  # an invalid one: 422, location query
    # A database error goes to the problem handler: a fault 503, a missing table not-migrated.
    with engine.connect() as conn:
        if run_id is not None:
            run = get_run(conn, run_id)
            if run is None:
                raise HTTPException(404, f"no backtest run {run_id}")
            if model_version is not None and run.model_version != model_version:
                raise HTTPException(
                    404, f"backtest run {run_id} is of model {run.model_version}, "
                         f"not {model_version}")
        else:
            run = latest_run(conn, model_version)
            if run is None:
                which = f" of model {model_version}" if model_version else ""
                raise HTTPException(
                    404, f"no backtest stored{which}: run `stockcast backtest`")
        frame = get_metrics(conn, run.id, ticker=ticker, horizon=horizon, method=method)
    if frame.empty:
        asked = ", ".join(f"{k}={v}" for k, v in
                          (("ticker", ticker), ("horizon", horizon), ("method", method))
                          if v is not None)
        raise HTTPException(404, f"backtest run {run.id} has no metrics for {asked}")
    return BacktestPublic(run=run_public(run), metrics=metrics_public(frame))
