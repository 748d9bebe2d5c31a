"""All SQL for scheduled jobs: one job at a time across processes (a Postgres advisory lock, a
file lock on SQLite), and each attempt recorded in job_runs (its key, outcome, timing)."""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from service.db.models import JobRun

log = logging.getLogger(__name__)

_RUNS = JobRun.__table__
# Advisory lock keys live in one 64-bit space per database: this prefix keeps ours apart.
LOCK_NAMESPACE = 0x5C0A5700000000


def lock_key(job: str) -> int:
    """The advisory lock key of a job name (stable across processes and Python versions)."""
    return LOCK_NAMESPACE + zlib.crc32(job.encode())


class LockLost(RuntimeError):
    """A job's lock went while the job ran (its Postgres session ended): another scheduler may
    be running the same key meanwhile, so this attempt must neither count nor promote."""


class JobLock:
    """What trying a job's lock gave: `held`, and while held, `lost()`: why it is no longer
    held (None while it is), asked of the lock's own session each time until it says."""

    def __init__(self, held: bool, check: Callable[[], str | None] = lambda: None):
        self.held = held
        self._check = check
        self._lost: str | None = None

    def lost(self) -> str | None:
        if self.held and self._lost is None:
            self._lost = self._check()
        return self._lost


# Server-side TCP keepalive of the lock's session (seconds idle before a probe): a NAT or load
# balancer that drops idle flows would end the session, and the lock with it.
LOCK_KEEPALIVE_SECONDS = 60


@contextmanager
def job_lock(engine: Engine, job: str) -> Iterator[JobLock]:
    """Try to take the job's lock without waiting; yields a JobLock (held or not).

    Postgres: pg_try_advisory_lock on a connection held for the block (a crashed holder's lock
    goes with its connection), idle the whole job, so kept from idle_session_timeout and probed
    by TCP keepalives; should the session end anyway, `lost()` says so and the unlock is skipped
    (the lock went with it). SQLite: an exclusive flock on a file beside the database (held by
    this process's open file: never lost).
    """
    if engine.dialect.name == "postgresql":
        key = lock_key(job)
        with engine.connect() as conn:
            got = bool(conn.execute(text("select pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            if got:
                for name, value in _lock_session_settings(conn).items():
                    conn.execute(text(f"set {name} = {value}"))
            conn.commit()
            lock = JobLock(got, lambda: _pg_lock_lost(conn, key))
            try:
                yield lock
            finally:
                if got and lock.lost() is None:
                    _pg_unlock(conn, key, job)
        return
    database = engine.url.database
    path = Path(f"{database}.{job}.lock") if database and database != ":memory:" else None
    if path is None:
        yield JobLock(True)  # an in-memory database lives in one process
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield JobLock(False)
            return
        try:
            yield JobLock(True)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_session_settings(conn: Connection) -> dict[str, int]:
    """What the lock's session sets for the job (reset before the pool has it back)."""
    settings = {"tcp_keepalives_idle": LOCK_KEEPALIVE_SECONDS}
    if conn.dialect.server_version_info >= (14,):  # idle_session_timeout is new in 14
        settings["idle_session_timeout"] = 0
    return settings


def _pg_lock_lost(conn: Connection, key: int) -> str | None:
    """Why the lock's session no longer holds the advisory lock `key`, or None if it does.

    Asked of pg_locks, not of a plain query: a connection SQLAlchemy replaced after a failure
    would answer `select 1` from a new session that holds nothing."""
    try:
        held = conn.execute(text(
            "select count(*) from pg_locks where locktype = 'advisory' and granted"
            " and pid = pg_backend_pid() and classid::bigint = :hi and objid::bigint = :lo"
            " and objsubid = 1"), {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).scalar()
        conn.commit()
    except DBAPIError as exc:
        why = str(exc.orig).strip().splitlines()
        return (f"its database session ended ({type(exc.orig).__name__}: "
                f"{why[0] if why else 'no message'})")
    return None if held else "its database session no longer holds it"


def _pg_unlock(conn: Connection, key: int, job: str) -> None:
    """Release the lock; a session that ended meanwhile released it with itself."""
    try:
        conn.execute(text("select pg_advisory_unlock(:k)"), {"k": key})
        for name in _lock_session_settings(conn):
            conn.execute(text(f"reset {name}"))
        conn.commit()
    except DBAPIError as exc:
        log.warning("job %s: the lock's session ended before the unlock (%s): released with it",
                    job, type(exc.orig).__name__)


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


def abandon_runs(conn: Connection, job: str, by: str, at: dt.datetime | None = None,
                 keep: Callable[[JobRunInfo], bool] | None = None) -> list[JobRunInfo]:
    """Record failed, "abandoned: ...", the job's runs still `running` (but those `keep` says
    may still be working), and return them as they were. Call it holding the job's lock: one
    runner at a time holds it, and each releases it only after recording its outcome or by
    ending (a crash, the database dying before the outcome was written). One exception: a
    runner whose Postgres lock session ended (an idle timeout, a terminate) lost the lock while
    its process works on, and records "lock lost" itself when it finishes, overwriting this
    record; `keep` spares the runs of such a process where it can be seen (this host's)."""
    running = [_info(r) for r in conn.execute(select(_RUNS).where(
        _RUNS.c.job == job, _RUNS.c.status == "running").order_by(_RUNS.c.id))]
    running = [r for r in running if keep is None or not keep(r)]
    if running:
        conn.execute(update(_RUNS).where(_RUNS.c.id.in_([r.id for r in running])).values(
            status="failed", finished_at=at or dt.datetime.now(dt.UTC),
            detail=f"abandoned: left running by a runner that no longer holds the {job} lock "
                   f"(it ended, or lost its database, before recording an outcome); found by "
                   f"{by}"))
    return running


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
