"""Backtest benchmark: wall time of a full walk-forward backtest of the default universe.

Measured: the full run (the model through the serving Predictor, all five baselines incl. ARIMA
fitted per ticker, horizons 1, 5, 30, every metric), median of 3, with its split into model,
baselines and metrics. Baselines measured in the same run: the same backtest scoring naive only
(the floor: bars, features, ORT and metrics without the other baselines), and the per-origin
serving path a first implementation would loop over (`Predictor.forecast` once per origin,
features rebuilt each time; timed on one ticker, scaled to all). Target: <= 30 s on 2 cores.
Run: `make bench-backtest` (needs a model in models/ and the shared dataset in the bar cache:
`make seed`). Options: --model-dir DIR, --repeat N.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.artifacts.manifest import resolve_current
from service.core.config import get_settings
from service.core.errors import ModelNotLoaded
from service.db.bars import read_bars_many
from service.db.session import make_engine
from service.evaluation.backtest import (
    DEFAULT_HORIZONS,
    MODEL,
    NAIVE,
    POOLED,
    bars_by_ticker,
    run_backtest,
)
from service.forecasting.baselines import BASELINES
from service.inference.predictor import Predictor


def timed_runs(predictor, bars, baselines, repeat):
    """(median wall seconds, the last result) of `repeat` identical backtests."""
    walls, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = run_backtest(predictor, bars, baselines=baselines)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), result


def per_origin_seconds(predictor, ticker, bars, origins) -> float:
    """Seconds for Predictor.forecast at each origin of one ticker (one ORT call each)."""
    t0 = time.perf_counter()
    for origin in origins:
        predictor.forecast(ticker, bars, horizon=max(DEFAULT_HORIZONS), as_of=origin.date())
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    settings = get_settings()
    try:
        artifact = resolve_current(args.model_dir or settings.model_dir)
    except ModelNotLoaded as exc:
        print(f"skipped: {exc}")
        return 0
    threads = settings.ort_intra_op_threads
    predictor = Predictor.load(artifact, "cpu", threads)
    manifest = predictor.manifest
    engine = make_engine(settings.database_url)
    bars = bars_by_ticker(read_bars_many(engine, list(manifest.tickers)))
    engine.dispose()
    missing = sorted(set(manifest.tickers) - set(bars))
    if missing:
        print(f"skipped: no cached bars for {missing}; run `make seed`")
        return 0

    # Warm-up: first-call costs (ORT arena, statsmodels imports) are not the steady state.
    run_backtest(predictor, dict(list(bars.items())[:1]), baselines=(NAIVE,))
    full_s, full = timed_runs(predictor, bars, tuple(BASELINES), args.repeat)
    naive_s, naive = timed_runs(predictor, bars, (NAIVE,), args.repeat)

    first = full.forecasts[1]
    ticker = first["ticker"].iloc[0]
    origins = first.loc[first["ticker"] == ticker, "origin"]
    one_ticker_s = per_origin_seconds(predictor, ticker, bars[ticker], origins)
    loop_s = one_ticker_s * len(first) / len(origins)

    n_origins = len(first)
    scored = int(sum(len(f) for f in full.forecasts.values()))
    print(f"\nBacktest of model {manifest.version}: {len(full.tickers)} tickers, origins "
          f"{full.start} .. {full.end}, horizons {','.join(map(str, full.horizons))}; "
          f"{os.cpu_count()} CPUs, onnxruntime intra-op threads {threads}\n")
    print("| run | (ticker, origin) pairs | forecasts scored | wall s | model s | "
          "baselines s | metrics s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, secs, res in (
        (f"full: model + {len(BASELINES)} baselines incl. ARIMA (median of {args.repeat})",
         full_s, full),
        (f"baseline in-run: model + naive only (median of {args.repeat})", naive_s, naive),
    ):
        s = res.seconds
        print(f"| {name} | {n_origins:,} | {scored * len(res.methods):,} | {secs:.2f} | "
              f"{s['model']:.2f} | {s['baselines']:.2f} | {s['metrics']:.2f} |")
    print(f"| reference: Predictor.forecast per origin, model only ({len(origins)} origins of "
          f"{ticker} timed, scaled to {n_origins:,}) | {n_origins:,} | - | {loop_s:.1f} | "
          f"{loop_s:.1f} | - | - |")
    print(f"\nbatched model path: {loop_s / full.seconds['model']:.0f}x faster than per-origin "
          f"calls; full run {'within' if full_s <= 30 else 'OVER'} the 30 s target")
    print(f"pooled 1-day MAE: model ${full.value('mae', MODEL, 1, POOLED):.3f}, "
          f"naive ${full.value('mae', NAIVE, 1, POOLED):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
