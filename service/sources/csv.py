"""User files of daily bars (CSV or Parquet, gzip ok) read into the canonical frame.

Accepted layouts:
- comma-separated text, UTF-8 (a UTF-8 byte-order mark is read past); a file separated by ';',
  tabs or '|' is refused whole, naming its separator (read at commas it was one column:
  "missing required columns"), and so is one in another encoding (Latin-1, UTF-16), naming
  its byte-order mark or the first byte that is no UTF-8: it is not guessed at;
- column names are matched ignoring case, spaces, underscores, hyphens, dots and the `*` that
  Yahoo's web export appends: `Date`, `Open`, `Adj Close`, `adj_close`, `AdjClose`, `Close*`,
  `Adj Close**`... `Symbol` is read as `ticker`; unknown columns are ignored;
- the ticker comes from a `ticker` column (multi-ticker files) or the `ticker` argument
  (`--ticker`); with both, every valid symbol in the column must equal the argument;
- dates are ISO (YYYY-MM-DD, optionally with a time; with a UTC offset the written date is
  kept: it names the exchange's wall time, and offsets may differ across a DST change) or
  slashed, m/d/Y or d/m/Y: the format is decided once for the whole column, from the values
  only one of them can read (a day past 12), m/d/Y where none is told apart; a column holding
  both kinds is refused whole (a d/m/Y file read row by row as m/d/Y stored January's prices
  on the first of other months). An unparseable date is kept as NaT so the validator rejects
  the row as `bad_date` instead of the whole file failing;
- a symbol is text as written: `NA`, `NULL` or `None` are tickers, not missing values (only
  the numeric columns read pandas' missing-value words);
- numbers are written plainly, with a decimal point: a value that is no number (`1,234.5`,
  `123,45`, `$12`) is kept as written, so the validator rejects the row as `not_a_number`
  (not `missing_field`, which an empty field is);
- in Parquet, an index level named as a column (yfinance's `Date` index, kept by
  `df.to_parquet()`) is read as that column;
- a yfinance `download()` frame of several tickers as saved (`to_csv()`: two header rows led by
  `Price` and `Ticker`, either order, then a `Date` row; `to_parquet()`: two column levels) is
  read as one row per ticker and date, a ticker's all-empty cells on a date (the wide frame's
  padding) dropped, its other price columns (Dividends, Stock Splits) ignored;
- a file without an adjusted close uses its close as adj_close (no split/dividend adjustment
  is invented).
Rows are returned as read (not validated); bad symbols stay as written so the validator counts
them as `invalid_ticker`, and so do numbers (`not_a_number`).
"""

from __future__ import annotations

import bz2
import codecs
import datetime as dt
import gzip
import lzma
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from service.core.bars import BAR_COLUMNS, NUMERIC_COLUMNS
from service.core.errors import InvalidBars, InvalidTicker, UnknownTicker
from service.core.tickers import normalize_ticker
from service.sources.validate import FULL_DATE, MISSING_WORDS, iso_dates

# Folded header (see _fold) -> canonical column.
COLUMN_ALIASES = {
    "ticker": "ticker",
    "symbol": "ticker",
    "date": "date",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "adjclose": "adj_close",
    "adjustedclose": "adj_close",
    "volume": "volume",
}
REQUIRED_COLUMNS = ("date", "open", "high", "low", "close", "volume")
# How _not_utf8 reads a file's text: the compressions pandas infers from these suffixes (the
# others it infers are not scanned: their message names no position); UTF-32's marks first
# (UTF-32-LE's begins with UTF-16-LE's).
TEXT_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
UNSCANNED_SUFFIXES = (".zip", ".zst", ".tar")
BYTE_ORDER_MARKS = {codecs.BOM_UTF32_LE: "UTF-32", codecs.BOM_UTF32_BE: "UTF-32",
                    codecs.BOM_UTF16_LE: "UTF-16", codecs.BOM_UTF16_BE: "UTF-16"}
# Separators other exports use (a European spreadsheet's ';', a tab), as the refusal names them.
OTHER_SEPARATORS = {";": "';'", "\t": "tabs", "|": "'|'"}
PARQUET_SUFFIXES = (".parquet", ".pq")
# yfinance's download() frames have two column levels, (Price, Ticker) by default or (Ticker,
# Price) with group_by="ticker", and the dates as the index; to_csv() writes the levels as two
# header rows led by their names, then a row led by the index's name ("Date").
WIDE_LEVEL_NAMES = ("price", "ticker")
_FOLD_RE = re.compile(r"[\s_\-.*]+")
_ISO_DATE = re.compile(r"\s*(\d{4}-\d{1,2}-\d{1,2})")
SLASH_FORMATS = ("%m/%d/%Y", "%d/%m/%Y")


def read_bars_file(path: Path | str, ticker: str | None = None) -> pd.DataFrame:
    """Read a CSV/Parquet bars file into `ticker, date, open, ..., volume` (not validated)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidBars(f"{path}: no such file")
    try:
        raw = _read_parquet(path) if path.suffix.lower() in PARQUET_SUFFIXES else _read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError, ValueError, EOFError,
            zlib.error) as exc:
        if isinstance(exc, InvalidBars):
            raise
        if isinstance(exc, UnicodeDecodeError):  # a ValueError: raw, it named no file position
            raise InvalidBars(f"{path}: {_not_utf8(path)}; save it as UTF-8") from exc
        # EOFError: a truncated .gz (uncaught, the CLI's click read it as Ctrl-D: "Aborted.").
        reason = f"the file ends early ({exc})" if isinstance(exc, EOFError) else str(exc)
        raise InvalidBars(f"{path}: cannot be read as a bars file: {reason}") from exc

    bars = pd.DataFrame({"ticker": _ticker_column(raw, ticker, path)})
    bars["date"] = _parse_dates(raw["date"], path)
    if "adj_close" not in raw:
        raw = raw.assign(adj_close=raw["close"])  # documented above: unadjusted close
    for col in NUMERIC_COLUMNS:
        bars[col] = _as_numbers(raw[col])
    return bars


class CsvSource:
    """A bars file as a BarSource (the file is read once, on first fetch)."""

    name = "csv"

    def __init__(self, path: Path | str, ticker: str | None = None):
        self.path = Path(path)
        self.ticker = ticker
        self._bars: pd.DataFrame | None = None

    def fetch(self, ticker: str, start: dt.date | None = None,
              end: dt.date | None = None) -> pd.DataFrame:
        """The file's rows for one ticker within [start, end] (inclusive), not yet validated."""
        if self._bars is None:
            self._bars = read_bars_file(self.path, self.ticker)
        bars = self._bars[self._bars["ticker"] == ticker]
        if bars.empty:
            raise UnknownTicker(f"unknown ticker {ticker!r}: the source returned no bars")
        if start is not None:
            bars = bars[bars["date"] >= pd.Timestamp(start)]
        if end is not None:
            bars = bars[bars["date"] <= pd.Timestamp(end)]
        return bars.loc[:, list(BAR_COLUMNS)].reset_index(drop=True)


def _fold(name: object) -> str:
    return _FOLD_RE.sub("", str(name)).lower()


def _canonical_names(columns, path: Path) -> dict[str, str]:
    """Map the file's column names to canonical ones; raise on missing or ambiguous columns."""
    names: dict[str, str] = {}
    for original in columns:
        canonical = COLUMN_ALIASES.get(_fold(original))
        if canonical is None:
            continue
        clash = next((o for o, c in names.items() if c == canonical), None)
        if clash is not None:
            raise InvalidBars(
                f"{path}: columns {clash!r} and {original!r} both name {canonical}")
        names[original] = canonical
    missing = [c for c in REQUIRED_COLUMNS if c not in names.values()]
    if missing:
        found = ", ".join(str(c) for c in columns)
        raise InvalidBars(
            f"{path}: missing required columns: {', '.join(missing)} (found: {found})")
    return names


def _read_csv(path: Path) -> pd.DataFrame:
    # The names as written: pandas renames a repeated one ("close", "close.1"), which would hide
    # the clash _canonical_names refuses. The names it maps are then unique, so pandas reads
    # them under these same names.
    written = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    header = written.iloc[0].tolist()
    skip = 0
    if header and str(header[0]).strip().lower().startswith("sep="):
        # Excel's separator hint, a line before the header: "sep=," is read past, another
        # separator refused as below
        hint = ",".join(str(c) for c in header).strip()[4:] or ","
        if hint[:1] != ",":
            raise _separated_by(path, OTHER_SEPARATORS.get(hint[:1], repr(hint[:1])),
                                " (its first line is Excel's separator hint)")
        skip = 1
        written = pd.read_csv(path, header=None, nrows=1, skiprows=1, dtype=str,
                              keep_default_na=False)
        header = written.iloc[0].tolist()
    if header and not skip and _fold(header[0]) in WIDE_LEVEL_NAMES:
        wide = _read_wide_csv(path)
        if wide is not None:
            return wide
    separator = _other_separator(header)
    if separator is not None:
        raise _separated_by(path, OTHER_SEPARATORS[separator])
    try:
        names = _canonical_names(header, path)
    except InvalidBars:
        if _has_nul_bytes(path):  # UTF-16/32 without a byte-order mark decodes as UTF-8
            raise InvalidBars(f"{path}: the file holds NUL bytes, as UTF-16 or UTF-32 text "
                              "without a byte-order mark does, not UTF-8; save it as UTF-8"
                              ) from None
        raise
    dtypes = {o: ("float64" if c in NUMERIC_COLUMNS else str) for o, c in names.items()}
    missing = {o: MISSING_WORDS for o, c in names.items() if c in NUMERIC_COLUMNS}
    options = {"usecols": list(names), "keep_default_na": False, "na_values": missing,
               "skiprows": skip}
    try:
        # Fast path: the C parser straight into float64.
        raw = pd.read_csv(path, dtype=dtypes, **options)
    except ValueError:
        # Text that is no number in a numeric column: read it as text; _as_numbers keeps it
        # as written so only the offending rows are rejected (not_a_number), not the file.
        raw = pd.read_csv(path, dtype=str, **options)
    return raw.rename(columns=names)


def _separated_by(path: Path, shown: str, why: str = "") -> InvalidBars:
    """The refusal of a file whose columns another separator than the comma divides."""
    return InvalidBars(f"{path}: the columns are separated by {shown}, not commas{why}; save "
                       "the file comma-separated, with a decimal point in numbers")


def _other_separator(header: list) -> str | None:
    """The separator of OTHER_SEPARATORS at which the header, read at commas, names more bar
    columns (two or more), else None. Read at commas such a file was one column, refused as
    'missing required columns: date, open, ...' beside the very names it asked for. It is not
    read at that separator: a ';' file writes decimal commas ('10,5'), not numbers here."""
    def named(cells) -> int:
        return len({COLUMN_ALIASES.get(_fold(str(c).strip().strip('"'))) for c in cells}
                   - {None})

    line = ",".join(str(c) for c in header)
    at_commas = named(header)
    return next((s for s in OTHER_SEPARATORS if named(line.split(s)) > max(at_commas, 1)),
                None)


def _not_utf8(path: Path) -> str:
    """Why a file pandas could not decode is no UTF-8 text: a UTF-16/32 byte-order mark, or
    where its first byte that is not UTF-8 lies (pandas' error counts from its read buffer,
    not the file; a compressed file's offset is in its text)."""
    if path.suffix.lower() in UNSCANNED_SUFFIXES:
        return "the file is not UTF-8 text"
    with _text_bytes(path) as fh:
        head = fh.read(4)
        for bom, name in BYTE_ORDER_MARKS.items():
            if head.startswith(bom):
                return (f"the file is {name} text (it starts with a {name} byte-order mark), "
                        "not UTF-8")
        fh.seek(0)
        offset = 0
        for number, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (f"the file is not UTF-8 text (byte 0x{line[exc.start]:02x} at offset "
                        f"{offset + exc.start}, line {number})")
            offset += len(line)
    return "the file is not UTF-8 text"


def _has_nul_bytes(path: Path) -> bool:
    """Whether the first KiB of the file's text holds a NUL (no CSV of bars does)."""
    if path.suffix.lower() in UNSCANNED_SUFFIXES:
        return False
    with _text_bytes(path) as fh:
        return b"\x00" in fh.read(1024)


def _text_bytes(path: Path):
    """The file's text as bytes, decompressed as pandas would (TEXT_OPENERS; else as is)."""
    return TEXT_OPENERS.get(path.suffix.lower(), open)(path, "rb")


def _read_parquet(path: Path) -> pd.DataFrame:
    raw = pd.read_parquet(path)
    if isinstance(raw.columns, pd.MultiIndex) and raw.columns.nlevels == 2:
        # yfinance's download() frame (WIDE_LEVEL_NAMES): its dates the index, or, saved
        # after reset_index(), a column of its own (("Date", "")): one with no ticker
        own = [c for c in raw.columns if c[1] == "" and _fold(c[0]) == "date"
               or c[0] == "" and _fold(c[1]) == "date"]
        if len(own) == 1:
            dates = raw.pop(own[0]).rename("date").reset_index(drop=True)
        else:
            dates = pd.Series(raw.index, name="date")
        return _long_from_wide(dates, raw.reset_index(drop=True), path)
    # df.to_parquet() keeps the frame's index, and yfinance's frames are indexed by their dates
    # (a DatetimeIndex named "Date"): an index level named as a bar column is that column, but
    # one that is also a column of that very name with the same values (set_index(...,
    # drop=False)), which is read once.
    levels = [n for n in raw.index.names if n is not None and _fold(n) in COLUMN_ALIASES
              and not (n in raw.columns and raw[n].reset_index(drop=True).equals(
                  raw.index.get_level_values(n).to_series().reset_index(drop=True)))]
    if levels:
        raw = raw.reset_index(level=levels, allow_duplicates=True)  # a clash: refused below
    # Any other index (a filtered frame's row labels) is dropped: read_bars_file's dates are
    # a Series, aligned by label to rows numbered 0..n-1 (a frame from row 2 on gave its
    # first two rows NaT and each later row the date of the row two before it).
    raw = raw.reset_index(drop=True)
    names = _canonical_names(raw.columns, path)
    return raw.loc[:, list(names)].rename(columns=names)


def _read_wide_csv(path: Path) -> pd.DataFrame | None:
    """A yfinance download() frame written by to_csv() (WIDE_LEVEL_NAMES): two header rows led
    by the levels' names, a row led by "Date", then one row per date with a column per (price,
    ticker); None when the first three rows are not that layout (read as a plain file then)."""
    try:
        head = pd.read_csv(path, header=None, nrows=3, dtype=str, keep_default_na=False)
    except pd.errors.ParserError:  # ragged first rows (a trailing comma): not that layout
        return None
    if len(head) < 3 or sorted(_fold(head.iat[i, 0]) for i in (0, 1)) != list(
            WIDE_LEVEL_NAMES) or _fold(head.iat[2, 0]) != "date" or any(head.iloc[2, 1:]):
        return None
    options = {"header": None, "skiprows": 3, "keep_default_na": False}
    try:
        try:  # fast path: the C parser straight into float64, as a plain file's
            body = pd.read_csv(path, dtype={i: (str if i == 0 else "float64")
                                            for i in range(head.shape[1])},
                               na_values={i: MISSING_WORDS for i in range(1, head.shape[1])},
                               **options)
        except ValueError:  # text that is no number: kept as written (not_a_number)
            body = pd.read_csv(path, dtype=str, **options)
    except pd.errors.EmptyDataError:  # the header only: no bars
        body = pd.DataFrame(columns=range(head.shape[1]), dtype=str)
    body = body.set_axis(range(body.shape[1]), axis=1)
    names = [_fold(head.iat[i, 0]) for i in (0, 1)]
    columns = pd.MultiIndex.from_arrays([head.iloc[0, 1:].tolist(), head.iloc[1, 1:].tolist()],
                                        names=names)
    values = body.iloc[:, 1:].set_axis(columns, axis=1)
    return _long_from_wide(body.iloc[:, 0].rename("date"), values, path)


def _long_from_wide(dates: pd.Series, wide: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Long rows (ticker, date, the bar columns) from a frame with a column per (price, ticker):
    the levels are told apart by their names (`Price`, `Ticker`, as yfinance names them; a
    ticker may be named LOW or OPEN), else the price level is the one naming every required
    column. Other price columns (`Dividends`, `Stock Splits`) are ignored, as in a plain file;
    a ticker without one of the required ones is refused naming it. A ticker's row of a date
    where all its cells are empty is dropped: a wide frame pads a ticker that did not trade that
    day, or that the source did not know; a row with some cells is kept, so the validator
    rejects it (a partial last day's missing volume, say)."""
    required = [c for c in REQUIRED_COLUMNS if c != "date"]  # the dates are the frame's own
    folded = [_fold(n) for n in wide.columns.names]
    if sorted(folded) == list(WIDE_LEVEL_NAMES):
        price = folded.index("price")
    else:
        price = next((i for i in (0, 1) if set(required) <= {
            COLUMN_ALIASES.get(_fold(v)) for v in wide.columns.get_level_values(i)}), None)
        if price is None:
            found = ", ".join(dict.fromkeys(str(v) for v in wide.columns.get_level_values(0)))
            raise InvalidBars(f"{path}: two column levels (price and ticker, as yfinance's "
                              "download() writes them), but neither names the bar columns "
                              f"(found: {found})")
    prices = wide.columns.get_level_values(price)
    tickers = wide.columns.get_level_values(1 - price)
    symbols = list(dict.fromkeys(tickers))
    canonical = np.array([COLUMN_ALIASES.get(_fold(v)) for v in prices], dtype=object)
    for symbol in symbols:  # each ticker's own columns, as a plain file's header is checked
        own = tickers == symbol
        named = [c for c in canonical[own] if c is not None]
        clash = next((c for c in named if named.count(c) > 1), None)
        lacking = [c for c in required if c not in named]
        if clash or lacking:
            why = (f"two columns name {clash}" if clash
                   else f"no {', '.join(lacking)} column")
            raise InvalidBars(f"{path}: {symbol}: {why} (its columns: "
                              f"{', '.join(str(p) for p in prices[own])})")
    known = np.array([c is not None for c in canonical])
    cells = wide.loc[:, known].set_axis(pd.MultiIndex.from_arrays(
        [canonical[known], np.asarray(tickers)[known]], names=["price", "ticker"]), axis=1)
    long = cells.stack(level="ticker", future_stack=True)  # (row, ticker) x price
    empty = long.isna()
    for column in long.columns:
        if long[column].dtype == object:
            text = long[column].astype(str).str.strip()
            missing = text.isin(MISSING_WORDS)
            empty[column] |= missing
            long[column] = long[column].where(~missing)
    long = long.loc[~empty.all(axis=1).to_numpy()]
    rows = long.index.get_level_values(0).to_numpy()
    order = np.lexsort((rows, pd.Index(symbols).get_indexer(long.index.get_level_values(1))))
    out = long.iloc[order].reset_index(drop=True)
    out.columns.name = None
    out.insert(0, "ticker", long.index.get_level_values(1).to_numpy()[order])
    out.insert(1, "date", dates.to_numpy()[rows[order]])
    return out


def _ticker_column(raw: pd.DataFrame, ticker: str | None, path: Path) -> np.ndarray:
    """Normalized symbols per row; invalid ones are left as written for the validator."""
    wanted = normalize_ticker(ticker) if ticker is not None else None
    if "ticker" not in raw:
        if wanted is None:
            raise InvalidBars(f"{path}: no ticker column; pass the ticker (--ticker)")
        return np.full(len(raw), wanted, dtype=object)
    codes, symbols = pd.factorize(raw["ticker"])
    normalized = np.array([_normalize_or_keep(s) for s in symbols] + [None], dtype=object)
    if wanted is not None:
        others = sorted({s for s in normalized[:-1]
                         if s != wanted and _is_valid(s)})
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise InvalidBars(
                f"{path}: ticker {wanted!r} was given but the ticker column also holds {shown}")
    return normalized[codes]  # code -1 (missing symbol) -> None


def _normalize_or_keep(symbol: object) -> object:
    try:
        return normalize_ticker(str(symbol))
    except InvalidTicker:
        return symbol


def _is_valid(symbol: object) -> bool:
    try:
        return normalize_ticker(symbol) == symbol
    except InvalidTicker:
        return False


def _parse_dates(raw: pd.Series, path: Path) -> pd.Series:
    """Trading dates from ISO or slashed text (or Parquet dates); failures become NaT."""
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = raw
    elif pd.api.types.infer_dtype(raw, skipna=True) in ("date", "datetime", "datetime64"):
        parsed = pd.to_datetime(raw, errors="coerce")
    else:
        text = raw.astype("string")
        parsed = _iso_wall_dates(text)
        slashed = parsed.isna() & text.notna()
        if slashed.any():
            parsed[slashed] = _slashed_dates(text[slashed], path)
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        # A stamp written with an offset names a local (exchange) wall time; keep its date.
        parsed = parsed.dt.tz_localize(None)
    return parsed.astype("datetime64[ns]").dt.normalize()


def _iso_wall_dates(text: pd.Series) -> pd.Series:
    """The written date of each value that is a whole ISO 8601 date or time (NaT else).

    A column whose stamps carry different UTC offsets (a file across a DST change), which
    iso_dates cannot parse into one dtype, is parsed in UTC for validity only, and each value
    keeps its written YYYY-MM-DD (naive or not).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pandas' "mixed time zones" notice
        try:
            parsed = iso_dates(text.astype(object))
        except ValueError:
            parsed = None
    if parsed is not None and pd.api.types.is_datetime64_any_dtype(parsed):
        return parsed
    whole = text.where(text.str.fullmatch(FULL_DATE).fillna(False).astype(bool))
    valid = pd.to_datetime(whole.astype(object), format="ISO8601", errors="coerce", utc=True)
    written = text.str.extract(_ISO_DATE, expand=False).astype(object)
    dates = pd.to_datetime(written, format="%Y-%m-%d", errors="coerce")
    return dates.where(valid.notna().to_numpy(), pd.NaT)


def _slashed_dates(text: pd.Series, path: Path) -> pd.Series:
    """m/d/Y or d/m/Y, one format for the whole column (the module docstring)."""
    values = text.astype(object)
    mdy, dmy = (pd.to_datetime(values, format=f, errors="coerce") for f in SLASH_FORMATS)
    only_mdy, only_dmy = mdy.notna() & dmy.isna(), dmy.notna() & mdy.isna()
    if only_mdy.any() and only_dmy.any():
        raise InvalidBars(
            f"{path}: the date column mixes month/day/year ({values[only_mdy].iloc[0]!r}) and "
            f"day/month/year ({values[only_dmy].iloc[0]!r}) dates; write ISO dates (YYYY-MM-DD)")
    return dmy if only_dmy.any() else mdy


def _as_numbers(column: pd.Series) -> np.ndarray:
    """float64 values; where text is no number, object values with that text as written (the
    validator's not_a_number; a missing value is NaN, its missing_field)."""
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    unread = np.isnan(values) & column.notna().to_numpy()
    if not unread.any():
        return values
    kept = values.astype(object)
    kept[unread] = column.to_numpy(dtype=object)[unread]
    return kept
