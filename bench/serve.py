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
Targets: warm throughput >= 0.6 x trivial; warm p99 <= 25 ms; cold p50 <= 20 ms.
Run: `make bench-serve` or `python bench/serve.py [--workers W] [--seconds S] [--model-dir D]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
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

    def __init__(self, env: dict[str, str], workers: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
                    "--port", str(self.port), "--workers", str(workers), "--no-access-log"]
        self.env = {**os.environ, **env}

    def __enter__(self) -> Self:
        # The server's log goes to a file: a pipe nobody reads would block it once full.
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=self.log,
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
    trivial = rows[0]
    header = (f"| {'endpoint':<34} | {'requests':>8} | {'req/s':>7} | {'p50 ms':>7} | "
              f"{'p99 ms':>7} | {'x trivial':>9} | {'errors':>6} |")
    lines = [title, header, "|" + "|".join("-" * w for w in (36, 10, 9, 9, 9, 11, 8)) + "|"]
    for r in rows:
        lines.append(f"| {r.name:<34} | {r.requests:>8} | {r.throughput:>7.0f} | "
                     f"{r.p50_ms:>7.1f} | {r.p99_ms:>7.1f} | "
                     f"{r.throughput / trivial.throughput:>9.2f} | {r.errors:>6} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="httpx: trivial/warm")
    parser.add_argument("--cold-requests", type=int, default=600, help="httpx: cold")
    parser.add_argument("--seconds", type=int, default=8, help="wrk: duration per endpoint")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models",
                        help="models folder whose `current` is served")
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None

    workdir = Path(tempfile.mkdtemp(prefix="stockcast-bench-"))
    try:
        url = f"sqlite:///{workdir / 'bench.db'}"
        tickers = seed_database(url)
        env = {"STOCKCAST_DATABASE_URL": url, "STOCKCAST_SOURCE": "none",
               "STOCKCAST_MODEL_DIR": str(args.model_dir), "STOCKCAST_LOG_LEVEL": "WARNING"}
        predict_paths = [p for _, p in requests_for(tickers, len(tickers))]
        httpx_rows, wrk_rows = [], []
        with Server(env, args.workers) as server:
            model = httpx.get(f"{server.url}/models/current").json()
            # Warm-up: each worker's first request per ticker computes (and records the
            # offline source's failed refresh); later ones are cache hits.
            asyncio.run(drive_httpx("warm-up", server.url, requests_for(tickers, 400)))
            asyncio.run(drive_httpx("warm-up", server.url, requests_for(None, 400)))
            httpx_rows.append(asyncio.run(drive_httpx(
                "GET /healthz (trivial)", server.url, requests_for(None, args.requests))))
            httpx_rows.append(asyncio.run(drive_httpx(
                "POST /predict/{ticker} warm", server.url,
                requests_for(tickers, args.requests))))
            if use_wrk:
                wrk_rows.append(drive_wrk("GET /healthz (trivial)", server.url, ["/healthz"],
                                          args.seconds))
                wrk_rows.append(drive_wrk("POST /predict/{ticker} warm", server.url,
                                          predict_paths, args.seconds))
        with Server({**env, "STOCKCAST_FORECAST_CACHE_SIZE": "0"}, args.workers) as server:
            asyncio.run(drive_httpx("warm-up", server.url, requests_for(tickers, 48)))
            httpx_rows.append(asyncio.run(drive_httpx(
                "POST /predict/{ticker} cold", server.url,
                requests_for(tickers, args.cold_requests))))
            single = asyncio.run(drive_httpx(
                "POST /predict/{ticker} cold, 1 conn", server.url, requests_for(tickers, 200),
                concurrency=1))
            if use_wrk:
                wrk_rows.append(drive_wrk("POST /predict/{ticker} cold", server.url,
                                          predict_paths, args.seconds))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    load = os.getloadavg()[0]
    print(f"model {model['version']} (window {model['window']}, horizon {model['horizon']}); "
          f"{len(tickers)} tickers; {args.workers} uvicorn worker(s); {os.cpu_count()} CPUs "
          f"(1-min load average at the end {load:.1f}); {CONCURRENCY} connections\n")
    if wrk_rows:
        print(table("wrk (C load generator, 2 threads):", wrk_rows))
        print()
    print(table("async httpx client (Python load generator):", [*httpx_rows, single]))
    warm, cold = (wrk_rows or httpx_rows)[1], (wrk_rows or httpx_rows)[2]
    trivial = (wrk_rows or httpx_rows)[0]
    print(f"\ntargets ({'wrk' if wrk_rows else 'httpx'} rows): warm/trivial "
          f"{warm.throughput / trivial.throughput:.2f} (>= 0.6), warm p99 {warm.p99_ms:.1f} ms "
          f"(<= 25), cold p50 {cold.p50_ms:.1f} ms (<= 20); cold service time, one connection: "
          f"p50 {single.p50_ms:.1f} ms")


if __name__ == "__main__":
    main()
