"""Scoring historical forecasts: the metric catalogue and every number a backtest stores.

`compute_metrics` takes the forecasts `historical_forecasts` made (one frame per horizon, a
column per method) and scores each method per ticker and pooled, with the formulas of
service/forecasting/metrics.py. The catalogue `METRICS` is the one list of what is stored, with
each metric's label, meaning and direction: the CLI and README tables, the API schema and the
page all read it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

from service.forecasting import metrics as m
from service.forecasting import significance as sig
from service.forecasting.forecaster import MODEL
from service.forecasting.spec import BAND_LEVELS, DEFAULT_LEVEL
from service.forecasting.windows import prices_from_log_returns

NAIVE = "naive"  # the yardstick of rel_mae and DM
BUY_AND_HOLD = "buy_and_hold"  # a benchmark strategy, stored as a method with strategy metrics
# Pooled rows (every ticker at once). Not "ALL": that is Allstate's ticker, in the shared data.
POOLED = "*"
TRADED = ("long_flat", "long_short")
__all__ = ["BUY_AND_HOLD", "METRICS", "MODEL", "NAIVE", "POOLED", "REFERENCE_BAND", "Metric",
           "compute_metrics", "metric_value"]

Unit = Literal["count", "dollars", "percent", "ratio", "share", "statistic", "p-value", "return"]


@dataclass(frozen=True)
class Metric:
    """One stored metric: its name, a table label, a page title, what it means, which way wins."""

    name: str
    label: str  # column header (CLI and README tables)
    title: str  # row name on the page
    meaning: str  # the formula, in words
    unit: Unit
    better: Literal["lower", "higher"] | None  # None: neither (a count, a p-value, coverage)

    def public(self) -> dict:
        return asdict(self)


_STRATEGY = {"long_flat": ("L/F", "long/flat"), "long_short": ("L/S", "long/short"),
             BUY_AND_HOLD: ("B&H", "buy & hold")}

# The band every band's interval score is tested against (Diebold–Mariano): the random walk with
# an EWMA-volatility Gaussian band, recalibrated by ACI — the one-line baseline to beat.
REFERENCE_BAND = "ewma_aci"

# Every metric the backtest stores, in display order. Rows store only the metrics that apply
# (DM is vs naive, so naive has none; IC is cross-sectional, so pooled rows only; intervals are
# those of a method with a band, the model's); one that applies but is undefined is NULL.
METRICS: dict[str, Metric] = {x.name: x for x in (
    Metric("n_forecasts", "n", "Forecasts scored",
           "number of (ticker, origin) forecasts scored", "count", None),
    Metric("mae", "MAE ($)", "MAE ($)", "mean |actual - predicted| close, dollars",
           "dollars", "lower"),
    Metric("rmse", "RMSE ($)", "RMSE ($)", "sqrt(mean (actual - predicted)^2), dollars",
           "dollars", "lower"),
    Metric("mape", "MAPE", "MAPE", "100 * mean |actual - predicted| / actual, percent",
           "percent", "lower"),
    Metric("rel_mae", "rel MAE", "MAE relative to naive",
           "MAE / MAE of naive on the same forecasts (< 1 beats naive)", "ratio", "lower"),
    *(
        Metric(f"rel_mae_{end}", f"rel MAE {end}", f"MAE relative to naive, 95% {word}",
               f"{word} end of a 95% circular block-bootstrap interval of rel_mae, resampling "
               "origin dates in blocks of max(h, n^(1/3)) (pooled rows)", "ratio", None)
        for end, word in (("lo", "lower"), ("hi", "upper"))
    ),
    Metric("r2_returns", "R² returns", "R² of returns",
           "1 - SS_res / SS_tot of h-day log returns (0 = the sample mean return)",
           "ratio", "higher"),
    Metric("directional_accuracy", "DirAcc", "Direction right",
           "share of sign(predicted) == sign(realized), zero moves/calls excluded",
           "share", "higher"),
    Metric("dm_squared_stat", "DM (sq)", "Diebold–Mariano statistic, squared loss",
           "Diebold-Mariano statistic vs naive, squared dollar loss (< 0: beats naive)",
           "statistic", "lower"),
    Metric("dm_squared_pvalue", "DM p (sq)", "Diebold–Mariano p, squared loss",
           "two-sided HLN-corrected p-value of dm_squared_stat", "p-value", None),
    Metric("dm_squared_t_hac", "DM t (HAC)", "Diebold–Mariano t, Newey–West",
           "mean squared-loss differential vs naive / its Newey-West (HAC) standard error, "
           "lags max(h, 4 (n/100)^(2/9)) (pooled rows; < 0: beats naive)", "statistic", "lower"),
    Metric("dm_squared_p_hac", "DM p (HAC)", "Diebold–Mariano p, Newey–West",
           "two-sided normal p-value of dm_squared_t_hac", "p-value", None),
    Metric("dm_n_eff", "DM n_eff", "Independent forecasts, DM",
           "effective number of independent loss differentials: n * variance / long-run "
           "variance (HAC), beside dm_squared_t_hac", "count", None),
    Metric("dm_absolute_stat", "DM (abs)", "Diebold–Mariano statistic, absolute loss",
           "Diebold-Mariano statistic vs naive, absolute dollar loss", "statistic", "lower"),
    Metric("dm_absolute_pvalue", "DM p (abs)", "Diebold–Mariano p, absolute loss",
           "two-sided HLN-corrected p-value of dm_absolute_stat", "p-value", None),
    Metric("ic_mean", "IC", "Information coefficient",
           "mean over origin dates of the cross-sectional Pearson IC (pooled rows)",
           "ratio", "higher"),
    Metric("ic_icir", "ICIR", "IC information ratio", "ic_mean / std of the daily IC",
           "ratio", "higher"),
    Metric("rank_ic_mean", "rank IC", "Rank information coefficient",
           "mean over origin dates of the cross-sectional Spearman IC (pooled rows)",
           "ratio", "higher"),
    Metric("rank_ic_icir", "rank ICIR", "Rank IC information ratio",
           "rank_ic_mean / std of the daily rank IC", "ratio", "higher"),
    *(
        Metric(f"{prefix}_{name}", f"{short} {label}", f"{words} {title}", f"{meaning} {what}",
               unit, better)
        for prefix, short, words, what in (
            ("ic", "IC", "IC", "the daily IC"), ("rank_ic", "rank IC", "Rank IC",
                                                 "the daily rank IC"))
        for name, label, title, meaning, unit, better in (
            ("t_hac", "t (HAC)", "t, Newey–West",
             "mean / Newey-West (HAC) standard error, lags max(h, 4 (n/100)^(2/9)), of",
             "statistic", "higher"),
            ("n_eff", "n_eff", "independent dates",
             "effective number of independent dates: n * variance / long-run variance of",
             "count", None),
        )
    ),
    Metric("coverage", "coverage", "Inside 10–90% band",
           "share of actual closes inside the method's 10-90% (80 %) band", "share", None),
    Metric("coverage_50", "cov 50%", "Inside 25–75% band",
           "share of actual closes inside the method's 25-75% (50 %) band", "share", None),
    Metric("coverage_90", "cov 90%", "Inside 5–95% band",
           "share of actual closes inside the method's 5-95% (90 %) band", "share", None),
    Metric("interval_score", "IS 80%", "Interval score, 80% band",
           "mean Winkler score of the 80 % band per unit of origin close: (u - l) + (2/0.2) x "
           "the distance by which the close falls outside [l, u]", "ratio", "lower"),
    Metric("dm_interval_stat", "DM IS", "Diebold–Mariano statistic, interval score",
           f"Diebold-Mariano statistic of the 80 % interval score vs the {REFERENCE_BAND} band "
           "(< 0: lower score)", "statistic", "lower"),
    Metric("dm_interval_pvalue", "DM p IS", "Diebold–Mariano p, interval score",
           "two-sided HLN-corrected p-value of dm_interval_stat", "p-value", None),
    *(
        Metric(f"coverage_{name}", f"cov {name}", f"Inside 10–90% band, {name} days",
               f"coverage of the 80 % band over the {name} third of origins by the ticker's "
               "EWMA volatility on the origin day (terciles within each ticker)", "share", None)
        for name in m.TERCILES
    ),
    Metric("width_dollars", "width ($)", "10–90% band width ($)",
           "mean width of the 10-90% band, dollars", "dollars", None),
    Metric("width_relative", "width (rel)", "10–90% band width / close",
           "mean width of the 10-90% band / origin close", "share", None),
    *(
        Metric(f"{kind}_{name}", f"{label} {short}", f"{title} {words}",
               f"{kind} strategy on every h-th session, equal weight over the tickers with a "
               f"forecast: {what}", unit, better)
        for kind in (*TRADED, BUY_AND_HOLD)
        for (short, words) in [_STRATEGY[kind]]
        for name, label, title, what, unit, better in (
            ("cum_return", "cum", "compounded return,", "compounded return", "return",
             "higher"),
            ("sharpe", "Sharpe", "Sharpe,", "annualized Sharpe, risk-free 0", "statistic",
             "higher"),
            ("max_drawdown", "maxDD", "max drawdown,", "largest peak-to-trough loss of equity",
             "return", "lower"),
        )
    ),
    # The rolling evaluation's costed book (forecasting/portfolio.py), h = 1 pooled rows: the
    # model's and the reversal signal's top-k/bottom-k, and equal-weight buy-and-hold.
    *(
        Metric(f"topk_{name}", f"top-k {label}", f"Top-k long-short {title}",
               f"daily long top-k / short bottom-k by predicted return (buy_and_hold: "
               f"equal weight, held), costs per side: {what}", unit, better)
        for name, label, title, what, unit, better in (
            ("sharpe", "Sharpe", "Sharpe", "annualized Sharpe of net daily returns",
             "statistic", "higher"),
            ("gross_sharpe", "gross Sharpe", "Sharpe before costs",
             "annualized Sharpe of daily returns before costs", "statistic", "higher"),
            ("cum_return", "cum", "compounded net return", "compounded net return", "return",
             "higher"),
            ("max_drawdown", "maxDD", "max drawdown", "largest peak-to-trough loss of net equity",
             "return", "lower"),
            ("turnover", "turnover", "daily turnover",
             "mean daily traded notional / (2 x gross exposure); 1 = whole book each day",
             "ratio", None),
            ("cost", "cost", "total cost", "sum of daily costs, in return units", "return",
             "lower"),
        )
    ),
)}


def metric_value(metrics: pd.DataFrame, metric: str, method: str, horizon: int,
                 ticker: str = POOLED) -> float:
    """One number out of a long metrics frame; KeyError if absent."""
    hit = metrics[(metrics["metric"] == metric) & (metrics["method"] == method)
                  & (metrics["horizon"] == horizon) & (metrics["ticker"] == ticker)]
    if hit.empty:
        raise KeyError(f"no {metric} for {method} at h={horizon}, ticker {ticker}")
    return float(hit["value"].iloc[0])


def one_blas_thread() -> None:
    """Run this process's BLAS (the OpenBLAS under numpy and scipy) on one thread: for a pool
    worker, whose core is its own. Its calls here are statsmodels' Kalman recursions on 1 x 1
    matrices, where a thread pool only adds per-call overhead (~12 % of an ARIMA fit); a
    one-thread call gives the same floats."""
    from threadpoolctl import threadpool_limits  # the backtest extra's

    threadpool_limits(1, user_api="blas")


def _dm_or_nan(test, *args) -> tuple[float, float]:
    """(statistic, p-value) of a DM test, or NaNs where too few forecasts make it undefined."""
    try:
        res = test(*args)
    except ValueError:
        return float("nan"), float("nan")
    return res.statistic, res.pvalue


def _per_row(test, *rows) -> tuple[np.ndarray, np.ndarray]:
    """_dm_or_nan of each row of (G, n) arrays: (statistics (G,), p-values (G,))."""
    stat, p = zip(*(_dm_or_nan(test, *args) for args in zip(*rows)))
    return np.array(stat), np.array(p)


def _dm(actual, predicted, naive, h: int, origins=None) -> dict[str, float | np.ndarray]:
    """DM vs naive on dollar losses, per ticker (rows (G, n): one test per row); pooled: d_t
    averaged across tickers per date."""
    out = {}
    err, err_naive = actual - predicted, actual - naive
    for loss in ("squared", "absolute"):
        # d_t as m.diebold_mariano makes it, for every row at once (the same floats: elementwise).
        d = err**2 - err_naive**2 if loss == "squared" else np.abs(err) - np.abs(err_naive)
        if origins is None:
            stat, p = _per_row(lambda row: m.diebold_mariano_differential(row, h), d)
        else:
            per_date = pd.Series(d).groupby(np.asarray(origins)).mean()  # sorted by date
            stat, p = _dm_or_nan(m.diebold_mariano_differential, per_date.to_numpy(), h)
            if loss == "squared":
                hac = sig.hac_mean_test(per_date.to_numpy(), h)
                out["dm_squared_t_hac"], out["dm_squared_p_hac"] = hac.t, hac.pvalue
                out["dm_n_eff"] = hac.n_eff
        out[f"dm_{loss}_stat"], out[f"dm_{loss}_pvalue"] = stat, p
    return out


def _rel_mae_interval(origins, actual, predicted, naive, h: int) -> dict[str, float]:
    """Block-bootstrap 95% interval of pooled rel MAE over origin dates (a date's tickers stay)."""
    sums = pd.DataFrame({"a": np.abs(actual - predicted), "b": np.abs(actual - naive)}).groupby(
        np.asarray(origins)).sum()
    ci = sig.block_bootstrap_ratio(sums["a"].to_numpy(), sums["b"].to_numpy(),
                                   sig.bootstrap_block_length(len(sums), h))
    return {"rel_mae_lo": ci.lower, "rel_mae_hi": ci.upper}


def _strategy(predicted: np.ndarray, realized: np.ndarray, h: int, kinds,
              book: bool) -> dict[str, float | np.ndarray]:
    """Each strategy's figures: of an (origin x ticker) book, or of each ticker's row (G, n)."""
    out = {}
    for kind in kinds:
        if book:
            res = m.evaluate_strategy(predicted, realized, h, kind)
            figures = res.cumulative_return, res.sharpe, res.max_drawdown
        else:
            figures = m.series_strategies(predicted, realized, h, kind)
        for name, value in zip(("cum_return", "sharpe", "max_drawdown"), figures):
            out[f"{kind}_{name}"] = value
    return out


def book(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """(origin x ticker) pivot of one column: a row per session, NaN where a ticker has none."""
    # Every origin date any ticker has, so the strategy's every-h-th row is every h-th session;
    # a ticker that starts late (or lacks a bar) sits those periods out instead of erasing them.
    return frame.pivot(index="origin", columns="ticker", values=column)


def _interval_scores(g: Mapping[str, np.ndarray], method: str, close, actual) -> np.ndarray:
    """Per forecast 80 % interval score, per unit of origin close."""
    lo = prices_from_log_returns(close, g[f"{method}_lower"])
    hi = prices_from_log_returns(close, g[f"{method}_upper"])
    return _unit_interval_scores(lo, hi, close, actual)


def _unit_interval_scores(lo, hi, close, actual) -> np.ndarray:
    """The 80 % interval scores of band prices [lo, hi], per unit of origin close."""
    return m.interval_scores(actual / close, lo / close, hi / close, DEFAULT_LEVEL)


def _band_metrics(g: Mapping[str, np.ndarray], method: str, close, actual, h: int,
                  pooled: bool) -> dict[str, float]:
    """Coverage (each level, each volatility tercile), width, interval score, DM vs the reference."""
    lo = prices_from_log_returns(close, g[f"{method}_lower"])
    hi = prices_from_log_returns(close, g[f"{method}_upper"])
    row = {"coverage": m.interval_coverage(actual, lo, hi)}
    for level in BAND_LEVELS:
        suffix = f"_{round(level * 100)}"
        if f"{method}_lower{suffix}" in g:
            row[f"coverage{suffix}"] = m.interval_coverage(
                actual, prices_from_log_returns(close, g[f"{method}_lower{suffix}"]),
                prices_from_log_returns(close, g[f"{method}_upper{suffix}"]))
    width = m.interval_width(lo, hi, close)
    row["width_dollars"], row["width_relative"] = width.dollars, width.relative
    scores = _unit_interval_scores(lo, hi, close, actual)
    row["interval_score"] = scores.mean(axis=-1)  # a float pooled, (G,) for tickers
    if "vol_rank" in g:
        by = m.coverage_by_tercile(actual, lo, hi, g["vol_rank"])
        row |= {f"coverage_{name}": value for name, value in by.items()}
    if method != REFERENCE_BAND and f"{REFERENCE_BAND}_lower" in g:
        d = scores - _interval_scores(g, REFERENCE_BAND, close, actual)
        if pooled:  # one differential per origin date: the mean over the tickers
            d = pd.Series(d).groupby(g["origin"]).mean().to_numpy()
            stat, p = _dm_or_nan(m.diebold_mariano_differential, d, h)
        else:
            stat, p = _per_row(lambda x: m.diebold_mariano_differential(x, h), d)
        row["dm_interval_stat"], row["dm_interval_pvalue"] = stat, p
    return row


def _group_metrics(g: Mapping[str, np.ndarray], h: int, methods: Sequence[str],
                   frame: pd.DataFrame | None, hold: bool = True
                   ) -> dict[str, dict[str, float | np.ndarray]]:
    """{method: {metric: value}} for the pooled forecasts at horizon h, or {method: {metric:
    (G,) values}} for G tickers' (their columns (G, n), one ticker a row), then buy-and-hold's
    (unless `hold` is False). `g`: the group's columns; `frame`: the pooled group's frame (its
    book), None for tickers'."""
    pooled = frame is not None
    close = g["origin_close"]
    realized = g["realized"]
    actual = prices_from_log_returns(close, realized)
    naive = prices_from_log_returns(close, g[NAIVE])
    out: dict[str, dict[str, float]] = {}
    for method in methods:
        r_hat = g[method]
        pred = prices_from_log_returns(close, r_hat)
        row = {
            "n_forecasts": float(realized.shape[-1]),
            "mae": m.mae(actual, pred),
            "rmse": m.rmse(actual, pred),
            "mape": m.mape(actual, pred),
            "rel_mae": m.relative_mae(actual, pred, naive),
            "r2_returns": m.r2_returns(realized, r_hat),
            "directional_accuracy": m.directional_accuracy(realized, r_hat),
        }
        if method != NAIVE:
            row |= _dm(actual, pred, naive, h, g["origin"] if pooled else None)
        if pooled:
            for prefix, how in (("ic", "pearson"), ("rank_ic", "spearman")):
                daily = m.daily_ic(g["origin"], r_hat, realized, how)  # once for both
                ic = m.summarize_ic(daily)
                row[f"{prefix}_mean"], row[f"{prefix}_icir"] = ic.mean, ic.icir
                hac = sig.hac_mean_test(daily, h)
                row[f"{prefix}_t_hac"], row[f"{prefix}_n_eff"] = hac.t, hac.n_eff
            if method != NAIVE:
                row |= _rel_mae_interval(g["origin"], actual, pred, naive, h)
        if f"{method}_lower" in g:  # a method with a band
            row |= _band_metrics(g, method, close, actual, h, pooled)
        if pooled:
            book_pred, book_real = book(frame, method), book(frame, "realized")
            row |= _strategy(book_pred.to_numpy(), book_real.to_numpy(), h, TRADED, True)
        else:
            row |= _strategy(r_hat, realized, h, TRADED, False)
        out[method] = row
    # Buy-and-hold does not depend on a forecast: one row per group, not per method.
    if not hold:
        return out
    if pooled:
        real = book(frame, "realized").to_numpy()
    else:
        real = realized
    out[BUY_AND_HOLD] = _strategy(real, real, h, (BUY_AND_HOLD,), pooled)
    return out


def _prepared(frame: pd.DataFrame) -> pd.DataFrame:
    """A horizon's forecasts sorted by ticker and origin, with each origin's volatility rank."""
    frame = frame.sort_values(["ticker", "origin"], kind="stable")
    if "origin_vol" in frame.columns:
        # Within each ticker: a calm day for a volatile stock is still a calm day.
        frame = frame.assign(vol_rank=frame.groupby("ticker")["origin_vol"].rank(pct=True))
    return frame


# The prepared frames a metrics task reads: set before the pool forks, so no worker is sent them.
_FRAMES: dict[int, pd.DataFrame] = {}


def _task_records(h: int, tickers: tuple[str, ...] | None, methods: Sequence[str],
                  hold: bool = True) -> list[tuple]:
    """Metric records of some tickers' groups at horizon h, or of the pooled group (None) for
    `methods` (buy-and-hold's after them if `hold`)."""
    frame = _FRAMES[h]
    if tickers is None:
        g = {c: frame[c].to_numpy() for c in frame.columns}
        return [(POOLED, h, method, name, float(v))
                for method, values in _group_metrics(g, h, methods, frame, hold).items()
                for name, v in values.items()]
    part = frame[frame["ticker"].isin(tickers)] if len(tickers) < frame["ticker"].nunique() \
        else frame
    # Each ticker's rows are one run of the sorted frame. The tickers with as many forecasts
    # are scored together, a row each ((G, n) columns gathered from the frame's), so each
    # metric is a few numpy calls for all of them, not a few per ticker.
    names = part["ticker"].to_numpy()
    columns = {c: part[c].to_numpy() for c in part.columns if c not in ("ticker", "target_date")}
    starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
    lengths = np.diff(np.r_[starts, len(names)])
    by_ticker: dict[int, list[tuple]] = {}
    for n in np.unique(lengths):
        rows = np.flatnonzero(lengths == n)
        at = starts[rows, None] + np.arange(n)  # (G, n) positions in the frame
        scored = _group_metrics({c: v[at] for c, v in columns.items()}, h, methods, None, hold)
        for i, row in enumerate(rows):
            by_ticker[row] = [(names[starts[row]], h, method, name,
                               float(v if np.ndim(v) == 0 else v[i]))
                              for method, values in scored.items()
                              for name, v in values.items()]
    return [r for row in range(len(starts)) for r in by_ticker[row]]


def compute_metrics(forecasts: Mapping[int, pd.DataFrame], methods: Sequence[str],
                    workers: int = 1) -> pd.DataFrame:
    """Long frame (ticker, horizon, method, metric, value): per ticker and pooled (POOLED).

    `workers` > 1 scores chunks of tickers (and each pooled group) in that many forked
    processes; the records are the same, in the same order.
    """
    _FRAMES.clear()
    _FRAMES.update({h: _prepared(frame) for h, frame in sorted(forecasts.items())})
    pool = workers > 1 and "fork" in multiprocessing.get_all_start_methods()
    if pool:  # the HAC and bootstrap imports (~1 s) once here, not once per worker
        sig.preload()
    # (h, tickers or None for the pooled group, methods, with buy-and-hold): in record order.
    tasks: list[tuple[int, tuple[str, ...] | None, tuple[str, ...], bool]] = []
    for h, frame in _FRAMES.items():
        tickers = sorted(frame["ticker"].unique())
        n_chunks = max(1, min(len(tickers), workers * 4)) if pool else 1
        size = -(-len(tickers) // n_chunks)
        tasks += [(h, tuple(tickers[i:i + size]), tuple(methods), True)
                  for i in range(0, len(tickers), size)]
        # The pooled group is the largest: one task per method in a pool (buy-and-hold last).
        split = [(m,) for m in methods] if pool else [tuple(methods)]
        tasks += [(h, None, part, i == len(split) - 1) for i, part in enumerate(split)]
    try:
        if pool:
            # The pooled tasks first, so no large one runs last alone.
            order = sorted(range(len(tasks)), key=lambda i: tasks[i][1] is not None)
            with ProcessPoolExecutor(max_workers=workers,
                                     mp_context=multiprocessing.get_context("fork"),
                                     initializer=one_blas_thread) as executor:
                done = dict(zip(order, executor.map(
                    _task_records, *zip(*(tasks[i] for i in order)))))
            parts = [done[i] for i in range(len(tasks))]
        else:
            parts = [_task_records(*task) for task in tasks]
    finally:
        _FRAMES.clear()
    return pd.DataFrame.from_records(
        [r for part in parts for r in part],
        columns=["ticker", "horizon", "method", "metric", "value"]
    )
