"""A recorded backtest run: load the artifact, read the bars, forecast and score, store, plot.

What `stockcast backtest` does, and what `stockcast train` does after exporting (the training
pipeline calls it with the new version): one function, so both store identical runs.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from service.core.errors import DatabaseUnavailable
from service.db.backtests import get_metrics, get_run, store_run
from service.db.bars import read_bars_many
from service.evaluation.artifact_backtest import out_of_sample_problem, write_report
from service.evaluation.backtest import BacktestResult, bars_by_ticker, run_backtest
from service.evaluation.drift import write_training_profile
from service.evaluation.plots import default_plots_dir, write_backtest_plots
from service.forecasting.baselines import BASELINES
from service.forecasting.features import needs_market
from service.inference.onnx_model import Provider
from service.inference.predictor import Predictor


@dataclass
class StoredBacktest:
    """A backtest run as stored: its id, the result, the metrics read back, the plots written."""

    run_id: int
    result: BacktestResult
    stored: pd.DataFrame  # what the database holds now (printed, not what was computed)
    plots: list[Path]
    seconds: dict[str, float]  # load (artifact + bars) and wall
    report: Path | None = None  # the artifact's backtest.json, when this run is the gate's kind
    report_written: bool = False  # False: it already held these figures (left as it was)


def backtest_and_store(
    engine: Engine,
    artifact_dir: Path,
    *,
    tickers: Sequence[str] | None = None,
    every_ticker: bool = False,
    start: dt.date | None = None,
    end: dt.date | None = None,
    horizons: Sequence[int] | None = None,
    baselines: Sequence[str] = tuple(BASELINES),
    plots_dir: Path | None = None,
    provider: Provider = "auto",
    intra_op_threads: int = 1,
    workers: int = 1,
) -> StoredBacktest:
    """Backtest the artifact over `tickers` (default: its training tickers; `every_ticker`: all
    cached ones); store and plot it. `workers`: see run_backtest.

    ValueError or a StockcastError says what is wrong with the request (no cached bars, a bad
    horizon, an unknown baseline); DatabaseUnavailable when the run cannot be stored.
    """
    started = time.perf_counter()
    predictor = Predictor.load(artifact_dir, provider, intra_op_threads)
    market = needs_market(predictor.spec)
    if every_ticker:
        bars = read_bars_many(engine, market=market)
        names = sorted(bars["ticker"].unique())
    else:
        names = list(tickers) if tickers else list(predictor.manifest.tickers)
        bars = read_bars_many(engine, names, market=market)
    missing = sorted(set(names) - set(bars["ticker"].unique()))
    if missing:
        raise ValueError(f"no cached bars for {missing}: load them first (stockcast ingest / seed)")
    loaded = time.perf_counter()
    result = run_backtest(predictor, bars_by_ticker(bars), start=start, end=end,
                          horizons=horizons, baselines=baselines, workers=workers)
    result.config["seconds"]["load"] = round(loaded - started, 3)
    try:
        with engine.begin() as conn:
            run_id = store_run(conn, model_version=result.model_version, start=result.start,
                               end=result.end, tickers=result.tickers, config=result.config,
                               metrics=result.metrics.itertuples(index=False, name=None))
        with engine.connect() as conn:
            stored = get_metrics(conn, run_id)
            run_info = get_run(conn, run_id)
    except DBAPIError as exc:
        raise DatabaseUnavailable(
            f"cannot store the backtest ({exc.__class__.__name__}); "
            "is the database migrated? run `stockcast db upgrade`") from exc
    # Keyed by database: run ids of two databases never share a folder.
    url = engine.url.render_as_string(hide_password=False)
    manifest = predictor.manifest
    plots = write_backtest_plots(
        result, plots_dir or default_plots_dir(Path(artifact_dir).parent, url, run_id),
        manifest.tickers)
    # The gate's kind of run (out of sample, exactly the training tickers) is what the artifact
    # carries; a wider one (the universe) is stored but leaves the artifact's report alone.
    report, written = None, False
    if (out_of_sample_problem(run_info, manifest) is None
            and set(run_info.tickers) == set(manifest.tickers)):
        report, written = write_report(manifest, run_info, stored)
        # The same cached bars the model was fitted on: its training tickers' only.
        write_training_profile(bars[bars["ticker"].isin(manifest.tickers)], manifest)
    seconds = {"load": loaded - started, "wall": time.perf_counter() - started}
    return StoredBacktest(run_id, result, stored, plots, seconds, report, written)
