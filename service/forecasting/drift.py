"""Drift of the model's inputs: the population stability index (PSI) of each feature over the
recent sessions against its training distribution. Pure numpy/pandas.

PSI = sum over bins of (a - e) * ln(a / e), with e the share of training rows and a the share of
recent rows in each bin; bins are the training distribution's deciles, so e = 0.1 each. Common
reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

N_BINS = 10
RECENT_SESSIONS = 60
# Empty bins would make ln(a / e) infinite; this floor keeps one empty bin a large, finite term.
EPSILON = 1e-4


def bin_edges(reference: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Inner bin edges (n_bins - 1) at the reference's quantiles; outer bins are open-ended."""
    reference = reference[np.isfinite(reference)]
    return np.unique(np.quantile(reference, np.linspace(0, 1, n_bins + 1)[1:-1]))


def psi(reference: np.ndarray, recent: np.ndarray, n_bins: int = N_BINS) -> float:
    """Population stability index of `recent` against `reference` (NaN if either is empty)."""
    reference = np.asarray(reference, dtype=np.float64)
    recent = np.asarray(recent, dtype=np.float64)
    reference, recent = reference[np.isfinite(reference)], recent[np.isfinite(recent)]
    if reference.size == 0 or recent.size == 0:
        return float("nan")
    edges = bin_edges(reference, n_bins)
    expected = np.bincount(np.searchsorted(edges, reference, side="right"),
                           minlength=edges.size + 1) / reference.size
    actual = np.bincount(np.searchsorted(edges, recent, side="right"),
                         minlength=edges.size + 1) / recent.size
    expected, actual = np.maximum(expected, EPSILON), np.maximum(actual, EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def feature_psi(reference: pd.DataFrame, recent: pd.DataFrame) -> dict[str, float]:
    """PSI per feature column (columns of `reference`)."""
    return {c: psi(reference[c].to_numpy(), recent[c].to_numpy()) for c in reference.columns}
