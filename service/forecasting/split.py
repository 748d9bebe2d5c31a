"""Chronological train/val/test split of forecast origin dates, with a gap between segments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

SEGMENTS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Inclusive (first, last) ORIGIN-date ranges of each segment."""

    train: tuple[date, date]
    val: tuple[date, date]
    test: tuple[date, date]

    def segment_of(self, dates) -> np.ndarray:
        """Segment name per date: train, val, test, or gap for a date in no segment."""
        days = _as_days(dates)
        out = np.full(days.shape, "gap", dtype="<U5")
        for name in SEGMENTS:
            first, last = (np.datetime64(d, "D") for d in getattr(self, name))
            out[(days >= first) & (days <= last)] = name
        return out

    def to_dict(self) -> dict:
        """{"train": ["YYYY-MM-DD", "YYYY-MM-DD"], "val": [...], "test": [...]}."""
        return {name: [d.isoformat() for d in getattr(self, name)] for name in SEGMENTS}

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        """Inverse of to_dict."""
        return cls(
            **{
                name: (date.fromisoformat(d[name][0]), date.fromisoformat(d[name][1]))
                for name in SEGMENTS
            }
        )


def chronological_split(
    trading_dates: Sequence[date | pd.Timestamp],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    gap: int | None = None,
    holdout: tuple[date, date] | None = None,
) -> Split:
    """Split sorted unique trading dates into train/val/test origin ranges, `gap` dates apart.

    Two gaps of `gap` dates are removed first; the remaining n - 2*gap dates are shared out by
    `fractions` (rounded cumulatively). Each gap is the `gap` trading dates immediately BEFORE
    the first origin of the later segment (val, then test): if the last train origin is date
    index i, the first val origin is index i + gap + 1. With gap = window + horizon, no train
    target reaches a val input window, and likewise val -> test.

    `holdout` (a rolling block) is a test segment given from outside: the dates passed must all
    precede it (its bars are not even read), its `gap` dates are the last ones passed, and
    train/val share the rest in the ratio fractions[0] : fractions[1].
    """
    if gap is None:
        raise ValueError("gap is required: pass window + horizon trading days")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    days = np.unique(_as_days(trading_dates))
    if holdout is not None:
        return _split_before(days, fractions, gap, holdout)
    usable = len(days) - 2 * gap
    n_train = round(fractions[0] * usable)
    n_val = round((fractions[0] + fractions[1]) * usable) - n_train
    n_test = usable - n_train - n_val
    if min(n_train, n_val, n_test) < 1:
        raise ValueError(
            f"{len(days)} trading dates are too few to split by {tuple(fractions)} "
            f"with a gap of {gap}: every segment needs at least one origin date"
        )
    val_start = n_train + gap
    test_start = val_start + n_val + gap

    def span(first: int, last: int) -> tuple[date, date]:
        return (days[first].astype(date), days[last].astype(date))

    return Split(
        train=span(0, n_train - 1),
        val=span(val_start, val_start + n_val - 1),
        test=span(test_start, len(days) - 1),
    )


def _split_before(days: np.ndarray, fractions, gap: int, holdout: tuple[date, date]) -> Split:
    """Train/val over the dates before a given test segment, the last `gap` dates left out."""
    first, last = holdout
    if first > last:
        raise ValueError(f"holdout starts {first}, after its end {last}")
    if days.size and days[-1] >= np.datetime64(first, "D"):
        raise ValueError(f"dates up to {days[-1]} reach the holdout starting {first}: "
                         "pass only bars before it")
    usable = len(days) - 2 * gap
    n_train = round(fractions[0] / (fractions[0] + fractions[1]) * usable)
    n_val = usable - n_train
    if min(n_train, n_val) < 1:
        raise ValueError(f"{len(days)} trading dates before {first} are too few to split "
                         f"train/val by {fractions[:2]} with two gaps of {gap}")
    val_start = n_train + gap
    return Split(train=(days[0].astype(date), days[n_train - 1].astype(date)),
                 val=(days[val_start].astype(date), days[val_start + n_val - 1].astype(date)),
                 test=(first, last))


def _as_days(dates) -> np.ndarray:
    """Any dates (date, Timestamp, datetime64, ISO strings) as datetime64[D]."""
    return np.asarray(pd.to_datetime(pd.Index(dates)).values.astype("datetime64[D]"))
