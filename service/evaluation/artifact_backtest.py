"""The backtest an artifact carries: `models/<version>/backtest.json`, written by `stockcast
backtest` when the run is one the promotion gate accepts (out of sample, every training ticker),
and stored into an empty cache by `stockcast seed`, so a fresh start shows the shipped model's
backtest.

The report is not part of the version's content hash (meta.json + model.onnx): it is a
measurement of the model, not the model, and adding it must not change the version or any
forecast. It names the version and the ONNX sha256 it measured; a report that does not match
the artifact it sits in is never stored.

A rerun that measures the same figures leaves the file as it is (with the date it was first
measured): only the run's timings, creation time and process count would differ, and on another
CPU the figures' last bits (compared to a relative 1e-6), so a tracked report stays unchanged in
git, and a rerun that does change it shows in `git diff` what moved.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from sqlalchemy import Connection, Engine

from service.artifacts.manifest import Manifest, load_manifest, resolve_current
from service.artifacts.profile import same_json
from service.core.errors import StockcastError
from service.db.backtests import METRIC_COLUMNS, RunInfo, latest_run, store_run

REPORT_FILE = "backtest.json"
REPORT_FORMAT = 1


def out_of_sample_problem(run: RunInfo, manifest: Manifest) -> str | None:
    """Why a stored run cannot speak for the model (in-sample, tickers left out), or None."""
    test_first = manifest.split.test[0]
    if run.config.get("in_sample_origins") or run.start < test_first:
        return (f"backtest run {run.id} of {manifest.version} is in-sample: its origins start "
                f"{run.start}, before the test segment ({test_first}), on dates the model was "
                "fitted on")
    missing = sorted(set(manifest.tickers) - set(run.tickers))
    if missing:
        return (f"backtest run {run.id} of {manifest.version} scores {len(run.tickers)} of the "
                f"model's {len(manifest.tickers)} training tickers (missing {missing})")
    return None


# What a rerun of the same measurement changes: when it ran, how long it took, in how many
# processes (the figures do not depend on it).
_RUN_ONLY = ("created_at",)
_CONFIG_ONLY = ("seconds", "workers")
# Figures equal to this relative tolerance are the same measurement: the same code on another
# CPU differs in the last bits (onnxruntime's float32 kernels, ≈ 5e-8; statsmodels' optimizer,
# ≈ 3e-8; BLAS reductions, ≈ 1e-14), far below any printed digit.
_FIGURE_RTOL = 1e-6


def _measurement(report: dict) -> dict:
    """The report without what only says when, how fast and how it was run, nor its figures."""
    run = {k: v for k, v in report.get("run", {}).items() if k not in _RUN_ONLY}
    run["config"] = {k: v for k, v in run.get("config", {}).items() if k not in _CONFIG_ONLY}
    return {**{k: v for k, v in report.items() if k != "metrics"}, "run": run}


def write_report(manifest: Manifest, run: RunInfo, metrics: pd.DataFrame) -> tuple[Path, bool]:
    """Write the run and its long metrics (ticker, horizon, method, metric, value) into the
    artifact folder, NaN as null; (path, whether written). A report already there with the
    same measurement (every figure to _FIGURE_RTOL, the run's range, tickers and settings) is
    kept."""
    rows = [[t, int(h), method, metric, None if not math.isfinite(v) else float(v)]
            for t, h, method, metric, v in metrics.loc[:, list(METRIC_COLUMNS)].itertuples(
                index=False, name=None)]
    report = {
        "format": REPORT_FORMAT,
        "model_version": manifest.version,
        "onnx_sha256": manifest.onnx_sha256,
        "run": {"start": run.start.isoformat(), "end": run.end.isoformat(),
                "tickers": list(run.tickers), "config": run.config,
                "created_at": run.created_at.isoformat()},
        "metric_columns": list(METRIC_COLUMNS),
        "metrics": rows,
    }
    path = manifest.artifact_dir / REPORT_FILE
    # Compared as JSON text: the floats as written and read back, NaN as null.
    report = json.loads(json.dumps(report))
    try:
        stored = json.loads(path.read_text())
        if (_measurement(stored) == _measurement(report)
                and same_json(stored.get("metrics", []), report["metrics"], _FIGURE_RTOL)):
            return path, False
    except (OSError, ValueError):  # none yet, or unreadable: write it
        pass
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, separators=(",", ":")) + "\n")
    tmp.replace(path)
    return path, True


def read_report(manifest: Manifest) -> dict | None:
    """The artifact's report, or None when it has none; ValueError when it is not this
    artifact's (another version or ONNX file) or not readable."""
    path = manifest.artifact_dir / REPORT_FILE
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from exc
    if report.get("format") != REPORT_FORMAT:
        raise ValueError(f"{path}: unknown report format {report.get('format')!r}")
    if (report.get("model_version"), report.get("onnx_sha256")) != (
            manifest.version, manifest.onnx_sha256):
        raise ValueError(f"{path} measured model {report.get('model_version')!r}, not the "
                         f"artifact it sits in ({manifest.version})")
    return report


def store_report(conn: Connection, manifest: Manifest) -> tuple[int, bool] | None:
    """Store the artifact's report as a backtest run unless one of its version is stored.

    Returns (run id, True) when stored now, (existing run id, False) when the version already
    has a run, None when the artifact carries no report.
    """
    existing = latest_run(conn, manifest.version)
    if existing is not None:
        return existing.id, False
    report = read_report(manifest)
    if report is None:
        return None
    run = report["run"]
    run_id = store_run(
        conn, model_version=manifest.version, start=pd.Timestamp(run["start"]).date(),
        end=pd.Timestamp(run["end"]).date(), tickers=run["tickers"],
        config={**run["config"], "from_artifact": True, "measured_at": run["created_at"]},
        metrics=(tuple(row) for row in report["metrics"]))
    return run_id, True


def store_current_report(engine: Engine, model_dir: Path) -> str:
    """Store models/current's report unless its version has a run; says what happened."""
    try:
        manifest = load_manifest(resolve_current(model_dir))
        with engine.begin() as conn:
            stored = store_report(conn, manifest)
    except (StockcastError, ValueError) as exc:
        return f"no shipped backtest stored: {exc}"
    if stored is None:
        return (f"model {manifest.version} carries no {REPORT_FILE}: "
                "run `stockcast backtest` to measure it")
    run_id, new = stored
    if new:
        return f"stored the backtest model {manifest.version} ships with as run {run_id}"
    return f"model {manifest.version} already has a stored backtest (run {run_id})"
