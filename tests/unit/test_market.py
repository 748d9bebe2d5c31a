"""The market series and the market-context features: hand-computed, causal, opt-in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from service.forecasting.features import (
    MARKET_COLUMN,
    build_features,
    needs_market,
    warmup_bars,
)
from service.forecasting.spec import FEATURE_SETS, MARKET_FEATURES, FeatureSpec
from service.forecasting.volatility import ewma_volatility
from service.sources.market import market_series
from tests.bar_factories import make_bars, random_future
from tests.tiny_model import synthetic_bars_multi


def _closes(rows):
    frame = pd.DataFrame(rows, columns=["ticker", "date", "adj_close"])
    frame["date"] = pd.to_datetime(frame["date"])
    return frame


def test_market_return_is_the_mean_one_session_log_return_of_tickers_with_both_bars():
    closes = _closes([
        ("A", "2020-01-02", 100.0), ("A", "2020-01-03", 110.0), ("A", "2020-01-06", 99.0),
        ("B", "2020-01-02", 50.0), ("B", "2020-01-06", 55.0),  # no bar on the 3rd
        ("C", "2020-01-03", 20.0), ("C", "2020-01-06", 21.0),  # starts on the 3rd
    ])
    got = market_series(closes)
    assert list(got["date"].dt.strftime("%m-%d")) == ["01-03", "01-06"]
    # 01-03: only A has bars on 01-02 and 01-03; 01-06: A and C (B skipped a session).
    assert got["n_tickers"].tolist() == [1, 2]
    np.testing.assert_allclose(got["market_return"], [
        np.log(110 / 100), (np.log(99 / 110) + np.log(21 / 20)) / 2], rtol=0, atol=1e-15)


def test_market_series_is_causal_and_ignores_ticker_order():
    bars = synthetic_bars_multi(("AAA", "BBB", "CCC", "DDD"), n=120)
    closes = bars[["ticker", "date", "adj_close"]]
    full = market_series(closes)
    cut = bars["date"].sort_values().unique()[80]
    # From the cut on every close is drawn afresh (anywhere in e^±2 of 50) and a third of
    # those bars are gone (a ticker skipping sessions), shuffled: none of it may reach a
    # session before the cut, not even in the last bit.
    rng = np.random.default_rng(3)
    later = (closes["date"] >= cut).to_numpy()
    redrawn = np.where(later, 50.0 * np.exp(rng.uniform(-2.0, 2.0, len(closes))),
                       closes["adj_close"])
    kept = ~later | (rng.random(len(closes)) > 1 / 3)
    future = closes.assign(adj_close=redrawn)[kept]
    scrambled = market_series(future.sample(frac=1.0, random_state=3))
    before, again = full[full["date"] < cut], scrambled[scrambled["date"] < cut]
    assert len(before) == 79
    pd.testing.assert_frame_equal(again, before, check_exact=True)
    # ... and the scramble reached the series from the cut on, so the comparison has teeth.
    at = full["date"] >= cut
    assert not np.isin(scrambled.loc[scrambled["date"] >= cut, "market_return"],
                       full.loc[at, "market_return"]).any()
    # Recomputing from the session before a date on gives the same sessions from it on.
    start = full["date"].iloc[60]
    part = market_series(closes[closes["date"] >= full["date"].iloc[59]])
    pd.testing.assert_frame_equal(part.reset_index(drop=True),
                                  full[full["date"] >= start].reset_index(drop=True))


def _with_market(bars: pd.DataFrame, market: np.ndarray) -> pd.DataFrame:
    return bars.assign(**{MARKET_COLUMN: market})


def test_market_features_by_hand():
    bars = make_bars(120, seed=4)
    market = np.random.default_rng(5).normal(0, 0.01, len(bars))
    spec = FeatureSpec(features=("log_return", *MARKET_FEATURES), window=10)
    got = build_features(_with_market(bars, market), spec)
    warm = warmup_bars(spec)
    assert warm == 20  # market_vol's EWMA warm-up, as ewma_vol's
    log_return = np.diff(np.log(bars["adj_close"].to_numpy()))
    np.testing.assert_array_equal(got["market_return"].to_numpy(), market[warm:])
    np.testing.assert_allclose(got["excess_return"].to_numpy(),
                               log_return[warm - 1:] - market[warm:], rtol=0, atol=1e-15)
    # The EWMA of the market's returns from the ticker's second bar on (the first has none).
    vol = ewma_volatility(np.concatenate([[np.nan], market[1:]]))
    np.testing.assert_allclose(got["market_vol"].to_numpy(), vol[warm:], rtol=1e-12)
    # Causal: the bars and the market return from bar 100 on redrawn at random leave every
    # earlier row exactly as it was, and change every later one.
    moved = random_future(bars, bars["date"].iloc[99], seed=6)
    market_moved = market.copy()
    market_moved[100:] = np.random.default_rng(7).normal(0.0, 0.05, len(bars) - 100)
    again = build_features(_with_market(moved, market_moved), spec)
    pd.testing.assert_frame_equal(again.iloc[: 100 - warm], got.iloc[: 100 - warm],
                                  check_exact=True)
    assert (again.iloc[100 - warm:].to_numpy() != got.iloc[100 - warm:].to_numpy()).all()


def test_only_a_spec_with_market_features_needs_the_market_column():
    bars = make_bars(120, seed=4)
    assert not needs_market(FeatureSpec())
    assert not needs_market(FeatureSpec(features=FEATURE_SETS["returns"]))
    assert needs_market(FeatureSpec(features=FEATURE_SETS["+market"]))
    assert build_features(bars, FeatureSpec()).shape[1] == len(FeatureSpec().features)
    with pytest.raises(ValueError, match="reads the market series"):
        build_features(bars, FeatureSpec(features=FEATURE_SETS["+market"]))
    gap = np.zeros(len(bars))
    gap[90] = np.nan  # a session the stored series lacks
    with pytest.raises(ValueError, match="no market return on"):
        build_features(_with_market(bars, gap), FeatureSpec(features=FEATURE_SETS["+market"]))


def test_the_ablation_sets_are_distinct_and_registered():
    from service.forecasting.features import FEATURES

    sets = list(FEATURE_SETS.values())
    assert len({tuple(s) for s in sets}) == len(sets)
    for features in sets:
        assert set(features) <= set(FEATURES)
        assert "ewma_vol" in features  # the target's scale
    assert set(FEATURE_SETS["+market"]) - set(FEATURE_SETS["indicators"]) == set(MARKET_FEATURES)
