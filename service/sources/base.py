"""The one small protocol every bar source implements, the registry of sources, the factory.

Adding a source: its module in service/sources/, one entry in SOURCES and its name in
service.core.config.SourceName (plus its test); STOCKCAST_SOURCE accepts exactly the names
registered here (test_source_registry keeps the two equal).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pandas as pd

from service.core.errors import SourceNotConfigured

if TYPE_CHECKING:
    from service.core.config import Settings, SourceName


@runtime_checkable
class BarSource(Protocol):
    """Where missing bars come from.

    `fetch` returns exactly the columns `date, open, high, low, close, adj_close, volume`
    (date: tz-naive datetime64[ns] exchange trading date; `end` inclusive), NOT yet validated:
    every caller passes the frame through service.sources.validate.validate_bars. The ticker
    arrives normalized (service.core.tickers.normalize_ticker). Raises UnknownTicker when upstream
    knows no bars for the symbol, SourceUnavailable when it fails after retries.
    """

    name: str

    def fetch(self, ticker: str, start: dt.date | None = None,
              end: dt.date | None = None) -> pd.DataFrame:
        """Daily bars of one ticker for [start, end] (both inclusive; None = open-ended)."""
        ...


class NullSource:
    """No upstream at all (offline / cache-only deployments): every fetch fails cleanly."""

    name = "none"

    def fetch(self, ticker: str, start: dt.date | None = None,
              end: dt.date | None = None) -> pd.DataFrame:
        """Always raises SourceNotConfigured (a SourceUnavailable)."""
        raise SourceNotConfigured("no bar source configured (STOCKCAST_SOURCE=none)")


def _yfinance(settings: Settings) -> BarSource:
    # Imported here: yfinance (and curl_cffi) are only loaded when actually used.
    from service.sources.yfinance import YFinanceSource

    return YFinanceSource(cache_dir=settings.yfinance_cache_dir)


# Every bar source by its STOCKCAST_SOURCE name: how to build it from the settings.
SOURCES: dict[SourceName, Callable[[Settings], BarSource]] = {
    "yfinance": _yfinance,
    "none": lambda settings: NullSource(),
}


def make_source(settings: Settings) -> BarSource:
    """The bar source named by settings.source (one of SOURCES)."""
    factory = SOURCES.get(settings.source)
    if factory is None:
        raise ValueError(f"unknown bar source {settings.source!r}: use one of "
                         + ", ".join(repr(name) for name in SOURCES))
    return factory(settings)
