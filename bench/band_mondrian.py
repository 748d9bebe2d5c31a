"""Mondrian ACI on the served HAR band: one ACI state per volatility regime, against the served band.

What is measured: the served band (ACI around the network with the artifact's settings, HAR
scale) with its conformal state split by a trailing volatility regime. The regime of bar t reads
the EWMA volatilities σ (TickerSeries.volatility) of its last W bars, t included: with n of them
defined and k of those <= σ_t, regime = ⌈k R / n⌉ − 1 (integer arithmetic), the middle one where
σ_t is undefined. For each regime g, `aci_state` runs over the same run as the served band's with
the outcomes of the origins not in g unknown (NaN: no score in the calibration window, no α
step) and the origins in g as its targets; the states are put together and applied as the served
band's are. R = 1 is the served band itself (asserted, to the float, before anything is scored).

Candidates (the served settings with dataclasses.replace): calibration 500 / 1000 / 1500 × α run
(lookback) 100 / 300 at W = 250, R = 3; calibration 1000 with W = 125 and 500; R = 2
(calibration 1000) and R = 5 (calibration 1500); γ 0.01 at calibration 1000. Walked on
bench/band_grid.py's origins (validation 2016-06-09..2017-01-03 and the artifact's test segment,
the model's 24 training tickers, h = 1, 5, 30), scored by band_grid.segment_table beside
`ewma_aci` and `served` of the same run (IS ratio = interval score / ewma_aci's); band_grid.choose
(the README's rule) on validation is printed, test is not used.

Run: `python bench/band_mondrian.py [--json out.json]` (the bar cache seeded: `make seed`; the
current artifact's weights and band; ≈ 45 s on 2 shared cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np
from band_har import bg
from numpy.lib.stride_tricks import sliding_window_view

from service.artifacts.manifest import resolve_current
from service.core.config import get_settings
from service.evaluation.scoring import NAIVE
from service.forecasting.bands import BASELINE_ACI, ACIForecaster, ACIState, aci_state
from service.forecasting.baselines import BAND_BASELINES, BASELINES
from service.forecasting.forecaster import Forecaster, HistoricalForecasts, TickerSeries


def regimes(vol: np.ndarray, window: int, bins: int) -> np.ndarray:
    """(n,) regime 0 .. bins-1 of each bar: ⌈k·bins/n⌉ − 1 with n the defined volatilities among
    its last `window` bars (itself included) and k those <= its own; bins // 2 where its own is
    undefined (NaN)."""
    v = np.asarray(vol, dtype=np.float64)
    padded = np.concatenate([np.full(window - 1, np.nan), v])
    win = sliding_window_view(padded, window)  # (n, window): bars t-window+1 .. t
    n = np.count_nonzero(np.isfinite(win), axis=1)
    k = np.count_nonzero(win <= v[:, None], axis=1)  # NaN compares False
    out = np.full(v.size, bins // 2, dtype=np.intp)
    ok = np.isfinite(v)  # then n >= k >= 1 (the bar itself)
    out[ok] = (k[ok] * bins + n[ok] - 1) // n[ok] - 1
    return out


class Mondrian(Forecaster):
    """An ACIForecaster's band with one ACI state per volatility regime of the origin.

    Not an ACIForecaster (the backtest batches those through plan() and aci_states, which would
    bypass this state): it reads the wrapped one's base forecasts and plan, computes the states
    per regime (aci_state with the other regimes' outcomes unknown), and applies them with the
    wrapped one's `recalibrated`."""

    def __init__(self, aci: ACIForecaster, name: str, window: int = 250, bins: int = 3):
        self.aci, self.name, self.window, self.bins = aci, name, window, bins
        self.quantiles = aci.quantiles

    def preload(self) -> None:
        self.aci.preload()

    def fit(self, history) -> Mondrian:
        self.aci.fit(history)
        return self

    def historical_forecasts(self, series: TickerSeries, origins: np.ndarray,
                             horizon: int) -> HistoricalForecasts:
        origins = np.asarray(origins, dtype=np.intp)
        if origins.size == 0:
            return self.aci.historical_forecasts(series, origins, horizon)
        aci = self.aci
        base = aci.base_forecasts(series, origins, horizon)
        wanted, slots, run = aci.plan(base, series, origins, horizon)
        if run is None:
            return aci.recalibrated(base, wanted, slots,
                                    aci.empty_state(wanted.size, slots.size), horizon)
        first = int(np.asarray(base.origins, dtype=np.intp).min())  # the run's origin 0
        g = regimes(series.volatility, self.window, self.bins)[first:first + len(run.quantiles)]
        at_target = g[run.targets]
        qhat = np.full((run.targets.size, slots.size, aci.state_width), np.nan)
        coverage = np.full((run.targets.size, slots.size, len(aci.coverages)), np.nan)
        quantiles, levels, realized, targets, delays = run.arguments()
        for regime in range(self.bins):
            sel = at_target == regime
            if not sel.any():
                continue
            known = np.where((g == regime)[:, None], realized, np.nan)
            state = aci_state(quantiles, levels, known, targets[sel], delays, aci.coverages,
                              aci.settings, run.scale)
            qhat[sel], coverage[sel] = state.qhat, state.coverage
        return aci.recalibrated(base, wanted, slots, ACIState(qhat, coverage), horizon)


def candidates(served, model, slots) -> dict[str, Mondrian]:
    """The grid (module docstring): name -> Mondrian around ACI with the served settings
    replaced."""
    def mondrian(name, window=250, bins=3, **changes):
        aci = ACIForecaster(model, dataclasses.replace(served, **changes), slots=slots)
        return Mondrian(aci, name, window, bins)

    out = [mondrian(f"mond_c{cal}_l{lb}_w250", calibration=cal, lookback=lb)
           for cal in (500, 1000, 1500) for lb in (100, 300)]
    out += [mondrian(f"mond_c1000_l100_w{w}", window=w, calibration=1000) for w in (125, 500)]
    out.append(mondrian("mond_r2_c1000_l100_w250", bins=2, calibration=1000))
    out.append(mondrian("mond_r5_c1500_l100_w250", bins=5, calibration=1500))
    out.append(mondrian("mond_c1000_l100_w250_g01", calibration=1000, gamma=0.01))
    return {m.name: m for m in out}


def check_r1(forecasts, served: str, r1: str) -> None:
    """R = 1 must be the served band: every column of it equal, to the float, at each h."""
    for h, f in forecasts.items():
        for part in ("", "_lower", "_upper"):
            a, b = f[f"{served}{part}"].to_numpy(), f[f"{r1}{part}"].to_numpy()
            assert np.array_equal(a, b, equal_nan=True), f"R = 1 differs from {served} at h={h}"
    print(f"R = 1 reproduces the served band exactly ({', '.join(str(h) for h in forecasts)}; "
          f"{sum(len(f) for f in forecasts.values())} rows)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="Write every figure to this file.")
    args = ap.parse_args()
    predictor, bars = bg.load(resolve_current(Path(get_settings().model_dir)))
    man = predictor.manifest
    test = man.split.test
    served = predictor.band_settings
    print(f"model {man.version}; {len(bars)} tickers; served band calibration "
          f"{served.calibration}, lookback {served.lookback}, β {served.vol_beta}, "
          f"HAR {served.har is not None}")
    HS = bg.HORIZONS
    model = bg.CachedModel(predictor)
    ewma = BAND_BASELINES["ewma"](slots=HS)
    cands = candidates(served, model, HS)
    r1 = Mondrian(ACIForecaster(model, served, slots=HS), "mond_r1", bins=1)
    forecasters = [model, BASELINES[NAIVE](), ewma,
                   bg._named(ACIForecaster(ewma, BASELINE_ACI, slots=HS), bg.REFERENCE),
                   bg._named(ACIForecaster(model, served, slots=HS), "served"), r1,
                   *cands.values()]
    run, val, tst = bg.walk(forecasters, bars, test, man.split.train[1])
    check_r1(run.forecasts, "served", r1.name)
    names = list(cands)
    chosen, chosen_all = bg.report(val, tst, names, "served", "the Mondrian candidates",
                                   ["served", *names], [bg.REFERENCE, "served", *names])
    bg.save_choice(args.json, man.version, chosen, chosen_all, val, tst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
