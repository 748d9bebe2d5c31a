"""Backtest benchmark: the whole cached universe's walk-forward backtest, beside in-run baselines.

Measured: `run_backtest` of the current model over every cached ticker (the shared dataset's 489),
test segment, h = 1, 5, 30, every baseline and band method (+ ACI), forecasting and scoring in
`--workers` processes (default: the CPUs), split into forecasts (wall; model and baselines as
CPU seconds summed over workers) and metrics; then the metric rows stored in one bulk write and
read back. Baselines measured in the same run: the same universe in one process (workers=1),
the model's training tickers (top24) in one process, and the rows written the old way (one ORM
parameter dict per row, chunks of 5,000). The pooled run's metrics are compared with the one-
process run's at 17 significant digits. Target: universe <= 20 s on 2 cores.
Run: `make bench-backtest` (needs a model in models/ and the shared dataset in the bar cache:
`make seed`). Options: --model-dir DIR, --workers N, --tickers N (the first N cached tickers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert

from bench.compare_backtests import metric_differences
from service.artifacts.manifest import resolve_current
from service.core.config import available_cpus, get_settings
from service.core.errors import ModelNotLoaded
from service.db.backtests import get_metrics, store_run
from service.db.bars import read_bars_many
from service.db.models import BacktestMetric, Base
from service.db.session import make_engine
from service.evaluation.backtest import MODEL, NAIVE, POOLED, bars_by_ticker, run_backtest
from service.inference.predictor import Predictor

DAY = dt.date(2017, 1, 3)  # the stored run's dates: any


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def store_seconds(metrics, bulk: bool) -> tuple[float, float]:
    """(write s, read-back s) of the metric rows into a fresh SQLite file: bulk or ORM dicts."""
    path = Path(f"/tmp/stockcast-bench-backtest-{os.getpid()}.db")
    path.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    rows = list(metrics.itertuples(index=False, name=None))
    t0 = time.perf_counter()
    with engine.begin() as conn:
        if bulk:  # the path `stockcast backtest` takes
            run_id = store_run(conn, model_version="bench", start=DAY, end=DAY,
                               tickers=[], config={}, metrics=rows)
        else:  # the previous store_run: a parameter dict per row, 5,000 rows per execute
            run_id = store_run(conn, model_version="bench", start=DAY, end=DAY,
                               tickers=[], config={}, metrics=[])
            dicts = [{"run_id": run_id, "ticker": t, "horizon": int(h), "method": m,
                      "metric": k, "value": None if not math.isfinite(v) else float(v)}
                     for t, h, m, k, v in rows]
            for i in range(0, len(dicts), 5_000):
                conn.execute(insert(BacktestMetric), dicts[i:i + 5_000])
    written = time.perf_counter() - t0
    with engine.connect() as conn:
        read, _ = timed(lambda: get_metrics(conn, run_id))
    engine.dispose()
    path.unlink(missing_ok=True)
    return written, read


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=available_cpus())
    parser.add_argument("--tickers", type=int, default=None)
    args = parser.parse_args()
    settings = get_settings()
    try:
        artifact = resolve_current(args.model_dir or settings.model_dir)
    except ModelNotLoaded as exc:
        print(f"skipped: {exc}")
        return 0
    threads = settings.ort_intra_op_threads
    engine = make_engine(settings.database_url)
    load_s, bars_multi = timed(lambda: read_bars_many(engine))
    engine.dispose()
    universe = bars_by_ticker(bars_multi)
    if args.tickers:
        universe = dict(list(universe.items())[: args.tickers])
    # One ORT thread everywhere: the pooled workers run one each, so the runs compare exactly.
    predictor = Predictor.load(artifact, "cpu", 1)
    manifest = predictor.manifest
    missing = sorted(set(manifest.tickers) - set(universe))
    if missing:
        print(f"skipped: no cached bars for {missing}; run `make seed`")
        return 0
    top = {t: universe[t] for t in manifest.tickers}

    # Warm-up: first-call costs (ORT arena, statsmodels imports) are not the steady state.
    run_backtest(predictor, dict(list(top.items())[:1]), baselines=(NAIVE,))
    runs = []
    for name, bars, workers in (
        (f"universe, {args.workers} workers", universe, args.workers),
        ("in-run baseline: universe, 1 process", universe, 1),
        (f"in-run baseline: {len(top)} training tickers, 1 process", top, 1),
    ):
        wall, result = timed(lambda b=bars, w=workers: run_backtest(predictor, b, workers=w))
        runs.append((name, wall, result))
    pooled, single = runs[0][2], runs[1][2]
    diff = metric_differences(single.metrics, pooled.metrics)
    bulk = store_seconds(pooled.metrics, bulk=True)
    orm = store_seconds(pooled.metrics, bulk=False)

    print(f"\nBacktest of model {manifest.version}, test segment {pooled.start} .. {pooled.end}, "
          f"horizons {','.join(map(str, pooled.horizons))}, {len(pooled.methods)} methods; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; "
          f"onnxruntime 1 thread per process (settings: {threads}); bars read {load_s:.2f} s\n")
    print("| run | tickers scored | forecasts scored | wall s | forecasts s | model CPU s | "
          "baselines CPU s | metrics s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, wall, res in runs:
        s = res.seconds
        scored = int(sum(len(f) for f in res.forecasts.values())) * len(res.methods)
        print(f"| {name} | {len(res.tickers)} | {scored:,} | {wall:.2f} | {s['forecasts']:.2f} | "
              f"{s['model']:.2f} | {s['baselines']:.2f} | {s['metrics']:.2f} |")
    print(f"\n| store {len(pooled.metrics):,} metric rows (SQLite) | write s | read back s |")
    print("|---|---:|---:|")
    print(f"| bulk (one executemany; COPY on PostgreSQL) | {bulk[0]:.2f} | {bulk[1]:.2f} |")
    print(f"| in-run baseline: ORM dict per row, 5,000 per execute | {orm[0]:.2f} | {orm[1]:.2f} |")
    print(f"\npooled vs one process: {len(diff):,} of {len(pooled.metrics):,} metric rows differ "
          "at 17 significant digits")
    print(f"skipped: {pooled.skipped or 'none'}")
    wall = runs[0][1]
    print(f"universe run {wall:.1f} s: {'within' if wall <= 20 else 'OVER'} the 20 s target; "
          f"{runs[1][1] / wall:.2f}x the one-process run")
    print(f"pooled 1-day MAE: model ${pooled.value('mae', MODEL, 1, POOLED):.3f}, "
          f"naive ${pooled.value('mae', NAIVE, 1, POOLED):.3f}")
    return 1 if len(diff) else 0


if __name__ == "__main__":
    sys.exit(main())
