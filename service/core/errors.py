"""Typed errors of the data and forecasting layers; the API maps each to one HTTP status."""

from __future__ import annotations


class StockcastError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidTicker(StockcastError, ValueError):
    """A ticker symbol that is not in the accepted Yahoo symbol set."""


class UnknownTicker(StockcastError):
    """The source knows no bars for this ticker (unknown or delisted symbol)."""


class SourceUnavailable(StockcastError):
    """The upstream source failed (timeouts, rate limits) after retries."""


class SourceCoolingDown(SourceUnavailable):
    """The upstream was not asked: it failed for another request less than the circuit
    breaker's cool-down ago. Nothing was tried for this ticker; `retry_after` seconds remain."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class SourceNotConfigured(SourceUnavailable):
    """There is no upstream at all (STOCKCAST_SOURCE=none): a ticker not cached is unknown here,
    not temporarily unavailable; cached ones are served stale."""


class InvalidBars(StockcastError, ValueError):
    """An input file or frame that cannot be read as OHLCV bars at all."""


class InsufficientHistory(StockcastError):
    """Too few bars to build one feature window."""

    def __init__(self, ticker: str, n_bars: int, needed: int):
        self.ticker, self.n_bars, self.needed = ticker, n_bars, needed
        super().__init__(
            f"{ticker} has {n_bars} usable bars; at least {needed} are needed for one window"
        )


class ModelNotLoaded(StockcastError):
    """No model artifact is loaded."""


class ManifestMismatch(StockcastError):
    """An artifact whose manifest does not match this code's feature spec."""


class DatabaseUnavailable(StockcastError):
    """The bar database cannot be reached."""


class ServerBusy(StockcastError):
    """Every forecast turn is taken and none came free in time (service.api.lane)."""


class DatabaseNotMigrated(StockcastError):
    """The database answers but its schema is not at this code's Alembic head."""

    def __init__(self, current: str | None, head: str):
        self.current, self.head = current, head
        super().__init__(f"database not migrated (at {current or 'no revision'}, need {head}): "
                         "run `stockcast db upgrade`")


class SchemaIncomplete(DatabaseNotMigrated):
    """The database is at this code's head revision, yet a table or column is missing (dropped
    after the migration): to a request, a database not migrated; no upgrade brings it back."""

    def __init__(self, head: str, missing: str | None = None):
        self.current, self.head, self.missing = head, head, missing
        what = f"{missing} is" if missing else "a table or column is"
        StockcastError.__init__(
            self, f"database schema incomplete (at {head}, the head, but {what} missing): "
                  "restore it from a backup")
