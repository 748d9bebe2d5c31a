"""build_features: causal, golden values from hand formulas, split-robust, warm-up dropped."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from service.forecasting.features import (
    BARS_COLUMNS,
    FEATURE_WARMUP,
    WARMUP_BARS,
    _indicators,
    build_features,
    build_features_many,
    min_bars,
)
from service.forecasting.indicators import chart_indicators
from service.forecasting.spec import FEATURE_NAMES, INDICATOR_PARAMS, FeatureSpec
from tests.bar_factories import random_future


@pytest.fixture(scope="module")
def aapl_bars(shared_dataset) -> pd.DataFrame:
    """AAPL's bars from the shared dataset, minimal prep: drop rows with empty fields."""
    df = pd.read_csv(shared_dataset, parse_dates=["date"])
    bars = df[df["ticker"] == "AAPL"].drop(columns="ticker").dropna()
    return bars.drop_duplicates("date").sort_values("date").reset_index(drop=True)


def synthetic_bars(n: int = 90, seed: int = 7) -> pd.DataFrame:
    """A random-walk ticker with a volume that varies, on business days."""
    rng = np.random.default_rng(seed)
    adj = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, n)))
    # The open wanders inside [low, high] so the range estimator sees a close-to-open move.
    opens = adj * (1.0 + rng.uniform(-0.008, 0.008, n))
    return pd.DataFrame(
        {
            "date": pd.bdate_range("2015-01-02", periods=n),
            "open": opens,
            "high": adj * 1.01,
            "low": adj * 0.99,
            "close": adj,
            "adj_close": adj,
            "volume": rng.integers(1_000_000, 5_000_000, n).astype(np.int64),
        }
    )


# ---- hand formulas (plain Python) ------------------------------------------------------------


def wilder_rsi(prices: list[float], at: int, n: int = 14) -> float:
    """RSI at index `at` with Wilder smoothing avg = avg * (n-1)/n + x/n.

    `ta` seeds the smoothing with the first change, which is undefined and counted as 0 (no gain,
    no loss), rather than with a 14-bar simple mean; this reproduces that seed.
    """
    avg_up = avg_down = 0.0
    for i in range(1, at + 1):
        change = prices[i] - prices[i - 1]
        avg_up = avg_up * (n - 1) / n + max(change, 0.0) / n
        avg_down = avg_down * (n - 1) / n + max(-change, 0.0) / n
    return 100.0 - 100.0 / (1.0 + avg_up / avg_down)


def ema(values: list[float], span: int) -> list[float]:
    """Recursive EMA, alpha = 2 / (span + 1), seeded with the first value."""
    alpha = 2.0 / (span + 1)
    out = [values[0]]
    for v in values[1:]:
        out.append(out[-1] * (1 - alpha) + v * alpha)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation."""
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


# ---- golden values ---------------------------------------------------------------------------


@pytest.mark.parametrize("at", [60, 89])
def test_features_match_hand_formulas(at):
    bars = synthetic_bars()
    p = bars["adj_close"].tolist()
    features = build_features(bars).loc[bars["date"][at]]

    mid, sd = mean_std(p[at - 19 : at + 1])
    upper, lower = mid + 2 * sd, mid - 2 * sd
    macd_line = ema(p, 12)[at] - ema(p, 26)[at]
    log_vol = [math.log1p(v) for v in bars["volume"].tolist()]
    vol_mean, vol_sd = mean_std(log_vol[at - 19 : at + 1])

    expected = {
        "log_return": math.log(p[at] / p[at - 1]),
        "rsi14": wilder_rsi(p, at) / 100.0,
        "sma20_ratio": sum(p[at - 19 : at + 1]) / 20 / p[at] - 1.0,
        "sma50_ratio": sum(p[at - 49 : at + 1]) / 50 / p[at] - 1.0,
        "macd": macd_line / p[at],
        "bb_pctb": (p[at] - lower) / (upper - lower),
        "bb_width": (upper - lower) / mid,
        "volume_z": (log_vol[at] - vol_mean) / vol_sd,
    }
    for name, value in expected.items():
        assert features[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def wilder_atr(high: list[float], low: list[float], close: list[float], at: int,
               n: int = 14) -> float:
    """ATR at `at`: the mean true range of bars 0..n-1, then avg = (avg (n-1) + TR) / n.

    TR_i = max(H - L, |H - C_{i-1}|, |L - C_{i-1}|); bar 0 has no previous close: TR_0 = H - L.
    """
    tr = [high[0] - low[0]] + [
        max(high[i] - low[i], abs(high[i] - close[i - 1]), abs(low[i] - close[i - 1]))
        for i in range(1, at + 1)
    ]
    avg = sum(tr[:n]) / n
    for i in range(n, at + 1):
        avg = (avg * (n - 1) + tr[i]) / n
    return avg


@pytest.mark.parametrize("at", [60, 89])
def test_volatility_features_match_hand_formulas(at):
    bars = synthetic_bars()
    p = bars["adj_close"].tolist()
    o, h, lo, c = (bars[col].tolist() for col in ("open", "high", "low", "close"))
    features = build_features(bars).loc[bars["date"][at]]
    r = [math.log(p[i] / p[i - 1]) for i in range(1, at + 1)]  # r[i - 1] = return into bar i

    lam = 0.94
    weights = [lam**k for k in range(len(r))]  # newest return first
    ewma_var = sum(w * x * x for w, x in zip(weights, reversed(r))) / sum(weights)
    gk = [0.5 * math.log(h[i] / lo[i]) ** 2
          - (2 * math.log(2) - 1) * math.log(c[i] / o[i]) ** 2 for i in range(at - 19, at + 1)]
    rms = lambda xs: math.sqrt(sum(x * x for x in xs) / len(xs))
    expected = {
        "ewma_vol": math.sqrt(ewma_var),
        "gk_vol": math.sqrt(sum(gk) / 20),
        # close == adj_close in these bars, so the split adjustment is the identity here.
        "atr_ratio": wilder_atr(h, lo, c, at) / p[at],
        "vol_ratio": rms(r[-10:]) / rms(r[-60:]),
    }
    for name, value in expected.items():
        assert features[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_macd_signal_and_histogram_match_hand_formulas():
    bars = synthetic_bars()
    p = bars["adj_close"].tolist()
    # The signal EMA starts on the first defined MACD value (bar 25), not on the warm-up.
    macd_line = [f - s for f, s in zip(ema(p, 12), ema(p, 26))][25:]
    signal = ema(macd_line, 9)
    features = build_features(bars)
    at = 80
    assert features["macd_signal"].iloc[at - WARMUP_BARS] == pytest.approx(
        signal[at - 25] / p[at], rel=1e-9
    )
    assert features["macd_hist"].iloc[at - WARMUP_BARS] == pytest.approx(
        (macd_line[at - 25] - signal[at - 25]) / p[at], rel=1e-9
    )


# ---- causality -------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [60, 300, 800, 1150])
def test_features_on_or_before_cut_ignore_later_bars(aapl_bars, cut):
    original = build_features(aapl_bars)
    cut_date = aapl_bars["date"][cut]
    # Every later bar drawn afresh (a common factor per bar would keep its high / low and
    # close / open ratios, all the range features read, up to rounding; a permuted volume the
    # order-free statistics of the future).
    tampered = random_future(aapl_bars, cut_date, seed=cut)
    rebuilt = build_features(tampered)

    before = original.index <= cut_date
    np.testing.assert_array_equal(rebuilt[before].to_numpy(), original[before].to_numpy())
    after_changed = (rebuilt[~before].to_numpy() != original[~before].to_numpy()).any(axis=1)
    assert after_changed.all()


def test_prefix_of_bars_gives_the_same_rows(aapl_bars):
    full = build_features(aapl_bars)
    prefix = build_features(aapl_bars.iloc[: WARMUP_BARS + 1])
    assert len(prefix) == 1
    np.testing.assert_array_equal(prefix.to_numpy(), full.iloc[:1].to_numpy())


# ---- shape, warm-up, no NaN ------------------------------------------------------------------


def test_real_bars_give_finite_float_features_in_spec_order(aapl_bars):
    features = build_features(aapl_bars)
    assert list(features.columns) == list(FEATURE_NAMES)
    assert features.index.name == "date"
    assert isinstance(features.index, pd.DatetimeIndex)
    assert (features.dtypes == np.float64).all()
    assert np.isfinite(features.to_numpy()).all()
    assert len(features) == len(aapl_bars) - WARMUP_BARS
    assert features.index[0] == aapl_bars["date"][WARMUP_BARS]
    pd.testing.assert_index_equal(
        features.index, pd.DatetimeIndex(aapl_bars["date"][WARMUP_BARS:], name="date")
    )


def test_warmup_per_feature_is_where_ta_first_defines_it(aapl_bars):
    raw = _indicators(
        pd.Series(aapl_bars["adj_close"].to_numpy()),
        pd.Series(aapl_bars["volume"].to_numpy(dtype=float)),
        aapl_bars[["open", "high", "low", "close"]].to_numpy(dtype=float),
    )
    for name in FEATURE_NAMES:
        defined = ~np.isnan(raw[name])
        assert int(np.argmax(defined)) == FEATURE_WARMUP[name], name
        assert defined[FEATURE_WARMUP[name] :].all(), name
    assert WARMUP_BARS == 60  # vol_ratio's 60-session window (49, SMA50's, before version 2)
    assert min_bars(FeatureSpec()) == 60 + 60


def test_features_and_chart_read_one_parameter_table():
    from service.forecasting import features, indicators

    assert features.P is INDICATOR_PARAMS and indicators.P is INDICATOR_PARAMS
    p = INDICATOR_PARAMS
    assert (p.rsi_window, p.sma_short, p.sma_long) == (14, 20, 50)
    assert (p.macd_fast, p.macd_slow, p.macd_signal) == (12, 26, 9)
    assert (p.bollinger_window, p.bollinger_dev, p.volume_z_window) == (20, 2, 20)
    # Warm-ups follow from the table (checked against `ta` itself in the test above).
    assert FEATURE_WARMUP["macd_signal"] == p.macd_slow + p.macd_signal - 2
    assert FEATURE_WARMUP["sma50_ratio"] == p.sma_long - 1


def test_chart_overlays_on_adj_close_are_every_price_feature_in_dollars():
    bars = synthetic_bars(n=200)
    features = build_features(bars)
    chart = chart_indicators(bars, price="adj_close").loc[features.index]
    adj = bars.set_index("date")["adj_close"].loc[features.index]
    for name, dollars in (("sma20_ratio", chart["sma20"] / adj - 1),
                          ("sma50_ratio", chart["sma50"] / adj - 1),
                          ("macd", chart["macd"] / adj),
                          ("macd_signal", chart["macd_signal"] / adj),
                          ("macd_hist", chart["macd_hist"] / adj),
                          ("rsi14", chart["rsi14"] / 100),
                          ("bb_pctb", (adj - chart["bb_lower"])
                           / (chart["bb_upper"] - chart["bb_lower"]))):
        np.testing.assert_allclose(dollars.to_numpy(), features[name].to_numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=name)


def test_warmup_rows_are_dropped_not_backfilled():
    bars = synthetic_bars(n=WARMUP_BARS + 1)
    features = build_features(bars)
    assert len(features) == 1
    assert features.index[0] == bars["date"].iloc[-1]
    assert build_features(bars.iloc[:WARMUP_BARS]).empty


def test_spec_with_fewer_features_keeps_its_order_and_shorter_warmup():
    spec = FeatureSpec(features=("volume_z", "log_return"))
    bars = synthetic_bars()
    features = build_features(bars, spec)
    assert list(features.columns) == ["volume_z", "log_return"]
    assert features.index[0] == bars["date"][19]
    full = build_features(bars)
    np.testing.assert_array_equal(
        features.loc[full.index, ["log_return"]].to_numpy(), full[["log_return"]].to_numpy()
    )


def test_too_short_bars_give_an_empty_frame_with_spec_columns():
    features = build_features(synthetic_bars(n=10))
    assert features.empty
    assert list(features.columns) == list(FEATURE_NAMES)
    assert features.index.name == "date"


def test_flat_prices_and_volume_stay_finite():
    bars = synthetic_bars()
    bars.loc[30:, ["open", "high", "low", "close", "adj_close"]] = 42.0
    bars.loc[30:, "volume"] = 1_000_000
    features = build_features(bars)
    flat = features.loc[bars["date"][60] :]
    assert np.isfinite(features.to_numpy()).all()
    assert (flat["bb_pctb"] == 0.5).all()
    assert (flat["bb_width"] == 0.0).all()
    assert (flat["volume_z"] == 0.0).all()
    assert (flat["log_return"] == 0.0).all()
    # No movement within sessions: no range volatility; close-to-close volatility decays.
    assert (flat["gk_vol"] == 0.0).all()
    assert (np.diff(flat["ewma_vol"]) < 0).all() and (np.diff(flat["atr_ratio"]) < 0).all()
    long_flat = synthetic_bars(n=150)
    long_flat.loc[30:, ["open", "high", "low", "close", "adj_close"]] = 42.0
    regime = build_features(long_flat)["vol_ratio"].loc[long_flat["date"][91] :]
    assert (regime == 1.0).all()  # both windows flat: the regime is called unchanged


# ---- splits use adjusted prices --------------------------------------------------------------


def test_two_for_one_split_in_close_leaves_features_unchanged():
    bars = synthetic_bars()
    split_bars = bars.copy()
    # Raw prices halve on day 70 (2:1 split); adj_close is continuous across it.
    for col in ["open", "high", "low", "close"]:
        split_bars.loc[70:, col] = split_bars.loc[70:, col] / 2
    close = split_bars["close"].to_numpy()
    assert math.log(close[70] / close[69]) < -0.6  # what a close-based return would show
    features = build_features(split_bars)
    # ATR puts high/low/close on adj_close's basis (x adj/close): equal up to that rounding.
    np.testing.assert_allclose(features.to_numpy(), build_features(bars).to_numpy(),
                               rtol=1e-12, atol=1e-15)
    assert features["log_return"].abs().max() < 0.1
    assert features["atr_ratio"].max() < 0.1  # quoted prices would show a 50 % true range


# ---- bad input -------------------------------------------------------------------------------


def test_bars_columns_are_the_validators_canonical_tuple():
    from service.core import bars
    from service.sources import validate

    assert BARS_COLUMNS is validate.BAR_COLUMNS is bars.BAR_COLUMNS
    assert BARS_COLUMNS == ("date", "open", "high", "low", "close", "adj_close", "volume")


def test_missing_columns_are_named():
    bars = synthetic_bars().drop(columns=["adj_close", "volume"])
    with pytest.raises(ValueError) as err:
        build_features(bars)
    assert str(err.value) == (
        "bars are missing columns ['adj_close', 'volume']; expected "
        "['date', 'open', 'high', 'low', 'close', 'adj_close', 'volume']"
    )


def test_unsorted_dates_are_refused():
    bars = synthetic_bars().iloc[::-1]
    with pytest.raises(ValueError, match="^bars dates must be unique and sorted ascending$"):
        build_features(bars)


def test_unknown_feature_name_is_refused():
    with pytest.raises(ValueError, match=r"^unknown features \['rsi7'\]"):
        build_features(synthetic_bars(), FeatureSpec(features=("log_return", "rsi7")))


@pytest.mark.parametrize(("column", "value"), [("adj_close", 0.0), ("volume", -1.0)])
def test_invalid_bar_is_reported_with_its_date(column, value):
    bars = synthetic_bars()
    bars[column] = bars[column].astype(float)
    bars.loc[70, column] = value
    with pytest.raises(ValueError) as err:
        build_features(bars)
    assert str(err.value) == (
        f"bars on {bars['date'][70].date()} need a positive adj_close and a non-negative volume"
    )


# ---- many tickers ----------------------------------------------------------------------------


def test_many_tickers_match_one_at_a_time():
    a, b = synthetic_bars(seed=1), synthetic_bars(n=70, seed=2)
    multi = pd.concat([b.assign(ticker="BBB"), a.assign(ticker="AAA")], ignore_index=True)
    multi = multi[["ticker", *BARS_COLUMNS]]
    long = build_features_many(multi, keep=("adj_close",))
    assert list(long.columns) == ["ticker", "date", "adj_close", *FEATURE_NAMES]
    assert long["ticker"].tolist() == ["AAA"] * (90 - WARMUP_BARS) + ["BBB"] * (70 - WARMUP_BARS)
    for ticker, bars in [("AAA", a), ("BBB", b)]:
        part = long[long["ticker"] == ticker]
        one = build_features(bars)
        np.testing.assert_array_equal(part[list(FEATURE_NAMES)].to_numpy(), one.to_numpy())
        np.testing.assert_array_equal(part["date"].to_numpy(), one.index.to_numpy())
        np.testing.assert_array_equal(
            part["adj_close"].to_numpy(), bars["adj_close"].to_numpy()[WARMUP_BARS:]
        )


def test_many_with_only_short_tickers_is_empty_with_columns():
    multi = synthetic_bars(n=20).assign(ticker="AAA")
    long = build_features_many(multi)
    assert long.empty
    assert list(long.columns) == ["ticker", "date", *FEATURE_NAMES]


def test_the_registry_holds_every_default_feature_with_its_warmup():
    from service.forecasting.features import FEATURES

    assert set(FEATURE_NAMES) <= set(FEATURES)
    assert {name: f.warmup for name, f in FEATURES.items()} == FEATURE_WARMUP
    assert all(f.name == name for name, f in FEATURES.items())


@pytest.mark.parametrize("n", [5, 14, 15, 90, 1260])
def test_average_true_range_is_tas_float_for_float(aapl_bars, n):
    from ta.volatility import AverageTrueRange

    from service.forecasting.features import average_true_range

    for bars in (aapl_bars.iloc[-n:], synthetic_bars(n)):
        factor = bars["adj_close"].to_numpy() / bars["close"].to_numpy()
        high, low = bars["high"].to_numpy() * factor, bars["low"].to_numpy() * factor
        close = bars["adj_close"].to_numpy()
        got = average_true_range(high, low, close, 14)
        if n < 14:  # no first average yet (ta itself raises here)
            assert len(got) == n and np.isnan(got).all()
            continue
        expected = AverageTrueRange(pd.Series(high), pd.Series(low), pd.Series(close),
                                    window=14, fillna=False).average_true_range().to_numpy()
        expected = expected.copy()
        expected[:13] = np.nan  # ta's zeros before its first average
        np.testing.assert_array_equal(got, expected)
