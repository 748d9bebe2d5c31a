"""Serving benchmark: throughput and latency of POST /predict/{ticker}, warm and cold, against
GET /healthz (a trivial JSON endpoint of the same app: the ceiling), at 16 concurrent connections.

Setup, all in one run: a temporary SQLite cache seeded with 8 tickers of the shared dataset
(bokeh-sampledata's stocks where it is absent), the shipped model (models/current), and
`stockcast serve` in a subprocess on 127.0.0.1 with the source off (offline: a ticker is served
stale after one failed refresh, which the BarCache then throttles for an hour).
- trivial: GET /healthz.
- warm:    POST /predict/{ticker} {"horizon": 1}, the 8 tickers in turn, forecasts cached:
           two in-memory lookups on the event loop (plus one DB check per ticker per second).
- cold:    the same requests to a second server started with STOCKCAST_FORECAST_CACHE_SIZE=0
           (no forecast cache, no shared bar check): each request reads its bars from the DB,
           builds features and runs onnxruntime. An ordinary setting, not a debug hook.
- cold, one connection: the cold service time without queueing behind 15 other requests.
Load generators, both on the same 2 cores as the server: an async httpx client (Python; it
saturates a core itself, so it caps every row near its own ceiling) and, when Debian's `wrk` is
installed, wrk (C, 2 threads), whose figures are the server's.
wrk alternates trivial and warm for --rounds rounds (the machine's load drifts; each round's
ratio is of two runs seconds apart) and the targets use the median round.
--baseline-tree DIR: a second server runs the code in DIR (an unpacked older commit, e.g.
`git archive <commit> | tar -x -C DIR`), driven in the same rounds: the in-run baseline of a
change to the serving path. --skip-cold leaves out the cold server (bench/cold.py measures it).
Targets: warm throughput >= 0.8 x trivial; warm p99 <= 15 ms; cold p50 <= 20 ms.
Run: `make bench-serve` or `python bench/serve.py [--workers W] [--seconds S] [--rounds R]
[--model-dir D] [--baseline-tree DIR] [--skip-cold]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.cli import seed_dataset_path
from service.db.session import make_engine, upgrade
from service.sources.csv import read_bars_file
from service.sources.ingest import ingest_frame

TICKERS = ("AAPL", "MSFT", "AMZN", "JPM", "XOM", "GE", "KO", "WMT")
CONCURRENCY = 16
BODY = '{"horizon": 1}'


@dataclass
class Row:
    """One endpoint under one load generator."""

    name: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None = None  # the server's CPU time per request (all its processes)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def percentile(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, round(q / 100 * (len(data) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_database(url: str) -> list[str]:
    """Migrate and load TICKERS (or the first 8 tickers of the fallback file)."""
    path = seed_dataset_path()
    if path is None:
        sys.exit("no offline bars: need ../shared/data or bokeh-sampledata (see README)")
    upgrade(url)
    frame = read_bars_file(path)
    present = set(frame["ticker"])
    tickers = [t for t in TICKERS if t in present] or sorted(present)[:8]
    engine = make_engine(url)
    try:
        ingest_frame(engine, frame[frame["ticker"].isin(tickers)], source="csv")
    finally:
        engine.dispose()
    return tickers


class Server:
    """`stockcast serve` in a subprocess (its own session), stopped on exit."""

    def __init__(self, env: dict[str, str], workers: int, tree: Path = ROOT):
        self.tree = tree  # whose code runs (`python -m` imports the package from its cwd)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
                    "--port", str(self.port), "--workers", str(workers), "--no-access-log"]
        self.env = {**os.environ, **env}

    def __enter__(self) -> Self:
        # The server's log goes to a file: a pipe nobody reads would block it once full.
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, cwd=self.tree, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"server exited:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.__exit__()
        sys.exit("server not ready after 120 s")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's processes so far (its process group)."""
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[2]) == self.proc.pid:  # pgrp: the session's leader is the server
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is not None:
            print(f"server died during the run:\n{self.tail()}", file=sys.stderr)
        os.killpg(self.proc.pid, signal.SIGTERM)  # uvicorn and its worker processes
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def requests_for(tickers: list[str] | None, n: int) -> list[tuple[str, str]]:
    """(method, path) pairs: /healthz, or the tickers' predict paths in turn."""
    if tickers is None:
        return [("GET", "/healthz")] * n
    return [("POST", f"/predict/{tickers[i % len(tickers)]}") for i in range(n)]


async def drive_httpx(name: str, url: str, requests: list[tuple[str, str]],
                      concurrency: int = CONCURRENCY) -> Row:
    """Send the requests over `concurrency` keep-alive connections, one in flight on each."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors = 0
    queue = iter(requests)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def connection():
            nonlocal errors
            for method, path in queue:
                started = time.perf_counter()
                response = await client.request(
                    method, path, content=BODY if method == "POST" else None,
                    headers={"content-type": "application/json"})
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Row(name, len(requests), seconds, percentile(latencies, 50),
               percentile(latencies, 99), errors)


WRK_SCRIPT = """
local paths = {%s}
local i = 0
request = function()
  i = i + 1
  local path = paths[(i %% #paths) + 1]
  if path == "/healthz" then return wrk.format("GET", path) end
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, '%s')
end
"""


def drive_wrk(name: str, url: str, paths: list[str], seconds: int) -> Row:
    """wrk -t2 -c16 for `seconds` over the paths in turn; percentiles as wrk reports them."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT % (", ".join(f'"{p}"' for p in paths), BODY))
        script.flush()
        out = subprocess.run(["wrk", "-t2", f"-c{CONCURRENCY}", f"-d{seconds}s", "--latency",
                              "-s", script.name, url], capture_output=True, text=True,
                             check=True).stdout
    stats: dict[str, str] = {}
    n = errors = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            stats[parts[0]] = parts[1]
        elif "requests in" in line:
            n = int(parts[0])
        elif line.strip().startswith("Non-2xx"):
            errors = int(parts[-1])
        elif line.strip().startswith("Requests/sec:"):
            rps = float(parts[1])
    return Row(name, n, n / rps, _ms(stats["50%"]), _ms(stats["99%"]), errors)


def _ms(text: str) -> float:
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"not a wrk duration: {text}")


def table(title: str, rows: list[Row]) -> str:
    """Rows with their throughput relative to the latest trivial row above them."""
    header = (f"| {'endpoint':<34} | {'requests':>8} | {'req/s':>7} | {'p50 ms':>7} | "
              f"{'p99 ms':>7} | {'x trivial':>9} | {'errors':>6} | {'server CPU us/req':>17} |")
    lines = [title, header,
             "|" + "|".join("-" * w for w in (36, 10, 9, 9, 9, 11, 8, 19)) + "|"]
    trivial = rows[0]
    for r in rows:
        trivial = r if "trivial" in r.name else trivial
        cpu = f"{r.cpu_us:.0f}" if r.cpu_us is not None else "-"
        lines.append(f"| {r.name:<34} | {r.requests:>8} | {r.throughput:>7.0f} | "
                     f"{r.p50_ms:>7.1f} | {r.p99_ms:>7.1f} | "
                     f"{r.throughput / trivial.throughput:>9.2f} | {r.errors:>6} | {cpu:>17} |")
    return "\n".join(lines)


def warm_up(url: str, tickers: list[str]) -> None:
    """Each worker's first request per ticker computes (and records the offline source's failed
    refresh); later ones are cache hits."""
    asyncio.run(drive_httpx("warm-up", url, requests_for(tickers, 400)))
    asyncio.run(drive_httpx("warm-up", url, requests_for(None, 400)))


def wrk_rounds(servers: dict[str, Server], predict_paths: list[str], seconds: int,
               rounds: int) -> dict[str, list[tuple[Row, Row]]]:
    """Per server, `rounds` (trivial, warm) wrk pairs, the servers taking turns in each round.

    Each row also gets the server's CPU time per request: unlike req/s, it hardly moves with
    the other jobs on the machine.
    """
    out: dict[str, list[tuple[Row, Row]]] = {name: [] for name in servers}
    for _ in range(rounds):
        for name, server in servers.items():
            pair = []
            for row_name, paths in (("GET /healthz (trivial)", ["/healthz"]),
                                    ("POST /predict/{ticker} warm", predict_paths)):
                cpu = server.cpu_seconds()
                row = drive_wrk(row_name, server.url, paths, seconds)
                row.cpu_us = (server.cpu_seconds() - cpu) / row.requests * 1e6
                pair.append(row)
            out[name].append((pair[0], pair[1]))
    return out


def median_round(pairs: list[tuple[Row, Row]]) -> tuple[Row, Row]:
    """The round whose warm/trivial ratio is the median one."""
    ranked = sorted(pairs, key=lambda p: p[1].throughput / p[0].throughput)
    return ranked[(len(ranked) - 1) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="httpx: trivial/warm")
    parser.add_argument("--cold-requests", type=int, default=600, help="httpx: cold")
    parser.add_argument("--seconds", type=int, default=8, help="wrk: duration per run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk: trivial/warm rounds")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models",
                        help="models folder whose `current` is served")
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="also serve the code in this folder (an older commit), in turn")
    parser.add_argument("--skip-cold", action="store_true", help="no cold server")
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None

    workdir = Path(tempfile.mkdtemp(prefix="stockcast-bench-"))
    try:
        url = f"sqlite:///{workdir / 'bench.db'}"
        tickers = seed_database(url)
        env = {"STOCKCAST_DATABASE_URL": url, "STOCKCAST_SOURCE": "none",
               "STOCKCAST_MODEL_DIR": str(args.model_dir), "STOCKCAST_LOG_LEVEL": "WARNING"}
        predict_paths = [p for _, p in requests_for(tickers, len(tickers))]
        httpx_rows, rounds, single = [], {}, None
        trees = {"this tree": ROOT}
        if args.baseline_tree is not None:
            trees["baseline tree"] = args.baseline_tree.resolve()
        with contextlib.ExitStack() as stack:
            servers = {name: stack.enter_context(Server(env, args.workers, tree))
                       for name, tree in trees.items()}
            server = servers["this tree"]
            model = httpx.get(f"{server.url}/models/current").json()
            for s in servers.values():
                warm_up(s.url, tickers)
            httpx_rows.append(asyncio.run(drive_httpx(
                "GET /healthz (trivial)", server.url, requests_for(None, args.requests))))
            httpx_rows.append(asyncio.run(drive_httpx(
                "POST /predict/{ticker} warm", server.url,
                requests_for(tickers, args.requests))))
            if use_wrk:
                rounds = wrk_rounds(servers, predict_paths,
                                    args.seconds, args.rounds)
        cold_wrk = None
        if not args.skip_cold:
            with Server({**env, "STOCKCAST_FORECAST_CACHE_SIZE": "0"}, args.workers) as server:
                asyncio.run(drive_httpx("warm-up", server.url, requests_for(tickers, 48)))
                httpx_rows.append(asyncio.run(drive_httpx(
                    "POST /predict/{ticker} cold", server.url,
                    requests_for(tickers, args.cold_requests))))
                single = asyncio.run(drive_httpx(
                    "POST /predict/{ticker} cold, 1 conn", server.url,
                    requests_for(tickers, 200), concurrency=1))
                if use_wrk:
                    cold_wrk = drive_wrk("POST /predict/{ticker} cold", server.url,
                                         predict_paths, args.seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    load = os.getloadavg()
    print(f"model {model['version']} (window {model['window']}, horizon {model['horizon']}); "
          f"{len(tickers)} tickers; {args.workers} uvicorn worker(s); {os.cpu_count()} CPUs "
          f"(load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}); "
          f"{CONCURRENCY} connections\n")
    for name, pairs in rounds.items():
        tree = trees[name]
        print(table(f"wrk (C load generator, 2 threads), {name} ({tree}), {args.rounds} rounds "
                    f"of {args.seconds} s:", [row for pair in pairs for row in pair]))
        ratios = [w.throughput / t.throughput for t, w in pairs]
        cpu = [t.cpu_us / w.cpu_us for t, w in pairs]
        print(f"warm/trivial req/s per round: {' '.join(f'{r:.2f}' for r in ratios)} "
              f"(median {statistics.median(ratios):.2f}); trivial/warm server CPU per request: "
              f"{' '.join(f'{r:.2f}' for r in cpu)} (median {statistics.median(cpu):.2f}); "
              f"warm p99 per round: {' '.join(f'{w.p99_ms:.1f}' for _, w in pairs)} ms\n")
    if cold_wrk is not None:
        print(table("wrk, cold server:", [median_round(rounds["this tree"])[0], cold_wrk]))
        print()
    print(table("async httpx client (Python load generator):",
                [*httpx_rows, *([single] if single else [])]))
    if rounds:
        trivial, warm = median_round(rounds["this tree"])
    else:
        trivial, warm = httpx_rows[0], httpx_rows[1]
    line = (f"\ntargets ({'wrk, median round' if rounds else 'httpx'}): warm/trivial "
            f"{warm.throughput / trivial.throughput:.2f} (>= 0.8), warm p99 {warm.p99_ms:.1f} ms "
            f"(<= 15)")
    if single is not None:
        cold = cold_wrk or httpx_rows[2]
        line += (f", cold p50 {cold.p50_ms:.1f} ms (<= 20); cold service time, one "
                 f"connection: p50 {single.p50_ms:.1f} ms")
    print(line)


if __name__ == "__main__":
    main()
