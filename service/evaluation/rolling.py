"""Rolling walk-forward evaluation: blocks of origins, each forecast by a model trained before it.

The period [start, end] is cut into blocks of `retrain_every` sessions. Block b is forecast by a
model trained on bars strictly before the block's first origin (training/rolling.py trains it;
this layer only reads artifacts), through the serving Predictor's batched historical-forecast
path (evaluation/backtest.py), beside every baseline and the 1-day-reversal signal fitted on the
same past. The blocks' forecasts are stitched into one run and scored once (scoring.py, so the
HAC statistics are over the whole period), with a costed top-k/bottom-k book per signal
(forecasting/portfolio.py) and a per-block breakdown in the run's config; the run is stored in
the backtest tables, where `GET /metrics/backtest` serves the latest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from service.core.config import PROJECT_ROOT
from service.core.errors import DatabaseUnavailable
from service.db.backtests import get_metrics, store_run
from service.evaluation.backtest import (
    BacktestResult,
    HistoricalRun,
    MethodSet,
    _check_baselines,
    _check_horizons,
    historical_forecasts,
)
from service.evaluation.plots import write_backtest_plots
from service.evaluation.report import band_table, summary_table
from service.evaluation.runs import StoredBacktest
from service.evaluation.scoring import (
    BUY_AND_HOLD,
    METRICS,
    MODEL,
    NAIVE,
    POOLED,
    book,
    compute_metrics,
    metric_value,
)
from service.forecasting import metrics as m
from service.forecasting import portfolio
from service.forecasting import significance as sig
from service.forecasting.bands import ACI_SUFFIX
from service.forecasting.calendar import check_date_range
from service.forecasting.signals import REVERSAL, ReversalSignal
from service.forecasting.spec import FeatureSpec
from service.inference.onnx_model import Provider
from service.inference.predictor import Predictor

WINDOWS = ("expanding", "sliding")
# Band baselines scored beside the served band: EWMA (+ ACI) is the reference band (scoring's
# REFERENCE_BAND); the empirical one costs a rolling quantile per horizon and is opt-in.
DEFAULT_BAND_BASELINES = ("ewma",)
# The books compared: each signal's top-k/bottom-k, and equal-weight buy-and-hold.
PORTFOLIO_SIGNALS = (MODEL, REVERSAL)
PORTFOLIO_METRICS = ("sharpe", "gross_sharpe", "cum_return", "max_drawdown", "turnover", "cost")


@dataclass(frozen=True)
class Block:
    """One retraining block: its 1-based number and its first and last origin dates."""

    number: int
    first: dt.date
    last: dt.date

    def to_dict(self) -> dict:
        return {"block": self.number, "first": self.first.isoformat(),
                "last": self.last.isoformat()}


def plan_blocks(trading_dates, start: dt.date, end: dt.date, retrain_every: int) -> list[Block]:
    """Consecutive blocks of `retrain_every` trading dates covering [start, end]."""
    if retrain_every < 1:
        raise ValueError(f"retrain_every must be >= 1 session, got {retrain_every}")
    check_date_range(start, end)
    days = pd.DatetimeIndex(pd.to_datetime(pd.Index(trading_dates))).normalize().unique()
    days = days.sort_values()
    days = days[(days >= pd.Timestamp(start)) & (days <= pd.Timestamp(end))]
    if days.empty:
        raise ValueError(f"no trading dates between {start} and {end} in the cached bars")
    return [Block(i + 1, days[j].date(), days[min(j + retrain_every, len(days)) - 1].date())
            for i, j in enumerate(range(0, len(days), retrain_every))]


def training_range(block: Block, first_bar: dt.date, window: str,
                   sliding_sessions: int, trading_dates) -> tuple[dt.date, dt.date]:
    """(first, last) bar date a block's model trains on: strictly before the block's first origin.

    expanding: from the first cached bar; sliding: the last `sliding_sessions` dates before it.
    """
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    last = block.first - dt.timedelta(days=1)
    if window == "expanding":
        return first_bar, last
    days = pd.DatetimeIndex(pd.to_datetime(pd.Index(trading_dates))).normalize().unique()
    before = days[days < pd.Timestamp(block.first)].sort_values()
    if before.empty:
        raise ValueError(f"no bars before block {block.number} ({block.first})")
    return before[max(0, len(before) - sliding_sessions)].date(), last


def bars_digest(bars: pd.DataFrame) -> str:
    """sha256 of a bars frame's values (row order as given): the data half of a block's key."""
    frame = bars.reset_index(drop=True)
    return hashlib.sha256(
        pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
        + ",".join(map(str, frame.columns)).encode()).hexdigest()


def forecast_block(block: Block, artifact_dir: Path, bars: Mapping[str, pd.DataFrame], *,
                   horizons: Sequence[int], baselines: Sequence[str],
                   band_baselines: Sequence[str] = DEFAULT_BAND_BASELINES,
                   provider: Provider = "auto", intra_op_threads: int = 1,
                   expected: FeatureSpec | None = None) -> HistoricalRun:
    """Every origin of the block forecast out of sample: the block's model, baselines, reversal.

    Each method forecasts origin t from bars <= t; baselines are fitted on the bars up to the end
    of the block model's training segment, i.e. before the block too. The bands scored are the
    served one (the model's, recalibrated by ACI with the artifact's settings, as serving does)
    and each of `band_baselines` raw and with ACI, as `stockcast backtest` scores them.
    `expected`: the spec the block was trained for (an ablation's features); the artifact is
    refused if it differs.
    """
    predictor = Predictor.load(artifact_dir, provider, intra_op_threads, expected)
    manifest = predictor.manifest
    if manifest.split.test[0] > block.first:
        raise ValueError(f"model {manifest.version}'s test segment starts "
                         f"{manifest.split.test[0]}, after block {block.number} ({block.first})")
    horizons = _check_horizons(horizons, manifest.spec.horizon)
    # The backtest's methods (MethodSet: the model's ModelForecaster, whose scaled features and
    # windows its ACI run shares), with the reversal signal after the baselines.
    names = _check_baselines(baselines)
    forecasters = MethodSet(names, tuple(band_baselines), predictor.band_settings,
                            tuple(horizons)).build(predictor)
    forecasters.insert(1 + len(names), ReversalSignal())
    fit_end = min(manifest.split.train[1], block.first)
    run = historical_forecasts(forecasters, bars, start=block.first, end=block.last,
                               fit_end=fit_end, horizons=horizons)
    for frame in run.forecasts.values():
        frame["block"] = block.number
    return run


def band_method_names(band_baselines: Sequence[str]) -> list[str]:
    """The band methods forecast_block adds: the served model + ACI, each baseline raw and + ACI."""
    return [f"{MODEL}{ACI_SUFFIX}", *(f"{b}{s}" for b in band_baselines for s in ("", ACI_SUFFIX))]


@dataclass
class BlockRun:
    """One block as evaluated: which model forecast it, and its forecasts."""

    block: Block
    version: str
    train_range: tuple[dt.date, dt.date]
    cached: bool  # the model came from the block cache, not a fresh training
    forecasts: HistoricalRun


def _held_at_start(frame: pd.DataFrame, realized: pd.DataFrame) -> np.ndarray:
    """Buy-and-hold's members: the tickers with a price (an origin row) at the first session,
    known then; not the ones whose first-session outcome exists (that is the future)."""
    return np.isfinite(book(frame, "origin_close").reindex_like(realized).to_numpy()[0])


def _portfolio_rows(frame: pd.DataFrame, top_k: int, cost_bp: float) -> list[tuple]:
    """Costed books at h = 1 as metric rows (POOLED, 1, method, topk_<metric>, value)."""
    realized = book(frame, "realized")
    results = {name: portfolio.topk_long_short(book(frame, name).reindex_like(realized).to_numpy(),
                                               realized.to_numpy(), top_k, cost_bp)
               for name in PORTFOLIO_SIGNALS if name in frame.columns}
    results[BUY_AND_HOLD] = portfolio.buy_and_hold(realized.to_numpy(), cost_bp,
                                                   held=_held_at_start(frame, realized))
    return [(POOLED, 1, name, f"topk_{metric}", float(getattr(res, metric)))
            for name, res in results.items() for metric in PORTFOLIO_METRICS]


def portfolio_equity(frame: pd.DataFrame, top_k: int, cost_bp: float) -> pd.DataFrame:
    """Net equity (starts at 1) of each book at h = 1, indexed by origin date."""
    realized = book(frame, "realized")
    curves = {name: portfolio.topk_long_short(book(frame, name).reindex_like(realized).to_numpy(),
                                              realized.to_numpy(), top_k, cost_bp).net
              for name in PORTFOLIO_SIGNALS if name in frame.columns}
    curves[BUY_AND_HOLD] = portfolio.buy_and_hold(realized.to_numpy(), cost_bp,
                                                  held=_held_at_start(frame, realized)).net
    return pd.DataFrame({k: np.cumprod(1.0 + v) for k, v in curves.items()}, index=realized.index)


def block_breakdown(frame: pd.DataFrame, block: Block) -> dict:
    """A block's pooled h = 1 figures per signal: rank IC (HAC t), IC, rel MAE, n."""
    part = frame[frame["block"] == block.number]
    out: dict = {**block.to_dict(), "n_forecasts": len(part)}
    if part.empty:
        return out
    close = part["origin_close"].to_numpy()
    actual = close * np.exp(part["realized"].to_numpy())
    naive = close * np.exp(part[NAIVE].to_numpy())
    for name in PORTFOLIO_SIGNALS:
        if name not in part.columns:
            continue
        dates, pred = part["origin"].to_numpy(), part[name].to_numpy()
        rank_ic = m.daily_ic(dates, pred, part["realized"].to_numpy(), "spearman")
        hac = sig.hac_mean_test(rank_ic.to_numpy(), 1)
        out[name] = {
            "rank_ic_mean": float(rank_ic.mean()) if rank_ic.size else None,
            "rank_ic_t_hac": None if not np.isfinite(hac.t) else hac.t,
            "ic_mean": m.ic_summary(dates, pred, part["realized"].to_numpy()).mean,
            "rel_mae": m.relative_mae(actual, close * np.exp(pred), naive),
        }
    return out


def rolling_version(versions: Sequence[str]) -> str:
    """The stored run's model_version: `rolling-` + 12 hex of the block models' versions."""
    return "rolling-" + hashlib.sha256(",".join(versions).encode()).hexdigest()[:12]


def stitch_and_store(engine: Engine, blocks: Sequence[BlockRun], *, config: dict,
                     top_k: int = portfolio.DEFAULT_TOP_K,
                     cost_bp: float = portfolio.DEFAULT_COST_BP,
                     plots_dir: Path | None = None) -> StoredBacktest:
    """Stitch the blocks' forecasts into one run: score once, add the books, store, plot."""
    started = time.perf_counter()
    horizons = sorted({h for b in blocks for h in b.forecasts.forecasts})
    if not horizons:
        raise ValueError("no block produced a forecast: " + "; ".join(
            f"block {b.block.number}: {b.forecasts.skipped}" for b in blocks))
    forecasts = {h: pd.concat([b.forecasts.forecasts[h] for b in blocks
                               if h in b.forecasts.forecasts], ignore_index=True)
                 for h in horizons}
    methods = [MODEL, *config["baselines"], REVERSAL,
               *(name for name in config.get("band_methods", ()) if name != MODEL)]
    seconds = {"model": sum(b.forecasts.seconds["model"] for b in blocks),
               "baselines": sum(b.forecasts.seconds["baselines"] for b in blocks)}
    tick = time.perf_counter()
    metrics = compute_metrics(forecasts, methods)
    if 1 in forecasts:
        rows = _portfolio_rows(forecasts[1], top_k, cost_bp)
        metrics = pd.concat([metrics, pd.DataFrame(rows, columns=metrics.columns)],
                            ignore_index=True)
    seconds["metrics"] = time.perf_counter() - tick
    skipped = {f"{t} (block {b.block.number})": why for b in blocks
               for t, why in b.forecasts.skipped.items()}
    scored = sorted({t for f in forecasts.values() for t in f["ticker"].unique()})
    first = min(f["origin"].min() for f in forecasts.values()).date()
    last = max(f["origin"].max() for f in forecasts.values()).date()
    run_config = {
        **config,
        "kind": "rolling",
        "horizons": horizons,
        "in_sample_origins": False,  # every block is out of sample for its model
        "test_segment": [blocks[0].block.first.isoformat(), blocks[-1].block.last.isoformat()],
        "portfolio": {"top_k": top_k, "cost_bp_per_side": cost_bp, "horizon": 1,
                      "signals": list(PORTFOLIO_SIGNALS), "benchmark": BUY_AND_HOLD},
        "blocks": [{**block_breakdown(forecasts[min(horizons)], b.block),
                    "model_version": b.version,
                    "train": [d.isoformat() for d in b.train_range], "cached": b.cached}
                   for b in blocks],
        "skipped": skipped,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    version = rolling_version([b.version for b in blocks])
    result = BacktestResult(
        model_version=version, start=first, end=last, tickers=tuple(scored),
        horizons=tuple(horizons), methods=tuple(methods), forecasts=forecasts, metrics=metrics,
        config=run_config, skipped=skipped, seconds=seconds)
    try:
        with engine.begin() as conn:
            run_id = store_run(conn, model_version=version, start=first, end=last,
                               tickers=scored, config=_jsonable(run_config),
                               metrics=metrics.itertuples(index=False, name=None))
        with engine.connect() as conn:
            stored = get_metrics(conn, run_id)
    except DBAPIError as exc:
        raise DatabaseUnavailable(
            f"cannot store the rolling evaluation ({exc.__class__.__name__}); "
            "is the database migrated? run `stockcast db upgrade`") from exc
    out = plots_dir or PROJECT_ROOT / "var" / "evaluations" / f"run-{run_id}"
    plots = write_backtest_plots(result, out)
    if 1 in forecasts:
        plots.append(_plot_rolling(forecasts[1], run_config["blocks"], top_k, cost_bp,
                                   out / "rolling.png"))
    return StoredBacktest(run_id, result, stored, plots,
                          {"load": 0.0, "wall": time.perf_counter() - started})


def _jsonable(value):
    """NaN -> None, numpy scalars -> Python, recursively (JSON columns are strict)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _plot_rolling(frame: pd.DataFrame, blocks: list[dict], top_k: int, cost_bp: float,
                  path: Path) -> Path:
    """Rank IC per block (model vs reversal) above the books' net equity curves."""
    from service.evaluation.plots import _pyplot

    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5))
    x = np.arange(len(blocks))
    for offset, name in ((-0.2, MODEL), (0.2, REVERSAL)):
        values = [(b.get(name) or {}).get("rank_ic_mean") for b in blocks]
        top.bar(x + offset, [np.nan if v is None else v for v in values], width=0.4, label=name)
    top.axhline(0.0, color="black", linewidth=0.8)
    top.set_xticks(x, [b["first"] for b in blocks], rotation=45, fontsize=7)
    top.set_ylabel("mean daily rank IC, h=1")
    top.set_title("Rank IC per block (each block forecast by a model trained before it)")
    top.legend()
    for name, curve in portfolio_equity(frame, top_k, cost_bp).items():
        bottom.plot(curve.index, curve.to_numpy(), label=name)
    bottom.set_ylabel("net equity")
    bottom.set_title(f"Daily top-{top_k}/bottom-{top_k} book, {cost_bp:g} bp per side; "
                     "equal-weight buy & hold")
    bottom.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# (metric, format) of the significance table `stockcast evaluate` prints; labels from METRICS.
SIGNIFICANCE_COLUMNS = tuple((METRICS[name].label, name, fmt) for name, fmt in (
    ("n_forecasts", "{:.0f}"),
    ("rel_mae", "{:.4f}"),
    ("rel_mae_lo", "{:.4f}"),
    ("rel_mae_hi", "{:.4f}"),
    ("dm_squared_t_hac", "{:.2f}"),
    ("dm_squared_p_hac", "{:.3g}"),
    ("dm_n_eff", "{:.0f}"),
    ("ic_mean", "{:.4f}"),
    ("ic_t_hac", "{:.2f}"),
    ("rank_ic_mean", "{:.4f}"),
    ("rank_ic_t_hac", "{:.2f}"),
    ("rank_ic_n_eff", "{:.0f}"),
))


def _fmt(value, fmt: str) -> str:
    return "n/a" if value is None or not np.isfinite(value) else fmt.format(value)


BANDS_CAPTION = ("Bands (80 % unless named; model_aci is the served band, ewma_aci the "
                 "reference of the DM p):")


def rolling_tables(stored: pd.DataFrame, config: dict) -> str:
    """Markdown: the significance table, the costed books, and the per-block breakdown."""
    lines = [summary_table(stored, columns=SIGNIFICANCE_COLUMNS), ""]
    if config.get("band_methods"):
        lines += [BANDS_CAPTION, band_table(stored), ""]
    books = stored[(stored["ticker"] == POOLED) & stored["metric"].str.startswith("topk_")]
    if not books.empty:
        p = config["portfolio"]
        lines.append(f"Daily top-{p['top_k']} / bottom-{p['top_k']} book at h = 1, "
                     f"{p['cost_bp_per_side']:g} bp per side (buy & hold: equal weight, held):")
        names = [f"topk_{x}" for x in PORTFOLIO_METRICS]
        lines += ["| book | " + " | ".join(METRICS[n].label for n in names) + " |",
                  "|---|" + "---:|" * len(names)]
        for method in (*PORTFOLIO_SIGNALS, BUY_AND_HOLD):
            part = books[books["method"] == method].set_index("metric")["value"]
            if part.empty:
                continue
            lines.append(f"| {method} | " + " | ".join(
                _fmt(part.get(n), "{:.2f}" if "sharpe" in n else "{:.4f}") for n in names)
                + " |")
        lines.append("")
    lines += [("| block | origins | trained on | model | n | model rank IC | t (HAC) | "
               "reversal rank IC | model rel MAE |"), "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for b in config["blocks"]:
        mine, rev = b.get(MODEL) or {}, b.get(REVERSAL) or {}
        lines.append(
            f"| {b['block']} | {b['first']} .. {b['last']} | {b['train'][0]} .. {b['train'][1]} "
            f"| {b['model_version']}{' (cached)' if b['cached'] else ''} | {b['n_forecasts']} | "
            f"{_fmt(mine.get('rank_ic_mean'), '{:.4f}')} | {_fmt(mine.get('rank_ic_t_hac'), '{:.2f}')} | "
            f"{_fmt(rev.get('rank_ic_mean'), '{:.4f}')} | {_fmt(mine.get('rel_mae'), '{:.4f}')} |")
    return "\n".join(lines)


# -- ablation: feature sets chosen on the validation blocks, reported on the test blocks -------

# What a set is scored by on each segment (h = 1 unless named), and the columns of its table.
ABLATION_METHODS = (MODEL, f"{MODEL}{ACI_SUFFIX}")
ABLATION_COLUMNS = (
    ("rank IC", MODEL, 1, "rank_ic_mean", "{:.4f}"),
    ("t (HAC)", MODEL, 1, "rank_ic_t_hac", "{:.2f}"),
    ("IC", MODEL, 1, "ic_mean", "{:.4f}"),
    ("rel MAE", MODEL, 1, "rel_mae", "{:.4f}"),
    ("rel MAE 95%", MODEL, 1, ("rel_mae_lo", "rel_mae_hi"), "[{:.4f}, {:.4f}]"),
    ("rel MAE h=5", MODEL, 5, "rel_mae", "{:.4f}"),
    ("cov 80% h=1", f"{MODEL}{ACI_SUFFIX}", 1, "coverage", "{:.3f}"),
    ("IS h=1", f"{MODEL}{ACI_SUFFIX}", 1, "interval_score", "{:.5f}"),
    ("cov 80% h=5", f"{MODEL}{ACI_SUFFIX}", 5, "coverage", "{:.3f}"),
    ("IS h=5", f"{MODEL}{ACI_SUFFIX}", 5, "interval_score", "{:.5f}"),
    ("top-k Sharpe", MODEL, 1, "topk_sharpe", "{:.2f}"),
)
# Switching away from the incumbent set needs its validation rank IC beaten by more than this
# many Newey–West standard errors of the paired daily difference: less is noise.
SWITCH_T = 1.0


@dataclass(frozen=True)
class SegmentScore:
    """One feature set's rolling forecasts scored on one segment (a run of whole blocks)."""

    name: str
    segment: str  # "validation" | "test"
    blocks: tuple[int, ...]
    metrics: pd.DataFrame  # compute_metrics' long frame + the costed book's rows
    daily_rank_ic: pd.Series  # the model's daily rank IC at h = 1, by origin date

    def value(self, metric: str, method: str = MODEL, horizon: int = 1) -> float:
        try:
            return metric_value(self.metrics, metric, method, horizon)
        except KeyError:
            return float("nan")


def score_segment(name: str, segment: str, forecasts: Mapping[int, pd.DataFrame],
                  blocks: Sequence[int], top_k: int, cost_bp: float) -> SegmentScore:
    """The model's (and its served band's) pooled scores over these blocks only."""
    part = {h: f[f["block"].isin(list(blocks))] for h, f in forecasts.items()}
    part = {h: f for h, f in part.items() if not f.empty}
    if 1 not in part:
        raise ValueError(f"{name}: no h = 1 forecasts in blocks {list(blocks)}")
    methods = [x for x in ABLATION_METHODS if x in part[1].columns]
    metrics = compute_metrics(part, methods)
    metrics = metrics[metrics["ticker"] == POOLED]
    rows = [r for r in _portfolio_rows(part[1], top_k, cost_bp) if r[2] == MODEL]
    metrics = pd.concat([metrics, pd.DataFrame(rows, columns=metrics.columns)], ignore_index=True)
    f1 = part[1]
    ic = m.daily_ic(f1["origin"].to_numpy(), f1[MODEL].to_numpy(), f1["realized"].to_numpy(),
                    "spearman")
    return SegmentScore(name, segment, tuple(blocks), metrics, ic)


def choose_feature_set(validation: Mapping[str, SegmentScore], incumbent: str) -> tuple[str, str]:
    """(chosen set, why) from the validation segment only.

    The candidate with the highest validation rank IC at h = 1 replaces the incumbent only if
    it beats it by more than SWITCH_T Newey–West standard errors of the paired daily rank IC
    difference (same origin dates); otherwise the incumbent stays.
    """
    if incumbent not in validation:
        raise ValueError(f"the incumbent set {incumbent!r} was not evaluated")
    best = max(validation, key=lambda k: (np.nan_to_num(validation[k].value("rank_ic_mean"),
                                                          nan=-np.inf), k == incumbent))
    inc, top = validation[incumbent], validation[best]
    if best == incumbent:
        return incumbent, (f"{incumbent} has the highest validation rank IC "
                           f"({inc.value('rank_ic_mean'):.4f}, HAC t "
                           f"{inc.value('rank_ic_t_hac'):.2f}); kept")
    diff = (top.daily_rank_ic - inc.daily_rank_ic).dropna()
    paired = sig.hac_mean_test(diff.to_numpy(), 1)
    numbers = (f"validation rank IC {top.value('rank_ic_mean'):.4f} vs "
               f"{inc.value('rank_ic_mean'):.4f} for {incumbent}, paired difference HAC t "
               f"{paired.t:.2f} over {paired.n} sessions")
    if np.isfinite(paired.t) and paired.t > SWITCH_T:
        return best, f"{best}: {numbers} > {SWITCH_T:g}: switched"
    return incumbent, (f"{incumbent} kept: the best other set, {best}, has {numbers} "
                       f"(≤ {SWITCH_T:g}: not told from noise)")


def ablation_table(scores: Sequence[SegmentScore], chosen: str | None = None) -> str:
    """Markdown: one row per (feature set, segment), ABLATION_COLUMNS."""
    lines = ["| features | segment | blocks | " + " | ".join(c[0] for c in ABLATION_COLUMNS)
             + " |", "|---|---|---|" + "---:|" * len(ABLATION_COLUMNS)]
    for s in scores:
        cells = []
        for _, method, h, metric, fmt in ABLATION_COLUMNS:
            if isinstance(metric, tuple):
                values = [s.value(x, method, h) for x in metric]
                cells.append(fmt.format(*values) if all(np.isfinite(values)) else "n/a")
            else:
                cells.append(_fmt(s.value(metric, method, h), fmt))
        name = f"**{s.name}**" if s.name == chosen else s.name
        blocks = f"{s.blocks[0]}–{s.blocks[-1]}" if len(s.blocks) > 1 else str(s.blocks[0])
        lines.append(f"| {name} | {s.segment} | {blocks} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_ablation(blocks_by_set: Mapping[str, list[dict]], validation_blocks: int,
                  path: Path) -> Path:
    """Per block, each feature set's model rank IC at h = 1; a line where the test blocks begin."""
    from service.evaluation.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    names = list(blocks_by_set)
    width = 0.8 / max(1, len(names))
    first = next(iter(blocks_by_set.values()))
    x = np.arange(len(first))
    for i, name in enumerate(names):
        values = [(b.get(MODEL) or {}).get("rank_ic_mean") for b in blocks_by_set[name]]
        ax.bar(x - 0.4 + width * (i + 0.5), [np.nan if v is None else v for v in values],
               width=width, label=name)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axvline(validation_blocks - 0.5, color="grey", linestyle="--")
    ax.text(validation_blocks - 0.55, ax.get_ylim()[1], "validation | test ", ha="right",
            va="top", fontsize=8)
    ax.set_xticks(x, [b["first"] for b in first], rotation=45, fontsize=7)
    ax.set_ylabel("mean daily rank IC, h=1")
    ax.set_title("Ablation: the model's rank IC per block, by arm (feature set[:target])")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
