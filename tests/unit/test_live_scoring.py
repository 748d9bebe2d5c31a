"""Scoring live forecasts by hand-made numbers: due by stored bars, re-basing, the band."""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import pytest

from service.forecasting.live import relative_mae, score_forecasts


def bars(ticker: str, closes: list[float], start: str = "2024-03-04",
         adjusted: list[float] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"ticker": ticker, "date": pd.bdate_range(start, periods=len(closes)),
                         "close": closes, "adj_close": adjusted or [c * 0.9 for c in closes]})


def forecast(ticker="AAA", as_of="2024-03-05", horizon=1, last_close=100.0, lower=95.0,
             median=101.0, upper=105.0) -> dict:
    return {"ticker": ticker, "as_of": dt.date.fromisoformat(as_of), "horizon": horizon,
            "last_close": last_close, "lower": lower, "median": median, "upper": upper}


def test_a_forecast_is_scored_against_the_horizonth_stored_bar_after_as_of():
    stored = bars("AAA", [99.0, 100.0, 104.0, 106.0])  # Mon..Thu; as_of is Tuesday
    scored = score_forecasts(pd.DataFrame([forecast(horizon=1), forecast(horizon=2),
                                           forecast(horizon=3)]), stored)
    assert list(scored["horizon"]) == [1, 2]  # h=3 needs Friday's bar: not due
    one, two = scored.to_dict("records")
    assert one["realized_date"] == dt.date(2024, 3, 6) and one["realized_close"] == 104.0
    assert one["error"] == pytest.approx(101.0 - 104.0)
    assert one["naive_error"] == pytest.approx(100.0 - 104.0)
    assert one["inside"]
    assert two["realized_close"] == 106.0 and not two["inside"]  # above the 105 upper bound


def test_prices_re_based_after_the_forecast_are_scored_on_the_new_base():
    # A 2:1 split re-based every stored close: the close at as_of is now 50, not 100.
    stored = bars("AAA", [49.5, 50.0, 52.0])
    row = score_forecasts(pd.DataFrame([forecast()]), stored).iloc[0]
    assert row["realized_close"] == 52.0
    assert row["error"] == pytest.approx(101.0 / 2 - 52.0)
    assert row["naive_error"] == pytest.approx(50.0 - 52.0)
    assert row["inside"]  # 47.5 <= 52 <= 52.5


def test_a_dividend_in_between_counts_as_part_of_the_move_as_in_the_backtest():
    # Ex-dividend on Wednesday: the quoted close drops by $2, the adjusted series does not.
    stored = bars("AAA", [99.0, 100.0, 100.0], adjusted=[97.02, 98.0, 100.0])
    row = score_forecasts(pd.DataFrame([forecast()]), stored).iloc[0]
    assert row["realized_close"] == pytest.approx(100.0 * 100.0 / 98.0)
    assert row["error"] == pytest.approx(101.0 - 100.0 * 100.0 / 98.0)


def test_tickers_are_scored_against_their_own_bars_only():
    stored = pd.concat([bars("AAA", [99.0, 100.0]), bars("BBB", [10.0, 10.0, 11.0])])
    scored = score_forecasts(pd.DataFrame([forecast("AAA"), forecast("BBB", last_close=10.0,
                                                                     lower=9, median=10,
                                                                     upper=12)]), stored)
    assert list(scored["ticker"]) == ["BBB"]
    assert scored["error"].iloc[0] == pytest.approx(-1.0)


def test_relative_mae_is_undefined_without_a_naive_error():
    assert relative_mae(2.0, 4.0) == 0.5
    assert math.isnan(relative_mae(1.0, 0.0)) and math.isnan(relative_mae(float("nan"), 1.0))
