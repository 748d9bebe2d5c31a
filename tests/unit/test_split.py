"""chronological_split: fractions, exact gaps, no overlap, round trip, clear errors."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from service.forecasting.split import Split, chronological_split

DATES = pd.bdate_range("2013-01-02", periods=1000)


def positions(split: Split, dates=DATES) -> dict[str, np.ndarray]:
    segments = split.segment_of(dates)
    return {name: np.flatnonzero(segments == name) for name in ("train", "val", "test", "gap")}


def test_fractions_are_respected_after_removing_the_gaps():
    split = chronological_split(DATES, (0.7, 0.15, 0.15), gap=90)
    pos = positions(split)
    usable = 1000 - 2 * 90
    assert abs(len(pos["train"]) - 0.7 * usable) <= 1
    assert abs(len(pos["val"]) - 0.15 * usable) <= 1
    assert abs(len(pos["test"]) - 0.15 * usable) <= 1
    assert sum(len(p) for p in pos.values()) == 1000


def test_exactly_gap_dates_lie_between_segments():
    split = chronological_split(DATES, gap=90)
    pos = positions(split)
    assert pos["train"][0] == 0 and pos["test"][-1] == 999
    assert pos["val"][0] - pos["train"][-1] == 91
    assert pos["test"][0] - pos["val"][-1] == 91
    assert len(pos["gap"]) == 180
    for name in ("train", "val", "test"):
        assert (np.diff(pos[name]) == 1).all(), name  # contiguous
    assert split.train[1] < split.val[0] and split.val[1] < split.test[0]


def test_split_of_the_default_shape():
    split = chronological_split(DATES, gap=90)
    # 820 usable dates: 574 train, 123 val, 123 test.
    assert split == Split(
        train=(date(2013, 1, 2), DATES[573].date()),
        val=(DATES[664].date(), DATES[786].date()),
        test=(DATES[877].date(), DATES[999].date()),
    )


def test_zero_gap_leaves_no_date_out():
    pos = positions(chronological_split(DATES, (0.5, 0.25, 0.25), gap=0))
    assert len(pos["gap"]) == 0
    assert pos["val"][0] == pos["train"][-1] + 1


def test_unsorted_and_duplicate_dates_are_sorted_and_unique():
    shuffled = list(DATES[::-1]) + list(DATES[:10])
    assert chronological_split(shuffled, gap=5) == chronological_split(DATES, gap=5)


def test_dates_outside_the_split_are_gap():
    split = chronological_split(DATES, gap=5)
    segments = split.segment_of([date(2012, 1, 2), DATES[0], pd.Timestamp("2030-01-02")])
    assert segments.tolist() == ["gap", "train", "gap"]


def test_dict_round_trip_uses_iso_strings():
    split = chronological_split(DATES, gap=90)
    d = split.to_dict()
    assert d["train"] == ["2013-01-02", DATES[573].date().isoformat()]
    assert Split.from_dict(d) == split


def test_smallest_split_has_one_origin_in_the_smallest_segment():
    pos = positions(chronological_split(DATES[:190], gap=90), DATES[:190])
    assert [len(pos[n]) for n in ("train", "val", "test", "gap")] == [7, 1, 2, 180]


def test_too_few_dates_are_refused():
    with pytest.raises(ValueError) as err:
        chronological_split(DATES[:184], gap=90)
    assert str(err.value) == (
        "184 trading dates are too few to split by (0.7, 0.15, 0.15) with a gap of 90: "
        "every segment needs at least one origin date"
    )


def test_gap_is_required_and_fractions_checked():
    with pytest.raises(ValueError, match=r"^gap is required: pass window \+ horizon trading days$"):
        chronological_split(DATES)
    with pytest.raises(ValueError, match="^fractions must be three positive numbers summing to 1"):
        chronological_split(DATES, (0.7, 0.2, 0.2), gap=10)


def test_a_holdout_split_keeps_train_and_val_a_gap_before_the_holdout():
    import datetime as dt

    days = pd.bdate_range("2020-01-01", periods=200)
    holdout = (dt.date(2020, 10, 20), dt.date(2020, 11, 30))
    split = chronological_split(days, (0.7, 0.15, 0.15), gap=10, holdout=holdout)
    assert split.test == holdout
    assert split.train[0] == days[0].date()
    # usable 200 - 2*10 = 180 dates shared 0.7 : 0.15, the last 10 dates before the holdout left out
    assert split.train[1] == days[148 - 1].date()
    assert split.val == (days[158].date(), days[189].date())
    with pytest.raises(ValueError, match="reach the holdout"):
        chronological_split(days, gap=10, holdout=(days[150].date(), days[160].date()))


def test_a_training_config_with_a_holdout_and_features_survives_json():
    import datetime as dt
    import json

    from training.config import TrainConfig

    config = TrainConfig(features=("log_return",),
                         holdout=(dt.date(2017, 1, 3), dt.date(2017, 4, 3)))
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.spec.features == ("log_return",)
