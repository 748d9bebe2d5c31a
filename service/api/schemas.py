"""Request and response models of the public API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    create_model,
)

from service.core.tickers import normalize_ticker
from service.forecasting.indicators import INDICATORS
from service.forecasting.spec import FeatureSpec

# The schema's horizon bound; a loaded model with a shorter horizon is checked per request.
MAX_HORIZON = FeatureSpec().horizon
# Case-insensitive form of service.core.tickers.TICKER_PATTERN, for the docs (the validator decides).
TICKER_DOC_PATTERN = r"^[A-Za-z0-9.\-\^=]{1,15}$"
TICKER_EXAMPLES = ["AAPL", "^GSPC", "BRK-B", "EURUSD=X"]

Ticker = Annotated[
    str,
    AfterValidator(normalize_ticker),
    Field(description="A Yahoo symbol, case-insensitive; upper-cased.",
          json_schema_extra={"pattern": TICKER_DOC_PATTERN, "examples": TICKER_EXAMPLES}),
]


def _json_integer(value):
    """5.0 is the JSON number 5 (JSON Schema's "integer" says so too); "5", true, 5.5 are not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# A JSON integer only: "5" and true are refused, not coerced.
# (The bounds come before the validator: so they stay minimum/maximum in the JSON schema.)
Horizon = Annotated[int, Strict(), Field(
    ge=1, le=MAX_HORIZON,
    description=f"Trading days to forecast, 1..{MAX_HORIZON} (at most the served model's "
                "horizon); a JSON integer."), BeforeValidator(_json_integer)]

# Dates the API takes: ISO strings within the range the stored data and the calendar support
# (0001-01-01 minus a lead would overflow; a bare 0 must not become 1970-01-01).
MIN_DATE = dt.date(1900, 1, 1)
MAX_DATE = dt.date(2100, 12, 31)
DATE_PATTERN = r"^(19[0-9]{2}|20[0-9]{2}|2100)-[0-9]{2}-[0-9]{2}$"
_DATE_SHAPE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
# The largest value of an Integer column (int32 on Postgres): ids beyond it are refused as input.
MAX_INT32 = 2**31 - 1


def _date_string(value):
    """Only a YYYY-MM-DD string (or a date, from Python callers) may become a date."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str) or not _DATE_SHAPE.fullmatch(value):
        raise ValueError("must be a date string YYYY-MM-DD")
    return value


def _date_in_range(value: dt.date) -> dt.date:
    if not MIN_DATE <= value <= MAX_DATE:
        raise ValueError(f"must be within {MIN_DATE.isoformat()}..{MAX_DATE.isoformat()}")
    return value


ApiDate = Annotated[dt.date, BeforeValidator(_date_string), AfterValidator(_date_in_range),
                    Field(json_schema_extra={"pattern": DATE_PATTERN})]
AsOf = Annotated[ApiDate | None, Field(description=(
    "Forecast as of this date (YYYY-MM-DD, 1900-01-01..2100-12-31): only bars on or before it "
    "are used (default: the latest bar)."))]
Level = Annotated[Literal[50, 80, 90], Field(description=(
    "Nominal coverage of lower/upper in percent: 50 (25-75%), 80 (10-90%, the default) or 90 "
    "(5-95%). The band is recalibrated online (ACI) from the ticker's past forecasts."))]


class ForecastRequest(BaseModel):
    """Body of POST /predict/{ticker}."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"horizon": 5}, {"horizon": 1, "as_of": "2017-06-30"}]})

    horizon: Horizon = 1
    as_of: AsOf = None
    level: Level = 80


MAX_BATCH_TICKERS = 500


class BatchForecastRequest(BaseModel):
    """Body of POST /predict: several tickers, computed together."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"tickers": ["AAPL", "MSFT", "^GSPC"], "horizon": 5}]})

    # The whole shared universe (489) in one request: tickers fresh in the serving stores are
    # their stored forecasts (no model run); the bound keeps one request's work (unknown tickers each ask the
    # source once) finite.
    tickers: list[Ticker] = Field(min_length=1, max_length=MAX_BATCH_TICKERS)
    horizon: Horizon = 1
    as_of: AsOf = None
    level: Level = 80


class ForecastStepPublic(BaseModel):
    """One future trading day (NYSE calendar)."""

    step: int = Field(description="Trading days after as_of (1 = the next session).")
    date: dt.date
    close: float = Field(description="Predicted close (the median forecast).")
    lower: float = Field(description="Lower end of the band at the requested level (default "
                                     "80: the 10% quantile of the close).")
    upper: float = Field(description="Upper end of that band (default: the 90% quantile).")
    predicted_return: float = Field(description="close / last_close - 1.")


FORECAST_EXAMPLE = {
    "ticker": "AAPL",
    "as_of": "2017-12-06",
    "last_close": 169.01,
    "model_version": "3f9a1c2b7d4e",
    "seen_in_training": True,
    "horizon": 2,
    "band": {"method": "model_aci", "level": 80, "nominal_coverage": 0.8,
             "recent_coverage": 0.7833, "recent_sessions": 60},
    "forecasts": [
        {"step": 1, "date": "2017-12-07", "close": 169.2, "lower": 166.1, "upper": 172.0,
         "predicted_return": 0.0011},
        {"step": 2, "date": "2017-12-08", "close": 169.4, "lower": 165.0, "upper": 173.5,
         "predicted_return": 0.0023},
    ],
    "stale": True,
    "warnings": [("bars for AAPL may be out of date: yfinance unavailable for AAPL after 4 "
                  "attempts: ConnectionError: could not resolve host")],
}


class BandPublic(BaseModel):
    """How the band is made and how it has done lately for this ticker."""

    method: str = Field(description=(
        "model_aci: the network's quantiles recalibrated online by adaptive conformal inference "
        "(Gibbs & Candès 2021), scores scaled by a volatility mean-reversion factor; ewma_aci: "
        "a random-walk EWMA-volatility band, likewise."))
    level: int = Field(description="Nominal coverage of lower/upper, percent.")
    nominal_coverage: float = Field(description="The same as a share (0.5, 0.8 or 0.9).")
    recent_coverage: float | None = Field(description=(
        "Share of the last `recent_sessions` next-day closes that fell inside the 80% band as "
        "it was served the day before (null without any known outcome)."))
    recent_sessions: int


class ForecastPublic(BaseModel):
    """A forecast of one ticker."""

    model_config = ConfigDict(json_schema_extra={"examples": [FORECAST_EXAMPLE]})

    ticker: str
    as_of: dt.date = Field(description="Date of the last bar used.")
    last_close: float = Field(description="Close of that bar (as traded, unadjusted).")
    model_version: str
    seen_in_training: bool = Field(description=(
        "Whether the model has this ticker's own embedding; otherwise it uses the trained "
        "'unknown ticker' embedding."))
    horizon: int
    band: BandPublic
    forecasts: list[ForecastStepPublic]
    stale: bool = Field(description="True when refreshing the bars failed and cached bars "
                                    "were used; see warnings.")
    warnings: list[str] = Field(default_factory=list)


class TickerErrorPublic(BaseModel):
    """Why one ticker of a batch has no forecast (the problem its own request would get)."""

    ticker: str
    status: int
    title: str
    detail: str


class ForecastListPublic(BaseModel):
    """Forecasts of a batch, in request order; tickers that failed are listed in errors."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "forecasts": [FORECAST_EXAMPLE],
        "errors": [{"ticker": "ZZZZZ", "status": 404, "title": "Unknown ticker",
                    "detail": "unknown ticker 'ZZZZZ': the source returned no bars"}],
    }]})

    forecasts: list[ForecastPublic]
    errors: list[TickerErrorPublic] = Field(default_factory=list)


class FieldError(BaseModel):
    """One invalid input."""

    field: str = Field(description="Dotted path of the input, e.g. horizon or tickers.2.")
    location: Literal["path", "query", "body", "header", "cookie"]
    message: str


class CheckPublic(BaseModel):
    """One readiness check."""

    ok: bool
    detail: str


class Problem(BaseModel):
    """RFC 9457 problem details (media type application/problem+json)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "type": "urn:stockcast:problem:insufficient-history",
        "title": "Insufficient history",
        "status": 422,
        "detail": "XYZ has 40 usable bars; at least 109 are needed for one window",
        "instance": "/predict/XYZ",
        "ticker": "XYZ",
        "n_bars": 40,
        "needed": 109,
    }]})

    type: str = Field(description="A URI naming the problem type (about:blank for plain HTTP).")
    title: str
    status: int
    detail: str
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[FieldError] | None = Field(default=None, description="Invalid inputs (422).")
    ticker: str | None = None
    n_bars: int | None = Field(default=None, description="Bars available (insufficient history).")
    needed: int | None = Field(default=None, description="Bars needed for one window.")
    checks: dict[str, CheckPublic] | None = Field(default=None, description="Readiness checks.")


class HealthPublic(BaseModel):
    """The process is alive."""

    status: Literal["ok"] = "ok"


class ReadinessPublic(BaseModel):
    """Every readiness check passed."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "status": "ready",
        "checks": {
            "model": {"ok": True, "detail": "3f9a1c2b7d4e"},
            "database": {"ok": True, "detail": "select 1 answered"},
            "schema": {"ok": True, "detail": "at 0007 (head)"},
            "provider": {"ok": True, "detail": "requested auto; active CPUExecutionProvider"},
        },
    }]})

    status: Literal["ready"] = "ready"
    checks: dict[str, CheckPublic]


class ModelPublic(BaseModel):
    """The served model: its artifact's summary and the onnxruntime providers in use."""

    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"examples": [{
        "version": "3f9a1c2b7d4e",
        "created_at": "2025-01-01T12:00:00+00:00",
        "loaded_at": "2025-01-02T08:00:00Z",
        "features": ["log_return", "rsi14", "sma20_ratio"],
        "window": 60,
        "horizon": 30,
        "quantiles": [0.1, 0.5, 0.9],
        "vocab_size": 25,
        "tickers": ["AAPL", "MSFT"],
        "split": {"train": ["2013-05-01", "2016-03-01"], "val": ["2016-07-01", "2016-12-01"],
                  "test": ["2017-04-01", "2017-10-20"]},
        "metrics": {"val_mae_1d": 0.0112, "val_mae_1d_naive": 0.0113},
        "onnx_sha256": "9c4b...",
        "requested_provider": "auto",
        "active_providers": ["CPUExecutionProvider"],
    }]})

    version: str
    created_at: str | None
    loaded_at: dt.datetime
    features: list[str]
    window: int
    horizon: int
    quantiles: list[float]
    vocab_size: int = Field(description="Embedding rows: training tickers plus 'unknown'.")
    tickers: list[str] = Field(description="Tickers seen in training.")
    split: dict[str, list[dt.date]] = Field(
        description="Inclusive origin-date ranges of the train/val/test segments.")
    metrics: dict = Field(description="Validation metrics recorded at training time.")
    onnx_sha256: str
    requested_provider: Literal["auto", "cpu", "cuda"]
    active_providers: list[str] = Field(
        description="onnxruntime's session.get_providers(): what actually runs.")
    drift: dict | None = Field(default=None, description=(
        "Input drift: `psi` per feature, the population stability index of the latest "
        "`recent_sessions` feature rows of the training tickers (cached bars, up to "
        "`recent_end`) against their training segment's (< 0.1 stable, > 0.25 a large shift)."))


class ReloadPublic(BaseModel):
    """Outcome of POST /admin/reload."""

    previous_version: str | None
    version: str
    changed: bool


class TickerPublic(BaseModel):
    """One cached ticker."""

    ticker: str
    first_bar_date: dt.date
    last_bar_date: dt.date
    last_refresh_status: str | None = Field(description="ok, error or unknown (None: never).")
    seen_in_training: bool | None = Field(
        description="Whether the served model was trained on it (None: no model loaded).")


class TickerListPublic(BaseModel):
    """Cached tickers, by symbol (the web page's suggestions)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"tickers": [
        {"ticker": "AAPL", "first_bar_date": "2012-12-06", "last_bar_date": "2017-12-06",
         "last_refresh_status": None, "seen_in_training": True}]}]})

    tickers: list[TickerPublic]


IndicatorsPublic = create_model(
    "IndicatorsPublic",
    __doc__="Chart indicators on the close, aligned with `dates` (null during warm-up).",
    **{name: (list[float | None], Field(description=description))
       for name, description in INDICATORS.items()},
)


class BarsPublic(BaseModel):
    """Daily bars of one ticker in columns (the chart's traces), with indicators."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "ticker": "AAPL", "stale": False, "warnings": [],
        "dates": ["2017-12-05", "2017-12-06"],
        "open": [169.06, 167.5], "high": [171.52, 170.2], "low": [168.4, 166.46],
        "close": [169.64, 169.01], "adj_close": [167.1, 166.48],
        "volume": [27008428, 28224357],
        "indicators": {"sma20": [172.0, 171.8], "sma50": [165.2, 165.4],
                       "bb_upper": [176.9, 176.8], "bb_lower": [167.1, 166.8],
                       "rsi14": [45.1, 43.2], "macd": [0.41, 0.22],
                       "macd_signal": [1.1, 0.93], "macd_hist": [-0.69, -0.71]},
    }]})

    ticker: str
    stale: bool
    warnings: list[str] = Field(default_factory=list)
    dates: list[dt.date]
    open: list[float]
    high: list[float]
    low: list[float]
    close: list[float]
    adj_close: list[float]
    volume: list[int]
    indicators: IndicatorsPublic  # type: ignore[valid-type]


class LiveMetricsRowPublic(BaseModel):
    """How one model's live forecasts at one horizon did, for one ticker or all pooled."""

    model_config = ConfigDict(protected_namespaces=())

    ticker: str = Field(description="A ticker, or '*' for all tickers pooled.")
    horizon: int = Field(description="Trading days from as_of to the target bar.")
    model_version: str
    n_forecasts: int = Field(description="Live forecasts recorded.")
    n_scored: int = Field(description="Of those, scored: their target bar has arrived.")
    mae: float | None = Field(description="Mean |median - realized close|, dollars.")
    naive_mae: float | None = Field(
        description="Mean |last close - realized close| on the same forecasts.")
    rel_mae: float | None = Field(description="mae / naive_mae (< 1 beats naive).")
    coverage: float | None = Field(
        description="Share of scored forecasts whose realized close fell inside the band.")


class LiveMetricsPublic(BaseModel):
    """The forecast ledger's scores: every live forecast served, scored as its bar arrived."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"metrics": [
        {"ticker": "*", "horizon": 1, "model_version": "e993aed2a66b", "n_forecasts": 48,
         "n_scored": 24, "mae": 1.31, "naive_mae": 1.29, "rel_mae": 1.0155, "coverage": 0.875},
        {"ticker": "AAPL", "horizon": 1, "model_version": "e993aed2a66b", "n_forecasts": 2,
         "n_scored": 1, "mae": 0.84, "naive_mae": 1.02, "rel_mae": 0.8235, "coverage": 1.0},
    ]}]})

    metrics: list[LiveMetricsRowPublic]


class SourcePublic(BaseModel):
    """The market-data source as this worker last saw it."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": "yfinance", "reachable": False, "last_answer_at": "2026-12-01T07:40:00Z",
         "detail": "yfinance unavailable for AAPL after 4 attempts: ConnectionError"}]})

    name: str = Field(description="yfinance, or none (cache only).")
    reachable: bool | None = Field(description=(
        "Whether its last answer came through (null: not asked since this worker started)."))
    last_answer_at: dt.datetime | None
    detail: str | None = Field(description="The last failure, when it failed.")


class JobPublic(BaseModel):
    """A scheduled job's latest run, and when it last came to an answer (ok or refused)."""

    job: str = Field(description="daily (refresh, score, record forecasts) or retrain.")
    run_key: str = Field(description="What the run covered: a session date, a retrain period.")
    status: str = Field(description="running, ok, refused (by the gate) or failed.")
    detail: str | None
    runner: str | None = Field(description="host:pid of the scheduler that ran it.")
    started_at: dt.datetime
    finished_at: dt.datetime | None
    last_ok_at: dt.datetime | None = Field(description="When its latest ok run finished.")


class JobListPublic(BaseModel):
    """The scheduler's jobs (empty until a scheduler ran)."""

    jobs: list[JobPublic]
