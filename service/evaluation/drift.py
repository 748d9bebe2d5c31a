"""Drift of the served model's inputs: per-feature PSI of the latest RECENT_SESSIONS feature rows
of its training tickers against their training segment — from the artifact's training profile
(service.artifacts.profile) when it has one, else from the cached bars of that segment."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pandas as pd
from sqlalchemy import Engine

from service.artifacts.manifest import Manifest
from service.artifacts.profile import read_profile, write_profile
from service.db.bars import read_bars_many
from service.forecasting.drift import (
    RECENT_SESSIONS,
    feature_profile,
    feature_psi,
    profile_psi,
)
from service.forecasting.features import build_features_many, needs_market


def _features(bars: pd.DataFrame, manifest: Manifest) -> tuple[pd.DataFrame, pd.Series]:
    features = build_features_many(bars, manifest.spec).dropna()
    return features, pd.to_datetime(features["date"])


def training_features(bars: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
    """Feature rows of the training segment (the manifest's train origins) of `bars`."""
    features, dates = _features(bars, manifest)
    first, last = (pd.Timestamp(d) for d in manifest.split.train)
    keep = ((dates >= first) & (dates <= last)).to_numpy()
    return features.loc[keep, list(manifest.spec.features)]


def write_training_profile(bars: pd.DataFrame, manifest: Manifest) -> None:
    """Profile the training segment of `bars` (the model's tickers) into the artifact."""
    reference = training_features(bars, manifest)
    if not reference.empty:
        write_profile(manifest, feature_profile(reference), len(reference))


def model_drift(engine: Engine, manifest: Manifest,
                recent_sessions: int = RECENT_SESSIONS) -> dict:
    """{"recent_sessions", "recent_end", "reference", "psi": {feature: PSI}}."""
    bars = read_bars_many(engine, list(manifest.tickers), market=needs_market(manifest.spec))
    empty = {"recent_sessions": 0, "recent_end": None, "reference": None, "psi": {}}
    if bars.empty:
        return empty
    features, dates = _features(bars, manifest)
    recent_dates = sorted(set(dates))[-recent_sessions:]
    if not recent_dates:
        return empty
    recent = features.loc[dates.isin(recent_dates).to_numpy(), list(manifest.spec.features)]
    profile = read_profile(manifest)
    if profile is not None:
        psi, reference = profile_psi(profile, recent), "training profile (artifact)"
    else:
        psi = feature_psi(training_features(bars, manifest), recent)
        reference = "training segment (cached bars)"
    return {"recent_sessions": len(recent_dates),
            "recent_end": recent_dates[-1].date().isoformat(), "reference": reference,
            "psi": psi}


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
