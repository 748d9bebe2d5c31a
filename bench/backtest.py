"""Backtest benchmark: the whole cached universe's walk-forward backtest, beside the old code's.

Measured: `run_backtest` of the current model over every cached ticker (the shared dataset's 489),
test segment, h = 1, 5, 30, every baseline and band method (+ ACI), forecasting and scoring in
`--workers` processes (default: the CPUs), onnxruntime on one thread per process. Each run is a
fresh subprocess timed around `run_backtest` alone: wall seconds and CPU seconds (user + sys of
the process and its workers), split into forecasts (wall; model and baselines as seconds summed
over workers) and metrics. `--runs` runs, the median reported.
In-run baseline, `--baseline-tree DIR`: the same runs of the code in DIR (an unpacked older
commit: `git archive <commit> | tar -x -C DIR`), alternated with the current code's so both see
the same machine load, on the same bars; every metric row of the two (366k on the universe) is
compared at 17 significant digits (exit 1 on a difference). Without it, the current code's
pooled run is compared with its own one-process run. Then the metric rows stored in one bulk
write and read back, beside the old ORM write (one parameter dict per row, chunks of 5,000).
Target: universe <= 20 s on 2 cores.
Run: `make bench-backtest` (needs a model in models/ and the shared dataset in the bar cache:
`make seed`). Options: --model-dir DIR, --workers N, --tickers N (the first N cached tickers),
--runs R, --baseline-tree DIR.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A child run imports `service` from the tree it is given (the in-run baseline's), not this one.
_CHILD = "--child" in sys.argv
sys.path.insert(0, sys.argv[sys.argv.index("--child") + 1] if _CHILD else str(ROOT))

import pandas as pd
from sqlalchemy import create_engine, insert

DAY = dt.date(2017, 1, 3)  # the stored run's dates: any


def _child(tree: str, out: Path, model_dir: Path | None, workers: int, tickers: int | None
           ) -> None:
    """One timed run_backtest with the `service` of `tree`; its figures to out.json, its metric
    rows to out.pkl."""
    import resource

    import service
    from service.artifacts.manifest import resolve_current
    from service.core.config import get_settings
    from service.db.bars import read_bars_many
    from service.db.session import make_engine
    from service.evaluation.backtest import bars_by_ticker, run_backtest
    from service.forecasting.features import needs_market
    from service.inference.predictor import Predictor

    assert Path(service.__file__).resolve().is_relative_to(Path(tree).resolve())
    settings = get_settings()
    predictor = Predictor.load(resolve_current(model_dir or settings.model_dir), "cpu", 1)
    engine = make_engine(settings.database_url)
    universe = bars_by_ticker(read_bars_many(engine, market=needs_market(predictor.spec)))
    engine.dispose()
    if tickers:
        universe = dict(list(universe.items())[:tickers])
    # Warm-up: first-call costs (ORT arena, statsmodels imports) are not the steady state.
    run_backtest(predictor, dict(list(universe.items())[:1]), baselines=("naive",))

    def cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    cpu0, t0 = cpu(), time.perf_counter()
    result = run_backtest(predictor, universe, workers=workers)
    wall, cpu_s = time.perf_counter() - t0, cpu() - cpu0
    result.metrics.to_pickle(out.with_suffix(".pkl"))
    scored = int(sum(len(f) for f in result.forecasts.values())) * len(result.methods)
    out.with_suffix(".json").write_text(json.dumps({
        "wall": wall, "cpu": cpu_s, "seconds": result.seconds, "tickers": len(result.tickers),
        "scored": scored, "rows": len(result.metrics), "skipped": result.skipped,
        "model": result.model_version, "start": str(result.start), "end": str(result.end),
        "horizons": list(result.horizons), "methods": len(result.methods),
        "load": os.getloadavg()[0]}))


def _run(tree: Path, out: Path, args, workers: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree), str(out),
               "--workers", str(workers)]
    if args.model_dir:
        command += ["--model-dir", str(args.model_dir)]
    if args.tickers:
        command += ["--tickers", str(args.tickers)]
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(tree)})
    figures = json.loads(out.with_suffix(".json").read_text())
    figures["metrics"] = pd.read_pickle(out.with_suffix(".pkl"))
    return figures


def store_seconds(metrics, bulk: bool) -> tuple[float, float]:
    """(write s, read-back s) of the metric rows into a fresh SQLite file: bulk or ORM dicts."""
    from service.db.backtests import get_metrics, store_run
    from service.db.models import BacktestMetric, Base

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
        t0 = time.perf_counter()
        get_metrics(conn, run_id)
        read = time.perf_counter() - t0
    engine.dispose()
    path.unlink(missing_ok=True)
    return written, read


def _median(runs: list[dict], key) -> float:
    return statistics.median(key(r) for r in runs)


def main() -> int:
    from bench.compare_backtests import metric_differences
    from service.artifacts.manifest import resolve_current
    from service.core.config import available_cpus, get_settings
    from service.core.errors import ModelNotLoaded
    from service.db.bars import count_bars
    from service.db.session import make_engine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=available_cpus())
    parser.add_argument("--tickers", type=int, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="an unpacked older commit: its run_backtest as the in-run baseline")
    parser.add_argument("--child", nargs=2, metavar=("TREE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]), args.model_dir, args.workers, args.tickers)
        return 0
    settings = get_settings()
    try:
        resolve_current(args.model_dir or settings.model_dir)
    except ModelNotLoaded as exc:
        print(f"skipped: {exc}")
        return 0
    engine = make_engine(settings.database_url)
    cached = count_bars(engine)
    engine.dispose()
    if not cached:
        print("skipped: the bar cache is empty; run `make seed`")
        return 0

    trees = [("current code", ROOT)]
    if args.baseline_tree is not None:
        trees.append((f"in-run baseline: {args.baseline_tree}", args.baseline_tree.resolve()))
    runs: dict[str, list[dict]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory(prefix="stockcast-bench-backtest-") as tmp:
        for i in range(args.runs):  # ABBA..., so both codes see the same load drift and order
            for name, tree in (trees if i % 2 == 0 else trees[::-1]):
                runs[name].append(_run(tree, Path(tmp) / f"{len(runs[name])}-{i}-{tree.name}",
                                       args, args.workers))
        if args.baseline_tree is None:  # the pooled run vs one process, same code
            single = _run(ROOT, Path(tmp) / "single", args, 1)
    current = runs["current code"]
    if args.baseline_tree is not None:
        other = runs[trees[1][0]]
        diffs = [metric_differences(o["metrics"], c["metrics"]) for o, c in zip(other, current)]
        versus = "the in-run baseline's"
    else:
        diffs = [metric_differences(single["metrics"], current[0]["metrics"])]
        versus = "a one-process run's"
    first = current[0]
    print(f"\nBacktest of model {first['model']}, test segment {first['start']} .. "
          f"{first['end']}, horizons {','.join(map(str, first['horizons']))}, "
          f"{first['methods']} methods; {os.cpu_count()} CPUs, {args.workers} workers, "
          f"onnxruntime 1 thread per process; median of {args.runs} runs "
          f"(load average {min(r['load'] for rs in runs.values() for r in rs):.1f} .. "
          f"{max(r['load'] for rs in runs.values() for r in rs):.1f} at their ends)\n")
    print("| run | tickers scored | forecasts scored | wall s | CPU s | forecasts s | "
          "model s | baselines s | metrics s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rs in runs.items():
        print(f"| {name} | {rs[0]['tickers']} | {rs[0]['scored']:,} | "
              f"{_median(rs, lambda r: r['wall']):.1f} | {_median(rs, lambda r: r['cpu']):.1f} | "
              + " | ".join(f"{_median(rs, lambda r, k=k: r['seconds'][k]):.1f}"
                           for k in ("forecasts", "model", "baselines", "metrics")) + " |")
    print("\n(wall and CPU: around run_backtest; model and baselines: seconds summed over the "
          "workers, the model's ACI run in model; each run's figures: "
          + "; ".join(f"{name}: " + ", ".join(f"{r['wall']:.1f}/{r['cpu']:.1f}" for r in rs)
                      for name, rs in runs.items()) + " wall/CPU s)")
    n_diff = sum(len(d) for d in diffs)
    print(f"\nmetric rows vs {versus}: {n_diff:,} of {len(first['metrics']):,} differ at 17 "
          f"significant digits ({len(diffs)} pair{'s' if len(diffs) > 1 else ''} compared)")
    if n_diff:
        print(diffs[0].head(10).to_string(index=False))
    bulk = store_seconds(first["metrics"], bulk=True)
    orm = store_seconds(first["metrics"], bulk=False)
    print(f"\n| store {len(first['metrics']):,} metric rows (SQLite) | write s | read back s |")
    print("|---|---:|---:|")
    print(f"| bulk (one executemany; COPY on PostgreSQL) | {bulk[0]:.2f} | {bulk[1]:.2f} |")
    print(f"| in-run baseline: ORM dict per row, 5,000 per execute | {orm[0]:.2f} | {orm[1]:.2f} |")
    print(f"skipped: {first['skipped'] or 'none'}")
    wall = _median(current, lambda r: r["wall"])
    line = f"universe run {wall:.1f} s: {'within' if wall <= 20 else 'OVER'} the 20 s target"
    if args.baseline_tree is not None:
        old = runs[trees[1][0]]
        line += (f"; {_median(old, lambda r: r['wall']) / wall:.2f}x the in-run baseline's wall, "
                 f"{_median(old, lambda r: r['cpu']) / _median(current, lambda r: r['cpu']):.2f}x"
                 " its CPU seconds")
    print(line)
    return 1 if n_diff else 0


if __name__ == "__main__":
    sys.exit(main())
