"""Faults answer 503 fast and recover; bad input answers 4xx; stored data stays intact.

Every fault here is real: a TCP proxy in front of the real PostgreSQL that goes silent
(tests/blackhole.py), a table lock held by another session (statements that never finish), a
database dropped and created again under a running server, a SQLite file migrated down, bodies
larger than the limit sent over a real socket to a real uvicorn server. Each test asserts the
status, the time it took, the recovery, and that the stored bars are still all there.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.api.problems import error_problem, problem_responses
from service.artifacts.manifest import artifact_version
from service.core.errors import ServerBusy
from service.db.bars import count_bars
from service.db.health import head_revision
from service.db.ledger import read_ledger
from service.db.models import Base
from service.db.session import downgrade, make_engine, upgrade
from service.evaluation.feature_store import prewarm
from tests.api_factories import (
    API_KEY,
    NOW,
    Clock,
    ServerThread,
    api_settings,
    copy_models,
    store_bars,
)
from tests.bar_factories import ScriptedSource
from tests.blackhole import BlackholeProxy
from tests.conftest import PG_ADMIN_URL
from tests.tiny_model import synthetic_bars_multi

PROBLEM = "application/problem+json"
# The bound: every database failure answers 503 within this many seconds.
BOUND = 3.0
UNAVAILABLE = "urn:stockcast:problem:database-unavailable"
NOT_MIGRATED = "urn:stockcast:problem:database-not-migrated"
CONCURRENT = 50


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def wait_until(condition, timeout: float = 15.0) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not recovered within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def stored_bars(url: str) -> int:
    engine = make_engine(url)
    try:
        return count_bars(engine)
    finally:
        engine.dispose()


def assert_problem(response: httpx.Response, status: int, type_: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == type_, body
    return body


@pytest.fixture
def bars():
    return synthetic_bars_multi()


@pytest.fixture
def own_pg_url(pg_server_url, bars):
    """A PostgreSQL database of this test alone (migrated, the tiny bars stored), dropped after."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"stockcast_rel_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    store_bars(url, bars, reset=True)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text("select pg_terminate_backend(pid) from pg_stat_activity "
                             "where datname = :n and pid <> pg_backend_pid()"), {"n": name})
        conn.execute(sa.text(f'drop database if exists "{name}"'))
    admin.dispose()


def _via(url: str, port: int) -> str:
    """The same database reached through 127.0.0.1:port."""
    parsed = sa.engine.make_url(url)
    return parsed.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def _cold_predicts(base: str, n: int = CONCURRENT) -> list[tuple[httpx.Response, float]]:
    """n concurrent cold POST /predict/AAA, each on its own connection of one client (made
    beforehand: building a client costs the clock tens of milliseconds of CPU)."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    with httpx.Client(base_url=base, timeout=60, limits=limits) as client, \
            ThreadPoolExecutor(n) as pool:
        return list(pool.map(
            lambda _: timed(lambda: client.post("/predict/AAA", json={"horizon": 1})), range(n)))


# -- the database fails ------------------------------------------------------------------------


def test_a_silent_database_answers_503_within_3_s_and_recovers(own_pg_url, tiny_artifact, bars):
    target = sa.engine.make_url(own_pg_url)
    with BlackholeProxy(target.host, target.port or 5432) as proxy:
        # No forecast cache: every predict reads the database (the cold path).
        settings = api_settings(_via(own_pg_url, proxy.port), tiny_artifact.model_dir,
                                forecast_cache_size=0)
        app = create_app(settings, source=ScriptedSource(), clock=Clock())
        with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            before = client.post("/predict/AAA", json={"horizon": 2})
            assert before.status_code == 200 and client.get("/readyz").status_code == 200

            proxy.silence()
            ready, ready_took = timed(lambda: client.get("/readyz"))
            health, health_took = timed(lambda: client.get("/healthz"))
            tickers, tickers_took = timed(lambda: client.get("/tickers"))
            time.sleep(1.1)  # past the breaker's second: the next requests try the database
            storm = _cold_predicts(server.url)

            proxy.resume()
            recovered = wait_until(lambda: client.get("/readyz").status_code == 200)
            after = client.post("/predict/AAA", json={"horizon": 2})
    ready_body = assert_problem(ready, 503, "urn:stockcast:problem:not-ready")
    assert ready_took < BOUND
    assert ready_body["checks"]["database"]["ok"] is False
    assert ready_body["checks"]["database"]["detail"].startswith("bar database unavailable: ")
    assert ready_body["detail"].startswith("failed checks: database, schema")
    assert health.status_code == 200 and health_took < 0.5
    assert_problem(tickers, 503, UNAVAILABLE)
    assert tickers_took < BOUND and tickers.headers["retry-after"] == "1"
    for response, took in storm:
        assert_problem(response, 503, UNAVAILABLE)
    slowest = max(took for _, took in storm)
    assert slowest < BOUND, f"slowest of {CONCURRENT} concurrent predicts: {slowest:.2f} s"
    assert recovered < 10
    assert after.status_code == 200 and after.json() == before.json()
    assert stored_bars(own_pg_url) == len(bars)


def test_a_silent_database_behind_the_serving_stores_answers_503_within_3_s(
        own_pg_url, tiny_artifact, tiny_predictor):
    # Stores prewarmed and the bar check shared: a cold predict's first database call is the
    # stores' read (no bar check before it), which must fail as fast as the bars' read.
    engine = make_engine(own_pg_url)
    assert prewarm(engine, tiny_predictor).computed == 3
    engine.dispose()
    target = sa.engine.make_url(own_pg_url)
    with BlackholeProxy(target.host, target.port or 5432) as proxy:
        settings = api_settings(_via(own_pg_url, proxy.port), tiny_artifact.model_dir,
                                forecast_cache_size=0, bar_check_ttl_seconds=60.0)
        app = create_app(settings, source=ScriptedSource(), clock=Clock())
        with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            before = client.post("/predict/AAA", json={"horizon": 1})
            assert before.status_code == 200 and app.state.forecasts.from_store == 1
            proxy.silence()
            storm = _cold_predicts(server.url)
            proxy.resume()
            recovered = wait_until(
                lambda: client.post("/predict/AAA", json={"horizon": 1}).status_code == 200)
            after = client.post("/predict/AAA", json={"horizon": 1})
    for response, _ in storm:
        assert_problem(response, 503, UNAVAILABLE)
    slowest = max(took for _, took in storm)
    assert slowest < BOUND, f"slowest of {CONCURRENT} concurrent predicts: {slowest:.2f} s"
    assert recovered < 10
    assert after.json() == before.json()


def test_statements_that_never_finish_and_a_full_pool_answer_503_within_3_s(
        own_pg_url, tiny_artifact, bars):
    # Another session holds both tables locked: every query waits server-side (statement
    # timeout), and 50 requests need more connections than the pool holds (pool timeout).
    settings = api_settings(own_pg_url, tiny_artifact.model_dir, forecast_cache_size=0)
    app = create_app(settings, source=ScriptedSource(), clock=Clock())
    locker = make_engine(own_pg_url)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        before = client.post("/predict/AAA", json={"horizon": 2})
        assert before.status_code == 200
        with locker.connect() as conn:
            conn.execute(sa.text("lock table bars, tickers in access exclusive mode"))
            one, one_took = timed(lambda: client.get("/tickers"))
            time.sleep(1.1)
            storm = _cold_predicts(server.url)
            conn.rollback()  # the lock is released
        recovered = wait_until(lambda: client.post("/predict/AAA").status_code == 200)
        after = client.post("/predict/AAA", json={"horizon": 2})
    locker.dispose()
    body = assert_problem(one, 503, UNAVAILABLE)
    assert body["detail"] == "bar database unavailable: no answer within 2 s"
    assert one_took < BOUND
    details = set()
    for response, _ in storm:
        details.add(assert_problem(response, 503, UNAVAILABLE)["detail"])
    slowest = max(took for _, took in storm)
    assert slowest < BOUND, f"slowest of {CONCURRENT} concurrent predicts: {slowest:.2f} s"
    assert any(d.startswith("bar database unavailable: no connection free within 1 s")
               for d in details) or any("not asked again" in d for d in details), details
    assert recovered < 10
    assert after.json() == before.json()
    assert stored_bars(own_pg_url) == len(bars)


def test_a_refused_database_answers_503_at_once(tiny_artifact):
    # Nothing listens on port 1: the connect is refused.
    app = create_app(api_settings("postgresql+psycopg://postgres@127.0.0.1:1/none",
                                  tiny_artifact.model_dir), source=ScriptedSource())
    with TestClient(app) as client:
        response, took = timed(lambda: client.post("/predict/AAA"))
        health = client.get("/healthz")
    assert_problem(response, 503, UNAVAILABLE)
    assert took < 1.0 and health.status_code == 200


def test_a_database_dropped_and_created_again_is_not_migrated_then_recovers(
        own_pg_url, tiny_artifact, bars):
    app = create_app(api_settings(own_pg_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock())
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = sa.engine.make_url(own_pg_url).database
    head = head_revision()
    routes = {"/tickers": "get", "/bars/AAA": "get", "/metrics/backtest": "get",
              "/predict/AAA": "post"}
    with TestClient(app) as client:
        assert client.post("/predict/AAA").status_code == 200
        with admin.connect() as conn:  # under the running server
            conn.execute(sa.text("select pg_terminate_backend(pid) from pg_stat_activity "
                                 "where datname = :n"), {"n": name})
            conn.execute(sa.text(f'drop database "{name}"'))
            conn.execute(sa.text(f'create database "{name}"'))
        answers = {path: timed(lambda p=path, m=method: client.request(m, p))
                   for path, method in routes.items()}
        ready = client.get("/readyz")
        health = client.get("/healthz")

        upgrade(own_pg_url)  # `stockcast db upgrade`
        migrated = client.get("/readyz")
        empty = client.post("/predict/AAA")
        store_bars(own_pg_url, bars)  # and the bars loaded again
        reloaded = client.post("/predict/AAA")
    admin.dispose()
    expected = (f"database not migrated (at no revision, need {head}): "
                "run `stockcast db upgrade`")
    for path, (response, took) in answers.items():
        assert assert_problem(response, 503, NOT_MIGRATED)["detail"] == expected, path
        assert took < BOUND, path
    ready_body = assert_problem(ready, 503, "urn:stockcast:problem:not-ready")
    assert ready_body["checks"]["schema"] == {
        "ok": False, "detail": f"database not migrated (at no revision, need {head})"}
    assert ready_body["checks"]["database"]["ok"] is True
    assert health.status_code == 200
    assert migrated.status_code == 200
    assert_problem(empty, 404, "urn:stockcast:problem:unknown-ticker")
    assert reloaded.status_code == 200
    assert stored_bars(own_pg_url) == len(bars)


def test_an_old_schema_revision_is_503_on_every_route_until_upgraded(sqlite_url, tiny_artifact,
                                                                     bars):
    store_bars(sqlite_url, bars, reset=True)
    settings = api_settings(sqlite_url, tiny_artifact.model_dir,
                            schema_check_interval_seconds=0.0)
    head = head_revision()
    with TestClient(create_app(settings, source=ScriptedSource(), clock=Clock())) as client:
        assert client.post("/predict/AAA").status_code == 200
        downgrade(sqlite_url, "0001")  # the backtest tables are gone; the bars are not
        answers = {path: client.request(method, path) for path, method in (
            ("/tickers", "GET"), ("/bars/AAA", "GET"), ("/metrics/backtest", "GET"),
            ("/predict/AAA", "POST"))}
        ready = client.get("/readyz")
        upgrade(sqlite_url)
        after = client.post("/predict/AAA")
    for path, response in answers.items():
        assert assert_problem(response, 503, NOT_MIGRATED)["detail"] == (
            f"database not migrated (at 0001, need {head}): run `stockcast db upgrade`"), path
    assert ready.json()["checks"]["schema"]["detail"] == (
        f"database not migrated (at 0001, need {head})")
    assert after.status_code == 200
    assert stored_bars(sqlite_url) == len(bars)


@pytest.mark.parametrize("table, path, restored", [
    ("ledger_forecasts", "/metrics/live", {"metrics": []}),
    ("job_runs", "/jobs", {"jobs": []}),
])
def test_a_table_dropped_after_migration_is_the_not_migrated_503_not_a_500(
        db_url, tiny_artifact, bars, table, path, restored):
    # Before: a 500 on PostgreSQL (UndefinedTable is no database fault) and 503
    # database-unavailable on SQLite, the revision being at head.
    store_bars(db_url, bars)
    app = create_app(api_settings(db_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock())
    engine = make_engine(db_url)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.get(path).status_code == 200
            with engine.begin() as conn:
                conn.execute(sa.text(f"drop table {table}"))
            answer, took = timed(lambda: client.get(path))
            ready = client.get("/readyz")
            forecast = client.post("/predict/AAA")  # its ledger record skipped, if it is gone
            Base.metadata.tables[table].create(engine)  # the table restored, empty
            after = client.get(path)
    finally:
        engine.dispose()
    body = assert_problem(answer, 503, NOT_MIGRATED)
    assert body["detail"] == (f"database schema incomplete (at {head_revision()}, the head, but "
                              f"table {table} is missing): restore it from a backup")
    assert answer.headers["retry-after"] == "1" and took < BOUND
    assert ready.status_code == 200  # the revision is at head: readiness reads only that
    assert forecast.status_code == 200
    assert after.status_code == 200 and after.json() == restored
    assert stored_bars(db_url) == len(bars)


def _damage(path, pages: dict[int, bytes] | None = None) -> dict[int, bytes]:
    """Overwrite SQLite pages (number -> bytes; default: the bars table's root page with
    garbage); returns what was there, to put back."""
    if pages is None:
        with sqlite3.connect(path) as db:
            size = db.execute("pragma page_size").fetchone()[0]
            root = db.execute("select rootpage from sqlite_master where name = 'bars'").fetchone()
        pages = {root[0]: b"\xa5" * size}
    before = {}
    with open(path, "r+b") as file:
        for number, data in pages.items():
            file.seek((number - 1) * len(data))
            before[number] = file.read(len(data))
            file.seek((number - 1) * len(data))
            file.write(data)
    return before


def test_a_damaged_sqlite_file_answers_503_not_500_and_recovers_when_restored(
        sqlite_url, tiny_artifact, bars):
    store_bars(sqlite_url, bars, reset=True)
    path = sa.engine.make_url(sqlite_url).database
    with sqlite3.connect(path) as db:
        db.execute("pragma wal_checkpoint(truncate)")  # every page in the main file
    original = _damage(path)  # before the server opens it: no page of it is cached anywhere
    app = create_app(api_settings(sqlite_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock())
    with TestClient(app) as client:
        damaged, took = timed(lambda: client.get("/bars/AAA"))
        health = client.get("/healthz")
        _damage(path, original)
        restored = client.get("/bars/AAA")
    body = assert_problem(damaged, 503, UNAVAILABLE)
    assert body["detail"] == "bar database unavailable: DatabaseError"
    assert damaged.headers["retry-after"]
    assert took < BOUND and health.status_code == 200
    assert restored.status_code == 200
    last = bars.loc[bars["ticker"] == "AAA", "date"].max()
    assert restored.json()["dates"][-1] == str(pd.Timestamp(last).date())
    assert stored_bars(sqlite_url) == len(bars)


def test_a_file_that_is_no_database_answers_503_everywhere_and_recovers(
        sqlite_url, tiny_artifact, bars):
    store_bars(sqlite_url, bars, reset=True)
    path = sa.engine.make_url(sqlite_url).database
    with sqlite3.connect(path) as db:
        db.execute("pragma wal_checkpoint(truncate)")
    original = _damage(path, {1: b"not a database, a text file " * 146 + b"\n" * 8})
    app = create_app(api_settings(sqlite_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock())
    with TestClient(app) as client:
        answers = {path_: timed(lambda p=path_, m=method: client.request(m, p))
                   for path_, method in (("/tickers", "GET"), ("/bars/AAA", "GET"), ("/jobs", "GET"),
                                         ("/metrics/backtest", "GET"), ("/predict/AAA", "POST"))}
        ready = client.get("/readyz")
        health = client.get("/healthz")
        _damage(path, original)
        restored = client.post("/predict/AAA")
    for route, (response, took) in answers.items():
        body = assert_problem(response, 503, UNAVAILABLE)
        assert body["detail"] == "bar database unavailable: DatabaseError", route
        assert took < BOUND, route
    assert ready.status_code == 503 and ready.json()["checks"]["database"]["ok"] is False
    assert health.status_code == 200
    assert restored.status_code == 200
    assert stored_bars(sqlite_url) == len(bars)


REFRESH_DUE = NOW + dt.timedelta(days=5)  # a refresh due on the first request: its record written


def _ledger_tickers(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(read_ledger(conn)["ticker"])
    finally:
        engine.dispose()


def test_a_sqlite_connection_left_read_only_is_replaced_and_its_refused_writes_fail_no_read(
        sqlite_url, tiny_artifact, bars):
    """A connection opened while the file was read-only stays read-only (SQLITE_READONLY; a
    hostile pass: `chattr +i` for a moment left 503s until a restart). The refused refresh
    record is bookkeeping: the cached bars are served; the connection is discarded, so once
    the file is writable the next request writes again (its ledger row)."""
    store_bars(sqlite_url, bars, reset=True)
    app = create_app(api_settings(sqlite_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock(REFRESH_DUE))
    read_only = [False]
    with TestClient(app) as client:
        engine = app.state.engine

        @sa.event.listens_for(engine, "connect")
        def _opened(dbapi_conn, _record):
            if read_only[0]:  # as SQLite opens a file it cannot write: for good
                dbapi_conn.execute("pragma query_only = on")

        read_only[0] = True
        engine.dispose()
        refused, took = timed(lambda: client.post("/predict/AAA"))
        read_only[0] = False
        later = client.post("/predict/BBB")
    assert refused.status_code == 200 and took < BOUND
    assert later.status_code == 200
    assert _ledger_tickers(sqlite_url) == {"BBB"}  # AAA's row was refused, BBB's written
    assert stored_bars(sqlite_url) == len(bars)


def test_a_read_only_postgres_serves_what_it_holds_and_writes_again_once_writable(
        own_pg_url, tiny_artifact, bars):
    """A hot standby after a failover, or `default_transaction_read_only`: a write was an
    InternalError, a 500 on every cold forecast and /bars, and a session kept the setting after
    it was reset (500 until a restart; a hostile pass). Now its writes are refused bookkeeping
    (served 200 from the cached bars) and the session is replaced: writes resume."""
    app = create_app(api_settings(own_pg_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock(REFRESH_DUE))
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = sa.engine.make_url(own_pg_url).database
    terminate = sa.text("select pg_terminate_backend(pid) from pg_stat_activity "
                        "where datname = :n")
    try:
        with TestClient(app) as client:
            first = client.post("/predict/AAA")
            with admin.connect() as conn:
                conn.execute(sa.text(f'alter database "{name}" set default_transaction_read_only'
                                     " = on"))
                conn.execute(terminate, {"n": name})
            refused, took = timed(lambda: client.post("/predict/BBB"))
            bars_read = client.get("/bars/BBB")
            with admin.connect() as conn:
                conn.execute(sa.text(f'alter database "{name}" reset default_transaction_read_only'))
            later = client.post("/predict/CCC")
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'alter database "{name}" reset default_transaction_read_only'))
        admin.dispose()
    assert first.status_code == 200
    assert refused.status_code == 200 and took < BOUND
    assert bars_read.status_code == 200
    assert later.status_code == 200
    assert _ledger_tickers(own_pg_url) == {"AAA", "CCC"}
    assert stored_bars(own_pg_url) == len(bars)


def test_a_sqlite_file_removed_under_the_server_is_503_and_a_restored_one_is_read(
        sqlite_url, tiny_artifact, bars, tmp_path):
    """Removed: its connections kept reading the deleted file (200s from it, writes lost with
    it; a hostile pass). Now a fast 503 and no empty file made in its place; restored by `mv`
    (a new file, as a backup restore makes): read anew, a ticker added meanwhile included."""
    store_bars(sqlite_url, bars, reset=True)
    path = sa.engine.make_url(sqlite_url).database
    with sqlite3.connect(path) as db:
        db.execute("pragma wal_checkpoint(truncate)")
    backup = tmp_path / "backup.db"
    with sqlite3.connect(path) as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    app = create_app(api_settings(sqlite_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock())
    with TestClient(app) as client:
        before = client.get("/tickers")
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
        removed, took = timed(lambda: client.get("/bars/AAA"))
        created = Path(path).exists()
        more = bars[bars["ticker"] == "AAA"].assign(ticker="DDD")
        store_bars(f"sqlite:///{backup}", more)  # the restored copy has a ticker more
        backup.rename(path)
        restored = client.get("/tickers")
    assert before.status_code == 200 and len(before.json()["tickers"]) == 3
    assert_problem(removed, 503, UNAVAILABLE)
    assert took < BOUND and not created
    assert restored.status_code == 200
    assert sorted(t["ticker"] for t in restored.json()["tickers"]) == ["AAA", "BBB", "CCC", "DDD"]


# -- the forecast lane -------------------------------------------------------------------------


def test_a_slow_refresh_does_not_hold_the_forecast_lane(sqlite_url, tiny_artifact, bars):
    """One lane thread. DDD's refresh (1.5 s at the source) is handed to the shared threadpool,
    so AAA's cold forecast, asked meanwhile, computes in the lane at once; a second request for
    DDD, whose turn the first holds, is handed over too and waits there for its forecast."""
    store_bars(sqlite_url, bars, reset=True)
    ddd = bars[bars["ticker"] == "AAA"].assign(ticker="DDD")
    source = ScriptedSource({"DDD": ddd}, delay=1.5)
    settings = api_settings(sqlite_url, tiny_artifact.model_dir, forecast_threads=1,
                            forecast_wait_seconds=0.5)
    app = create_app(settings, source=source, clock=Clock())
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client, \
            ThreadPoolExecutor(2) as pool:
        assert client.post("/predict/BBB").status_code == 200  # warm the process up
        lane = app.state.forecasts.lane
        slow = pool.submit(timed, lambda: client.post("/predict/DDD"))
        time.sleep(0.3)  # DDD is in its fetch
        again = pool.submit(timed, lambda: client.post("/predict/DDD"))
        time.sleep(0.2)
        quick, took = timed(lambda: client.post("/predict/AAA"))
        (refreshed, refresh_took), (second, _) = slow.result(), again.result()
    assert quick.status_code == 200 and took < 0.5, (quick.text, took)
    assert refreshed.status_code == 200 and refresh_took >= 1.5
    assert second.status_code == 200 and second.json() == refreshed.json()
    assert [call[0] for call in source.calls] == ["DDD"]  # asked once
    assert lane.handed_back == 2 and lane.busy == 0 and lane.waits_timed_out == 0
    assert stored_bars(sqlite_url) == len(bars) + len(ddd)


def test_a_handed_back_refresh_keeps_its_claim_so_the_others_answer_from_memory(
        sqlite_url, tiny_artifact, bars):
    """AAA's shared bar check expires while a refresh is due: the first request takes on
    renewing it and is handed to the threadpool for its 1.5 s fetch; the requests after it keep
    being answered from the check they share, at once, as before the lane."""
    store_bars(sqlite_url, bars, reset=True)
    clock = Clock()
    source = ScriptedSource({"AAA": bars[bars["ticker"] == "AAA"]}, delay=1.5)
    settings = api_settings(sqlite_url, tiny_artifact.model_dir, bar_check_ttl_seconds=0.5)
    app = create_app(settings, source=source, clock=clock)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client, \
            ThreadPoolExecutor(2) as pool:
        before = client.post("/predict/AAA")
        assert before.status_code == 200 and source.calls == []
        clock.now += dt.timedelta(days=1)  # a refresh is due now
        time.sleep(0.6)  # and the shared check has expired
        renewing = pool.submit(timed, lambda: client.post("/predict/AAA"))
        time.sleep(0.3)
        others = [timed(lambda: client.post("/predict/AAA")) for _ in range(3)]
        renewed, renew_took = renewing.result()
    assert renewed.status_code == 200 and renew_took >= 1.5
    for response, took in others:
        assert response.status_code == 200 and took < 0.3, took
        assert response.json() == before.json()
    assert [call[0] for call in source.calls] == ["AAA"]
    forecasts = app.state.forecasts
    assert forecasts.lane.handed_back == 1
    assert (forecasts.misses, forecasts.hits) == (1, 4)  # the renewal found it cached: a hit


def test_more_cold_forecasts_than_turns_are_answered_busy_with_retry_after(
        sqlite_url, tiny_artifact, bars):
    store_bars(sqlite_url, bars, reset=True)
    settings = api_settings(sqlite_url, tiny_artifact.model_dir, forecast_threads=1,
                            forecast_wait_seconds=0.05, forecast_cache_size=0)
    app = create_app(settings, source=ScriptedSource(), clock=Clock())
    with ServerThread(app) as server:
        assert httpx.post(f"{server.url}/predict/AAA").status_code == 200  # warmed up
        storm = _cold_predicts(server.url, 30)
        after = httpx.post(f"{server.url}/predict/AAA")
    statuses = [r.status_code for r, _ in storm]
    busy = [r for r, _ in storm if r.status_code == 503]
    assert set(statuses) == {200, 503} and len(busy) >= 10, statuses
    for response in busy:
        body = assert_problem(response, 503, "urn:stockcast:problem:busy")
        assert body["detail"] == ("server busy: 1 forecasts computing and no turn for this "
                                  "one within 0.05 s")
        assert response.headers["retry-after"] == "1"
    assert max(took for _, took in storm) < BOUND
    assert after.status_code == 200 and app.state.forecasts.lane.busy == 0
    assert stored_bars(sqlite_url) == len(bars)


def test_a_batch_past_its_deadline_is_busy_keeps_what_it_did_and_the_retries_finish(
        sqlite_url, tiny_artifact, tiny_predictor, bars):
    # Before: no bound at all (489 cold tickers took 119 s under load). Four tickers known
    # only upstream, each fetch 0.6 s: a cold batch of them cannot finish within 1 s.
    store_bars(sqlite_url, bars, reset=True)
    upstream = {t: g.drop(columns="ticker").reset_index(drop=True) for t, g in
                synthetic_bars_multi(("UAA", "UBB", "UCC", "UDD")).groupby("ticker")}
    settings = api_settings(sqlite_url, tiny_artifact.model_dir, batch_deadline_seconds=1.0)
    app = create_app(settings, source=ScriptedSource(upstream, delay=0.6), clock=Clock())
    batch = {"tickers": ["AAA", *upstream], "horizon": 2}
    engine = make_engine(sqlite_url)
    try:
        with TestClient(app) as client:
            first, took = timed(lambda: client.post("/predict", json=batch))
            stored_then = {t: count_bars(engine, t) for t in upstream}
            with engine.connect() as conn:
                recorded_then = len(read_ledger(conn))
            answers = [first]
            while answers[-1].status_code != 200 and len(answers) < 6:
                answers.append(client.post("/predict", json=batch))
    finally:
        engine.dispose()
    body = assert_problem(first, 503, "urn:stockcast:problem:busy")
    assert body["detail"] == ("server busy: the batch was not forecast within 1 s; the "
                              "forecasts done are kept, a retry computes the rest")
    assert first.headers["retry-after"] == "1" and took < BOUND
    # Whole tickers or none: the ones fetched before the deadline are stored in full.
    assert set(stored_then.values()) <= {0, len(upstream["UAA"])}
    assert 1 <= sum(n > 0 for n in stored_then.values()) < len(upstream)
    assert recorded_then == 0  # nothing was served, so nothing entered the ledger
    # Each retry goes on from there (the fetched bars, the forecasts computed) and one finishes.
    done = answers[-1]
    assert all(r.status_code == 503 for r in answers[:-1]) and done.status_code == 200
    forecasts = {f["ticker"]: f for f in done.json()["forecasts"]}
    assert list(forecasts) == batch["tickers"] and done.json()["errors"] == []
    for ticker, frame in upstream.items():
        want = tiny_predictor.forecast(ticker, frame, 2)
        assert [s["close"] for s in forecasts[ticker]["forecasts"]] == pytest.approx(
            [s.close for s in want.steps], rel=1e-5)
    assert stored_bars(sqlite_url) == len(bars) + sum(len(f) for f in upstream.values())


def test_a_sqlite_write_lock_held_past_the_busy_timeout_is_503_not_500(
        sqlite_url, tiny_artifact, bars):
    """A refresh's bulk write (the raw driver's executemany) waits on another writer's lock."""
    store_bars(sqlite_url, bars, reset=True)
    ddd = bars[bars["ticker"] == "AAA"].assign(ticker="DDD")
    settings = api_settings(sqlite_url, tiny_artifact.model_dir,
                            db_statement_timeout_seconds=0.5)
    app = create_app(settings, source=ScriptedSource({"DDD": ddd}), clock=Clock())
    path = sa.engine.make_url(sqlite_url).database
    writer = sqlite3.connect(path, isolation_level=None)
    with TestClient(app) as client:
        writer.execute("begin immediate")  # another process's write transaction
        locked, took = timed(lambda: client.post("/predict/DDD"))
        writer.execute("rollback")
        after = client.post("/predict/DDD")
    writer.close()
    body = assert_problem(locked, 503, UNAVAILABLE)
    assert body["detail"].startswith("bar database unavailable: ")
    assert took < BOUND
    assert after.status_code == 200
    assert stored_bars(sqlite_url) == len(bars) + len(ddd)


def test_a_best_effort_write_waiting_on_another_writer_does_not_fail_the_readers(
        sqlite_url, tiny_artifact, bars):
    """SQLite in WAL mode: readers never wait for a writer. A forecast's ledger write blocked by
    another process's write transaction is skipped after the busy timeout (the forecast is
    answered); it must not open the breaker and fail every other request for a second."""
    store_bars(sqlite_url, bars, reset=True)
    settings = api_settings(sqlite_url, tiny_artifact.model_dir,
                            db_statement_timeout_seconds=0.5)
    app = create_app(settings, source=ScriptedSource(), clock=Clock())
    path = sa.engine.make_url(sqlite_url).database
    writer = sqlite3.connect(path, isolation_level=None)
    with TestClient(app) as client:
        writer.execute("begin immediate")
        forecast, took = timed(lambda: client.post("/predict/AAA"))  # its ledger row waits
        reads = [client.get(p) for p in ("/tickers", "/bars/AAA", "/readyz")]
        other = client.post("/predict/BBB")
        writer.execute("rollback")
    writer.close()
    assert forecast.status_code == 200 and took < BOUND
    assert [r.status_code for r in reads] == [200, 200, 200]
    assert other.status_code == 200
    assert stored_bars(sqlite_url) == len(bars)


def test_no_turn_in_time_is_the_documented_busy_503():
    problem = error_problem(ServerBusy("server busy: 2 forecasts computing and no turn for "
                                       "this one within 3 s"), "/predict/AAA")
    assert (problem.status, problem.type, problem.title) == (
        503, "urn:stockcast:problem:busy", "Server busy")
    assert "too busy" in problem_responses(503)[503]["description"]


# -- bad input ---------------------------------------------------------------------------------


@pytest.fixture
def seeded_client(db_url, tiny_artifact, bars):
    store_bars(db_url, bars)
    app = create_app(api_settings(db_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock())
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    assert stored_bars(db_url) == len(bars)  # bad input lost nothing


@pytest.mark.parametrize("method, path, body, status, detail", [
    ("GET", "/bars/AAA?start=0001-01-01", None, 422,
     "start: must be within 1900-01-01..2100-12-31"),
    ("GET", "/bars/AAA?end=9999-12-31", None, 422, "end: must be within 1900-01-01..2100-12-31"),
    ("GET", "/bars/AAA?start=0", None, 422, "start: must be a date string YYYY-MM-DD"),
    ("GET", "/metrics/backtest?run_id=99999999999999999999", None, 422,
     "run_id: Input should be less than or equal to 2147483647"),
    ("GET", "/metrics/backtest?horizon=99999999999999999999", None, 422,
     "horizon: Input should be less than or equal to 30"),
    ("GET", "/metrics/backtest?method=model%00", None, 422,
     "method: String should match pattern '^[a-z0-9_]{1,32}$'"),
    ("GET", "/metrics/backtest?model_version=x%00", None, 422,
     "model_version: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'"),
    ("POST", "/predict/AAA", {"horizon": 10**20}, 422,
     "horizon: Input should be less than or equal to 30"),
    ("POST", "/predict/AAA", {"horizon": 1, "as_of": "0001-01-01"}, 422,
     "as_of: must be within 1900-01-01..2100-12-31"),
    ("POST", "/predict", {"tickers": ["AAA"], "horizon": "5"}, 422,
     "horizon: Input should be a valid integer"),
    ("POST", "/predict/AA%00A", None, 422,
     "ticker: invalid ticker 'AA\\x00A': use 1-15 letters, digits, '.', '-', '^' or '='"),
    # 'ı' upper-cases to 'I': this was served as IBM's forecast.
    ("POST", "/predict/%C4%B1bm", None, 422,
     "ticker: invalid ticker 'ıbm': use 1-15 letters, digits, '.', '-', '^' or '='"),
    ("GET", "/bars/AAA%C2%A0", None, 422,
     "ticker: invalid ticker 'AAA\\xa0': use 1-15 letters, digits, '.', '-', '^' or '='"),
])
def test_out_of_range_inputs_are_4xx_on_every_backend(seeded_client, method, path, body, status,
                                                     detail):
    response = seeded_client.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["detail"] == detail


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_integral_float_horizon_is_the_integer_json_schema_says_it_is(seeded_client):
    # JSON Schema's "integer" includes 2.0; a string or a boolean is not coerced (above).
    as_float = seeded_client.post("/predict/AAA", json={"horizon": 2.0})
    as_int = seeded_client.post("/predict/AAA", json={"horizon": 2})
    assert as_float.status_code == 200 and as_float.json() == as_int.json()
    fraction = seeded_client.post("/predict/AAA", json={"horizon": 2.5})  # no integer at all
    assert fraction.status_code == 422 and fraction.json()["errors"][0]["field"] == "horizon"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_without_a_source_an_uncached_ticker_is_404_not_503(db_url, tiny_artifact, bars):
    store_bars(db_url, bars)
    app = create_app(api_settings(db_url, tiny_artifact.model_dir), clock=Clock())  # source none
    with TestClient(app) as client:
        answers = [client.post("/predict/ZZZ") for _ in range(2)]  # fetched once, then throttled
        cached = client.post("/predict/AAA")
    for response in answers:
        body = assert_problem(response, 404, "urn:stockcast:problem:unknown-ticker")
        assert body["detail"] == ("no bars cached for ZZZ, and no bar source configured "
                                  "(STOCKCAST_SOURCE=none)")
    assert cached.status_code == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("body, detail", [
    (b'{"as_of": "\xff"}', ("the body is not valid JSON: it is not UTF-8 (invalid start byte "
                             "at byte 11)")),
    # json.loads detects UTF-16/32 in bytes and decoded them: these were served as 200s.
    ('{"horizon": 1}'.encode("utf-16"), ("the body is not valid JSON: it is not UTF-8 (invalid "
                                         "start byte at byte 0)")),
    ('{"horizon": 1}'.encode("utf-32"), ("the body is not valid JSON: it is not UTF-8 (invalid "
                                         "start byte at byte 0)")),
    ('{"horizon": 1}'.encode("utf-16-be"), "the body is not valid JSON: Expecting value"),
    ('{"horizon": 1}'.encode("utf-16-le"), ("the body is not valid JSON: Expecting property name "
                                            "enclosed in double quotes")),
    (b"[" * 100_000 + b"]" * 100_000, "the body is not valid JSON: it is nested too deeply"),
    (b'{"horizon": ' + b"9" * 5000 + b"}", "the body is not valid JSON: Exceeds the limit "),
])
def test_a_body_json_cannot_decode_is_the_same_malformed_body_400(seeded_client, body, detail):
    """Not UTF-8, nested past the recursion limit, an integer over 4,300 digits: FastAPI's own
    400 ("There was an error parsing the body", type about:blank) became the documented one."""
    bad = seeded_client.post("/predict/AAA", content=body,
                             headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.headers["content-type"] == PROBLEM
    assert bad.json()["type"] == "urn:stockcast:problem:malformed-body"
    assert bad.json()["detail"].startswith(detail)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_utf8_body_with_a_byte_order_mark_is_read_and_the_batch_route_is_strict_too(seeded_client):
    """RFC 8259 lets a parser ignore a UTF-8 BOM: accepted, the same answer as without; the batch
    route shares the route class, so a UTF-16 batch body is the same 400."""
    plain = seeded_client.post("/predict/AAA", json={"horizon": 2})
    bom = seeded_client.post("/predict/AAA", content=b"\xef\xbb\xbf" + b'{"horizon": 2}',
                             headers={"content-type": "application/json"})
    assert plain.status_code == bom.status_code == 200
    assert bom.json()["forecasts"] == plain.json()["forecasts"]
    assert len(plain.json()["forecasts"]) == 2
    batch = seeded_client.post("/predict", content='{"tickers": ["AAA"]}'.encode("utf-16"),
                               headers={"content-type": "application/json"})
    assert batch.status_code == 400 and batch.headers["content-type"] == PROBLEM
    assert batch.json()["detail"] == ("the body is not valid JSON: it is not UTF-8 (invalid start "
                                      "byte at byte 0)")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_head_is_answered_as_get_without_the_body(seeded_client):
    """Every GET route answers HEAD with GET's status and headers and no body (RFC 9110; it was
    405 everywhere); a POST-only route still answers 405."""
    for path in ("/healthz", "/readyz", "/", "/static/app.css", "/bars/AAA", "/tickers",
                 "/nope"):
        get, head = seeded_client.get(path), seeded_client.head(path)
        assert head.status_code == get.status_code, path
        assert head.content == b"" and len(get.content) > 0, path
        for name in ("content-type", "content-length"):
            assert head.headers.get(name) == get.headers.get(name), (path, name)
    post_only = seeded_client.head("/predict/AAA")
    assert post_only.status_code == 405 and post_only.headers["allow"] == "POST"
    wrong = seeded_client.post("/healthz")  # a GET route also answers HEAD: its Allow says so
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("range_", ["items=0-1", "bytes=10-5", "bytes=999999-", "bytes=0-3"])
def test_a_range_request_is_answered_with_the_whole_file(seeded_client, range_):
    """An unknown unit, a reversed and an unsatisfiable range were a text/plain 400 or 416;
    Range is ignored (RFC 9110 §14.2), valid ones too: 200 with the whole file, whose
    Accept-Ranges no longer offers bytes."""
    for path in ("/", "/static/app.css"):
        response = seeded_client.get(path, headers={"Range": range_})
        assert response.status_code == 200, (path, range_)
        assert response.content == seeded_client.get(path).content
        assert response.headers["accept-ranges"] == "none"  # and no range is offered


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_invalid_name_is_quoted_at_most_40_characters(seeded_client):
    response = seeded_client.get("/bars/" + "A" * 60_000)
    long = response.json()
    assert long["errors"][0]["message"] == (
        f"invalid ticker {'A' * 40!r}... (60000 characters): use 1-15 letters, digits, '.', '-', "
        "'^' or '='")
    assert long["instance"] == "/bars/" + "A" * 250 + "..."  # the path clipped too
    assert len(response.content) < 1_000  # was 180 KB: the name echoed three times


def test_unknown_body_fields_are_named_clipped_and_listed_at_most_20(seeded_client):
    """A body of many long unknown keys: each named at most 40 characters, 20 of them listed
    and the rest counted (30,000 keys in 930 KB were a 4.8 MB answer)."""
    keys = {f"k{i:05d}" + "A" * 60: 1 for i in range(12_000)}  # 0.9 MB, under the limit
    response = seeded_client.post("/predict/AAA", json={"horizon": 1, **keys})
    body = assert_problem(response, 422, "urn:stockcast:problem:validation")
    first = f"k00000{'A' * 34}... (66 characters)"
    assert [e["field"] for e in body["errors"]][:1] == [first] and len(body["errors"]) == 20
    assert body["detail"].startswith(f"{first}: Extra inputs are not permitted; ")
    assert body["detail"].endswith("; and 11980 more errors not listed")
    assert len(response.content) < 10_000


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_malformed_json_is_the_documented_400_and_a_trailing_slash_is_404(seeded_client):
    bad = seeded_client.post("/predict/AAA", content=b'{"horizon": 1',
                             headers={"content-type": "application/json"})
    slash = seeded_client.post("/predict/", json={"tickers": ["AAA"]})
    documented = seeded_client.get("/openapi.json").json()["paths"]["/predict/{ticker}"]["post"]
    assert bad.status_code == 400 and bad.headers["content-type"] == PROBLEM
    assert bad.json()["type"] == "urn:stockcast:problem:malformed-body"
    assert bad.json()["detail"].startswith("the body is not valid JSON: ")
    assert {"400", "413", "415", "422"} <= set(documented["responses"])  # 413: the body limit
    assert slash.status_code == 404 and slash.headers["content-type"] == PROBLEM
    assert "location" not in slash.headers


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("path, body, content_type, sent", [
    ("/predict/AAA", b'{"horizon": 1}', "text/plain", "got 'text/plain'"),
    ("/predict/AAA", b'{"horizon": 1}', None, "none was sent"),
    ("/predict/AAA", b"horizon=1", "application/x-www-form-urlencoded",
     "got 'application/x-www-form-urlencoded'"),
    ("/predict", b'{"tickers": ["AAA"], "horizon": 1}', "text/plain; charset=utf-8",
     "got 'text/plain; charset=utf-8'"),
])
def test_a_body_not_sent_as_json_is_415_and_an_empty_one_the_default(seeded_client, path, body,
                                                                     content_type, sent):
    # Before: 422 "body: Input should be a valid dictionary" for a body that was fine JSON.
    headers = {"content-type": content_type} if content_type else {}
    response = seeded_client.post(path, content=body, headers=headers)
    documented = seeded_client.get("/openapi.json").json()["paths"][
        "/predict/{ticker}" if path != "/predict" else "/predict"]["post"]["responses"]
    assert response.status_code == 415 and response.headers["content-type"] == PROBLEM
    assert response.json() == {
        "type": "urn:stockcast:problem:unsupported-media-type",
        "title": "Unsupported Media Type", "status": 415,
        "detail": f"the body must be JSON: send Content-Type: application/json ({sent})",
        "instance": path}
    assert "415" in documented
    # No body is the default request (the next session) under any Content-Type, as before;
    # a JSON media type with parameters or a +json suffix is JSON.
    default = seeded_client.post("/predict/AAA", json={"horizon": 1}).json()
    for empty in ({}, {"content-type": "text/plain"}):
        assert seeded_client.post("/predict/AAA", headers=empty).json() == default
    for json_type in ("application/json; charset=utf-8", "application/problem+json"):
        assert seeded_client.post("/predict/AAA", content=b'{"horizon": 1}',
                                  headers={"content-type": json_type}).json() == default


# -- oversized bodies --------------------------------------------------------------------------


def _raw_request(port: int, head: bytes, sender: Callable[[socket.socket], int],
                 timeout: float = 10.0) -> tuple[bytes, int, float]:
    """Send a request head, then body bytes with `sender` until the server answers; returns the
    response, the body bytes sent, and the seconds until the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(head)
        sent = sender(sock)
        response = b""
        while b"\r\n\r\n" not in response or not _complete(response):
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
        return response, sent, time.monotonic() - started


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def _send_until_answered(total: int, chunked: bool) -> Callable[[socket.socket], int]:
    """Body bytes in 64 KiB pieces, stopping as soon as the server has answered."""
    def sender(sock: socket.socket) -> int:
        import select

        piece = b" " * 65536
        sent = 0
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is in: the server did not wait for the rest
            data = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
            try:
                sock.sendall(data)
            except OSError:
                break
            sent += len(piece)
        return sent
    return sender


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_is_413_before_it_is_read(db_url, tiny_artifact, bars, chunked):
    store_bars(db_url, bars)
    app = create_app(api_settings(db_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock())
    size = 200 * 1024 * 1024  # 200 MB offered; the limit is 1 MiB
    framing = (b"Transfer-Encoding: chunked\r\n" if chunked
               else b"Content-Length: %d\r\n" % size)
    head = (b"POST /predict/AAA HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + framing + b"\r\n")
    with ServerThread(app) as server:
        response, sent, took = _raw_request(server.port, head, _send_until_answered(size, chunked))
        small = httpx.post(f"{server.url}/predict/AAA",
                           content=b'{"horizon": 1' + b" " * (1024 * 1024 - 20) + b"}",
                           headers={"content-type": "application/json"})
    status_line, _, rest = response.partition(b"\r\n")
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"content-type: application/problem+json" in rest.lower()
    assert body == {"type": "urn:stockcast:problem:body-too-large", "title": "Content too large",
                    "status": 413, "detail": "the request body exceeds 1048576 bytes",
                    "instance": "/predict/AAA"}
    # Answered after at most a few MiB (socket buffers), never the 200 MB.
    assert sent < 32 * 1024 * 1024, sent
    assert took < BOUND
    assert small.status_code == 200  # just under the limit is read and answered


# -- an unexpected error -----------------------------------------------------------------------


def test_a_500_is_problem_json_and_the_connection_stays_usable(sqlite_url, tiny_artifact, bars):
    store_bars(sqlite_url, bars, reset=True)
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:  # damage a row behind the validator's back
        conn.execute(sa.text("update bars set adj_close = -1 where ticker = 'AAA' "
                             "and date = '2021-05-18'"))
    engine.dispose()
    app = create_app(api_settings(sqlite_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock())
    request = (b"POST /predict/AAA HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with ServerThread(app) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        answers = []
        for raw in (request, health, request):  # one keep-alive connection
            sock.sendall(raw)
            response = b""
            while not (b"\r\n\r\n" in response and _complete(response)):
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection"
                response += chunk
            answers.append(response)
    assert answers[0].startswith(b"HTTP/1.1 500 ")
    assert b"content-type: application/problem+json" in answers[0].lower()
    assert b"connection: close" not in answers[0].lower()
    assert json.loads(answers[0].partition(b"\r\n\r\n")[2])["type"] == \
        "urn:stockcast:problem:internal"
    assert answers[1].startswith(b"HTTP/1.1 200 ")
    assert answers[2].startswith(b"HTTP/1.1 500 ")


# -- a tampered artifact -----------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_tampered_artifact_is_refused_and_the_old_model_keeps_serving(
        db_url, tiny_artifact, bars, tmp_path):
    store_bars(db_url, bars)
    models = tmp_path / "models"
    good = copy_models(tiny_artifact.artifact_dir, models, variant="good")
    app = create_app(api_settings(db_url, models), source=ScriptedSource(), clock=Clock())
    with TestClient(app) as client:
        before = client.post("/predict/AAA", json={"horizon": 3}).json()
        # Another artifact whose scaler was shifted after export, still under its own name.
        tampered = copy_models(good, models, variant="tampered")
        meta = json.loads((tampered / "meta.json").read_text())
        meta["feature_scaler"]["mean"] = [m + 0.5 for m in meta["feature_scaler"]["mean"]]
        (tampered / "meta.json").write_text(json.dumps(meta))
        reload, took = timed(lambda: client.post("/admin/reload",
                                                 headers={"X-API-Key": API_KEY}))
        ready = client.get("/readyz")
        during = client.post("/predict/AAA", json={"horizon": 3}).json()
        (models / "current").write_text(good.name + "\n")  # the bad promotion undone
        restored = client.post("/admin/reload", headers={"X-API-Key": API_KEY})
    assert reload.status_code == 409 and took < BOUND
    assert reload.json()["detail"] == (
        f"artifact {tampered.name}: its content hashes to "
        f"{artifact_version((tampered / 'model.onnx').read_bytes(), meta)}, not to its version; "
        f"meta.json or model.onnx was changed after export (refused); still serving model "
        f"{good.name}")
    assert ready.status_code == 200
    assert ready.json()["checks"]["model"]["detail"] == (
        f"{good.name}; the last load failed: model {tampered.name}: artifact refused "
        "(the reason is in the server log)")
    assert during == before  # the same model, the same forecast
    assert restored.status_code == 200 and restored.json()["version"] == good.name


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cors_lets_the_configured_origins_call_the_api_and_no_other(db_url, tiny_artifact, bars):
    """STOCKCAST_CORS_ORIGINS: a page on a listed origin may call the API (the preflight of a
    JSON POST with the admin key answered, every answer, an error's too, carrying the origin);
    another origin gets no CORS header, so its browser hides the answer; by default none does.
    Without the setting a browser page on another origin could not read any answer at all."""
    store_bars(db_url, bars)
    allowed, other = "http://dash.example:3000", "https://evil.example"
    settings = api_settings(db_url, tiny_artifact.model_dir, cors_origins=f" {allowed} ,")
    assert settings.cors_origins == (allowed,)
    with TestClient(create_app(settings, source=ScriptedSource(), clock=Clock()),
                    raise_server_exceptions=False) as client:
        preflight = client.options("/predict/AAA", headers={
            "Origin": allowed, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-api-key"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == allowed
        assert set(preflight.headers["access-control-allow-methods"].split(", ")) == {
            "GET", "HEAD", "POST"}
        assert {h.strip().lower() for h in preflight.headers[
            "access-control-allow-headers"].split(",")} >= {"content-type", "x-api-key"}
        ok = client.post("/predict/AAA", json={"horizon": 1}, headers={"Origin": allowed})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == allowed
        assert ok.headers["access-control-expose-headers"] == "Retry-After"
        bad = client.post("/predict/%21%21", json={}, headers={"Origin": allowed})
        assert bad.status_code == 422 and bad.headers["access-control-allow-origin"] == allowed
        big = client.post("/predict", content=b"x" * (settings.max_body_bytes + 1),
                          headers={"Origin": allowed, "content-type": "application/json"})
        assert big.status_code == 413 and big.headers["access-control-allow-origin"] == allowed
        refused = client.options("/predict/AAA", headers={
            "Origin": other, "Access-Control-Request-Method": "POST"})
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        elsewhere = client.get("/healthz", headers={"Origin": other})
        assert elsewhere.status_code == 200
        assert "access-control-allow-origin" not in elsewhere.headers
    with TestClient(create_app(api_settings(db_url, tiny_artifact.model_dir),
                               source=ScriptedSource(), clock=Clock())) as client:
        plain = client.get("/healthz", headers={"Origin": allowed})
        assert "access-control-allow-origin" not in plain.headers
        assert client.options("/predict/AAA", headers={
            "Origin": allowed, "Access-Control-Request-Method": "POST"}).status_code == 405


@pytest.mark.parametrize("value, message", [
    ("http://a.example/", ("'http://a.example/' is no origin: write scheme://host[:port] as a "
                          "browser sends it (no path, no trailing slash), or * for any")),
    ("a.example", "'a.example' is no origin"),
    ("*,http://a.example", "* (any origin) with others: give * alone, or the origins"),
])
def test_a_cors_origin_that_no_browser_sends_is_refused(value, message):
    """A trailing slash or a bare host never equals a browser's Origin header: the setting
    would silently allow nothing."""
    from pydantic import ValidationError

    from service.core.config import Settings
    with pytest.raises(ValidationError) as err:
        Settings(cors_origins=value)
    assert message in str(err.value)
    assert Settings(cors_origins="*").cors_origins == ("*",)
    # as a browser writes its Origin header: lower case, no default port (else none matches)
    assert Settings(cors_origins="HTTP://Dash.Example:80,https://a.example:443,"
                                 "http://a.example:8080").cors_origins == (
        "http://dash.example", "https://a.example", "http://a.example:8080")
    assert Settings(cors_origins="").cors_origins == ()
