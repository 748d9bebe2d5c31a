"""One settings object for the whole service; env prefix STOCKCAST_ (alembic reads it too)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Runtime configuration, read from STOCKCAST_* environment variables (and .env)."""

    model_config = SettingsConfigDict(env_prefix="STOCKCAST_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///./stockcast.db"
    # Where missing bars come from: yfinance (network) or none (cache only, offline).
    source: Literal["yfinance", "none"] = "yfinance"
    model_dir: Path = PROJECT_ROOT / "models"
    data_dir: Path = PROJECT_ROOT.parent / "shared" / "data"
    yfinance_cache_dir: Path = PROJECT_ROOT / "var" / "yfinance-cache"
    log_level: str = "INFO"
    # Bars older than this many calendar days trigger an incremental refresh.
    refresh_after_days: int = Field(default=1, ge=0)
    ort_provider: Literal["auto", "cpu", "cuda"] = "auto"
    ort_intra_op_threads: int = Field(default_factory=lambda: max(1, len(os.sched_getaffinity(0))))
    api_key: str | None = None
    # Computed forecasts kept in memory (LRU); 0 disables the cache (the serve bench's cold run).
    forecast_cache_size: int = Field(default=4096, ge=0)
    # How long a request may reuse another's check of a ticker's last bar date before asking the
    # DB again: a bar written by another process reaches forecasts within this many seconds.
    bar_check_ttl_seconds: float = Field(default=5.0, ge=0)
    # Least time between two upstream refreshes of one ticker (the BarCache throttle): after a
    # failed one, cached bars are served with stale=true, keeping an offline source off the
    # request path.
    refresh_interval_minutes: float = Field(default=60.0, gt=0)
    # After the source fails (offline, rate-limited), it is not asked again for this long, for
    # any ticker: requests answer from the cache at once instead of each waiting on retries.
    source_cooldown_seconds: float = Field(default=300.0, ge=0)
    # Each worker checks models/current this often (one stat) and loads the artifact it names
    # when it changed: POST /admin/reload reaches one worker only. 0 disables the check.
    model_check_interval_seconds: float = Field(default=2.0, ge=0)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (created once; tests build their own Settings)."""
    return Settings()
