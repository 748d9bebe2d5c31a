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
from tests.bar_factories import make_bars
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
    later = closes.assign(adj_close=np.where(closes["date"] >= cut,
                                             closes["adj_close"] * 3.0, closes["adj_close"]))
    scrambled = market_series(later.sample(frac=1.0, random_state=3))
    before = full["date"] < cut
    pd.testing.assert_frame_equal(scrambled[before], full[before])
    assert not np.allclose(scrambled.loc[~before, "market_return"].iloc[:1],
                           full.loc[~before, "market_return"].iloc[:1])
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
    # Causal: a changed market return tomorrow leaves today's rows alone.
    moved = market.copy()
    moved[100:] += 0.05
    again = build_features(_with_market(bars, moved), spec)
    pd.testing.assert_frame_equal(again.iloc[: 100 - warm], got.iloc[: 100 - warm])


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
