"""PNG plots of a backtest: predicted vs actual closes per ticker, equity curves vs buy-and-hold."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from sqlalchemy.engine import make_url

from service.db.session import normalize_url
from service.evaluation.backtest import BacktestResult
from service.evaluation.report import pooled_equity
from service.evaluation.scoring import BUY_AND_HOLD, MODEL, NAIVE, REFERENCE_BAND
from service.forecasting.spec import BAND_LEVELS, DEFAULT_LEVEL
from service.forecasting.windows import prices_from_log_returns


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt



def _save(plt, fig, path: Path) -> Path:
    """Lay out, write and close a figure; its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

# Panels of the predicted-vs-actual plot at most: a universe run's 489 would make one image
# tens of thousands of pixels tall (and most of the run's time).
MAX_PANELS = 24


def plot_predicted_vs_actual(result: BacktestResult, path: Path, horizon: int,
                             preferred: tuple[str, ...] = ()) -> Path:
    """One panel per ticker: actual close, the model's median forecast and its 10-90% band.

    At most MAX_PANELS tickers: those in `preferred` (the model's training tickers) first.
    """
    plt = _pyplot()
    frame = result.forecasts[horizon]
    scored = sorted(frame["ticker"].unique())
    tickers = sorted(sorted(scored, key=lambda t: t not in preferred)[:MAX_PANELS])
    shown = "" if len(tickers) == len(scored) else f", {len(tickers)} of {len(scored)} tickers"
    cols = min(4, len(tickers))
    rows = math.ceil(len(tickers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    for ax, ticker in zip(axes.flat, tickers):
        g = frame[frame["ticker"] == ticker]
        # (N, 4) prices: band low, band high, actual, model median.
        prices = prices_from_log_returns(
            g["origin_close"].to_numpy(),
            g[["model_lower", "model_upper", "realized", MODEL]].to_numpy())
        # Plotted at the target date: the forecast for day t+h next to what day t+h brought.
        x = g["target_date"]
        ax.fill_between(x, prices[:, 0], prices[:, 1],
                        color="tab:blue", alpha=0.2, linewidth=0, label="10-90%")
        ax.plot(x, prices[:, 2], color="black", linewidth=1, label="actual")
        ax.plot(x, prices[:, 3], color="tab:blue", linewidth=1, label="model")
        ax.set_title(ticker, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.tick_params(axis="x", rotation=30)
    for ax in list(axes.flat)[len(tickers):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{result.model_version}: {horizon}-day forecast vs actual close "
                 f"({result.start} .. {result.end}{shown})", fontsize=10)
    return _save(plt, fig, path)


def plot_equity(result: BacktestResult, path: Path, horizon: int) -> Path:
    """Equal-weight book: long/flat and long/short on each forecaster, vs buy-and-hold."""
    plt = _pyplot()
    frame = result.forecasts[horizon]
    fig, (ax_lf, ax_ls) = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    bench = pooled_equity(frame, None, horizon, BUY_AND_HOLD)
    for ax, kind in ((ax_lf, "long_flat"), (ax_ls, "long_short")):
        ax.plot(bench.index, bench.to_numpy(), color="black", linewidth=1.5, label="buy & hold")
        for method in result.methods:
            if method == NAIVE:  # never takes a position: a flat line at 1
                continue
            curve = pooled_equity(frame, method, horizon, kind)
            ax.plot(curve.index, curve.to_numpy(), linewidth=1.8 if method == MODEL else 0.9,
                    label=method)
        ax.set_title(f"{kind.replace('_', '/')} on the {horizon}-day forecast", fontsize=10)
        ax.axhline(1.0, color="grey", linewidth=0.5)
        ax.grid(alpha=0.3)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax_lf.set_ylabel("equity (start = 1)")
    ax_ls.legend(fontsize=8, loc="best")
    fig.suptitle(f"{result.model_version}: equal-weight book over {len(result.tickers)} tickers, "
                 f"a trade every {horizon} day(s), no costs", fontsize=10)
    return _save(plt, fig, path)


# The bands the coverage plots compare: the network's own, recalibrated, and the reference.
PLOTTED_BANDS = (MODEL, f"{MODEL}_aci", REFERENCE_BAND)
ROLLING_SESSIONS = 60


def _inside(frame, method: str, suffix: str = ""):
    lower, upper = frame[f"{method}_lower{suffix}"], frame[f"{method}_upper{suffix}"]
    return (frame["realized"] >= lower) & (frame["realized"] <= upper)


def plot_rolling_coverage(result: BacktestResult, path: Path, horizon: int) -> Path:
    """Share of closes inside each 80 % band, pooled per session, over the last 60 sessions."""
    plt = _pyplot()
    frame = result.forecasts[horizon]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for method in PLOTTED_BANDS:
        if f"{method}_lower" not in frame.columns:
            continue
        daily = _inside(frame, method).groupby(frame["origin"]).mean()
        rolled = daily.rolling(ROLLING_SESSIONS, min_periods=ROLLING_SESSIONS).mean()
        ax.plot(rolled.index, rolled.to_numpy(), label=method)
    ax.axhline(DEFAULT_LEVEL, color="grey", linestyle=":", label="nominal 0.80")
    ax.set_ylabel(f"coverage, last {ROLLING_SESSIONS} sessions")
    ax.set_title(f"80% band coverage, h={horizon}, pooled over tickers")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def plot_reliability(result: BacktestResult, path: Path) -> Path:
    """Reliability diagram: nominal vs realized coverage of each band at 50/80/90 %, per h."""
    plt = _pyplot()
    horizons = sorted(result.forecasts)
    fig, axes = plt.subplots(1, len(horizons), figsize=(3.4 * len(horizons), 3.4),
                             squeeze=False)
    for ax, h in zip(axes[0], horizons):
        frame = result.forecasts[h]
        for method in PLOTTED_BANDS:
            if f"{method}_lower" not in frame.columns:
                continue
            realized = [_inside(frame, method, "" if level == DEFAULT_LEVEL
                                else f"_{round(level * 100)}").mean() for level in BAND_LEVELS]
            ax.plot(BAND_LEVELS, realized, marker="o", label=method)
        ax.plot([0.4, 1.0], [0.4, 1.0], color="grey", linestyle=":")
        ax.set_title(f"h={h}")
        ax.set_xlabel("nominal coverage")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("realized coverage")
    axes[0][0].legend(fontsize=7)
    return _save(plt, fig, path)


# Under the model directory: runs/<database key>/run-<id>/.
RUNS_DIR = "runs"


def database_key(url: str) -> str:
    """A short name of one database (backend + hash of its URL without the password): run ids
    of two databases must not share a plots folder. A SQLite path counts as its absolute path."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        parsed = parsed.set(database=str(Path(parsed.database).resolve()))
    ident = parsed.render_as_string(hide_password=True)  # the password shows as ***
    return f"{parsed.get_backend_name()}-{hashlib.sha256(ident.encode()).hexdigest()[:10]}"


def default_plots_dir(model_dir: Path | str, database_url: str, run_id: int) -> Path:
    """Where a stored run's plots go by default: <model_dir>/runs/<database key>/run-<id>."""
    return Path(model_dir) / RUNS_DIR / database_key(database_url) / f"run-{run_id}"


def write_backtest_plots(result: BacktestResult, out_dir: Path | str,
                         preferred: tuple[str, ...] = ()) -> list[Path]:
    """predicted_vs_actual_h{H}.png (the shortest horizon; `preferred` tickers first), equity_h{h}.png
    per horizon, the rolling 60-session coverage of the bands (shortest horizon) and their
    reliability diagram."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first = min(result.forecasts)
    paths = [plot_predicted_vs_actual(result, out_dir / f"predicted_vs_actual_h{first}.png", first,
                                      preferred)]
    for h in sorted(result.forecasts):
        paths.append(plot_equity(result, out_dir / f"equity_h{h}.png", h))
    if f"{MODEL}_aci_lower" in result.forecasts[first].columns:
        paths.append(plot_rolling_coverage(result, out_dir / f"band_coverage_h{first}.png",
                                           first))
        paths.append(plot_reliability(result, out_dir / "band_reliability.png"))
    return paths
