"""Bulk ingest through the CLI path on real SQLite and PostgreSQL: counts reconcile, nothing lost."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from service.core.errors import InvalidBars
from service.db import bars as bars_db
from service.sources.ingest import ingest_file

SHARED_READ, SHARED_STORED = 608_160, 607_592
SHARED_REJECTED = {"missing_field": 538, "open_outside_range": 28, "duplicate_date": 2}

HEADER = "Ticker,Date,Open,High,Low,Close,Adj Close,Volume\n"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "yfinance"
GOOD = ("AAA,2020-01-02,10,11,9,10.5,10.4,1000\n"
        "AAA,2020-01-03,10.5,11.5,10,11,10.9,1200\n")




def test_shared_dataset_reconciles_and_reingest_changes_nothing(engine, shared_dataset):
    first = ingest_file(engine, shared_dataset)
    assert (first.read, first.stored, first.rejected) == (SHARED_READ, SHARED_STORED,
                                                          SHARED_REJECTED)
    assert first.read == first.stored + first.n_rejected
    assert first.written == SHARED_STORED and first.tickers == 489
    assert bars_db.count_bars(engine) == SHARED_STORED
    snapshot = bars_db.read_bars(engine, "AAPL")
    again = ingest_file(engine, shared_dataset)
    assert (again.read, again.stored, again.written) == (SHARED_READ, SHARED_STORED, 0)
    assert bars_db.count_bars(engine) == SHARED_STORED
    assert bars_db.read_bars(engine, "AAPL").equals(snapshot)
    with engine.connect() as conn:
        state = bars_db.ticker_state(conn, "AAPL")
    assert str(state.first_bar_date) == "2012-12-06" and str(state.last_bar_date) == "2017-12-06"


@pytest.mark.parametrize(
    "row, reason",
    [
        ("AAA,2020-01-06,,11,9,10,10,100\n", "missing_field"),
        ("AAA,2020-01-06,10,inf,9,10,10,Infinity\n", "missing_field"),
        # A thousands separator or a decimal comma: not a missing field (it said so before).
        ('AAA,2020-01-06,"1,234.5",11,9,10,10,100\n', "not_a_number"),
        ('AAA,2020-01-06,10,11,9,"10,5","10,5",100\n', "not_a_number"),
        ('AAA,2020-01-06,10,11,9,10,10,"1,000"\n', "not_a_number"),
        ("AAA,2020-01-06,0,11,9,10,10,100\n", "non_positive_price"),
        ("AAA,2020-01-06,1e300,1e300,1e300,1e300,1e300,100\n", "implausible_price"),
        ("AAA,2020-01-06,10,9,11,10,10,100\n", "high_below_low"),
        ("AAA,2020-01-06,12,11,9,10,10,100\n", "open_outside_range"),
        ("AAA,2020-01-06,10,11,9,8,8,100\n", "close_outside_range"),
        ("AAA,2020-01-06,10,11,9,10,10,-5\n", "negative_volume"),
        ("AAA,not-a-date,10,11,9,10,10,100\n", "bad_date"),
        # pandas' ISO parser reads these as the first of a month / a compact date: each would
        # overwrite a real bar (20200103 the stored 2020-01-03) (found by review).
        ("AAA,20200103,1,2,0.5,1.5,1.5,100\n", "bad_date"),
        ("AAA,2020-01,1,2,0.5,1.5,1.5,100\n", "bad_date"),
        ("AAA,2020/01/03,1,2,0.5,1.5,1.5,100\n", "bad_date"),
        # Past 2^63 it would be stored as a negative number (and every forecast a 500).
        ("AAA,2020-01-03,10,11,9,10,10,1e20\n", "implausible_volume"),
        # Dated after today (the real clock: this test's rows are years old); stored before.
        ("AAA,2099-12-31,10,11,9,10,10,100\n", "future_date"),
        ("A A;A,2020-01-06,10,11,9,10,10,100\n", "invalid_ticker"),
        ("AAA,2020-01-06,10,11,9,10,10,100\nAAA,2020-01-06,10,11,9,10.5,10.5,100\n",
         "duplicate_date"),
    ],
)
def test_each_malformed_row_is_counted_and_stored_bars_survive(engine, tmp_path, row, reason):
    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    ingest_file(engine, good)
    before = bars_db.read_bars(engine, "AAA")
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + row)
    report = ingest_file(engine, bad)
    if reason == "duplicate_date":  # the later row of the pair is kept, the earlier counted
        assert (report.read, report.stored, report.rejected) == (2, 1, {reason: 1})
        stored = bars_db.read_bars(engine, "AAA")
        assert stored["close"].iloc[-1] == 10.5 and stored.iloc[:2].equals(before)
        return
    assert report.read == 1 and report.stored == 0 and report.rejected == {reason: 1}
    assert bars_db.read_bars(engine, "AAA").equals(before)


def test_rows_dated_after_today_are_rejected_and_todays_is_stored(engine, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    ingest_file(engine, good)
    before = bars_db.read_bars(engine, "AAA")
    rows = tmp_path / "rows.csv"
    rows.write_text(HEADER + "AAA,2020-01-06,11,12,10.5,11.5,11.4,900\n"  # today: kept
                    "AAA,2020-01-07,11.5,12,11,11.8,11.7,800\n"  # tomorrow
                    "BBB,2020-01-07,20,21,19,20.5,20.4,500\n"
                    "AAA,2021-01-06,12,13,11,12.5,12.4,700\n")
    report = ingest_file(engine, rows, today=dt.date(2020, 1, 6))
    assert (report.read, report.stored, report.rejected) == (4, 1, {"future_date": 3})
    assert report.summary() == ("read 4, stored 1, rejected 3 (future_date=3); 1 new or "
                                "changed, 0 unchanged, 1 tickers")
    stored = bars_db.read_bars(engine, "AAA")
    assert stored.iloc[:2].equals(before) and len(stored) == 3
    assert stored["date"].iloc[-1] == pd.Timestamp("2020-01-06")
    assert bars_db.count_bars(engine, "BBB") == 0
    with engine.connect() as conn:
        assert bars_db.ticker_state(conn, "AAA").last_bar_date == dt.date(2020, 1, 6)


def test_a_file_missing_a_column_is_refused_and_loses_nothing(engine, tmp_path):
    good = tmp_path / "good.csv.gz"
    with gzip.open(good, "wt") as fh:
        fh.write(HEADER + GOOD)
    ingest_file(engine, good)
    bad = tmp_path / "bad.csv"
    bad.write_text("Ticker,Date,Open,High,Low,Volume\nAAA,2020-01-06,10,11,9,100\n")
    with pytest.raises(InvalidBars, match="missing required columns"):
        ingest_file(engine, bad)
    assert bars_db.count_bars(engine, "AAA") == 2


SEPARATED = ("the columns are separated by {}, not commas; save the file comma-separated, "
             "with a decimal point in numbers")


@pytest.mark.parametrize("name, content, message", [
    ("semicolons.csv", (HEADER.replace(",", ";") + "AAA;2020-01-06;10,5;11;9;10;10;100\n").encode(),
     SEPARATED.format("';'")),
    ("tabs.csv", (HEADER.replace(",", "\t") + "AAA\t2020-01-06\t10\t11\t9\t10\t10\t100\n").encode(),
     SEPARATED.format("tabs")),
    ("latin1.csv", (HEADER + "AAA,2020-01-06,10,11,9,10,10,100\n").encode()[:-1] + b" \xe9\n",
     "the file is not UTF-8 text (byte 0xe9 at offset 82, line 2); save it as UTF-8"),
    ("utf16.csv", (HEADER + "AAA,2020-01-06,10,11,9,10,10,100\n").encode("utf-16"),
     ("the file is UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8; save it "
      "as UTF-8")),
], ids=["semicolons", "tabs", "latin-1", "utf-16"])
def test_a_file_that_cannot_be_read_is_refused_in_one_sentence_and_loses_nothing(
        engine, tmp_path, name, content, message):
    """Each was refused with a message that hid its cause ("missing required columns: date,
    open, ..."); the refusal now names it, and nothing stored changes."""
    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    ingest_file(engine, good)
    before = bars_db.read_bars(engine, "AAA")
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(InvalidBars) as err:
        ingest_file(engine, bad)
    assert str(err.value) == f"{bad}: {message}"
    pd.testing.assert_frame_equal(bars_db.read_bars(engine, "AAA"), before)
    assert bars_db.count_bars(engine) == 2


def test_a_parquet_file_indexed_by_its_dates_as_yfinance_writes_it_is_ingested(engine, tmp_path):
    """df.to_parquet() of a yfinance frame keeps its "Date" index; it was refused as "missing
    required columns: date". The other ticker's stored bars are untouched."""
    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    ingest_file(engine, good)
    before = bars_db.read_bars(engine, "AAA")
    days = pd.DatetimeIndex(["2020-01-02", "2020-01-03", "2020-01-06"], name="Date")
    frame = pd.DataFrame({"Open": [20.0, 21.0, 22.0], "High": [21.0, 22.0, 23.0],
                          "Low": [19.0, 20.0, 21.0], "Close": [20.5, 21.5, 22.5],
                          "Adj Close": [20.4, 21.4, 22.4], "Volume": [500, 600, 700]},
                         index=days.tz_localize("America/New_York"))
    path = tmp_path / "bbb.parquet"
    frame.to_parquet(path)
    report = ingest_file(engine, path, ticker="BBB")
    assert (report.read, report.stored, report.written, report.rejected) == (3, 3, 3, {})
    stored = bars_db.read_bars(engine, "BBB")
    assert stored["date"].dt.strftime("%Y-%m-%d").tolist() == ["2020-01-02", "2020-01-03",
                                                               "2020-01-06"]
    assert stored["close"].tolist() == [20.5, 21.5, 22.5]
    assert stored["volume"].tolist() == [500, 600, 700]
    pd.testing.assert_frame_equal(bars_db.read_bars(engine, "AAA"), before)


def test_a_yfinance_download_saved_with_to_csv_is_ingested_one_ticker_per_column_group(
        engine, tmp_path):
    """yf.download([...]).to_csv(): two header rows (Ticker, Price) and a "Date" row; it was
    refused as "missing required columns" (found: Ticker, AAPL, AAPL, ...). ZZZZ, unknown
    upstream, is the wide frame's padding (no rows, no ticker); MSFT's partial last day is
    rejected as any partial day is; AAA's stored bars are untouched."""
    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    ingest_file(engine, good)
    before = bars_db.read_bars(engine, "AAA")
    report = ingest_file(engine, FIXTURES / "download_aapl_msft_zzzz_2024-03.csv")
    assert (report.read, report.stored, report.written, report.rejected) == (
        20, 19, 19, {"missing_field": 1})
    assert report.tickers == 2
    aapl, msft = bars_db.read_bars(engine, "AAPL"), bars_db.read_bars(engine, "MSFT")
    assert len(aapl) == 10 and len(msft) == 9
    assert aapl.iloc[0][["open", "close", "adj_close", "volume"]].tolist() == [
        176.15, 175.10, 174.31, 81510100]
    assert msft["date"].max() == pd.Timestamp("2024-03-14")  # the partial 03-15 not stored
    assert bars_db.read_bars(engine, "ZZZZ").empty
    pd.testing.assert_frame_equal(bars_db.read_bars(engine, "AAA"), before)


def test_a_parquet_file_of_a_filtered_frame_stores_each_bar_on_its_own_date(engine, tmp_path):
    """Its dates were aligned by the frame's row labels (1, 2, 3 here): 2020-01-06's prices
    were stored as 2020-01-03's, overwriting that stored bar, and the first row was a
    bad_date. Now the 2020-01-03 row (as stored) changes nothing."""
    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    ingest_file(engine, good)
    before = bars_db.read_bars(engine, "AAA")
    frame = pd.DataFrame({
        "ticker": "AAA",
        "date": pd.to_datetime(["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07"]),
        "open": [10.0, 10.5, 10.0, 10.0], "high": [11.0, 11.5, 11.0, 11.0],
        "low": [9.0, 10.0, 9.0, 9.0], "close": [10.5, 11.0, 10.8, 10.9],
        "adj_close": [10.4, 10.9, 10.8, 10.9], "volume": [1000, 1200, 900, 800]})
    path = tmp_path / "new.parquet"
    frame.iloc[1:].to_parquet(path)  # GOOD's 2020-01-03 and two days after it
    report = ingest_file(engine, path)
    assert (report.read, report.stored, report.written, report.rejected) == (3, 3, 2, {})
    stored = bars_db.read_bars(engine, "AAA")
    pd.testing.assert_frame_equal(stored.iloc[:2], before)
    assert stored["date"].dt.strftime("%Y-%m-%d").tolist()[2:] == ["2020-01-06", "2020-01-07"]
    assert stored["close"].tolist()[2:] == [10.8, 10.9]


def test_a_day_month_year_file_changes_no_stored_bar_of_another_day(engine, tmp_path):
    """A d/m/Y file was read row by row as m/d/Y: 03/02/2020 stored February 3's prices on
    March 2, and days past 12 were bad_date (a hostile pass). The column's format is decided
    once: the same bars in d/m/Y are the bars already stored; a column of both is refused."""
    days = pd.bdate_range("2020-01-02", "2020-03-31")
    rows = [f"AAA,{d:%Y-%m-%d},10,11,9,{10 + i / 100:.2f},{10 + i / 100:.2f},1000"
            for i, d in enumerate(days)]
    iso = tmp_path / "iso.csv"
    iso.write_text(HEADER + "\n".join(rows) + "\n")
    ingest_file(engine, iso)
    before = bars_db.read_bars(engine, "AAA")
    dmy = tmp_path / "dmy.csv"
    dmy.write_text(HEADER + "\n".join(r.replace(f"{d:%Y-%m-%d}", f"{d:%d/%m/%Y}")
                                      for r, d in zip(rows, days, strict=True)) + "\n")
    again = ingest_file(engine, dmy)
    both = tmp_path / "both.csv"
    both.write_text(HEADER + "AAA,01/13/2020,1,2,0.5,1.5,1.5,100\nAAA,14/01/2020,1,2,0.5,1.5,1.5,100\n")
    with pytest.raises(InvalidBars, match="mixes month/day/year"):
        ingest_file(engine, both)
    assert (again.read, again.stored, again.written) == (len(days), len(days), 0)
    pd.testing.assert_frame_equal(bars_db.read_bars(engine, "AAA"), before)


def _bars_file(path, days, scale: float = 1.0, volume: int = 1000):
    rows = [f"AAA,{d:%Y-%m-%d},{p:.4f},{p * 1.01:.4f},{p * 0.99:.4f},{p:.4f},{p:.4f},{volume}"
            for d, p in ((d, (100 + i) * scale) for i, d in enumerate(days))]
    path.write_text(HEADER + "\n".join(rows) + "\n")
    return path


def test_a_file_on_another_price_basis_than_the_stored_bars_is_refused_for_that_ticker(
        engine, tmp_path):
    """A stretch exported after a 2:1 split (every price halved) was upserted beside the older
    bars: a fake -69% return at the seam (a hostile pass). Now its rows are rejected as
    rebased_history, counted, and the stored bars stay; a correction of some days is stored
    (last write wins), and a file with the whole history replaces it, re-based or not."""
    days = pd.bdate_range("2020-01-02", periods=60)
    ingest_file(engine, _bars_file(tmp_path / "all.csv", days))
    before = bars_db.read_bars(engine, "AAA")
    tail = days[40:]
    split = ingest_file(engine, _bars_file(tmp_path / "split.csv", tail.append(
        pd.bdate_range(days[-1] + pd.offsets.BDay(), periods=2)), scale=0.5))
    assert split.rejected == {"rebased_history": 22} and split.stored == 0
    assert split.example_lines() == [f"  rebased_history: first AAA {tail[0]:%Y-%m-%d}"]
    pd.testing.assert_frame_equal(bars_db.read_bars(engine, "AAA"), before)

    fixed = tmp_path / "fix.csv"
    fixed.write_text(HEADER + f"AAA,{days[50]:%Y-%m-%d},150,152,149,151,151,1000\n"
                     + f"AAA,{days[51]:%Y-%m-%d},151.0000,152.5100,149.4900,151.0000,151.0000,1000\n")
    correction = ingest_file(engine, fixed)  # one day changed, one as stored
    assert (correction.stored, correction.written, correction.rejected) == (2, 1, {})

    whole = ingest_file(engine, _bars_file(tmp_path / "whole.csv", days, scale=0.5))
    assert (whole.stored, whole.written, whole.rejected) == (60, 60, {})
    assert bars_db.read_bars(engine, "AAA")["close"].iloc[0] == 50.0


def test_each_reject_reason_names_its_first_row_as_read(engine, tmp_path):
    """A row without a ticker or a readable date says so; a bad_date row names what it has."""
    path = tmp_path / "mixed.csv"
    path.write_text(HEADER + GOOD + ",2020-01-06,10,11,9,10,10,100\n"
                    + "AAA,2020-13-45,10,11,9,10,10,100\n" + "AAA,2020-01-08,10,9,11,10,10,100\n")
    report = ingest_file(engine, path)
    assert report.rejected == {"invalid_ticker": 1, "bad_date": 1, "high_below_low": 1}
    assert report.examples == {"invalid_ticker": "(no ticker) 2020-01-06",
                               "bad_date": "AAA (no date)", "high_below_low": "AAA 2020-01-08"}


def test_cli_ingest_prints_the_reconciliation(tmp_path, monkeypatch):
    from service.cli import app
    from service.core.config import get_settings

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("STOCKCAST_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
        data = tmp_path / "bars.csv"
        data.write_text(HEADER + GOOD + "AAA,2020-01-06,,11,9,10,10,100\n"
                        + 'AAA,2020-01-07,"10,5",11,9,10,10,100\n'
                        + "!!,2020-01-08,10,11,9,10,10,100\n"
                        + 'AAA,2020-01-09,"10,5",11,9,10,10,100\n')
        result = runner.invoke(app, ["ingest", "--path", str(data), "--no-progress"])
        assert result.exit_code == 0, result.output
        # each reason's first row, where to look in the file (the counts alone said nothing)
        assert result.output.splitlines() == [
            ("read 6, stored 2, rejected 4 (invalid_ticker=1, missing_field=1, not_a_number=2); "
            "2 new or changed, 0 unchanged, 1 tickers"),
            "  invalid_ticker: first !! 2020-01-08",
            "  missing_field: first AAA 2020-01-06",
            "  not_a_number: first AAA 2020-01-07"]
        missing = runner.invoke(app, ["ingest", "--path", str(tmp_path / "nope.csv")])
        assert missing.exit_code == 1 and "error: no such file" in missing.output
        cut = tmp_path / "cut.csv.gz"  # a download cut short: said so, not "Aborted."
        cut.write_bytes(gzip.compress((HEADER + GOOD * 50).encode())[:60])
        truncated = runner.invoke(app, ["ingest", "--path", str(cut), "--no-progress"])
        assert truncated.exit_code == 1, truncated.output
        assert "cannot be read as a bars file: the file ends early" in truncated.output
        # A port outside 1..65535 is refused before anything starts (70000 bound port 4464).
        port = runner.invoke(app, ["serve", "--port", "70000"])
        assert port.exit_code == 2 and "Invalid value for '--port'" in port.output
    finally:
        get_settings.cache_clear()


def test_the_one_write_path_stores_valid_rows_updates_ranges_and_records_a_refresh(engine):
    import datetime as dt

    from service.sources.store import validate, write_bars
    from tests.bar_factories import make_bars

    frame = make_bars(10, start="2020-01-02")
    frame.loc[3, "high"] = frame.loc[3, "low"] / 2  # high below low: rejected
    validated = validate(frame, "AAA")
    at = dt.datetime(2020, 1, 20, 21, 0, tzinfo=dt.UTC)
    count = write_bars(engine, validated, "test", refreshed=("AAA", at))
    assert (count.offered, count.written) == (9, 9)
    assert validated.n_rejected == 1
    with engine.connect() as conn:
        state = bars_db.ticker_state(conn, "AAA")
    assert state.first_bar_date == dt.date(2020, 1, 2)
    assert state.last_bar_date == dt.date(2020, 1, 15)
    assert (state.last_refresh_status, state.last_refresh_at) == ("ok", at)
    assert len(bars_db.read_bars(engine, "AAA")) == 9


@pytest.mark.parametrize("args, message", [
    (["ingest", "--path", "{tmp}"], "error: {tmp} is a directory: give a CSV or Parquet file"),
    (["ingest", "--source", "yfinance", "--tickers", "AAPL", "--start", "2018-01-01", "--end",
      "2017-01-01"], "error: start 2018-01-01 is after end 2017-01-01"),
    (["refresh", "--tickers", "", "--no-prewarm"],
     "error: --tickers is empty: give a comma list of symbols"),
    (["train", "--config", "{tmp}/bad.json"], "error: --config {tmp}/bad.json: Expecting "),
    (["evaluate", "--config", "{tmp}/unknown.json"],
     "error: --config {tmp}/unknown.json: unknown training config keys ['nope']"),
    (["train", "--config", "{tmp}/none.json"], "error: --config {tmp}/none.json: [Errno 2]"),
    (["train", "--config", "{tmp}/counts.json"],
     "error: --config {tmp}/counts.json: epochs must be an integer >= 1, got 'x'"),
    (["train", "--config", "{tmp}/string.json"],
     "error: --config {tmp}/string.json: tickers must be a JSON list, got 'AAA'"),
    (["train", "--config", "{tmp}/list.json"],
     "error: --config {tmp}/list.json: a TrainConfig is a JSON object, got list"),
    *[([*command, "--tickers", "!!!"],
       "error: invalid ticker '!!!': use 1-15 letters, digits, '.', '-', '^' or '='")
      for command in (["refresh"], ["backtest"], ["train", "--no-promote"], ["evaluate"],
                      ["ingest", "--source", "yfinance"])],
    (["train", "--start", "2017-06-01", "--end", "2015-01-01", "--no-promote"],
     "error: start 2017-06-01 is after end 2015-01-01"),
    (["train", "--config", "{tmp}/backwards.json"],
     "error: start 2017-06-01 is after end 2015-01-01"),
    (["db", "upgrade", "--revision", "9999"], "error: unknown revision '9999' (head is {head})"),
    # evaluate's options, refused before any block trains (a sliding window of 0 was an
    # IndexError traceback; top-k 0 was found after every block had trained and forecast; a
    # negative cost or 0 workers ran)
    (["evaluate", "--window", "sliding", "--sliding-sessions", "0"],
     "error: sliding_sessions must be >= 1 session, got 0"),
    (["evaluate", "--top-k", "0"], "error: top_k must be >= 1, got 0"),
    (["evaluate", "--cost-bp", "-1"],
     "error: cost_bp must be a finite cost >= 0 basis points, got -1.0"),
    (["evaluate", "--cost-bp", "nan"],
     "error: cost_bp must be a finite cost >= 0 basis points, got nan"),
    (["evaluate", "--workers", "0"], "error: workers must be >= 1, got 0"),
    (["evaluate", "--horizons", ","], "error: horizons must name at least one horizon"),
    # and what only the forecasting of the first block refused, after every block had trained
    (["evaluate", "--horizons", "1,31"],
     "error: horizons must lie in 1..30 (the model's horizon), got [31]"),
    (["evaluate", "--baselines", "naive,oracle"],
     "error: unknown baselines ['oracle']; known: "),
    (["evaluate", "--band-baselines", "ewma,bogus"], "error: unknown band baselines ['bogus']"),
    (["db", "downgrade", "nonsense"], "error: unknown revision 'nonsense' (head is {head})"),
])
def test_cli_arguments_that_cannot_work_are_one_line_errors(tmp_path, monkeypatch, args,
                                                            message):
    """Each was a traceback, a misleading message or a silent no-op (a hostile test pass):
    a directory was 'no such file', an empty --tickers refreshed nothing with exit 0; a bad
    symbol outside ingest and an unknown Alembic revision were tracebacks, and train's start
    after its end said "no bars in the cache ... load them first" (a hostile ops pass)."""
    from service.cli import app
    from service.core.config import get_settings
    from service.db.health import head_revision

    monkeypatch.setenv("STOCKCAST_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("STOCKCAST_SOURCE", "none")
    (tmp_path / "bad.json").write_text("{bad")
    (tmp_path / "unknown.json").write_text('{"nope": 1}')
    (tmp_path / "counts.json").write_text('{"epochs": "x"}')
    (tmp_path / "string.json").write_text('{"tickers": "AAA"}')
    (tmp_path / "list.json").write_text('[1]')
    (tmp_path / "backwards.json").write_text('{"start": "2017-06-01", "end": "2015-01-01"}')
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
        result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an error escaping
    assert message.format(tmp=tmp_path, head=head_revision()) in result.output
