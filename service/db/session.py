"""Engines and migrations: one engine per database URL, SQLite tuned for concurrent readers."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import ArgumentError

from service.core.config import PROJECT_ROOT
from service.db.guard import DbBounds, engine_options, guard_engine

# Commands (ingest, backtest) wait this long for a SQLite lock; a bounded engine its statement
# bound.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain postgresql:// URLs."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, bounds: DbBounds | None = None, **kwargs) -> Engine:
    """An engine that pings pooled connections; SQLite files run in WAL mode with a busy timeout.

    With `bounds` (the API's engine) every call is bounded in time (service.db.guard); without
    (commands: a full ingest may rightly take a minute) only SQLite's busy timeout applies. A
    URL it cannot use raises SQLAlchemy's ArgumentError, as one it cannot read does: a driver
    not installed, a SQLite file whose folder cannot be made.
    """
    url = normalize_url(url)
    if bounds is not None:
        options = engine_options(url, bounds)
        connect_args = {**options.pop("connect_args", {}), **kwargs.pop("connect_args", {})}
        engine = _make_engine(url, connect_args=connect_args, pool_pre_ping=False,
                              busy_timeout_ms=int(bounds.statement_seconds * 1000),
                              **options, **kwargs)
        return guard_engine(engine, bounds)
    return _make_engine(url, pool_pre_ping=True, **kwargs)


def _make_engine(url: str, *, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
                 connect_args: dict | None = None, **kwargs) -> Engine:
    connect_args = dict(connect_args or {})
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ArgumentError(f"cannot make the SQLite file's folder: {exc}") from exc
        engine = _create_engine(
            url,
            connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False,
                          **connect_args},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if connect_args:
        kwargs["connect_args"] = connect_args
    return _create_engine(url, **kwargs)


def _create_engine(url: str, **kwargs) -> Engine:
    try:
        return create_engine(url, **kwargs)
    except ImportError as exc:  # the dialect's driver (MySQLdb for mysql://, say)
        raise ArgumentError(f"its driver is not installed: {exc}") from exc


def alembic_config(url: str):
    """An Alembic Config pointing at this project's migrations and the given database."""
    from alembic.config import Config

    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    cfg.attributes["database_url"] = normalize_url(url)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Run Alembic migrations up to `revision`."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Run Alembic migrations down to `revision` ("base" for empty)."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def reset_database(url: str) -> None:
    """Drop every table (tests only), then migrate to head."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for table in inspect(conn).get_table_names():
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}" CASCADE'
                                  if conn.dialect.name == "postgresql"
                                  else f'DROP TABLE IF EXISTS "{table}"'))
    finally:
        engine.dispose()
    upgrade(url)
