"""Transaction locks: writers of one thing (a ticker's features, the market series) serialised
until the transaction ends, on both backends."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, text


def xact_lock(conn: Connection, keys: Iterable[int]) -> None:
    """Hold the locks of these (bigint) keys until conn's transaction ends.

    Postgres: a transaction-level advisory lock per key, taken in sorted order, so two lockers
    of overlapping keys cannot deadlock. SQLite: its one database write lock, which covers every
    key, taken by a write that changes nothing. Either way before the caller's reads: read
    first, another writer could commit in between and be overwritten.
    """
    if conn.dialect.name == "postgresql":
        for key in sorted(set(keys)):
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        conn.execute(text("UPDATE tickers SET symbol = symbol WHERE 0"))
