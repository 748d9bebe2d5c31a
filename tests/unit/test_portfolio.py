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


def test_topk_weights_long_the_best_short_the_worst_among_tickers_with_both():
    w = topk_weights(SIGNAL, np.log1p(R), 1)
    np.testing.assert_array_equal(w, [[1, 0, -1, 0], [0, 1, -1, 0], [0, 0, 1, -1]])
    assert not topk_weights(SIGNAL, np.log1p(R), 2)[2].any()  # 3 tickers < 2k: flat


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
