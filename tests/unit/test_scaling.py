"""StandardScaler: exact round trip, JSON round trip, statistics only from what it is fit on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.forecasting.scaling import StandardScaler


@pytest.fixture
def features() -> np.ndarray:
    rng = np.random.default_rng(3)
    # A drifting series: later rows have a different mean than early ones.
    return rng.normal(size=(200, 4)) * [1.0, 5.0, 0.1, 2.0] + np.linspace(0, 10, 200)[:, None]


def test_fit_gives_per_feature_mean_and_population_std(features):
    scaler = StandardScaler.fit(features)
    np.testing.assert_allclose(scaler.mean, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(scaler.std, features.std(axis=0), rtol=1e-12)
    z = scaler.transform(features)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-12)


def test_inverse_transform_round_trips(features):
    scaler = StandardScaler.fit(features)
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(features)), features)


def test_windows_transform_on_the_last_axis(features):
    scaler = StandardScaler.fit(features)
    windows = np.stack([features[:50], features[50:100]]).astype(np.float32)  # (2, 50, 4)
    z = scaler.transform(windows)
    assert z.shape == (2, 50, 4) and z.dtype == np.float32
    np.testing.assert_allclose(z[1], scaler.transform(features[50:100]), rtol=1e-5, atol=1e-5)


def test_fit_over_window_axes_gives_a_per_feature_scaler(features):
    windows = np.stack([features[:100], features[100:]])  # (2, 100, 4)
    scaler = StandardScaler.fit(windows, axis=(0, 1))
    assert scaler.mean.shape == (4,)
    np.testing.assert_allclose(scaler.mean, features.mean(axis=0), rtol=1e-12)


def test_float64_stays_float64(features):
    assert StandardScaler.fit(features).transform(features).dtype == np.float64


def test_constant_feature_is_left_unscaled():
    x = np.column_stack([np.full(10, 3.0), np.arange(10.0)])
    scaler = StandardScaler.fit(x)
    assert scaler.std[0] == 1.0
    np.testing.assert_array_equal(scaler.transform(x)[:, 0], 0.0)


def test_json_round_trip(features):
    scaler = StandardScaler.fit(features)
    restored = StandardScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(restored.mean, scaler.mean)
    np.testing.assert_array_equal(restored.std, scaler.std)


def test_fit_refuses_nan_and_empty():
    with pytest.raises(ValueError, match="^cannot fit a scaler on non-finite values$"):
        StandardScaler.fit(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="^cannot fit a scaler on an empty array$"):
        StandardScaler.fit(np.empty((0, 3)))
