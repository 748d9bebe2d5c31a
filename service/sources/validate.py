"""The one validator every source's output passes: drop bad rows, count each under one reason.

Rules, checked in REJECT_REASONS order; a row is counted under the FIRST rule it fails, so
`read == len(bars) + sum(rejected.values())` always holds:

- invalid_ticker       the `ticker` column (when present) is empty or not a valid symbol
- bad_date             the date is missing or was unparseable (NaT); in text, only a whole
                       YYYY-MM-DD date (optionally with a time) is ISO: a partial or compact one
                       ('2017', '2017-12', '20171201') would name the first of a month or year
- future_date          dated after `today` (the caller's clock; default the UTC date now): no
                       session has happened there yet. A bar dated today is kept: a session in
                       progress or just closed (the yfinance source holds back today's until it
                       settles; a file's partial last day is corrected by the next ingest)
- weekend_date         dated a Saturday or a Sunday: no session of the exchanges served (US) is
                       held then; a timezone slip upstream, or a d/m/Y date read as m/d/Y
- missing_field        NaN/empty (or one of pandas' missing-value words: MISSING_WORDS) or ±inf
                       in open/high/low/close/adj_close/volume
- not_a_number         text there that is no number: a thousands separator ('1,234.5'), a
                       decimal comma ('123,45'), a currency sign, junk ('abc'); it is not
                       guessed at ('1,234' is 1234 in one locale, 1.234 in another)
- non_positive_price   open, high, low, close or adj_close <= 0
- implausible_price    open, high, low, close or adj_close above MAX_PRICE (finite, but no share
                       trades there; the features' squares would overflow float64 near 1e154)
- high_below_low       high < low
- open_outside_range   open outside [low, high] by more than a relative PRICE_TOLERANCE
- close_outside_range  close outside [low, high] by more than a relative PRICE_TOLERANCE
- negative_volume      volume < 0 (zero volume is a real, if quiet, session)
- implausible_volume   volume above MAX_VOLUME (finite, but no session trades that many shares;
                       past 2^63 it would not even fit the bars table's integer column)
- duplicate_date       an earlier row for the same (ticker,) date; the LAST one is kept

Unsorted input is sorted by (ticker,) date, not rejected: row order carries no meaning in a
file or an upstream frame. Duplicates are judged among rows that passed every other rule, so a
broken correction row cannot knock out a good bar. Open/close within the tolerance are clipped
into [low, high] so the output invariant low <= open, close <= high holds exactly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from service.core.bars import BAR_COLUMNS, NUMERIC_COLUMNS, PRICE_COLUMNS
from service.core.errors import InvalidBars
from service.core.tickers import NAME_PATTERN, TICKER_PATTERN

REJECT_REASONS = (
    "invalid_ticker",
    "bad_date",
    "future_date",
    "weekend_date",
    "missing_field",
    "not_a_number",
    "non_positive_price",
    "implausible_price",
    "high_below_low",
    "open_outside_range",
    "close_outside_range",
    "negative_volume",
    "implausible_volume",
    "duplicate_date",
)

# Upstream prices are rounded (to cents, or to 4 decimals for adjusted series); an open or close
# past high/low by less than this relative amount is rounding, not a broken bar.
PRICE_TOLERANCE = 1e-6
# 1,000 x the dearest share ever quoted (about $10^6): above it a price is a unit or parse error.
MAX_PRICE = 1e9
# The most shares a session may trade: far above any real stock's day (the shared data's largest
# is 6.2e8, VZ) and far below the 2^63 ≈ 9.2e18 the bars table's BIGINT holds.
MAX_VOLUME = 1e15
# pandas' default missing-value words: such text is a missing field, not one that is no number.
MISSING_WORDS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                 "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


@dataclass(frozen=True)
class ValidationResult:
    """Valid bars plus the reconciliation: read == len(bars) + sum(rejected.values())."""

    bars: pd.DataFrame
    read: int
    rejected: dict[str, int]  # reason -> count, only reasons that occurred, in REJECT_REASONS order
    # reason -> the input position (0-based) of its first rejected row: where to look
    first: dict[str, int] = field(default_factory=dict)

    @property
    def stored_candidates(self) -> int:
        """Rows that passed validation (what a caller may store)."""
        return len(self.bars)

    @property
    def n_rejected(self) -> int:
        """Rows dropped, over all reasons."""
        return sum(self.rejected.values())

    def summary(self) -> str:
        """Human summary, e.g. 'rejected 538 (missing_field=538)'."""
        if not self.n_rejected:
            return "rejected 0"
        reasons = ", ".join(f"{reason}={n}" for reason, n in self.rejected.items())
        return f"rejected {self.n_rejected} ({reasons})"


def validate_bars(frame: pd.DataFrame, today: dt.date | None = None) -> ValidationResult:
    """Validate one ticker's bars or a multi-ticker frame (with a `ticker` column); a bar
    dated after `today` (default: the UTC date now) is a future_date."""
    missing = [c for c in BAR_COLUMNS if c not in frame.columns]
    if missing:
        raise InvalidBars(f"bars are missing required columns: {', '.join(missing)}")
    has_ticker = "ticker" in frame.columns
    read = len(frame)

    dates = _as_trading_dates(frame["date"])
    # One int8 code per row: 0 = kept so far, k = index of the first failed rule + 1.
    reason = np.zeros(read, dtype=np.int8)

    def flag(rule: str, failed: np.ndarray) -> None:
        reason[(reason == 0) & failed] = REJECT_REASONS.index(rule) + 1

    if has_ticker:
        # Check each distinct symbol once instead of running a regex over every row.
        ticker_codes, symbols = pd.factorize(frame["ticker"], use_na_sentinel=True)
        text = pd.Series(symbols, dtype=object).astype(str)
        symbol_ok = text.str.fullmatch(TICKER_PATTERN) & text.str.contains(NAME_PATTERN)
        ok = np.append(symbol_ok.to_numpy(dtype=bool), False)  # code -1 (NA) -> invalid
        flag("invalid_ticker", ~ok[ticker_codes])
    flag("bad_date", np.isnat(dates))
    # The UTC date by default: no exchange dates a closed session past it (zones reach UTC+14;
    # only a session still trading east of UTC can be dated tomorrow there).
    today = today if today is not None else dt.datetime.now(dt.UTC).date()
    flag("future_date", dates > np.datetime64(today, "ns"))
    # numpy's day 0 (1970-01-01) was a Thursday: (days + 3) % 7 is Monday = 0 .. Sunday = 6.
    weekday = (dates.astype("datetime64[D]").astype(np.int64) + 3) % 7
    flag("weekend_date", ~np.isnat(dates) & (weekday >= 5))

    values = {c: _as_float(frame[c]) for c in NUMERIC_COLUMNS}
    unreadable = {c: _not_numbers(frame[c], values[c]) for c in NUMERIC_COLUMNS}
    # ±inf ("inf", "Infinity" parse as numbers) is as unusable as a missing value.
    flag("missing_field", np.logical_or.reduce(
        [~np.isfinite(values[c]) & ~unreadable[c] for c in NUMERIC_COLUMNS]))
    flag("not_a_number", np.logical_or.reduce(list(unreadable.values())))
    flag("non_positive_price", np.logical_or.reduce([values[c] <= 0 for c in PRICE_COLUMNS]))
    flag("implausible_price",
         np.logical_or.reduce([values[c] > MAX_PRICE for c in PRICE_COLUMNS]))
    low, high = values["low"], values["high"]
    flag("high_below_low", high < low)
    lo_bound, hi_bound = low * (1 - PRICE_TOLERANCE), high * (1 + PRICE_TOLERANCE)
    for col in ("open", "close"):
        flag(f"{col}_outside_range", (values[col] < lo_bound) | (values[col] > hi_bound))
    flag("negative_volume", values["volume"] < 0)
    flag("implausible_volume", values["volume"] > MAX_VOLUME)

    # Sort survivors by (ticker,) date; lexsort is stable, so among equal keys the input order
    # survives and "keep the last occurrence" means the last one upstream sent.
    kept = np.flatnonzero(reason == 0)
    day = dates[kept].view(np.int64)
    if has_ticker:
        # Rank tickers alphabetically so the output is sorted by symbol, not first appearance.
        codes = ticker_codes[kept]
        rank = np.empty(len(symbols), dtype=np.int64)
        rank[np.argsort(np.asarray(symbols, dtype=str), kind="stable")] = np.arange(len(symbols))
        order = np.lexsort((day, rank[codes]))
        same_key = (np.diff(rank[codes][order]) == 0) & (np.diff(day[order]) == 0)
    else:
        order = np.argsort(day, kind="stable")
        same_key = np.diff(day[order]) == 0
    kept = kept[order]
    # A row is a duplicate when the next row (in sorted order) has the same key.
    duplicate = np.zeros(len(kept), dtype=bool)
    duplicate[:-1] = same_key
    reason[kept[duplicate]] = REJECT_REASONS.index("duplicate_date") + 1
    kept = kept[~duplicate]

    columns = {"ticker": frame["ticker"].to_numpy(dtype=object)[kept]} if has_ticker else {}
    columns["date"] = dates[kept]
    for c in NUMERIC_COLUMNS:
        columns[c] = values[c][kept]
    bars = pd.DataFrame(columns)
    low, high = bars["low"].to_numpy(), bars["high"].to_numpy()
    bars["open"] = np.clip(bars["open"].to_numpy(), low, high)
    bars["close"] = np.clip(bars["close"].to_numpy(), low, high)

    counts = np.bincount(reason, minlength=len(REJECT_REASONS) + 1)
    rejected = {r: int(counts[i + 1]) for i, r in enumerate(REJECT_REASONS) if counts[i + 1]}
    first = {r: int(np.argmax(reason == i + 1)) for i, r in enumerate(REJECT_REASONS)
             if counts[i + 1]}
    return ValidationResult(bars=bars, read=read, rejected=rejected, first=first)


# A date in text: year, month and day (YYYY-MM-DD; a one-digit month or day and blanks around
# it are read as before), optionally followed by a time. pandas' ISO 8601 parser also
# takes '2017', '2017-12' and '20171201' (the first of a year or month): not a bar's date.
FULL_DATE = r"\s*\d{4}-\d{1,2}-\d{1,2}(?:[T ].*)?\s*"


def iso_dates(raw: pd.Series) -> pd.Series:
    """ISO 8601 dates of a column (text or dates); a text value that is not a whole
    YYYY-MM-DD date, or is unparseable, becomes NaT."""
    parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce")
    if pd.api.types.infer_dtype(raw, skipna=True) in ("string", "mixed"):
        # Only text is held to the shape: .str gives NaN for a missing or non-text value.
        whole = raw.str.fullmatch(FULL_DATE, na=True).astype(bool)
        parsed = parsed.where(whole, pd.NaT)
    return parsed


def _as_trading_dates(column: pd.Series) -> np.ndarray:
    """datetime64[ns] trading dates (midnight); unparseable values become NaT."""
    if not pd.api.types.is_datetime64_any_dtype(column):
        column = iso_dates(column)
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        # A tz-aware stamp is ambiguous here: which exchange's calendar day is it? Sources
        # must convert to the exchange trading date themselves.
        raise InvalidBars("bar dates must be tz-naive exchange trading dates, got "
                          f"tz-aware dates ({column.dtype})")
    return column.astype("datetime64[ns]").dt.normalize().to_numpy()


def _as_float(column: pd.Series) -> np.ndarray:
    """float64 values; text that is no number becomes NaN (see _not_numbers)."""
    if not pd.api.types.is_numeric_dtype(column):
        column = pd.to_numeric(column, errors="coerce")
    return column.to_numpy(dtype=np.float64, na_value=np.nan)


def _not_numbers(column: pd.Series, values: np.ndarray) -> np.ndarray:
    """Where `column` holds text that _as_float could not read and that is no missing value
    (blank or a MISSING_WORDS word): the not_a_number rows. A numeric column holds none."""
    unreadable = np.zeros(len(column), dtype=bool)
    if pd.api.types.is_numeric_dtype(column):
        return unreadable
    candidates = np.flatnonzero(np.isnan(values) & column.notna().to_numpy())
    text = column.iloc[candidates].astype(str).str.strip()
    unreadable[candidates] = ~text.isin(MISSING_WORDS).to_numpy()
    return unreadable
