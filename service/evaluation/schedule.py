"""The scheduler's jobs: the daily cycle after the NYSE close (refresh the universe's bars, score
the ledger, prewarm the serving stores, record the universe's live forecasts) and the periodic retrain -> backtest -> gate.

Each job runs for a key — the session it covers, the retrain period — at most once to `ok`
(idempotent: a second scheduler, or a restart, skips a key already done) and one at a time
across processes (service.db.jobs.job_lock: a Postgres advisory lock). Every attempt is recorded
in job_runs; GET /jobs and Prometheus show the last one of each job.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from service.artifacts.manifest import resolve_current
from service.core.config import Settings
from service.core.errors import StockcastError
from service.db import jobs as jobs_db
from service.db.health import is_database_fault
from service.db.ledger import record_forecasts
from service.evaluation.feature_store import (
    PrewarmReport,
    after_bars_written,
    prewarm,
    serve_latest,
)
from service.evaluation.ledger import ledger_rows, score_ledger
from service.forecasting.calendar import last_closed_session
from service.inference.predictor import Predictor
from service.sources.ingest import refresh_tickers

log = logging.getLogger(__name__)

DAILY = "daily"
RETRAIN = "retrain"


def runner_name() -> str:
    """Who ran a job: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def still_working(run: jobs_db.JobRunInfo) -> bool:
    """Whether a run's runner is another live process on this host (runner_name()'s host:pid):
    one whose Postgres lock session ended while it works on, not one that ended."""
    host, _, pid = run.runner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: is it there
    except ProcessLookupError:
        return False
    except PermissionError:  # there, another user's
        return True
    return True


@dataclass(frozen=True)
class JobOutcome:
    """What one attempt to run a job for a key did: ran (ok / failed / refused) or skipped."""

    job: str
    key: str
    status: str  # ok, failed, refused, skipped-done, skipped-running
    detail: str = ""


def run_job(engine: Engine, job: str, key: str, work: Callable[[], str],
            runner: str | None = None) -> JobOutcome:
    """Run `work` for (job, key) unless it is running elsewhere or already done for the key.

    `work` returns a one-line detail; a StockcastError (the gate's PromotionRefused) makes the
    run `refused` — done for the key, like `ok`: the gate's no is an answer — and any other
    exception `failed` (recorded and logged; the key is tried again at the next poll). A lock
    lost meanwhile (its Postgres session ended: another scheduler may have taken it and run the
    key too) makes it `failed` whatever `work` said, "lock lost: ..."; `work` may ask sooner
    (confirm_lock, as the retrain does before the gate may promote). A run of the job still
    `running` when the lock is taken was abandoned by its runner (it ended mid-job): it is
    recorded `failed`, "abandoned: ...", before anything else, unless its runner is a live
    process on this host (its lock session lost: it records "lock lost" itself).
    """
    runner = runner or runner_name()
    with jobs_db.job_lock(engine, job) as lock:
        if not lock.held:
            return JobOutcome(job, key, "skipped-running", "another scheduler holds the lock")
        with engine.begin() as conn:
            # With the lock held, a run left `running` was left by a runner that ended before
            # recording its outcome (its database gone), or by one that lost its lock session
            # and works on: spared where it can be seen (this host's live processes).
            for run in jobs_db.abandon_runs(conn, job, runner, keep=still_working):
                log.warning("job %s: run %d for %s (runner %s, started %s) was left running; "
                            "recorded failed, abandoned", job, run.id, run.run_key, run.runner,
                            run.started_at.isoformat(timespec="seconds"))
            if jobs_db.succeeded(conn, job, key):
                return JobOutcome(job, key, "skipped-done", f"{job} already done for {key}")
            run_id = jobs_db.start_run(conn, job, key, runner)
        token = _RUNNING.set(lock)
        try:
            status, detail = "ok", work()
        except jobs_db.LockLost:  # confirm_lock stopped it: lock.lost() below says why
            status, detail = "stopped", "before a step it may not take twice"
        except StockcastError as exc:
            status, detail = "refused", str(exc)
        except Exception as exc:  # a job's failure is recorded, not fatal
            status, detail = "failed", f"{exc.__class__.__name__}: {exc}"
            log.exception("job %s for %s failed", job, key)
        finally:
            _RUNNING.reset(token)
        lost = lock.lost()
        if lost is not None:
            log.error("job %s for %s lost its lock (%s): recorded failed", job, key, lost)
            status, detail = "failed", f"lock lost: {lost}; not counted: {status} {detail}"
        with engine.begin() as conn:
            jobs_db.finish_run(conn, run_id, status, detail)
    return JobOutcome(job, key, status, detail)


# The lock of the job running in this context (run_job), for confirm_lock.
_RUNNING: ContextVar[jobs_db.JobLock | None] = ContextVar("stockcast_job_lock", default=None)


def confirm_lock() -> None:
    """Raise LockLost if the job this is called in no longer holds its lock (outside a job, do
    nothing): a step that must not happen twice (a promotion) asks just before it."""
    lock = _RUNNING.get()
    if lock is not None and (why := lock.lost()) is not None:
        raise jobs_db.LockLost(why)


def record_forecasts_of(engine: Engine, predictor: Predictor, tickers: Sequence[str],
                        horizon: int | None = None) -> int:
    """Record `predictor`'s forecasts of the tickers (as of their latest bars; from the serving
    stores where fresh, as the API serves them) in the ledger."""
    horizon = horizon or predictor.spec.horizon
    forecasts = serve_latest(engine, predictor, tickers, horizon)
    rows = [row for f in forecasts for row in ledger_rows(f, predictor.spec.quantiles)]
    with engine.begin() as conn:
        return record_forecasts(conn, rows)


def _load_current(settings: Settings) -> Predictor:
    return Predictor.load(resolve_current(settings.model_dir), settings.ort_provider,
                          settings.ort_intra_op_threads)


def prewarm_current(engine: Engine, settings: Settings,
                    tickers: Sequence[str] | None = None) -> PrewarmReport:
    """Fill the serving stores for the current model (after a refresh)."""
    return prewarm(engine, _load_current(settings), tickers)


def daily_cycle(engine: Engine, settings: Settings, tickers: Sequence[str]) -> str:
    """Refresh the tickers' bars (batched; features follow), score the ledger, prewarm the
    band states, record their live forecasts (read from the stores just filled)."""
    refreshed = refresh_tickers(engine, settings, list(tickers), after_write=after_bars_written)
    with engine.begin() as conn:
        scored = score_ledger(conn)
    predictor = _load_current(settings)
    warmed = prewarm(engine, predictor, tickers)
    recorded = record_forecasts_of(engine, predictor, tickers)
    return (f"{refreshed.summary()}; {scored} forecasts scored; {warmed.summary()}; "
            f"{recorded} recorded")


def retrain_key(today: dt.date, every_days: int) -> str:
    """The retrain period holding `today`: periods of `every_days` days from 2000-01-01."""
    index = (today - dt.date(2000, 1, 1)).days // every_days
    return (dt.date(2000, 1, 1) + dt.timedelta(days=index * every_days)).isoformat()


def run_due(engine: Engine, settings: Settings, tickers: Sequence[str],
            retrain: Callable[[], str] | None, now: dt.datetime, retrain_every_days: int = 30
            ) -> list[JobOutcome]:
    """Run every job that is due at `now`: the daily cycle for the last closed session, and
    (with `retrain`) the retrain of the current period."""
    session = last_closed_session(now).isoformat()
    outcomes = [run_job(engine, DAILY, session, lambda: daily_cycle(engine, settings, tickers))]
    if retrain is not None:
        outcomes.append(run_job(engine, RETRAIN, retrain_key(now.date(), retrain_every_days),
                                retrain))
    return outcomes


def run_forever(engine: Engine, settings: Settings, tickers: Sequence[str],
                retrain: Callable[[], str] | None, *, poll_seconds: float = 300.0,
                retrain_every_days: int = 30,
                clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                sleep: Callable[[float], None] = time.sleep,
                stop: Callable[[], bool] = lambda: False) -> None:
    """A plain loop: every poll, run what is due (each job idempotent per key). A database that
    does not answer (down, restarting, unreachable) is logged and asked again at the next poll:
    the service outlives an outage; any other error (a bug, a missing table) ends it."""
    while not stop():
        try:
            outcomes = run_due(engine, settings, tickers, retrain, clock(), retrain_every_days)
        except DBAPIError as exc:
            if not is_database_fault(exc):
                raise
            why = str(exc.orig).strip().splitlines() or ["no message"]
            log.error("the database did not answer (%s: %s); polling again in %g s",
                      type(exc.orig).__name__, why[0], poll_seconds)
            outcomes = []
        for outcome in outcomes:
            if not outcome.status.startswith("skipped"):
                log.info("%s %s: %s %s", outcome.job, outcome.key, outcome.status,
                         outcome.detail)
        sleep(poll_seconds)
