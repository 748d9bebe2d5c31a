"""User bar files: CSV/Parquet/gzip, forgiving headers, ISO or m/d/Y dates, counted bad rows."""

from __future__ import annotations

import datetime as dt
import gzip

import numpy as np
import pandas as pd
import pytest

from service.core.config import Settings
from service.core.errors import InvalidBars, SourceNotConfigured, SourceUnavailable, UnknownTicker
from service.sources.base import BarSource, NullSource, make_source
from service.sources.csv import CsvSource, read_bars_file
from service.sources.validate import validate_bars

ROWS = [
    ("2024-03-04", 176.15, 176.90, 173.79, 175.10, 174.88, 81510100),
    ("2024-03-05", 170.76, 172.04, 169.62, 170.12, 169.90, 95132400),
    ("2024-03-06", 171.06, 171.24, 168.68, 169.12, 168.90, 68587700),
]
CANONICAL = ["ticker", "date", "open", "high", "low", "close", "adj_close", "volume"]


def write_text(path, header: str, rows: list[str]) -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def plain_rows(date_format: str = "%Y-%m-%d", ticker: str | None = None) -> list[str]:
    lines = []
    for day, *values in ROWS:
        stamp = dt.date.fromisoformat(day).strftime(date_format)
        fields = ([ticker] if ticker is not None else []) + [stamp, *map(str, values)]
        lines.append(",".join(fields))
    return lines


def expected_bars(ticker: str = "AAPL") -> pd.DataFrame:
    frame = pd.DataFrame(ROWS, columns=CANONICAL[1:])
    frame["date"] = pd.to_datetime(frame["date"])
    frame = frame.astype({c: "float64" for c in CANONICAL[2:]})
    frame.insert(0, "ticker", ticker)
    return frame


@pytest.mark.parametrize(
    "header",
    [
        "Date,Open,High,Low,Close,Adj Close,Volume",
        "date,open,high,low,close,adj_close,volume",
        "DATE,OPEN,HIGH,LOW,CLOSE,AdjClose,VOLUME",
        "Date,Open,High,Low,Close*,Adj Close**,Volume",  # Yahoo's web export
        " Date , Open ,High,Low,Close,adj-close,Volume ",
    ],
)
def test_column_names_are_matched_ignoring_case_spaces_and_punctuation(tmp_path, header):
    path = write_text(tmp_path / "aapl.csv", header, plain_rows())
    pd.testing.assert_frame_equal(read_bars_file(path, ticker="AAPL"), expected_bars())


def test_unknown_columns_are_ignored(tmp_path):
    path = write_text(tmp_path / "aapl.csv", "Date,Open,High,Low,Close,Adj Close,Volume,Note",
                      [line + ",x" for line in plain_rows()])
    pd.testing.assert_frame_equal(read_bars_file(path, ticker="aapl"), expected_bars())


def test_month_day_year_dates(tmp_path):
    path = write_text(tmp_path / "aapl.csv", "Date,Open,High,Low,Close,Adj Close,Volume",
                      plain_rows("%m/%d/%Y"))
    pd.testing.assert_frame_equal(read_bars_file(path, ticker="AAPL"), expected_bars())


def test_iso_and_month_day_year_dates_may_mix(tmp_path):
    rows = plain_rows()
    rows[1] = plain_rows("%m/%d/%Y")[1]
    path = write_text(tmp_path / "aapl.csv", "Date,Open,High,Low,Close,Adj Close,Volume", rows)
    pd.testing.assert_frame_equal(read_bars_file(path, ticker="AAPL"), expected_bars())


def test_ticker_column_is_normalized(tmp_path):
    path = write_text(tmp_path / "bars.csv", "Symbol,Date,Open,High,Low,Close,Adj Close,Volume",
                      plain_rows(ticker=" aapl"))
    pd.testing.assert_frame_equal(read_bars_file(path), expected_bars())


def test_ticker_column_that_agrees_with_the_option_is_accepted(tmp_path):
    path = write_text(tmp_path / "bars.csv", "ticker,date,open,high,low,close,adj_close,volume",
                      plain_rows(ticker="AAPL"))
    pd.testing.assert_frame_equal(read_bars_file(path, ticker="aapl"), expected_bars())


def test_ticker_column_that_disagrees_with_the_option_is_an_error(tmp_path):
    rows = plain_rows(ticker="AAPL")[:2] + plain_rows(ticker="MSFT")[2:]
    path = write_text(tmp_path / "bars.csv", "ticker,date,open,high,low,close,adj_close,volume",
                      rows)
    with pytest.raises(InvalidBars) as err:
        read_bars_file(path, ticker="AAPL")
    assert str(err.value) == (
        f"{path}: ticker 'AAPL' was given but the ticker column also holds MSFT")


def test_no_ticker_anywhere_is_an_error(tmp_path):
    path = write_text(tmp_path / "bars.csv", "date,open,high,low,close,adj_close,volume",
                      plain_rows())
    with pytest.raises(InvalidBars) as err:
        read_bars_file(path)
    assert str(err.value) == f"{path}: no ticker column; pass the ticker (--ticker)"


def test_without_adjusted_close_the_close_is_used(tmp_path):
    path = write_text(tmp_path / "bars.csv", "date,open,high,low,close,volume",
                      [",".join(line.split(",")[:5] + line.split(",")[6:])
                       for line in plain_rows()])
    bars = read_bars_file(path, ticker="AAPL")
    assert bars["adj_close"].tolist() == [175.10, 170.12, 169.12]
    assert bars["adj_close"].tolist() == bars["close"].tolist()


def test_gzip_csv(tmp_path):
    path = tmp_path / "aapl.csv.gz"
    text = "\n".join(["Date,Open,High,Low,Close,Adj Close,Volume", *plain_rows()]) + "\n"
    with gzip.open(path, "wt") as fh:
        fh.write(text)
    pd.testing.assert_frame_equal(read_bars_file(path, ticker="AAPL"), expected_bars())


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet(tmp_path, suffix):
    frame = expected_bars().rename(columns={"adj_close": "Adj Close", "date": "Date"})
    frame["volume"] = frame["volume"].astype(np.int64)
    path = tmp_path / f"bars{suffix}"
    frame.to_parquet(path)
    pd.testing.assert_frame_equal(read_bars_file(path), expected_bars())


def test_parquet_with_date_objects(tmp_path):
    frame = expected_bars()
    frame["date"] = frame["date"].dt.date  # object column of datetime.date
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path)
    pd.testing.assert_frame_equal(read_bars_file(path), expected_bars())


def yfinance_frame(tz: str | None = None) -> pd.DataFrame:
    """expected_bars() as yfinance's download/history gives them: indexed by a "Date"."""
    frame = expected_bars().drop(columns="ticker").rename(columns=str.title).rename(
        columns={"Adj_Close": "Adj Close"})
    dates = pd.DatetimeIndex(frame.pop("Date"), name="Date")
    return frame.set_index(dates.tz_localize(tz) if tz else dates)


@pytest.mark.parametrize("tz", [None, "America/New_York"])  # download's, history()'s
def test_parquet_indexed_by_its_dates_as_yfinance_writes_it(tmp_path, tz):
    """yfinance's frame saved with df.to_parquet() keeps its "Date" index: it was refused as
    "missing required columns: date (found: Open, High, Low, Close, Adj Close, Volume)"."""
    path = tmp_path / "aapl.parquet"
    yfinance_frame(tz).to_parquet(path)
    pd.testing.assert_frame_equal(read_bars_file(path, ticker="AAPL"), expected_bars())


def test_parquet_indexed_by_ticker_and_date(tmp_path):
    path = tmp_path / "bars.parquet"
    expected_bars().set_index(["ticker", "date"]).to_parquet(path)
    pd.testing.assert_frame_equal(read_bars_file(path), expected_bars())


def test_parquet_with_a_date_index_and_a_date_column_is_the_ambiguity_error(tmp_path):
    path = tmp_path / "both.parquet"
    yfinance_frame().assign(date=pd.Timestamp("2024-01-02")).to_parquet(path)
    with pytest.raises(InvalidBars) as err:
        read_bars_file(path, ticker="AAPL")
    assert str(err.value) == f"{path}: columns 'Date' and 'date' both name date"


def download_frame(order: tuple[str, str]) -> pd.DataFrame:
    """What yfinance.download(["AAPL", "MSFT", "ZZZZ"], auto_adjust=False) gives: a column per
    (Price, Ticker) (group_by="ticker": (Ticker, Price)), a "Date" index; MSFT is AAPL's bars
    doubled with its last day partial (no volume yet), ZZZZ (unknown upstream) all NaN."""
    aapl = yfinance_frame()
    msft = aapl * 2.0
    msft.iloc[-1, msft.columns.get_loc("Volume")] = np.nan
    zzzz = aapl * np.nan
    parts = {"AAPL": aapl, "MSFT": msft, "ZZZZ": zzzz}
    frame = pd.concat(parts, axis=1, names=["Ticker", "Price"])  # (Ticker, Price)
    if order == ("Price", "Ticker"):
        frame = frame.swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    return frame


def download_bars() -> pd.DataFrame:
    """download_frame() read as bars: AAPL's, then MSFT's (its partial day kept: the
    validator's missing_field), ZZZZ's padding dropped."""
    msft = expected_bars("MSFT")
    msft[CANONICAL[2:]] *= 2.0
    msft.loc[msft.index[-1], "volume"] = np.nan
    return pd.concat([expected_bars("AAPL"), msft], ignore_index=True)


@pytest.mark.parametrize("order", [("Price", "Ticker"), ("Ticker", "Price")])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_yfinance_download_frame_saved_as_is_reads_one_row_per_ticker_and_date(
        tmp_path, order, suffix):
    """df.to_csv() of yf.download()'s frame writes its two column levels as two header rows and
    a "Date" row; to_parquet() keeps the levels: both were refused as "missing required
    columns" (the CSV's found: Price, Adj Close, ...). A ticker's all-empty cells (the wide
    frame's padding for a symbol unknown upstream) are no rows; a partial day is kept."""
    path = tmp_path / f"download{suffix}"
    frame = download_frame(order)
    if suffix == ".csv":
        frame.to_csv(path)
        assert path.read_text().splitlines()[2].startswith("Date,,")  # the layout tested
    else:
        frame.to_parquet(path)
    bars = read_bars_file(path)
    pd.testing.assert_frame_equal(bars, download_bars(), check_dtype=False)
    result = validate_bars(bars)
    assert (result.read, result.rejected) == (6, {"missing_field": 1})


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_download_is_read_by_its_level_names_with_other_price_columns_ignored(tmp_path,
                                                                                 suffix):
    """The levels were told apart by their values, so a group_by="ticker" download of LOW
    (a shared-dataset ticker) or OPEN took the ticker level for the prices and was refused;
    actions=True's Dividends and Stock Splits refused the frame whole (a plain file ignores
    unknown columns). A review of the change."""
    frame = yfinance_frame().assign(Dividends=0.0, **{"Stock Splits": 0.0})
    wide = pd.concat({"LOW": frame, "OPEN": frame * 2.0}, axis=1, names=["Ticker", "Price"])
    path = tmp_path / f"low{suffix}"
    if suffix == ".csv":
        wide.to_csv(path)
    else:
        wide.to_parquet(path)
    doubled = expected_bars("OPEN")
    doubled[CANONICAL[2:]] *= 2.0
    pd.testing.assert_frame_equal(read_bars_file(path),
                                  pd.concat([expected_bars("LOW"), doubled], ignore_index=True),
                                  check_dtype=False)


def test_parquet_dates_as_both_index_and_column_and_a_download_after_reset_index(tmp_path):
    """set_index("Date", drop=False) was "columns 'Date' and 'Date' both name date"; a download
    saved after reset_index() (its dates a column ("Date", "")) was refused (a review)."""
    both = tmp_path / "both.parquet"
    yfinance_frame().reset_index().set_index("Date", drop=False).to_parquet(both)
    pd.testing.assert_frame_equal(read_bars_file(both, ticker="AAPL"), expected_bars())
    flat = tmp_path / "flat.parquet"
    download_frame(("Price", "Ticker")).reset_index().to_parquet(flat)
    pd.testing.assert_frame_equal(read_bars_file(flat), download_bars(), check_dtype=False)


def test_excels_separator_hint_line_is_read_past_or_names_the_separator(tmp_path):
    """Excel writes "sep=;" (or "sep=,") before the header; it was "missing required columns
    (found: sep=;)" (a review)."""
    header = "Date,Open,High,Low,Close,Adj Close,Volume"
    comma = write_text(tmp_path / "comma.csv", "sep=,\n" + header, plain_rows())
    pd.testing.assert_frame_equal(read_bars_file(comma, ticker="AAPL"), expected_bars())
    semi = write_text(tmp_path / "semi.csv", "sep=;\n" + header.replace(",", ";"),
                      [r.replace(",", ";") for r in plain_rows()])
    with pytest.raises(InvalidBars) as err:
        read_bars_file(semi, ticker="AAPL")
    assert str(err.value) == (f"{semi}: the columns are separated by ';', not commas (its first "
                              "line is Excel's separator hint); save the file comma-separated, "
                              "with a decimal point in numbers")


def test_a_plain_file_led_by_ticker_with_trailing_commas_still_reads(tmp_path):
    """Its first three rows were read as a possible download's header, and a trailing comma
    there made that read a tokenizing error that refused the file (a review of the change)."""
    plain = write_text(tmp_path / "plain.csv", "Ticker,Date,Open,High,Low,Close,Adj Close,Volume",
                       plain_rows(ticker="AAPL"))
    ragged = write_text(tmp_path / "ragged.csv",
                        "Ticker,Date,Open,High,Low,Close,Adj Close,Volume",
                        [row + "," for row in plain_rows(ticker="AAPL")])
    pd.testing.assert_frame_equal(read_bars_file(ragged), read_bars_file(plain))


def test_a_download_saved_without_rows_reads_as_no_bars(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("Price,Close,High,Low,Open,Volume\nTicker,AAPL,AAPL,AAPL,AAPL,AAPL\n"
                    "Date,,,,,\n")
    bars = read_bars_file(path)
    assert len(bars) == 0 and list(bars.columns) == CANONICAL


def test_a_download_frame_whose_levels_name_no_bar_columns_is_refused_naming_them(tmp_path):
    path = tmp_path / "download.csv"
    path.write_text("Price,Bid,Ask\nTicker,AAPL,AAPL\nDate,,\n2024-03-04,1,2\n")
    with pytest.raises(InvalidBars) as err:
        read_bars_file(path)
    assert str(err.value) == (f"{path}: AAPL: no open, high, low, close, volume column (its "
                              "columns: Bid, Ask)")


@pytest.mark.parametrize("rows", [slice(1, None), [0, 2]])  # a frame sliced, filtered
def test_parquet_of_a_frame_with_other_row_labels_keeps_each_row_its_date(tmp_path, rows):
    """The dates were aligned by row label: a frame from its second row on read the first
    row's date as NaT and the second row's prices under the first row's date."""
    path = tmp_path / "bars.parquet"
    expected_bars().iloc[rows].to_parquet(path)
    pd.testing.assert_frame_equal(read_bars_file(path),
                                  expected_bars().iloc[rows].reset_index(drop=True))


def test_missing_column_is_an_error_naming_it(tmp_path):
    path = write_text(tmp_path / "bars.csv", "Date,Open,High,Close,Adj Close",
                      ["2024-03-04,176.15,176.90,175.10,174.88"])
    with pytest.raises(InvalidBars) as err:
        read_bars_file(path, ticker="AAPL")
    assert str(err.value) == (f"{path}: missing required columns: low, volume "
                              "(found: Date, Open, High, Close, Adj Close)")


def test_two_columns_with_one_meaning_is_an_error(tmp_path):
    path = write_text(tmp_path / "bars.csv", "Date,Open,High,Low,Close,Adj Close,adj_close,Volume",
                      ["2024-03-04,176.15,176.90,173.79,175.10,174.88,174.88,81510100"])
    with pytest.raises(InvalidBars) as err:
        read_bars_file(path, ticker="AAPL")
    assert str(err.value) == f"{path}: columns 'Adj Close' and 'adj_close' both name adj_close"


def test_missing_and_empty_files_are_errors(tmp_path):
    with pytest.raises(InvalidBars) as err:
        read_bars_file(tmp_path / "nope.csv", ticker="AAPL")
    assert str(err.value) == f"{tmp_path / 'nope.csv'}: no such file"
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InvalidBars) as err:
        read_bars_file(empty, ticker="AAPL")
    assert str(err.value) == (
        f"{empty}: cannot be read as a bars file: No columns to parse from file")


def test_a_truncated_gzip_file_is_an_error_that_says_so(tmp_path):
    """A .csv.gz cut short raised EOFError, which the CLI's click took for Ctrl-D ("Aborted.")."""
    import gzip

    whole = gzip.compress(b"ticker,date,open,high,low,close,adj_close,volume\n"
                          + b"AAPL,2017-12-04,1,2,0.5,1.5,1.5,100\n" * 200)
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidBars) as err:
        read_bars_file(cut)
    assert str(err.value).startswith(f"{cut}: cannot be read as a bars file: the file ends early")


def test_each_malformed_row_kind_is_counted_under_its_reason(tmp_path):
    header = "ticker,date,open,high,low,close,adj_close,volume"
    rows = [
        "AAPL,2024-03-04,176.15,176.90,173.79,175.10,174.88,81510100",  # good
        "AAPL,2024-03-05,170.76,172.04,169.62,170.12,169.90,95132400",  # good
        "AAPL,2024-03-05,170.76,172.04,169.62,170.20,169.98,95132999",  # correction: kept
        "AAPL,2024-03-06,171.06,171.24,168.68,169.12,168.90,68587700",  # good
        "bad ticker!,2024-03-07,169.15,170.73,168.49,169.00,168.78,71765100",
        ",2024-03-07,169.15,170.73,168.49,169.00,168.78,71765100",  # empty ticker
        "AAPL,2024-13-45,169.15,170.73,168.49,169.00,168.78,71765100",  # bad date
        "AAPL,,169.15,170.73,168.49,169.00,168.78,71765100",  # empty date
        "AAPL,2024-03-08,168.99,173.70,168.94,,170.51,76267000",  # empty field
        "AAPL,2024-03-11,172.94,174.38,172.05,abc,172.53,60139500",  # junk number
        "AAPL,2024-03-12,0,174.03,171.01,173.23,173.01,59825400",  # zero price
        "AAPL,2024-03-13,172.77,170.00,172.36,171.13,170.91,52488700",  # high < low
        "AAPL,2024-03-14,175.00,174.31,172.05,173.00,172.78,72913500",  # open > high
        "AAPL,2024-03-15,171.17,172.62,170.29,170.00,172.40,121136800",  # close < low
        "AAPL,2024-03-18,175.57,177.71,173.52,173.72,173.50,-1",  # negative volume
    ]
    path = write_text(tmp_path / "bars.csv", header, rows)
    result = validate_bars(read_bars_file(path))
    assert result.read == 15
    assert result.rejected == {
        "invalid_ticker": 2, "bad_date": 2, "missing_field": 1, "not_a_number": 1,
        "non_positive_price": 1,
        "high_below_low": 1, "open_outside_range": 1, "close_outside_range": 1,
        "negative_volume": 1, "duplicate_date": 1}
    assert result.read == result.stored_candidates + result.n_rejected
    assert result.bars["date"].dt.strftime("%Y-%m-%d").tolist() == [
        "2024-03-04", "2024-03-05", "2024-03-06"]
    assert result.bars["close"].tolist() == [175.10, 170.20, 169.12]


def test_csv_source_serves_one_ticker_within_an_inclusive_range(tmp_path):
    rows = plain_rows(ticker="AAPL") + plain_rows(ticker="MSFT")
    path = write_text(tmp_path / "bars.csv", "ticker,date,open,high,low,close,adj_close,volume",
                      rows)
    source = CsvSource(path)
    assert isinstance(source, BarSource) and source.name == "csv"
    bars = source.fetch("MSFT", dt.date(2024, 3, 5), dt.date(2024, 3, 6))
    assert list(bars.columns) == CANONICAL[1:]
    assert bars["date"].dt.strftime("%Y-%m-%d").tolist() == ["2024-03-05", "2024-03-06"]
    assert len(source.fetch("AAPL")) == 3
    assert source.fetch("AAPL", start=dt.date(2024, 3, 7)).empty  # known ticker, empty range
    with pytest.raises(UnknownTicker) as err:
        source.fetch("NVDA")
    assert str(err.value) == "unknown ticker 'NVDA': the source returned no bars"


def test_null_source_always_fails_cleanly():
    source = make_source(Settings(source="none"))
    assert isinstance(source, NullSource) and isinstance(source, BarSource)
    with pytest.raises(SourceNotConfigured) as err:  # a SourceUnavailable: cached bars go stale
        source.fetch("AAPL", dt.date(2024, 3, 4), dt.date(2024, 3, 6))
    assert isinstance(err.value, SourceUnavailable)
    assert str(err.value) == "no bar source configured (STOCKCAST_SOURCE=none)"


def test_shared_dataset_reads_into_the_canonical_frame(shared_dataset):
    bars = read_bars_file(shared_dataset)
    assert len(bars) == 608_160
    assert list(bars.columns) == CANONICAL
    assert bars["date"].dtype == "datetime64[ns]"
    assert (bars["date"].min(), bars["date"].max()) == (
        pd.Timestamp("2012-12-06"), pd.Timestamp("2017-12-06"))
    assert int(bars["close"].isna().sum()) == 538
    assert bars["ticker"].nunique() == 489


def test_iso_dates_with_blanks_around_or_one_digit_parts_still_read(tmp_path):
    """The whole-date rule (no '2017-12' or '20171201') must not refuse what was read before:
    a space after each comma, a one-digit month or day (found by review)."""
    rows = [",".join([f" {day}", *(f" {v}" for v in values)]) for day, *values in ROWS]
    path = write_text(tmp_path / "aapl.csv", "Date, Open, High, Low, Close, Adj Close, Volume",
                      rows)
    pd.testing.assert_frame_equal(read_bars_file(path, ticker="AAPL"), expected_bars())
    short = [",".join([dt.date.fromisoformat(day).strftime("%Y-%-m-%-d"), *map(str, values)])
             for day, *values in ROWS]
    path = write_text(tmp_path / "short.csv", "Date,Open,High,Low,Close,Adj Close,Volume", short)
    pd.testing.assert_frame_equal(read_bars_file(path, ticker="AAPL"), expected_bars())


HEADER = "ticker,date,open,high,low,close,adj_close,volume"


def bar_line(ticker: str, date: str, close: float = 10.5) -> str:
    return f"{ticker},{date},10,11,9,{close},{close},1000"


def test_day_month_year_dates_are_read_so_when_a_day_past_12_tells_them_apart(tmp_path):
    """A d/m/Y column was read row by row as m/d/Y: 04/03 became April 3 and 15/03 was NaT
    (a hostile pass: ingesting such a January stored its prices on the 1st of other months)."""
    path = write_text(tmp_path / "dmy.csv", HEADER,
                      [bar_line("AAA", "04/03/2024"), bar_line("AAA", "15/03/2024")])
    dates = read_bars_file(path)["date"].dt.date.tolist()
    assert dates == [dt.date(2024, 3, 4), dt.date(2024, 3, 15)]


def test_ambiguous_slashed_dates_stay_month_day_year(tmp_path):
    path = write_text(tmp_path / "mdy.csv", HEADER,
                      [bar_line("AAA", "03/04/2024"), bar_line("AAA", "03/05/2024")])
    assert read_bars_file(path)["date"].dt.date.tolist() == [dt.date(2024, 3, 4),
                                                             dt.date(2024, 3, 5)]


def test_a_column_of_both_month_day_year_and_day_month_year_is_refused_whole(tmp_path):
    path = write_text(tmp_path / "both.csv", HEADER,
                      [bar_line("AAA", "01/13/2017"), bar_line("AAA", "13/02/2017"),
                       bar_line("AAA", "2017-02-14")])
    with pytest.raises(InvalidBars) as err:
        read_bars_file(path)
    assert str(err.value) == (
        f"{path}: the date column mixes month/day/year ('01/13/2017') and day/month/year "
        "('13/02/2017') dates; write ISO dates (YYYY-MM-DD)")


def test_stamps_with_different_utc_offsets_keep_their_written_dates(tmp_path):
    """Across a DST change the offsets differ: pandas refused to parse the column (a
    traceback from `stockcast ingest`); a naive stamp beside them is read too."""
    path = write_text(tmp_path / "dst.csv", HEADER,
                      [bar_line("AAA", "2017-01-03T16:00:00-05:00"),
                       bar_line("AAA", "2017-03-13T16:00:00-04:00"),
                       bar_line("AAA", "2017-03-14"),
                       bar_line("AAA", "2017-03-15T25:00:00-04:00")])
    dates = read_bars_file(path)["date"].tolist()
    assert dates[:3] == [pd.Timestamp("2017-01-03"), pd.Timestamp("2017-03-13"),
                         pd.Timestamp("2017-03-14")]
    assert pd.isna(dates[3])  # hour 25: no time, so no date either (bad_date)


def test_a_repeated_column_name_is_the_ambiguity_error(tmp_path):
    """pandas renames a repeated header ("close.1"), which no alias matched: the second
    close was dropped without a word."""
    path = write_text(tmp_path / "dup.csv", "ticker,date,open,high,low,close,close,adj_close,volume",
                      ["AAA,2017-01-03,10,11,9,10.5,99,10.5,1000"])
    with pytest.raises(InvalidBars) as err:
        read_bars_file(path)
    assert str(err.value) == f"{path}: columns 'close' and 'close' both name close"


def test_symbols_that_read_like_missing_values_are_tickers(tmp_path):
    """pandas read NA, NULL and None as NaN even with dtype=str: valid symbols were rejected
    as invalid_ticker. Numeric columns still read those words as missing."""
    path = write_text(tmp_path / "na.csv", HEADER,
                      [bar_line("NA", "2017-01-03"), bar_line("NULL", "2017-01-03"),
                       bar_line("None", "2017-01-03"),
                       "AAA,2017-01-03,10,11,9,NA,10.5,1000", ",2017-01-03,10,11,9,10.5,10.5,1000"])
    bars = read_bars_file(path)
    assert bars["ticker"].tolist()[:4] == ["NA", "NULL", "NONE", "AAA"]
    assert np.isnan(bars["close"].iloc[3])
    result = validate_bars(bars, today=dt.date(2024, 1, 1))
    assert sorted(result.bars["ticker"]) == ["NA", "NONE", "NULL"]
    assert result.rejected == {"invalid_ticker": 1, "missing_field": 1}


def test_numbers_with_thousands_separators_or_decimal_commas_are_rejected_as_not_a_number(
        tmp_path):
    """'1,234.5' and '123,45' were read as missing values: their rows were counted as
    missing_field, which sent the user looking for empty cells. They are kept as written and
    counted as not_a_number (not guessed at: '1,234' is 1234 or 1.234); an empty field is
    still missing_field."""
    path = write_text(tmp_path / "commas.csv", HEADER, [
        bar_line("AAA", "2024-03-04"),
        'AAA,2024-03-05,"1,234.5","1,240.0","1,230.0","1,235.0","1,235.0",1000',
        'AAA,2024-03-06,"10,5",11,9,10.5,10.5,1000',
        'AAA,2024-03-07,10,11,9,10.5,10.5,"1,000"',
        "AAA,2024-03-08,10,11,9,,10.5,1000",
    ])
    bars = read_bars_file(path)
    assert bars["open"].tolist() == [10.0, "1,234.5", "10,5", 10.0, 10.0]
    assert bars["volume"].tolist()[2:4] == [1000.0, "1,000"]
    assert np.isnan(bars["close"].iloc[4])
    result = validate_bars(bars, today=dt.date(2024, 12, 31))
    assert result.rejected == {"missing_field": 1, "not_a_number": 3}
    assert result.summary() == "rejected 4 (missing_field=1, not_a_number=3)"
    assert result.bars["date"].tolist() == [pd.Timestamp("2024-03-04")]


@pytest.mark.parametrize(("separator", "named"), [(";", "';'"), ("\t", "tabs"), ("|", "'|'")])
@pytest.mark.parametrize("quoted", [False, True])
def test_a_file_separated_by_another_character_is_refused_naming_it(tmp_path, separator, named,
                                                                     quoted):
    """A ';' export (decimal commas inside) or a tab-separated one was read at commas as one
    column: "missing required columns: date, open, ..." beside the names it asked for."""
    cells = ["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"]
    header = separator.join(f'"{c}"' if quoted else c for c in cells)
    path = write_text(tmp_path / "bars.csv", header,
                      [separator.join(["2024-03-04", "176,15", "176,9", "173,79", "175,1",
                                       "174,88", "81510100"])])
    with pytest.raises(InvalidBars) as err:
        read_bars_file(path, ticker="AAPL")
    assert str(err.value) == (
        f"{path}: the columns are separated by {named}, not commas; save the file "
        "comma-separated, with a decimal point in numbers")


def test_a_semicolon_file_missing_a_column_is_still_named_by_its_separator(tmp_path):
    path = tmp_path / "bars.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("Date;Open;High;Low;Close\n2024-03-04;176,15;176,9;173,79;175,1\n")
    with pytest.raises(InvalidBars) as err:
        read_bars_file(path, ticker="AAPL")
    assert str(err.value) == (
        f"{path}: the columns are separated by ';', not commas; save the file "
        "comma-separated, with a decimal point in numbers")


def test_a_latin_1_file_is_refused_naming_the_first_byte_that_is_not_utf_8(tmp_path):
    """It was refused with Python's codec error, whose position counts from pandas' read
    buffer: 'can't decode byte 0xe9 in position 77221' for a byte 1.6 MB in."""
    lines = [HEADER + ",name", *[bar_line("AAA", "2024-03-04") + ",Apple"] * 50_000,
             bar_line("SAN", "2024-03-04") + ",Société Générale"]
    text = "\n".join(lines) + "\n"
    offset = text.encode("latin-1").index("é".encode("latin-1"))  # Soci|été
    for path in (tmp_path / "latin1.csv", tmp_path / "latin1.csv.gz"):
        with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as fh:
            fh.write(text.encode("latin-1"))
        with pytest.raises(InvalidBars) as err:
            read_bars_file(path)
        assert str(err.value) == (f"{path}: the file is not UTF-8 text (byte 0xe9 at offset "
                                  f"{offset}, line 50002); save it as UTF-8")


@pytest.mark.parametrize(("encoding", "name"), [("utf-16", "UTF-16"), ("utf-16-be", "UTF-16"),
                                                ("utf-32", "UTF-32")])
def test_a_utf_16_or_32_file_is_refused_naming_its_encoding(tmp_path, encoding, name):
    text = "\n".join([HEADER, bar_line("AAA", "2024-03-04")]) + "\n"
    path = tmp_path / "wide.csv"
    path.write_bytes(("\ufeff" if encoding.endswith("-be") else "").encode(encoding)
                     + text.encode(encoding))
    with pytest.raises(InvalidBars) as err:
        read_bars_file(path)
    assert str(err.value) == (f"{path}: the file is {name} text (it starts with a {name} "
                              "byte-order mark), not UTF-8; save it as UTF-8")


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_a_utf_16_or_32_file_without_a_byte_order_mark_is_refused_saying_so(tmp_path, encoding):
    """Without a mark it decodes as UTF-8 (NULs are UTF-8) and was "missing required columns:
    ... (found: t, , , ...)"."""
    text = "\n".join([HEADER, bar_line("AAA", "2024-03-04")]) + "\n"
    path = tmp_path / "nomark.csv"
    path.write_bytes(text.encode(encoding))
    with pytest.raises(InvalidBars) as err:
        read_bars_file(path)
    assert str(err.value) == (f"{path}: the file holds NUL bytes, as UTF-16 or UTF-32 text "
                              "without a byte-order mark does, not UTF-8; save it as UTF-8")


def test_a_utf_8_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.csv"
    text = "\n".join(["Date,Open,High,Low,Close,Adj Close,Volume", *plain_rows()]) + "\n"
    path.write_bytes(text.encode("utf-8-sig"))
    pd.testing.assert_frame_equal(read_bars_file(path, ticker="AAPL"), expected_bars())
