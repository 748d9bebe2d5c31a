"""Cold-path benchmark: forecasts no server has computed yet, from the serving stores beside the
paths before them, all in the same run: the stored forecast (band state + the model's output at
the latest bar: one row, no model run), the stored window (the same states without the output,
as before migration 0006: one window read and one onnxruntime call), and from bars (features
from ~1,100 bars, the model over the ~690 origins ACI reads).

Setup, all in one run: a temporary SQLite cache holding the whole shared dataset (489 tickers;
bokeh-sampledata's stocks where it is absent), ingested through the write path that fills the
feature store; `refresh` with the source off (each ticker then serves its cached bars, the
refresh throttled, as after a daily refresh); the prewarm of every ticker's band state and
forecast for the shipped model (timed: the cost a refresh adds). Then `stockcast serve`
(source off) in a subprocess, started afresh for each row so nothing is in its forecast cache,
each column on its own copy of the database:
- first forecast: N tickers, each asked once (`POST /predict/{ticker}`, horizon 1), one
  keep-alive connection (the standard library's client), after one warm-up request of another
  ticker; p50/p99 per request; then as many `GET /healthz` on it (the floor).
- 100-ticker batch: one `POST /predict` of 100 tickers none of which was asked before.
- universe: one `POST /predict` of every ticker, cold (fresh server) and again warm.
- 16 connections: wrk against a server with STOCKCAST_FORECAST_CACHE_SIZE=0 (every request is
  cold) over every ticker in turn; 1 uvicorn worker, and 2 (one per core) for the stores.
Store rows run with STOCKCAST_SERVING_STORE=true, the from-bars rows with false.
`--baseline-tree DIR` adds the store rows of another version's `service` package on the same
database (DIR from `git archive <commit> service alembic alembic.ini | tar -x -C DIR`; its
migrations must reach the same head). `--db FILE` keeps the seeded SQLite file and reuses it
when it exists (the setup then is not timed; it is migrated and prewarmed again, which costs
a read for states already fresh).
Targets: first forecast p50 <= 3 ms; cold p50 <= 20 ms at 16 connections; 100-ticker cold
batch <= 300 ms; universe cold <= 1 s, warm <= 50 ms.
Run: `make bench-cold` or `python bench/cold.py [--tickers N] [--seconds S] [--no-baseline-universe]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
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

from sqlalchemy import text

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


def first_forecasts(server: Server, tickers: list[str], warmup: str
                    ) -> tuple[list[float], list[float]]:
    """Milliseconds of each ticker's first forecast, one request at a time, and of as many
    `GET /healthz` on the same connection (the floor: the client, HTTP and the middleware).

    The client is the standard library's keep-alive HTTPConnection: httpx costs ≈ 0.4 ms a
    request more on this machine (healthz p50 0.62 against 0.24 ms), which would be counted in
    the server's figure.
    """
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    body = json.dumps(BODY).encode()

    def timed(method: str, path: str) -> float:
        started = time.perf_counter()
        conn.request(method, path, body if method == "POST" else None,
                     {"content-type": "application/json"} if method == "POST" else {})
        response = response_of(conn)
        if response != 200:
            sys.exit(f"{method} {path}: {response}")
        return (time.perf_counter() - started) * 1000

    try:
        timed("POST", f"/predict/{warmup}")
        out = [timed("POST", f"/predict/{ticker}") for ticker in tickers]
        floor = [timed("GET", "/healthz") for _ in tickers]
    finally:
        conn.close()
    return out, floor


def response_of(conn: http.client.HTTPConnection) -> int:
    """Read the whole response (the connection is reused) and give its status."""
    response = conn.getresponse()
    response.read()
    return response.status


def fresh_copy(db: Path, copy: Path, mode: str) -> None:
    """`copy` = the seeded database again (the last server's WAL files, if any, removed), its
    stored forecasts dropped for the stored-window column."""
    for leftover in (Path(f"{copy}-wal"), Path(f"{copy}-shm")):
        leftover.unlink(missing_ok=True)
    shutil.copyfile(db, copy)
    if mode == "window":
        drop_stored_forecasts(copy)


def drop_stored_forecasts(db: Path) -> None:
    """Band states without their forecasts, as stored before migration 0006: the store path
    then reads the window and runs onnxruntime (the in-run baseline of the stored forecast)."""
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("update band_states set quantiles = null, warnings = null"))
    engine.dispose()


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
    parser.add_argument("--rounds", type=int, default=3,
                        help="wrk rounds per 16-connection row (fresh server each): the median")
    parser.add_argument("--no-baseline-universe", action="store_true",
                        help="skip the universe batch from bars (about a minute or more)")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models",
                        help="models folder whose `current` is served")
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="a folder holding another version's `service` package: its store "
                             "rows are measured too, on the same database")
    parser.add_argument("--db", type=Path, default=None,
                        help="seeded SQLite file to keep and reuse (seeded when absent)")
    parser.add_argument("--only-c16", action="store_true",
                        help="only the 16-connection rows (one worker unless --c16-workers), "
                             "stored forecast (and stores before) columns: a short run of the "
                             "issue's c16 target")
    parser.add_argument("--c16-workers", type=lambda text: [int(w) for w in text.split(",") if w],
                        default=None, metavar="W,W",
                        help="uvicorn workers of the 16-connection rows (default 1,2; 1 with "
                             "--only-c16; an empty list: no 16-connection rows)")
    parser.add_argument("--first-pass", type=int, default=0, metavar="S",
                        help="wrk: S seconds over every ticker before each timed 16-connection "
                             "run (its first forecasts write the ledger; default: none, the "
                             "timed run includes them)")
    args = parser.parse_args()
    if args.c16_workers is None:
        args.c16_workers = [1] if args.only_c16 else [1, 2]
    load_start = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="stockcast-cold-"))
    rows: list[tuple[str, ...]] = []  # (what, store, [store before,] baseline, target)
    # store: the stored forecast (band state + the model's output, one row); window: the same
    # states without their outputs (as stored before migration 0006: the window is read and
    # onnxruntime runs), on a copy of the same database; bars: no stores (STORE=false).
    modes = [("store", "true", {}), ("window", "true", {}), ("bars", "false", {})]
    if args.only_c16:
        modes = modes[:1]
    if args.baseline_tree is not None:
        # Without the working folder on sys.path, PYTHONPATH's `service` is the one imported.
        modes.insert(1, ("before", "true", {"PYTHONSAFEPATH": "1",
                                            "PYTHONPATH": str(args.baseline_tree.resolve())}))
    try:
        db = args.db.resolve() if args.db is not None else workdir / "bench.db"
        url = f"sqlite:///{db}"
        if args.db is not None and db.exists():
            # Migrated and prewarmed for this tree and model (fresh states cost a read): a
            # file stored before 0006, or under another training profile, would otherwise
            # serve the "stored forecast" column through the window. And refreshed offline
            # again, as seed() does: once the last refresh is older than the refresh interval
            # (60 min), every first forecast would attempt one (a failed refresh written to
            # the database per ticker), which is not the cold path after a daily refresh.
            upgrade(url)
            engine = make_engine(url)
            try:
                refresh_tickers(engine, Settings(database_url=url, source="none",
                                                 model_dir=args.model_dir), None)
                predictor = Predictor.load(resolve_current(args.model_dir), "cpu", 1)
                print(prewarm(engine, predictor).summary())
                with engine.connect() as conn:
                    tickers, timings = [t.symbol for t in list_tickers(conn)], {}
            finally:
                engine.dispose()
        else:
            tickers, timings = seed(url, args.model_dir)
        n = min(args.tickers, len(tickers) - 101)
        first, batch_tickers = tickers[1 : n + 1], tickers[n + 1 : n + 101]
        # The universe from bars is timed whole (a minute or more), not cut at the batch bound.
        env = {"STOCKCAST_SOURCE": "none", "STOCKCAST_MODEL_DIR": str(args.model_dir),
               "STOCKCAST_LOG_LEVEL": "WARNING", "STOCKCAST_BATCH_DEADLINE_SECONDS": "0"}
        results: dict[str, dict[str, float]] = {mode: {} for mode, _, _ in modes}
        envs = {mode: {**env, "STOCKCAST_DATABASE_URL": f"sqlite:///{workdir / f'{mode}.db'}",
                       "STOCKCAST_SERVING_STORE": flag, **extra} for mode, flag, extra in modes}
        for mode, _, _ in [] if args.only_c16 else modes:
            # Each column on its own copy of the seeded database: the ledger rows one records
            # would make another's first forecasts cheaper (already recorded).
            copy = workdir / f"{mode}.db"
            fresh_copy(db, copy, mode)
            mode_env = envs[mode]
            with Server(mode_env, 1) as server:
                ms, floor = first_forecasts(server, first, tickers[0])
                results[mode]["first p50"], results[mode]["first p99"] = pct(ms, 50), pct(ms, 99)
                results[mode]["healthz p50"] = pct(floor, 50)
                results[mode]["batch100"] = batch(server, batch_tickers)
            if mode != "bars" or not args.no_baseline_universe:
                with Server(mode_env, 1) as server:
                    results[mode]["universe cold"] = batch(server, tickers, warmup=tickers[0])
                    results[mode]["universe warm"] = batch(server, tickers)
        # One uvicorn worker, and (the stores only) two: one per core of this machine. A 5-8 s
        # wrk run swings 2x with the machine's other jobs: --rounds of them, each on a fresh
        # server over a fresh copy, the columns taking turns within a round (a drift of the
        # machine's speed then reaches every column alike).
        for workers in args.c16_workers or []:
            key = "c16" if workers == 1 else "c16w2"
            columns = [m for m in envs if workers == 1 or m != "bars"]
            runs: dict[str, list] = {m: [] for m in columns}
            for round_ in range(args.rounds):
                for mode in columns if round_ % 2 == 0 else columns[::-1]:
                    if mode == "bars" and round_ > 0:  # seconds per request: one round
                        continue
                    copy = workdir / f"{mode}.db"
                    fresh_copy(db, copy, mode)
                    with Server({**envs[mode], "STOCKCAST_FORECAST_CACHE_SIZE": "0"},
                                workers) as server:
                        for ticker in tickers[:4]:  # each worker's first request is untimed
                            httpx.post(f"{server.url}/predict/{ticker}", json=BODY, timeout=60)
                        if args.first_pass:  # every ticker once: the ledger written
                            drive_wrk("cold", server.url, [f"/predict/{t}" for t in tickers],
                                      args.first_pass)
                        cpu = server.cpu_seconds()
                        run = drive_wrk("cold", server.url, [f"/predict/{t}" for t in tickers],
                                        args.seconds)
                        run.cpu_us = (server.cpu_seconds() - cpu) / run.requests * 1e6
                        runs[mode].append(run)
            for mode, done in runs.items():
                p50s = [r.p50_ms for r in done]
                results[mode][f"{key} p50"] = float(np.median(p50s))
                results[mode][f"{key} p50 range"] = (min(p50s), max(p50s))
                results[mode][f"{key} p99"] = float(np.median([r.p99_ms for r in done]))
                results[mode][f"{key} rps"] = float(np.median([r.throughput for r in done]))
                results[mode][f"{key} cpu"] = float(np.median([r.cpu_us for r in done]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    columns = [mode for mode, _, _ in modes]

    def both(key: str, fmt: str = "{:.1f}") -> tuple[str, ...]:
        return tuple(fmt.format(results[m][key]) if key in results[m] else "–" for m in columns)

    def spread(key: str) -> tuple[str, ...]:
        """The median round and the rounds' range."""
        cells = []
        for m in columns:
            if key not in results[m]:
                cells.append("–")
                continue
            lo, hi = results[m][f"{key} range"]
            cells.append(f"{results[m][key]:.1f} ({lo:.0f}-{hi:.0f})" if lo != hi
                         else f"{results[m][key]:.1f}")
        return tuple(cells)

    rows = [
        (f"first forecast of a ticker, p50 ms ({n} tickers)", *both("first p50"), "<= 3"),
        ("first forecast of a ticker, p99 ms", *both("first p99"), ""),
        ("`GET /healthz` p50 ms, same client (the floor)", *both("healthz p50", "{:.2f}"), ""),
        ("100-ticker cold batch, ms", *both("batch100", "{:.0f}"), "<= 300"),
        (f"universe ({len(tickers)} tickers) cold, ms", *both("universe cold", "{:.0f}"),
         "<= 1000"),
        ("universe warm, ms", *both("universe warm", "{:.0f}"), "<= 50"),
        ("cold at 16 connections (wrk), p50 ms, median round (range)", *spread("c16 p50"),
         "<= 20"),
        ("cold at 16 connections (wrk), p99 ms", *both("c16 p99"), ""),
        ("cold at 16 connections (wrk), req/s", *both("c16 rps", "{:.0f}"), ""),
        ("cold at 16 connections, server CPU us/request", *both("c16 cpu", "{:.0f}"), ""),
        ("cold at 16 connections, 2 workers, p50 ms, median round", *spread("c16w2 p50"),
         "<= 20"),
        ("cold at 16 connections, 2 workers, p99 ms", *both("c16w2 p99"), ""),
        ("cold at 16 connections, 2 workers, req/s", *both("c16w2 rps", "{:.0f}"), ""),
        ("cold at 16 connections, 2 workers, server CPU us/request", *both("c16w2 cpu", "{:.0f}"),
         ""),
    ]
    load = os.getloadavg()
    print(f"\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs; load average "
          f"at the start {load_start[0]:.1f} / {load_start[1]:.1f} / {load_start[2]:.1f}, at the "
          f"end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")
    print("setup: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    titles = {"store": "stored forecast", "window": "stored window", "before": "stores before",
              "bars": "from bars"}
    heads = [titles[m] for m in columns] + ["target"]
    print(f"\n| {'cold path':<52} | " + " | ".join(f"{h:>9}" for h in heads) + " |")
    print(f"|{'-' * 54}|" + "|".join("-" * (max(9, len(h)) + 2) for h in heads) + "|")
    for what, *cells in rows:
        print(f"| {what:<52} | " + " | ".join(f"{c:>{max(9, len(h))}}"
                                              for c, h in zip(cells, heads)) + " |")


if __name__ == "__main__":
    main()
