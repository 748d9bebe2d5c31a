"""Ticker symbols: normalized to upper case and checked before they reach SQL or a source."""

from __future__ import annotations

import re

from service.core.errors import InvalidTicker

# Yahoo's symbol set: letters, digits, '.', '-', '^' (indices), '=' (FX/futures); 1-15 chars.
TICKER_PATTERN = r"^[A-Z0-9.\-\^=]{1,15}$"
_TICKER_RE = re.compile(TICKER_PATTERN)
# ... at least one of them a letter or a digit (a separate check: a lookahead in the pattern
# would not survive the OpenAPI schema's regex engines).
NAME_PATTERN = r"[A-Z0-9]"
_NAME_RE = re.compile(NAME_PATTERN)


# What normalize_ticker strips around a symbol (a name typed or read from a file with them).
ASCII_SPACES = " \t\r\n"

# An invalid name is quoted in its error up to this many characters (an answer quoting a 60 KB
# path three times was 180 KB).
SHOWN_CHARS = 40


def clipped(text: str, quote: bool = False) -> str:
    """`text` (repr'd if `quote`) to quote in an error, cut at SHOWN_CHARS characters."""
    head = text[:SHOWN_CHARS]
    shown = repr(head) if quote else head
    return shown if len(text) <= SHOWN_CHARS else f"{shown}... ({len(text)} characters)"


def normalize_ticker(raw: str) -> str:
    """Upper-case and validate a ticker symbol, raising InvalidTicker on anything else."""
    if not isinstance(raw, str):
        raise InvalidTicker(f"ticker must be a string, got {type(raw).__name__}")
    # Surrounding spaces go; nothing else is folded. str.strip() and str.upper() are Unicode's:
    # they made a no-break space or a control character vanish and 'ı' (dotless i), 'ſ' or
    # 'ﬁ' into ASCII letters, so 'ıbm' was served (and cached) as IBM.
    symbol = raw.strip(ASCII_SPACES)
    if not symbol.isascii() or not _TICKER_RE.fullmatch(symbol := symbol.upper()):
        raise InvalidTicker(f"invalid ticker {clipped(raw, quote=True)}: use 1-15 letters, "
                            "digits, '.', '-', '^' or '='")
    if not _NAME_RE.search(symbol):  # '-', '..', '=^' are no symbol of anything
        raise InvalidTicker(
            f"invalid ticker {clipped(raw, quote=True)}: a symbol needs a letter or a digit")
    return symbol
