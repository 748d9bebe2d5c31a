"""All SQL for scheduled jobs: one job at a time across processes (a Postgres advisory lock, a
file lock on SQLite), and each attempt recorded in job_runs (its key, outcome, timing)."""

from __future__ import annotations

import datetime as dt
import fcntl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, func, insert, select, text, update

from service.db.models import JobRun

_RUNS = JobRun.__table__
# Advisory lock keys live in one 64-bit space per database: this prefix keeps ours apart.
LOCK_NAMESPACE = 0x5C0A5700000000


def lock_key(job: str) -> int:
    """The advisory lock key of a job name (stable across processes and Python versions)."""
    return LOCK_NAMESPACE + zlib.crc32(job.encode())


@contextmanager
def job_lock(engine: Engine, job: str) -> Iterator[bool]:
    """Try to take the job's lock without waiting; yields whether this process holds it.

    Postgres: pg_try_advisory_lock on a connection held for the block (a crashed holder's lock
    goes with its connection). SQLite: an exclusive flock on a file beside the database.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            got = bool(conn.execute(text("select pg_try_advisory_lock(:k)"),
                                    {"k": lock_key(job)}).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("select pg_advisory_unlock(:k)"), {"k": lock_key(job)})
                    conn.commit()
        return
    database = engine.url.database
    path = Path(f"{database}.{job}.lock") if database and database != ":memory:" else None
    if path is None:
        yield True  # an in-memory database lives in one process
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class JobRunInfo:
    """One recorded attempt of a job."""

    id: int
    job: str
    run_key: str
    status: str
    detail: str | None
    runner: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite drops the offset; we store UTC
        return value.replace(tzinfo=dt.UTC)
    return value


def _info(row) -> JobRunInfo:
    return JobRunInfo(row.id, row.job, row.run_key, row.status, row.detail, row.runner,
                      _aware(row.started_at), _aware(row.finished_at))


def start_run(conn: Connection, job: str, key: str, runner: str,
              at: dt.datetime | None = None) -> int:
    """Record that a job started for a key; returns the run id."""
    return conn.execute(insert(_RUNS).values(
        job=job, run_key=key, status="running", runner=runner,
        started_at=at or dt.datetime.now(dt.UTC)).returning(_RUNS.c.id)).scalar_one()


def finish_run(conn: Connection, run_id: int, status: str, detail: str | None = None,
               at: dt.datetime | None = None) -> None:
    """Record a run's outcome (ok, failed, refused...)."""
    conn.execute(update(_RUNS).where(_RUNS.c.id == run_id).values(
        status=status, detail=detail, finished_at=at or dt.datetime.now(dt.UTC)))


DONE_STATUSES = ("ok", "refused")


def succeeded(conn: Connection, job: str, key: str) -> bool:
    """Whether the job already ran to an answer (ok, or refused by the gate) for this key."""
    return conn.execute(select(func.count()).select_from(_RUNS).where(
        _RUNS.c.job == job, _RUNS.c.run_key == key,
        _RUNS.c.status.in_(DONE_STATUSES))).scalar_one() > 0


def runs_of(conn: Connection, job: str, key: str | None = None) -> list[JobRunInfo]:
    """A job's recorded runs (of one key), oldest first."""
    stmt = select(_RUNS).where(_RUNS.c.job == job)
    if key is not None:
        stmt = stmt.where(_RUNS.c.run_key == key)
    return [_info(r) for r in conn.execute(stmt.order_by(_RUNS.c.id))]


def last_runs(conn: Connection) -> dict[str, JobRunInfo]:
    """The latest run of each job, and (key "<job>:ok") its latest successful one."""
    latest = select(_RUNS.c.job, func.max(_RUNS.c.id).label("id")).group_by(_RUNS.c.job)
    ok = (select(_RUNS.c.job, func.max(_RUNS.c.id).label("id"))
          .where(_RUNS.c.status == "ok").group_by(_RUNS.c.job))
    out: dict[str, JobRunInfo] = {}
    for suffix, ids in (("", latest), (":ok", ok)):
        wanted = [r.id for r in conn.execute(ids)]
        if wanted:
            for row in conn.execute(select(_RUNS).where(_RUNS.c.id.in_(wanted))):
                out[row.job + suffix] = _info(row)
    return out
