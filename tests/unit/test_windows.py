"""Targets are direct forward log returns; windows end at their origin; NaN targets are dropped."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.forecasting.windows import (
    forward_log_returns,
    last_window,
    make_windows,
    prices_from_log_returns,
)


def test_forward_log_returns_are_cumulative_from_the_origin():
    prices = np.array([10.0, 11.0, 9.0, 12.0, 12.5])
    targets = forward_log_returns(prices, horizon=3)
    expected = np.array(
        [
            [math.log(11 / 10), math.log(9 / 10), math.log(12 / 10)],
            [math.log(9 / 11), math.log(12 / 11), math.log(12.5 / 11)],
            [math.log(12 / 9), math.log(12.5 / 9), np.nan],
            [math.log(12.5 / 12), np.nan, np.nan],
            [np.nan, np.nan, np.nan],
        ]
    )
    np.testing.assert_allclose(targets, expected, rtol=1e-12)


def test_horizon_longer_than_series_is_all_nan_past_the_end():
    targets = forward_log_returns(np.array([1.0, 2.0]), horizon=4)
    assert targets.shape == (2, 4)
    assert targets[0, 0] == pytest.approx(math.log(2))
    assert np.isnan(targets[0, 1:]).all() and np.isnan(targets[1]).all()


def test_forward_log_returns_refuse_non_positive_prices():
    with pytest.raises(ValueError, match="^adj_close must be finite and positive$"):
        forward_log_returns(np.array([1.0, 0.0, 2.0]), horizon=1)


def test_windows_end_at_their_origin_and_carry_its_targets():
    features = np.arange(24, dtype=np.float64).reshape(12, 2)  # row t = [2t, 2t+1]
    prices = np.exp(np.arange(12, dtype=np.float64) * 0.1)  # log return 0.1 per step
    x, y, origins = make_windows(features, forward_log_returns(prices, horizon=3), window=4)

    # Origins 3..8: window needs 4 rows, targets need 3 bars after the origin.
    np.testing.assert_array_equal(origins, np.arange(3, 9))
    assert x.shape == (6, 4, 2) and x.dtype == np.float32
    assert y.shape == (6, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(x[0], features[0:4])
    np.testing.assert_array_equal(x[-1], features[5:9])
    np.testing.assert_allclose(y, np.tile([0.1, 0.2, 0.3], (6, 1)), rtol=1e-6)


def test_origins_with_any_nan_target_are_left_out():
    features = np.ones((8, 3))
    targets = np.zeros((8, 2))
    targets[5, 1] = np.nan
    _, y, origins = make_windows(features, targets, window=2)
    np.testing.assert_array_equal(origins, [1, 2, 3, 4, 6, 7])
    assert not np.isnan(y).any()


def test_without_targets_every_full_window_is_a_sample():
    x, y, origins = make_windows(np.ones((10, 2)), None, window=10)
    assert y is None
    assert x.shape == (1, 10, 2)
    np.testing.assert_array_equal(origins, [9])


def test_too_few_rows_give_no_windows():
    x, y, origins = make_windows(np.ones((3, 2)), np.zeros((3, 1)), window=5)
    assert x.shape == (0, 5, 2) and y.shape == (0, 1) and origins.shape == (0,)


def test_last_window_is_the_last_training_window():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(70, 10))
    x, _, _ = make_windows(features, None, window=60)
    served = last_window(features, window=60)
    assert served.shape == (1, 60, 10) and served.dtype == np.float32
    np.testing.assert_array_equal(served[0], x[-1])


def test_last_window_refuses_short_history():
    with pytest.raises(ValueError, match="^need 60 feature rows for one window, got 59$"):
        last_window(np.ones((59, 10)), window=60)


def test_windows_refuse_mismatched_targets_and_nan_features():
    with pytest.raises(ValueError, match=r"^targets must be 2-D with 5 rows like features"):
        make_windows(np.ones((5, 2)), np.zeros((4, 1)), window=2)
    features = np.ones((5, 2))
    features[0, 0] = np.nan
    with pytest.raises(ValueError, match="^features must be finite; drop warm-up rows first$"):
        make_windows(features, None, window=2)


def test_prices_from_log_returns_carry_each_origins_close_over_trailing_axes():
    close = np.array([100.0, 50.0])
    returns = np.log(np.array([[[1.1, 0.9], [1.0, 2.0]], [[0.5, 1.0], [4.0, 1.5]]]))  # (2, 2, 2)
    expected = np.array([[[110.0, 90.0], [100.0, 200.0]], [[25.0, 50.0], [200.0, 75.0]]])
    np.testing.assert_allclose(prices_from_log_returns(close, returns), expected, rtol=1e-12)
    np.testing.assert_allclose(prices_from_log_returns(close, returns[:, 0, 0]), [110.0, 25.0],
                               rtol=1e-12)
    # A scalar close (one origin, the serving path) scales a whole (H, Q) forecast.
    np.testing.assert_allclose(prices_from_log_returns(100.0, returns[0]), expected[0] * 1.0,
                               rtol=1e-12)
    # It is the inverse of the targets: prices come back from forward_log_returns.
    prices = np.array([10.0, 11.0, 9.0, 12.0])
    targets = forward_log_returns(prices, horizon=2)
    np.testing.assert_allclose(prices_from_log_returns(prices[:2], targets[:2]),
                               [[11.0, 9.0], [9.0, 12.0]], rtol=1e-12)


def test_prices_from_log_returns_refuse_mismatched_shapes_and_bad_closes():
    with pytest.raises(ValueError) as exc:
        prices_from_log_returns(np.ones(3), np.zeros((2, 5)))
    assert str(exc.value) == "close (3,) must match the leading axes of log_returns (2, 5)"
    with pytest.raises(ValueError) as exc:
        prices_from_log_returns(np.array([1.0, 0.0]), np.zeros(2))
    assert str(exc.value) == "close must be finite and positive"
