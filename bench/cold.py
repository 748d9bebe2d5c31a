"""Cold-path benchmark: forecasts no server has computed yet, from the serving stores (feature rows
+ band state: one window read, one onnxruntime call) beside the path from bars (features from
~600 bars, the model over the ~440 origins ACI reads), the in-run baseline.

Setup, all in one run: a temporary SQLite cache holding the whole shared dataset (489 tickers;
bokeh-sampledata's stocks where it is absent), ingested through the write path that fills the
feature store; `refresh` with the source off (each ticker then serves its cached bars, the
refresh throttled, as after a daily refresh); the prewarm of every ticker's band state for the
shipped model (timed: the cost a refresh adds). Then `stockcast serve` (1 worker, source off) in
a subprocess, started afresh for each row so nothing is in its forecast cache:
- first forecast: N tickers, each asked once (`POST /predict/{ticker}`, horizon 1), one
  connection, after one warm-up request of another ticker; p50/p99 per request.
- 100-ticker batch: one `POST /predict` of 100 tickers none of which was asked before.
- universe: one `POST /predict` of every ticker, cold (fresh server) and again warm.
- 16 connections: wrk against a server with STOCKCAST_FORECAST_CACHE_SIZE=0 (every request is
  cold) over every ticker in turn.
Store rows run with STOCKCAST_SERVING_STORE=true, baseline rows with false (always from bars).
`--baseline-tree DIR` adds the store rows of another version's `service` package on the same
database (DIR from `git archive <commit> service alembic alembic.ini | tar -x -C DIR`): the
store path before a change, measured in the same run. `--db FILE` keeps the seeded SQLite file
and reuses it when it exists (the setup then is not timed).
Targets: first forecast p50 <= 3 ms; cold p50 <= 20 ms at 16 connections; 100-ticker cold
batch <= 300 ms; universe cold <= 1 s, warm <= 50 ms.
Run: `make bench-cold` or `python bench/cold.py [--tickers N] [--seconds S] [--no-baseline-universe]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve import Server, drive_wrk
from service.artifacts.manifest import resolve_current
from service.cli import seed_dataset_path
from service.core.config import Settings
from service.db.bars import list_tickers
from service.db.session import make_engine, upgrade
from service.evaluation.feature_store import after_bars_written, prewarm
from service.inference.predictor import Predictor
from service.sources.csv import read_bars_file
from service.sources.ingest import ingest_frame, refresh_tickers

BODY = {"horizon": 1}


def seed(url: str, model_dir: Path) -> tuple[list[str], dict[str, float]]:
    """Migrate, ingest the offline bars (features stored), refresh offline, prewarm; timings."""
    path = seed_dataset_path()
    if path is None:
        sys.exit("no offline bars: need ../shared/data or bokeh-sampledata (see README)")
    upgrade(url)
    engine = make_engine(url)
    timings = {}
    try:
        frame = read_bars_file(path)
        started = time.perf_counter()
        ingest_frame(engine, frame, source="csv", after_write=after_bars_written)
        timings["ingest + feature store"] = time.perf_counter() - started
        settings = Settings(database_url=url, source="none", model_dir=model_dir)
        refresh_tickers(engine, settings, None)  # offline: every ticker throttled, served stale
        predictor = Predictor.load(resolve_current(model_dir), "cpu", 1)
        report = prewarm(engine, predictor)
        timings["prewarm (band states)"] = report.seconds
        print(report.summary())
        started = time.perf_counter()
        again = prewarm(engine, predictor)
        timings["prewarm again (all fresh)"] = time.perf_counter() - started
        print(again.summary())
        with engine.connect() as conn:
            tickers = [t.symbol for t in list_tickers(conn)]
    finally:
        engine.dispose()
    return tickers, timings


def first_forecasts(server: Server, tickers: list[str], warmup: str) -> list[float]:
    """Milliseconds of each ticker's first forecast, one request at a time."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        client.post(f"/predict/{warmup}", json=BODY).raise_for_status()
        out = []
        for ticker in tickers:
            started = time.perf_counter()
            client.post(f"/predict/{ticker}", json=BODY).raise_for_status()
            out.append((time.perf_counter() - started) * 1000)
    return out


def batch(server: Server, tickers: list[str], warmup: str | None = None) -> float:
    """Milliseconds of one POST /predict of `tickers` (all answered, none failed)."""
    with httpx.Client(base_url=server.url, timeout=600) as client:
        if warmup is not None:
            client.post(f"/predict/{warmup}", json=BODY).raise_for_status()
        started = time.perf_counter()
        response = client.post("/predict", json={"tickers": tickers, **BODY})
        seconds = time.perf_counter() - started
    response.raise_for_status()
    body = response.json()
    if body["errors"] or len(body["forecasts"]) != len(tickers):
        sys.exit(f"batch of {len(tickers)}: {len(body['errors'])} errors")
    return seconds * 1000


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tickers", type=int, default=100, help="first-forecast sample size")
    parser.add_argument("--seconds", type=int, default=8, help="wrk: duration per row")
    parser.add_argument("--no-baseline-universe", action="store_true",
                        help="skip the universe batch from bars (about a minute or more)")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models",
                        help="models folder whose `current` is served")
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="a folder holding another version's `service` package: its store "
                             "rows are measured too, on the same database")
    parser.add_argument("--db", type=Path, default=None,
                        help="seeded SQLite file to keep and reuse (seeded when absent)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="stockcast-cold-"))
    rows: list[tuple[str, ...]] = []  # (what, store, [store before,] baseline, target)
    modes = [("store", "true", {}), ("bars", "false", {})]
    if args.baseline_tree is not None:
        # Without the working folder on sys.path, PYTHONPATH's `service` is the one imported.
        modes.insert(1, ("before", "true", {"PYTHONSAFEPATH": "1",
                                            "PYTHONPATH": str(args.baseline_tree.resolve())}))
    try:
        db = args.db.resolve() if args.db is not None else workdir / "bench.db"
        url = f"sqlite:///{db}"
        if args.db is not None and db.exists():
            engine = make_engine(url)
            with engine.connect() as conn:
                tickers, timings = [t.symbol for t in list_tickers(conn)], {}
            engine.dispose()
        else:
            tickers, timings = seed(url, args.model_dir)
        n = min(args.tickers, len(tickers) - 101)
        first, batch_tickers = tickers[1 : n + 1], tickers[n + 1 : n + 101]
        env = {"STOCKCAST_SOURCE": "none", "STOCKCAST_MODEL_DIR": str(args.model_dir),
               "STOCKCAST_LOG_LEVEL": "WARNING"}
        results: dict[str, dict[str, float]] = {mode: {} for mode, _, _ in modes}
        for mode, flag, extra in modes:
            # Each column on its own copy of the seeded database: the ledger rows one records
            # would make another's first forecasts cheaper (already recorded).
            copy = workdir / f"{mode}.db"
            shutil.copyfile(db, copy)
            mode_env = {**env, "STOCKCAST_DATABASE_URL": f"sqlite:///{copy}",
                        "STOCKCAST_SERVING_STORE": flag, **extra}
            with Server(mode_env, 1) as server:
                ms = first_forecasts(server, first, tickers[0])
                results[mode]["first p50"], results[mode]["first p99"] = pct(ms, 50), pct(ms, 99)
                results[mode]["batch100"] = batch(server, batch_tickers)
            if mode != "bars" or not args.no_baseline_universe:
                with Server(mode_env, 1) as server:
                    results[mode]["universe cold"] = batch(server, tickers, warmup=tickers[0])
                    results[mode]["universe warm"] = batch(server, tickers)
            with Server({**mode_env, "STOCKCAST_FORECAST_CACHE_SIZE": "0"}, 1) as server:
                httpx.post(f"{server.url}/predict/{tickers[0]}", json=BODY, timeout=60)
                wrk = drive_wrk("cold", server.url, [f"/predict/{t}" for t in tickers],
                                args.seconds)
                results[mode]["c16 p50"], results[mode]["c16 p99"] = wrk.p50_ms, wrk.p99_ms
                results[mode]["c16 rps"] = wrk.throughput
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    columns = [mode for mode, _, _ in modes]

    def both(key: str, fmt: str = "{:.1f}") -> tuple[str, ...]:
        return tuple(fmt.format(results[m][key]) if key in results[m] else "–" for m in columns)

    rows = [
        (f"first forecast of a ticker, p50 ms ({n} tickers)", *both("first p50"), "<= 3"),
        ("first forecast of a ticker, p99 ms", *both("first p99"), ""),
        ("100-ticker cold batch, ms", *both("batch100", "{:.0f}"), "<= 300"),
        (f"universe ({len(tickers)} tickers) cold, ms", *both("universe cold", "{:.0f}"),
         "<= 1000"),
        ("universe warm, ms", *both("universe warm", "{:.0f}"), "<= 50"),
        ("cold at 16 connections (wrk), p50 ms", *both("c16 p50"), "<= 20"),
        ("cold at 16 connections (wrk), p99 ms", *both("c16 p99"), ""),
        ("cold at 16 connections (wrk), req/s", *both("c16 rps", "{:.0f}"), ""),
    ]
    load = os.getloadavg()
    print(f"\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs; load average "
          f"at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")
    print("setup: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    titles = {"store": "stores", "before": "stores before", "bars": "from bars"}
    heads = [titles[m] for m in columns] + ["target"]
    print(f"\n| {'cold path':<52} | " + " | ".join(f"{h:>9}" for h in heads) + " |")
    print(f"|{'-' * 54}|" + "|".join("-" * (max(9, len(h)) + 2) for h in heads) + "|")
    for what, *cells in rows:
        print(f"| {what:<52} | " + " | ".join(f"{c:>{max(9, len(h))}}"
                                              for c, h in zip(cells, heads)) + " |")


if __name__ == "__main__":
    main()
