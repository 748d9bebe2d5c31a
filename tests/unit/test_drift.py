"""PSI on synthetic data: zero for the same distribution, growing with the shift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from service.forecasting.drift import feature_psi, psi


def test_psi_is_near_zero_for_a_sample_of_the_same_distribution():
    rng = np.random.default_rng(0)
    assert psi(rng.normal(0, 1, 50_000), rng.normal(0, 1, 50_000)) < 0.002


def test_psi_grows_with_the_shift_and_matches_the_binned_formula():
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, 100_000)
    small, large = psi(reference, reference + 0.1), psi(reference, reference + 1.0)
    assert 0 < small < 0.1 and large > 0.25
    # By hand for a shift that moves every reference row up one decile bin (a uniform sample):
    # nine bins keep 0.1 (the top bin gets 0.2, the bottom one 0 -> the floor 1e-4).
    uniform = np.arange(1000) / 1000
    shifted = np.clip(uniform + 0.1, 0, 0.9999)
    expected = (0.2 - 0.1) * np.log(0.2 / 0.1) + (1e-4 - 0.1) * np.log(1e-4 / 0.1)
    assert psi(uniform, shifted) == pytest.approx(expected, rel=1e-6)


def test_feature_psi_names_each_feature_and_only_the_shifted_one_drifts():
    rng = np.random.default_rng(2)
    reference = pd.DataFrame({"a": rng.normal(0, 1, 20_000), "b": rng.normal(5, 2, 20_000)})
    recent = pd.DataFrame({"a": rng.normal(0, 1, 600), "b": rng.normal(9, 2, 600)})
    drift = feature_psi(reference, recent)
    assert list(drift) == ["a", "b"]
    assert drift["a"] < 0.1 and drift["b"] > 1.0


def test_a_stored_profile_gives_the_same_psi_and_flags_values_outside_its_range():
    from service.forecasting.drift import feature_profile, outside_training_range, profile_psi

    rng = np.random.default_rng(3)
    reference = pd.DataFrame({"a": rng.normal(0, 1, 5_000), "b": rng.uniform(0, 1, 5_000)})
    recent = pd.DataFrame({"a": rng.normal(0.5, 1, 300), "b": rng.uniform(0, 1, 300)})
    profile = feature_profile(reference)
    assert profile_psi(profile, recent) == pytest.approx(feature_psi(reference, recent))
    assert outside_training_range(profile, recent.clip(-3, 0.99).assign(a=0.0)) == []
    window = pd.DataFrame({"a": [0.0, 99.0], "b": [0.5, -1.0]})
    assert outside_training_range(profile, window) == [
        f"a 99 > {profile['a']['max']:.4g}", f"b -1 < {profile['b']['min']:.4g}"]


def test_a_window_matrix_is_checked_as_its_columns_are_ignoring_undefined_values():
    from service.forecasting.drift import TrainingRange, outside_training_range

    profile = {"b": {"min": 0.0, "max": 1.0}, "a": {"min": -1.0, "max": 1.0},
               "c": {"min": 0.0, "max": 2.0}}  # c is not a window column
    # Columns a, b; inf and NaN are not values; within the margin (1e-5 of the range) is inside.
    window = np.array([[np.nan, 0.5], [1.5, np.inf], [-2.0, -0.5], [0.0, 1.0 + 1e-6]])
    expected = ["b -0.5 < 0", "a 1.5 > 1"]  # the profile's order; above is said before below
    assert TrainingRange.of(profile, ("a", "b")).outside(window) == expected
    assert outside_training_range(profile, dict(zip(("a", "b"), window.T))) == expected
    assert TrainingRange.of(profile, ("a", "b")).outside(np.empty((0, 2))) == []
