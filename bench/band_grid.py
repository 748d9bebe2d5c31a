"""The served band's recalibration grid: ACI settings chosen on validation, test printed beside.

Every candidate ACI setting (calibration window × volatility blend β × step γ × symmetric or
two-sided scores) recalibrates the same network's quantiles at every origin of the validation
and the test segment (the model's training tickers, h = 1, 5, 30), beside the reference band
measured in the same run: RW + EWMA σ band + ACI (`ewma_aci`, plain ACI, BASELINE_ACI), whose
interval score each candidate's is divided by. The model is run once per ticker over all its
origins and each candidate reads those forecasts (`aci_bands` through ACIForecaster, the
serving code); scoring is `compute_metrics`, as `stockcast backtest` scores.

The rule (README, "Bands"): among candidates whose validation 80 % coverage lies within
0.80 ± 0.03 at h = 1 and at h = 5, the lowest mean of the 1- and 5-day validation interval-score
ratios vs ewma_aci; within 0.002 of it, the smallest calm / turbulent coverage gap at h = 1. The
test columns are printed, not used. Run: `python bench/band_grid.py` (the bar cache seeded:
`make seed`); `--json PATH` writes every figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import pandas as pd

from service.artifacts.manifest import resolve_current
from service.core.config import get_settings
from service.db.bars import read_bars_many
from service.db.session import make_engine
from service.evaluation.backtest import ModelForecaster, bars_by_ticker, historical_forecasts
from service.evaluation.scoring import NAIVE, POOLED, compute_metrics
from service.forecasting.bands import BASELINE_ACI, ACIForecaster, ACISettings
from service.forecasting.baselines import BAND_BASELINES, BASELINES
from service.forecasting.forecaster import HistoricalForecasts, TickerSeries
from service.inference.predictor import Predictor

VALIDATION = (dt.date(2016, 6, 9), dt.date(2017, 1, 3))  # the README's validation segment
HORIZONS = (1, 5, 30)
TARGET, TOLERANCE, TIE = 0.80, 0.03, 0.002
REFERENCE = "ewma_aci"


class CachedModel(ModelForecaster):
    """The model's forecasts at every origin of a ticker, made once and read by every
    candidate (each candidate's ACI run asks for its own range of origins)."""

    def __init__(self, predictor: Predictor):
        super().__init__(predictor)
        self._made: dict[str, HistoricalForecasts] = {}

    def historical_forecasts(self, series: TickerSeries, origins: np.ndarray,
                             horizon: int) -> HistoricalForecasts:
        if series.ticker not in self._made:
            every = np.arange(len(series.bars))
            self._made[series.ticker] = super().historical_forecasts(series, every, horizon)
        made = self._made[series.ticker]
        keep = np.isin(made.origins, origins)
        return HistoricalForecasts(made.origins[keep], made.log_returns[keep, :, :horizon],
                                   made.quantiles)


def candidates() -> dict[str, ACISettings]:
    """The grid: calibration × β × γ × two-sided (the rest as the defaults). γ 0.0025 and
    calibration 1000 give each tail of a two-sided band (an α aiming at 0.1, a Q̂ in the thin
    tail of its scores) a slower level and more scores than the symmetric band needs."""
    out = {}
    for cal, beta, gamma, two in itertools.product((250, 500, 1000), (1.0, 0.7, 0.5, 0.3),
                                                   (0.0025, 0.005, 0.02), (False, True)):
        name = f"cal{cal}_b{beta:g}_g{gamma:g}" + ("_2s" if two else "")
        out[name] = ACISettings(gamma=gamma, calibration=cal, vol_beta=beta, two_sided=two)
    return out


def tail_misses(frame: pd.DataFrame, method: str) -> tuple[float, float]:
    """(share of outcomes above the 80 % band, share below)."""
    y = frame["realized"].to_numpy()
    return (float(np.mean(y > frame[f"{method}_upper"].to_numpy())),
            float(np.mean(y < frame[f"{method}_lower"].to_numpy())))


def segment_table(forecasts: dict[int, pd.DataFrame], methods: list[str],
                  first: dt.date, last: dt.date) -> dict[str, dict]:
    """{method: {figure: value}} on the origins in [first, last], pooled over tickers."""
    part = {}
    for h, frame in forecasts.items():
        origin = frame["origin"].dt.date
        part[h] = frame.loc[(origin >= first) & (origin <= last)].reset_index(drop=True)
    metrics = compute_metrics(part, methods)
    pooled = metrics[metrics["ticker"] == POOLED].set_index(["horizon", "method", "metric"])[
        "value"]
    out = {}
    for method in methods:
        if method in (NAIVE, "model"):
            continue
        row = {}
        for h in HORIZONS:
            row[f"is{h}"] = float(pooled[(h, method, "interval_score")])
            row[f"ratio{h}"] = row[f"is{h}"] / float(pooled[(h, REFERENCE, "interval_score")])
            row[f"cov{h}"] = float(pooled[(h, method, "coverage")])
            row[f"above{h}"], row[f"below{h}"] = tail_misses(part[h], method)
        row["calm1"] = float(pooled[(1, method, "coverage_calm")])
        row["turb1"] = float(pooled[(1, method, "coverage_turbulent")])
        out[method] = row
    return out


def choose(validation: dict[str, dict], names: list[str]) -> str:
    """The README's rule on the validation figures only."""
    ok = [n for n in names if all(abs(validation[n][f"cov{h}"] - TARGET) <= TOLERANCE
                                  for h in (1, 5))]
    if not ok:
        raise SystemExit("no candidate is calibrated on validation")
    mean = {n: (validation[n]["ratio1"] + validation[n]["ratio5"]) / 2 for n in ok}
    best = min(mean.values())
    near = [n for n in ok if mean[n] <= best + TIE]
    return min(near, key=lambda n: abs(validation[n]["turb1"] - validation[n]["calm1"]))


def load(artifact: Path) -> tuple[Predictor, dict[str, pd.DataFrame]]:
    """An artifact's predictor and its training tickers' bars from the configured bar cache."""
    predictor = Predictor.load(artifact)
    engine = make_engine(get_settings().database_url)
    try:
        bars = bars_by_ticker(read_bars_many(engine, list(predictor.manifest.tickers)))
    finally:
        engine.dispose()
    return predictor, bars


def walk(forecasters: list, bars: dict, test: tuple[dt.date, dt.date], train_end: dt.date
         ) -> tuple[object, dict[str, dict], dict[str, dict]]:
    """Every forecaster walked from the validation segment's first origin to the test
    segment's last (fitted on bars up to the earlier of train_end and that first origin), then
    scored on each: (the run, validation table, test table)."""
    tick = time.perf_counter()
    run = historical_forecasts(forecasters, bars, start=VALIDATION[0], end=test[1],
                               fit_end=min(train_end, VALIDATION[0]), horizons=HORIZONS)
    if run.skipped:
        print("skipped:", run.skipped)
    methods = [f.name for f in forecasters]
    val = segment_table(run.forecasts, methods, *VALIDATION)
    tst = segment_table(run.forecasts, methods, *test)
    print(f"walk + scoring: {time.perf_counter() - tick:.0f} s")
    return run, val, tst


def report(val: dict[str, dict], tst: dict[str, dict], names: list[str], incumbent: str,
           label: str, means: list[str], rows: list[str]) -> tuple[str, str]:
    """The rule's pick among `names` and with the `incumbent` in the pool (printed), each of
    `means`' validation mean ratio, coverage and calm / turbulent gap, then the table of
    `rows` (the pick in bold): (pick, pick with the incumbent)."""
    chosen = choose(val, names)
    chosen_all = choose(val, names + [incumbent])
    print(f"chosen on validation among {label}: {chosen}; with {incumbent} in the pool: "
          f"{chosen_all}")
    for n in means:
        v = val[n]
        print(f"  {n}: val mean(ratio1, ratio5) = {(v['ratio1'] + v['ratio5']) / 2:.4f}, "
              f"cov1 {v['cov1']:.3f} cov5 {v['cov5']:.3f}; gap {abs(v['turb1'] - v['calm1']):.3f}")
    print("\n| candidate | val IS ratio h1/5/30 | val cov h1 (calm/turb) | val cov h5 | "
          "test IS ratio h1/5/30 | test cov h1 (calm/turb) | test cov h5 (above/below) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in rows:
        print(table_row(f"**{name}**" if name == chosen else name, val[name], tst[name]))
    print("\nabsolute IS ewma_aci: val " + " / ".join(f"{val[REFERENCE][f'is{h}']:.5f}"
                                                     for h in HORIZONS)
          + "; test " + " / ".join(f"{tst[REFERENCE][f'is{h}']:.5f}" for h in HORIZONS))
    return chosen, chosen_all


def save_choice(path: str | None, model: str, chosen: str, chosen_all: str,
                val: dict[str, dict], tst: dict[str, dict]) -> None:
    """A study's figures (report()'s picks, every validation and test figure) as JSON, if asked."""
    if path:
        Path(path).write_text(json.dumps({
            "model": model, "chosen": chosen, "chosen_with_served": chosen_all,
            "validation": val, "test": tst}, indent=1))


def table_row(mark: str, v: dict, t: dict) -> str:
    """One candidate's row: validation and test IS ratios (h = 1 / 5 / 30), coverage at h = 1
    with its calm / turbulent terciles, coverage at h = 5 (test: with the misses above / below)."""
    return (f"| {mark} | {v['ratio1']:.3f} / {v['ratio5']:.3f} / {v['ratio30']:.3f} | "
            f"{v['cov1']:.3f} ({v['calm1']:.3f} / {v['turb1']:.3f}) | {v['cov5']:.3f} | "
            f"{t['ratio1']:.3f} / {t['ratio5']:.3f} / {t['ratio30']:.3f} | "
            f"{t['cov1']:.3f} ({t['calm1']:.3f} / {t['turb1']:.3f}) | "
            f"{t['cov5']:.3f} ({t['above5']:.3f} / {t['below5']:.3f}) |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--json", default=None, help="Write every figure to this file.")
    args = parser.parse_args()
    predictor, bars = load(resolve_current(Path(args.model_dir or get_settings().model_dir)))
    manifest = predictor.manifest
    test = manifest.split.test
    model = CachedModel(predictor)
    grid = candidates()
    served = predictor.band_settings
    forecasters = [model, BASELINES[NAIVE]()]
    ewma = BAND_BASELINES["ewma"](slots=HORIZONS)
    forecasters += [ewma, _named(ACIForecaster(ewma, BASELINE_ACI, slots=HORIZONS), REFERENCE)]
    forecasters.append(_named(ACIForecaster(model, served, slots=HORIZONS), "served"))
    forecasters += [_named(ACIForecaster(model, s, slots=HORIZONS), n) for n, s in grid.items()]
    tick = time.perf_counter()
    run = historical_forecasts(forecasters, bars, start=VALIDATION[0], end=test[1],
                               fit_end=min(manifest.split.train[1], VALIDATION[0]),
                               horizons=HORIZONS)
    if run.skipped:
        print("skipped:", run.skipped)
    methods = [f.name for f in forecasters]
    val = segment_table(run.forecasts, methods, *VALIDATION)
    tst = segment_table(run.forecasts, methods, *test)
    seconds = time.perf_counter() - tick
    chosen = choose(val, list(grid))

    print(f"model {manifest.version}, {len(bars)} tickers; served band {served.to_dict()}; "
          f"validation {VALIDATION[0]}..{VALIDATION[1]}, test {test[0]}..{test[1]}; "
          f"{seconds:.0f} s")
    print(f"chosen on validation: {chosen} ({grid[chosen].to_dict()})\n")
    header = ("| candidate | val IS ratio h1/5/30 | val cov h1 (calm/turb) | val cov h5 | "
              "test IS ratio h1/5/30 | test cov h1 (calm/turb) | test cov h5 (above/below) |")
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ["served", *grid, "ewma", REFERENCE]:
        print(table_row(f"**{name}**" if name == chosen else name, val[name], tst[name]))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"model": manifest.version, "chosen": chosen, "validation": val, "test": tst,
             "settings": {n: s.to_dict() for n, s in grid.items()}}, indent=1))
    return 0


def _named(forecaster: ACIForecaster, name: str) -> ACIForecaster:
    forecaster.name = name
    return forecaster


if __name__ == "__main__":
    raise SystemExit(main())
