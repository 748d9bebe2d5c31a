"""What a backtest shows: the CLI's markdown table, the README's, the equity curves of the plots."""

from __future__ import annotations

import numpy as np
import pandas as pd

from service.evaluation.scoring import BUY_AND_HOLD, METRICS, MODEL, POOLED, book
from service.forecasting import metrics as m
from service.forecasting.baselines import BASELINES

# (metric, format) of the CLI's table; the headers are the catalogue's labels.
SUMMARY_COLUMNS = tuple((METRICS[name].label, name, fmt) for name, fmt in (
    ("mae", "{:.3f}"),
    ("rel_mae", "{:.3f}"),
    ("directional_accuracy", "{:.3f}"),
    ("dm_squared_pvalue", "{:.3g}"),
    ("dm_absolute_pvalue", "{:.3g}"),
    ("ic_mean", "{:.3f}"),
    ("rank_ic_mean", "{:.3f}"),
    ("coverage", "{:.3f}"),
    ("long_flat_sharpe", "{:.2f}"),
    ("long_short_sharpe", "{:.2f}"),
))


# The README's Results table: fewer columns, the methods by their titles.
README_COLUMNS = tuple(c for c in SUMMARY_COLUMNS if c[1] in (
    "mae", "rel_mae", "directional_accuracy", "dm_squared_pvalue", "ic_mean", "coverage",
    "long_flat_sharpe"))
# Buy-and-hold has no forecast: its one row shows its Sharpe in the long/flat Sharpe column.
BUY_AND_HOLD_CELL = ("long_flat_sharpe", "buy_and_hold_sharpe")


def _title(method: str) -> str:
    if method == MODEL:
        return f"**{MODEL}**"
    return BASELINES[method].title if method in BASELINES else method


def summary_table(metrics: pd.DataFrame, ticker: str = POOLED,
                  columns: tuple = SUMMARY_COLUMNS, *, readme: bool = False) -> str:
    """Markdown table: each horizon, the model and each baseline, then buy-and-hold's Sharpe.

    `readme=True` is the README's form: methods by their titles, numbers right-aligned.
    """
    part = metrics[metrics["ticker"] == ticker]
    if part.empty:
        raise KeyError(f"no metrics for ticker {ticker}")
    lookup = {(int(r.horizon), r.method, r.metric): r.value for r in part.itertuples()}
    present = set(part["method"]) - {BUY_AND_HOLD}
    # The model first, then the baselines in registry order (naive, the yardstick, leads).
    methods = [x for x in (MODEL, *BASELINES) if x in present]
    methods += sorted(present - set(methods))
    header = ["h", "method", *[c[0] for c in columns]]
    rule = ["---", "---", *(["---:"] if readme else ["---"]) * len(columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]

    def cell(key, fmt) -> str:
        if key not in lookup:
            return ""
        v = lookup[key]
        return "n/a" if v is None or not np.isfinite(v) else fmt.format(v)

    for h in sorted({int(x) for x in part["horizon"]}):
        for method in methods:
            cells = [cell((h, method, metric), fmt) for _, metric, fmt in columns]
            name = _title(method) if readme else method
            lines.append(f"| {h} | {name} | " + " | ".join(cells) + " |")
        column, metric = BUY_AND_HOLD_CELL
        bh = [cell((h, BUY_AND_HOLD, metric), fmt) if name == column else ""
              for _, name, fmt in columns]
        lines.append(f"| {h} | buy & hold | " + " | ".join(bh) + " |")
    return "\n".join(lines)


def pooled_equity(frame: pd.DataFrame, method: str | None, h: int, kind: str) -> pd.Series:
    """Equal-weight book equity (starts at 1) of one strategy, indexed by each period's end date.

    `method=None` with kind buy_and_hold gives the benchmark's curve.
    """
    real = book(frame, "realized")
    pred = real if method is None else book(frame, method)
    period = m.strategy_returns(pred.to_numpy(), real.to_numpy(), h, kind)
    target = frame.groupby("origin")["target_date"].max().reindex(real.index)
    dates = [real.index[0], *target.to_numpy()[::h][: len(period)]]
    return pd.Series(np.concatenate([[1.0], np.cumprod(1.0 + period)]),
                     index=pd.DatetimeIndex(dates, name="date"), name=method or kind)
