"""How much ranking the bars hold: classic daily signals and a rolling learned ranker, rank IC at h = 1.

Issue 13's target (rank IC >= 0.015 with HAC t >= 3 over 2014-2017) is the 1-day-reversal floor.
This asks what a learner could reach on the same data, without the network: for every cached
ticker (`--universe all`, the shared dataset's 489) or `top24`, the daily Spearman rank IC
(`metrics.daily_ic`) of each signal at origin t (bars <= t only) against the log return t -> t+1,
and its Newey-West mean test (`significance.hac_mean_test`, the backtest's own), per segment of
the rolling evaluation: 2014 (blocks 1-2), validation 2015 (3-4), test 2016-2017 (5-8) and the
whole period 2014-01-02 .. 2017-12-05.

Signals (r = daily log return of adj_close, σ = EWMA(0.94) volatility): 1-day reversal -r_t (the
floor, `reversal` in the rolling run), -r_t / σ_t, 5- and 20-day reversal, 12-1 momentum (the
250-session return less the last 20), low volatility -σ_t, low range -log(high/low)_t, the
expanding historical mean of r. The learned ranker is Qlib's Linear model on its CSRankNorm
view: each signal ranked across the day's tickers (scaled to -0.5 .. 0.5), the target the next
day's return ranked the same way, a ridge (λ 1000, fixed, on the stacked panel) refitted at each
126-session block of `make evaluate`'s blocks on every origin whose outcome is known before the
block starts (expanding window), scored on the block. Nothing here chose anything: it is a
diagnostic beside the README's rolling tables.

Run: `python bench/rank_signals.py [--universe top24]` (the bar cache seeded: `make seed`;
≈ 50 s on 2 cores for all tickers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import pandas as pd

from service.core.config import get_settings
from service.db.bars import read_bars_many
from service.db.session import make_engine
from service.forecasting.metrics import daily_ic
from service.forecasting.significance import hac_mean_test
from service.forecasting.spec import UNIVERSES

PERIOD = (dt.date(2014, 1, 2), dt.date(2017, 12, 5))
BLOCK = 126  # sessions, as make evaluate's --retrain-every
SEGMENTS = {"2014 (1-2)": (1, 2), "validation 2015 (3-4)": (3, 4), "test 2016-17 (5-8)": (5, 8),
            "2014-2017 (all)": (1, 8)}
RIDGE_LAMBDA = 1000.0


def panels(universe: str) -> dict[str, pd.DataFrame]:
    engine = make_engine(get_settings().database_url)
    try:
        tickers = None if universe == "all" else list(UNIVERSES[universe])
        bars = read_bars_many(engine, tickers)
    finally:
        engine.dispose()
    wide = {c: bars.pivot(index="date", columns="ticker", values=c).sort_index()
            for c in ("adj_close", "high", "low")}
    wide = {c: w.set_axis(pd.to_datetime(w.index), axis=0) for c, w in wide.items()}
    return wide


def signals(wide: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """({name: (dates, tickers) signal at t from bars <= t}, the log return t -> t+1)."""
    r = np.log(wide["adj_close"]).diff()
    vol = (r ** 2).ewm(alpha=0.06, min_periods=20).mean() ** 0.5
    out = {
        "1-day reversal": -r,
        "1-day reversal / σ": -r / vol,
        "5-day reversal": -r.rolling(5).sum(),
        "20-day reversal": -r.rolling(20).sum(),
        "12-1 momentum": r.rolling(250).sum() - r.rolling(20).sum(),
        "low volatility": -vol,
        "low range": -np.log(wide["high"] / wide["low"]),
        "historical mean": r.expanding(60).mean(),
    }
    return out, r.shift(-1)


def cs_rank(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rank(axis=1, pct=True) - 0.5


def rank_ic(signal: pd.DataFrame, forward: pd.DataFrame, dates: pd.DatetimeIndex) -> pd.Series:
    s, f = signal.loc[dates], forward.loc[dates]
    long = pd.DataFrame({"s": s.stack(future_stack=True), "f": f.stack(future_stack=True)}).dropna()
    when = long.index.get_level_values(0)
    return daily_ic(when, long["s"].to_numpy(), long["f"].to_numpy(), method="spearman")


def ridge_forecast(sig: dict[str, pd.DataFrame], forward: pd.DataFrame,
                   blocks: list[pd.DatetimeIndex], sessions: pd.DatetimeIndex) -> pd.DataFrame:
    """The learned ranker's forecast on every block's origins (NaN elsewhere)."""
    ranked = {k: cs_rank(v) for k, v in sig.items()}
    target = cs_rank(forward)
    names = list(ranked)
    pred = pd.DataFrame(np.nan, index=forward.index, columns=forward.columns)

    def stacked(dates):
        cols = {k: ranked[k].loc[dates].stack(future_stack=True) for k in names}
        cols["y"] = target.loc[dates].stack(future_stack=True)
        return pd.DataFrame(cols)

    for block in blocks:
        # origins whose outcome (the next session) is known before the block's first origin
        first = sessions.get_loc(block[0])
        train = stacked(sessions[:max(first - 1, 0)]).dropna()
        x, y = train[names].to_numpy(), train["y"].to_numpy()
        w = np.linalg.solve(x.T @ x + RIDGE_LAMBDA * np.eye(len(names)), x.T @ y)
        test = stacked(block).drop(columns="y").dropna()
        p = pd.Series(test.to_numpy() @ w, index=test.index).unstack()
        pred.loc[p.index, p.columns] = p
    return pred


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--universe", default="all", choices=["all", *UNIVERSES])
    args = ap.parse_args()
    wide = panels(args.universe)
    sig, forward = signals(wide)
    sessions = wide["adj_close"].index
    inside = sessions[(sessions.date >= PERIOD[0]) & (sessions.date <= PERIOD[1])]
    blocks = [inside[i:i + BLOCK] for i in range(0, len(inside), BLOCK)]
    sig["learned ranker (rolling ridge)"] = ridge_forecast(dict(sig), forward, blocks, sessions)
    print(f"{args.universe}: {wide['adj_close'].shape[1]} tickers, {len(blocks)} blocks of "
          f"{BLOCK} sessions, {inside[0].date()} .. {inside[-1].date()}; rank IC at h = 1 "
          f"(HAC t, n_eff)\n")
    print("| signal | " + " | ".join(SEGMENTS) + " |")
    print("|---|" + "---:|" * len(SEGMENTS))
    for name, s in sig.items():
        cells = []
        for lo, hi in SEGMENTS.values():
            dates = blocks[lo - 1].append(blocks[lo:hi])
            test = hac_mean_test(rank_ic(s, forward, dates).to_numpy())
            cells.append(f"{test.mean:.4f} ({test.t:.2f}, {test.n_eff:.0f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
