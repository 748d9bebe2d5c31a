"""Metrics against values computed by hand (or by an explicit slow loop) on tiny series."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from service.forecasting import metrics as m

ACTUAL = np.array([10.0, 12.0, 15.0])
PREDICTED = np.array([11.0, 12.0, 13.0])  # errors 1, 0, 2


def test_mae_rmse_mape_on_hand_values():
    assert m.mae(ACTUAL, PREDICTED) == pytest.approx(1.0)
    assert m.rmse(ACTUAL, PREDICTED) == pytest.approx(math.sqrt(5 / 3))
    assert m.mape(ACTUAL, PREDICTED) == pytest.approx(100 * (1 / 10 + 0 + 2 / 15) / 3)


def test_relative_mae_divides_by_naive_mae():
    naive = np.array([9.0, 11.0, 12.0])  # errors 1, 1, 3 -> MAE 5/3
    assert m.relative_mae(ACTUAL, PREDICTED, naive) == pytest.approx(1.0 / (5 / 3))
    assert m.relative_mae(ACTUAL, naive, PREDICTED) == pytest.approx(5 / 3)


def test_relative_mae_is_nan_when_naive_is_perfect():
    assert math.isnan(m.relative_mae(ACTUAL, PREDICTED, ACTUAL))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: m.mae([1.0, 2.0], [1.0]), r"actual and predicted differ in shape: (2,) vs (1,)"),
        (lambda: m.rmse([1.0, np.nan], [1.0, 2.0]), "actual contains NaN or inf"),
        (lambda: m.mae([], []), "actual is empty"),
        (lambda: m.mape([0.0, 2.0], [1.0, 2.0]), "actual contains zeros; MAPE is undefined"),
        (
            lambda: m.relative_mae([1.0, 2.0], [1.0, 2.0], [1.0]),
            r"actual and naive differ in shape: (2,) vs (1,)",
        ),
    ],
)
def test_bad_input_raises_clear_error(call, message):
    with pytest.raises(ValueError) as exc:
        call()
    assert str(exc.value) == message


def test_r2_of_returns_on_hand_values():
    realized = np.array([1.0, 2.0, 3.0])  # mean 2, SS_tot 2
    assert m.r2_returns(realized, np.array([1.0, 2.0, 2.0])) == pytest.approx(1 - 1 / 2)
    assert m.r2_returns(realized, np.full(3, 2.0)) == pytest.approx(0.0)
    # The naive forecast (0 return) against trending returns: SS_res = 14 -> 1 - 14/2.
    assert m.r2_returns(realized, np.zeros(3)) == pytest.approx(-6.0)
    assert math.isnan(m.r2_returns(np.ones(3), np.zeros(3)))


def test_directional_accuracy_excludes_zero_moves_and_zero_calls():
    realized = np.array([0.01, -0.02, 0.0, 0.03, -0.01])
    predicted = np.array([0.02, 0.01, 0.5, 0.0, -0.03])
    # hit, miss, (no move), (no call), hit
    assert m.directional_accuracy(realized, predicted) == pytest.approx(2 / 3)
    assert math.isnan(m.directional_accuracy(realized, np.zeros(5)))


# --- Diebold–Mariano ----------------------------------------------------------------------------

Y = np.array([1.0, 2.0, 0.5, 1.5, 3.0, 2.5, 1.0, 2.0, 2.5, 1.5])
F_MODEL = np.array([1.2, 1.7, 0.9, 1.4, 2.2, 2.6, 1.5, 1.8, 2.9, 1.1])
F_NAIVE = np.array([0.8, 1.0, 2.0, 0.5, 1.5, 3.0, 2.5, 1.0, 2.0, 2.5])  # yesterday's value


def slow_dm(y, f1, f2, h, loss):
    """DM with Bartlett weights up to lag h-1, HLN factor, t(T-1) p-value, written out as loops."""
    T = len(y)
    L = (lambda e: e * e) if loss == "squared" else abs
    d = [L(y[t] - f1[t]) - L(y[t] - f2[t]) for t in range(T)]
    dbar = sum(d) / T
    gamma = []
    for j in range(h):
        gamma.append(sum((d[t] - dbar) * (d[t - j] - dbar) for t in range(j, T)) / T)
    v = gamma[0] + 2 * sum((1 - j / h) * gamma[j] for j in range(1, h))
    dm = dbar / math.sqrt(v / T)
    dm_hln = dm * math.sqrt((T + 1 - 2 * h + h * (h - 1) / T) / T)
    p = 2 * stats.t.cdf(-abs(dm_hln), df=T - 1)
    return dm_hln, p


@pytest.mark.parametrize("h", [1, 3])
@pytest.mark.parametrize("loss", ["squared", "absolute"])
def test_diebold_mariano_matches_slow_loop(h, loss):
    expected_stat, expected_p = slow_dm(Y, F_MODEL, F_NAIVE, h, loss)
    res = m.diebold_mariano(Y, F_MODEL, F_NAIVE, horizon=h, loss=loss)
    assert res.statistic == pytest.approx(expected_stat, rel=1e-10)
    assert res.pvalue == pytest.approx(expected_p, rel=1e-10)
    assert res.n == 10
    # The model is closer to Y here: negative statistic. Swapping the forecasts flips the sign.
    assert res.statistic < 0
    swapped = m.diebold_mariano(Y, F_NAIVE, F_MODEL, horizon=h, loss=loss)
    assert swapped.statistic == pytest.approx(-res.statistic)


def test_diebold_mariano_at_h1_is_the_textbook_formula():
    d = (Y - F_MODEL) ** 2 - (Y - F_NAIVE) ** 2
    T = d.size
    dm = d.mean() / math.sqrt(np.mean((d - d.mean()) ** 2) / T)
    hln = math.sqrt((T + 1 - 2 + 0) / T)
    assert m.diebold_mariano(Y, F_MODEL, F_NAIVE, horizon=1).statistic == pytest.approx(dm * hln)


def test_diebold_mariano_on_a_differential_equals_the_forecast_form():
    d = np.abs(Y - F_MODEL) - np.abs(Y - F_NAIVE)
    from_d = m.diebold_mariano_differential(d, horizon=3)
    from_forecasts = m.diebold_mariano(Y, F_MODEL, F_NAIVE, horizon=3, loss="absolute")
    assert from_d == from_forecasts
    assert from_d.statistic == pytest.approx(slow_dm(Y, F_MODEL, F_NAIVE, 3, "absolute")[0])


def test_diebold_mariano_identical_forecasts_is_no_evidence():
    res = m.diebold_mariano(Y, F_MODEL, F_MODEL, horizon=1)
    assert (res.statistic, res.pvalue) == (0.0, 1.0)


def test_diebold_mariano_rejects_too_few_forecasts_and_bad_loss():
    with pytest.raises(ValueError) as exc:
        m.diebold_mariano(Y[:3], F_MODEL[:3], F_NAIVE[:3], horizon=3)
    assert str(exc.value) == "too few forecasts for a DM test at horizon 3: 3"
    with pytest.raises(ValueError) as exc:
        m.diebold_mariano(Y, F_MODEL, F_NAIVE, horizon=1, loss="mape")
    assert str(exc.value) == "loss must be 'squared' or 'absolute', got 'mape'"


# --- information coefficient --------------------------------------------------------------------


def ic_cross_section():
    rows = [
        ("d1", 1.0, 1.0),
        ("d1", 2.0, 2.0),
        ("d1", 3.0, 4.0),
        ("d2", 3.0, 1.0),
        ("d2", 2.0, 2.0),
        ("d2", 1.0, 4.0),
        ("d3", 1.0, 1.0),
        ("d3", 2.0, 2.0),  # 2 tickers: skipped
        ("d4", 5.0, 1.0),
        ("d4", 5.0, 2.0),
        ("d4", 5.0, 3.0),  # constant forecast: skipped
        ("d5", 1.0, 4.0),
        ("d5", 1.0, 3.0),
        ("d5", 2.0, 2.0),
        ("d5", 3.0, 1.0),  # a tie
    ]
    dates, pred, real = zip(*rows)
    return np.array(dates), np.array(pred), np.array(real)


def test_daily_pearson_ic_on_a_tiny_cross_section():
    ic = m.daily_ic(*ic_cross_section(), method="pearson")
    # d1: dp = (-1, 0, 1), dr = (-4/3, -1/3, 5/3): Σ dp·dr = 3, Σ dp² = 2, Σ dr² = 42/9
    d1 = 3 / math.sqrt(2 * 42 / 9)
    # d5: dp = (-0.75, -0.75, 0.25, 1.25), dr = (1.5, 0.5, -0.5, -1.5)
    d5 = (-1.125 - 0.375 - 0.125 - 1.875) / math.sqrt(2.75 * 5)
    assert list(ic.index) == ["d1", "d2", "d5"]
    np.testing.assert_allclose(ic.to_numpy(), [d1, -d1, d5], rtol=1e-12)


def test_daily_rank_ic_uses_average_ranks():
    ic = m.daily_ic(*ic_cross_section(), method="spearman")
    # d5 ranks: predicted (1.5, 1.5, 3, 4) -> dp = (-1, -1, 0.5, 1.5), Σ dp² = 4.5;
    # realized (4, 3, 2, 1) -> dr = (1.5, 0.5, -0.5, -1.5), Σ dr² = 5; Σ dp·dr = -4.5
    d5 = -4.5 / math.sqrt(4.5 * 5)
    np.testing.assert_allclose(ic.to_numpy(), [1.0, -1.0, d5], rtol=1e-12)


def test_ic_summary_mean_std_and_icir():
    s = m.ic_summary(*ic_cross_section(), method="spearman")
    values = np.array([1.0, -1.0, -4.5 / math.sqrt(4.5 * 5)])
    assert s.n_dates == 3
    assert s.mean == pytest.approx(values.mean())
    assert s.std == pytest.approx(values.std(ddof=1))
    assert s.icir == pytest.approx(values.mean() / values.std(ddof=1))


def test_ic_summary_with_no_usable_date_is_nan():
    s = m.ic_summary(["a", "a"], [1.0, 2.0], [1.0, 2.0])
    assert s.n_dates == 0 and math.isnan(s.mean) and math.isnan(s.icir)


# --- intervals ----------------------------------------------------------------------------------


def test_interval_coverage_counts_closed_band():
    actual = np.array([10.0, 11.0, 12.0, 13.0])
    lower = np.array([9.0, 11.5, 12.0, 10.0])
    upper = np.array([11.0, 12.0, 12.0, 12.0])
    # inside, below, on both edges, above
    assert m.interval_coverage(actual, lower, upper) == pytest.approx(0.5)


def test_interval_width_in_dollars_and_relative_to_origin_price():
    w = m.interval_width([9.0, 11.5, 12.0, 10.0], [11.0, 12.0, 12.0, 12.0], [100, 50, 10, 20])
    assert w.dollars == pytest.approx((2 + 0.5 + 0 + 2) / 4)
    assert w.relative == pytest.approx((0.02 + 0.01 + 0 + 0.1) / 4)


def test_crossed_interval_is_refused():
    with pytest.raises(ValueError) as exc:
        m.interval_coverage([1.0], [2.0], [1.5])
    assert str(exc.value) == "lower exceeds upper for some forecasts (crossed quantiles)"


# --- strategy -----------------------------------------------------------------------------------

# h = 2: only origins 0, 2, 4 trade; the values at 1, 3, 5 are wild to prove they are ignored.
PRED_H2 = np.array([0.1, -9.0, -0.2, 9.0, 0.3, -9.0])
REAL_H2 = np.log([1.1, 50.0, 0.9, 0.01, 1.2, 50.0])


def test_strategy_trades_non_overlapping_periods():
    np.testing.assert_allclose(m.strategy_returns(PRED_H2, REAL_H2, 2, "long_flat"), [0.1, 0, 0.2])
    np.testing.assert_allclose(
        m.strategy_returns(PRED_H2, REAL_H2, 2, "long_short"), [0.1, 0.1, 0.2]
    )
    np.testing.assert_allclose(
        m.strategy_returns(PRED_H2, REAL_H2, 2, "buy_and_hold"), [0.1, -0.1, 0.2]
    )


def test_evaluate_strategy_cumulative_sharpe_drawdown():
    long_flat = m.evaluate_strategy(PRED_H2, REAL_H2, 2, "long_flat")
    assert long_flat.cumulative_return == pytest.approx(1.1 * 1.2 - 1)
    assert long_flat.max_drawdown == pytest.approx(0.0)
    assert long_flat.n_periods == 3
    hold = m.evaluate_strategy(PRED_H2, REAL_H2, 2, "buy_and_hold")
    assert hold.cumulative_return == pytest.approx(1.1 * 0.9 * 1.2 - 1)
    assert hold.max_drawdown == pytest.approx(1 - 0.99 / 1.1)
    np.testing.assert_allclose(hold.equity, [1.0, 1.1, 0.99, 1.188])
    s = np.array([0.1, -0.1, 0.2])
    assert hold.sharpe == pytest.approx(s.mean() / s.std(ddof=1) * math.sqrt(252 / 2))
    long_short = m.evaluate_strategy(PRED_H2, REAL_H2, 2, "long_short")
    assert long_short.cumulative_return == pytest.approx(1.1 * 1.1 * 1.2 - 1)


def test_strategy_on_several_tickers_is_equal_weight():
    pred = np.array([[0.1, -0.1], [0.2, 0.2]])
    real = np.log([[1.1, 1.2], [0.9, 1.3]])
    # period 1: (0.1 + 0) / 2; period 2: (-0.1 + 0.3) / 2
    np.testing.assert_allclose(m.strategy_returns(pred, real, 1, "long_flat"), [0.05, 0.1])


def test_book_weights_equally_over_the_tickers_present_each_traded_session():
    nan = np.nan
    # Ticker 2 has no forecast at rows 0-2 (it starts late); h = 2 trades rows 0, 2, 4.
    pred = np.array([[0.1, -0.1, nan], [9.0, 9.0, nan], [0.1, 0.1, nan],
                     [9.0, 9.0, 9.0], [0.1, -0.1, 0.1]])
    real = np.log([[1.1, 1.2, nan], [50.0, 50.0, nan], [0.9, 1.3, nan],
                   [50.0, 50.0, 50.0], [1.2, 1.0, 1.4]])
    # row 0: (0.1 + 0) / 2; row 2: (-0.1 + 0.3) / 2; row 4: (0.2 + 0 + 0.4) / 3
    np.testing.assert_allclose(m.strategy_returns(pred, real, 2, "long_flat"), [0.05, 0.1, 0.2])
    np.testing.assert_allclose(m.strategy_returns(pred, real, 2, "buy_and_hold"),
                               [0.15, 0.1, 0.2])


def test_book_absences_must_agree_and_every_traded_row_needs_a_ticker():
    nan = np.nan
    with pytest.raises(ValueError) as exc:
        m.strategy_returns([[0.1, nan]], [[0.1, 0.2]], 1, "long_flat")
    assert str(exc.value) == ("predicted and realized must be NaN at the same places "
                              "(a ticker absent from the book at an origin)")
    with pytest.raises(ValueError) as exc:
        m.strategy_returns([[0.1], [0.2], [nan]], [[0.1], [0.2], [nan]], 2, "long_flat")
    assert str(exc.value) == "no ticker in the book at traded origin row 2"
    # A single ticker's series has no absences: NaN there is still bad input.
    with pytest.raises(ValueError, match="predicted contains NaN or inf"):
        m.strategy_returns([0.1, nan], [0.1, 0.2], 1, "long_flat")


def test_drawdown_counts_a_loss_from_the_start_and_sharpe_needs_two_periods():
    assert m.max_drawdown([-0.5, 0.2]) == pytest.approx(0.5)
    assert m.max_drawdown([0.1, 0.2]) == 0.0
    assert math.isnan(m.annualized_sharpe([0.1], 1))
    assert math.isnan(m.annualized_sharpe([0.1, 0.1], 1))


def test_unknown_strategy_kind_is_refused():
    with pytest.raises(ValueError) as exc:
        m.strategy_returns([0.1], [0.1], 1, "momentum")
    assert str(exc.value) == (
        "kind must be one of long_flat, long_short, buy_and_hold; got 'momentum'"
    )


# ---- band metrics ------------------------------------------------------------------------------


def test_interval_score_by_hand_and_as_two_pinball_losses():
    # 80 % band [1, 3]: inside costs the width 2; 1 below costs 2 + 10 x 1; 1.5 above 2 + 10 x 1.5.
    y, lo, hi = np.array([2.0, 0.0, 4.5]), np.ones(3), np.full(3, 3.0)
    np.testing.assert_allclose(m.interval_scores(y, lo, hi, 0.8), [2.0, 12.0, 17.0])
    assert m.interval_score(y, lo, hi, 0.8) == pytest.approx(31.0 / 3)

    def pinball(q, pred):
        return np.maximum(q * (y - pred), (q - 1) * (y - pred))

    # IS_α = (2/α) (pinball_{α/2}(l) + pinball_{1-α/2}(u)) (Gneiting & Raftery 2007).
    np.testing.assert_allclose(m.interval_scores(y, lo, hi, 0.8),
                               (2 / 0.2) * (pinball(0.1, lo) + pinball(0.9, hi)))
    with pytest.raises(ValueError, match="coverage must be in"):
        m.interval_score(y, lo, hi, 1.0)
    with pytest.raises(ValueError, match="crossed quantiles"):
        m.interval_score(y, hi, lo, 0.8)


def test_dm_on_interval_score_differentials_by_hand():
    # d = IS_model - IS_reference per origin: mean 0.5, γ0 = 1.25, T = 4, h = 1:
    # DM = 0.5 / sqrt(1.25 / 4) = 0.8944; HLN x sqrt((4 + 1 - 2) / 4) -> 0.7746; p from t(3).
    d = np.array([1.0, -1.0, 2.0, 0.0])
    res = m.diebold_mariano_differential(d, 1)
    assert res.statistic == pytest.approx(0.5 / np.sqrt(1.25 / 4) * np.sqrt(0.75), rel=1e-9)

    assert res.pvalue == pytest.approx(2 * stats.t.sf(res.statistic, df=3), rel=1e-9)


def test_coverage_by_volatility_tercile():
    vol = np.arange(1.0, 10.0)  # three calm, three middle, three turbulent origins
    y = np.array([0, 0, 5, 0, 5, 5, 5, 5, 5], dtype=float)
    lo, hi = np.full(9, -1.0), np.full(9, 1.0)
    assert m.coverage_by_tercile(y, lo, hi, vol) == pytest.approx(
        {"calm": 2 / 3, "middle": 1 / 3, "turbulent": 0.0})


@pytest.mark.parametrize("seed", range(8))
def test_diebold_mariano_is_statsmodels_float_for_float(seed):
    # The HAC t is computed without statsmodels' OLS objects (36,600 calls per universe
    # backtest): every statistic and p-value must be the numbers statsmodels gives.
    import warnings

    from statsmodels.tsa.stattools import diebold_mariano_test

    rng = np.random.default_rng(seed)
    for h in (1, 2, 5, 30):
        n = int(rng.integers(2 * h + 1, 700))
        d = rng.standard_normal(n) * 10 ** rng.uniform(-8, 3) + (0.3 if seed % 2 else 0.0)
        if seed % 4 == 3:
            d = np.round(d, 1) + 0.5  # ties
        if seed == 6:
            d = np.full(n, 0.7)  # constant, non-zero: zero variance
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            theirs = diebold_mariano_test(np.zeros(n), d, np.zeros(n), lags=h - 1,
                                          criterion=lambda _y, f: f, harvey_adj=True, horizon=h)
        ours = m.diebold_mariano_differential(d, h)
        np.testing.assert_array_equal([ours.statistic, ours.pvalue],
                                      [float(theirs.statistic), float(theirs.pvalue)])


def _rows_case(seed: int, n: int):
    """Six series of n prices/returns, with a flat row, a perfect-naive row and zero moves."""
    rng = np.random.default_rng(seed)
    g = 6
    close = rng.uniform(20, 200, (g, n))
    realized = np.round(rng.normal(0, 0.02, (g, n)), 3)  # ties and exact zeros
    realized[1] = 0.0  # a flat series: R² and Sharpe undefined
    predicted = rng.normal(0, 0.01, (g, n))
    predicted[2, : n // 2] = 0.0
    actual = close * np.exp(realized)
    naive = close.copy()
    naive[3] = actual[3]  # naive perfect: rel MAE undefined
    lo, hi = close * np.exp(-0.02), close * np.exp(0.02 + rng.uniform(0, 0.01, (g, n)))
    vol = np.round(rng.uniform(0, 1, (g, n)), 1)
    vol[4] = 0.5  # one volatility: empty terciles
    return close, realized, predicted, actual, naive, lo, hi, vol


@pytest.mark.parametrize("seed, n", [(0, 1), (1, 2), (2, 9), (3, 144), (4, 300)])
def test_per_series_metrics_of_rows_are_each_rows_own_floats(seed, n):
    """G series of one length, a row each, give the floats each row gives alone (NaN where
    that is NaN): what the backtest's batched per-ticker scoring relies on."""
    close, realized, predicted, actual, naive, lo, hi, vol = _rows_case(seed, n)
    pred_prices = close * np.exp(predicted)

    def same(batched, alone):
        expected = np.array([alone(i) for i in range(len(close))], dtype=float)
        assert np.array_equal(np.asarray(batched, dtype=float), expected, equal_nan=True)

    same(m.mae(actual, pred_prices), lambda i: m.mae(actual[i], pred_prices[i]))
    same(m.rmse(actual, pred_prices), lambda i: m.rmse(actual[i], pred_prices[i]))
    same(m.mape(actual, pred_prices), lambda i: m.mape(actual[i], pred_prices[i]))
    same(m.relative_mae(actual, pred_prices, naive),
         lambda i: m.relative_mae(actual[i], pred_prices[i], naive[i]))
    same(m.r2_returns(realized, predicted), lambda i: m.r2_returns(realized[i], predicted[i]))
    same(m.directional_accuracy(realized, predicted),
         lambda i: m.directional_accuracy(realized[i], predicted[i]))
    same(m.interval_coverage(actual, lo, hi), lambda i: m.interval_coverage(actual[i], lo[i], hi[i]))
    width = m.interval_width(lo, hi, close)
    same(width.dollars, lambda i: m.interval_width(lo[i], hi[i], close[i]).dollars)
    same(width.relative, lambda i: m.interval_width(lo[i], hi[i], close[i]).relative)
    by = m.coverage_by_tercile(actual, lo, hi, vol)
    for name in m.TERCILES:
        same(by[name], lambda i, name=name: m.coverage_by_tercile(actual[i], lo[i], hi[i],
                                                                  vol[i])[name])
    for h in (1, 5):
        for kind in m.STRATEGY_KINDS:
            figures = m.series_strategies(predicted, realized, h, kind)
            alone = [m.evaluate_strategy(predicted[i], realized[i], h, kind)
                     for i in range(len(close))]
            same(figures[0], lambda i, a=alone: a[i].cumulative_return)
            same(figures[1], lambda i, a=alone: a[i].sharpe)
            same(figures[2], lambda i, a=alone: a[i].max_drawdown)


def test_one_series_metrics_stay_floats():
    assert type(m.mae(ACTUAL, PREDICTED)) is float
    assert type(m.directional_accuracy([0.1, -0.2], [0.2, 0.1])) is float
    assert type(m.annualized_sharpe([0.01, 0.02, -0.01], 1)) is float
    assert type(m.coverage_by_tercile(ACTUAL, ACTUAL - 1, ACTUAL + 1, [1.0, 2.0, 3.0])["calm"]) \
        is float
