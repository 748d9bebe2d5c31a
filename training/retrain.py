"""The scheduler's retrain job: train on the universe's cached bars, backtest, gate (one call of
training.pipeline.train_and_gate); a refusal raises, so the job records it and current stays, and
so does a lock lost before the gate (another scheduler may be retraining the same period)."""

from __future__ import annotations

from collections.abc import Sequence

from service.core.config import Settings
from service.core.errors import StockcastError
from service.evaluation.schedule import confirm_lock
from training.config import TrainConfig
from training.pipeline import train_and_gate


def retrain(settings: Settings, tickers: Sequence[str], config: TrainConfig | None = None) -> str:
    """Train, backtest and gate a new version; the gate's verdict, or StockcastError."""
    config = (config or TrainConfig()).with_(tickers=tuple(tickers), progress=False)
    outcome = train_and_gate(config, settings.database_url, settings.model_dir,
                             provider=settings.ort_provider,
                             intra_op_threads=settings.ort_intra_op_threads,
                             before_promote=confirm_lock)
    if outcome is None:
        return "not rank 0"
    if outcome.refused is not None:
        if isinstance(outcome.refused, StockcastError):
            raise outcome.refused
        raise StockcastError(str(outcome.refused))
    return f"promoted {outcome.verdict.describe()}"
