"""Bands: levels read off quantiles, ACI (recovery after a volatility jump, no look-ahead), and
the band baselines' quantiles on series whose quantiles are known."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from service.forecasting import bands
from service.forecasting.bands import (
    BASELINE_ACI,
    ACIForecaster,
    ACIRun,
    ACISettings,
    _scores,
    _sorted_quantiles,
    aci_bands,
    aci_state,
    aci_states,
    apply_aci,
    band,
    base_bands,
    empirical_quantiles,
    gaussian_quantiles,
    mean_reversion_scale,
    quantile_at,
    quantiles_at,
)
from service.forecasting.forecaster import HistoricalForecasts, TickerSeries
from service.forecasting.volatility import EWMA_LAMBDA, ewma_volatility, log_returns
from tests.bar_factories import make_bars

LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
COVERAGES = (0.5, 0.8, 0.9)
Z = NormalDist().inv_cdf


# ---- reading levels off quantiles --------------------------------------------------------------


def test_a_gaussian_forecasters_band_is_exact_at_any_level_inside_and_beyond_its_quantiles():
    q = gaussian_quantiles(np.array([0.01, 0.03]), [1, 4], LEVELS)  # (2, 2, 7)
    p = np.array([0.01, 0.05, 0.3, 0.5, 0.85, 0.99])
    got = quantile_at(q, LEVELS, np.broadcast_to(p, (2, 2, p.size)))
    for i, sigma in enumerate((0.01, 0.03)):
        for k, h in enumerate((1, 4)):
            expected = [sigma * np.sqrt(h) * Z(x) for x in p]
            np.testing.assert_allclose(got[i, k], expected, rtol=1e-12, atol=1e-15)


def test_the_trained_levels_give_back_their_own_quantiles():
    q = np.array([[-3.0, -2.0, -0.5, 0.1, 0.4, 1.5, 4.0]])  # skewed, not Gaussian
    got = quantile_at(q, LEVELS, np.array([LEVELS]))
    np.testing.assert_allclose(got, q, rtol=0, atol=1e-12)
    lo, hi = band(q, LEVELS, np.array([0.8]))
    assert (lo[0, 0], hi[0, 0]) == pytest.approx((-2.0, 1.5))
    # Between 0.25 and 0.5 the value moves linearly in normal scores.
    p = NormalDist().cdf(0.5 * Z(0.25))
    assert quantile_at(q, LEVELS, np.array([[p]]))[0, 0] == pytest.approx((-0.5 + 0.1) / 2)


def test_base_bands_are_the_quantile_pairs_of_each_level():
    q = gaussian_quantiles(np.array([0.02]), [1], LEVELS)
    b = base_bands(q, LEVELS, COVERAGES)
    np.testing.assert_allclose(b.lower[0, 0], q[0, 0, [2, 1, 0]])
    np.testing.assert_allclose(b.upper[0, 0], q[0, 0, [4, 5, 6]])
    np.testing.assert_array_equal(b.coverage[0, 0], COVERAGES)


# ---- ACI ---------------------------------------------------------------------------------------


def test_levels_shared_by_every_row_read_the_same_floats_as_quantile_at():
    rng = np.random.default_rng(5)
    q = np.sort(rng.normal(0.0, 0.02, (40, 3, len(LEVELS))), axis=-1)
    q[rng.random((40, 3)) < 0.1] = np.nan
    p = np.array([0.001, 0.05, 0.07, 0.25, 0.5, 0.6, 0.95, 0.999])
    assert np.array_equal(quantiles_at(q, LEVELS, p),
                          quantile_at(q, LEVELS, np.broadcast_to(p, (40, 3, p.size))),
                          equal_nan=True)


def test_apply_aci_is_the_median_plus_qhat_times_the_base_half_widths():
    rng = np.random.default_rng(6)
    q = np.sort(rng.normal(0.0, 0.02, (30, 4, len(LEVELS))), axis=-1)
    qhat = rng.uniform(0.5, 2.0, (30, 4, len(COVERAGES)))
    median = quantile_at(q, LEVELS, np.full((30, 4, 1), 0.5))
    base = base_bands(q, LEVELS, COVERAGES)
    lower, upper = apply_aci(q, LEVELS, COVERAGES, qhat)
    assert np.array_equal(lower, median - qhat * (median - base.lower))
    assert np.array_equal(upper, median + qhat * (base.upper - median))


def _jump_series(n: int = 2000, jump: int = 1000, seed: int = 3):
    """Daily returns with σ 0.01, then 0.02 from `jump` on; a forecaster that keeps saying 0.01."""
    rng = np.random.default_rng(seed)
    sigma = np.where(np.arange(n + 1) < jump, 0.01, 0.02)
    r = rng.normal(0.0, sigma)
    quantiles = gaussian_quantiles(np.full(n, 0.01), [1], LEVELS)  # (n, 1, Q)
    realized = r[1:, None]  # origin s's outcome is the next session's return
    return quantiles, realized


def _inside(bands, realized, targets, level: int) -> np.ndarray:
    y = realized[targets, 0]
    return (y >= bands.lower[:, 0, level]) & (y <= bands.upper[:, 0, level])


def test_aci_recovers_nominal_coverage_after_a_volatility_jump():
    quantiles, realized = _jump_series()
    settings = ACISettings(gamma=0.005, lookback=250, calibration=250)
    targets = np.arange(600, len(quantiles))
    aci = aci_bands(quantiles, LEVELS, realized, targets, [1], COVERAGES, settings)
    base = base_bands(quantiles[targets], LEVELS, COVERAGES)
    inside, base_inside = _inside(aci, realized, targets, 1), _inside(base, realized, targets, 1)
    before, after = targets < 1000, targets >= 1000
    # The fixed band: right before the jump (400 draws, sd 0.02), 45 % after it
    # (P(|Z| < 1.2816 / 2)).
    assert base_inside[before].mean() == pytest.approx(0.80, abs=0.05)
    assert base_inside[after].mean() == pytest.approx(2 * NormalDist().cdf(Z(0.9) / 2) - 1,
                                                      abs=0.03)
    assert inside[before].mean() == pytest.approx(0.80, abs=0.05)
    # Expected steps: once the calibration window holds only post-jump scores (250 sessions +
    # the 1-day delay) the band is calibrated again; ACI's level gets most of the way sooner.
    settled = targets >= 1000 + settings.calibration + 1
    assert inside[settled].mean() == pytest.approx(0.80, abs=0.03)
    first_100 = after & (targets < 1100)
    assert inside[first_100].mean() > base_inside[first_100].mean() + 0.15
    # The misses widen the band: ACI asks for more than 80 % right after the jump.
    assert aci.coverage[(targets >= 1050) & (targets < 1150), 0, 1].mean() > 0.85


@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("target", [400, 777, 1500])
def test_aci_reads_no_outcome_after_the_origin(target, two_sided):
    """At the first target (t0 = target - 1) ACI may read the quantiles and the scale of
    origins <= t0 and the outcomes known by t0 (s + delay <= t0): everything else redrawn at
    random (quantiles of another σ per origin, outcomes of 5x the spread, a third of them
    missing, another scale) leaves its band, level and state the same to the bit."""
    rng = np.random.default_rng(target)
    n, delays = 2000, [1, 5]
    sigma = rng.uniform(0.005, 0.03, n)  # a forecaster whose quantiles move every origin
    quantiles = gaussian_quantiles(sigma, delays, LEVELS)  # (n, 2, Q): slots h=1, h=5
    realized = rng.normal(0.0, sigma[:, None] * np.sqrt(delays))
    # the conformal scale, per origin (the blend's) or per origin and slot (HAR's)
    scale = rng.uniform(0.5, 2.0, (n, 2) if two_sided else n)
    settings = ACISettings(gamma=0.02, lookback=120, calibration=100, two_sided=two_sided)
    t0 = target - 1
    targets = np.array([t0, target])
    args = (LEVELS, realized, targets, delays, COVERAGES, settings, scale)
    before = aci_bands(quantiles, *args)
    state_before = aci_state(quantiles, *args)
    future_q, future_y, future_f = quantiles.copy(), realized.copy(), scale.copy()
    later = np.arange(n) > t0
    future_q[later] = gaussian_quantiles(rng.uniform(0.001, 0.1, later.sum()), delays, LEVELS)
    future_f[later] = rng.uniform(0.1, 10.0, future_f[later].shape)
    for k, d in enumerate(delays):
        unknown = np.arange(n) + d > t0  # outcomes not yet known at t0
        future_y[unknown, k] = rng.normal(0.0, 0.2, unknown.sum())
        future_y[unknown & (rng.random(n) < 1 / 3), k] = np.nan
    args = (LEVELS, future_y, targets, delays, COVERAGES, settings, future_f)
    after = aci_bands(future_q, *args)
    state_after = aci_state(future_q, *args)
    # The band, the level ACI asked for and the stored state at t0: unchanged to the bit.
    for name in ("lower", "upper", "coverage"):
        np.testing.assert_array_equal(getattr(after, name)[0], getattr(before, name)[0])
    np.testing.assert_array_equal(state_after.qhat[0], state_before.qhat[0])
    np.testing.assert_array_equal(state_after.coverage[0], state_before.coverage[0])
    # The next target reads a new outcome, quantiles and scale: its band moves.
    assert not np.array_equal(after.lower[1], before.lower[1])
    assert not np.array_equal(state_after.qhat[1], state_before.qhat[1])


class _Fixed:
    """A quantile forecaster whose forecasts are given (the stand-in for any base)."""

    name = "fixed"
    quantiles = LEVELS


@pytest.mark.parametrize("two_sided", [False, True])
def test_a_stored_state_applied_to_one_origin_gives_the_backtests_band_there(two_sided):
    bars = make_bars(700, seed=3)
    series = TickerSeries("X", bars)
    quantiles, _ = _jump_series(n=700)
    horizon = 3
    q = np.concatenate([quantiles * np.sqrt(h) for h in range(1, horizon + 1)], axis=1)
    base = HistoricalForecasts(np.arange(700), q, LEVELS)
    aci = ACIForecaster(_Fixed(), ACISettings(lookback=100, calibration=250,
                                              two_sided=two_sided))
    origins = np.arange(400, 700)
    walked = aci.recalibrate(base, series, origins, horizon)  # the backtest: every origin
    for t in (400, 555, 699):
        _, slots, state = aci.state_at(base, series, np.array([t]), horizon)  # the server
        # What the store holds per slot: a Q̂ per level, two-sided one per level and tail.
        assert state.qhat.shape == (1, horizon, aci.state_width)
        assert aci.state_width == len(COVERAGES) * (2 if two_sided else 1)
        served = aci.apply(q[t : t + 1, slots - 1], LEVELS, state.qhat)
        np.testing.assert_array_equal(served[0], walked.log_returns[t - 400])


@pytest.mark.parametrize("seed", range(6))
def test_aci_state_equals_its_reference_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    q, y, d, t = _random_case(rng, 260, 7, 0.0, 12, 12, ties=seed % 3 == 0)
    n = len(q)
    settings = ACISettings(lookback=int(rng.integers(1, 60)),
                           calibration=int(rng.integers(1, 120)))
    f = rng.uniform(0.5, 2.0, n) if seed % 2 else np.ones(n)
    state = aci_state(q, LEVELS, y, t, d, COVERAGES, settings, f)
    qhat, coverage = _reference_aci_state(q, LEVELS, y, t, d, np.asarray(COVERAGES), settings, f)
    assert np.array_equal(state.qhat, qhat, equal_nan=True)
    assert np.array_equal(state.coverage, coverage, equal_nan=True)


@pytest.mark.parametrize("seed", range(6))
def test_aci_state_over_repeated_unsorted_targets_in_chunked_runs_equals_its_reference(
        seed, monkeypatch):
    """aci_state counts and sorts windows over slices of consecutive origins, at most _CHUNK
    at a time, and over the distinct targets: targets in any order, repeated, near the series'
    start and in runs longer than a chunk give the reference's state bit for bit (symmetric),
    and the plain loop's (two-sided)."""
    monkeypatch.setattr(bands, "_CHUNK", 3 + 2 * seed)
    rng = np.random.default_rng(200 + seed)
    two_sided = seed % 2 == 1
    q, y, d, _ = _random_case(rng, 160, 5, 0.002, 12, 1, ties=seed % 3 == 0)
    t = np.concatenate([np.arange(40, 40 + (12 if two_sided else 70)),
                        rng.choice(len(q), 6), [0, 3, 3, len(q) - 1]])
    rng.shuffle(t)
    settings = ACISettings(lookback=int(rng.integers(1, 40)),
                           calibration=int(rng.integers(1, 70)), two_sided=two_sided)
    f = rng.uniform(0.5, 2.0, len(q)) if seed % 3 else np.ones(len(q))
    state = aci_state(q, LEVELS, y, t, d, COVERAGES, settings, f)
    if two_sided:
        qhat, coverage = _loop_aci_state(q, y, t, d, settings, f)
    else:
        qhat, coverage = _reference_aci_state(q, LEVELS, y, t, d, np.asarray(COVERAGES),
                                              settings, f)
    assert np.array_equal(state.qhat, qhat, equal_nan=True)
    assert np.array_equal(state.coverage, coverage, equal_nan=True)


def test_consecutive_origins_come_in_runs_of_at_most_a_chunk():
    origins = np.array([2, 3, 4, 5, 6, 9, 11, 12])
    assert bands._consecutive(origins, 3) == [(2, 5), (5, 7), (9, 10), (11, 13)]
    assert bands._consecutive(origins[:0], 3) == []


def _random_case(rng, n: int, max_slots: int, drift: float, max_delay: int, targets: int,
                 ties: bool):
    """Random quantiles (n, K, Q), outcomes (n, K) with a drift, some of each missing, distinct
    delays (K,) and sorted targets; `ties`: one band per slot and outcomes on a grid."""
    k = int(rng.integers(1, max_slots))
    q = np.sort(rng.normal(0.0, 0.02, (n, k, len(LEVELS))), axis=-1)
    y = rng.normal(drift, 0.03, (n, k))
    if ties:
        q = np.broadcast_to(q[:1], q.shape).copy()
        y = np.round(y, 2)
    q[rng.random((n, k)) < 0.05] = np.nan
    y[rng.random((n, k)) < 0.05] = np.nan
    d = np.sort(rng.choice(np.arange(1, max_delay), k, replace=False))
    return q, y, d, np.sort(rng.choice(n, targets, replace=False))


def _reference_aci_state(q, levels, y, t, d, nominal, settings, f):
    """aci_state as of 2bd23ad (one bool window per slot and origin, counted with sum), kept
    to check the faster counting gives the same state bit for bit."""
    n_origins, k_slots = q.shape[:2]
    lookback, cal, gamma = settings.lookback, settings.calibration, settings.gamma

    median = quantile_at(q, levels, np.full(q.shape[:2] + (1,), 0.5))  # (N, K, 1)
    base = base_bands(q, levels, nominal)  # (N, K, L)
    scores = _scores(median, base.lower, base.upper, y[..., None])  # (N, K, L)
    scores = scores / f[:, None, None]

    # Per origin s and slot k, its calibration window: the scores of origins s-d-cal+1 .. s-d,
    # all known by s. n_known[s] of them are defined; below[s] of those are < scores[s]. Only
    # the origins some run steps through are counted (`at`: their row in below / n_known).
    steps_at = (t[:, None] - lookback + np.arange(lookback)[None, :]).ravel()
    needed = np.unique(steps_at[steps_at >= 0])
    at = np.zeros(n_origins, dtype=np.intp)
    at[needed] = np.arange(needed.size)
    # (At least one row: a run with no origin behind it still indexes row 0, unscored.)
    below = np.zeros((max(needed.size, 1), k_slots, nominal.size))
    n_known = np.zeros((max(needed.size, 1), k_slots, nominal.size))
    windows = []  # per slot (N, L, cal): the window behind each origin, NaN-padded (a view)
    for k in range(k_slots):
        # With `shift` NaNs in front, padded[s .. s+cal-1] = scores[s-d-cal+1 .. s-d].
        shift = d[k] + cal - 1
        padded = np.concatenate([np.full((shift, nominal.size), np.nan), scores[:, k, :]])
        win = sliding_window_view(padded, cal, axis=0)[:n_origins]  # (N, L, cal)
        windows.append(win)
        part = win[needed]  # (R, L, cal)
        known = np.isfinite(part)
        n_known[: needed.size, k, :] = known.sum(axis=-1)
        below[: needed.size, k, :] = (known & (part < scores[needed, k, :, None])).sum(axis=-1)

    alpha = np.broadcast_to(1.0 - nominal, (t.size, k_slots, nominal.size)).copy()
    steps = np.zeros((lookback, t.size, k_slots, nominal.size))  # γ (α - err) of each run step
    slots = np.arange(k_slots)
    for k in range(lookback + 1):
        # Feedback: the error of step j = k - d arrives at step k (its outcome is then known).
        j = k - d  # (K,)
        arrived = j >= 0
        if arrived.any():
            alpha[:, arrived, :] += steps[j[arrived], :, slots[arrived], :].transpose(1, 0, 2)
        if k == lookback:
            break  # the target origin itself: its band uses α as it now stands
        s = t - lookback + k  # (n,) this step's origin in each run
        present = s >= 0
        # Read only what is known at the target: origin s's outcome needs s + d <= t.
        known = (k + d <= lookback)[None, :] & present[:, None]  # (n, K)
        rows = np.where(present, s, 0)
        score, n = scores[rows], n_known[at[rows]]  # (n, K, L)
        scored = known[..., None] & present[:, None, None] & np.isfinite(score) & (n > 0)
        # Outside ⟺ S_s above the ⌈(1-α)(n+1)⌉-th smallest past score ⟺ below_s >= that rank.
        rank = np.ceil((1.0 - alpha) * (n + 1))
        err = below[at[rows]] >= rank
        steps[k] = np.where(scored, gamma * ((1.0 - nominal) - err), 0.0)

    # The state at each target: Q̂ = f_t × the ⌈(1-α_t)(n+1)⌉-th smallest score of its window.
    qhat = np.empty(alpha.shape)
    for k in range(k_slots):
        win = np.sort(windows[k][t], axis=-1)  # (n, L, cal), NaN (unknown) sorted last
        n = np.isfinite(win).sum(axis=-1)
        rank = np.clip(np.ceil((1.0 - alpha[:, k, :]) * (n + 1)), 0, n)  # (n, L)
        pick = np.take_along_axis(win, np.maximum(rank - 1, 0).astype(np.intp)[..., None],
                                  axis=-1)[..., 0]
        qhat[:, k, :] = np.where(n == 0, 1.0, np.where(rank == 0, 0.0, pick) * f[t, None])
    return qhat, np.clip(1.0 - alpha, 0.0, 1.0)


def test_a_target_without_known_outcomes_gets_the_base_band():
    quantiles, realized = _jump_series(n=50)
    aci = aci_bands(quantiles, LEVELS, realized, np.array([0]), [1], COVERAGES)
    base = base_bands(quantiles[:1], LEVELS, COVERAGES)
    np.testing.assert_allclose(aci.lower, base.lower)
    np.testing.assert_allclose(aci.upper, base.upper)


# ---- the volatility mean-reversion blend -------------------------------------------------------


def test_the_scaled_band_is_f_t_times_the_top_score_over_f_of_its_window():
    """By hand: a N(0, 1) forecaster (80 % half-width z = 1.2816), one slot, delay 1, four
    scores in the window, ACI's run one step long. At target 5 the window holds origins 1..4;
    the 80 % rank ⌈0.8 · 5⌉ = 4 is the largest of S_s / f_s = |y_s| / z / f_s, i.e.
    (1.0/2, 2.0/1, 0.3/0.5, 1.5/3) / z; the band is ± z · f_5 · 2.0 / z = ± 2 · 2.0 = ± 4.0.
    Unscaled it is ± max |y_s| = ± 2.0."""
    quantiles = gaussian_quantiles(np.ones(6), [1], LEVELS)  # (6, 1, Q)
    realized = np.array([[0.5], [1.0], [-2.0], [0.3], [-1.5], [9.9]])
    f = np.array([1.0, 2.0, 1.0, 0.5, 3.0, 2.0])
    settings = ACISettings(gamma=1e-6, lookback=1, calibration=4)
    scaled = aci_bands(quantiles, LEVELS, realized, np.array([5]), [1], (0.8,), settings, f)
    np.testing.assert_allclose([scaled.lower[0, 0, 0], scaled.upper[0, 0, 0]], [-4.0, 4.0])
    plain = aci_bands(quantiles, LEVELS, realized, np.array([5]), [1], (0.8,), settings)
    np.testing.assert_allclose([plain.lower[0, 0, 0], plain.upper[0, 0, 0]], [-2.0, 2.0])


def test_the_series_volatility_is_the_blends_short_volatility_and_the_ewma_bands_sigma():
    """TickerSeries.volatility, computed once per series, is what mean_reversion_scale and the
    EWMA band would compute themselves: the same floats either way."""
    series = TickerSeries("AAA", make_bars(400, seed=8))
    y = series.log_close
    np.testing.assert_array_equal(series.volatility, ewma_volatility(log_returns(y)))
    assert np.array_equal(mean_reversion_scale(y, 0.7, 250, series.volatility),
                          mean_reversion_scale(y, 0.7, 250))
    assert np.array_equal(ACISettings().scale(y, series.volatility), ACISettings().scale(y))


def test_a_constant_scale_leaves_the_aci_bands_as_they_are():
    quantiles, realized = _jump_series(n=600)
    targets = np.arange(300, 600, 7)
    plain = aci_bands(quantiles, LEVELS, realized, targets, [1], COVERAGES)
    scaled = aci_bands(quantiles, LEVELS, realized, targets, [1], COVERAGES,
                       scale=np.full(len(quantiles), 2.5))
    np.testing.assert_allclose(scaled.lower, plain.lower, rtol=1e-12)
    np.testing.assert_allclose(scaled.upper, plain.upper, rtol=1e-12)


def test_mean_reversion_scale_by_hand():
    """Returns ±0.01 for 260 sessions, then ±0.02 for 30: at the last bar the long (RMS over
    250) variance is (220 · 1e-4 + 30 · 4e-4) / 250, the EWMA's the λ-weighted mix of the same
    squares over all 289 returns, and f = (σ_long / σ_short)^(1 - β)."""
    r = np.concatenate([np.tile([0.01, -0.01], 130), np.tile([0.02, -0.02], 15)])
    y = np.concatenate([[0.0], np.cumsum(r)])
    f = mean_reversion_scale(y, 0.7, 250)
    long = np.sqrt((220 * 1e-4 + 30 * 4e-4) / 250)
    w = EWMA_LAMBDA ** np.arange(len(r))  # weight of the return i sessions before the last
    short = np.sqrt((w[:30].sum() * 4e-4 + w[30:].sum() * 1e-4) / w.sum())
    assert f[-1] == pytest.approx((long / short) ** 0.3, rel=1e-9)
    assert f[-1] < 1.0  # after a storm the blend narrows the band
    # Calm and steady: both volatilities 0.01, f = 1; before the long window fills: 1.
    assert f[255] == pytest.approx(1.0, rel=1e-9)
    np.testing.assert_array_equal(f[:250], 1.0)
    # Causal: the log closes from bar 271 on redrawn at random (a walk of 10x the volatility
    # from another level) leave every earlier factor as it was, to the bit; later ones move.
    changed = y.copy()
    changed[271:] = 3.0 + np.cumsum(np.random.default_rng(4).normal(0.0, 0.1, len(y) - 271))
    moved = mean_reversion_scale(changed, 0.7, 250)
    np.testing.assert_array_equal(moved[:271], f[:271])
    assert (moved[271:] != f[271:]).all()


def test_settings_without_the_blend_are_plain_aci():
    assert ACISettings(vol_beta=1.0).scale(np.linspace(0.0, 1.0, 400)) is None
    # An artifact written before the blend existed (no vol_beta in its meta) serves plain ACI.
    old = ACISettings.from_dict({"gamma": 0.005, "lookback": 100, "calibration": 250})
    assert old.vol_beta == 1.0 and old.to_dict() == BASELINE_ACI.to_dict()
    assert ACISettings.from_dict(ACISettings().to_dict()) == ACISettings()
    with pytest.raises(ValueError, match="vol_beta must be in"):
        ACISettings(vol_beta=1.5)


# ---- two-sided (per-tail) ACI -----------------------------------------------------------------


def _drift_series(n: int = 3000, start: int = 1000, drift: float = 0.5, seed: int = 5):
    """A forecaster that says N(0, 0.01) every day; the outcomes are N(0, 0.01) until `start`,
    then drift upward by `drift` σ a day (a rally the forecaster's median does not see)."""
    rng = np.random.default_rng(seed)
    mean = np.where(np.arange(n) < start, 0.0, drift * 0.01)
    realized = rng.normal(mean, 0.01)[:, None]
    return gaussian_quantiles(np.full(n, 0.01), [1], LEVELS), realized


def _misses(bands, realized, targets, level: int) -> tuple[np.ndarray, np.ndarray]:
    y = realized[targets, 0]
    return y > bands.upper[:, 0, level], y < bands.lower[:, 0, level]


def test_two_sided_aci_recovers_each_tails_coverage_under_a_drift():
    """With a drift of σ/2 the fixed 80 % band (± 1.2816 σ) misses above P(Z > 0.78) = 22 %
    of the time and below P(Z < -1.78) = 4 %. Symmetric ACI restores the total (80 %) with the
    misses still lopsided; two-sided ACI brings each tail back to 10 % once its calibration
    window holds only drifting scores."""
    quantiles, realized = _drift_series()
    targets = np.arange(600, len(quantiles))
    settled = targets >= 1000 + 500 + 1  # the calibration window past the drift's start
    symmetric = aci_bands(quantiles, LEVELS, realized, targets, [1], COVERAGES,
                          ACISettings(lookback=250, calibration=500, vol_beta=1.0))
    two = aci_bands(quantiles, LEVELS, realized, targets, [1], COVERAGES,
                    ACISettings(lookback=250, calibration=500, vol_beta=1.0, two_sided=True))
    base = base_bands(quantiles[targets], LEVELS, COVERAGES)
    above, below = _misses(base, realized, targets, 1)
    assert above[settled].mean() == pytest.approx(1 - NormalDist().cdf(Z(0.9) - 0.5), abs=0.03)
    assert below[settled].mean() == pytest.approx(NormalDist().cdf(-Z(0.9) - 0.5), abs=0.02)
    above, below = _misses(symmetric, realized, targets, 1)
    assert (above | below)[settled].mean() == pytest.approx(0.20, abs=0.03)
    assert above[settled].mean() - below[settled].mean() > 0.10  # lopsided
    above, below = _misses(two, realized, targets, 1)
    for level, nominal in enumerate(COVERAGES):  # every level, each tail
        up, down = _misses(two, realized, targets, level)
        assert up[settled].mean() == pytest.approx((1 - nominal) / 2, abs=0.025)
        assert down[settled].mean() == pytest.approx((1 - nominal) / 2, abs=0.025)
    # Before the drift both tails were already even (no look-ahead of it).
    before = targets < 1000
    assert above[before].mean() == pytest.approx(0.10, abs=0.035)
    assert below[before].mean() == pytest.approx(0.10, abs=0.035)
    # The band moved up rather than only widening: its lower edge sits above the base's.
    assert np.median(two.lower[settled, 0, 1]) > np.median(base.lower[settled, 0, 1])
    # The level asked for is 1 - α⁻ - α⁺, near nominal once settled.
    assert two.coverage[settled, 0, 1].mean() == pytest.approx(0.80, abs=0.05)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("two_sided", [False, True])
def test_aci_state_equals_a_plain_loop_per_target_slot_and_tail(seed, two_sided):
    """aci_state against ACI written as the definition reads: per target, slot and column (a
    level, or a level's tail), α walked through the run with delayed feedback, then the
    ⌈(1-α)(n+1)⌉-th smallest known score; the same floats."""
    rng = np.random.default_rng(100 + seed)
    q, y, d, t = _random_case(rng, 200, 4, 0.004, 9, 8, ties=seed % 3 == 0)
    n, k = q.shape[:2]
    settings = ACISettings(gamma=float(rng.choice([0.005, 0.05])),
                           lookback=int(rng.integers(1, 50)),
                           calibration=int(rng.integers(1, 90)), two_sided=two_sided)
    f = rng.uniform(0.5, 2.0, n) if seed % 2 else np.ones(n)
    state = aci_state(q, LEVELS, y, t, d, COVERAGES, settings, f)
    qhat, coverage = _loop_aci_state(q, y, t, d, settings, f)
    assert state.qhat.shape == (t.size, k, len(COVERAGES) * settings.sides)
    assert np.array_equal(state.qhat, qhat, equal_nan=True)
    assert np.array_equal(state.coverage, coverage, equal_nan=True)


def _loop_aci_state(q, y, t, d, settings, f):
    nominal = np.asarray(COVERAGES)
    median = quantile_at(q, LEVELS, np.full(q.shape[:2] + (1,), 0.5))
    base = base_bands(q, LEVELS, nominal)
    if settings.two_sided:
        below = (median - y[..., None]) / np.maximum(median - base.lower, 1e-12)
        above = (y[..., None] - median) / np.maximum(base.upper - median, 1e-12)
        scores, miss = np.concatenate([below, above], -1), np.tile((1.0 - nominal) / 2.0, 2)
    else:
        scores, miss = _scores(median, base.lower, base.upper, y[..., None]), 1.0 - nominal
    scores = scores / f[:, None, None]
    lookback, cal, gamma = settings.lookback, settings.calibration, settings.gamma

    def window(s, k, c):  # the known scores of origins s-d-cal+1 .. s-d
        part = scores[max(0, s - d[k] - cal + 1): max(0, s - d[k] + 1), k, c]
        return part[np.isfinite(part)]

    alpha = np.empty((t.size, q.shape[1], miss.size))
    qhat = np.empty(alpha.shape)
    for i, target in enumerate(t):
        for k in range(q.shape[1]):
            for c in range(miss.size):
                a, step = miss[c], {}
                for s in range(target - lookback, target + 1):
                    if s - d[k] in step:  # that origin's error arrives now
                        a += step[s - d[k]]
                    if s == target:
                        break
                    past = window(s, k, c) if s >= 0 else np.array([])
                    if s >= 0 and s + d[k] <= target and np.isfinite(scores[s, k, c]) and past.size:
                        rank = np.ceil((1.0 - a) * (past.size + 1))
                        step[s] = gamma * (miss[c] - ((past < scores[s, k, c]).sum() >= rank))
                    else:
                        step[s] = 0.0
                alpha[i, k, c] = a
                past = np.sort(window(target, k, c))
                rank = int(np.clip(np.ceil((1.0 - a) * (past.size + 1)), 0, past.size))
                pick = 0.0 if rank == 0 else past[rank - 1]
                qhat[i, k, c] = 1.0 if past.size == 0 else pick * f[target]
    if settings.two_sided:
        levels = nominal.size
        return qhat, np.clip(1.0 - alpha[..., :levels] - alpha[..., levels:], 0.0, 1.0)
    return qhat, np.clip(1.0 - alpha, 0.0, 1.0)


def test_a_two_sided_state_moves_each_edge_by_its_own_qhat():
    rng = np.random.default_rng(11)
    q = np.sort(rng.normal(0.0, 0.02, (30, 4, len(LEVELS))), axis=-1)
    q_lower, q_upper = rng.uniform(0.5, 2.0, (2, 30, 4, len(COVERAGES)))
    median = quantile_at(q, LEVELS, np.full((30, 4, 1), 0.5))
    base = base_bands(q, LEVELS, COVERAGES)
    lower, upper = apply_aci(q, LEVELS, COVERAGES, np.concatenate([q_lower, q_upper], -1))
    assert np.array_equal(lower, median - q_lower * (median - base.lower))
    assert np.array_equal(upper, median + q_upper * (base.upper - median))
    # One Q̂ per level is the symmetric state; any other width is refused.
    assert np.array_equal(apply_aci(q, LEVELS, COVERAGES, q_upper)[0],
                          median - q_upper * (median - base.lower))
    with pytest.raises(ValueError, match="3 or 6 values per horizon"):
        apply_aci(q, LEVELS, COVERAGES, q_upper[..., :2])


def test_settings_without_two_sided_are_symmetric_and_their_meta_unchanged():
    # An artifact written before two-sided ACI (the shipped one's meta) is symmetric, and a
    # symmetric band's meta has no new key, so its content hash is what it was.
    shipped = {"gamma": 0.005, "lookback": 100, "calibration": 500, "vol_beta": 0.7,
               "long_window": 250}
    assert not ACISettings.from_dict(shipped).two_sided
    assert ACISettings.from_dict(shipped).to_dict() == shipped
    two = ACISettings(two_sided=True)
    assert two.to_dict() == {**ACISettings().to_dict(), "two_sided": True}
    assert ACISettings.from_dict(two.to_dict()) == two and two.sides == 2


def test_aci_rejects_inputs_that_do_not_fit():
    quantiles, realized = _jump_series(n=50)
    with pytest.raises(ValueError, match="do not fit together"):
        aci_bands(quantiles, LEVELS, realized[:, 0], np.array([1]), [1], COVERAGES)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 49\]"):
        aci_bands(quantiles, LEVELS, realized, np.array([50]), [1], COVERAGES)
    with pytest.raises(ValueError, match="gamma must be in"):
        ACISettings(gamma=0.0)
    with pytest.raises(ValueError, match="scale must be"):
        aci_bands(quantiles, LEVELS, realized, np.array([1]), [1], COVERAGES,
                  scale=np.zeros(len(quantiles)))


# ---- band baselines ----------------------------------------------------------------------------


def test_gaussian_band_is_sigma_root_h_times_normal_scores():
    q = gaussian_quantiles(np.array([0.02]), [1, 9], (0.1, 0.5, 0.9))
    np.testing.assert_allclose(q[0, 1], [0.06 * Z(0.1), 0.0, 0.06 * Z(0.9)], rtol=1e-12)


def test_ewma_volatility_follows_its_recursion():
    rng = np.random.default_rng(1)
    y = np.cumsum(rng.normal(0.0, 0.01, 80))
    sigma = ewma_volatility(log_returns(y))
    r = np.diff(y)
    weights = 0.94 ** np.arange(len(r))[::-1]  # newest return weight 1
    assert sigma[-1] == pytest.approx(np.sqrt(np.sum(weights * r**2) / weights.sum()), rel=1e-12)
    assert np.isnan(sigma[19]) and np.isfinite(sigma[20])


def test_empirical_band_has_the_known_quantiles_of_its_window():
    # The last 250 daily moves are a shuffled grid (i - 124.5) / 1000, i = 0..249: numpy's linear
    # quantile at p is (249 p - 124.5) / 1000 whatever the order.
    rng = np.random.default_rng(0)
    moves = np.concatenate([rng.normal(0.0, 0.05, 100), rng.permutation(np.arange(250)) - 124.5])
    y = np.concatenate([[0.0], np.cumsum(moves / 1000.0)])
    t = len(y) - 1
    q = empirical_quantiles(y, np.array([t, 260, 200]), [1], (0.1, 0.5, 0.9), window=250)
    np.testing.assert_allclose(q[0, 0], [(249 * p - 124.5) / 1000 for p in (0.1, 0.5, 0.9)],
                               rtol=0, atol=1e-15)
    assert np.isfinite(q[1]).all()  # 260 >= 250 + 1 bars behind it
    assert np.isnan(q[2]).all()  # 200 has fewer than 250 moves behind it


def test_empirical_band_of_h_day_moves_on_a_steady_trend_is_that_trend():
    y = 0.003 * np.arange(400.0)
    q = empirical_quantiles(y, np.array([399, 300]), [1, 5, 30], LEVELS)
    for k, h in enumerate((1, 5, 30)):
        np.testing.assert_allclose(q[:, k, :], 0.003 * h, rtol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_stacked_aci_states_equal_each_runs_own_bit_for_bit(seed):
    # The backtest computes a block of tickers' states in one aci_state call (aci_states): each
    # must be the state its run gets alone, NaN-padded start included.
    rng = np.random.default_rng(seed)
    k = 3
    d = np.array([1, 2, 5])
    settings = ACISettings(lookback=int(rng.integers(1, 30)),
                           calibration=int(rng.integers(1, 60)),
                           vol_beta=1.0 if seed % 2 else 0.7, two_sided=seed % 3 == 0)
    runs = []
    for _ in range(4):
        n = int(rng.integers(5, 200))
        q = np.sort(rng.normal(0.0, 0.02, (n, k, len(LEVELS))), axis=-1)
        y = rng.normal(0.0, 0.03, (n, k))
        y[rng.random((n, k)) < 0.05] = np.nan
        t = np.sort(rng.choice(n, min(n, 10), replace=False))
        f = None if seed % 2 else rng.uniform(0.5, 2.0, n)
        runs.append(ACIRun(q, LEVELS, y, t, d, f))
    stacked = aci_states(runs, COVERAGES, settings)
    for run, state in zip(runs, stacked):
        alone = aci_state(*run.arguments(), COVERAGES, settings, run.scale)
        assert np.array_equal(state.qhat, alone.qhat, equal_nan=True)
        assert np.array_equal(state.coverage, alone.coverage, equal_nan=True)


def test_quantiles_of_sorted_rows_are_numpys_float_for_float():
    rng = np.random.default_rng(0)
    p = np.array(LEVELS)
    for n in (1, 2, 7, 250):
        x = rng.standard_normal((40, n))
        x[::3] = np.round(x[::3], 1)  # ties
        np.testing.assert_array_equal(_sorted_quantiles(np.sort(x, axis=-1), p),
                                      np.quantile(x, p, axis=-1).T)
