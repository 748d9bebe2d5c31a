"""A cross-sectional correction of the served band: its recent misses pooled over the tickers.

What is measured: the served band (the network's quantiles, HAR scale, ACI with the artifact's
settings) multiplied about its median by a factor read from every ticker's recent outcomes.
For an origin at session t and horizon h, each band's needed scale at an earlier origin s is
z_s = max((y - m) / (u - m), (m - y) / (m - l)) (m the median, [l, u] the band of level L, y
the outcome: z <= 1 iff y is inside); the factor c_t is the L-quantile of the z of every
ticker's origins s in the K sessions t-h-K+1 .. t-h (their outcomes known at t), and the band at
t is m ± c_t^κ × its half-widths (each level its own c). Per-ticker ACI is slow (a 500-score
window and a 100-origin α run); a market-wide surprise (every ticker's scores up at once) is
what a pool of 24 tickers × K sessions sees within days. Candidates K = 5 / 10 / 20 / 60 ×
κ = 0.5 / 1, and beside them, **not a candidate**, the look-ahead bound: c_t from the outcomes
of origin t itself (the day's own cross-section, known only after it), what a perfect
market-wide scale forecast could give.

Walked from 2015-06-01 (so that every K window is full at the validation segment's first origin;
the served and `ewma_aci` rows equal bench/band_grid.py's, which start at the validation segment)
to the artifact's test segment's end, on the model's 24 training tickers, h = 1, 5, 30; scored
by band_grid.segment_table, IS ratio = interval score / `ewma_aci`'s; band_grid.choose (the
README's rule) on validation only, with the served band in the pool; test printed, not used.

Run: `python bench/band_pooled.py [--json out.json]` (the bar cache seeded: `make seed`; the
current artifact; ≈ 20 s on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import band_grid as bg
import numpy as np
import pandas as pd

from service.artifacts.manifest import resolve_current
from service.core.config import get_settings
from service.evaluation.backtest import historical_forecasts
from service.evaluation.scoring import NAIVE
from service.forecasting.bands import BASELINE_ACI, ACIForecaster
from service.forecasting.baselines import BAND_BASELINES, BASELINES

START = dt.date(2015, 6, 1)
LEVELS = {"_50": 0.5, "": 0.8, "_90": 0.9}  # column suffix -> nominal level
WINDOWS, KAPPAS = (5, 10, 20, 60), (0.5, 1.0)
MIN_SCORES = 50  # a causal factor from fewer scores is not used (factor 1)


def pooled_factor(session: np.ndarray, z: np.ndarray, sessions: int, level: float, h: int,
                  window: int | None) -> np.ndarray:
    """(sessions,) factor c_t: the `level` quantile of z over origins at sessions
    t-h-window+1 .. t-h (window None: the origins at t itself, the look-ahead bound); NaN where
    too few scores."""
    order = np.argsort(session, kind="stable")
    z = z[order]
    bounds = np.searchsorted(session[order], np.arange(sessions + 1))
    out = np.full(sessions, np.nan)
    for t in range(sessions):
        lo, hi = (t, t + 1) if window is None else (t - h - window + 1, t - h + 1)
        if lo < 0:
            continue
        scores = z[bounds[lo]:bounds[hi]]
        scores = scores[np.isfinite(scores)]
        if scores.size >= (10 if window is None else MIN_SCORES):
            out[t] = np.quantile(scores, level)
    return out


def corrected(forecasts: dict[int, pd.DataFrame], base: str, name: str, window: int | None,
              kappa: float) -> None:
    """Add method `name` (median and every level's band) to each horizon's frame, in place."""
    for h, f in forecasts.items():
        dates = np.sort(f["origin"].unique())
        session = np.searchsorted(dates, f["origin"].to_numpy())
        m, y = f[base].to_numpy(), f["realized"].to_numpy()
        f[name] = m
        for suffix, level in LEVELS.items():
            lo, up = f[f"{base}_lower{suffix}"].to_numpy(), f[f"{base}_upper{suffix}"].to_numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.maximum((y - m) / (up - m), (m - y) / (m - lo))
            c = pooled_factor(session, z, dates.size, level, h, window)[session]
            c = np.where(np.isfinite(c), c, 1.0) ** kappa
            f[f"{name}_lower{suffix}"] = m - c * (m - lo)
            f[f"{name}_upper{suffix}"] = m + c * (up - m)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="Write every figure to this file.")
    args = ap.parse_args()
    predictor, bars = bg.load(resolve_current(Path(get_settings().model_dir)))
    man = predictor.manifest
    test = man.split.test
    hs = bg.HORIZONS
    model = bg.CachedModel(predictor)
    ewma = BAND_BASELINES["ewma"](slots=hs)
    forecasters = [model, BASELINES[NAIVE](), ewma,
                   bg._named(ACIForecaster(ewma, BASELINE_ACI, slots=hs), bg.REFERENCE),
                   bg._named(ACIForecaster(model, predictor.band_settings, slots=hs), "served")]
    tick = time.perf_counter()
    run = historical_forecasts(forecasters, bars, start=START, end=test[1],
                               fit_end=min(man.split.train[1], START), horizons=hs)
    names = []
    for window in WINDOWS:
        for kappa in KAPPAS:
            names.append(f"pool_K{window}_k{kappa:g}")
            corrected(run.forecasts, "served", names[-1], window, kappa)
    corrected(run.forecasts, "served", "lookahead_bound", None, 1.0)
    methods = [NAIVE, bg.REFERENCE, "served", *names, "lookahead_bound"]
    val = bg.segment_table(run.forecasts, methods, *bg.VALIDATION)
    tst = bg.segment_table(run.forecasts, methods, *test)
    print(f"model {man.version}; {len(bars)} tickers; walk + scoring "
          f"{time.perf_counter() - tick:.0f} s")
    chosen, chosen_all = bg.report(val, tst, names, "served", "the pooled corrections",
                                   ["served", *names], [bg.REFERENCE, "served", *names,
                                                        "lookahead_bound"])
    bg.save_choice(args.json, man.version, chosen, chosen_all, val, tst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
