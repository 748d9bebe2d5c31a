"""A seed ensemble: `TrainConfig.members` networks fitted alike, exported as one averaging graph.

Member i is `fit` with seed `config.seed + i` on the same bars (so the same prepared data and
scalers), untouched: member 0 is the single-seed model. The members are wrapped in a
QuantileEnsemble (their quantiles averaged, still sorted), which ExportedForecaster wraps as it
wraps one network, so the artifact's inputs and outputs, serving and the backtest are
unchanged. Averaging seeds is variance reduction for a model trained a few epochs on noisy
targets; it costs `members` times the training and the inference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from training.config import TrainConfig
from training.dataset import WindowDataset
from training.export import TrainingRecord
from training.model import QuantileEnsemble
from training.train import TrainResult, evaluate, fit, validation_metrics, weights_sha256


@dataclass
class EnsembleResult(TrainResult):
    """TrainResult of the averaged model; `member_results` are the members' own fits."""

    member_results: list[TrainResult] = field(default_factory=list)

    @property
    def record(self) -> TrainingRecord:
        """The ensemble's record: its config (members = N), metrics and digest, and each member's
        seed, best epoch, digest and history (the top-level history is member 0's)."""
        members = tuple(
            {"seed": r.config.seed, "best_epoch": r.best_epoch, "epochs_run": len(r.history),
             "weights_sha256": r.weights_sha256,
             "val_pinball_scaled": r.metrics["val_pinball_scaled"], "seconds": r.seconds,
             "history": r.history}
            for r in self.member_results)
        return TrainingRecord(self.config.to_dict(), self.metrics, self.best_epoch, self.history,
                              self.weights_sha256, self.world_size, self.seconds, members)


def fit_members(config: TrainConfig, bars_multi: pd.DataFrame) -> TrainResult:
    """`fit` for members = 1 (the same call, the same weights); otherwise the seed ensemble."""
    if config.members == 1:
        return fit(config, bars_multi)
    started = time.perf_counter()
    results = [fit(config.with_(seed=config.seed + i, members=1), bars_multi)
               for i in range(config.members)]
    first = results[0]
    for r in results[1:]:  # averaging is only right over the same inputs and output scale
        _check_same_data(first.prepared, r.prepared)
    model = QuantileEnsemble([r.model for r in results]).cpu().eval()
    metrics = validation_metrics(model, first.prepared)
    quantiles = torch.tensor(first.prepared.spec.quantiles, dtype=torch.float32)
    metrics["val_pinball_scaled"] = evaluate(model, WindowDataset(first.prepared.val), quantiles,
                                             torch.device("cpu"))
    return EnsembleResult(model, first.prepared, config, first.history, first.best_epoch,
                          metrics, weights_sha256(model), time.perf_counter() - started,
                          first.rank, first.world_size, results)


def _check_same_data(a, b) -> None:
    """Members must have been prepared alike (data preparation draws nothing at random)."""
    same = (a.spec == b.spec and a.vocab == b.vocab and a.split == b.split
            and all(np.array_equal(getattr(a, s).mean, getattr(b, s).mean)
                    and np.array_equal(getattr(a, s).std, getattr(b, s).std)
                    for s in ("feature_scaler", "target_scaler")))
    if not same:
        raise RuntimeError("ensemble members were prepared from different data or scalers; "
                           "their forecasts cannot be averaged")
