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
from service.forecasting.spec import FeatureSpec
from service.forecasting.split import Split, chronological_split
from service.forecasting.windows import forward_log_returns, make_windows

log = logging.getLogger(__name__)


@dataclass
class WindowSet:
    """Samples of one segment: one per (ticker, origin)."""

    windows: np.ndarray  # (N, W, F) float32, feature-scaled
    targets: np.ndarray  # (N, H) float32, target-scaled
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
) -> PreparedData:
    """Features, split (gap = window + horizon), training-only scalers, and windowed segments."""
    window, horizon = spec.window, spec.horizon
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

    per_ticker = []
    for ticker, part in features_by_ticker.items():
        scaled = feature_scaler.transform(part[names].to_numpy(dtype=np.float64))
        targets = forward_log_returns(part["adj_close"].to_numpy(), horizon)
        x, y, origins = make_windows(scaled, targets, window)
        dates = part["date"].to_numpy().astype("datetime64[D]")[origins]
        per_ticker.append((ticker, x, y, dates, split.segment_of(dates)))

    vocab = ticker_vocabulary(t for t, *_, seg in per_ticker if (seg == "train").any())
    ids = {t: i for i, t in enumerate(vocab)}
    train_y = np.concatenate([y[seg == "train"] for _, _, y, _, seg in per_ticker])
    if len(train_y) == 0:
        raise ValueError("no training samples: the bars are too short for this window and split")
    target_scaler = StandardScaler.fit(train_y)

    def collect(segment: str, stride: int) -> WindowSet:
        xs, ys, tids, ds = [], [], [], []
        for ticker, x, y, dates, seg in per_ticker:
            keep = np.flatnonzero(seg == segment)[::stride]
            xs.append(x[keep])
            ys.append(target_scaler.transform(y[keep].astype(np.float64)).astype(np.float32))
            tids.append(np.full(len(keep), ids.get(ticker, 0), dtype=np.int64))
            ds.append(dates[keep])
        return WindowSet(np.concatenate(xs), np.concatenate(ys), np.concatenate(tids),
                         np.concatenate(ds))

    train, val = collect("train", train_stride), collect("val", 1)
    if len(val) == 0:
        raise ValueError("no validation samples: the bars are too short for this split")
    return PreparedData(spec, vocab, split, feature_scaler, target_scaler, train, val)


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
