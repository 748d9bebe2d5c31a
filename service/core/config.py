"""One settings object for the whole service; env prefix STOCKCAST_ (alembic reads it too)."""

from __future__ import annotations

import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # service/core/config.py -> the checkout
CGROUP_ROOT = Path("/sys/fs/cgroup")

# The names in service.sources.base.SOURCES (the registry, a layer above: test_source_registry
# keeps the two equal), so a STOCKCAST_SOURCE no source answers to fails with the settings.
SourceName = Literal["yfinance", "none"]
# The level names both logging and uvicorn take (logging's aliases WARN, FATAL and NOTSET are
# not uvicorn's), in any case.
LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)

# Upper bounds of the durations below. A request's wait is bounded under a proxy's usual 60 s:
# past it the client has gone and never sees the 503 the bound was for.
REQUEST_BOUND_SECONDS = 60.0
HOUR_SECONDS = 3600.0
DAY_SECONDS = 86400.0
MIN_MODEL_CHECK_SECONDS = 0.1
# Upper bounds of the sizes below, each past what any use needs and short of what breaks.
# A lane wider than anyio's shared threadpool (its 40 threads: forecast_threads 0) is no lane.
SHARED_THREADPOOL = 40
# A 30-day forecast held in memory is ~25 KB (measured; its rendered answer besides): at the
# bound a worker may hold ~2.5 GB; the universe at every horizon is 489 x 30 = 14,670 entries.
MAX_FORECAST_CACHE = 100_000
# A request body is read whole into memory; the largest the API takes, a batch of 500
# tickers, is ~10 KB.
MAX_BODY_BYTES = 64 * 1024 * 1024


def _cgroup_cpu_limit(cgroup_root: Path) -> int | None:
    """CPUs allowed by a cgroup CPU quota, rounded up; None when there is no quota."""
    try:
        # cgroup v2: "max 100000" (no limit) or "<quota> <period>" in microseconds.
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        # cgroup v1: the cpu controller's own folder; a quota of -1 means no limit.
        for controller in ("cpu", "cpu,cpuacct"):
            folder = cgroup_root / controller
            try:
                quota = (folder / "cpu.cfs_quota_us").read_text().strip()
                period = (folder / "cpu.cfs_period_us").read_text().strip()
                break
            except OSError:
                continue
        else:
            return None
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max"
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return max(1, math.ceil(quota_us / period_us))


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: min(its CPU affinity, ceil(cgroup CPU quota / period)).

    A container limited with `--cpus 2` on a 16-core host still sees 16 CPUs in its affinity;
    only the cgroup quota says 2.
    """
    cpus = len(os.sched_getaffinity(0))
    limit = _cgroup_cpu_limit(cgroup_root)
    return max(1, min(cpus, limit) if limit is not None else cpus)


def _upper(value):
    return value.upper() if isinstance(value, str) else value


# An origin as a browser sends it: scheme://host[:port], nothing after (no path, no slash).
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$", re.IGNORECASE)


_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def _origins(value):
    """STOCKCAST_CORS_ORIGINS: a comma list of origins, or `*` (any); empty: none. Each is
    written as a browser's Origin header writes it (lower case, no default port), or it would
    match none."""
    if isinstance(value, str):
        value = [o.strip() for o in value.split(",") if o.strip()]
    origins = []
    for origin in value:
        if origin != "*" and not _ORIGIN.match(origin):
            raise ValueError(
                f"{origin!r} is no origin: write scheme://host[:port] as a browser sends it "
                "(no path, no trailing slash), or * for any")
        origin = origin.lower()
        scheme = origin.partition(":")[0]
        origins.append(origin.removesuffix(_DEFAULT_PORTS.get(scheme, "\0")))
    origins = tuple(origins)
    if "*" in origins and len(origins) > 1:
        raise ValueError("* (any origin) with others: give * alone, or the origins")
    return origins


class Settings(BaseSettings):
    """Runtime configuration, read from STOCKCAST_* environment variables (and .env)."""

    # No inf or nan (nor "1e400", an inf): each duration below is a bound or an interval that
    # some thread sleeps, waits or converts to an int or a timedelta.
    model_config = SettingsConfigDict(env_prefix="STOCKCAST_", env_file=".env", extra="ignore",
                                      allow_inf_nan=False)

    database_url: str = "sqlite:///./stockcast.db"
    # Where missing bars come from: yfinance (network) or none (cache only, offline).
    source: SourceName = "yfinance"
    model_dir: Path = PROJECT_ROOT / "models"
    data_dir: Path = PROJECT_ROOT.parent / "shared" / "data"
    yfinance_cache_dir: Path = PROJECT_ROOT / "var" / "yfinance-cache"
    log_level: Annotated[LogLevel, BeforeValidator(_upper)] = "INFO"
    ort_provider: Literal["auto", "cpu", "cuda"] = "auto"
    ort_intra_op_threads: int = Field(
        default_factory=available_cpus, ge=1,
        description="At least 1: onnxruntime's 0 (its own default) sizes the pool from the "
                    "host's cores, not the container's CPU limit.")
    api_key: str | None = None
    # Browser pages on these origins may call the API (CORS, Starlette's CORSMiddleware): a comma
    # list of scheme://host[:port], or * for any; empty (the default): same-origin pages only.
    cors_origins: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_origins)] = Field(
        default=(), description="Comma list of origins (scheme://host[:port]) or *; empty: "
                                "same-origin only.")
    # Computed forecasts kept in memory (LRU); 0 disables the cache (the serve bench's cold run).
    forecast_cache_size: int = Field(
        default=4096, ge=0, le=MAX_FORECAST_CACHE,
        description="At most 100,000: a 30-day forecast is ~25 KB, so ~2.5 GB per worker; a "
                    "cap past memory is no cap.")
    # How long a request may reuse another's check of a ticker's last bar date before asking the
    # DB again: a bar written by another process reaches forecasts within this many seconds.
    bar_check_ttl_seconds: float = Field(
        default=5.0, ge=0, le=HOUR_SECONDS,
        description="At most an hour: a bar another process wrote reaches forecasts within it.")
    # One-ticker cold forecasts compute on this many threads at once (service.api.lane); a
    # request waits at most forecast_wait_seconds for a turn (then 503 busy): under the 3 s
    # in which a fault answers, above the 2 s a failing database takes to say so (connect,
    # statement bounds). 0: the shared threadpool of 40, as before the lane.
    forecast_threads: int = Field(
        default=2, ge=0, le=SHARED_THREADPOOL,
        description="At most 40, the shared threadpool's size (what 0 says): a wider lane is "
                    "no lane.")
    forecast_wait_seconds: float = Field(
        default=2.5, gt=0, le=REQUEST_BOUND_SECONDS,
        description="A request's wait: at most a proxy's usual 60 s.")
    # A batch (POST /predict) stops computing once this many seconds have passed since it
    # began (checked between tickers' checks and between chunks of forecasts from bars) and is
    # answered 503 busy; what it computed is kept (memory, band states), so a retry resumes.
    # Under a proxy's usual 60 s; the universe from the stores takes well under 1 s. 0: unbounded.
    batch_deadline_seconds: float = Field(
        default=30.0, ge=0, le=HOUR_SECONDS,
        description="At most an hour (489 cold tickers took 119 s); 0 already says unbounded.")
    # Cold forecasts read the serving stores (feature rows, band states) where they are fresh;
    # false: always from bars (the cold bench's in-run baseline). Nothing served changes.
    serving_store: bool = True
    # Least time between two upstream refreshes of one ticker (the BarCache throttle): after a
    # failed one, cached bars are served with stale=true, keeping an offline source off the
    # request path.
    refresh_interval_minutes: float = Field(
        default=60.0, gt=0, le=10 * 365 * 24 * 60,
        description="At most ten years, which a timedelta holds; no refresh at all is "
                    "STOCKCAST_SOURCE=none.")
    # After the source fails (offline, rate-limited), it is not asked again for this long, for
    # any ticker: requests answer from the cache at once instead of each waiting on retries.
    source_cooldown_seconds: float = Field(
        default=300.0, ge=0, le=DAY_SECONDS,
        description="At most a day: a source back up is asked again within it.")
    # Each worker checks models/current this often (one stat) and loads the artifact it names
    # when it changed: POST /admin/reload reaches one worker only. 0 disables the check.
    model_check_interval_seconds: float = Field(
        default=2.0, ge=0, le=HOUR_SECONDS,
        description="0 (off), or from 0.1 s (shorter spins a core on stat calls) to an hour "
                    "(a promoted model reaches every worker within it).")
    # Request bodies larger than this are refused with 413 before they are read in full.
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=0, le=MAX_BODY_BYTES,
        description="At most 64 MiB: a body is read whole into memory (a batch of 500 tickers "
                    "is ~10 KB).")
    # Bounds on the API's database calls (service.db.guard): every failure is a 503 in < 3 s.
    # Each at most a proxy's usual 60 s (REQUEST_BOUND_SECONDS).
    db_connect_timeout_seconds: int = Field(default=2, ge=2, le=REQUEST_BOUND_SECONDS)  # libpq: >= 2
    db_ping_timeout_seconds: float = Field(default=0.5, gt=0, le=REQUEST_BOUND_SECONDS)
    db_statement_timeout_seconds: float = Field(default=2.0, gt=0, le=REQUEST_BOUND_SECONDS)
    db_pool_timeout_seconds: float = Field(default=1.0, gt=0, le=REQUEST_BOUND_SECONDS)
    # After the database failed to connect or answer in time, checkouts fail at once this long.
    db_retry_seconds: float = Field(
        default=1.0, ge=0, le=REQUEST_BOUND_SECONDS,
        description="At most 60 s: a database back up is refused for as long.")
    # How often requests re-read the schema revision (a downgrade or an emptied database).
    schema_check_interval_seconds: float = Field(
        default=5.0, ge=0, le=HOUR_SECONDS,
        description="At most an hour: a database migrated down is seen within it.")

    @field_validator("model_check_interval_seconds")
    @classmethod
    def _off_or_not_spinning(cls, seconds: float) -> float:
        """0 turns the check off; a positive interval under a tenth of a second is a busy loop."""
        if 0 < seconds < MIN_MODEL_CHECK_SECONDS:
            raise ValueError(f"0 (no check) or at least {MIN_MODEL_CHECK_SECONDS} s")
        return seconds


def setting_errors(exc: ValidationError) -> list[str]:
    """What a Settings() that failed says, one line per bad value: `error: STOCKCAST_<FIELD>:
    <pydantic's message>` (the CLI's and the app factory's answer, not pydantic's traceback)."""
    return [f"error: STOCKCAST_{str(error['loc'][0]).upper()}: {error['msg']}"
            for error in exc.errors()]


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (created once; tests build their own Settings)."""
    return Settings()
