"""Run 2: checks around run 1's validation pick (mhar_aci_cal500_b1): Diebold-Mariano of the
interval score vs ewma_aci and vs the served band per segment; the range estimator (GK /
Parkinson / Rogers-Satchell, each + overnight gap; GK without the gap; close-to-close control)
and the calibration window (250 / 500 / 1000). Selection stays run 1's (pre-registered pool);
these are robustness rows. Run: `python bench/band_har_checks.py` (as bench/band_har.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import time
from pathlib import Path

import band_har as hb
import pandas as pd
from band_har import bg

from service.core.config import get_settings
from service.evaluation.backtest import historical_forecasts
from service.evaluation.scoring import NAIVE, _unit_interval_scores
from service.forecasting import metrics as m
from service.forecasting.bands import BASELINE_ACI, ACIForecaster, ACISettings
from service.forecasting.baselines import BAND_BASELINES, BASELINES
from service.forecasting.windows import prices_from_log_returns


def unit_is(f, method):
    close = f["origin_close"].to_numpy()
    actual = prices_from_log_returns(close, f["realized"].to_numpy())
    lo = prices_from_log_returns(close, f[f"{method}_lower"].to_numpy())
    hi = prices_from_log_returns(close, f[f"{method}_upper"].to_numpy())
    return _unit_interval_scores(lo, hi, close, actual)


def dm(forecasts, a, b, first, last, h):
    f = forecasts[h]
    d0 = f["origin"].dt.date
    f = f.loc[(d0 >= first) & (d0 <= last)]
    d = pd.Series(unit_is(f, a) - unit_is(f, b)).groupby(f["origin"].to_numpy()).mean()
    r = m.diebold_mariano_differential(d.to_numpy(), h)
    return r.statistic, r.pvalue


def main():
    predictor, bars = bg.load(Path(get_settings().model_dir) / hb.WEIGHTS)
    man = predictor.manifest
    test, train_end = man.split.test, man.split.train[1]
    served = predictor.band_settings
    kinds = ("gk", "pk", "rs", "gk_nogap", "cc")
    hars = {k: hb.HAR(k).fit(bars, train_end) for k in kinds}
    for k in kinds:
        for h in (1, 5, 30):
            a, b_, c, d = hars[k].coef[h]
            print(f"HAR {k} h={h}: a={a:.4f} b_d={b_:.4f} c_w={c:.4f} d_m={d:.4f} "
                  f"R2={hars[k].r2[h]:.3f} c_h={hars[k].c[h]:.4f}")
    model = bg.CachedModel(predictor)
    ewma = BAND_BASELINES["ewma"](slots=bg.HORIZONS)
    HS = bg.HORIZONS
    fn = lambda k: (lambda s: hars[k].sigma(s.bars))
    cands = []
    for k in kinds:
        mh = hb.RescaledModel(f"mhar_{k}", model, fn(k))
        cands.append(hb.named(ACIForecaster(mh, ACISettings(calibration=500, vol_beta=1.0),
                                            slots=HS), f"mhar_{k}_aci_cal500_b1"))
    mh = hb.RescaledModel("mhar_gk_b", model, fn("gk"))
    for cal in (250, 1000):
        cands.append(hb.named(ACIForecaster(mh, ACISettings(calibration=cal, vol_beta=1.0),
                                            slots=HS), f"mhar_gk_aci_cal{cal}_b1"))
    cands.append(hb.named(ACIForecaster(mh, ACISettings(calibration=500, vol_beta=0.85),
                                        slots=HS), "mhar_gk_aci_cal500_b0.85"))
    forecasters = [model, BASELINES[NAIVE](), ewma,
                   bg._named(ACIForecaster(ewma, BASELINE_ACI, slots=HS), bg.REFERENCE),
                   bg._named(ACIForecaster(model, served, slots=HS), "served"),
                   hb.RescaledModel("mhar_gk_raw", model, fn("gk")), *cands]
    tick = time.perf_counter()
    run = historical_forecasts(forecasters, bars, start=bg.VALIDATION[0], end=test[1],
                               fit_end=min(train_end, bg.VALIDATION[0]), horizons=HS)
    methods = [f.name for f in forecasters]
    val = bg.segment_table(run.forecasts, methods, *bg.VALIDATION)
    tst = bg.segment_table(run.forecasts, methods, *test)
    print(f"walk + scoring: {time.perf_counter() - tick:.0f} s; skipped {run.skipped}")
    print("\n| candidate | val IS ratio h1/5/30 | val cov h1 (calm/turb) | val cov h5 | "
          "test IS ratio h1/5/30 | test cov h1 (calm/turb) | test cov h5 (above/below) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ["served", "mhar_gk_raw", *(c.name for c in cands)]:
        v, t = val[name], tst[name]
        print(f"| {name} | {v['ratio1']:.3f} / {v['ratio5']:.3f} / {v['ratio30']:.3f} | "
              f"{v['cov1']:.3f} ({v['calm1']:.3f} / {v['turb1']:.3f}) | {v['cov5']:.3f} | "
              f"{t['ratio1']:.3f} / {t['ratio5']:.3f} / {t['ratio30']:.3f} | "
              f"{t['cov1']:.3f} ({t['calm1']:.3f} / {t['turb1']:.3f}) | "
              f"{t['cov5']:.3f} ({t['above5']:.3f} / {t['below5']:.3f}) |")
    print("\nDiebold-Mariano (HLN) on per-date mean interval-score differentials:")
    pick = "mhar_gk_aci_cal500_b1"
    for a, b in ((pick, bg.REFERENCE), (pick, "served"), ("served", bg.REFERENCE)):
        for seg, (lo, hi) in (("val", bg.VALIDATION), ("test", test)):
            out = [f"h={h}: stat {s:+.2f} p {p:.3g}" for h in HS
                   for s, p in [dm(run.forecasts, a, b, lo, hi, h)]]
            print(f"  {a} vs {b} [{seg}]: " + "; ".join(out))
    for seg, table in (("val", val), ("test", tst)):
        print(f"  {seg} IS {pick}: " + " / ".join(f"{table[pick][f'is{h}']:.5f}" for h in HS)
              + "; served: " + " / ".join(f"{table['served'][f'is{h}']:.5f}" for h in HS))


if __name__ == "__main__":
    main()
