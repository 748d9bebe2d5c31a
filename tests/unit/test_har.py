"""The range-based (HAR) volatility band: the Garman–Klass + overnight-gap variance proxy, the
pooled HAR fit, its causality, and ACI with a per-(origin, horizon) scale, served as walked."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from service.evaluation.backtest import bars_by_ticker, run_backtest
from service.forecasting.bands import (
    HAR_SCALE_BOUNDS,
    ACIForecaster,
    ACIRun,
    ACISettings,
    aci_bands,
    aci_state,
    aci_states,
    har_scale,
)
from service.forecasting.forecaster import TickerSeries
from service.forecasting.volatility import (
    VOL_FLOOR,
    HarVolatility,
    daily_variance,
    fit_har,
    har_regressors,
)
from tests.bar_factories import make_bars
from tests.unit.test_backtest import _assert_served_band_is_the_backtests

LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
COVERAGES = (0.5, 0.8, 0.9)


# ---- the variance proxy ------------------------------------------------------------------------


def test_garman_klass_plus_gap_by_hand_on_three_bars():
    bars = pd.DataFrame({
        "date": pd.bdate_range("2020-01-02", periods=3),
        # bar 1 is flat and opens at the last close: no range, no gap (the floor);
        # bar 2 is after a 2:1 split (adj_close / close = 2): its open is no gap of -50 %.
        "open": [100.0, 101.0, 50.0], "high": [102.0, 101.0, 52.0],
        "low": [99.0, 101.0, 49.0], "close": [101.0, 101.0, 51.0],
        "adj_close": [101.0, 101.0, 102.0], "volume": [1e6] * 3,
    })
    v = daily_variance(bars)
    assert math.isnan(v[0])  # no close before the first bar: no gap
    assert v[1] == VOL_FLOOR ** 2
    gk = 0.5 * math.log(52 / 49) ** 2 - (2 * math.log(2) - 1) * math.log(51 / 50) ** 2
    gap = math.log(50 * 102 / 51) - math.log(101)  # the adjusted open over the last adj close
    assert v[2] == pytest.approx(gk + gap ** 2, rel=1e-14)
    with pytest.raises(ValueError, match="kind"):
        daily_variance(bars, "cc")


# ---- the fit -----------------------------------------------------------------------------------

TRUE = (-1.0, 0.3, 0.25, 0.3)  # a, b (daily), c (weekly), d (monthly)
NOISE = 0.4


def har_panel(n_tickers: int = 6, n: int = 1500, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Bars whose variance proxy follows a HAR exactly: log v_{t+1} = a + b log v_t +
    c log mean_5 + d log mean_22 + ε. Open = close (no intraday drift), ½ ln(H/L)² = v/2 and
    the close-to-close move (the gap) ±√(v/2), so v_t = v (and r²_{t,1} = v_{t+1} / 2)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n_tickers):
        logv = np.full(n, -10.0)
        for t in range(22, n - 1):
            x = (1.0, logv[t], math.log(np.exp(logv[t - 4 : t + 1]).mean()),
                 math.log(np.exp(logv[t - 21 : t + 1]).mean()))
            logv[t + 1] = float(np.dot(TRUE, x)) + NOISE * rng.standard_normal()
        v = np.exp(logv)
        r = np.sqrt(v / 2) * rng.choice([-1.0, 1.0], n)
        r[0] = 0.0
        close = 50.0 * np.exp(np.cumsum(r))
        half = np.sqrt(v) / 2  # ln(H/L) = √v: ½ ln(H/L)² = v / 2
        out[f"T{i}"] = pd.DataFrame({
            "date": pd.bdate_range("2010-01-04", periods=n), "open": close,
            "high": close * np.exp(half), "low": close * np.exp(-half), "close": close,
            "adj_close": close, "volume": np.full(n, 1e6)})
    return out


def test_fit_har_recovers_the_coefficients_of_a_har_panel():
    panel = har_panel()
    train_end = panel["T0"]["date"].iloc[-1].date()
    har = fit_har(panel, train_end, horizon=5)
    assert har.horizon == 5 and har.kind == "gk"
    np.testing.assert_allclose(har.coef[0], TRUE, atol=0.06)
    # c_1 = mean r²_{t,1} / exp ŷ = ½ mean exp(residual) ≈ ½ exp(σ² / 2)
    assert har.c[0] == pytest.approx(0.5 * math.exp(NOISE ** 2 / 2), rel=0.05)
    # A longer horizon's mean variance is smoother: more weight on the monthly level.
    assert har.coef[4][3] > har.coef[0][3]


def test_fit_har_reads_nothing_after_the_training_end():
    panel = har_panel(n_tickers=3, n=600)
    train_end = panel["T0"]["date"].iloc[400].date()
    har = fit_har(panel, train_end, horizon=3)
    rng = np.random.default_rng(9)
    scrambled = {}
    for t, bars in panel.items():
        b = bars.copy()
        late = b["date"] > pd.Timestamp(train_end)
        for col in ("open", "high", "low", "close", "adj_close"):
            b.loc[late, col] = b.loc[late, col] * rng.uniform(0.5, 2.0, late.sum())
        b.loc[late, "high"] = b.loc[late, ["open", "high", "low", "close"]].max(axis=1) * 1.01
        b.loc[late, "low"] = b.loc[late, ["open", "high", "low", "close"]].min(axis=1) * 0.99
        scrambled[t] = b
    assert fit_har(scrambled, train_end, horizon=3) == har
    assert fit_har(panel, panel["T0"]["date"].iloc[500].date(), horizon=3) != har


# ---- causality -------------------------------------------------------------------------------


def test_sigma_and_the_scale_at_a_bar_read_no_later_bar():
    bars = make_bars(300, seed=3)
    har = fit_har({"A": make_bars(400, seed=4)}, dt.date(2030, 1, 1), horizon=5)
    settings = ACISettings(calibration=50, vol_beta=1.0, har=har)
    blended = ACISettings(calibration=50, vol_beta=0.7, long_window=30, har=har)
    cut = 200
    changed = bars.copy()
    rng = np.random.default_rng(1)
    for col in ("open", "high", "low", "close", "adj_close"):
        changed.loc[cut + 1 :, col] *= rng.uniform(0.7, 1.4, len(bars) - cut - 1)
    changed["high"] = changed[["open", "high", "low", "close"]].max(axis=1)
    changed["low"] = changed[["open", "high", "low", "close"]].min(axis=1)
    a, b = TickerSeries("A", bars), TickerSeries("A", changed)
    sig_a, sig_b = har.sigma(a.bars), har.sigma(b.bars)
    assert sig_a.shape == (300, 5)
    assert np.isnan(sig_a[:22]).all() and np.isfinite(sig_a[22:]).all()  # 23 bars: the warm-up
    np.testing.assert_array_equal(sig_a[: cut + 1], sig_b[: cut + 1])
    assert not np.allclose(sig_a[cut + 1 :], sig_b[cut + 1 :])
    for s in (settings, blended):
        fa, fb = s.scale(a), s.scale(b)
        assert fa.shape == (300, 5) and np.all(fa > 0)
        np.testing.assert_array_equal(fa[: cut + 1], fb[: cut + 1])
        # In the HAR's warm-up its part is 1: the scale is the blend's factor alone (or 1).
        alone = (np.ones(300) if s is settings
                 else ACISettings(vol_beta=s.vol_beta).scale(a))
        np.testing.assert_array_equal(fa[:22], np.broadcast_to(alone[:22, None], (22, 5)))
    # the scale at an origin depends on the bars' values there, not on where the series starts
    tail = TickerSeries("A", bars.iloc[150:])
    np.testing.assert_array_equal(har.sigma(tail.bars)[22:], sig_a[172:])


def test_the_scale_is_the_har_ratio_and_the_old_scales_are_unchanged():
    series = TickerSeries("A", make_bars(300, seed=5))
    har = fit_har({"A": make_bars(400, seed=6)}, dt.date(2030, 1, 1), horizon=4)
    f = ACISettings(vol_beta=1.0, har=har).scale(series)
    ratio = har.sigma(series.bars) / (np.maximum(series.volatility, VOL_FLOOR)[:, None]
                                      * np.sqrt([1.0, 2.0, 3.0, 4.0]))
    ok = np.isfinite(ratio)
    np.testing.assert_array_equal(f[ok], np.clip(ratio[ok], *HAR_SCALE_BOUNDS))
    assert np.all(f[~ok] == 1.0) and (~ok).any()
    np.testing.assert_array_equal(har_scale(har, series), f)
    # β < 1: times the blend's factor; no HAR: the blend's (n,) factor or None, as before.
    blend = ACISettings(vol_beta=0.7).scale(series)
    assert blend.shape == (300,)
    np.testing.assert_array_equal(ACISettings(vol_beta=0.7, har=har).scale(series),
                                  f * blend[:, None])
    np.testing.assert_array_equal(blend, ACISettings().scale(series.log_close,
                                                             series.volatility))
    assert ACISettings(vol_beta=1.0).scale(series) is None
    with pytest.raises(ValueError, match="TickerSeries"):
        ACISettings(har=har).scale(series.log_close)


def test_a_bad_print_or_a_stale_bar_moves_the_scale_by_a_bounded_factor():
    """One bar whose open and low print a hundredth of the close (it passes the validator: open =
    low) made the HAR's σ tens of times the EWMA's, and a flat zero-volume bar hit the variance
    floor: the scale stays within HAR_SCALE_BOUNDS (found by review), and an untraded bar now
    carries the last traded session's variance instead."""
    bars = make_bars(300, seed=11)
    # The shipped fit's h = 1 coefficients at every h (a synthetic panel's HAR is ~flat).
    har = HarVolatility(coef=((-2.608, 0.282, 0.225, 0.223),) * 5, c=(1.486,) * 5)
    bad = bars.copy()
    bad.loc[200, ["open", "low"]] = bad.loc[200, "close"] / 100
    flat = bars.copy()
    flat.loc[200, ["open", "high", "low"]] = flat.loc[200, "close"]
    flat.loc[200, "volume"] = 0
    settings = ACISettings(vol_beta=1.0, har=har)
    low, high = HAR_SCALE_BOUNDS
    for frame in (bad, flat):
        f = settings.scale(TickerSeries("A", frame))
        assert np.all((f >= low) & (f <= high))
    # The untraded bar's proxy is the last traded session's (not the floor), so the HAR's σ
    # over the month after it stays within 6 % of the same bars traded (the floor: ≈ 0.25×).
    v = daily_variance(flat)
    assert v[200] == v[199] == daily_variance(bars)[199]
    np.testing.assert_array_equal(np.delete(v, 200), np.delete(daily_variance(bars), 200))
    ratio = har.sigma(flat)[200:222, 0] / har.sigma(bars)[200:222, 0]
    assert np.all((ratio > 0.94) & (ratio < 1.06)), ratio
    run = bars.copy()  # untraded from the first bar: nothing to carry, NaN (warm-up) until traded
    run.loc[:2, ["open", "high", "low"]] = run.loc[:2, ["close"] * 3].to_numpy()
    run.loc[:2, "volume"] = 0
    assert np.isnan(daily_variance(run)[:3]).all() and np.isfinite(daily_variance(run)[3:]).all()
    # A source that reports no volume at all (Yahoo's FX pairs, many indices) with real ranges:
    # every bar is a session, not a carried quote (a volume-only rule switched the HAR off).
    fx = bars.assign(volume=0)
    np.testing.assert_array_equal(daily_variance(fx), daily_variance(bars))
    raw = har.sigma(bad)[200:, 0] / (TickerSeries("A", bad).volatility[200:] * 1.0)
    assert raw.max() > high  # unbounded, the print would have widened the band past the cap
    assert settings.scale(TickerSeries("A", bad))[200:, 0].max() == high


# ---- ACI with a per-(origin, slot) scale -------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_aci_with_an_n_by_k_scale_is_aci_of_the_rescaled_base_band(seed):
    rng = np.random.default_rng(seed)
    n, d = 400, np.array([1, 3, 5])
    settings = ACISettings(lookback=40, calibration=int(rng.integers(20, 120)), vol_beta=1.0,
                           two_sided=seed % 2 == 1)
    q = np.sort(rng.normal(0.0, 0.02, (n, 3, len(LEVELS))), axis=-1)
    y = rng.normal(0.0, 0.03, (n, 3))
    y[rng.random((n, 3)) < 0.05] = np.nan
    # Targets with known scores: one without any gets the base band itself (Q̂ = 1, not f),
    # as with the blend's factor; a served or walked target always has its calibration window.
    t = np.sort(rng.choice(np.arange(10, n), 60, replace=False))
    f = rng.uniform(0.5, 2.0, (n, 3))
    m = q[:, :, [3]]
    rescaled = m + (q - m) * f[:, :, None]  # half-widths × f, the median unchanged
    got = aci_bands(q, LEVELS, y, t, d, COVERAGES, settings, f)
    want = aci_bands(rescaled, LEVELS, y, t, d, COVERAGES, settings)
    np.testing.assert_allclose(got.lower, want.lower, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.upper, want.upper, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got.coverage, want.coverage)
    # An (N,) scale is the (N, K) scale with one column repeated, float for float; so is none
    # the scale of ones.
    g = f[:, 0]
    one = aci_state(q, LEVELS, y, t, d, COVERAGES, settings, g)
    rep = aci_state(q, LEVELS, y, t, d, COVERAGES, settings, np.repeat(g[:, None], 3, axis=1))
    assert np.array_equal(one.qhat, rep.qhat) and np.array_equal(one.coverage, rep.coverage)
    none = aci_state(q, LEVELS, y, t, d, COVERAGES, settings)
    ones = aci_state(q, LEVELS, y, t, d, COVERAGES, settings, np.ones((n, 3)))
    assert np.array_equal(none.qhat, ones.qhat)
    with pytest.raises(ValueError, match="scale must be"):
        aci_state(q, LEVELS, y, t, d, COVERAGES, settings, np.ones((n, 2)))
    # Stacked (the backtest's aci_states, gap rows of ones): each run's own state exactly.
    runs = [ACIRun(q[a:b], LEVELS, y[a:b], t[(t >= a) & (t < b)] - a, d, f[a:b])
            for a, b in ((0, 150), (150, 400))]
    for run, state in zip(runs, aci_states(runs, COVERAGES, settings)):
        alone = aci_state(*run.arguments(), COVERAGES, settings, run.scale)
        assert np.array_equal(state.qhat, alone.qhat, equal_nan=True)


def test_the_forecasters_plan_picks_the_slots_columns_of_the_scale():
    series = TickerSeries("A", make_bars(260, seed=7))
    har = fit_har({"A": make_bars(400, seed=8)}, dt.date(2030, 1, 1), horizon=5)
    settings = ACISettings(lookback=20, calibration=50, vol_beta=1.0, har=har)

    class Gauss:
        name, quantiles = "g", LEVELS

        def historical_forecasts(self, s, origins, horizon):
            from service.forecasting.bands import gaussian_quantiles
            from service.forecasting.forecaster import HistoricalForecasts

            o = np.asarray(origins, dtype=np.intp)
            return HistoricalForecasts(o, gaussian_quantiles(
                np.full(o.size, 0.01), np.arange(1, horizon + 1), LEVELS), LEVELS)

    forecaster = ACIForecaster(Gauss(), settings, slots=(1, 3, 5))
    origins = np.arange(200, 259)
    base = forecaster.base_forecasts(series, origins, 5)
    _, slots, run = forecaster.plan(base, series, origins, 5)
    grid = np.arange(base.origins.min(), base.origins.max() + 1)
    np.testing.assert_array_equal(run.scale, settings.scale(series)[grid][:, [0, 2, 4]])
    assert slots.tolist() == [1, 3, 5]


# ---- the settings in an artifact's meta -------------------------------------------------------


def test_settings_round_trip_and_an_old_meta_loads_without_har():
    har = fit_har({"A": make_bars(300, seed=2)}, dt.date(2030, 1, 1), horizon=3)
    assert HarVolatility.from_dict(har.to_dict()) == har
    settings = ACISettings(calibration=500, vol_beta=1.0, har=har)
    d = settings.to_dict()
    assert d["har"] == {"kind": "gk", "coef": [list(r) for r in har.coef], "c": list(har.c)}
    assert all(isinstance(x, float) for row in d["har"]["coef"] for x in row)
    import json

    back = ACISettings.from_dict(json.loads(json.dumps(d)))
    assert back == settings and back.har.coef == har.coef  # floats exact through JSON
    assert hash(back) == hash(settings)  # still a frozen, hashable dataclass
    shipped = {"gamma": 0.005, "lookback": 100, "calibration": 500, "vol_beta": 0.7,
               "long_window": 250}
    old = ACISettings.from_dict(shipped)
    assert old.har is None and old.to_dict() == shipped  # no "har": the same meta and hash
    with pytest.raises(ValueError, match="HAR"):
        HarVolatility(coef=((1.0, 2.0, 3.0),), c=(1.0,))


# ---- served == walked, with a HAR artifact ----------------------------------------------------


@pytest.fixture(scope="module")
def har_predictor(tiny_artifact, tmp_path_factory):
    """The tiny model's weights rebanded with the HAR band (as `stockcast reband --har`)."""
    import shutil

    from service.artifacts.manifest import har_band_settings, load_manifest, reband
    from service.inference.predictor import Predictor

    model_dir = tmp_path_factory.mktemp("har_models")
    source = model_dir / tiny_artifact.artifact_dir.name
    shutil.copytree(tiny_artifact.artifact_dir, source)
    settings = har_band_settings(load_manifest(source), bars_by_ticker(tiny_artifact.bars))
    target = reband(model_dir, source.name, {"served": "model_aci", "aci": settings.to_dict()})
    return Predictor.load(target, "cpu")


def test_the_served_har_band_is_the_backtests(har_predictor, tiny_predictor, tiny_artifact):
    bars = bars_by_ticker(tiny_artifact.bars)
    settings = har_predictor.band_settings
    assert settings.har is not None and (settings.calibration, settings.vol_beta) == (500, 1.0)
    walked = run_backtest(har_predictor, bars, horizons=(1, 5), band_baselines=("ewma",))
    assert walked.config["aci"] == settings.to_dict()
    frame = walked.forecasts[5]
    for i in (3, len(frame) // 2, len(frame) - 1):
        _assert_served_band_is_the_backtests(har_predictor, bars, frame.iloc[i])
    # The HAR moved the band (the same network's median).
    plain = run_backtest(tiny_predictor, bars, horizons=(5,), band_baselines=("ewma",))
    assert plain.forecasts[5]["model"].equals(frame["model"])
    assert not np.allclose(plain.forecasts[5]["model_aci_upper"], frame["model_aci_upper"])
    # The state served from the store is the state computed from the bars.
    ticker = frame["ticker"].iloc[-1]
    forecast, state = har_predictor.forecast_with_states([(ticker, bars[ticker])], 5)[0]
    assert state is not None and state.qhat.shape == (5, len(COVERAGES))
    from service.inference.predictor import StoredInput

    stored = har_predictor.forecast_stored([StoredInput(None, (), state)], 5)[0]
    assert stored.steps[4].bands == forecast.steps[4].bands
    assert np.isfinite(har_regressors(daily_variance(bars[ticker]))[22:]).all()


def test_an_artifact_whose_har_covers_fewer_horizons_than_its_model_is_refused(
        tiny_artifact, tmp_path):
    """Its last horizons' scale would index past the HAR's columns (an IndexError, a 500, at
    the first forecast; found by review): refused when the artifact loads, hash and all."""
    import shutil

    from service.artifacts.manifest import load_manifest, reband
    from service.core.errors import ManifestMismatch

    source = tmp_path / tiny_artifact.artifact_dir.name
    shutil.copytree(tiny_artifact.artifact_dir, source)
    horizon = load_manifest(source).spec.horizon
    short = fit_har(bars_by_ticker(tiny_artifact.bars), dt.date(2100, 1, 1), horizon=horizon - 1)
    band = {"served": "model_aci",
            "aci": ACISettings(calibration=500, vol_beta=1.0, har=short).to_dict()}
    with pytest.raises(ManifestMismatch, match=f"forecasts {horizon - 1} horizons, the model "
                                               f"{horizon}"):
        reband(tmp_path, source.name, band)
