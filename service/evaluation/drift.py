"""Drift of the served model's inputs: per-feature PSI of the latest RECENT_SESSIONS feature rows
of its training tickers against their rows in its training segment, from the cached bars."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pandas as pd
from sqlalchemy import Engine

from service.artifacts.manifest import Manifest
from service.db.bars import read_bars_many
from service.forecasting.drift import RECENT_SESSIONS, feature_psi
from service.forecasting.features import build_features_many


def model_drift(engine: Engine, manifest: Manifest,
                recent_sessions: int = RECENT_SESSIONS) -> dict:
    """{"recent_sessions", "recent_end", "psi": {feature: PSI}}; psi empty without bars."""
    bars = read_bars_many(engine, list(manifest.tickers))
    if bars.empty:
        return {"recent_sessions": recent_sessions, "recent_end": None, "psi": {}}
    features = build_features_many(bars, manifest.spec).dropna()
    dates = pd.to_datetime(features["date"])
    first, last = (pd.Timestamp(d) for d in manifest.split.train)
    columns = list(manifest.spec.features)
    reference = features.loc[(dates >= first).to_numpy() & (dates <= last).to_numpy(), columns]
    recent_dates = sorted(set(dates))[-recent_sessions:]
    recent = features.loc[dates.isin(recent_dates).to_numpy(), columns]
    return {"recent_sessions": len(recent_dates),
            "recent_end": recent_dates[-1].date().isoformat() if recent_dates else None,
            "psi": feature_psi(reference, recent)}


class DriftCache:
    """model_drift per model version, recomputed at most every `ttl` seconds."""

    def __init__(self, engine: Engine, ttl: float = 300.0,
                 monotonic: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.ttl = ttl
        self.monotonic = monotonic
        self._cached: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def get(self, manifest: Manifest) -> dict:
        with self._lock:
            hit = self._cached.get(manifest.version)
            if hit is not None and self.monotonic() - hit[0] < self.ttl:
                return hit[1]
            drift = model_drift(self.engine, manifest)
            self._cached = {manifest.version: (self.monotonic(), drift)}
            return drift
