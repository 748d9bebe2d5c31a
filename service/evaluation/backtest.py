"""Walk-forward backtest: the serving predictor's forecasts at many past origins vs the baselines.

For every origin t (a trading date in the range) and horizon h, the model forecasts from bars ≤ t
only, through `Predictor.predict_origins` — the class the API serves with: same features, same
training scaler, same ONNX session, one batched onnxruntime call per ticker. Every baseline
forecasts the identical origins. The outcome is the bar h trading days after t (counted in bars,
not the calendar); origins without one are dropped for that h.

Prices. The model and the baselines forecast h-day log returns of ADJUSTED close. The API turns a
forecast r̂ into a price as close_t · exp(r̂) with the origin's quoted (unadjusted) close, and the
backtest scores exactly that number: predicted = close_t · exp(r̂), actual = close_t · exp(r) with
r = log(adj_{t+h} / adj_t) the realized adjusted return. So `actual` is the origin's quoted price
carried forward by the split- and dividend-adjusted move. It equals close_{t+h} whenever no split
or dividend falls in (t, t+h]; across a split it avoids the spurious 50 % "error" a raw close_{t+h}
would show (AAPL's 7:1 split of June 2014 lies in the shared data); across an ex-dividend date it
counts the dividend as part of the move (a total return, which is what adj_close forecasts). Both
sides use the same origin close, so each dollar error is close_t · |exp(r) - exp(r̂)|: the return
error in the origin's dollars. Scoring adj_close levels on both sides would give the same ratios in
back-adjusted dollars nobody ever quoted (2013 prices shrunk by every later dividend).

This module is numpy/pandas only: the predictor comes in as an argument, the DB stays in db/.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from service.core.errors import InsufficientHistory
from service.forecasting import metrics as m
from service.forecasting.baselines import BASELINES
from service.forecasting.spec import DEFAULT_LEVEL, band_indices
from service.forecasting.windows import prices_from_log_returns

if TYPE_CHECKING:  # the serving predictor; imported for types only (forecasting stays ORT-free)
    from service.inference.predictor import Predictor

log = logging.getLogger(__name__)

MODEL = "model"
NAIVE = "naive"
BUY_AND_HOLD = "buy_and_hold"  # a benchmark strategy, stored as a method with strategy metrics
# Pooled rows (every ticker at once). Not "ALL": that is Allstate's ticker, in the shared data.
POOLED = "*"
DEFAULT_HORIZONS = (1, 5, 30)
TRADED = ("long_flat", "long_short")

# Every metric the backtest stores, in display order, with what it means. Rows store only the
# metrics that apply (DM is vs naive, so naive has none; IC is cross-sectional, so pooled rows
# only; intervals are the model's); a metric that applies but is undefined is stored as NULL.
METRICS: dict[str, str] = {
    "n_forecasts": "number of (ticker, origin) forecasts scored",
    "mae": "mean |actual - predicted| close, dollars",
    "rmse": "sqrt(mean (actual - predicted)^2), dollars",
    "mape": "100 * mean |actual - predicted| / actual, percent",
    "rel_mae": "MAE / MAE of naive on the same forecasts (< 1 beats naive)",
    "r2_returns": "1 - SS_res / SS_tot of h-day log returns (0 = the sample mean return)",
    "directional_accuracy": "share of sign(predicted) == sign(realized), zero moves/calls excluded",
    "dm_squared_stat": "Diebold-Mariano statistic vs naive, squared dollar loss (< 0: beats naive)",
    "dm_squared_pvalue": "two-sided HLN-corrected p-value of dm_squared_stat",
    "dm_absolute_stat": "Diebold-Mariano statistic vs naive, absolute dollar loss",
    "dm_absolute_pvalue": "two-sided HLN-corrected p-value of dm_absolute_stat",
    "ic_mean": "mean over origin dates of the cross-sectional Pearson IC (pooled rows)",
    "ic_icir": "ic_mean / std of the daily IC",
    "rank_ic_mean": "mean over origin dates of the cross-sectional Spearman IC (pooled rows)",
    "rank_ic_icir": "rank_ic_mean / std of the daily rank IC",
    "coverage": "share of actual closes inside the model's 10-90% band",
    "width_dollars": "mean width of the 10-90% band, dollars",
    "width_relative": "mean width of the 10-90% band / origin close",
    **{
        f"{kind}_{name}": f"{kind} strategy on every h-th session, equal weight over the "
                          f"tickers with a forecast: {what}"
        for kind in (*TRADED, BUY_AND_HOLD)
        for name, what in (
            ("cum_return", "compounded return"),
            ("sharpe", "annualized Sharpe, risk-free 0"),
            ("max_drawdown", "largest peak-to-trough loss of equity"),
        )
    },
}


@dataclass
class BacktestResult:
    """Forecasts per horizon, their metrics (long form) and what the run did."""

    model_version: str
    start: dt.date  # first origin scored
    end: dt.date  # last origin scored
    tickers: tuple[str, ...]
    horizons: tuple[int, ...]
    methods: tuple[str, ...]  # MODEL, then the baselines
    # Per horizon: ticker, origin, target_date, origin_close, realized (log return),
    # model_lower, model_upper (log returns of the 10-90% band), one column per method.
    forecasts: dict[int, pd.DataFrame]
    metrics: pd.DataFrame  # ticker, horizon, method, metric, value (NaN where undefined)
    config: dict
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def value(self, metric: str, method: str = MODEL, horizon: int = 1,
              ticker: str = POOLED) -> float:
        """One stored number; KeyError if the run has no such row."""
        return metric_value(self.metrics, metric, method, horizon, ticker)


def metric_value(metrics: pd.DataFrame, metric: str, method: str, horizon: int,
                 ticker: str = POOLED) -> float:
    """One number out of a long metrics frame; KeyError if absent."""
    hit = metrics[(metrics["metric"] == metric) & (metrics["method"] == method)
                  & (metrics["horizon"] == horizon) & (metrics["ticker"] == ticker)]
    if hit.empty:
        raise KeyError(f"no {metric} for {method} at h={horizon}, ticker {ticker}")
    return float(hit["value"].iloc[0])


def bars_by_ticker(bars_multi: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A multi-ticker bars frame (leading `ticker` column) as one bars frame per ticker."""
    if "ticker" not in bars_multi.columns:
        raise ValueError("bars_multi is missing column 'ticker'")
    return {
        str(ticker): part.drop(columns="ticker").sort_values("date").reset_index(drop=True)
        for ticker, part in bars_multi.groupby("ticker", sort=True)
    }


def _check_horizons(horizons: Sequence[int], max_horizon: int) -> tuple[int, ...]:
    hs = tuple(sorted({int(h) for h in horizons}))
    if not hs:
        raise ValueError("horizons must not be empty")
    bad = [h for h in hs if not 1 <= h <= max_horizon]
    if bad:
        raise ValueError(f"horizons must lie in 1..{max_horizon} (the model's horizon), got {bad}")
    return hs


def _check_baselines(baselines: Sequence[str]) -> tuple[str, ...]:
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known: {list(BASELINES)}")
    # Naive is the yardstick of rel_mae and DM, so it is always scored and always first.
    return (NAIVE, *dict.fromkeys(b for b in baselines if b != NAIVE))


def run_backtest(
    predictor: Predictor,
    bars: Mapping[str, pd.DataFrame],
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    horizons: Sequence[int] | None = None,
    baselines: Sequence[str] = tuple(BASELINES),
) -> BacktestResult:
    """Forecast every origin in [start, end] (default: the model's test segment) and score it.

    `bars` maps ticker -> that ticker's full bars (history before `start` feeds the features;
    bars after `end` supply the realized outcomes). Baselines are fitted on bars up to the end
    of the model's training segment, or up to `start` if that is earlier, so neither sees an
    outcome it is scored on. Tickers without enough history are skipped, with the reason.
    `horizons=None` means those of DEFAULT_HORIZONS (1, 5, 30) the model forecasts.
    """
    started = time.perf_counter()
    manifest = predictor.manifest
    spec = manifest.spec
    if horizons is None:
        horizons = [h for h in DEFAULT_HORIZONS if h <= spec.horizon]
    horizons = _check_horizons(horizons, spec.horizon)
    baseline_names = _check_baselines(baselines)
    test_first, test_last = manifest.split.test
    start = start or test_first
    end = end or test_last
    if start > end:
        raise ValueError(f"start {start} is after end {end}")
    if not bars:
        raise ValueError("no tickers to backtest")
    fit_end = min(manifest.split.train[1], start)
    quantiles = list(spec.quantiles)
    median = quantiles.index(0.5)
    lower, upper = band_indices(spec.quantiles, DEFAULT_LEVEL)
    max_h = max(horizons)

    rows: dict[int, list[pd.DataFrame]] = {h: [] for h in horizons}
    skipped: dict[str, str] = {}
    seconds = {"model": 0.0, "baselines": 0.0}
    for ticker, ticker_bars in bars.items():
        ticker_bars = ticker_bars.reset_index(drop=True)
        dates = pd.DatetimeIndex(ticker_bars["date"])
        wanted = dates[(dates >= pd.Timestamp(start)) & (dates <= pd.Timestamp(end))]
        if wanted.empty:
            skipped[ticker] = f"no bars between {start} and {end}"
            continue
        log_adj = np.log(ticker_bars["adj_close"].to_numpy(dtype=np.float64))
        train_log_adj = log_adj[dates <= pd.Timestamp(fit_end)]

        tick = time.perf_counter()
        try:
            origin_dates, q, closes = predictor.predict_origins(ticker, ticker_bars, list(wanted))
        except InsufficientHistory as exc:
            skipped[ticker] = str(exc)
            continue
        seconds["model"] += time.perf_counter() - tick
        if len(origin_dates) == 0:
            skipped[ticker] = f"no origin between {start} and {end} has a full feature window"
            continue
        idx = dates.get_indexer(origin_dates)  # bar index of each origin
        predicted = {MODEL: q[:, :, median].astype(np.float64)}  # (N, H)

        tick = time.perf_counter()
        try:
            for name in baseline_names:
                baseline = BASELINES[name]().fit(train_log_adj)
                predicted[name] = baseline.predict(log_adj, idx, max_h)  # (N, max_h)
        except ValueError as exc:
            skipped[ticker] = f"cannot fit the {name} baseline on bars up to {fit_end}: {exc}"
            continue
        finally:
            seconds["baselines"] += time.perf_counter() - tick

        for h in horizons:
            ok = idx + h < len(ticker_bars)
            if not ok.any():
                continue
            t = idx[ok]
            frame = pd.DataFrame({
                "ticker": ticker,
                "origin": origin_dates[ok],
                "target_date": dates[t + h],
                "origin_close": closes[ok],
                "realized": log_adj[t + h] - log_adj[t],
                "model_lower": q[ok, h - 1, lower].astype(np.float64),
                "model_upper": q[ok, h - 1, upper].astype(np.float64),
            })
            for name, pred in predicted.items():
                frame[name] = pred[ok, h - 1]
            rows[h].append(frame)

    scored = sorted({f.ticker.iloc[0] for parts in rows.values() for f in parts})
    if not scored:
        reasons = "; ".join(f"{t}: {why}" for t, why in skipped.items())
        raise ValueError(f"nothing to backtest between {start} and {end}: {reasons}")
    forecasts = {h: pd.concat(parts, ignore_index=True) for h, parts in rows.items() if parts}
    methods = (MODEL, *baseline_names)

    tick = time.perf_counter()
    metrics = compute_metrics(forecasts, methods)
    seconds["metrics"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started

    first = min(f["origin"].min() for f in forecasts.values()).date()
    last = max(f["origin"].max() for f in forecasts.values()).date()
    config = {
        "horizons": list(horizons),
        "baselines": list(baseline_names),
        "requested_start": start.isoformat(),
        "requested_end": end.isoformat(),
        "test_segment": [test_first.isoformat(), test_last.isoformat()],
        # Origins before the test segment were seen (as inputs or targets) in training.
        "in_sample_origins": start < test_first,
        "baseline_fit_end": fit_end.isoformat(),
        "prices": "close_t * exp(log return of adj_close); actual uses the realized adj return",
        "point_forecast": "median (q=0.5)",
        "interval": [quantiles[lower], quantiles[upper]],
        "skipped": skipped,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    return BacktestResult(
        model_version=manifest.version, start=first, end=last, tickers=tuple(scored),
        horizons=tuple(sorted(forecasts)), methods=methods, forecasts=forecasts,
        metrics=metrics, config=config, skipped=skipped, seconds=seconds,
    )


# --- metrics ------------------------------------------------------------------------------------


def _dm_or_nan(test, *args) -> tuple[float, float]:
    """(statistic, p-value) of a DM test, or NaNs where too few forecasts make it undefined."""
    try:
        res = test(*args)
    except ValueError:
        return float("nan"), float("nan")
    return res.statistic, res.pvalue


def _dm(actual, predicted, naive, h: int, origins=None) -> dict[str, float]:
    """DM vs naive on dollar losses, per ticker; pooled: d_t averaged across tickers per date."""
    out = {}
    err, err_naive = actual - predicted, actual - naive
    for loss in ("squared", "absolute"):
        if origins is None:
            stat, p = _dm_or_nan(m.diebold_mariano, actual, predicted, naive, h, loss)
        else:
            d = err**2 - err_naive**2 if loss == "squared" else np.abs(err) - np.abs(err_naive)
            per_date = pd.Series(d).groupby(np.asarray(origins)).mean()  # sorted by date
            stat, p = _dm_or_nan(m.diebold_mariano_differential, per_date.to_numpy(), h)
        out[f"dm_{loss}_stat"], out[f"dm_{loss}_pvalue"] = stat, p
    return out


def _strategy(predicted: np.ndarray, realized: np.ndarray, h: int, kinds) -> dict[str, float]:
    out = {}
    for kind in kinds:
        res = m.evaluate_strategy(predicted, realized, h, kind)
        out[f"{kind}_cum_return"] = res.cumulative_return
        out[f"{kind}_sharpe"] = res.sharpe
        out[f"{kind}_max_drawdown"] = res.max_drawdown
    return out


def _book(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """(origin x ticker) pivot of one column: a row per session, NaN where a ticker has none."""
    # Every origin date any ticker has, so the strategy's every-h-th row is every h-th session;
    # a ticker that starts late (or lacks a bar) sits those periods out instead of erasing them.
    return frame.pivot(index="origin", columns="ticker", values=column)


def _group_metrics(g: pd.DataFrame, h: int, methods: Sequence[str],
                   pooled: bool) -> dict[str, dict[str, float]]:
    """{method: {metric: value}} for one ticker's (or the pooled) forecasts at horizon h."""
    close = g["origin_close"].to_numpy()
    realized = g["realized"].to_numpy()
    actual = prices_from_log_returns(close, realized)
    naive = prices_from_log_returns(close, g[NAIVE].to_numpy())
    out: dict[str, dict[str, float]] = {}
    for method in methods:
        r_hat = g[method].to_numpy()
        pred = prices_from_log_returns(close, r_hat)
        row = {
            "n_forecasts": float(len(g)),
            "mae": m.mae(actual, pred),
            "rmse": m.rmse(actual, pred),
            "mape": m.mape(actual, pred),
            "rel_mae": m.relative_mae(actual, pred, naive),
            "r2_returns": m.r2_returns(realized, r_hat),
            "directional_accuracy": m.directional_accuracy(realized, r_hat),
        }
        if method != NAIVE:
            row |= _dm(actual, pred, naive, h, g["origin"].to_numpy() if pooled else None)
        if pooled:
            for prefix, how in (("ic", "pearson"), ("rank_ic", "spearman")):
                ic = m.ic_summary(g["origin"].to_numpy(), r_hat, realized, how)
                row[f"{prefix}_mean"], row[f"{prefix}_icir"] = ic.mean, ic.icir
        if method == MODEL:
            lo = prices_from_log_returns(close, g["model_lower"].to_numpy())
            hi = prices_from_log_returns(close, g["model_upper"].to_numpy())
            row["coverage"] = m.interval_coverage(actual, lo, hi)
            width = m.interval_width(lo, hi, close)
            row["width_dollars"], row["width_relative"] = width.dollars, width.relative
        if pooled:
            book_pred, book_real = _book(g, method), _book(g, "realized")
            row |= _strategy(book_pred.to_numpy(), book_real.to_numpy(), h, TRADED)
        else:
            row |= _strategy(r_hat, realized, h, TRADED)
        out[method] = row
    # Buy-and-hold does not depend on a forecast: one row per group, not per method.
    if pooled:
        real = _book(g, "realized").to_numpy()
    else:
        real = realized
    out[BUY_AND_HOLD] = _strategy(real, real, h, (BUY_AND_HOLD,))
    return out


def compute_metrics(forecasts: Mapping[int, pd.DataFrame], methods: Sequence[str]) -> pd.DataFrame:
    """Long frame (ticker, horizon, method, metric, value): per ticker and pooled (POOLED)."""
    records = []
    for h, frame in sorted(forecasts.items()):
        frame = frame.sort_values(["ticker", "origin"], kind="stable")
        groups = [(t, g, False) for t, g in frame.groupby("ticker", sort=True)]
        groups.append((POOLED, frame, True))
        for ticker, g, pooled in groups:
            for method, values in _group_metrics(g, h, methods, pooled).items():
                records.extend((ticker, h, method, name, float(v)) for name, v in values.items())
    return pd.DataFrame.from_records(
        records, columns=["ticker", "horizon", "method", "metric", "value"]
    )


# --- what the CLI and the plots show ------------------------------------------------------------


SUMMARY_COLUMNS = (
    ("MAE ($)", "mae", "{:.3f}"),
    ("rel MAE", "rel_mae", "{:.3f}"),
    ("DirAcc", "directional_accuracy", "{:.3f}"),
    ("DM p (sq)", "dm_squared_pvalue", "{:.3g}"),
    ("DM p (abs)", "dm_absolute_pvalue", "{:.3g}"),
    ("IC", "ic_mean", "{:.3f}"),
    ("rank IC", "rank_ic_mean", "{:.3f}"),
    ("coverage", "coverage", "{:.3f}"),
    ("Sharpe L/F", "long_flat_sharpe", "{:.2f}"),
    ("Sharpe L/S", "long_short_sharpe", "{:.2f}"),
)


def summary_table(metrics: pd.DataFrame, ticker: str = POOLED) -> str:
    """Markdown table: each horizon, the model and each baseline, then buy-and-hold's Sharpe."""
    part = metrics[metrics["ticker"] == ticker]
    if part.empty:
        raise KeyError(f"no metrics for ticker {ticker}")
    lookup = {(int(r.horizon), r.method, r.metric): r.value for r in part.itertuples()}
    present = set(part["method"]) - {BUY_AND_HOLD}
    # The model first, then the baselines in registry order (naive, the yardstick, leads).
    methods = [x for x in (MODEL, *BASELINES) if x in present]
    methods += sorted(present - set(methods))
    header = ["h", "method", *[c[0] for c in SUMMARY_COLUMNS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]

    def cell(key, fmt) -> str:
        if key not in lookup:
            return ""
        v = lookup[key]
        return "n/a" if v is None or not np.isfinite(v) else fmt.format(v)

    for h in sorted({int(x) for x in part["horizon"]}):
        for method in methods:
            cells = [cell((h, method, metric), fmt) for _, metric, fmt in SUMMARY_COLUMNS]
            lines.append(f"| {h} | {method} | " + " | ".join(cells) + " |")
        bh = cell((h, BUY_AND_HOLD, "buy_and_hold_sharpe"), "{:.2f}")
        blanks = [""] * (len(SUMMARY_COLUMNS) - 2)
        lines.append(f"| {h} | buy & hold | " + " | ".join([*blanks, bh, ""]) + " |")
    return "\n".join(lines)


def pooled_equity(frame: pd.DataFrame, method: str | None, h: int, kind: str) -> pd.Series:
    """Equal-weight book equity (starts at 1) of one strategy, indexed by each period's end date.

    `method=None` with kind buy_and_hold gives the benchmark's curve.
    """
    real = _book(frame, "realized")
    pred = real if method is None else _book(frame, method)
    period = m.strategy_returns(pred.to_numpy(), real.to_numpy(), h, kind)
    target = frame.groupby("origin")["target_date"].max().reindex(real.index)
    dates = [real.index[0], *target.to_numpy()[::h][: len(period)]]
    return pd.Series(np.concatenate([[1.0], np.cumprod(1.0 + period)]),
                     index=pd.DatetimeIndex(dates, name="date"), name=method or kind)
