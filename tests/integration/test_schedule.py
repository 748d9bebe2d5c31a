"""Scheduled jobs against the real databases: one run per key across two schedulers (the
Postgres advisory lock), idempotent re-runs, the daily cycle, and a retrain the gate refuses."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

import pytest

from service.artifacts.manifest import load_manifest
from service.db import jobs as jobs_db
from service.db.backtests import store_run
from service.db.ledger import read_ledger
from service.db.session import make_engine
from service.evaluation.promotion import promote
from service.evaluation.schedule import (
    DAILY,
    RETRAIN,
    retrain_key,
    run_due,
    run_forever,
    run_job,
)
from service.evaluation.scoring import MODEL, NAIVE, POOLED
from tests.api_factories import api_settings, copy_models, store_bars
from tests.tiny_model import TINY_TICKERS, synthetic_bars_multi


def test_two_schedulers_never_run_one_job_twice(db_url):
    """Two scheduler instances (each its own engine, as two replicas) start the same job at
    once, three times over: the work runs exactly once; the other is told why it skipped."""
    ran = []
    engines = [make_engine(db_url), make_engine(db_url)]
    try:
        def work():
            ran.append(threading.current_thread().name)
            time.sleep(0.5)  # long enough for the other instance to arrive meanwhile
            return "done"

        def instance(engine, name, start, outcomes):
            start.wait()
            outcomes.append(run_job(engine, DAILY, "2021-05-20", work, runner=name))

        for _ in range(3):
            outcomes = []
            start = threading.Barrier(2)
            threads = [threading.Thread(target=instance,
                                        args=(e, f"replica-{i}", start, outcomes))
                       for i, e in enumerate(engines)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            assert sorted(o.status for o in outcomes) in (
                ["ok", "skipped-running"], ["ok", "skipped-done"],
                ["skipped-done", "skipped-done"], ["skipped-done", "skipped-running"])
        assert len(ran) == 1
        with engines[0].connect() as conn:
            runs = jobs_db.runs_of(conn, DAILY)
        assert [(r.run_key, r.status, r.detail) for r in runs] == [("2021-05-20", "ok", "done")]
        # Another key is another run.
        assert run_job(engines[1], DAILY, "2021-05-21", work).status == "ok"
        assert len(ran) == 2
    finally:
        for engine in engines:
            engine.dispose()


def test_a_failed_job_is_recorded_and_tried_again(db_url):
    engine = make_engine(db_url)
    try:
        calls = []

        def flaky():
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("upstream hiccup")
            return "fine"

        first = run_job(engine, DAILY, "2021-05-20", flaky)
        assert (first.status, first.detail) == ("failed", "RuntimeError: upstream hiccup")
        assert run_job(engine, DAILY, "2021-05-20", flaky).status == "ok"
        with engine.connect() as conn:
            last = jobs_db.last_runs(conn)
        assert last[DAILY].status == "ok" and last[DAILY].finished_at is not None
    finally:
        engine.dispose()


def test_the_daily_cycle_records_the_universe_and_runs_once_per_session(sqlite_url,
                                                                       tiny_artifact):
    store_bars(sqlite_url, synthetic_bars_multi(), reset=True)
    settings = api_settings(sqlite_url, tiny_artifact.model_dir)
    engine = make_engine(sqlite_url)
    now = dt.datetime(2021, 5, 20, 23, 0, tzinfo=dt.UTC)  # Thursday, after the close
    try:
        first = run_due(engine, settings, TINY_TICKERS, None, now)
        assert [(o.job, o.key, o.status) for o in first] == [(DAILY, "2021-05-20", "ok")]
        # No source configured: the refresh fails, the ledger still gets the live forecasts.
        assert "failed=3" in first[0].detail
        with engine.connect() as conn:
            ledger = read_ledger(conn)
        horizon = load_manifest(tiny_artifact.artifact_dir).spec.horizon
        assert len(ledger) == len(TINY_TICKERS) * horizon
        assert set(ledger["as_of"]) == {dt.date(2021, 5, 19)}
        again = run_due(engine, settings, TINY_TICKERS, None, now + dt.timedelta(hours=1))
        assert [o.status for o in again] == ["skipped-done"]
    finally:
        engine.dispose()


def test_a_retrain_the_gate_refuses_leaves_models_current_alone(sqlite_url, tiny_artifact,
                                                                tmp_path):
    store_bars(sqlite_url, synthetic_bars_multi(), reset=True)
    models = tmp_path / "models"
    old = copy_models(tiny_artifact.artifact_dir, models)
    engine = make_engine(sqlite_url)
    try:
        def retrain():
            # What the training pipeline does after export: a stored out-of-sample backtest
            # of the new version, then the gate. This version loses to naive by 5%.
            new = copy_models(tiny_artifact.artifact_dir, models, variant="retrained")
            (models / "current").write_text(old.name + "\n")  # copy_models points current
            manifest = load_manifest(new)
            with engine.begin() as conn:
                store_run(conn, model_version=manifest.version,
                          start=manifest.split.test[0], end=dt.date(2021, 5, 18),
                          tickers=manifest.tickers, config={"in_sample_origins": False},
                          metrics=[(POOLED, 1, MODEL, "mae", 1.05), (POOLED, 1, NAIVE, "mae", 1.0),
                                   # a calibrated band, level with the EWMA + ACI band's
                                   (POOLED, 1, "model_aci", "coverage", 0.8),
                                   (POOLED, 5, "model_aci", "coverage", 0.8),
                                   (POOLED, 1, "model_aci", "interval_score", 0.04),
                                   (POOLED, 1, "ewma_aci", "interval_score", 0.04)])
            return promote(engine, models, manifest.version).describe()

        settings = api_settings(sqlite_url, models)
        now = dt.datetime(2021, 5, 20, 23, 0, tzinfo=dt.UTC)
        outcomes = run_due(engine, settings, TINY_TICKERS, retrain, now)
        retrained = outcomes[1]
        assert (retrained.job, retrained.key) == (RETRAIN, retrain_key(now.date(), 30))
        assert retrained.status == "refused"
        assert "loses to naive by 5.00%" in retrained.detail
        assert (models / "current").read_text().strip() == old.name
        # The gate's answer is final for the period: no retrain again until the next one.
        later = run_due(engine, settings, TINY_TICKERS, retrain, now + dt.timedelta(days=1))
        assert [o.status for o in later] == ["ok", "skipped-done"]
    finally:
        engine.dispose()


def test_retrain_periods_are_fixed_windows():
    assert retrain_key(dt.date(2021, 5, 20), 30) == retrain_key(dt.date(2021, 5, 21), 30)
    keys = {retrain_key(dt.date(2021, 1, 1) + dt.timedelta(days=d), 30) for d in range(90)}
    assert len(keys) in (3, 4)


@pytest.mark.parametrize("now, session", [
    (dt.datetime(2021, 5, 20, 19, 0, tzinfo=dt.UTC), "2021-05-19"),  # 15:00 New York: open
    (dt.datetime(2021, 5, 20, 22, 30, tzinfo=dt.UTC), "2021-05-20"),  # 2.5 h after the close
    (dt.datetime(2021, 5, 31, 23, 0, tzinfo=dt.UTC), "2021-05-28"),  # Memorial Day
])
def test_the_daily_key_is_the_last_closed_nyse_session(now, session):
    from service.forecasting.calendar import last_closed_session

    assert last_closed_session(now).isoformat() == session


def test_jobs_endpoint_and_metrics_show_each_jobs_last_run(sqlite_url, tiny_artifact):
    from fastapi.testclient import TestClient

    from service.api.main import create_app

    store_bars(sqlite_url, synthetic_bars_multi().head(0), reset=True)
    engine = make_engine(sqlite_url)
    try:
        run_job(engine, DAILY, "2021-05-19", lambda: "first", runner="replica-0")

        def broken():
            raise RuntimeError("disk full")

        run_job(engine, DAILY, "2021-05-20", broken, runner="replica-1")
    finally:
        engine.dispose()
    with TestClient(create_app(api_settings(sqlite_url, tiny_artifact.model_dir))) as client:
        jobs = client.get("/jobs").json()["jobs"]
        exposition = client.get("/metrics").text
    assert len(jobs) == 1
    daily = jobs[0]
    assert (daily["job"], daily["run_key"], daily["status"], daily["detail"],
            daily["runner"]) == (DAILY, "2021-05-20", "failed", "RuntimeError: disk full",
                                 "replica-1")
    assert daily["last_ok_at"] is not None and daily["finished_at"] is not None
    assert 'stockcast_job_last_run_timestamp_seconds{job="daily",status="failed"}' in exposition
    assert 'stockcast_job_last_ok_timestamp_seconds{job="daily"}' in exposition


def test_schedule_once_runs_the_due_jobs_and_says_what_they_did(cli_env, monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app
    from service.core.config import get_settings

    monkeypatch.setenv("STOCKCAST_SOURCE", "none")
    get_settings.cache_clear()
    runner = CliRunner()
    first = runner.invoke(app, ["schedule", "--once", "--retrain-every-days", "0"])
    assert first.exit_code == 0, first.output
    assert first.output.startswith("daily ") and ": ok refreshed 24 tickers" in first.output
    again = runner.invoke(app, ["schedule", "--once", "--retrain-every-days", "0"])
    assert ": skipped-done daily already done for" in again.output
    bad = runner.invoke(app, ["schedule", "--once", "--universe", "nasdaq"])
    assert bad.exit_code == 1 and "error: unknown universe 'nasdaq'" in bad.output


INSTANCE = """
import sys, time
from service.db.session import make_engine
from service.evaluation.schedule import run_job
engine = make_engine(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # both start together
outcome = run_job(engine, "daily", "2021-05-20", lambda: time.sleep(1.0) or "slept",
                  runner=sys.argv[3])
print(outcome.status)
engine.dispose()
"""


def test_two_scheduler_processes_on_postgres_run_a_job_once(pg_server_url):
    """Two OS processes, as two replicas of the scheduler service, on the real Postgres."""
    import subprocess
    import sys

    from service.db.session import reset_database

    reset_database(pg_server_url)
    start_at = str(time.time() + 6.0)  # after both interpreters have imported everything
    procs = [subprocess.Popen([sys.executable, "-c", INSTANCE, pg_server_url, start_at,
                               f"replica-{i}"], stdout=subprocess.PIPE, text=True)
             for i in range(2)]
    statuses = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    # Normally they overlap (skipped-running); a process slowed past the first one's second
    # of work finds the key done instead. Either way the work ran once.
    assert statuses in (["ok", "skipped-running"], ["ok", "skipped-done"])
    engine = make_engine(pg_server_url)
    try:
        with engine.connect() as conn:
            runs = jobs_db.runs_of(conn, DAILY)
    finally:
        engine.dispose()
    assert [(r.status, r.detail) for r in runs] == [("ok", "slept")]


def _end_lock_session(url: str, job: str) -> None:
    """End the session holding the job's advisory lock, as pg_terminate_backend or a proxy
    dropping it would, and wait until it is gone (its lock with it)."""
    from sqlalchemy import text

    admin = make_engine(url)
    try:
        with admin.connect() as conn:
            pids = conn.execute(text(
                "select pid from pg_locks where locktype = 'advisory' and granted"
                " and database = (select oid from pg_database where datname = current_database())"
                " and objid::bigint = :lo"), {"lo": jobs_db.lock_key(job) & 0xFFFFFFFF}).all()
            assert len(pids) == 1, pids
            assert conn.execute(text("select pg_terminate_backend(:pid, 5000)"),
                                {"pid": pids[0].pid}).scalar()
    finally:
        admin.dispose()


def test_a_job_whose_lock_session_ends_is_failed_not_done_and_the_scheduler_goes_on(
        pg_server_url):
    """The lock's session ended mid-job (found by a hostile ops pass): a second scheduler took
    the lock and ran the same key, both recorded `ok`, and the first then died (exit 1) on the
    unlock. Now the first notices before recording: `failed`, lock lost; the second's run is
    the one `ok`; the first's engine goes on to the next key."""
    from service.db.session import reset_database

    reset_database(pg_server_url)
    first, second = make_engine(pg_server_url), make_engine(pg_server_url)
    meanwhile = []
    try:
        def work():
            meanwhile.append(run_job(second, DAILY, "2021-05-20", lambda: "second",
                                     runner="replica-1"))
            _end_lock_session(pg_server_url, DAILY)
            meanwhile.append(run_job(second, DAILY, "2021-05-20", lambda: "second",
                                     runner="replica-1"))
            return "first"

        outcome = run_job(first, DAILY, "2021-05-20", work, runner="replica-0")
        assert [o.status for o in meanwhile] == ["skipped-running", "ok"]
        assert outcome.status == "failed"
        assert outcome.detail.startswith("lock lost: its database session ended (")
        assert outcome.detail.endswith("; not counted: ok first")
        with first.connect() as conn:
            runs = jobs_db.runs_of(conn, DAILY)
        assert [(r.runner, r.status) for r in runs] == [("replica-0", "failed"),
                                                        ("replica-1", "ok")]
        assert run_job(first, DAILY, "2021-05-20", lambda: "again").status == "skipped-done"
        assert run_job(first, DAILY, "2021-05-21", lambda: "next").status == "ok"
    finally:
        first.dispose()
        second.dispose()


def test_a_retrain_whose_lock_session_ends_before_the_gate_promotes_nothing(
        pg_server_url, tiny_artifact, tmp_path, monkeypatch):
    """The retrain asks for its lock (schedule.confirm_lock, passed to train_and_gate) just
    before the gate may move models/current: lost, it stops there and the run is failed."""
    import training.retrain
    from service.db.session import reset_database

    reset_database(pg_server_url)
    models = tmp_path / "models"
    old = copy_models(tiny_artifact.artifact_dir, models)
    promoted = []

    def train_and_gate(config, database_url, model_dir, *, before_promote=None, **_):
        # Training and the backtest took long enough for the lock's session to go.
        _end_lock_session(database_url, RETRAIN)
        if before_promote is not None:
            before_promote()
        promoted.append(config.tickers)  # the gate's promotion would happen here
        raise AssertionError("promoted although the lock was lost")

    monkeypatch.setattr(training.retrain, "train_and_gate", train_and_gate)
    settings = api_settings(pg_server_url, models)
    engine = make_engine(pg_server_url)
    try:
        outcome = run_job(engine, RETRAIN, "2021-05-01",
                          lambda: training.retrain.retrain(settings, TINY_TICKERS))
    finally:
        engine.dispose()
    assert promoted == []
    assert outcome.status == "failed"
    assert outcome.detail.startswith("lock lost: its database session ended (")
    assert outcome.detail.endswith("; not counted: stopped before a step it may not take twice")
    assert (models / "current").read_text().strip() == old.name


def test_the_lock_session_does_not_idle_out_during_a_long_job(pg_server_url):
    """A database with idle_session_timeout shorter than the job (the ops pass: 1.5 s) ended
    the lock's idle session, and a second scheduler ran the key too. The lock's session turns
    the timeout off, so the second is still told `skipped-running` past the timeout."""
    from sqlalchemy import text

    from service.db.session import reset_database

    reset_database(pg_server_url)
    admin = make_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    name = admin.url.database
    first, second = make_engine(pg_server_url), make_engine(pg_server_url)
    meanwhile = []
    try:
        with admin.connect() as conn:
            conn.execute(text(f'alter database "{name}" set idle_session_timeout = \'1500ms\''))

        def work():
            time.sleep(2.5)
            meanwhile.append(run_job(second, DAILY, "2021-05-20", lambda: "second"))
            return "first"

        outcome = run_job(first, DAILY, "2021-05-20", work)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'alter database "{name}" reset idle_session_timeout'))
        for engine in (admin, first, second):
            engine.dispose()
    assert [o.status for o in meanwhile] == ["skipped-running"]
    assert (outcome.status, outcome.detail) == ("ok", "first")


def test_the_scheduler_outlives_a_database_that_does_not_answer(tmp_path, tiny_artifact,
                                                                caplog):
    """`stockcast schedule` exited 1 on the first poll that found the database unreachable (a
    hostile ops pass), though it is the long-running service: now each such poll is logged,
    the next comes after poll_seconds, and the job runs once the database answers."""
    path = tmp_path / "late.db"
    path.mkdir()  # no database can be opened there: every connect fails
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 2:  # back after two polls
            path.rmdir()
            store_bars(url, synthetic_bars_multi(), reset=True)

    now = dt.datetime(2021, 5, 20, 23, 0, tzinfo=dt.UTC)
    try:
        with caplog.at_level(logging.ERROR, logger="service.evaluation.schedule"):
            run_forever(engine, api_settings(url, tiny_artifact.model_dir), TINY_TICKERS, None,
                        poll_seconds=7, clock=lambda: now, sleep=sleep,
                        stop=lambda: len(slept) == 3)
        with engine.connect() as conn:
            runs = jobs_db.runs_of(conn, DAILY)
    finally:
        engine.dispose()
    assert slept == [7, 7, 7]
    assert [(r.run_key, r.status) for r in runs] == [("2021-05-20", "ok")]
    said = ("the database did not answer (OperationalError: unable to open database file); "
            "polling again in 7 s")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [said] * 2


ABANDONED = ("abandoned: left running by a runner that no longer holds the daily lock (it ended, "
             "or lost its database, before recording an outcome); found by {by}")
KILLED_MID_JOB = """
import sys, time
from service.db.session import make_engine
from service.evaluation.schedule import run_job
engine = make_engine(sys.argv[1])
run_job(engine, "daily", "2021-05-20", lambda: print("started", flush=True) or time.sleep(60),
        runner="replica-0")
"""


def _run_when_the_lock_is_free(engine, job, key, work, runner):
    """run_job, again while another scheduler still holds the lock (a Postgres backend whose
    client was killed ends a moment later), for at most 10 s."""
    deadline = time.monotonic() + 10
    while (outcome := run_job(engine, job, key, work, runner=runner)).status == "skipped-running":
        assert time.monotonic() < deadline, "the dead scheduler's lock was never released"
        time.sleep(0.1)
    return outcome


def test_a_run_left_running_by_a_scheduler_that_died_is_recorded_failed_abandoned(db_url):
    """A scheduler killed mid-job (or one whose database died before it recorded the outcome)
    left its job_runs row `running` for good (found by a hostile ops pass). The next scheduler
    to hold the job's lock knows no run of it is in progress: the row is `failed`,
    "abandoned: ...", and the key is run again; another job's running row is not its to judge."""
    import signal
    import subprocess
    import sys

    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:  # a retrain in progress elsewhere, under its own lock
            retrain_id = jobs_db.start_run(conn, RETRAIN, "2021-05-01", "replica-2")
        proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_JOB, db_url],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "started"
            # While it runs, its row is left alone: another scheduler skips the key.
            assert run_job(engine, DAILY, "2021-05-20", lambda: "too soon").status == (
                "skipped-running")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        with engine.connect() as conn:
            [left] = jobs_db.runs_of(conn, DAILY)
        assert (left.runner, left.status, left.finished_at) == ("replica-0", "running", None)

        outcome = _run_when_the_lock_is_free(engine, DAILY, "2021-05-20", lambda: "again",
                                             "replica-1")
        with engine.connect() as conn:
            runs = jobs_db.runs_of(conn, DAILY)
            [retrain] = jobs_db.runs_of(conn, RETRAIN)
    finally:
        engine.dispose()
    assert (outcome.status, outcome.detail) == ("ok", "again")
    assert [(r.runner, r.status, r.detail) for r in runs] == [
        ("replica-0", "failed", ABANDONED.format(by="replica-1")),
        ("replica-1", "ok", "again")]
    assert runs[0].finished_at is not None and runs[0].finished_at >= runs[0].started_at
    assert (retrain.id, retrain.status, retrain.finished_at) == (retrain_id, "running", None)


def test_a_run_of_a_live_process_on_this_host_is_not_abandoned(db_url):
    """A runner whose Postgres lock session ended works on (it records "lock lost" itself): its
    row was marked abandoned, "failed", while it was still working (a review of the change).
    A live process of this host is spared; once it has ended its row is abandoned."""
    import socket
    import subprocess
    import sys

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    runner = f"{socket.gethostname()}:{sleeper.pid}"
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            jobs_db.start_run(conn, DAILY, "2021-05-19", runner)
        first = run_job(engine, DAILY, "2021-05-20", lambda: "meanwhile", runner="replica-1")
        with engine.connect() as conn:
            during = [(r.run_key, r.status) for r in jobs_db.runs_of(conn, DAILY)]
        sleeper.kill()
        sleeper.wait(10)
        second = run_job(engine, DAILY, "2021-05-21", lambda: "after", runner="replica-1")
        with engine.connect() as conn:
            after = [(r.run_key, r.status, r.detail) for r in jobs_db.runs_of(conn, DAILY)]
    finally:
        sleeper.kill()
        engine.dispose()
    assert (first.status, second.status) == ("ok", "ok")
    assert during == [("2021-05-19", "running"), ("2021-05-20", "ok")]
    assert after == [("2021-05-19", "failed", ABANDONED.format(by="replica-1")),
                     ("2021-05-20", "ok", "meanwhile"), ("2021-05-21", "ok", "after")]


def test_a_job_whose_database_died_before_its_outcome_is_abandoned_when_it_is_back(
        pg_server_url):
    """The database goes away mid-job (every session ended, connections refused): the outcome
    cannot be written, the poll fails, and the row stayed `running`; at the first poll that
    reaches the database again it is `failed`, abandoned, and the key runs again."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from service.db.session import reset_database
    from tests.conftest import PG_ADMIN_URL

    reset_database(pg_server_url)
    name = make_engine(pg_server_url).url.database
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    engine = make_engine(pg_server_url)

    def outage():
        with admin.connect() as conn:
            conn.execute(text(f'alter database "{name}" allow_connections false'))
            conn.execute(text("select pg_terminate_backend(pid, 5000) from pg_stat_activity "
                              "where datname = :n"), {"n": name})
        return "done, but never recorded"

    try:
        with pytest.raises(OperationalError):
            run_job(engine, DAILY, "2021-05-20", outage, runner="replica-0")
        with admin.connect() as conn:
            conn.execute(text(f'alter database "{name}" allow_connections true'))
        outcome = run_job(engine, DAILY, "2021-05-20", lambda: "again", runner="replica-0")
        with engine.connect() as conn:
            runs = jobs_db.runs_of(conn, DAILY)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'alter database "{name}" allow_connections true'))
        admin.dispose()
        engine.dispose()
    assert (outcome.status, outcome.detail) == ("ok", "again")
    assert [(r.status, r.detail) for r in runs] == [
        ("failed", ABANDONED.format(by="replica-0")),
        ("ok", "again")]
