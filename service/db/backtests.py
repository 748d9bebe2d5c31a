"""All SQL for backtests: store a run with its metrics, find the latest (or a chosen) run, read back."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Connection, delete, insert, select

from service.db.guard import driver_errors
from service.db.models import BacktestMetric, BacktestRun

METRIC_COLUMNS = ("ticker", "horizon", "method", "metric", "value")
_RUNS = BacktestRun.__table__


@dataclass(frozen=True)
class RunInfo:
    """One stored backtest run, without its metrics."""

    id: int
    model_version: str
    start: dt.date
    end: dt.date
    tickers: list[str]
    created_at: dt.datetime
    config: dict


def _run_info(row) -> RunInfo:
    created = row.created_at
    if created.tzinfo is None:  # SQLite drops the offset; the server default is UTC
        created = created.replace(tzinfo=dt.UTC)
    return RunInfo(row.id, row.model_version, row.start_date, row.end_date, list(row.tickers),
                   created, dict(row.config))


def store_run(conn: Connection, *, model_version: str, start: dt.date, end: dt.date,
              tickers: Sequence[str], config: dict,
              metrics: Iterable[tuple[str, int, str, str, float | None]]) -> int:
    """Insert one run and its (ticker, horizon, method, metric, value) rows; returns the run id.

    NaN values (a metric that applies but is undefined, e.g. naive's directional accuracy) are
    stored as NULL, so JSON consumers see null rather than an invalid NaN literal.
    """
    run_id = conn.execute(
        insert(BacktestRun).values(
            model_version=model_version, start_date=start, end_date=end,
            tickers=list(tickers), config=config,
        ).returning(BacktestRun.id)
    ).scalar_one()
    rows = [(run_id, ticker, int(horizon), method, metric,
             None if value is None or not math.isfinite(value) else float(value))
            for ticker, horizon, method, metric, value in metrics]
    _bulk_insert(conn, rows)
    return run_id


def _bulk_insert(conn: Connection, rows: list[tuple]) -> None:
    """Metric rows in one bulk write: COPY on PostgreSQL, one prepared executemany on SQLite.

    A universe run stores ~10^6 rows: through the ORM's per-row parameter dicts that was most of
    the run's time (bench/backtest.py). Both raw-driver writes raise SQLAlchemy's errors
    (`driver_errors`), as conn.execute does: a SQLite write lock held past the busy timeout is
    an OperationalError the callers' fault handling knows, not sqlite3's own.
    """
    raw = conn.connection.driver_connection
    columns = ("run_id", *METRIC_COLUMNS)
    if conn.dialect.name == "postgresql":
        copy_sql = f"COPY backtest_metrics ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        with driver_errors(conn, copy_sql), raw.cursor() as cur, cur.copy(copy_sql) as cp:
            cp.set_types(["int4", "varchar", "int4", "varchar", "varchar", "float8"])
            for row in rows:
                cp.write_row(row)
        return
    if conn.dialect.name != "sqlite":  # any other dialect: the portable path
        conn.execute(insert(BacktestMetric), [dict(zip(columns, r)) for r in rows])
        return
    sql = (f"INSERT INTO backtest_metrics ({', '.join(columns)}) "
           f"VALUES ({', '.join('?' for _ in columns)})")
    cursor = raw.cursor()
    try:
        with driver_errors(conn, sql):
            cursor.executemany(sql, rows)
    finally:
        cursor.close()


def get_run(conn: Connection, run_id: int) -> RunInfo | None:
    """The run with this id, or None."""
    row = conn.execute(select(_RUNS).where(_RUNS.c.id == run_id)).first()
    return None if row is None else _run_info(row)


def latest_run(conn: Connection, model_version: str | None = None) -> RunInfo | None:
    """The most recent run (of one model version, if given), or None."""
    runs = list_runs(conn, model_version, limit=1)
    return runs[0] if runs else None


def list_runs(conn: Connection, model_version: str | None = None,
              limit: int = 20) -> list[RunInfo]:
    """Runs newest first (of one model version, if given)."""
    stmt = select(_RUNS)
    if model_version is not None:
        stmt = stmt.where(_RUNS.c.model_version == model_version)
    # id breaks ties: SQLite's CURRENT_TIMESTAMP has one-second resolution.
    stmt = stmt.order_by(_RUNS.c.created_at.desc(), _RUNS.c.id.desc()).limit(limit)
    return [_run_info(r) for r in conn.execute(stmt)]


def get_metrics(conn: Connection, run_id: int, *, ticker: str | None = None,
                horizon: int | None = None, method: str | None = None,
                metric: str | None = None) -> pd.DataFrame:
    """A run's metrics as a long frame (ticker, horizon, method, metric, value); NULL -> NaN."""
    t = BacktestMetric
    stmt = select(t.ticker, t.horizon, t.method, t.metric, t.value).where(t.run_id == run_id)
    for column, wanted in ((t.ticker, ticker), (t.horizon, horizon), (t.method, method),
                           (t.metric, metric)):
        if wanted is not None:
            stmt = stmt.where(column == wanted)
    stmt = stmt.order_by(t.horizon, t.ticker, t.method, t.metric)
    frame = pd.DataFrame.from_records([tuple(r) for r in conn.execute(stmt)],
                                      columns=list(METRIC_COLUMNS))
    frame["horizon"] = frame["horizon"].astype("int64")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype("float64")
    return frame


def delete_run(conn: Connection, run_id: int) -> bool:
    """Remove a run and its metrics; False if there was none."""
    conn.execute(delete(BacktestMetric).where(BacktestMetric.run_id == run_id))
    return conn.execute(delete(BacktestRun).where(BacktestRun.id == run_id)).rowcount > 0
