"""The serving stores, filled and read: feature rows whenever bars change, the served band's
state per ticker, with the forecast there (the model's output, migration 0006), after a
refresh (prewarm) or whenever a forecast is computed from bars.

A cold forecast then reads one band state and runs no model (Predictor.forecast_stored; a
state stored without its forecast reads one window of feature rows, and one onnxruntime call
runs over every such ticker of its request) instead of building features from ~1,100 bars and
running the model over the ~690 origins ACI reads. Both
stores are checked against the ticker's bars revision (service/db/features.py); whatever is
missing or stale is computed from bars as before, so no answer depends on the store.

Stored features are the raw `build_features` values of the whole stored history (FEATURE_NAMES,
float64), not scaled windows: one set serves every artifact (scalers differ per model), a
model's window is its scaler applied to the stored rows, and the backtest or training may read
the same rows.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine

from service.db import features as store_db
from service.db.bars import bar_revisions, list_tickers, read_bars, read_bars_many
from service.evaluation.ledger import score_ledger
from service.forecasting.features import build_features, needs_market, store_version
from service.forecasting.spec import FEATURE_NAMES, FEATURES_VERSION
from service.inference.predictor import BandState, Forecast, Predictor, StoredInput

log = logging.getLogger(__name__)

STORE_VERSION = store_version()
STORE_COLUMNS = FEATURE_NAMES
READ_CHUNK = 100  # tickers per bulk bars read when features are recomputed
PREWARM_CHUNK = 25  # tickers per band-state batch of a prewarm


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(store_db.encode(values)).hexdigest()


# -- features ------------------------------------------------------------------------------------


def update_features(conn: Connection, tickers: Sequence[str] | None = None) -> int:
    """Recompute the stored features of tickers whose bars changed (or all of a new version);
    returns how many tickers were recomputed.

    Rows of an extended history are appended when the stored ones are unchanged (their digest
    still matches); a re-based history or a new feature version replaces the ticker's rows.
    """
    if tickers is None:
        tickers = [t.symbol for t in list_tickers(conn)]
    store_db.lock_feature_sets(conn, tickers)
    revisions = bar_revisions(conn, tickers)
    stored = store_db.feature_sets(conn, STORE_VERSION, list(revisions))
    due = sorted(t for t, r in revisions.items()
                 if t not in stored or stored[t].bars_revision != r)
    for i in range(0, len(due), READ_CHUNK):
        part = due[i : i + READ_CHUNK]
        frame = read_bars_many(conn, part)
        updates = []
        for ticker, bars in frame.groupby("ticker", sort=True):
            try:
                updates.append(_feature_update(ticker, bars.reset_index(drop=True),
                                               revisions[ticker], stored.get(ticker)))
            # Bars features refuse (ValueError) or cannot make finite (RuntimeError: valid but
            # extreme bars): left stale, served from bars; the other tickers are still stored.
            except (ValueError, RuntimeError) as exc:
                log.warning("features of %s not stored: %s", ticker, exc)
        store_db.write_features(conn, STORE_VERSION, updates)
    return len(due)


def _feature_update(ticker: str, bars: pd.DataFrame, revision: int,
                    stored: store_db.StoredFeatureSet | None) -> store_db.FeatureUpdate:
    features = build_features(bars)
    values = features.to_numpy(dtype=np.float64)
    n = 0 if stored is None else stored.n_rows
    append = (stored is not None and 0 < n <= len(values)
              and features.index[n - 1].date() == stored.last_date
              and _digest(values[:n]) == stored.digest)
    keep = n if append else 0
    last = features.index[-1].date() if len(features) else None
    return store_db.FeatureUpdate(ticker, revision, features.index[keep:], values[keep:],
                                  replace=not append, last_date=last, n_rows=len(values),
                                  digest=_digest(values))


def after_bars_written(conn: Connection, tickers: Sequence[str]) -> None:
    """The step after every bars write: score the ledger's due forecasts, update the features."""
    score_ledger(conn, tickers)
    update_features(conn, tickers)


def stored_features(conn: Connection, ticker: str) -> pd.DataFrame:
    """One ticker's stored feature rows as build_features' frame (index date, FEATURE_NAMES)."""
    dates, values = store_db.read_features(conn, STORE_VERSION, ticker, len(STORE_COLUMNS))
    return pd.DataFrame(values, index=dates, columns=list(STORE_COLUMNS))


# -- band states ---------------------------------------------------------------------------------


def servable(predictor: Predictor) -> bool:
    """Whether the stores can serve this artifact: the model's own band, stored features."""
    spec = predictor.spec
    return (predictor.band_forecaster().base is predictor and spec.version == FEATURES_VERSION
            and all(name in STORE_COLUMNS for name in spec.features))


def stored_inputs(conn: Connection, predictor: Predictor, tickers: Sequence[str],
                  horizon: int) -> dict[str, StoredInput]:
    """The fresh stored inputs (band state as of the latest bar, and the window there unless
    the state holds the model's output) of `tickers`."""
    if not tickers or not servable(predictor):
        return {}
    # Q̂ per slot: one per level, or one per tail (two-sided); the width is the artifact's
    # (states are stored per model version, and the band settings are part of the version).
    width = predictor.band_forecaster().state_width
    states = store_db.read_fresh_states(conn, predictor.model_version, STORE_VERSION, tickers,
                                        width, len(predictor.quantiles))
    states = {t: s for t, s in states.items() if s.qhat.shape[0] >= horizon}
    # The stored output serves only with warnings checked against this predictor's training
    # profile (outside the version hash: a backtest may write or rewrite it); else the window.
    profile = predictor.profile_digest
    output = {t for t, s in states.items() if s.quantiles is not None
              and s.warnings is not None and s.profile == profile}
    window = predictor.spec.window
    rows = store_db.read_latest_features(conn, STORE_VERSION,
                                         {t: s.as_of for t, s in states.items()
                                          if t not in output}, window, len(STORE_COLUMNS))
    out = {}
    for ticker, s in states.items():
        last, values = rows.get(ticker, (None, None))
        if ticker not in output and (values is None or len(values) < window
                                     or last != s.as_of):
            continue
        coverage = float("nan") if s.recent_coverage is None else s.recent_coverage
        out[ticker] = StoredInput(values, STORE_COLUMNS, BandState(
            ticker, s.as_of, s.last_close, s.qhat, coverage, s.recent_sessions,
            *((s.quantiles, s.warnings) if ticker in output else (None, ()))))
    return out


def save_states(conn: Connection, predictor: Predictor,
                states: Sequence[tuple[BandState, int]]) -> None:
    """Store band states, each with the bars revision read before the bars it came from."""
    store_db.write_band_states(conn, predictor.model_version, [
        store_db.StoredBandState(
            s.ticker, s.as_of, revision, s.last_close, s.qhat,
            None if not np.isfinite(s.recent_coverage) else float(s.recent_coverage),
            s.recent_sessions, s.quantiles, None if s.quantiles is None else s.warnings,
            predictor.profile_digest)
        for s, revision in states])


def forecasts_from_bars(engine: Engine, predictor: Predictor, tickers: Sequence[str],
                        horizon: int) -> list[tuple[Forecast, BandState | None, int]]:
    """Forecasts of `tickers` as of their latest bars, computed from the bars as a cold request
    does (Predictor.serving_bars each), with their band states and bars revisions."""
    items, revisions = [], {}
    with engine.connect() as conn:
        for ticker in tickers:
            revision = bar_revisions(conn, [ticker]).get(ticker)  # before the bars
            bars = read_bars(conn, ticker, last=predictor.serving_bars,
                             market=needs_market(predictor.spec))
            if revision is not None and len(bars) >= predictor.min_bars:
                items.append((ticker, bars))
                revisions[ticker] = revision
    pairs = predictor.forecast_with_states(items, horizon) if items else []
    return [(f, s, revisions[f.ticker]) for f, s in pairs]


@dataclass(frozen=True)
class PrewarmReport:
    """What a prewarm did: tickers asked for, already fresh, computed, too short; seconds."""

    tickers: int
    fresh: int
    computed: int
    seconds: float
    pruned: int = 0  # feature rows of older feature versions dropped

    def summary(self) -> str:
        pruned = (f"; {self.pruned} feature rows of older feature versions dropped"
                  if self.pruned else "")
        return (f"prewarmed {self.tickers} tickers: {self.fresh} fresh in the store, "
                f"{self.computed} computed, {self.tickers - self.fresh - self.computed} "
                f"without enough bars ({self.seconds:.1f} s){pruned}")


def prewarm(engine: Engine, predictor: Predictor, tickers: Sequence[str] | None = None,
            chunk: int = PREWARM_CHUNK) -> PrewarmReport:
    """Fill the stores for `tickers` (None: every cached one) so their next cold forecast, at
    any horizon, is one row read and no model run: features brought up to date, then the
    full-horizon band state with the forecast there (the model's output) of every ticker whose
    stored one is missing, stale or stored without the forecast (before migration 0006).

    Bounded: fresh tickers cost one read; stale ones are computed `chunk` at a time (memory),
    each as a cold request would compute it.
    """
    started = time.perf_counter()
    with engine.begin() as conn:
        update_features(conn, tickers)
        # A new feature version (a code upgrade) recomputes every ticker under its own key;
        # the old version's rows are never read again, so they go (once, after a refresh).
        pruned = store_db.delete_other_versions(conn, STORE_VERSION)
        names = sorted(bar_revisions(conn, tickers))
    horizon = predictor.spec.horizon
    with engine.connect() as conn:  # fresh: a state holding the forecast (0006) too
        fresh = {t for t, item in stored_inputs(conn, predictor, names, horizon).items()
                 if item.state.quantiles is not None}
    due = [t for t in names if t not in fresh]
    computed = 0
    if servable(predictor):
        for i in range(0, len(due), chunk):
            results = forecasts_from_bars(engine, predictor, due[i : i + chunk], horizon)
            with engine.begin() as conn:
                save_states(conn, predictor, [(s, r) for _, s, r in results if s is not None])
            computed += len(results)
    return PrewarmReport(len(names), len(fresh), computed, time.perf_counter() - started,
                         pruned)


def serve_latest(engine: Engine, predictor: Predictor, tickers: Sequence[str],
                 horizon: int) -> list[Forecast]:
    """Forecasts as of each ticker's latest bar: from the stores where fresh, else from bars
    (their states then stored); tickers without enough bars are left out."""
    with engine.connect() as conn:
        stored = stored_inputs(conn, predictor, tickers, horizon)
    forecasts = dict(zip(stored, predictor.forecast_stored(list(stored.values()), horizon)))
    rest = [t for t in tickers if t not in stored]
    if rest:
        results = forecasts_from_bars(engine, predictor, rest, horizon)
        if servable(predictor):
            with engine.begin() as conn:
                save_states(conn, predictor, [(s, r) for _, s, r in results if s is not None])
        forecasts.update({f.ticker: f for f, _, _ in results})
    return [forecasts[t] for t in tickers if t in forecasts]
