"""The walk-forward backtest through the serving Predictor (a tiny real ONNX model)."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from service.evaluation.backtest import bars_by_ticker, run_backtest
from service.evaluation.scoring import MODEL, NAIVE, POOLED
from service.forecasting.bands import BASELINE_ACI, ACISettings
from service.forecasting.baselines import BASELINES
from service.forecasting.spec import BAND_LEVELS
from tests.bar_factories import random_future


@pytest.fixture(scope="module")
def bars(tiny_artifact) -> dict[str, pd.DataFrame]:
    return bars_by_ticker(tiny_artifact.bars)


@pytest.fixture(scope="module")
def result(tiny_predictor, bars):
    return run_backtest(tiny_predictor, bars, horizons=(1, 5))


def path_bars(prices: np.ndarray, start: str = "2020-01-02") -> pd.DataFrame:
    """Bars whose every price is the given path (open = high = low = close = adj_close)."""
    return pd.DataFrame({
        "date": pd.bdate_range(start, periods=len(prices)), "open": prices, "high": prices,
        "low": prices, "close": prices, "adj_close": prices, "volume": np.full(len(prices), 1e6),
    })


def test_scores_the_test_segment_of_the_manifest_by_default(tiny_predictor, bars, result):
    first, last = tiny_predictor.manifest.split.test
    assert result.model_version == tiny_predictor.manifest.version
    # Every registered baseline, naive (the yardstick) first; the registry test pins the list;
    # then the band methods: the model's band recalibrated by ACI, each band baseline and its.
    assert result.methods == (MODEL, *BASELINES, "model_aci", "ewma", "ewma_aci", "empirical",
                              "empirical_aci")
    assert BASELINES and result.methods[1] == NAIVE
    assert result.tickers == ("AAA", "BBB", "CCC")
    one_day, five_day = result.forecasts[1], result.forecasts[5]
    assert one_day["origin"].min().date() == first == result.start
    # the last origins have no bar h days later: dropped for that h only
    last_bar = bars["AAA"]["date"].iloc[-1]
    assert one_day["target_date"].max() == last_bar
    assert five_day["origin"].max() < one_day["origin"].max()
    assert one_day.groupby("ticker").size().tolist() == [len(one_day) // 3] * 3
    assert result.config["baseline_fit_end"] == tiny_predictor.manifest.split.train[1].isoformat()
    assert not result.config["in_sample_origins"]
    assert result.value("n_forecasts", ticker=POOLED) == len(one_day)
    assert last >= result.end


def test_the_served_band_has_the_artifacts_settings_and_the_baselines_plain_aci(
        tiny_predictor, bars, result):
    # The tiny artifact is exported with the code's defaults: ACI with the volatility blend,
    # which moves the bands at the scored origins (so the served == backtest test covers it).
    assert tiny_predictor.band_settings == ACISettings()
    origins = bars["AAA"]["date"].isin(result.forecasts[1]["origin"]).to_numpy()
    scale = ACISettings().scale(np.log(bars["AAA"]["adj_close"].to_numpy()))
    assert np.all(scale[origins] != 1.0)
    assert result.config["aci"] == ACISettings().to_dict()
    assert result.config["baseline_aci"] == BASELINE_ACI.to_dict()
    assert BASELINE_ACI.vol_beta == 1.0


def _assert_served_band_is_the_backtests(predictor, bars, row):
    """The server's band from the bars up to the row's origin equals the backtest's model_aci
    columns there (walked over every origin), at each level; returns the served 5-day step."""
    served = predictor.forecast(row["ticker"], bars[row["ticker"]], horizon=5,
                                as_of=row["origin"].date())
    assert served.as_of == row["origin"].date()
    step = served.steps[4]
    assert step.close == pytest.approx(row["origin_close"] * math.exp(row[MODEL]), rel=1e-6)
    assert served.band_method == "model_aci"
    for pct, suffix in ((50, "_50"), (80, ""), (90, "_90")):
        lower, upper = step.bands[pct]
        assert lower == pytest.approx(
            row["origin_close"] * math.exp(row[f"model_aci_lower{suffix}"]), rel=1e-6)
        assert upper == pytest.approx(
            row["origin_close"] * math.exp(row[f"model_aci_upper{suffix}"]), rel=1e-6)
    assert (step.lower, step.upper) == step.bands[80]
    return step


def test_model_forecasts_are_the_predictors_own(tiny_predictor, bars, result):
    """What is measured is what is served: the API's forecast at one origin, same numbers."""
    row = result.forecasts[5].iloc[3]
    # The served band is the model's recalibrated by ACI: the backtest's model_aci columns.
    step = _assert_served_band_is_the_backtests(tiny_predictor, bars, row)
    # ... and differs from the network's raw band (ACI moved it).
    assert step.lower != pytest.approx(row["origin_close"] * math.exp(row["model_lower"]),
                                       rel=1e-6)
    # and the realized outcome is the adjusted move to the bar 5 sessions later
    adj = bars[row["ticker"]].set_index("date")["adj_close"]
    assert row["realized"] == pytest.approx(math.log(adj[row["target_date"]] / adj[row["origin"]]))
    assert adj.index.get_loc(row["target_date"]) - adj.index.get_loc(row["origin"]) == 5


def test_a_two_sided_band_is_served_as_the_backtest_walks_it(tiny_two_sided_predictor,
                                                             tiny_predictor, bars, result):
    """The same weights with two-sided ACI (a Q̂ per tail): the backtest's band at an origin
    is the server's, its state holds two Q̂ per level, and it differs from the symmetric one."""
    assert tiny_two_sided_predictor.band_settings == ACISettings(two_sided=True)
    two = run_backtest(tiny_two_sided_predictor, bars, horizons=(1, 5), band_baselines=("ewma",))
    assert two.config["aci"] == ACISettings(two_sided=True).to_dict()
    frame = two.forecasts[5]
    for i in (3, len(frame) // 2, len(frame) - 1):
        _assert_served_band_is_the_backtests(tiny_two_sided_predictor, bars, frame.iloc[i])
    ticker = frame["ticker"].iloc[-1]
    _, state = tiny_two_sided_predictor.forecast_with_states([(ticker, bars[ticker])], 5)[0]
    assert state.qhat.shape == (5, 2 * len(BAND_LEVELS))
    symmetric = result.forecasts[5]
    assert symmetric[MODEL].equals(frame[MODEL])  # the same network
    assert not np.allclose(symmetric["model_aci_upper"], frame["model_aci_upper"])


def test_scrambling_the_future_leaves_every_earlier_forecast_column_unchanged(
        tiny_predictor, bars, result):
    """Every bar after the cut redrawn at random (random_future): each of the ~50 columns of
    every forecast at an origin <= the cut is the same to the bit (the model's, each baseline's,
    every band at every level, ACI's, origin close and volatility), and so is each realized
    outcome already known there (target <= cut); only the outcomes after the cut may move."""
    cut = pd.Timestamp("2021-04-20")  # the test segment runs 2021-04-01 .. 2021-05-19
    scrambled = {ticker: random_future(frame, cut, seed=i)
                 for i, (ticker, frame) in enumerate(bars.items())}
    changed = run_backtest(tiny_predictor, scrambled, horizons=(1, 5))
    for h in (1, 5):
        old, new = result.forecasts[h], changed.forecasts[h]
        assert list(new.columns) == list(old.columns) and len(old.columns) > 50
        np.testing.assert_array_equal(new["origin"], old["origin"])  # the same origins
        before = (old["origin"] <= cut).to_numpy()
        assert 30 <= before.sum() < len(old)
        dated = [c for c in old.columns if c != "realized"]
        pd.testing.assert_frame_equal(new.loc[before, dated], old.loc[before, dated],
                                      check_exact=True)
        known = (old["target_date"] <= cut).to_numpy()
        np.testing.assert_array_equal(new.loc[known, "realized"], old.loc[known, "realized"])
        # The scramble did reach the later origins, so the comparisons above could fail.
        for column in ("origin_close", "origin_vol", MODEL, "sma20", "model_aci_upper_90",
                       "ewma_aci_lower", "empirical_upper_50", "realized"):
            assert not np.array_equal(new.loc[~before, column], old.loc[~before, column]), column


def test_baselines_are_exact_on_a_constant_series(tiny_predictor):
    result = run_backtest(tiny_predictor, {"FLAT": path_bars(np.full(360, 50.0))}, horizons=(1, 5))
    for h in (1, 5):
        for name in BASELINES:
            assert result.value("mae", name, h, "FLAT") == 0.0
            assert result.value("mape", name, h, "FLAT") == 0.0
        # nothing moved: no direction to call, and naive's MAE of 0 makes rel MAE undefined
        assert math.isnan(result.value("directional_accuracy", MODEL, h, "FLAT"))
        assert math.isnan(result.value("rel_mae", "drift", h, "FLAT"))


def test_drift_mean_and_arima_are_exact_on_a_log_linear_series(tiny_predictor):
    g = 0.002
    prices = 50.0 * np.exp(g * np.arange(360))
    result = run_backtest(tiny_predictor, {"LINE": path_bars(prices)}, horizons=(1, 5))
    for h in (1, 5):
        frame = result.forecasts[h]
        close = frame["origin_close"].to_numpy()
        for name in ("drift", "mean", "arima"):
            assert result.value("mae", name, h, "LINE") == pytest.approx(0.0, abs=1e-9)
            assert result.value("rel_mae", name, h, "LINE") == pytest.approx(0.0, abs=1e-9)
        # naive misses by the trend; SMA20 lags it by the mean of exp(-g k), k = 0..19
        assert result.value("mae", NAIVE, h, "LINE") == pytest.approx(
            np.mean(close * (np.exp(g * h) - 1)))
        sma_level = np.mean(np.exp(-g * np.arange(20)))
        assert result.value("mae", "sma20", h, "LINE") == pytest.approx(
            np.mean(close * (np.exp(g * h) - sma_level)))
        assert result.value("directional_accuracy", "drift", h, "LINE") == 1.0


def test_a_ticker_without_enough_history_is_skipped_with_the_reason(tiny_predictor, bars):
    short = bars["AAA"].iloc[-60:].reset_index(drop=True)
    result = run_backtest(tiny_predictor, {"AAA": bars["AAA"], "NEW": short}, horizons=(1,))
    assert result.tickers == ("AAA",)
    assert result.skipped == {
        "NEW": f"NEW has 60 usable bars; at least {tiny_predictor.min_bars} are needed for one "
               "window"
    }
    assert set(result.metrics["ticker"]) == {"AAA", POOLED}


def test_an_explicit_range_before_the_test_segment_is_flagged_in_sample(tiny_predictor, bars):
    result = run_backtest(tiny_predictor, bars, start=dt.date(2020, 12, 15),
                          end=dt.date(2021, 1, 14), horizons=(1,), baselines=("drift",),
                          band_baselines=("ewma",))  # the empirical band needs 250 bars first
    assert result.start == dt.date(2020, 12, 15)
    assert result.end == dt.date(2021, 1, 14)
    assert result.methods == (MODEL, NAIVE, "drift", "model_aci", "ewma", "ewma_aci")
    assert result.config["in_sample_origins"] is True
    assert result.config["baseline_fit_end"] == tiny_predictor.manifest.split.train[1].isoformat()
    early = run_backtest(tiny_predictor, bars, start=dt.date(2020, 6, 1), end=dt.date(2020, 6, 30),
                         horizons=(1,), baselines=("mean",), band_baselines=("ewma",))
    # baselines never fit on data past the first origin they forecast
    assert early.config["baseline_fit_end"] == "2020-06-01"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"horizons": (0, 1)}, "horizons must lie in 1..5 (the model's horizon), got [0]"),
        ({"horizons": (6,)}, "horizons must lie in 1..5 (the model's horizon), got [6]"),
        ({"horizons": ()}, "horizons must not be empty"),
        ({"baselines": ("prophet",)},
         f"unknown baselines ['prophet']; known: {list(BASELINES)}"),
        ({"start": dt.date(2021, 5, 1), "end": dt.date(2021, 4, 1)},
         "start 2021-05-01 is after end 2021-04-01"),
        ({"start": dt.date(2030, 1, 1), "end": dt.date(2030, 2, 1)},
         ("nothing to backtest between 2030-01-01 and 2030-02-01: "
          "AAA: no bars between 2030-01-01 and 2030-02-01")),
    ],
)
def test_bad_requests_get_a_clear_error(tiny_predictor, bars, kwargs, message):
    with pytest.raises(ValueError) as exc:
        run_backtest(tiny_predictor, {"AAA": bars["AAA"]}, **kwargs)
    assert str(exc.value) == message
