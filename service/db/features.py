"""All SQL for the serving stores: feature rows per (ticker, feature version, date), what they
were computed from (feature_sets), and the served band's ACI state per (model, ticker, as_of).

Both stores are checked against `tickers.bars_revision`, which the bars write bumps in its own
transaction: a stored row is used only while its revision is the ticker's, so a re-based or
extended history is never served from rows computed before it (the reader falls back).
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import (
    Connection,
    Engine,
    String,
    and_,
    bindparam,
    delete,
    select,
    text,
    type_coerce,
)
from sqlalchemy.dialects import postgresql, sqlite

from service.db.bars import in_chunks
from service.db.guard import driver_errors
from service.db.locks import xact_lock
from service.db.models import BandState, FeatureRow, FeatureSet, Ticker

_ROWS = FeatureRow.__table__
_SETS = FeatureSet.__table__
_STATES = BandState.__table__
_TICKERS = Ticker.__table__
INSERT_CHUNK = 20_000  # feature rows per executemany / COPY batch
FLOAT = np.dtype("<f8")  # every stored array: float64, little-endian
# Feature-update lock keys (locks.xact_lock): this prefix ("feat") + the ticker's CRC-32.
FEATURES_LOCK_NAMESPACE = 0x66656174 << 32


def lock_feature_sets(conn: Connection, tickers: Sequence[str]) -> None:
    """Serialise feature updates of these tickers until this transaction ends.

    Two bars writers of one ticker (two ingests, an ingest and a request's refresh) each update
    its features after their write; unserialised, the later one read the set the other was
    replacing, found its own recomputation's prefix equal to it, appended nothing and then
    labelled the other's rows with its own revision: feature rows of bars no longer stored,
    marked fresh for good (a hostile pass, both backends).
    """
    xact_lock(conn, (FEATURES_LOCK_NAMESPACE + zlib.crc32(t.encode()) for t in tickers))


def encode(values: np.ndarray) -> bytes:
    """An array's float64 bytes (C order)."""
    return np.ascontiguousarray(values, dtype=FLOAT).tobytes()


def decode(blob: bytes | memoryview, columns: int) -> np.ndarray:
    """Inverse of encode for rows of `columns` values: (n, columns) float64."""
    return np.frombuffer(bytes(blob), dtype=FLOAT).reshape(-1, columns)


@contextmanager
def consistent_read(engine: Engine) -> Iterator[Connection]:
    """A connection whose statements share one snapshot (a state and its feature rows agree):
    Postgres needs REPEATABLE READ for it; SQLite an explicit BEGIN (pysqlite begins none
    before a SELECT, so each would read its own snapshot), its WAL snapshot taken at the first
    read and ended by the rollback on close."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")
        yield conn


def _insert(conn: Connection):
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


# -- feature rows --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredFeatureSet:
    """What one ticker's stored rows of a feature version were computed from."""

    ticker: str
    bars_revision: int
    last_date: dt.date | None
    n_rows: int
    digest: str


@dataclass(frozen=True)
class FeatureUpdate:
    """Rows to write for one ticker: appended to what is stored, or replacing all of it."""

    ticker: str
    bars_revision: int
    dates: pd.DatetimeIndex  # of the rows to write
    values: np.ndarray  # (len(dates), F)
    replace: bool
    last_date: dt.date | None  # of the whole set after the write
    n_rows: int
    digest: str


def feature_sets(conn: Connection, version: str,
                 tickers: Sequence[str]) -> dict[str, StoredFeatureSet]:
    """The stored feature sets of `tickers` for `version`, by ticker (absent: none stored)."""
    out = {}
    for part in in_chunks(tickers):
        rows = conn.execute(select(_SETS).where(_SETS.c.version == version,
                                                _SETS.c.ticker.in_(part)))
        for r in rows:
            out[r.ticker] = StoredFeatureSet(r.ticker, r.bars_revision, r.last_date, r.n_rows,
                                             r.digest)
    return out


def write_features(conn: Connection, version: str, updates: Sequence[FeatureUpdate]) -> int:
    """Write the updates' rows (deleting a replaced ticker's old rows first) and their sets;
    returns the rows written."""
    if not updates:
        return 0
    replaced = [u.ticker for u in updates if u.replace]
    for part in in_chunks(replaced):
        conn.execute(delete(_ROWS).where(_ROWS.c.version == version, _ROWS.c.ticker.in_(part)))
    rows = [(u.ticker, version, d, encode(v))
            for u in updates for d, v in zip(u.dates.date, u.values)]
    if conn.dialect.name == "postgresql":
        _copy_rows(conn, rows)
    else:
        sql = ("INSERT OR REPLACE INTO feature_rows (ticker, version, date, features) "
               "VALUES (?, ?, ?, ?)")
        cursor = conn.connection.driver_connection.cursor()
        try:
            with driver_errors(conn, sql):
                for part in in_chunks(rows, INSERT_CHUNK):
                    cursor.executemany(sql, [(t, v, d.isoformat(), b) for t, v, d, b in part])
        finally:
            cursor.close()
    insert = _insert(conn)
    values = [{"ticker": u.ticker, "version": version, "bars_revision": u.bars_revision,
               "last_date": u.last_date, "n_rows": u.n_rows, "digest": u.digest,
               "computed_at": dt.datetime.now(dt.UTC)} for u in updates]
    for part in in_chunks(values):
        stmt = insert(_SETS).values(part)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["ticker", "version"],
            set_={c: stmt.excluded[c] for c in ("bars_revision", "last_date", "n_rows", "digest",
                                                 "computed_at")}))
    return len(rows)


def delete_other_versions(conn: Connection, version: str) -> int:
    """Drop every feature row and set of a feature version other than `version` (only the
    current code's version is ever read); returns the rows deleted. The sets (one per ticker
    and version) say whether there is any: no scan of the rows when there is none."""
    old = conn.execute(select(_SETS.c.version).where(_SETS.c.version != version)
                       .distinct()).scalars().all()
    if not old:
        return 0
    deleted = conn.execute(delete(_ROWS).where(_ROWS.c.version.in_(old))).rowcount
    conn.execute(delete(_SETS).where(_SETS.c.version.in_(old)))
    return deleted


def _copy_rows(conn: Connection, rows: list[tuple]) -> None:
    """Postgres: binary COPY into a temporary table, then one INSERT ... ON CONFLICT."""
    conn.execute(text("CREATE TEMP TABLE feature_rows_incoming (LIKE feature_rows) "
                      "ON COMMIT DROP"))
    raw = conn.connection.driver_connection
    copy_sql = ("COPY feature_rows_incoming (ticker, version, date, features) FROM STDIN "
                "(FORMAT BINARY)")
    with driver_errors(conn, copy_sql), raw.cursor() as cur, cur.copy(copy_sql) as cp:
        cp.set_types(["varchar", "varchar", "date", "bytea"])
        for row in rows:
            cp.write_row(row)
    conn.execute(text(
        "INSERT INTO feature_rows SELECT * FROM feature_rows_incoming "
        "ON CONFLICT (ticker, version, date) DO UPDATE SET features = excluded.features"))
    conn.execute(text("DROP TABLE feature_rows_incoming"))


def read_features(conn: Connection, version: str, ticker: str, columns: int
                  ) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Every stored row of one ticker, oldest first: (dates, (n, columns) values)."""
    rows = conn.execute(select(_ROWS.c.date, _ROWS.c.features)
                        .where(_ROWS.c.ticker == ticker, _ROWS.c.version == version)
                        .order_by(_ROWS.c.date)).all()
    return _frame(rows, columns)


def _frame(rows, columns: int) -> tuple[pd.DatetimeIndex, np.ndarray]:
    dates = pd.DatetimeIndex(pd.to_datetime([r[0] for r in rows]), name="date")
    if not rows:
        return dates, np.empty((0, columns))
    return dates, decode(b"".join(bytes(r[1]) for r in rows), columns)


# The serving reads are built once (a cold request is a few statements; building each anew
# costs as much as running it).
# A single ticker (each first forecast of one) is read with `=` rather than an expanding IN,
# whose list SQLAlchemy renders anew at every execution. Dates come back as stored (an ISO
# string on SQLite): only each ticker's last one is compared, so the others are not parsed.
_RAW_DATE = type_coerce(_ROWS.c.date, String)


def _tail(ticker):
    return (select(_ROWS.c.ticker, _RAW_DATE, _ROWS.c.features)
            .where(_ROWS.c.version == bindparam("version"), ticker,
                   _ROWS.c.date >= bindparam("first"), _ROWS.c.date <= bindparam("last"))
            .order_by(_ROWS.c.ticker, _ROWS.c.date))


_TAIL = _tail(_ROWS.c.ticker.in_(bindparam("tickers", expanding=True)))
_TAIL_ONE = _tail(_ROWS.c.ticker == bindparam("ticker"))
_LAST_N = (select(_RAW_DATE, _ROWS.c.features)
           .where(_ROWS.c.version == bindparam("version"), _ROWS.c.ticker == bindparam("ticker"),
                  _ROWS.c.date <= bindparam("last"))
           .order_by(_ROWS.c.date.desc()).limit(bindparam("n")))


def read_latest_features(conn: Connection, version: str, last_dates: dict[str, dt.date],
                         n: int, columns: int) -> dict[str, tuple[dt.date, np.ndarray]]:
    """The last `n` stored rows up to each ticker's date in `last_dates`, oldest first:
    (the last row's date, (n, columns) values).

    Tickers sharing a last date are read with one statement over a calendar span that holds
    n sessions; a ticker with gaps there is read on its own (ORDER BY date DESC LIMIT n).
    """
    span = dt.timedelta(days=n * 7 // 5 + 15)  # n sessions: weekends plus holidays
    by_date: dict[dt.date, list[str]] = {}
    for ticker, last in last_dates.items():
        by_date.setdefault(last, []).append(ticker)
    out: dict[str, tuple[dt.date, np.ndarray]] = {}
    for last, tickers in by_date.items():
        for part in in_chunks(sorted(tickers)):
            params = {"version": version, "first": last - span, "last": last}
            rows = (conn.execute(_TAIL_ONE, {**params, "ticker": part[0]}) if len(part) == 1
                    else conn.execute(_TAIL, {**params, "tickers": part})).all()
            grouped: dict[str, list] = {}
            for r in rows:
                grouped.setdefault(r[0], []).append((r[1], r[2]))
            for ticker in part:
                got = grouped.get(ticker, [])
                if len(got) < n:
                    got = conn.execute(_LAST_N, {"version": version, "ticker": ticker,
                                                 "last": last, "n": n}).all()[::-1]
                if got:
                    got = got[-n:]
                    out[ticker] = (_date(got[-1][0]),
                                   decode(b"".join(bytes(r[1]) for r in got), columns))
    return out


def _date(value: str | dt.date) -> dt.date:
    """A date selected as _RAW_DATE: SQLite's ISO text, or the driver's date (Postgres)."""
    return dt.date.fromisoformat(value) if isinstance(value, str) else value


# -- band states ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBandState:
    """The served band's state of one ticker as of a bar: ACI's Q̂ (horizons, width: one per
    level, or two-sided one per tail) and the recent coverage, with the bars revision it was
    computed from; and, when stored with it, the forecast there: the model's (horizon,
    quantiles) output and its range warnings, with the digest of the training profile they were
    checked against (`profile`; None: the predictor had none). Read back only when stored with
    the row's bars revision."""

    ticker: str
    as_of: dt.date
    bars_revision: int
    last_close: float
    qhat: np.ndarray
    recent_coverage: float | None
    recent_sessions: int
    quantiles: np.ndarray | None = None
    warnings: tuple[str, ...] | None = None
    profile: str | None = None


def write_band_states(conn: Connection, model_version: str,
                      states: Sequence[StoredBandState]) -> None:
    """Upsert states; a ticker's older states of this model are dropped (only the latest is
    served: requests as of an earlier day take the general path)."""
    if not states:
        return
    insert = _insert(conn)
    now = dt.datetime.now(dt.UTC)
    values = [{"model_version": model_version, "ticker": s.ticker, "as_of": s.as_of,
               "bars_revision": s.bars_revision, "last_close": s.last_close,
               "horizons": int(s.qhat.shape[0]), "qhat": encode(s.qhat),
               "recent_coverage": s.recent_coverage, "recent_sessions": s.recent_sessions,
               "quantiles": None if s.quantiles is None else encode(s.quantiles),
               # with the revision they came from: an upsert by code before 0006 changes the
               # row's revision but leaves these columns, which then are another bars' forecast
               "warnings": None if s.warnings is None else {
                   "warnings": list(s.warnings), "profile": s.profile,
                   "bars_revision": s.bars_revision},
               "computed_at": now} for s in states]
    for part in in_chunks(values):
        for v in part:
            conn.execute(delete(_STATES).where(_STATES.c.model_version == model_version,
                                               _STATES.c.ticker == v["ticker"],
                                               _STATES.c.as_of < v["as_of"]))
        stmt = insert(_STATES).values(part)
        # A short request's state (slots 1..h) never replaces a longer one of the same bars.
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["model_version", "ticker", "as_of"],
            set_={c: stmt.excluded[c] for c in ("bars_revision", "last_close", "horizons",
                                                 "qhat", "recent_coverage", "recent_sessions",
                                                 "quantiles", "warnings", "computed_at")},
            where=(stmt.excluded.horizons >= _STATES.c.horizons)
            | (stmt.excluded.bars_revision != _STATES.c.bars_revision)))


def _fresh(ticker):
    return (select(_STATES)
          .select_from(_STATES.join(_TICKERS, and_(
              _TICKERS.c.symbol == _STATES.c.ticker,
              _TICKERS.c.last_bar_date == _STATES.c.as_of,
              _TICKERS.c.bars_revision == _STATES.c.bars_revision)).join(_SETS, and_(
                  _SETS.c.ticker == _STATES.c.ticker,
                  _SETS.c.version == bindparam("feature_version"),
                  _SETS.c.bars_revision == _STATES.c.bars_revision,
                  _SETS.c.last_date == _STATES.c.as_of)))
          .where(_STATES.c.model_version == bindparam("model_version"), ticker))


_FRESH = _fresh(_STATES.c.ticker.in_(bindparam("tickers", expanding=True)))
_FRESH_ONE = _fresh(_STATES.c.ticker == bindparam("ticker"))


def read_fresh_states(conn: Connection, model_version: str, feature_version: str,
                      tickers: Sequence[str], width: int,
                      quantiles: int) -> dict[str, StoredBandState]:
    """Band states as of each ticker's latest bar that are fresh: computed from the ticker's
    current bars revision, with the feature rows up to that bar stored from the same revision.
    `width`: Q̂'s values per slot; `quantiles`: the model's quantile count.
    """
    out = {}
    for part in in_chunks(tickers):
        params = {"feature_version": feature_version, "model_version": model_version}
        rows = (conn.execute(_FRESH_ONE, {**params, "ticker": part[0]}) if len(part) == 1
                else conn.execute(_FRESH, {**params, "tickers": part}))
        for r in rows:
            # The stored forecast, if written with this row's revision (a bare list of
            # warnings, 0006 as first written, names none): else the window serves.
            checked = r.warnings if (isinstance(r.warnings, dict) and r.quantiles is not None
                                     and r.warnings.get("bars_revision") == r.bars_revision) else None
            out[r.ticker] = StoredBandState(
                r.ticker, r.as_of, r.bars_revision, r.last_close,
                decode(r.qhat, width), r.recent_coverage, r.recent_sessions,
                None if checked is None else decode(r.quantiles, quantiles),
                None if checked is None else tuple(checked["warnings"]),
                None if checked is None else checked["profile"])
    return out
