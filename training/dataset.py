"""Bars -> scaled windows and targets per segment, and the torch glue that batches them.

The numpy half (prepare_data) walks the serving path's first steps: shared features, a
chronological split of origin dates, scalers fit on training dates only, then windows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler

from service.artifacts.manifest import ticker_vocabulary
from service.forecasting.features import build_features_many
from service.forecasting.scaling import StandardScaler
from service.forecasting.spec import SCALE_FEATURE, FeatureSpec
from service.forecasting.split import SEGMENTS, Split, chronological_split
from service.forecasting.volatility import origin_scale
from service.forecasting.windows import forward_log_returns, make_windows
from training.config import TARGETS

log = logging.getLogger(__name__)


@dataclass
class WindowSet:
    """Samples of one segment: one per (ticker, origin)."""

    windows: np.ndarray  # (N, W, F) float32, feature-scaled
    targets: np.ndarray  # (N, H) float32: scale-free returns (below), then target-scaled
    returns: np.ndarray  # (N, H) float64, the realized h-day log returns themselves
    ticker_ids: np.ndarray  # (N,) int64, ids into the vocabulary
    origin_dates: np.ndarray  # (N,) datetime64[D]

    def __len__(self) -> int:
        return len(self.windows)


@dataclass
class PreparedData:
    """Everything training needs and the artifact records."""

    spec: FeatureSpec
    vocab: tuple[str, ...]
    split: Split
    feature_scaler: StandardScaler
    target_scaler: StandardScaler
    train: WindowSet
    val: WindowSet


def prepare_data(
    bars_multi: pd.DataFrame,
    spec: FeatureSpec,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    train_stride: int = 1,
    holdout: tuple | None = None,
    target: str = "return",
) -> PreparedData:
    """Features, split (gap = window + horizon), training-only scalers, and windowed segments.

    The network learns scale-free targets: the h-day log return over the origin's volatility,
    r_{t,h} / (max(σ_t, VOL_FLOOR) · √h) with σ_t the SCALE_FEATURE (EWMA volatility) at t, so
    its quantiles widen the day volatility jumps. The exported graph multiplies back (the one
    place: training.model.ExportedForecaster). `target="cs_demeaned"` subtracts from each
    sample's scale-free target the mean of that origin date's over the tickers given (Qlib's
    cross-sectional label normalisation, de-meaned): the loss then rewards the ranking of the
    day, not the market's move, and the forecasts are excess returns (a ranking-only option).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    window, horizon = spec.window, spec.horizon
    if SCALE_FEATURE not in spec.features:
        raise ValueError(f"the spec must include {SCALE_FEATURE!r}, the target's scale")
    long = build_features_many(bars_multi, spec, keep=("adj_close",))
    features_by_ticker: dict[str, pd.DataFrame] = {}
    for ticker, part in long.groupby("ticker", sort=True):
        if len(part) < window:
            log.warning("%s: %d feature rows, fewer than one window of %d; skipped",
                        ticker, len(part), window)
            continue
        features_by_ticker[ticker] = part.reset_index(drop=True)
    if not features_by_ticker:
        raise ValueError(
            f"no ticker has enough bars for one window of {window} feature rows "
            f"(tickers given: {sorted(bars_multi['ticker'].unique().tolist())})"
        )

    # Origins are the feature dates with a full window behind them.
    origin_dates = np.unique(np.concatenate([
        part["date"].to_numpy()[window - 1:] for part in features_by_ticker.values()
    ]))
    split = chronological_split(origin_dates, fractions, gap=window + horizon, holdout=holdout)
    train_end = np.datetime64(split.train[1], "ns")

    names = list(spec.features)
    # The feature scaler sees only rows dated within the training range: the inputs of training
    # windows. Later rows (val/test inputs) never influence it.
    training_rows = np.concatenate([
        part.loc[part["date"].to_numpy() <= train_end, names].to_numpy()
        for part in features_by_ticker.values()
    ])
    feature_scaler = StandardScaler.fit(training_rows)

    reach = segment_reach(split, [part["date"].to_numpy() for part in features_by_ticker.values()],
                          window, horizon)
    per_ticker, crossing = [], 0
    for ticker, part in features_by_ticker.items():
        scaled = feature_scaler.transform(part[names].to_numpy(dtype=np.float64))
        returns = forward_log_returns(part["adj_close"].to_numpy(), horizon)
        scale = origin_scale(part[SCALE_FEATURE].to_numpy(), np.arange(1, horizon + 1))
        x, y, origins = make_windows(scaled, returns / scale, window)
        row_dates = part["date"].to_numpy().astype("datetime64[D]")
        dates = row_dates[origins]
        segments = split.segment_of(dates)
        # Windows and targets are rows of this ticker; the gap is in dates of all tickers. A
        # ticker with missing sessions would stretch a sample's target (or window) across the
        # gap: such samples are dropped, so no train target reaches a val input window (nor
        # val -> test) whatever the holes. Without holes none is.
        inside = within_reach(segments, row_dates[origins - window + 1],
                              row_dates[origins + horizon], reach)
        crossing += int(np.count_nonzero(~inside))
        per_ticker.append((ticker, x[inside], y[inside], returns[origins][inside], dates[inside],
                           segments[inside]))
    if crossing:
        log.warning("%d samples dropped: their window or target crosses a segment gap (tickers "
                    "with missing sessions)", crossing)

    if target == "cs_demeaned":
        per_ticker = _cross_sectionally_demeaned(per_ticker)

    vocab = ticker_vocabulary(t for t, *_, seg in per_ticker if (seg == "train").any())
    ids = {t: i for i, t in enumerate(vocab)}
    train_y = np.concatenate([y[seg == "train"] for _, _, y, _, _, seg in per_ticker])
    if len(train_y) == 0:
        raise ValueError("no training samples: the bars are too short for this window and split")
    target_scaler = StandardScaler.fit(train_y)

    def collect(segment: str, stride: int) -> WindowSet:
        xs, ys, rs, tids, ds = [], [], [], [], []
        for ticker, x, y, r, dates, seg in per_ticker:
            keep = np.flatnonzero(seg == segment)[::stride]
            xs.append(x[keep])
            ys.append(target_scaler.transform(y[keep].astype(np.float64)).astype(np.float32))
            rs.append(r[keep])
            tids.append(np.full(len(keep), ids.get(ticker, 0), dtype=np.int64))
            ds.append(dates[keep])
        return WindowSet(np.concatenate(xs), np.concatenate(ys), np.concatenate(rs),
                         np.concatenate(tids), np.concatenate(ds))

    train, val = collect("train", train_stride), collect("val", 1)
    if len(val) == 0:
        raise ValueError("no validation samples: the bars are too short for this split")
    return PreparedData(spec, vocab, split, feature_scaler, target_scaler, train, val)


def segment_reach(split, dates_by_ticker, window: int, horizon: int
                  ) -> dict[str, tuple[np.datetime64, np.datetime64]]:
    """Per segment, the earliest date its input windows may read and the latest its targets may:
    what they read when every ticker has a bar on every date (the union of `dates_by_ticker`):
    a val or test window from `window - 1` sessions before the segment's first origin, a train
    or val target up to `horizon` sessions after its last."""
    union = np.unique(np.concatenate([np.asarray(d).astype("datetime64[D]")
                                      for d in dates_by_ticker]))
    reach = {}
    for name in SEGMENTS:
        first, last = (np.datetime64(d, "D") for d in getattr(split, name))
        i, j = np.searchsorted(union, first), np.searchsorted(union, last, side="right") - 1
        earliest = (union[min(max(i - window + 1, 0), union.size - 1)] if name != "train"
                    else union[0])
        latest = union[min(j + horizon, union.size - 1)] if name != "test" else union[-1]
        reach[name] = (earliest, latest)
    return reach


def within_reach(segments: np.ndarray, window_starts: np.ndarray, target_ends: np.ndarray,
                 reach: dict[str, tuple[np.datetime64, np.datetime64]]) -> np.ndarray:
    """Per sample: does its window start and its target end lie within its segment's reach?
    (A sample in no segment, "gap", is kept: it is never used.)"""
    ok = np.ones(len(segments), dtype=bool)
    for name, (earliest, latest) in reach.items():
        mine = segments == name
        ok[mine] = (window_starts[mine] >= earliest) & (target_ends[mine] <= latest)
    return ok


def _cross_sectionally_demeaned(per_ticker: list[tuple]) -> list[tuple]:
    """Each (ticker, x, y, ...) with y minus the mean y of its origin date over every ticker."""
    dates = np.concatenate([d for _, _, _, _, d, _ in per_ticker])
    codes, _ = pd.factorize(dates)
    ys = np.concatenate([y for _, _, y, _, _, _ in per_ticker]).astype(np.float64)
    sums = np.zeros((codes.max() + 1, ys.shape[1]))
    np.add.at(sums, codes, ys)
    means = sums / np.bincount(codes)[:, None]
    out, at = [], 0
    for ticker, x, y, r, d, seg in per_ticker:
        mine = codes[at:at + len(y)]
        out.append((ticker, x, (y - means[mine]).astype(y.dtype), r, d, seg))
        at += len(y)
    return out


class WindowDataset(Dataset):
    """A WindowSet as tensors; `batch(indices)` gathers a whole batch in one indexing op."""

    def __init__(self, windows: WindowSet):
        self.windows = torch.from_numpy(np.ascontiguousarray(windows.windows))
        self.targets = torch.from_numpy(np.ascontiguousarray(windows.targets))
        self.ticker_ids = torch.from_numpy(np.ascontiguousarray(windows.ticker_ids))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int):
        return self.windows[i], self.targets[i], self.ticker_ids[i]

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, W, F) windows, (B, H) targets, (B,) ticker ids."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.windows[idx], self.targets[idx], self.ticker_ids[idx]


def batches(
    dataset: WindowDataset, sampler: Sampler | None, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches in the sampler's order (a DistributedSampler shards them), or in order if None."""
    order = sampler if sampler is not None else range(len(dataset))
    for indices in BatchSampler(order, batch_size, drop_last=False):
        yield dataset.batch(indices)
