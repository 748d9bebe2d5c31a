"""The costed top-k/bottom-k book and buy-and-hold, computed by hand on a tiny universe."""

from __future__ import annotations

import numpy as np
import pytest

from service.forecasting.portfolio import buy_and_hold, topk_long_short, topk_weights

# 3 sessions x 4 tickers. Simple returns R; realized are their log returns.
R = np.array([[0.01, 0.02, -0.01, 0.00],
              [0.00, 0.03, 0.01, -0.02],
              [0.05, 0.01, 0.02, 0.01]])
SIGNAL = np.array([[0.3, 0.1, -0.2, 0.0],
                   [0.1, 0.3, -0.2, 0.0],
                   [np.nan, 0.1, 0.2, -0.1]])  # session 3: A has no signal


def test_topk_weights_long_the_best_short_the_worst_among_tickers_with_a_signal():
    w = topk_weights(SIGNAL, np.log1p(R), 1)
    np.testing.assert_array_equal(w, [[1, 0, -1, 0], [0, 1, -1, 0], [0, 0, 1, -1]])
    assert not topk_weights(SIGNAL, np.log1p(R), 2)[2].any()  # 3 signals < 2k: flat


def test_a_missing_next_return_neither_removes_the_name_nor_flattens_the_session():
    # The causal rule: positions at t come from the signal at t only. A's session-1 return and
    # B, C, D's session-3 returns are missing (no bar the next day): the weights are those of the
    # full panel, and each such held leg is booked at 0.
    holes = R.copy()
    holes[0, 0] = np.nan  # A, the top signal at session 1, has no next bar
    holes[2, 1:] = np.nan  # session 3: only A (no signal) has a next return
    w = topk_weights(SIGNAL, np.log1p(holes), 1)
    np.testing.assert_array_equal(w, [[1, 0, -1, 0], [0, 1, -1, 0], [0, 0, 1, -1]])
    res = topk_long_short(SIGNAL, np.log1p(holes), k=1, cost_bp=10.0)
    # Session 1: long A booked 0, short C (-1 %) +1 %; session 3: both legs booked 0.
    np.testing.assert_array_equal(res.gross, [0.0 + 0.01, 0.03 - 0.01, 0.0])
    np.testing.assert_array_equal(res.traded, [2.0, 2.0, 4.0])  # costs unchanged in meaning
    np.testing.assert_allclose(res.net, [0.008, 0.018, -0.004])


def test_topk_book_returns_costs_and_turnover_by_hand():
    res = topk_long_short(SIGNAL, np.log1p(R), k=1, cost_bp=10.0)
    np.testing.assert_allclose(res.gross, [0.01 + 0.01, 0.03 - 0.01, 0.02 - 0.01])
    np.testing.assert_allclose(res.traded, [2.0, 2.0, 4.0])  # A->B long; C long, D short
    np.testing.assert_allclose(res.net, [0.018, 0.018, 0.006])
    assert res.cost == pytest.approx(0.008)
    assert res.turnover == pytest.approx((8 / 3) / 4)
    assert res.cum_return == pytest.approx(1.018 * 1.018 * 1.006 - 1)
    assert res.max_drawdown == 0.0
    s = np.array([0.018, 0.018, 0.006])
    assert res.sharpe == pytest.approx(s.mean() / s.std(ddof=1) * np.sqrt(252))


def test_buy_and_hold_drifts_and_pays_once():
    res = buy_and_hold(np.log1p(R), cost_bp=10.0)
    value = 0.25 * np.cumprod(1 + R, axis=0).sum(axis=1)  # 1/4 in each, never rebalanced
    gross = value / np.concatenate([[1.0], value[:-1]]) - 1
    np.testing.assert_allclose(res.gross, gross)
    np.testing.assert_allclose(res.net, gross - [0.001, 0, 0])
    assert res.gross[0] == pytest.approx(0.005)
    assert res.cum_return == pytest.approx(value[-1] * (1 - 0.001 / 1.005) - 1)


def test_buy_and_hold_keeps_a_name_whose_first_return_is_missing():
    # Membership is decided at entry (every column, or `held`), not by whether the first
    # session's outcome exists: A's missing day-1 return is a 0 return on its 1/4.
    holes = R.copy()
    holes[0, 0] = np.nan
    res = buy_and_hold(np.log1p(holes), cost_bp=0.0)
    growth = 1 + np.nan_to_num(holes)
    value = 0.25 * np.cumprod(growth, axis=0).sum(axis=1)
    np.testing.assert_allclose(res.gross, value / np.concatenate([[1.0], value[:-1]]) - 1)
    assert res.gross[0] == pytest.approx((0.02 - 0.01) / 4)  # not (0.02 - 0.01) / 3
    # `held` names the members known at entry: D was not tradable at the first session.
    only = buy_and_hold(np.log1p(R), cost_bp=0.0, held=[True, True, True, False])
    assert only.gross[0] == pytest.approx((0.01 + 0.02 - 0.01) / 3)
    with pytest.raises(ValueError, match="held"):
        buy_and_hold(np.log1p(R), held=[True, False])
    with pytest.raises(ValueError, match="no ticker is held"):
        buy_and_hold(np.log1p(R), held=[False] * 4)


def _panel(seed: int, sessions: int = 60, tickers: int = 12, holes: bool = True):
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(sessions, tickers))
    signal[rng.random(signal.shape) < 0.15] = np.nan
    realized = rng.normal(0, 0.02, size=(sessions, tickers))
    if holes:
        realized[rng.random(realized.shape) < 0.15] = np.nan
    return signal, realized


def _scrambled_after(panel: np.ndarray, first: int, seed: int) -> np.ndarray:
    """A (sessions, tickers) panel with every row from `first` on replaced: new numbers of
    another scale, a third of them NaN."""
    rng = np.random.default_rng(seed)
    out = panel.copy()
    future = rng.normal(0, 0.05, size=out[first:].shape)
    future[rng.random(future.shape) < 0.33] = np.nan
    out[first:] = future
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cut", [0, 7, 30, 58])
def test_weights_and_book_returns_up_to_t_ignore_every_later_outcome(seed, cut):
    signal, realized = _panel(seed)
    # Known at `cut`: the signal of sessions <= cut. Every later signal redrawn (other names
    # ranked, other holes) and every outcome from realized[cut] (the cut -> cut+1 return) on.
    later_signal = _scrambled_after(signal, cut + 1, seed + 400)
    for k in (1, 3):
        w = topk_weights(signal, realized, k)
        w_future = topk_weights(later_signal, _scrambled_after(realized, cut, seed + 100), k)
        np.testing.assert_array_equal(w[: cut + 1], w_future[: cut + 1])
        assert not np.array_equal(w[cut + 1:], w_future[cut + 1:])  # the scramble reached w
        # The book's returns through `cut` read the signal and realized[:cut + 1] only.
        res = topk_long_short(signal, realized, k, cost_bp=5.0)
        later = topk_long_short(later_signal, _scrambled_after(realized, cut + 1, seed + 200),
                                k, 5.0)
        for name in ("gross", "net", "traded"):
            np.testing.assert_array_equal(getattr(res, name)[: cut + 1],
                                          getattr(later, name)[: cut + 1])
        assert not np.array_equal(res.gross[cut + 1:], later.gross[cut + 1:])
    held = np.isfinite(signal[0])
    bh = buy_and_hold(realized, held=held)
    bh_later = buy_and_hold(_scrambled_after(realized, cut + 1, seed + 300), held=held)
    np.testing.assert_array_equal(bh.gross[: cut + 1], bh_later.gross[: cut + 1])
    np.testing.assert_array_equal(bh.net[: cut + 1], bh_later.net[: cut + 1])
    assert not np.array_equal(bh.gross[cut + 1:], bh_later.gross[cut + 1:])


def _old_topk_weights(signal, realized, k):
    """The pre-fix rule (membership on a finite NEXT return too), kept to pin hole-free results."""
    weights = np.zeros_like(signal)
    valid = np.isfinite(signal) & np.isfinite(realized)
    for t in range(signal.shape[0]):
        names = np.flatnonzero(valid[t])
        if names.size < 2 * k:
            continue
        order = names[np.argsort(signal[t, names], kind="stable")]
        weights[t, order[-k:]] = 1.0 / k
        weights[t, order[:k]] = -1.0 / k
    return weights


def _old_buy_and_hold_gross(r):
    held = np.isfinite(r[0])
    value = held / held.sum()
    gross = np.empty(r.shape[0])
    for t in range(r.shape[0]):
        before = value.sum()
        value = value * (1.0 + np.nan_to_num(np.expm1(r[t])))
        gross[t] = value.sum() / before - 1.0
    return gross


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_without_holes_results_are_bit_identical_to_the_old_rule(seed):
    signal, realized = _panel(seed, holes=False)  # every realized finite (signals still missing)
    for k in (1, 2, 5):
        w = topk_weights(signal, realized, k)
        np.testing.assert_array_equal(w, _old_topk_weights(signal, realized, k))
        res = topk_long_short(signal, realized, k, cost_bp=5.0)
        simple = np.nan_to_num(np.expm1(realized))
        np.testing.assert_array_equal(res.gross, (w * simple).sum(axis=1))
    bh = buy_and_hold(realized, cost_bp=5.0)
    np.testing.assert_array_equal(bh.gross, _old_buy_and_hold_gross(realized))
    held = buy_and_hold(realized, cost_bp=5.0, held=np.isfinite(realized[0]))
    np.testing.assert_array_equal(held.net, bh.net)
