"""Database reachability for the readiness probe."""

from __future__ import annotations

from sqlalchemy import Engine, text
from sqlalchemy.exc import InterfaceError, OperationalError

from service.core.errors import DatabaseUnavailable


def ping(engine: Engine) -> None:
    """Run `select 1`; DatabaseUnavailable if the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseUnavailable(f"bar database unavailable: {exc.__class__.__name__}") from exc
