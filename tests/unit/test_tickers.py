"""Ticker symbols are upper-cased and checked before they reach SQL or a source."""

from __future__ import annotations

import pytest

from service.core.errors import InvalidTicker
from service.core.tickers import normalize_ticker


@pytest.mark.parametrize(
    "raw, expected",
    [("aapl", "AAPL"), (" msft ", "MSFT"), ("^gspc", "^GSPC"), ("brk-b", "BRK-B"),
     ("BRK.B", "BRK.B"), ("eurusd=x", "EURUSD=X"), ("A", "A"), ("ABCDEFGHIJKLMNO", "ABCDEFGHIJKLMNO")],
)
def test_accepted_symbols_are_upper_cased(raw, expected):
    assert normalize_ticker(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "ABCDEFGHIJKLMNOP", "AAPL;DROP", "A A", "AAPL'", "../etc", "AAPL%", "ÄPPLE", "a/b",
     # Unicode's upper() makes these ASCII (IBM, FI, MSST): never another ticker's name.
     "ıbm", "ﬁ", "msſt",
     # Unicode's strip() removes these; they are no part of a symbol.
     "AAPL\u00a0", "\u2003AAPL", "AAPL\x1f", "AAPL\x00"],
)
def test_anything_else_is_rejected_with_a_clear_message(raw):
    with pytest.raises(InvalidTicker) as err:
        normalize_ticker(raw)
    assert str(err.value) == (
        f"invalid ticker {raw!r}: use 1-15 letters, digits, '.', '-', '^' or '='"
    )


def test_non_strings_are_rejected():
    with pytest.raises(InvalidTicker, match="ticker must be a string, got int"):
        normalize_ticker(123)  # type: ignore[arg-type]
