"""Ingest benchmark: rows/s of the shared dataset into PostgreSQL and SQLite, fresh and re-ingest.

Baseline measured in the same run: the plain SQLAlchemy Core upsert a first implementation would
write (`insert().on_conflict_do_update()` executed with a list of row dicts), on the same rows,
and the floor of reading + validating the file without any database.
Run: `make bench-ingest` (needs ../shared/data and, for the Postgres rows, a local PostgreSQL).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from service.core.bars import NUMERIC_COLUMNS
from service.db.bars import _prepare
from service.db.models import Bar
from service.db.session import make_engine, reset_database
from service.sources.csv import read_bars_file
from service.sources.ingest import ingest_frame
from service.sources.validate import validate_bars

DATASET = ROOT.parent / "shared" / "data" / "sp500_daily_2012_2017.csv.gz"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BASELINE_ROWS = 1_000_000  # i.e. the whole file: same rows as the measured path


def timed(fn, repeat=1):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def naive_upsert(url, bars):
    """The obvious Core upsert: one statement, executemany over row dicts."""
    reset_database(url)
    engine = make_engine(url)
    rows = _prepare(bars.iloc[:BASELINE_ROWS], "bench").to_dict("records")
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(Bar.__table__)
    stmt = stmt.on_conflict_do_update(index_elements=["ticker", "date"],
                                      set_={c: stmt.excluded[c] for c in NUMERIC_COLUMNS})
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(stmt, rows)
    elapsed = time.perf_counter() - t0
    engine.dispose()
    return len(rows) / elapsed


def backend_rows(name, url, frame):
    reset_database(url)
    engine = make_engine(url)
    fresh, report = timed(lambda: ingest_frame(engine, frame, source="bench"))
    again, report2 = timed(lambda: ingest_frame(engine, frame, source="bench"), repeat=3)
    assert report.read == report.stored + report.n_rejected and report2.written == 0
    engine.dispose()
    base = naive_upsert(url, validate_bars(frame).bars)
    n = report.read
    return [
        (name, "ingest (validate + upsert), empty DB", fresh, n / fresh),
        (name, "re-ingest, nothing changes (median of 3)", again, n / again),
        (name, "baseline: Core executemany upsert, empty DB", n / base,
         base),
    ]


def main() -> int:
    if not DATASET.exists():
        print(f"skipped: {DATASET} not found")
        return 0
    read_s, frame = timed(lambda: read_bars_file(DATASET))
    validate_s, _ = timed(lambda: validate_bars(frame), repeat=3)
    rows = [("-", "read CSV (no DB)", read_s, len(frame) / read_s),
            ("-", "validate (no DB, median of 3)", validate_s, len(frame) / validate_s)]
    with tempfile.TemporaryDirectory() as tmp:
        rows += backend_rows("sqlite", f"sqlite:///{tmp}/bench.db", frame)
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"stockcast_bench_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'create database "{name}"'))
    except Exception as exc:  # noqa: BLE001
        print(f"postgres rows skipped: {exc.__class__.__name__}")
    else:
        try:
            rows += backend_rows("postgres", PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", frame)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
    print(f"\nIngest of {DATASET.name}: {len(frame):,} rows read\n")
    print("| backend  | step | seconds | rows/s |\n|---|---|---:|---:|")
    for backend, step, secs, rate in rows:
        print(f"| {backend} | {step} | {secs:.2f} | {rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
