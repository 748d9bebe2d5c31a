"""Training as one pipeline: read bars -> prepare -> fit -> export -> backtest -> gate.

`stockcast train` calls `train_and_gate`; under `torchrun` every rank runs it, rank 0 alone
exports, backtests the new version on its test segment (stored, as `stockcast backtest`) and
asks the promotion gate (as `stockcast promote`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch.distributed as dist

from service.artifacts.manifest import META_FILE
from service.core.errors import StockcastError
from service.db.bars import read_bars_many
from service.db.session import make_engine
from service.evaluation.promotion import GateThresholds, PromotionVerdict, promote
from service.evaluation.runs import StoredBacktest, backtest_and_store
from service.forecasting.calendar import check_date_range
from service.forecasting.features import needs_market
from service.inference.onnx_model import Provider
from training.config import TrainConfig
from training.ensemble import fit_members
from training.export import export_artifact


def read_training_bars(database_url: str, config: TrainConfig) -> pd.DataFrame:
    """The configured tickers' bars from the cache (with the market series joined on when the
    feature set reads it); a clear error names tickers with none, or a start after the end (as
    backtest's and evaluate's: there would be no bars, and the error would say to load them)."""
    check_date_range(config.start, config.end)
    engine = make_engine(database_url)
    try:
        bars = read_bars_many(engine, list(config.tickers), config.start, config.end,
                              market=needs_market(config.spec))
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
    return train_and_export(config, read_training_bars(database_url, config), model_dir)


def train_and_export(config: TrainConfig, bars: pd.DataFrame, model_dir: Path) -> Path | None:
    """Fit on these bars (`config.members` seeds, averaged in one graph when > 1) and (rank 0)
    export models/<version>/; returns that folder on rank 0."""
    try:
        result = fit_members(config, bars)
        artifact_dir = None
        if result.rank == 0:
            artifact_dir = export_artifact(result.model, result.prepared, result.record,
                                           Path(model_dir))
        if result.world_size > 1:
            dist.barrier()
        return artifact_dir
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class TrainOutcome:
    """What one training run produced: the artifact, and (gated) its backtest and verdict."""

    artifact: Path
    meta: dict  # the artifact's meta.json
    backtest: StoredBacktest | None = None  # None when not gated
    verdict: PromotionVerdict | None = None  # set when the gate promoted it
    refused: StockcastError | ValueError | None = None  # why it was not promoted, if gated


def train_and_gate(config: TrainConfig, database_url: str, model_dir: Path, *,
                   gate: bool = True, thresholds: GateThresholds | None = None,
                   plots_dir: Path | None = None, provider: Provider = "auto",
                   intra_op_threads: int = 1,
                   before_promote: Callable[[], None] | None = None) -> TrainOutcome | None:
    """Train and export; then (gate) backtest the new version and let the gate promote it.

    Returns None on ranks other than 0. models/current moves only through the gate, and not at
    all if `before_promote` raises (the scheduler's check that its job still holds its lock).
    """
    artifact = run(config, database_url, model_dir)
    if artifact is None:
        return None
    outcome = TrainOutcome(artifact, json.loads((artifact / META_FILE).read_text()))
    if not gate:
        return outcome
    engine = make_engine(database_url)
    try:
        outcome.backtest = backtest_and_store(
            engine, artifact, plots_dir=plots_dir, provider=provider,
            intra_op_threads=intra_op_threads)
        thresholds = thresholds or GateThresholds()
        if before_promote is not None:
            before_promote()
        outcome.verdict = promote(engine, artifact.parent, artifact.name,
                                  thresholds.max_rel_mae, thresholds)
    except (StockcastError, ValueError) as exc:
        outcome.refused = exc
    finally:
        engine.dispose()
    return outcome
