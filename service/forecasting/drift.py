"""Drift of the model's inputs: the population stability index (PSI) of each feature over the
recent sessions against its training distribution. Pure numpy/pandas.

PSI = sum over bins of (a - e) * ln(a / e), with e the share of training rows and a the share of
recent rows in each bin; bins are the training distribution's deciles, so e = 0.1 each. Common
reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

N_BINS = 10
RECENT_SESSIONS = 60
# Empty bins would make ln(a / e) infinite; this floor keeps one empty bin a large, finite term.
EPSILON = 1e-4
RANGE_TOLERANCE = 1e-5


def bin_edges(reference: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Inner bin edges (n_bins - 1) at the reference's quantiles; outer bins are open-ended."""
    reference = reference[np.isfinite(reference)]
    return np.unique(np.quantile(reference, np.linspace(0, 1, n_bins + 1)[1:-1]))


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of values in each of the len(edges) + 1 bins."""
    return np.bincount(np.searchsorted(edges, values, side="right"),
                       minlength=len(edges) + 1) / values.size


def psi_binned(expected: np.ndarray, actual: np.ndarray) -> float:
    """sum (a - e) ln(a / e) over bins, empty bins floored at EPSILON."""
    expected = np.maximum(np.asarray(expected, dtype=np.float64), EPSILON)
    actual = np.maximum(np.asarray(actual, dtype=np.float64), EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi(reference: np.ndarray, recent: np.ndarray, n_bins: int = N_BINS) -> float:
    """Population stability index of `recent` against `reference` (NaN if either is empty)."""
    reference, recent = _finite(reference), _finite(recent)
    if reference.size == 0 or recent.size == 0:
        return float("nan")
    edges = bin_edges(reference, n_bins)
    return psi_binned(bin_shares(reference, edges), bin_shares(recent, edges))


def feature_psi(reference: pd.DataFrame, recent: pd.DataFrame) -> dict[str, float]:
    """PSI per feature column (columns of `reference`)."""
    return {c: psi(reference[c].to_numpy(), recent[c].to_numpy()) for c in reference.columns}


def feature_profile(reference: pd.DataFrame, n_bins: int = N_BINS) -> dict[str, dict]:
    """What drift checks need of a training distribution, per feature: its range, its decile
    edges and the share of training rows in each bin (JSON-ready)."""
    out = {}
    for column in reference.columns:
        values = _finite(reference[column])
        edges = bin_edges(values, n_bins)
        out[column] = {"min": float(values.min()), "max": float(values.max()),
                       "edges": edges.tolist(), "shares": bin_shares(values, edges).tolist()}
    return out


def profile_psi(profile: dict[str, dict], recent: pd.DataFrame) -> dict[str, float]:
    """PSI per feature of `recent` against a stored feature_profile."""
    out = {}
    for column, entry in profile.items():
        values = _finite(recent[column]) if column in recent else np.array([])
        out[column] = (psi_binned(entry["shares"], bin_shares(values, np.asarray(entry["edges"])))
                       if values.size else float("nan"))
    return out


@dataclass(frozen=True)
class TrainingRange:
    """A profile's [min, max] per feature of a window's columns (in the profile's order), with
    the margins applied: outside_training_range for one (W, F) matrix at a time, vectorised."""

    names: tuple[str, ...]
    index: np.ndarray  # each name's column in the window
    mins: tuple[float, ...]
    maxs: tuple[float, ...]
    low: np.ndarray  # min - margin
    high: np.ndarray  # max + margin

    @classmethod
    def of(cls, profile: dict[str, dict], columns: tuple[str, ...]) -> TrainingRange:
        entries = [(name, e) for name, e in profile.items() if name in columns]
        mins = tuple(e["min"] for _, e in entries)
        maxs = tuple(e["max"] for _, e in entries)
        margin = [RANGE_TOLERANCE * (hi - lo) for lo, hi in zip(mins, maxs)]
        return cls(tuple(name for name, _ in entries),
                   np.array([columns.index(name) for name, _ in entries], dtype=np.intp),
                   mins, maxs, np.array([lo - m for lo, m in zip(mins, margin)]),
                   np.array([hi + m for hi, m in zip(maxs, margin)]))

    def outside(self, window: np.ndarray) -> list[str]:
        """outside_training_range's phrases for a window (W, F) in `columns`' order."""
        values = np.asarray(window, dtype=np.float64)[:, self.index]
        finite = np.isfinite(values)
        top = np.where(finite, values, -np.inf).max(axis=0, initial=-np.inf)
        bottom = np.where(finite, values, np.inf).min(axis=0, initial=np.inf)
        seen = finite.any(axis=0)
        above, below = seen & (top > self.high), seen & (bottom < self.low)
        out = []
        for i in np.flatnonzero(above | below):
            if above[i]:
                out.append(f"{self.names[i]} {top[i]:.4g} > {self.maxs[i]:.4g}")
            else:
                out.append(f"{self.names[i]} {bottom[i]:.4g} < {self.mins[i]:.4g}")
        return out


def outside_training_range(profile: dict[str, dict],
                           window: pd.DataFrame | dict[str, np.ndarray]) -> list[str]:
    """One phrase per feature whose values in `window` leave the training [min, max].

    A margin of RANGE_TOLERANCE of the range absorbs float32 rounding of scaled windows.
    """
    columns = tuple(name for name in profile if name in window)
    values = (np.column_stack([np.asarray(window[name], dtype=np.float64) for name in columns])
              if columns else np.empty((0, 0)))
    return TrainingRange.of(profile, columns).outside(values)
