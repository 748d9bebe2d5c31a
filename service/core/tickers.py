"""Ticker symbols: normalized to upper case and checked before they reach SQL or a source."""

from __future__ import annotations

import re

from service.core.errors import InvalidTicker

# Yahoo's symbol set: letters, digits, '.', '-', '^' (indices), '=' (FX/futures); 1-15 chars.
TICKER_PATTERN = r"^[A-Z0-9.\-\^=]{1,15}$"
_TICKER_RE = re.compile(TICKER_PATTERN)


def normalize_ticker(raw: str) -> str:
    """Upper-case and validate a ticker symbol, raising InvalidTicker on anything else."""
    if not isinstance(raw, str):
        raise InvalidTicker(f"ticker must be a string, got {type(raw).__name__}")
    symbol = raw.strip().upper()
    if not _TICKER_RE.fullmatch(symbol):
        raise InvalidTicker(
            f"invalid ticker {raw!r}: use 1-15 letters, digits, '.', '-', '^' or '='"
        )
    return symbol
