"""Database readiness: reachability (`select 1`) and the schema revision against Alembic's head."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text
from sqlalchemy.exc import DatabaseError, DBAPIError, InterfaceError, OperationalError

from service.core.errors import DatabaseNotMigrated, DatabaseUnavailable
from service.db.guard import is_damaged_sqlite, is_stuck_connection

# SQLSTATEs of a missing table / column (Postgres) and SQLite's words for the same.
_MISSING_SQLSTATES = {"42P01", "42703"}
_MISSING_WORDS = ("no such table", "no such column")
# ... and the missing name in each one's message.
_MISSING_NAME = re.compile(r'no such (?P<sqlite_kind>table|column): (?P<sqlite_name>[\w.]+)'
                           r'|(?P<pg_kind>relation|column) "(?P<pg_name>[^"]+)" does not exist')


def is_database_fault(exc: BaseException) -> bool:
    """Whether a database error is the database's fault (unreachable, silent, timed out,
    closed under us; a damaged SQLite file; a database refusing writes: read-only Postgres,
    25006, is an InternalError) rather than the statement's: a 503, not a 500."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    if is_stuck_connection(getattr(exc, "orig", None)):
        return True
    return type(exc) is DatabaseError and is_damaged_sqlite(getattr(exc, "orig", None))


def unavailable(exc: BaseException) -> DatabaseUnavailable:
    """The DatabaseUnavailable (503) a database fault is answered with."""
    return DatabaseUnavailable(f"bar database unavailable: {exc.__class__.__name__}")


@contextmanager
def database_faults() -> Iterator[None]:
    """A database fault inside the block raises DatabaseUnavailable; other errors pass."""
    try:
        yield
    except DBAPIError as exc:
        if not is_database_fault(exc):
            raise
        raise unavailable(exc) from exc


def ping(engine: Engine) -> None:
    """Run `select 1`; DatabaseUnavailable if the database cannot be reached."""
    with database_faults(), engine.connect() as conn:
        conn.execute(text("select 1"))


def head_revision() -> str:
    """This code's Alembic head revision."""
    from alembic.script import ScriptDirectory

    from service.db.session import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "no Alembic revisions"
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's Alembic revision; None when it has none (never migrated, or emptied)."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("select version_num from alembic_version")).scalar()
    except DBAPIError as exc:
        if is_missing_schema(exc):
            return None
        if is_database_fault(exc):
            raise unavailable(exc) from exc
        raise


def _missing_schema_error(exc: BaseException | None) -> BaseException | None:
    """The driver's error (of `exc` or a cause) saying a table or column does not exist."""
    seen = 0
    while exc is not None and seen < 5:
        orig = getattr(exc, "orig", None)
        if getattr(orig, "sqlstate", None) in _MISSING_SQLSTATES:
            return orig
        if isinstance(exc, DBAPIError) and any(w in str(orig) for w in _MISSING_WORDS):
            return orig
        exc, seen = exc.__cause__, seen + 1
    return None


def is_missing_schema(exc: BaseException | None) -> bool:
    """Whether an error (or its cause) says a table or column does not exist."""
    return _missing_schema_error(exc) is not None


def missing_object(exc: BaseException | None) -> str | None:
    """What a missing-schema error says is missing ("table ledger_forecasts"), if it says."""
    orig = _missing_schema_error(exc)
    match = _MISSING_NAME.search(str(orig)) if orig is not None else None
    if match is None:
        return None
    kind = match["sqlite_kind"] or ("table" if match["pg_kind"] == "relation" else "column")
    return f"{kind} {match['sqlite_name'] or match['pg_name']}"


class SchemaCheck:
    """Whether the database is at `head`, known from the last check; re-checked every
    `interval` seconds by a caller that asks `due()`, and at once after a missing-table error."""

    def __init__(self, engine: Engine, head: str, interval: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.head = head
        self.interval = interval
        self.monotonic = monotonic
        self.current: str | None = head  # assumed until the first check says otherwise
        self._checked_at: float | None = None
        self._lock = threading.Lock()

    @property
    def migrated(self) -> bool:
        return self.current == self.head

    def claim(self) -> bool:
        """True for the caller that should re-read the revision now: each one while the schema
        looked wrong (to see the upgrade at once), else one per interval."""
        if not self.migrated:
            return True
        now = self.monotonic()
        with self._lock:
            if self._checked_at is not None and now - self._checked_at < self.interval:
                return False
            self._checked_at = now  # a failing database is not asked by every request
            return True

    def check(self) -> str | None:
        """Read the revision now (DatabaseUnavailable if the database does not answer)."""
        with self._lock:
            self._checked_at = self.monotonic()
        current = current_revision(self.engine)
        self.current = current
        return current

    def require(self) -> None:
        """DatabaseNotMigrated unless the last check found the head revision."""
        current = self.current
        if current != self.head:
            raise DatabaseNotMigrated(current, self.head)
