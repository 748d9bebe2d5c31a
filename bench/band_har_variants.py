"""Eight HAR regressions for the band's scale, listed before any was scored, against the served HAR.

What is measured: each candidate's h-day σ (direct h-step pooled OLS per h = 1..30 on the 24
training tickers' bars <= the training end, target log mean v_{t+1..t+h}, v = daily_variance
(GK + overnight gap², as served); c_h = the training mean of r²_{t,h} / (h exp ŷ_h), as fit_har)
rescales the network's half-widths (band_har.RescaledModel: σ_X,h / (σ_EWMA √h)) and
ACIForecaster recalibrates with calibration 500, β 1 (the served settings); the bands are walked
on bench/band_grid.py's origins (validation 2016-06-09..2017-01-03 and the artifact's test
segment; h = 1, 5, 30) and scored by band_grid.segment_table beside `ewma_aci` and the served HAR
band (`mhar_aci_cal500_b1`, band_har's own HAR("gk")) of the same run. `m_base_aci` is this
script's generic OLS with the served regressors: the same coefficients and row as the served one
(the machinery is the same). The choice is band_grid.choose (the README's rule) on validation
only, among the 8 and among the 8 plus the served band; Diebold-Mariano (band_har_checks.dm) of
the pick and of the lowest-mean candidate (harq) vs the served band and vs `ewma_aci`; the fits'
coefficients; a (generous) cost per candidate's σ.

The candidates, as pre-registered (r = close-to-close adjusted log return, m_w(x) = trailing
mean over w sessions, g = GK intraday term, J = gap², each floored at 1e-8; B = (1, log v_t,
log m_5(v), log m_22(v)), the served HAR):
  lhar       B + min(r_t,0), min(m_5(r),0), min(m_22(r),0)       (Corsi & Renò 2012)
  lhar_z     as lhar, each negative part / sqrt(m_22(v))
  har_cj     1, log g_t, log m_5(g), log m_22(g), log J_t, log m_5(J), log m_22(J)
  har_q66    B + log m_66(v)
  har_lr250  B + log m_250(v)
  harq       B + q_t (log v_t - log m_22(v)), q_t = sqrt(m_22(v²)) / m_22(v)
  har_ewma   B + log σ²_EWMA,t (the series' own `volatility`)
  har_combo  B + lhar_z's three terms + log m_66(v) + log m_250(v) + harq's term

Run: `python bench/band_har_variants.py [--json out.json]` (the bar cache seeded: `make seed`;
weights 0438c5bea12e as bench/band_har.py; ≈ 30 s on 2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import band_har as hb
import band_har_checks as hc
import numpy as np
import pandas as pd
from band_har import bg

from service.core.config import get_settings
from service.evaluation.scoring import NAIVE
from service.forecasting.bands import BASELINE_ACI, ACIForecaster, ACISettings
from service.forecasting.baselines import BAND_BASELINES, BASELINES
from service.forecasting.forecaster import TickerSeries
from service.forecasting.volatility import VOL_FLOOR, ewma_volatility, log_returns

H_MAX = hb.H_MAX
FLOOR = VOL_FLOOR ** 2
SERVED_HAR = "mhar_aci_cal500_b1"  # today's served band (band_har.py's pick)


# --- per-bar inputs (bars <= t) ----------------------------------------------------------------

def m(x: np.ndarray, w: int) -> np.ndarray:
    """trailing mean of x over w sessions (NaN before a full window or over a NaN)."""
    return pd.Series(x).rolling(w, min_periods=w).mean().to_numpy()


def parts(bars: pd.DataFrame) -> dict[str, np.ndarray]:
    o, h, lo, c, adj = (bars[k].to_numpy(np.float64) for k in
                        ("open", "high", "low", "close", "adj_close"))
    log_adj = np.log(adj)
    hl, co = np.log(h / lo), np.log(c / o)
    g = np.maximum(0.5 * hl * hl - (2 * np.log(2) - 1) * co * co, 0.0)
    gap = np.r_[np.nan, np.log(o * adj / c)[1:] - log_adj[:-1]]
    j = gap * gap
    v = np.maximum(g + j, FLOOR)  # = daily_variance(bars, "gk")
    r = log_returns(log_adj)
    return {"v": v, "g": np.maximum(g, FLOOR), "j": np.maximum(j, FLOOR), "r": r,
            "ewma2": np.maximum(ewma_volatility(r), VOL_FLOOR) ** 2}


def base(p):
    v = p["v"]
    return [np.ones(v.size), np.log(v), np.log(m(v, 5)), np.log(m(v, 22))]


def lev(p, z: bool):
    r = p["r"]
    cols = [np.minimum(r, 0.0), np.minimum(m(r, 5), 0.0), np.minimum(m(r, 22), 0.0)]
    if z:
        s = np.sqrt(m(p["v"], 22))
        cols = [c_ / s for c_ in cols]
    return cols


def q_term(p):
    v = p["v"]
    q = np.sqrt(m(v * v, 22)) / m(v, 22)
    return [q * (np.log(v) - np.log(m(v, 22)))]


def f_base(p):
    return base(p)


def f_lhar(p):
    return base(p) + lev(p, False)


def f_lhar_z(p):
    return base(p) + lev(p, True)


def f_cj(p):
    g, j = p["g"], p["j"]
    return [np.ones(g.size), np.log(g), np.log(m(g, 5)), np.log(m(g, 22)),
            np.log(j), np.log(m(j, 5)), np.log(m(j, 22))]


def f_q66(p):
    return base(p) + [np.log(m(p["v"], 66))]


def f_lr250(p):
    return base(p) + [np.log(m(p["v"], 250))]


def f_harq(p):
    return base(p) + q_term(p)


def f_ewma(p):
    return base(p) + [np.log(p["ewma2"])]


def f_combo(p):
    return (base(p) + lev(p, True) + [np.log(m(p["v"], 66)), np.log(m(p["v"], 250))]
            + q_term(p))


CANDIDATES = {"base": f_base, "lhar": f_lhar, "lhar_z": f_lhar_z, "har_cj": f_cj,
              "har_q66": f_q66, "har_lr250": f_lr250, "harq": f_harq, "har_ewma": f_ewma,
              "har_combo": f_combo}


class GenHAR:
    """Direct h-step pooled OLS per h of log mean v_{t+1..t+h} on feats(bars) (bars <= t);
    σ²_h = c_h h exp ŷ_h, c_h the training mean of r²_{t,h} / (h exp ŷ_h) (as fit_har)."""

    def __init__(self, name, feats):
        self.name, self.feats = name, feats

    def x(self, bars):
        return np.column_stack(self.feats(parts(bars)))

    def fit(self, bars, train_end):
        xs, ys, rs = [], {h: [] for h in range(1, H_MAX + 1)}, {h: [] for h in range(1, H_MAX + 1)}
        for b in bars.values():
            b = b.loc[pd.DatetimeIndex(b["date"]) <= pd.Timestamp(train_end)].reset_index(drop=True)
            v = hb.daily_variance(b, "gk")
            xs.append(self.x(b))
            y = np.log(b["adj_close"].to_numpy(np.float64))
            for h in range(1, H_MAX + 1):
                ys[h].append(hb.forward_log_mean(v, h))
                r = np.full(y.size, np.nan)
                r[:-h] = y[h:] - y[:-h]
                rs[h].append(r)
        x = np.concatenate(xs)
        k = x.shape[1]
        self.coef = np.zeros((H_MAX + 1, k))
        self.c = np.zeros(H_MAX + 1)
        self.r2 = np.zeros(H_MAX + 1)
        self.n = np.zeros(H_MAX + 1, dtype=int)
        for h in range(1, H_MAX + 1):
            y, r = np.concatenate(ys[h]), np.concatenate(rs[h])
            ok = np.isfinite(x).all(1) & np.isfinite(y) & np.isfinite(r)
            beta, *_ = np.linalg.lstsq(x[ok], y[ok], rcond=None)
            fit = x[ok] @ beta
            self.coef[h] = beta
            self.r2[h] = 1 - np.var(y[ok] - fit) / np.var(y[ok])
            self.c[h] = np.mean(r[ok] ** 2 / (h * np.exp(fit)))
            self.n[h] = int(ok.sum())
        return self

    def sigma(self, bars):
        pred = self.x(bars) @ self.coef[1:].T
        return np.sqrt(self.c[1:] * np.arange(1, H_MAX + 1) * np.exp(pred))


def sigma_table(har: GenHAR):
    """series -> its (n, H_MAX) σ table, as RescaledModel reads it."""
    return lambda s: har.sigma(s.bars)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None, help="Write every figure to this file.")
    args = ap.parse_args()
    predictor, bars = bg.load(Path(get_settings().model_dir) / hb.WEIGHTS)
    man = predictor.manifest
    test, train_end = man.split.test, man.split.train[1]
    served = predictor.band_settings
    cal500 = ACISettings(calibration=500, vol_beta=1.0)
    print(f"model {man.version}; {len(bars)} tickers; train end {train_end}; test {test}")

    served_har = hb.HAR("gk").fit(bars, train_end)
    hars = {n: GenHAR(n, f).fit(bars, train_end) for n, f in CANDIDATES.items()}
    print("base vs band_har HAR coef max |diff|:",
          float(np.max(np.abs(hars["base"].coef - served_har.coef))),
          " c:", float(np.max(np.abs(hars["base"].c - served_har.c))))
    for n, har in hars.items():
        for h in (1, 5, 30):
            print(f"{n} h={h}: coef=" + " ".join(f"{x:+.4f}" for x in har.coef[h])
                  + f" R2={har.r2[h]:.4f} n={har.n[h]} c_h={har.c[h]:.4f}")

    model = bg.CachedModel(predictor)
    ewma = BAND_BASELINES["ewma"](slots=bg.HORIZONS)
    HS = bg.HORIZONS
    mh_served = hb.RescaledModel("mhar", model, lambda s: served_har.sigma(s.bars))
    cands = []
    for n, har in hars.items():
        rm = hb.RescaledModel(f"m_{n}", model, sigma_table(har))
        cands.append(hb.named(ACIForecaster(rm, cal500, slots=HS), f"m_{n}_aci"))
    forecasters = [model, BASELINES[NAIVE](), ewma,
                   bg._named(ACIForecaster(ewma, BASELINE_ACI, slots=HS), bg.REFERENCE),
                   hb.named(ACIForecaster(mh_served, cal500, slots=HS), SERVED_HAR), *cands]
    run, val, tst = bg.walk(forecasters, bars, test, train_end)
    # rows scored per method (the same origins for all?)
    for h in HS:
        f = run.forecasts[h]
        nn = {mm: int(f[f"{mm}_lower"].notna().sum()) for mm in [SERVED_HAR, *(c.name for c in cands)]}
        print(f"h={h}: rows {len(f)}; finite bands per method {nn}")

    names = [c.name for c in cands if c.name != "m_base_aci"]
    chosen, chosen_all = bg.report(
        val, tst, names, SERVED_HAR, "the 8 pre-registered", [SERVED_HAR, "m_base_aci", *names],
        [bg.REFERENCE, SERVED_HAR, "m_base_aci", *names])

    print("\nDiebold-Mariano (HLN) on per-date mean interval-score differentials:")
    dms = {}
    # The pick(s), then the lowest validation mean ratio (harq; looked at after the choice).
    for a in dict.fromkeys([chosen, chosen_all, "m_harq_aci"]):
        for b in (SERVED_HAR, bg.REFERENCE):
            if a == b:
                continue
            for seg, (lo, hi) in (("val", bg.VALIDATION), ("test", test)):
                res = [hc.dm(run.forecasts, a, b, lo, hi, h) for h in HS]
                dms[f"{a} vs {b} [{seg}]"] = res
                print(f"  {a} vs {b} [{seg}]: " + "; ".join(
                    f"h={h}: stat {s:+.2f} p {p:.3g}" for h, (s, p) in zip(HS, res)))

    # Serving cost as band_har.py: σ for a cold served band's origins, one ticker (generic
    # feature builder: it computes every candidate's inputs, so it overstates the lean cost).
    s = TickerSeries("AAPL", bars["AAPL"])
    reps = 20
    cost = {}
    for n, har in [("served_har", served_har), *hars.items()]:
        tail = s.bars.iloc[-(served.history + H_MAX + 30):]
        t0 = time.perf_counter()
        for _ in range(reps):
            har.sigma(tail)
        per = (time.perf_counter() - t0) / reps
        t0 = time.perf_counter()
        for _ in range(reps):
            har.sigma(s.bars)
        whole = (time.perf_counter() - t0) / reps
        cost[n] = (per, whole)
        print(f"cost {n}: {served.history + H_MAX} origins {per * 1e3:.2f} ms "
              f"({per / (served.history + H_MAX) * 1e6:.2f} us/origin); whole {len(s.bars)} bars "
              f"{whole * 1e3:.2f} ms ({whole / len(s.bars) * 1e6:.2f} us/origin)")
    if not args.json:
        return 0
    Path(args.json).write_text(json.dumps({
        "chosen": chosen, "chosen_with_served": chosen_all, "validation": val, "test": tst,
        "dm": dms, "cost_s": cost,
        "har": {n: {"coef": h.coef.tolist(), "c": h.c.tolist(), "r2": h.r2.tolist(),
                    "n": h.n.tolist()} for n, h in hars.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
