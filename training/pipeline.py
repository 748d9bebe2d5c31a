"""Training as one pipeline: read bars from the cache -> fit -> export (rank 0).

`stockcast train` calls `run`; under `torchrun` every rank runs it and rank 0 alone exports.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch.distributed as dist

from service.db.bars import read_bars_many
from service.db.session import make_engine
from training.config import TrainConfig
from training.export import export_artifact
from training.train import fit


def read_training_bars(database_url: str, config: TrainConfig) -> pd.DataFrame:
    """The configured tickers' bars from the cache; a clear error names tickers with none."""
    engine = make_engine(database_url)
    try:
        bars = read_bars_many(engine, list(config.tickers), config.start, config.end)
    finally:
        engine.dispose()
    missing = sorted(set(config.tickers) - set(bars["ticker"].unique()))
    if missing:
        raise ValueError(
            f"no bars in the cache at {database_url} for {missing}: "
            "load them first (stockcast ingest)"
        )
    return bars


def run(config: TrainConfig, database_url: str, model_dir: Path) -> Path | None:
    """Read bars, train, and (rank 0) export models/<version>/; returns that folder on rank 0.

    models/current is not touched: promotion goes through the backtest gate (`stockcast train`
    runs it after this, unless --no-promote).
    """
    bars = read_training_bars(database_url, config)
    try:
        result = fit(config, bars)
        artifact_dir = None
        if result.rank == 0:
            artifact_dir = export_artifact(result, Path(model_dir))
        if result.world_size > 1:
            dist.barrier()
        return artifact_dir
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
