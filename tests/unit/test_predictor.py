"""The tiny_predictor: bars -> forecast with real trading dates, as_of, batching, historical origins."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from service.core.errors import InsufficientHistory
from service.forecasting.calendar import next_trading_days
from service.forecasting.features import min_bars
from service.forecasting.forecaster import TickerSeries
from tests.bar_factories import random_future


@pytest.fixture(scope="module")
def bars(tiny_artifact) -> dict[str, pd.DataFrame]:
    multi = tiny_artifact.bars
    return {t: g.drop(columns="ticker").reset_index(drop=True) for t, g in multi.groupby("ticker")}


def test_forecast_has_one_step_per_trading_day_with_ordered_interval(tiny_predictor, bars):
    aaa = bars["AAA"]
    forecast = tiny_predictor.forecast("AAA", aaa, horizon=5)
    last = aaa.iloc[-1]
    assert forecast.ticker == "AAA"
    assert forecast.as_of == last["date"].date()
    assert forecast.last_close == pytest.approx(last["close"])
    assert forecast.model_version == tiny_predictor.manifest.version
    assert forecast.seen_in_training is True
    assert [s.step for s in forecast.steps] == [1, 2, 3, 4, 5]
    assert [s.date for s in forecast.steps] == next_trading_days(forecast.as_of, 5)
    for step in forecast.steps:
        assert step.lower <= step.close <= step.upper
        assert step.predicted_return == pytest.approx(step.close / forecast.last_close - 1)


def test_forecast_prices_are_close_times_exp_of_the_models_log_returns(tiny_predictor, bars):
    aaa = bars["AAA"]
    item = tiny_predictor.preprocess("AAA", aaa)
    q = tiny_predictor.predict(item.window[None], np.array([item.ticker_id]))[0]  # (H, Q)
    forecast = tiny_predictor.forecast("AAA", aaa, horizon=3)
    close = aaa["close"].iloc[-1]
    for h, step in enumerate(forecast.steps):
        # quantiles 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95: the median, the 10-90% band
        assert step.close == pytest.approx(close * np.exp(q[h, 3]), rel=1e-6)
        # The band is the served one: the model's quantiles recalibrated by ACI.
        served = tiny_predictor.band_forecaster().historical_forecasts(
            TickerSeries("AAA", aaa), np.array([len(aaa) - 1]), 3).log_returns[0]
        assert step.lower == pytest.approx(close * np.exp(served[h, 1]), rel=1e-6)
        assert step.upper == pytest.approx(close * np.exp(served[h, 5]), rel=1e-6)
        assert step.bands[90] == pytest.approx((close * np.exp(served[h, 0]),
                                                close * np.exp(served[h, 6])), rel=1e-6)


def test_as_of_drops_later_bars(tiny_predictor, bars):
    aaa = bars["AAA"]
    as_of = aaa["date"].iloc[250].date()
    past = tiny_predictor.forecast("AAA", aaa, horizon=2, as_of=as_of)
    truncated = tiny_predictor.forecast("AAA", aaa.iloc[:251], horizon=2)
    assert past == truncated
    assert past.as_of == as_of
    # Every bar after as_of redrawn at random changes nothing: not the forecast (every step's
    # prices and bands, the recent coverage), nor the band state served with it.
    scrambled = random_future(aaa, as_of, seed=5)
    assert tiny_predictor.forecast("AAA", scrambled, horizon=2, as_of=as_of) == past
    (_, state), = tiny_predictor.forecast_with_states([("AAA", aaa)], 5, as_of)
    (again, moved), = tiny_predictor.forecast_with_states([("AAA", scrambled)], 5, as_of)
    assert again.as_of == as_of and again.steps == tiny_predictor.forecast(
        "AAA", aaa, horizon=5, as_of=as_of).steps
    for name in ("qhat", "quantiles"):
        np.testing.assert_array_equal(getattr(moved, name), getattr(state, name))
    assert (moved.as_of, moved.last_close, moved.recent_coverage, moved.recent_sessions,
            moved.warnings) == (state.as_of, state.last_close, state.recent_coverage,
                                state.recent_sessions, state.warnings)
    # ... while the latest forecast does read those bars (the scramble reached the model).
    assert tiny_predictor.forecast("AAA", scrambled, horizon=2) != tiny_predictor.forecast(
        "AAA", aaa, horizon=2)


def test_as_of_on_a_non_trading_day_uses_the_last_bar_before_it(tiny_predictor, bars):
    aaa = bars["AAA"]
    friday = aaa.loc[aaa["date"].dt.dayofweek == 4, "date"].iloc[-3]
    sunday = (friday + pd.Timedelta(days=2)).date()
    forecast = tiny_predictor.forecast("AAA", aaa, horizon=1, as_of=sunday)
    assert forecast.as_of == friday.date()
    assert forecast.steps[0].date == next_trading_days(sunday, 1)[0]


def test_a_forecast_over_sessions_the_model_was_fitted_on_is_flagged_in_sample(tiny_predictor,
                                                                               bars):
    """In-sample: the forecast's sessions overlap the training and validation targets (from the
    first training origin to the last validation origin's horizon-day target, which early
    stopping read). Not: an origin from that target on, nor an era before training."""
    aaa = bars["AAA"]
    split, spec = tiny_predictor.manifest.split, tiny_predictor.spec
    dates = aaa["date"].dt.date
    last_target = next_trading_days(split.val[1], spec.horizon)[-1]
    assert last_target < split.test[0]  # the gap holds it: origins between are out of sample
    before = dates[dates < last_target].iloc[-1]
    out = tiny_predictor.forecast("AAA", aaa, horizon=1, as_of=last_target)
    assert out.as_of == last_target and out.warnings == ()
    inside = tiny_predictor.forecast("AAA", aaa, horizon=1, as_of=before)
    expected = (f"as_of {before} is inside the period model {tiny_predictor.manifest.version} "
                f"was trained and validated on (its targets ran from {split.train[0]} to "
                f"{last_target}): this forecast is in-sample and looks better than a real one "
                "would")
    assert inside.warnings == (expected,)
    # The same figures either way: the warning is all that differs from an unflagged forecast.
    assert inside.steps == tiny_predictor.forecast("AAA", aaa.loc[dates <= before], 1).steps
    assert tiny_predictor.forecast("AAA", aaa, horizon=1, as_of=split.train[1]).warnings == (
        expected.replace(f"as_of {before}", f"as_of {split.train[1]}"),)
    # An era before training (the same bars twenty years earlier): never seen, no warning.
    early = aaa.assign(date=aaa["date"] - pd.DateOffset(years=20))
    early = early[early["date"].dt.dayofweek < 5].reset_index(drop=True)
    assert early["date"].iloc[-1].date() < split.train[0]
    assert tiny_predictor.forecast("AAA", early, horizon=5).warnings == ()


def test_too_few_bars_names_the_ticker_and_the_counts(tiny_predictor, bars):
    needed = min_bars(tiny_predictor.spec)
    assert needed == 60 + 20  # vol_ratio's 60-session warm-up + window
    with pytest.raises(InsufficientHistory) as err:
        tiny_predictor.forecast("AAA", bars["AAA"].iloc[: needed - 1], horizon=1)
    assert str(err.value) == f"AAA has {needed - 1} usable bars; at least {needed} are needed for one window"
    assert (err.value.ticker, err.value.n_bars, err.value.needed) == ("AAA", needed - 1, needed)
    assert tiny_predictor.forecast("AAA", bars["AAA"].iloc[:needed], horizon=1).steps


def test_horizon_outside_the_model_is_refused(tiny_predictor, bars):
    for horizon in (0, 6):
        with pytest.raises(ValueError, match=f"horizon must be between 1 and 5, got {horizon}"):
            tiny_predictor.forecast("AAA", bars["AAA"], horizon=horizon)


def test_forecast_many_is_one_batch_equal_to_single_forecasts(tiny_predictor, bars):
    items = [("AAA", bars["AAA"]), ("CCC", bars["CCC"]), ("NEW", bars["BBB"])]
    many = tiny_predictor.forecast_many(items, horizon=4)
    singles = [tiny_predictor.forecast(t, b, horizon=4) for t, b in items]
    for a, b in zip(many, singles):
        assert a.ticker == b.ticker
        for sa, sb in zip(a.steps, b.steps):
            assert sa.close == pytest.approx(sb.close, rel=1e-6)
    assert [f.seen_in_training for f in many] == [True, True, False]
    assert tiny_predictor.forecast_many([], horizon=1) == []


def test_unseen_ticker_uses_the_unknown_embedding(tiny_predictor, bars):
    as_new = tiny_predictor.forecast("NEW", bars["BBB"], horizon=3)
    as_bbb = tiny_predictor.forecast("BBB", bars["BBB"], horizon=3)
    assert not as_new.seen_in_training
    assert as_new.steps[0].close != as_bbb.steps[0].close
    item = tiny_predictor.preprocess("NEW", bars["BBB"])
    assert item.ticker_id == 0


def test_predict_origins_matches_forecasts_made_at_each_origin(tiny_predictor, bars):
    aaa = bars["AAA"]
    dates, quantiles, closes = tiny_predictor.predict_origins("AAA", aaa)
    # Every date with a full window: warm-up + window - 1 bars come first.
    assert len(dates) == len(aaa) - min_bars(tiny_predictor.spec) + 1
    assert quantiles.shape == (len(dates), 5, 7)
    for i in (0, 100, len(dates) - 1):
        origin = dates[i].date()
        one = tiny_predictor.forecast("AAA", aaa, horizon=5, as_of=origin)
        assert one.as_of == origin
        assert closes[i] == pytest.approx(one.last_close)
        np.testing.assert_allclose(
            [s.close for s in one.steps], closes[i] * np.exp(quantiles[i, :, 3]), rtol=1e-5)


def test_predict_origins_with_chosen_dates_and_causal_under_future_scrambling(tiny_predictor, bars):
    aaa = bars["AAA"]
    wanted = [aaa["date"].iloc[k].date() for k in (100, 200, 300)] + [dt.date(1999, 1, 4)]
    dates, quantiles, closes = tiny_predictor.predict_origins("AAA", aaa, origins=wanted)
    assert [d.date() for d in dates] == wanted[:3]  # no bar on 1999-01-04: left out
    # Every bar after origin 200 redrawn at random (prices, adj_close / close, volume).
    scrambled = random_future(aaa, aaa["date"].iloc[200], seed=11)
    d2, q2, c2 = tiny_predictor.predict_origins("AAA", scrambled, origins=wanted)
    np.testing.assert_array_equal(d2, dates)
    np.testing.assert_array_equal(q2[:2], quantiles[:2])  # origins 100 and 200 see no change
    np.testing.assert_array_equal(c2[:2], closes[:2])
    assert not np.allclose(q2[2], quantiles[2])
    # Every origin, not three: the forecasts at each origin <= 200 are bit for bit the same.
    all_dates, all_q, _ = tiny_predictor.predict_origins("AAA", aaa)
    moved_dates, moved_q, _ = tiny_predictor.predict_origins("AAA", scrambled)
    np.testing.assert_array_equal(moved_dates, all_dates)
    kept = all_dates <= aaa["date"].iloc[200]
    assert 50 < kept.sum() < len(all_dates)
    np.testing.assert_array_equal(moved_q[kept], all_q[kept])
    assert not np.isclose(moved_q[~kept], all_q[~kept]).all(axis=(1, 2)).any()


def test_next_trading_days_follow_the_nyse_calendar():
    # Christmas 2017 fell on a Monday; New Year's Day 2018 too.
    assert next_trading_days(dt.date(2017, 12, 22), 3) == [
        dt.date(2017, 12, 26), dt.date(2017, 12, 27), dt.date(2017, 12, 28)]
    assert next_trading_days(dt.date(2017, 12, 29), 1) == [dt.date(2018, 1, 2)]
    # Thanksgiving 2016 (Nov 24); the day after is a (half) session.
    assert next_trading_days(dt.date(2016, 11, 23), 2) == [dt.date(2016, 11, 25), dt.date(2016, 11, 28)]
    # Far beyond exchange_calendars' default range.
    far = next_trading_days(dt.date(2031, 12, 31), 2)
    assert far == [dt.date(2032, 1, 2), dt.date(2032, 1, 5)]
    assert next_trading_days(dt.date(2017, 1, 3), 0) == []
    assert len(next_trading_days(dt.date(2017, 1, 3), 30)) == 30


def test_the_models_aci_forecaster_is_built_once_per_manifest_band(tiny_predictor):
    import copy
    import dataclasses

    from service.forecasting.bands import ACISettings

    original = tiny_predictor.band_forecaster()
    predictor = copy.copy(tiny_predictor)  # the session's predictor stays as it is
    served = predictor.band_forecaster()  # the copy's own, not the one the original built
    assert served is not original and served.base is predictor
    assert predictor.band_forecaster() is served and tiny_predictor.band_forecaster() is original
    assert predictor.band_forecaster(slots=(1,)) is not served  # slots: its own
    settings = dataclasses.replace(served.settings, gamma=served.settings.gamma / 2)
    predictor.manifest = dataclasses.replace(
        predictor.manifest, band={**predictor.manifest.band, "aci": settings.to_dict()})
    again = predictor.band_forecaster()
    assert again is not served and again.settings == settings
    assert ACISettings.from_dict(predictor.manifest.band["aci"]) == again.settings
    predictor.manifest.band["aci"]["gamma"] = settings.gamma / 2  # changed in place: seen too
    assert predictor.band_forecaster().settings.gamma == settings.gamma / 2
    # A baseline's (fitted, so stateful) is built afresh every time.
    predictor.manifest = dataclasses.replace(
        predictor.manifest, band={**predictor.manifest.band, "served": "ewma_aci"})
    assert predictor.band_forecaster() is not predictor.band_forecaster()
    assert predictor.band_forecaster().base is not predictor
