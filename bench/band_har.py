"""Range-based (HAR on Garman-Klass + overnight) volatility as the band's scale.

Candidates, all walked on the origins of bench/band_grid.py (validation 2016-06-09..2017-01-03,
test = the artifact's test segment; the model's 24 training tickers; h = 1, 5, 30), scored by
compute_metrics through band_grid.segment_table, beside ewma_aci and the served model_aci of
the same run; chosen on validation only with band_grid.choose (the README's rule).

Run: `python bench/band_har.py [--json out.json]` (the bar cache seeded: `make seed`; ≈ 25 s).
The weights are those of `0438c5bea12e` (whose own band, the volatility blend, is the "served"
row: the band this grid replaced); `bench/band_har_checks.py` prints the neighbours of the pick
and the Diebold-Mariano tests. Its HAR is this script's own (GK, Parkinson, Rogers-Satchell,
close-to-close); the shipped one is `service.forecasting.volatility.HarVolatility`, which
reproduces the GK row's coefficients to 1e-14 and the pick's figures to the digit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import pandas as pd

spec = importlib.util.spec_from_file_location("band_grid", ROOT / "bench" / "band_grid.py")
bg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bg)

from service.core.config import get_settings
from service.evaluation.scoring import NAIVE
from service.forecasting.bands import BASELINE_ACI, ACIForecaster, ACISettings, ndtri
from service.forecasting.baselines import BAND_BASELINES, BASELINES
from service.forecasting.forecaster import Forecaster, HistoricalForecasts, TickerSeries
from service.forecasting.spec import FeatureSpec
from service.forecasting.volatility import VOL_FLOOR

H_MAX = 30
WEIGHTS = "0438c5bea12e"  # the weights the grid ran on, with the band it replaced
LEVELS = tuple(FeatureSpec.quantiles)  # 0.05 .. 0.95
VAR_FLOOR = VOL_FLOOR ** 2


# --- daily variance proxies (bars <= t) ---------------------------------------------------------

def daily_variance(bars: pd.DataFrame, kind: str) -> np.ndarray:
    """Per-session variance proxy v_t from bar t (and the close of t-1).

    gk:   Garman-Klass intraday  ½ ln(H/L)² − (2 ln2 − 1) ln(C/O)²  + overnight ln(O_t/C_{t-1})²
          (Yang-Zhang-style: open-to-close range + close-to-open gap), opens adjusted by the
          day's adj_close/close factor so splits and dividends do not enter the gap.
    cc:   close-to-close squared adjusted log return (the EWMA's input), the control.
    """
    o, h, lo, c, adj = (bars[k].to_numpy(np.float64) for k in
                        ("open", "high", "low", "close", "adj_close"))
    log_adj = np.log(adj)
    r = np.r_[np.nan, np.diff(log_adj)]
    if kind == "cc":
        v = r * r
    else:
        hl, co = np.log(h / lo), np.log(c / o)
        base = kind.removesuffix("_nogap")
        if base == "gk":
            g = np.maximum(0.5 * hl * hl - (2 * np.log(2) - 1) * co * co, 0.0)
        elif base == "pk":  # Parkinson (1980)
            g = hl * hl / (4 * np.log(2))
        elif base == "rs":  # Rogers-Satchell (1991)
            g = np.maximum(np.log(h / c) * np.log(h / o) + np.log(lo / c) * np.log(lo / o), 0.0)
        else:
            raise ValueError(kind)
        log_open_adj = np.log(o * adj / c)
        gap = np.r_[np.nan, log_open_adj[1:] - log_adj[:-1]]
        v = g if kind.endswith("_nogap") else g + gap * gap
    return np.maximum(v, VAR_FLOOR)


def har_regressors(v: np.ndarray) -> np.ndarray:
    """(n, 4): 1, log v_t, log mean v_{t-4..t}, log mean v_{t-21..t}; NaN in warm-up."""
    s = pd.Series(v)
    x = np.column_stack([np.ones(v.size), np.log(v),
                         np.log(s.rolling(5, min_periods=5).mean().to_numpy()),
                         np.log(s.rolling(22, min_periods=22).mean().to_numpy())])
    return x


def forward_log_mean(v: np.ndarray, h: int) -> np.ndarray:
    """y_t = log mean v_{t+1..t+h} (NaN where it runs past the end)."""
    s = pd.Series(v).rolling(h, min_periods=h).mean().to_numpy()  # mean v_{t-h+1..t}
    out = np.full(v.size, np.nan)
    out[:-h] = np.log(s[h:])
    return out


class HAR:
    """Direct h-step HAR, pooled OLS per h on the training segment; σ²_h = c_h · h · exp(ŷ_h),
    c_h = training mean of r²_{t,h} / (h exp ŷ_h) (scales the proxy to close-to-close h-day
    variance and absorbs the log bias); z-quantiles of the standardized training residuals."""

    def __init__(self, kind: str):
        self.kind = kind

    def fit(self, bars: dict[str, pd.DataFrame], train_end: dt.date) -> HAR:
        xs, ys, rs = [], {h: [] for h in range(1, H_MAX + 1)}, {h: [] for h in range(1, H_MAX + 1)}
        for b in bars.values():
            b = b.loc[pd.DatetimeIndex(b["date"]) <= pd.Timestamp(train_end)].reset_index(drop=True)
            v = daily_variance(b, self.kind)
            xs.append(har_regressors(v))
            y = np.log(b["adj_close"].to_numpy(np.float64))
            for h in range(1, H_MAX + 1):
                ys[h].append(forward_log_mean(v, h))  # NaN past the training end: not used
                r = np.full(y.size, np.nan)
                r[:-h] = y[h:] - y[:-h]
                rs[h].append(r)
        x = np.concatenate(xs)
        self.coef = np.zeros((H_MAX + 1, 4))
        self.c = np.zeros(H_MAX + 1)
        self.zq = np.zeros((H_MAX + 1, len(LEVELS)))
        self.r2 = np.zeros(H_MAX + 1)
        self.n = np.zeros(H_MAX + 1, dtype=int)
        for h in range(1, H_MAX + 1):
            y, r = np.concatenate(ys[h]), np.concatenate(rs[h])
            ok = np.isfinite(x).all(1) & np.isfinite(y) & np.isfinite(r)
            beta, *_ = np.linalg.lstsq(x[ok], y[ok], rcond=None)
            self.coef[h] = beta
            fit = x[ok] @ beta
            self.r2[h] = 1 - np.var(y[ok] - fit) / np.var(y[ok])
            var = h * np.exp(fit)
            self.c[h] = np.mean(r[ok] ** 2 / var)
            z = r[ok] / np.sqrt(self.c[h] * var)
            q = np.quantile(z, LEVELS)
            self.zq[h] = q - np.median(z)  # shape only; centred at 0 like the Gaussian
            self.n[h] = int(ok.sum())
        return self

    def sigma(self, bars: pd.DataFrame) -> np.ndarray:
        """(n, H_MAX) h-day σ at every bar (NaN in warm-up), from bars <= t."""
        x = har_regressors(daily_variance(bars, self.kind))
        pred = x @ self.coef[1:].T  # (n, H)
        hs = np.arange(1, H_MAX + 1)
        return np.sqrt(self.c[1:] * hs * np.exp(pred))


# --- forecasters --------------------------------------------------------------------------------

def trailing_drift(log_close: np.ndarray, window: int) -> np.ndarray:
    mu = np.full(log_close.size, np.nan)
    mu[window:] = (log_close[window:] - log_close[:-window]) / window
    return mu


class ScaleBand(Forecaster):
    """Median 0 (or h·μ_t, μ the trailing `drift`-session mean return) ± σ_{t,h} × z-quantiles,
    σ from `sigma_fn(series)` (n, H_MAX)."""

    def __init__(self, name, sigma_fn, zq, drift: int | None = None):
        self.name = name
        self.sigma_fn = sigma_fn
        self.zq = zq  # (H_MAX, Q)
        self.drift = drift
        self.quantiles = LEVELS
        self._cache: dict[str, np.ndarray] = {}

    def fit(self, history):
        return self

    def table(self, series: TickerSeries) -> np.ndarray:
        if series.ticker not in self._cache:
            self._cache[series.ticker] = self.sigma_fn(series)
        return self._cache[series.ticker]

    def historical_forecasts(self, series, origins, horizon):
        t = np.asarray(origins, dtype=np.intp)
        sig = self.table(series)[t, :horizon]
        q = sig[:, :, None] * self.zq[None, :horizon, :]
        if self.drift:
            mu = trailing_drift(series.log_close, self.drift)[t]
            q = q + mu[:, None, None] * np.arange(1, horizon + 1)[None, :, None]
        keep = np.isfinite(q).all(axis=(1, 2))
        return HistoricalForecasts(t[keep], q[keep], self.quantiles)


class RescaledModel(Forecaster):
    """The network's quantiles with half-widths × σ_HAR,h / (σ_EWMA √h); optionally recentred
    on h·μ_t (trailing drift)."""

    def __init__(self, name, model, har_table, drift: int | None = None):
        self.name = name
        self.model = model
        self.har_table = har_table  # series -> (n, H_MAX)
        self.drift = drift
        self.quantiles = model.quantiles
        self._cache: dict[str, np.ndarray] = {}

    def fit(self, history):
        return self

    def historical_forecasts(self, series, origins, horizon):
        base = self.model.historical_forecasts(series, origins, horizon)
        if series.ticker not in self._cache:
            ewma = np.maximum(series.volatility, VOL_FLOOR)[:, None] * np.sqrt(
                np.arange(1, H_MAX + 1))[None, :]
            self._cache[series.ticker] = self.har_table(series) / ewma
        t = base.origins
        ratio = self._cache[series.ticker][t, :horizon]
        q = np.asarray(base.log_returns, dtype=np.float64)
        m = q[:, :, [self.quantiles.index(0.5)]]
        out = m + (q - m) * ratio[:, :, None]
        if self.drift:
            mu = trailing_drift(series.log_close, self.drift)[t]
            out = out - m + (mu[:, None] * np.arange(1, horizon + 1)[None, :])[:, :, None]
        keep = np.isfinite(out).all(axis=(1, 2))
        return HistoricalForecasts(t[keep], out[keep], self.quantiles)


def named(f, name):
    f.name = name
    return f


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    predictor, bars = bg.load(Path(get_settings().model_dir) / WEIGHTS)
    manifest = predictor.manifest
    test = manifest.split.test
    train_end = manifest.split.train[1]
    served = predictor.band_settings
    print(f"model {manifest.version}; {len(bars)} tickers; train end {train_end}; "
          f"served {served.to_dict()}")

    tick = time.perf_counter()
    hars = {k: HAR(k).fit(bars, train_end) for k in ("gk", "cc")}
    print(f"HAR fits: {time.perf_counter() - tick:.2f} s")
    for k, har in hars.items():
        for h in (1, 5, 30):
            a, b, c, d = har.coef[h]
            print(f"HAR {k} h={h}: a={a:.4f} b_d={b:.4f} c_w={c:.4f} d_m={d:.4f} "
                  f"R2={har.r2[h]:.3f} n={har.n[h]} c_h={har.c[h]:.4f} "
                  f"zq(0.1,0.9)=({har.zq[h][1]:.3f},{har.zq[h][5]:.3f})")

    gauss = np.tile(ndtri(np.asarray(LEVELS)), (H_MAX, 1))  # (H, Q)

    def har_fn(kind):
        return lambda s: hars[kind].sigma(s.bars)

    def ewma_fn(s):
        return np.maximum(s.volatility, VOL_FLOOR)[:, None] * np.sqrt(np.arange(1, H_MAX + 1))

    model = bg.CachedModel(predictor)
    ewma = BAND_BASELINES["ewma"](slots=bg.HORIZONS)
    HS = bg.HORIZONS
    cal500 = ACISettings(calibration=500, vol_beta=1.0)
    har_g = ScaleBand("har_gk_gauss", har_fn("gk"), gauss)
    har_e = ScaleBand("har_gk_emp", har_fn("gk"), hars["gk"].zq[1:])
    har_c = ScaleBand("har_cc_gauss", har_fn("cc"), gauss)
    har_g_d = ScaleBand("har_gk_gauss_drift250", har_fn("gk"), gauss, drift=250)
    ewma_d = ScaleBand("ewma_drift250", ewma_fn, gauss, drift=250)
    mh = RescaledModel("mhar", model, har_fn("gk"))
    mh_d = RescaledModel("mhar_drift250", model, har_fn("gk"), drift=250)
    cands = [
        named(ACIForecaster(har_g, BASELINE_ACI, slots=HS), "har_gk_gauss_aci"),
        named(ACIForecaster(har_e, BASELINE_ACI, slots=HS), "har_gk_emp_aci"),
        named(ACIForecaster(har_c, BASELINE_ACI, slots=HS), "har_cc_gauss_aci"),
        named(ACIForecaster(har_g, cal500, slots=HS), "har_gk_gauss_aci_cal500"),
        named(ACIForecaster(har_g, served, slots=HS), "har_gk_gauss_aci_served"),
        named(ACIForecaster(mh, served, slots=HS), "mhar_aci_served"),
        named(ACIForecaster(mh, cal500, slots=HS), "mhar_aci_cal500_b1"),
        named(ACIForecaster(har_g_d, BASELINE_ACI, slots=HS), "har_gk_gauss_drift250_aci"),
        named(ACIForecaster(ewma_d, BASELINE_ACI, slots=HS), "ewma_drift250_aci"),
        named(ACIForecaster(mh_d, served, slots=HS), "mhar_drift250_aci_served"),
        named(ACIForecaster(mh_d, cal500, slots=HS), "mhar_drift250_aci_cal500_b1"),
    ]
    forecasters = [model, BASELINES[NAIVE](), ewma,
                   bg._named(ACIForecaster(ewma, BASELINE_ACI, slots=HS), bg.REFERENCE),
                   bg._named(ACIForecaster(model, served, slots=HS), "served"),
                   har_g, har_c, *cands]
    _, val, tst = bg.walk(forecasters, bars, test, train_end)
    names = [c.name for c in cands]
    chosen, chosen_all = bg.report(
        val, tst, names, "served", "the new candidates", ["served", *names],
        [bg.REFERENCE, "ewma", "served", "har_gk_gauss", "har_cc_gauss", *names])

    # Serving cost: a cold served band at one origin reads history + horizon = 630 origins.
    s = TickerSeries("AAPL", bars["AAPL"])
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        tail = TickerSeries("AAPL", s.bars.iloc[-(served.history + H_MAX + 30):])
        hars["gk"].sigma(tail.bars)
    per = (time.perf_counter() - t0) / reps
    print(f"HAR σ for a served band's {served.history + H_MAX} origins (one ticker): "
          f"{per * 1e3:.2f} ms ({per / (served.history + H_MAX) * 1e6:.2f} us/origin)")
    t0 = time.perf_counter()
    for _ in range(reps):
        hars["gk"].sigma(s.bars)
    per = (time.perf_counter() - t0) / reps
    print(f"HAR σ over a whole series ({len(s.bars)} bars): {per * 1e3:.2f} ms "
          f"({per / len(s.bars) * 1e6:.2f} us/origin)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "chosen": chosen, "chosen_with_served": chosen_all, "validation": val, "test": tst,
            "har": {k: {"coef": h.coef.tolist(), "c": h.c.tolist(), "r2": h.r2.tolist(),
                        "zq": h.zq.tolist(), "n": h.n.tolist()} for k, h in hars.items()}},
            indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
