"""Time bounds on every database call of the API's engine: a silent database answers 503 fast.

A database that stops answering without closing the connection (a network partition, a stuck
proxy: no RST) leaves a client blocked in recv() for as long as TCP keeps the connection, and
no server-side setting can end that (the server never saw the query). So the guard bounds the
client side:

- connect: libpq's `connect_timeout` (Postgres; psycopg enforces at least 2 s);
- checkout: a `select 1` on every reused pooled connection, allowed `ping_seconds` (not on
  SQLite: a file has no server to restart or fall silent, and `select 1` reads no page of it);
- use: from checkout to checkin a connection may be used for `statement_seconds` (plus the
  server's own `statement_timeout` on Postgres, SQLite's busy timeout);
- a connection past its bound is woken from the outside by the watchdog thread: a Postgres
  socket is shut down (the blocked read returns at once; the connection is then discarded), a
  SQLite statement is interrupted;
- the pool: waiting for a free connection is bounded by `pool_timeout_seconds`;
- after the database failed to connect or to answer in time, every checkout fails at once for
  `retry_seconds` (a circuit breaker), so requests queued behind the first ones do not each
  wait for their own timeout; a new connection or an answered statement closes it again. A
  SQLite statement past its bound does not open it: on a file that is most often a write
  waiting for another writer's lock, and the readers (WAL mode) need not fail with it.

Each failure raises DatabaseUnavailable (503 database-unavailable), saying which bound it hit.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool

from service.core.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

TIMED_OUT = "stockcast_timed_out"  # connection-record info key set by the watchdog
QUERY_CANCELED = "57014"  # Postgres SQLSTATE of a statement ended by statement_timeout
# SQLite's plain DatabaseError for a file that is damaged or is no database at all: the store's
# fault, not the statement's (sqlite3 names the result code; Python >= 3.11).
SQLITE_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
# SQLite result codes after which a connection stays useless though the fault may clear: one
# opened while its file was read-only stays read-only (SQLITE_READONLY), one whose file was
# deleted or moved under it says SQLITE_READONLY_DBMOVED, an I/O error. Postgres's SQLSTATE of
# a write refused by a read-only session (a hot standby after a failover, or
# default_transaction_read_only, which a session keeps from its connect). Each connection is
# discarded, so the next one sees the database as it is now (found by a hostile pass: the
# server answered 503 or 500 until restarted).
SQLITE_STUCK = ("SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN")
PG_READ_ONLY = "25006"


def is_damaged_sqlite(dbapi_error: BaseException | None) -> bool:
    """Whether a DB-API error is SQLite saying its file is damaged or is no database."""
    return getattr(dbapi_error, "sqlite_errorname", None) in SQLITE_DAMAGED


def is_stuck_connection(dbapi_error: BaseException | None) -> bool:
    """Whether a DB-API error leaves its connection unable to write until it is replaced."""
    name = getattr(dbapi_error, "sqlite_errorname", None) or ""
    return (name.startswith(SQLITE_STUCK)
            or getattr(dbapi_error, "sqlstate", None) == PG_READ_ONLY)


def file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a database file, None where it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextmanager
def driver_errors(conn: Connection, statement: str) -> Iterator[None]:
    """Calls on conn's raw DB-API connection (bulk writes: executemany, COPY) raise SQLAlchemy's
    DBAPIError subclasses, as conn.execute does, so the API's fault mapping sees them: a
    SQLite "database is locked" past its busy timeout is a 503, not a 500."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as exc:
        raise sa_exc.DBAPIError.instance(statement, None, exc, dbapi.Error,
                                         dialect=conn.dialect) from exc


@dataclass(frozen=True)
class DbBounds:
    """How long each kind of database call of one engine may take (seconds)."""

    connect_seconds: int = 2
    ping_seconds: float = 0.5
    statement_seconds: float = 2.0
    pool_timeout_seconds: float = 1.0
    retry_seconds: float = 1.0
    pool_size: int = 5
    max_overflow: int = 15


class Watchdog:
    """One daemon thread that calls a kill function for each armed key past its deadline."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic):
        self.monotonic = monotonic
        self._due: dict[int, tuple[float, Callable[[], None]]] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        # When the thread next looks at `_due` by itself: the deadline it sleeps until (inf:
        # none), or -inf while it is awake (it reads `_due` before sleeping again).
        self._sleeps_until = -math.inf
        self.wakeups = 0  # notifications sent (tests)

    def arm(self, key: int, seconds: float, kill: Callable[[], None]) -> None:
        """Call `kill` once `seconds` from now unless disarmed first (re-arming replaces).

        The thread is woken only for a deadline earlier than the one it sleeps until: every
        checkout arms twice, and waking the thread each time cost a thread switch (and the GIL)
        per arm for nothing while it was already due to look earlier.
        """
        due = self.monotonic() + seconds
        with self._cond:
            self._due[key] = (due, kill)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="db-watchdog",
                                                daemon=True)
                self._thread.start()
            if due < self._sleeps_until:
                self.wakeups += 1
                self._cond.notify()

    def disarm(self, key: int) -> None:
        with self._cond:
            self._due.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = self.monotonic()
                expired = [key for key, (due, _) in self._due.items() if due <= now]
                kills = [self._due.pop(key)[1] for key in expired]
                if not kills:
                    next_due = min((due for due, _ in self._due.values()), default=None)
                    self._sleeps_until = math.inf if next_due is None else next_due
                    self._cond.wait(None if next_due is None else next_due - now)
                    self._sleeps_until = -math.inf
                    continue
            for kill in kills:
                try:
                    kill()
                except Exception:  # the watchdog outlives any one connection's surprise
                    log.exception("cannot interrupt a database connection past its bound")


WATCHDOG = Watchdog()


def _interrupt(dbapi_conn) -> None:
    """Wake a thread blocked on this connection: shut down its socket, or interrupt SQLite."""
    if dbapi_conn is None:  # closed meanwhile
        return
    if hasattr(dbapi_conn, "interrupt"):  # sqlite3: aborts the running statement, thread-safe
        dbapi_conn.interrupt()
        return
    # psycopg: a shut-down socket makes the blocked read return EOF at once; the connection is
    # then broken, and SQLAlchemy discards it. (cancel() would need the silent server.)
    sock = socket.fromfd(dbapi_conn.fileno(), socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()  # the duplicate descriptor only


class DatabaseBreaker:
    """Open for `retry_seconds` after the database failed to connect or answer in time."""

    def __init__(self, retry_seconds: float, monotonic: Callable[[], float] = time.monotonic):
        self.retry_seconds = retry_seconds
        self.monotonic = monotonic
        self._opened_at: float | None = None
        self._reason = ""
        self._lock = threading.Lock()

    def check(self) -> None:
        """DatabaseUnavailable at once while open."""
        with self._lock:
            opened_at, reason = self._opened_at, self._reason
        if opened_at is not None:
            age = self.monotonic() - opened_at
            if age < self.retry_seconds:
                raise DatabaseUnavailable(
                    f"bar database unavailable: {reason}; not asked again for "
                    f"{self.retry_seconds:g} s")

    def trip(self, reason: str) -> None:
        with self._lock:
            self._opened_at, self._reason = self.monotonic(), reason

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def reset(self) -> None:
        with self._lock:
            self._opened_at = None


class GuardedQueuePool(QueuePool):
    """A QueuePool whose checkout fails fast while the breaker is open and answers a full pool
    with DatabaseUnavailable instead of SQLAlchemy's TimeoutError."""

    breaker: DatabaseBreaker | None = None

    def connect(self):
        breaker = self.breaker
        if breaker is not None:
            breaker.check()
        try:
            conn = super().connect()
        except sa_exc.TimeoutError as exc:
            raise DatabaseUnavailable(
                f"bar database unavailable: no connection free within {self._timeout:g} s "
                f"(pool of {self.size() + self._max_overflow})") from exc
        if breaker is not None:
            try:  # it may have opened while this request waited for a free connection
                breaker.check()
            except DatabaseUnavailable:
                conn.close()
                raise
        return conn

    def recreate(self) -> GuardedQueuePool:
        new = super().recreate()
        new.breaker = self.breaker
        return new


def engine_options(url: str, bounds: DbBounds) -> dict:
    """create_engine keyword arguments that bound connect time, statement time and the pool."""
    options: dict = {"poolclass": GuardedQueuePool, "pool_size": bounds.pool_size,
                     "max_overflow": bounds.max_overflow,
                     "pool_timeout": bounds.pool_timeout_seconds}
    if url.startswith("postgresql"):
        statement_ms = int(bounds.statement_seconds * 1000)
        options["connect_args"] = {
            "connect_timeout": bounds.connect_seconds,
            "options": f"-c statement_timeout={statement_ms}",
        }
    return options


def guard_engine(engine: Engine, bounds: DbBounds) -> Engine:
    """Install the checkout ping, the watchdog and the breaker on an engine made with
    engine_options(); returns it."""
    breaker = DatabaseBreaker(bounds.retry_seconds)
    engine.pool.breaker = breaker  # type: ignore[attr-defined]
    # A server, not a file: pinged at checkout, and its timeouts open the breaker (docstring).
    server = engine.dialect.name != "sqlite"
    # A SQLite file that existed when the server started is watched: one removed under it is a
    # fault (connect refuses to create an empty one in its place: a restore would then meet that
    # file's -wal), one replaced (a restore by `mv`) is read anew: its connections are replaced.
    path = engine.url.database if not server else None
    watched = path if path and path != ":memory:" and file_identity(path) is not None else None

    def timed_out(record, seconds: float) -> Callable[[], None]:
        def kill() -> None:
            record.info[TIMED_OUT] = seconds
            _interrupt(record.dbapi_connection)
        return kill

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, conn_rec, cargs, cparams):
        # Inside the pool's slot: the breaker opens before the slot goes to the next waiter,
        # which then fails at once instead of connecting (and timing out) again itself.
        breaker.check()
        if watched is not None and file_identity(watched) is None:
            raise dialect.loaded_dbapi.OperationalError(
                f"unable to open database file: {watched} is missing")
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:  # refused, timed out
            breaker.trip(f"connect failed ({type(exc).__name__})")
            raise

    @event.listens_for(engine, "connect")
    def _fresh(dbapi_conn, record):
        record.info["stockcast_fresh"] = True  # just connected: no need to ping it
        if watched is not None:
            record.info["stockcast_file"] = file_identity(watched)
        breaker.reset()  # the database answers again

    @event.listens_for(engine, "after_cursor_execute")
    def _answered(conn, cursor, statement, parameters, context, executemany):
        if breaker.is_open:  # a ping alone does not close it: a locked table answers pings
            breaker.reset()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn, record, proxy):
        key = id(record)
        fresh = record.info.pop("stockcast_fresh", False)  # connected just now: file read then
        if (watched is not None and not fresh
                and file_identity(watched) != record.info.get("stockcast_file")):
            raise sa_exc.DisconnectionError(f"{watched} was removed or replaced")
        if not fresh and server:
            WATCHDOG.arm(key, bounds.ping_seconds, timed_out(record, bounds.ping_seconds))
            try:
                engine.dialect.do_ping(dbapi_conn)
            except Exception as exc:
                WATCHDOG.disarm(key)
                if record.info.pop(TIMED_OUT, None) is not None:
                    reason = f"no answer to a ping within {bounds.ping_seconds:g} s"
                    breaker.trip(reason)
                    raise DatabaseUnavailable(f"bar database unavailable: {reason}") from exc
                # A connection the server closed (a restart): SQLAlchemy connects afresh.
                raise sa_exc.DisconnectionError(f"stale pooled connection: {exc}") from exc
        WATCHDOG.arm(key, bounds.statement_seconds, timed_out(record, bounds.statement_seconds))

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_conn, record):
        WATCHDOG.disarm(id(record))
        record.info.pop(TIMED_OUT, None)

    @event.listens_for(engine, "close")
    def _close(dbapi_conn, record):
        WATCHDOG.disarm(id(record))

    @event.listens_for(engine, "handle_error")
    def _handle_error(ctx):
        if is_stuck_connection(ctx.original_exception):
            ctx.is_disconnect = True  # raised as it is: a fault (health.is_database_fault), 503
            return
        if is_damaged_sqlite(ctx.original_exception):
            # Its connections keep what they read of the damaged file (WAL mode trusts its
            # cache while the WAL index is unchanged, and a damage written behind SQLite's
            # back changes nothing there): discard them all, so a restored file is read anew.
            ctx.is_disconnect = True
            return
        conn = ctx.connection
        seconds = None
        if conn is not None and not conn.invalidated:
            seconds = conn.info.get(TIMED_OUT)
        if seconds is None and getattr(ctx.original_exception, "sqlstate", None) == QUERY_CANCELED:
            seconds = bounds.statement_seconds  # the server's statement_timeout
        if seconds is not None:
            reason = f"no answer within {seconds:g} s"
            if server:  # a SQLite statement past its bound most often waited for another
                # writer's lock, which WAL-mode readers never wait for: they go on
                breaker.trip(reason)
            # A shut-down socket must be discarded; an interrupted SQLite connection or a
            # cancelled Postgres statement could be kept, but a new connection is cheap.
            ctx.is_disconnect = True
            raise DatabaseUnavailable(
                f"bar database unavailable: {reason}") from ctx.original_exception

    return engine
