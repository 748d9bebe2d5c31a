"""The quality gate: a model version becomes models/current only if its backtest beats naive.

The gate reads the version's latest STORED backtest (run `stockcast backtest --version V` first)
and compares the pooled 1-day MAE relative to naive with a threshold (default 1.0: at least as
good as tomorrow = today). Only an out-of-sample run over every training ticker counts: a run
with origins before the artifact's test segment scores forecasts of dates the model was fitted
on, and a run over a subset of tickers can pick the ones it does well on; both are refused.
`stockcast train` backtests the new version and calls `promote` at the end; nothing else
points models/current at a new artifact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from service.artifacts.manifest import (
    CURRENT_FILE,
    Manifest,
    artifact_path,
    load_manifest,
    set_current,
)
from service.core.errors import StockcastError
from service.db.backtests import get_metrics, latest_run
from service.evaluation.artifact_backtest import out_of_sample_problem
from service.evaluation.scoring import MODEL, NAIVE, POOLED

GATE_HORIZON = 1
DEFAULT_MAX_REL_MAE = 1.0


class PromotionRefused(StockcastError):
    """The version has no usable backtest, or its backtest loses to the threshold."""


@dataclass(frozen=True)
class PromotionVerdict:
    """What the gate saw: the run it read, the model's and naive's 1-day MAE, the threshold."""

    version: str
    run_id: int
    rel_mae: float
    model_mae: float
    naive_mae: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.rel_mae <= self.threshold

    def describe(self) -> str:
        """One line: the verdict and by how much it won or lost."""
        verb = "beats" if self.rel_mae < 1 else "loses to" if self.rel_mae > 1 else "ties"
        pct = abs(self.rel_mae - 1.0) * 100
        return (
            f"{self.version}: 1-day MAE ${self.model_mae:.4f} vs naive ${self.naive_mae:.4f} "
            f"(rel MAE {self.rel_mae:.4f}, {verb} naive by {pct:.2f}%; "
            f"threshold {self.threshold:.4f}, backtest run {self.run_id})"
        )


def evaluate_gate(engine: Engine, manifest: Manifest,
                  max_rel_mae: float = DEFAULT_MAX_REL_MAE) -> PromotionVerdict:
    """The verdict from the version's latest stored backtest; PromotionRefused if it is unusable.

    Unusable: none stored, in-sample (origins before the manifest's test segment), missing some
    of the manifest's training tickers, or without a pooled 1-day MAE for the model and naive.
    """
    if not max_rel_mae > 0:
        raise ValueError(f"max_rel_mae must be positive, got {max_rel_mae}")
    version = manifest.version
    rerun = (f"run `stockcast backtest --version {version}` (by default: the test segment, "
             "every training ticker)")
    with engine.connect() as conn:
        run = latest_run(conn, version)
        if run is None:
            raise PromotionRefused(
                f"no stored backtest for model {version}: run "
                f"`stockcast backtest --version {version}` first"
            )
        rows = get_metrics(conn, run.id, ticker=POOLED, horizon=GATE_HORIZON, metric="mae")
    problem = out_of_sample_problem(run, manifest)
    if problem is not None:
        raise PromotionRefused(f"{problem}; {rerun}")
    mae = dict(zip(rows["method"], rows["value"]))
    if MODEL not in mae or NAIVE not in mae:
        raise PromotionRefused(
            f"backtest run {run.id} of {version} has no pooled {GATE_HORIZON}-day MAE: "
            f"run it with horizon {GATE_HORIZON} included"
        )
    model_mae, naive_mae = mae[MODEL], mae[NAIVE]
    if not (math.isfinite(model_mae) and math.isfinite(naive_mae)) or naive_mae <= 0:
        raise PromotionRefused(f"backtest run {run.id} of {version}: MAE is undefined")
    return PromotionVerdict(version, run.id, model_mae / naive_mae, model_mae, naive_mae,
                            max_rel_mae)


def promote(engine: Engine, model_dir: Path | str, version: str,
            max_rel_mae: float = DEFAULT_MAX_REL_MAE) -> PromotionVerdict:
    """Point model_dir/current at `version` if it passes the gate; PromotionRefused otherwise."""
    model_dir = Path(model_dir)
    # A broken, tampered or missing artifact (or a name outside model_dir) is never promoted.
    manifest = load_manifest(artifact_path(model_dir, version))
    verdict = evaluate_gate(engine, manifest, max_rel_mae)
    if not verdict.passed:
        pointer = model_dir / CURRENT_FILE
        current = pointer.read_text().strip() if pointer.is_file() else "nothing"
        raise PromotionRefused(
            f"refused: {verdict.describe()}; it exceeds the threshold by "
            f"{verdict.rel_mae - verdict.threshold:.4f}. {CURRENT_FILE} still names {current}"
        )
    set_current(model_dir, version)
    return verdict
