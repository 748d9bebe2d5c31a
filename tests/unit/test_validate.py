"""The bar validator: one reason per rejected row, read == kept + rejected, sorted unique output."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from service.core.errors import InvalidBars
from service.sources.csv import read_bars_file
from service.sources.validate import REJECT_REASONS, validate_bars


def three_bars(**overrides) -> pd.DataFrame:
    """Three valid bars (2024-03-04..06); overrides replace the MIDDLE row's fields."""
    bars = pd.DataFrame({
        "date": pd.to_datetime(["2024-03-04", "2024-03-05", "2024-03-06"]),
        "open": [175.0, 176.2, 170.8],
        "high": [176.5, 177.0, 171.9],
        "low": [173.9, 169.3, 168.6],
        "close": [175.1, 170.1, 169.1],
        "adj_close": [174.3, 169.3, 168.3],
        "volume": [81.5e6, 95.1e6, 68.6e6],
    })
    for column, value in overrides.items():
        if column in bars and bars[column].dtype != object and isinstance(value, str):
            bars[column] = bars[column].astype(object)
        bars.loc[1, column] = value
    return bars


@pytest.mark.parametrize(
    ("reason", "overrides"),
    [
        ("bad_date", {"date": pd.NaT}),
        ("missing_field", {"open": np.nan}),
        ("missing_field", {"adj_close": np.nan}),
        ("missing_field", {"volume": np.nan}),
        ("missing_field", {"close": "n/a"}),  # pandas' missing-value words, as a file's
        ("missing_field", {"close": "  "}),
        ("not_a_number", {"close": "abc"}),  # text that is no number: not "missing"
        ("not_a_number", {"open": "1,234.5"}),  # a thousands separator
        ("not_a_number", {"volume": "123,45"}),  # a decimal comma
        ("missing_field", {"high": np.inf}),  # "inf" / "Infinity" parse as numbers
        ("missing_field", {"volume": -np.inf}),
        ("non_positive_price", {"low": 0.0}),
        ("non_positive_price", {"adj_close": -1.0}),
        ("high_below_low", {"high": 169.0, "low": 169.3, "open": 169.1, "close": 169.2}),
        ("open_outside_range", {"open": 177.5}),
        ("open_outside_range", {"open": 169.0}),
        ("close_outside_range", {"close": 177.1}),
        ("negative_volume", {"volume": -1.0}),
        ("implausible_volume", {"volume": 1e20}),
        ("bad_date", {"date": "2024-03"}),  # text: a whole YYYY-MM-DD date only
        ("bad_date", {"date": "20240305"}),
        ("duplicate_date", {"date": pd.Timestamp("2024-03-06")}),
    ],
)
def test_each_reason_rejects_exactly_the_bad_row(reason, overrides):
    result = validate_bars(three_bars(**overrides))
    assert result.read == 3
    assert result.rejected == {reason: 1}
    assert result.stored_candidates == 2 and result.n_rejected == 1
    assert result.summary() == f"rejected 1 ({reason}=1)"


def test_reasons_are_in_check_order():
    assert REJECT_REASONS == (
        "invalid_ticker", "bad_date", "future_date", "weekend_date", "missing_field",
        "not_a_number", "non_positive_price", "implausible_price", "high_below_low",
        "open_outside_range", "close_outside_range", "negative_volume", "implausible_volume",
        "duplicate_date")


@pytest.mark.parametrize(
    ("overrides", "first_reason"),
    [
        ({"open": np.nan, "high": 1.0, "volume": -5.0}, "missing_field"),
        ({"open": np.nan, "close": "1,70"}, "missing_field"),
        ({"close": "1,70", "low": -1.0}, "not_a_number"),
        ({"low": -1.0, "high": 0.5}, "non_positive_price"),
        ({"high": 1e300, "close": 1e300, "volume": -5.0}, "implausible_price"),
        ({"high": 160.0, "volume": -5.0}, "high_below_low"),
        ({"open": 180.0, "close": 180.0, "volume": -5.0}, "open_outside_range"),
        ({"close": 160.0, "volume": -5.0}, "close_outside_range"),
        ({"date": pd.NaT, "open": np.nan}, "bad_date"),
    ],
)
def test_a_row_failing_several_rules_is_counted_once_under_the_first(overrides, first_reason):
    result = validate_bars(three_bars(**overrides))
    assert result.rejected == {first_reason: 1}
    assert result.read == len(result.bars) + result.n_rejected


def test_a_bar_dated_after_today_is_a_future_date_and_one_dated_today_is_kept():
    bars = three_bars()  # 2024-03-04..06
    assert validate_bars(bars, today=dt.date(2024, 3, 6)).rejected == {}
    result = validate_bars(bars, today=dt.date(2024, 3, 5))
    assert result.rejected == {"future_date": 1}
    assert result.summary() == "rejected 1 (future_date=1)"
    assert result.bars["date"].tolist() == list(pd.to_datetime(["2024-03-04", "2024-03-05"]))
    # Without a clock: the UTC date now (a bar in 2099 is ahead of it; 2024's are not).
    assert validate_bars(three_bars(date=pd.Timestamp("2099-12-31"))).rejected == {
        "future_date": 1}
    # Judged before the other rules: a future row with a missing price is counted once, here.
    assert validate_bars(three_bars(open=np.nan), today=dt.date(2024, 3, 4)).rejected == {
        "future_date": 2}


def test_zero_volume_is_a_valid_session():
    result = validate_bars(three_bars(volume=0.0))
    assert result.rejected == {}
    assert result.summary() == "rejected 0"
    assert result.bars["volume"].tolist() == [81.5e6, 0.0, 68.6e6]


def test_duplicate_dates_keep_the_last_occurrence():
    bars = three_bars()
    correction = bars.iloc[[2]].assign(close=169.5, volume=70.0e6)  # upstream re-sent the day
    result = validate_bars(pd.concat([bars, correction], ignore_index=True))
    assert result.rejected == {"duplicate_date": 1}
    assert result.bars["date"].tolist() == list(pd.to_datetime(
        ["2024-03-04", "2024-03-05", "2024-03-06"]))
    assert result.bars.iloc[-1][["close", "volume"]].tolist() == [169.5, 70.0e6]


def test_a_broken_later_duplicate_does_not_knock_out_the_good_bar():
    bars = three_bars()
    broken = bars.iloc[[2]].assign(close=np.nan)
    result = validate_bars(pd.concat([bars, broken], ignore_index=True))
    assert result.rejected == {"missing_field": 1}
    assert result.bars.iloc[-1]["close"] == 169.1


def test_unsorted_input_is_sorted_not_rejected():
    bars = three_bars().iloc[[2, 0, 1]]
    result = validate_bars(bars)
    assert result.rejected == {}
    assert result.bars["date"].is_monotonic_increasing
    assert result.bars["close"].tolist() == [175.1, 170.1, 169.1]
    assert list(result.bars.index) == [0, 1, 2]


def test_output_has_exactly_the_canonical_columns_and_dtypes():
    bars = three_bars().assign(source="yahoo", dividends=0.0)
    bars["volume"] = bars["volume"].astype(np.int64)
    result = validate_bars(bars)
    assert list(result.bars.columns) == [
        "date", "open", "high", "low", "close", "adj_close", "volume"]
    assert result.bars["date"].dtype == "datetime64[ns]"
    assert all(result.bars[c].dtype == np.float64 for c in result.bars.columns[1:])


def test_dates_are_normalized_to_the_trading_day():
    bars = three_bars()
    bars["date"] = bars["date"] + pd.Timedelta(hours=16)
    result = validate_bars(bars)
    assert (result.bars["date"] == result.bars["date"].dt.normalize()).all()


def test_text_dates_are_parsed_and_unparseable_ones_rejected():
    bars = three_bars().astype({"date": object})
    bars["date"] = ["2024-03-04", "not a date", "2024-03-06"]
    result = validate_bars(bars)
    assert result.rejected == {"bad_date": 1}
    assert result.bars["date"].dt.strftime("%Y-%m-%d").tolist() == ["2024-03-04", "2024-03-06"]


def test_rounding_within_tolerance_is_kept_and_clipped_into_range():
    # 176.5 * (1 + 5e-7) rounds the open past the high by less than the 1e-6 tolerance.
    result = validate_bars(three_bars(open=177.0 * (1 + 5e-7), close=169.3 * (1 - 5e-7)))
    assert result.rejected == {}
    assert result.bars.loc[1, "open"] == 177.0
    assert result.bars.loc[1, "close"] == 169.3
    beyond = validate_bars(three_bars(open=177.0 * (1 + 2e-6)))
    assert beyond.rejected == {"open_outside_range": 1}


def test_multi_ticker_duplicates_are_judged_per_ticker():
    aapl = three_bars().assign(ticker="AAPL")
    msft = three_bars().assign(ticker="MSFT", close=[175.0, 170.0, 169.0])
    frame = pd.concat([msft, aapl, aapl.iloc[[0]]], ignore_index=True)
    result = validate_bars(frame)
    assert result.read == 7
    assert result.rejected == {"duplicate_date": 1}
    assert list(result.bars.columns) == [
        "ticker", "date", "open", "high", "low", "close", "adj_close", "volume"]
    assert result.bars["ticker"].tolist() == ["AAPL"] * 3 + ["MSFT"] * 3  # sorted by symbol
    assert result.bars.groupby("ticker")["date"].apply(
        lambda d: d.is_monotonic_increasing and d.is_unique).all()


@pytest.mark.parametrize("symbol", ["aapl", "BAD TICKER!", "", None, np.nan, "X" * 16, "-", "=^"])
def test_rows_with_an_invalid_ticker_are_rejected(symbol):
    frame = three_bars().assign(ticker=["AAPL", symbol, "AAPL"])
    result = validate_bars(frame)
    assert result.rejected == {"invalid_ticker": 1}
    assert result.bars["ticker"].tolist() == ["AAPL", "AAPL"]


def test_counts_reconcile_on_a_frame_with_every_kind_of_bad_row():
    good = three_bars()
    bad = [three_bars(**o).iloc[[1]] for o in (
        {"open": np.nan}, {"low": 0.0}, {"high": 160.0}, {"open": 190.0}, {"close": 190.0},
        {"volume": -1.0}, {"date": pd.NaT})]
    frame = pd.concat([good, *bad, good.iloc[[0]]], ignore_index=True).assign(ticker="AAPL")
    result = validate_bars(frame)
    assert result.read == 11
    assert result.rejected == {"bad_date": 1, "missing_field": 1, "non_positive_price": 1,
                               "high_below_low": 1, "open_outside_range": 1,
                               "close_outside_range": 1, "negative_volume": 1,
                               "duplicate_date": 1}
    assert result.read == result.stored_candidates + result.n_rejected == 3 + 8
    assert result.summary() == (
        "rejected 8 (bad_date=1, missing_field=1, non_positive_price=1, high_below_low=1, "
        "open_outside_range=1, close_outside_range=1, negative_volume=1, duplicate_date=1)")


def test_a_missing_column_is_an_error_naming_it():
    with pytest.raises(InvalidBars) as err:
        validate_bars(three_bars().drop(columns=["adj_close", "volume"]))
    assert str(err.value) == "bars are missing required columns: adj_close, volume"


def test_tz_aware_dates_are_refused():
    bars = three_bars()
    bars["date"] = bars["date"].dt.tz_localize("America/New_York")
    with pytest.raises(InvalidBars) as err:
        validate_bars(bars)
    assert str(err.value) == ("bar dates must be tz-naive exchange trading dates, got tz-aware "
                              "dates (datetime64[ns, America/New_York])")


def test_an_empty_frame_validates_to_nothing():
    result = validate_bars(three_bars().iloc[:0])
    assert (result.read, result.stored_candidates, result.rejected) == (0, 0, {})


def test_shared_dataset_counts(shared_dataset):
    frame = read_bars_file(shared_dataset)
    result = validate_bars(frame)
    # 538 empty sessions; 28 tickers' last bar (2017-12-06, captured mid-session) opens outside
    # its partial day's range; COH 2017-10-30 and LVLT 2017-10-31 appear twice.
    assert result.read == 608_160
    assert result.rejected == {"missing_field": 538, "open_outside_range": 28,
                               "duplicate_date": 2}
    assert result.stored_candidates == 607_592
    bars = result.bars
    assert bars["ticker"].nunique() == 489
    assert not bars.isna().any().any()
    assert not bars.duplicated(["ticker", "date"]).any()
    assert bars.equals(bars.sort_values(["ticker", "date"], ignore_index=True))
    assert ((bars["low"] <= bars["open"]) & (bars["open"] <= bars["high"])).all()
    assert ((bars["low"] <= bars["close"]) & (bars["close"] <= bars["high"])).all()
    # The duplicate COH day keeps the later row (volume 2,971,980, not 2,972,000).
    coh = bars[(bars["ticker"] == "COH") & (bars["date"] == "2017-10-30")]
    assert coh["volume"].tolist() == [2_971_980.0]


def test_a_bar_dated_a_saturday_or_a_sunday_is_a_weekend_date():
    """No US session is held on a weekend; such rows were stored (a hostile pass: a d/m/Y file
    read as m/d/Y landed bars on a Saturday and a Sunday)."""
    bars = three_bars()  # Monday 2024-03-04 .. Wednesday 03-06
    bars.loc[0, "date"] = pd.Timestamp("2024-03-02")  # Saturday
    bars.loc[1, "date"] = pd.Timestamp("2024-03-10")  # Sunday
    result = validate_bars(bars, today=dt.date(2024, 12, 31))
    assert result.rejected == {"weekend_date": 2}
    assert result.bars["date"].tolist() == [pd.Timestamp("2024-03-06")]
