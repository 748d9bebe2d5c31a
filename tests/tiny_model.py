"""A tiny model trained on synthetic bars: what the training, export and predictor tests share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tests.bar_factories import make_bars

TINY_TICKERS = ("AAA", "BBB", "CCC")
TINY_BARS = 360


def synthetic_bars_multi(tickers=TINY_TICKERS, n: int = TINY_BARS) -> pd.DataFrame:
    """Random-walk bars of several tickers, one frame with a leading `ticker` column."""
    return pd.concat(
        [make_bars(n, seed=i + 1, price=20.0 * (i + 1), ticker=t) for i, t in enumerate(tickers)],
        ignore_index=True,
    )


def tiny_config(**changes):
    """Window 20, horizon 5, a few hidden units, a few epochs: seconds on CPU."""
    from training.config import TrainConfig

    base = TrainConfig(
        tickers=TINY_TICKERS, window=20, horizon=5, hidden_size=8, num_layers=2,
        embedding_dim=4, head_hidden=16, epochs=3, batch_size=64, progress=False, threads=1,
    )
    return base.with_(**changes)


@dataclass
class TinyArtifact:
    model_dir: Path
    artifact_dir: Path
    result: object  # training.train.TrainResult
    bars: pd.DataFrame  # the multi-ticker bars it was trained on


def train_tiny_artifact(model_dir: Path) -> TinyArtifact:
    """Train the tiny model and export it into model_dir (current points at it)."""
    from training.export import export_artifact
    from training.train import fit

    bars = synthetic_bars_multi()
    result = fit(tiny_config(), bars)
    artifact_dir = export_artifact(result.model, result.prepared, result.record, model_dir)
    return TinyArtifact(model_dir, artifact_dir, result, bars)

