"""The quality gate: a model version becomes models/current only if its backtest beats naive
and its served band is calibrated and at least as sharp as the EWMA + ACI band.

The gate reads the version's latest STORED backtest (run `stockcast backtest --version V` first)
and compares the pooled 1-day MAE relative to naive with a threshold (default 1.0: at least as
good as tomorrow = today); the served band's pooled 80 % coverage must lie within ±0.05 of 0.80
at h = 1 and 5, and its 1-day interval score must not exceed the reference band's (ewma_aci).
A refusal names each failed condition and by how much. Only an out-of-sample run over every training ticker counts: a run
with origins before the artifact's test segment scores forecasts of dates the model was fitted
on, and a run over a subset of tickers can pick the ones it does well on; both are refused.
`stockcast train` backtests the new version and calls `promote` at the end; nothing else
points models/current at a new artifact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
from service.evaluation.scoring import MODEL, NAIVE, POOLED, REFERENCE_BAND
from service.forecasting.spec import DEFAULT_LEVEL

GATE_HORIZON = 1
DEFAULT_MAX_REL_MAE = 1.0
# The band conditions: pooled coverage of the served band's nominal 80 % within this of 0.80 at
# each of these horizons, and its 1-day interval score at most this many times the reference
# band's (the random walk + EWMA volatility + ACI: the one-line baseline to beat).
BAND_HORIZONS = (1, 5)
DEFAULT_COVERAGE_TOLERANCE = 0.05
DEFAULT_MAX_INTERVAL_RATIO = 1.0


class PromotionRefused(StockcastError):
    """The version has no usable backtest, or its backtest loses to the threshold."""


@dataclass(frozen=True)
class GateThresholds:
    """What the gate asks of a backtest (each configurable on `stockcast promote` / `train`)."""

    max_rel_mae: float = DEFAULT_MAX_REL_MAE
    coverage_tolerance: float = DEFAULT_COVERAGE_TOLERANCE
    max_interval_ratio: float = DEFAULT_MAX_INTERVAL_RATIO

    def __post_init__(self):
        for name in ("max_rel_mae", "coverage_tolerance", "max_interval_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class PromotionVerdict:
    """What the gate saw: the run, the 1-day MAEs, and the served band's coverage and score."""

    version: str
    run_id: int
    rel_mae: float
    model_mae: float
    naive_mae: float
    threshold: float
    band: str = f"{MODEL}_aci"
    coverage: dict[int, float] = field(default_factory=dict)  # horizon -> pooled 80 % coverage
    interval_score: float = float("nan")  # the served band's, h = 1
    reference_score: float = float("nan")  # REFERENCE_BAND's, h = 1
    thresholds: GateThresholds = GateThresholds()

    @property
    def interval_ratio(self) -> float:
        return self.interval_score / self.reference_score

    def failures(self) -> list[str]:
        """Each condition it fails, with by how much."""
        t = self.thresholds
        out = []
        if not self.rel_mae <= t.max_rel_mae:
            out.append(f"rel MAE exceeds the threshold by {self.rel_mae - t.max_rel_mae:.4f}")
        for h, cov in sorted(self.coverage.items()):
            miss = abs(cov - DEFAULT_LEVEL) - t.coverage_tolerance
            if not miss <= 1e-12:
                out.append(f"{h}-day coverage {cov:.3f} is {miss:.3f} outside "
                           f"{DEFAULT_LEVEL:.2f} ± {t.coverage_tolerance:.2f}")
        if not self.interval_ratio <= t.max_interval_ratio:
            out.append(f"1-day interval score is {self.interval_ratio:.4f}x {REFERENCE_BAND}'s, "
                       f"{self.interval_ratio - t.max_interval_ratio:.4f} above the allowed "
                       f"{t.max_interval_ratio:.4f}x")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def describe(self) -> str:
        """One line: the verdict and by how much it won or lost."""
        verb = "beats" if self.rel_mae < 1 else "loses to" if self.rel_mae > 1 else "ties"
        pct = abs(self.rel_mae - 1.0) * 100
        coverage = ", ".join(f"{c:.3f} at h={h}" for h, c in sorted(self.coverage.items()))
        return (
            f"{self.version}: 1-day MAE ${self.model_mae:.4f} vs naive ${self.naive_mae:.4f} "
            f"(rel MAE {self.rel_mae:.4f}, {verb} naive by {pct:.2f}%; "
            f"threshold {self.threshold:.4f}, backtest run {self.run_id}); "
            f"{self.band} band: 80% coverage {coverage} (allowed {DEFAULT_LEVEL:.2f} ± "
            f"{self.thresholds.coverage_tolerance:.2f}), 1-day interval score "
            f"{self.interval_score:.5f} vs {REFERENCE_BAND} {self.reference_score:.5f} "
            f"(ratio {self.interval_ratio:.4f}, allowed {self.thresholds.max_interval_ratio:.4f})"
        )


def evaluate_gate(engine: Engine, manifest: Manifest,
                  max_rel_mae: float = DEFAULT_MAX_REL_MAE,
                  thresholds: GateThresholds | None = None) -> PromotionVerdict:
    """The verdict from the version's latest stored backtest; PromotionRefused if it is unusable.

    Unusable: none stored, in-sample (origins before the manifest's test segment), missing some
    of the manifest's training tickers, without a pooled 1-day MAE for the model and naive, or
    without the served band's pooled coverage (h = 1, 5) and interval scores (h = 1).
    """
    if not max_rel_mae > 0:
        raise ValueError(f"max_rel_mae must be positive, got {max_rel_mae}")
    thresholds = thresholds or GateThresholds(max_rel_mae=max_rel_mae)
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
        pooled = get_metrics(conn, run.id, ticker=POOLED)
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

    band = manifest.band.get("served", f"{MODEL}_aci")
    lookup = {(int(r.horizon), r.method, r.metric): r.value for r in pooled.itertuples()}
    wanted = [(h, band, "coverage") for h in BAND_HORIZONS] + [
        (GATE_HORIZON, band, "interval_score"), (GATE_HORIZON, REFERENCE_BAND, "interval_score")]
    absent = [w for w in wanted if w not in lookup or not math.isfinite(lookup[w])]
    if absent:
        raise PromotionRefused(
            f"backtest run {run.id} of {version} lacks the band metrics the gate reads "
            f"({', '.join(f'{m} of {b} at h={h}' for h, b, m in absent)}): run it with "
            f"horizons {', '.join(map(str, BAND_HORIZONS))} and the {REFERENCE_BAND} band")
    return PromotionVerdict(
        version, run.id, model_mae / naive_mae, model_mae, naive_mae, thresholds.max_rel_mae,
        band=band, coverage={h: lookup[(h, band, "coverage")] for h in BAND_HORIZONS},
        interval_score=lookup[(GATE_HORIZON, band, "interval_score")],
        reference_score=lookup[(GATE_HORIZON, REFERENCE_BAND, "interval_score")],
        thresholds=thresholds)


def promote(engine: Engine, model_dir: Path | str, version: str,
            max_rel_mae: float = DEFAULT_MAX_REL_MAE,
            thresholds: GateThresholds | None = None) -> PromotionVerdict:
    """Point model_dir/current at `version` if it passes the gate; PromotionRefused otherwise."""
    model_dir = Path(model_dir)
    # A broken, tampered or missing artifact (or a name outside model_dir) is never promoted.
    manifest = load_manifest(artifact_path(model_dir, version))
    verdict = evaluate_gate(engine, manifest, max_rel_mae, thresholds)
    if not verdict.passed:
        pointer = model_dir / CURRENT_FILE
        current = pointer.read_text().strip() if pointer.is_file() else "nothing"
        raise PromotionRefused(
            f"refused: {verdict.describe()}; {'; '.join(verdict.failures())}. "
            f"{CURRENT_FILE} still names {current}"
        )
    set_current(model_dir, version)
    return verdict
