"""All SQL for the forecast ledger: record live forecasts once, find the unscored ones, store
their scores, read the ledger back."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import pandas as pd
from sqlalchemy import Connection, and_, bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from service.db.models import LedgerForecast

_LEDGER = LedgerForecast.__table__
KEY_COLUMNS = ("ticker", "as_of", "model_version", "horizon")
FORECAST_COLUMNS = (*KEY_COLUMNS, "target_date", "last_close", "lower", "median", "upper",
                    "lower_quantile", "upper_quantile")
SCORE_COLUMNS = ("realized_date", "realized_close", "error", "naive_error", "inside")
CHUNK_ROWS = 2_000


def record_forecasts(conn: Connection, rows: Iterable[dict]) -> int:
    """Insert forecasts (FORECAST_COLUMNS each) not yet recorded; returns how many were new.

    A forecast already in the ledger (same ticker, as_of, model version, horizon) is left as it
    was: the first record stands, so several workers serving one forecast record it once.
    """
    rows = [{c: row[c] for c in FORECAST_COLUMNS} for row in rows]
    if not rows:
        return 0
    stmt = _RECORD[conn.dialect.name == "postgresql"]
    new = 0
    for i in range(0, len(rows), CHUNK_ROWS):
        # Parameter sets of one statement built once (SQLAlchemy batches them into multi-row
        # INSERTs); RETURNING counts the rows really inserted: psycopg reports rowcount -1.
        new += len(conn.execute(stmt, rows[i : i + CHUNK_ROWS]).all())
    return new


def _record_statement(insert):
    return (insert(_LEDGER).on_conflict_do_nothing(index_elements=list(KEY_COLUMNS))
            .returning(_LEDGER.c.ticker))


# Built once per dialect (a request's first live forecast records it; compiling a fresh
# multi-row INSERT each time cost more than the forecast): (SQLite's, Postgres').
_RECORD = (_record_statement(sqlite.insert), _record_statement(postgresql.insert))


def unscored(conn: Connection, tickers: Sequence[str] | None = None) -> pd.DataFrame:
    """Recorded forecasts without a score yet (of `tickers`, or all)."""
    cols = [_LEDGER.c[c] for c in (*KEY_COLUMNS, "last_close", "lower", "median", "upper")]
    stmt = select(*cols).where(_LEDGER.c.realized_close.is_(None))
    if tickers is not None:
        stmt = stmt.where(_LEDGER.c.ticker.in_(list(tickers)))
    frame = pd.DataFrame.from_records([tuple(r) for r in conn.execute(stmt)],
                                      columns=[c.name for c in cols])
    frame["horizon"] = frame["horizon"].astype("int64")
    return frame


def store_scores(conn: Connection, scored: pd.DataFrame, at: dt.datetime | None = None) -> int:
    """Write realized_date, realized_close, error, naive_error, inside for scored rows."""
    if scored.empty:
        return 0
    at = at or dt.datetime.now(dt.UTC)
    stmt = (update(_LEDGER)
            .where(and_(*[_LEDGER.c[c] == bindparam(f"k_{c}") for c in KEY_COLUMNS]))
            .values(**{c: bindparam(f"v_{c}") for c in SCORE_COLUMNS}, scored_at=at))
    params = [
        {**{f"k_{c}": row[c] for c in KEY_COLUMNS},
         "v_realized_date": row["realized_date"], "v_realized_close": float(row["realized_close"]),
         "v_error": float(row["error"]), "v_naive_error": float(row["naive_error"]),
         "v_inside": bool(row["inside"])}
        for row in scored.to_dict("records")
    ]
    for p in params:
        p["k_horizon"] = int(p["k_horizon"])
    for i in range(0, len(params), CHUNK_ROWS):
        conn.execute(stmt, params[i : i + CHUNK_ROWS])
    return len(params)


def read_ledger(conn: Connection, *, ticker: str | None = None, horizon: int | None = None,
                model_version: str | None = None) -> pd.DataFrame:
    """Recorded forecasts with their scores (NaN/None while unscored), filtered."""
    stmt = select(_LEDGER)
    for column, wanted in (("ticker", ticker), ("horizon", horizon),
                           ("model_version", model_version)):
        if wanted is not None:
            stmt = stmt.where(_LEDGER.c[column] == wanted)
    stmt = stmt.order_by(_LEDGER.c.model_version, _LEDGER.c.horizon, _LEDGER.c.ticker,
                         _LEDGER.c.as_of)
    result = conn.execute(stmt)
    frame = pd.DataFrame.from_records([tuple(r) for r in result],
                                      columns=list(result.keys()))
    frame["horizon"] = frame["horizon"].astype("int64")
    for c in ("realized_close", "error", "naive_error"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    return frame


SUMMARY_COLUMNS = ("ticker", "horizon", "model_version", "n_forecasts", "n_scored", "mae",
                   "naive_mae", "coverage")


def summarize(conn: Connection, *, pooled: str | None = None, ticker: str | None = None,
              horizon: int | None = None, model_version: str | None = None) -> pd.DataFrame:
    """Per (ticker, horizon, model version) — or, with `pooled` (its label), per (horizon,
    model version) over all tickers — forecasts recorded and scored, mean |error|, mean
    |naive error| and the share inside the band over the scored ones (NaN if none)."""
    t = _LEDGER.c
    groups = [t.horizon, t.model_version] if pooled is not None else [
        t.ticker, t.horizon, t.model_version]
    stmt = select(
        *groups[:-2], t.horizon, t.model_version, func.count().label("n_forecasts"),
        func.count(t.realized_close).label("n_scored"),
        func.avg(func.abs(t.error)).label("mae"),
        func.avg(func.abs(t.naive_error)).label("naive_mae"),
        func.avg(case((t.inside.is_(None), None), (t.inside, 1.0), else_=0.0)).label("coverage"),
    ).group_by(*groups).order_by(t.model_version, t.horizon, *groups[:-2])
    for column, wanted in (("ticker", ticker), ("horizon", horizon),
                           ("model_version", model_version)):
        if wanted is not None:
            stmt = stmt.where(t[column] == wanted)
    columns = list(SUMMARY_COLUMNS[1:] if pooled is not None else SUMMARY_COLUMNS)
    frame = pd.DataFrame.from_records([tuple(r) for r in conn.execute(stmt)], columns=columns)
    if pooled is not None:
        frame.insert(0, "ticker", pooled)
    for c in ("mae", "naive_mae", "coverage"):  # NaN where nothing is scored
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    return frame
