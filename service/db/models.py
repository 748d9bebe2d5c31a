"""SQLAlchemy 2.0 typed models: the bar cache, per-ticker refresh bookkeeping, the market series
derived from the bars, backtests, the forecast ledger, scheduler job runs, and the serving
stores (features, band states)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Bar(Base):
    """One daily OHLCV bar; (ticker, date) is the key, date is the exchange trading date."""

    __tablename__ = "bars"

    ticker: Mapped[str] = mapped_column(String(16), primary_key=True)
    date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    open: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)
    low: Mapped[float] = mapped_column(Float)
    close: Mapped[float] = mapped_column(Float)
    adj_close: Mapped[float] = mapped_column(Float)
    volume: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(32))
    ingested_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Ticker(Base):
    """What the cache knows about one symbol: stored range and the last refresh outcome."""

    __tablename__ = "tickers"

    symbol: Mapped[str] = mapped_column(String(16), primary_key=True)
    first_bar_date: Mapped[dt.date | None] = mapped_column(Date)
    last_bar_date: Mapped[dt.date | None] = mapped_column(Date)
    last_refresh_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_refresh_status: Mapped[str | None] = mapped_column(String(16))
    last_refresh_error: Mapped[str | None] = mapped_column(Text)
    # Bumped in the transaction that writes any of its bars: what the serving stores were
    # computed from is fresh while their revision equals this one.
    bars_revision: Mapped[int] = mapped_column(Integer, server_default="0")


Index("ix_bars_date", Bar.date)


class MarketSession(Base):
    """The market on one session, derived from the cached cross-section (sources/market.py):
    the equal-weighted mean one-session log return of every ticker with bars on this session
    and the one before. Rewritten by the bar write path whenever bars on or before it change."""

    __tablename__ = "market_series"

    date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    market_return: Mapped[float] = mapped_column(Float)
    n_tickers: Mapped[int] = mapped_column(Integer)


class BacktestRun(Base):
    """One stored backtest: which model, over which origin dates and tickers, with what config."""

    __tablename__ = "backtest_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_version: Mapped[str] = mapped_column(String(64))
    start_date: Mapped[dt.date] = mapped_column(Date)
    end_date: Mapped[dt.date] = mapped_column(Date)
    tickers: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    config: Mapped[dict] = mapped_column(JSON)


class BacktestMetric(Base):
    """One number of a run: (ticker or ALL, horizon, method = model or a baseline, metric)."""

    __tablename__ = "backtest_metrics"

    run_id: Mapped[int] = mapped_column(
        ForeignKey("backtest_runs.id", ondelete="CASCADE", name="fk_metrics_run"),
        primary_key=True,
    )
    ticker: Mapped[str] = mapped_column(String(16), primary_key=True)
    horizon: Mapped[int] = mapped_column(Integer, primary_key=True)
    method: Mapped[str] = mapped_column(String(32), primary_key=True)
    metric: Mapped[str] = mapped_column(String(48), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)


Index("ix_backtest_runs_version_created", BacktestRun.model_version, BacktestRun.created_at)
Index("ix_backtest_metrics_run_horizon", BacktestMetric.run_id, BacktestMetric.horizon)


class LedgerForecast(Base):
    """One live forecast served (once per ticker, as_of, model version, horizon) and its score."""

    __tablename__ = "ledger_forecasts"

    ticker: Mapped[str] = mapped_column(String(16), primary_key=True)
    as_of: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    horizon: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_date: Mapped[dt.date] = mapped_column(Date)
    last_close: Mapped[float] = mapped_column(Float)
    lower: Mapped[float] = mapped_column(Float)
    median: Mapped[float] = mapped_column(Float)
    upper: Mapped[float] = mapped_column(Float)
    lower_quantile: Mapped[float] = mapped_column(Float)
    upper_quantile: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    realized_date: Mapped[dt.date | None] = mapped_column(Date)
    realized_close: Mapped[float | None] = mapped_column(Float)
    error: Mapped[float | None] = mapped_column(Float)
    naive_error: Mapped[float | None] = mapped_column(Float)
    inside: Mapped[bool | None] = mapped_column(Boolean)
    scored_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class JobRun(Base):
    """One attempt of a scheduled job for one key (a session date, a retrain period)."""

    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(32))
    run_key: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    runner: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


Index("ix_ledger_version_horizon", LedgerForecast.model_version, LedgerForecast.horizon)
Index("ix_job_runs_job_key", JobRun.job, JobRun.run_key)


class FeatureRow(Base):
    """One ticker's feature row at one date (FEATURE_NAMES' order, float64 bytes), per spec."""

    __tablename__ = "feature_rows"

    ticker: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    features: Mapped[bytes] = mapped_column(LargeBinary)


class FeatureSet(Base):
    """What the stored feature rows of (ticker, version) were computed from: a bars revision."""

    __tablename__ = "feature_sets"

    ticker: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    bars_revision: Mapped[int] = mapped_column(Integer)
    last_date: Mapped[dt.date | None] = mapped_column(Date)
    n_rows: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the rows' bytes, oldest first
    computed_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class BandState(Base):
    """The served band's ACI state of one ticker as of one bar, for one model version."""

    __tablename__ = "band_states"

    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    ticker: Mapped[str] = mapped_column(String(16), primary_key=True)
    as_of: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    bars_revision: Mapped[int] = mapped_column(Integer)
    last_close: Mapped[float] = mapped_column(Float)
    horizons: Mapped[int] = mapped_column(Integer)  # slots 1..horizons are stored
    qhat: Mapped[bytes] = mapped_column(LargeBinary)  # (horizons, levels) float64
    recent_coverage: Mapped[float | None] = mapped_column(Float)
    recent_sessions: Mapped[int] = mapped_column(Integer)
    # The forecast at as_of itself (0006): the model's (horizon, quantiles) output as float64
    # and the forecast's range warnings; NULL for a state stored without them.
    quantiles: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    warnings: Mapped[list | None] = mapped_column(JSON, nullable=True)
    computed_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
