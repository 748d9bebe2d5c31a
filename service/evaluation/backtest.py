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

Forecasting (`historical_forecasts`, every method through the one Forecaster interface) is
separate from scoring (service/evaluation/scoring.py) and from showing (report.py). The
predictor comes in as an argument; the DB stays in db/.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from service.core.errors import InsufficientHistory
from service.evaluation.scoring import (
    MODEL,
    NAIVE,
    POOLED,
    compute_metrics,
    metric_value,
    one_blas_thread,
)
from service.forecasting.bands import (
    ACI_SUFFIX,
    BASELINE_ACI,
    ACIForecaster,
    ACIRun,
    ACISettings,
    aci_states,
)
from service.forecasting.baselines import BAND_BASELINES, BASELINES
from service.forecasting.calendar import check_date_range
from service.forecasting.forecaster import Forecaster, HistoricalForecasts, TickerSeries
from service.forecasting.spec import BAND_LEVELS, DEFAULT_LEVEL, band_indices
from service.forecasting.windows import prices_from_log_returns
from service.inference.predictor import Predictor

log = logging.getLogger(__name__)

DEFAULT_HORIZONS = (1, 5, 30)


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


def _check_band_baselines(band_baselines: Sequence[str]) -> None:
    unknown = [b for b in band_baselines if b not in BAND_BASELINES]
    if unknown:
        raise ValueError(f"unknown band baselines {unknown}; known: {list(BAND_BASELINES)}")


def check_methods(horizons: Sequence[int], max_horizon: int, baselines: Sequence[str],
                  band_baselines: Sequence[str]) -> None:
    """ValueError for what a backtest of these would refuse, before anything is computed (the
    rolling run checks before it trains a block)."""
    _check_horizons(horizons, max_horizon)
    _check_baselines(baselines)
    _check_band_baselines(band_baselines)


def band_forecasters(predictor: Predictor, band_baselines: Sequence[str], aci: ACISettings,
                     horizons: Sequence[int]) -> list[Forecaster]:
    """The model's band recalibrated by ACI, then each band baseline raw and recalibrated.

    The served band's base is recalibrated with `aci` (the artifact's settings, as serving
    does), every other base with BASELINE_ACI. Each computes only `horizons` (the empirical
    baseline's cost is per h).
    """
    _check_band_baselines(band_baselines)
    slots = tuple(horizons)
    served_base = predictor.served_band.removesuffix(ACI_SUFFIX)

    def recalibrated(base: Forecaster) -> ACIForecaster:
        settings = aci if base.name == served_base else BASELINE_ACI
        return ACIForecaster(base, settings, slots=slots)

    bases = [BAND_BASELINES[b](slots=slots) for b in band_baselines]
    return [recalibrated(predictor), *(f for base in bases for f in (base, recalibrated(base)))]


@dataclass
class HistoricalRun:
    """What `historical_forecasts` made: one frame per horizon, and which tickers it skipped."""

    forecasts: dict[int, pd.DataFrame]
    skipped: dict[str, str]
    seconds: dict[str, float]


class _CannotFit(Exception):
    def __init__(self, method: str, exc: ValueError):
        super().__init__(str(exc))
        self.method = method


@dataclass
class _PendingACI:
    """An ACI method's forecasts of one ticker before its state: the base's forecasts, the
    origins kept and slots, and the aci_state run (ACIForecaster.plan); the states of a block of
    tickers are computed in one call (aci_states)."""

    forecaster: ACIForecaster
    base: HistoricalForecasts
    origins: np.ndarray  # the origins kept (plan's)
    slots: np.ndarray
    run: ACIRun | None


def _method_seconds(name: str) -> str:
    # The model's ACI run is the model's cost (its onnxruntime call over ACI's origins).
    return "model" if name.startswith(MODEL) else "baselines"


def _ticker_forecasts(forecasters: Sequence[Forecaster], series: TickerSeries,
                      origins: np.ndarray, fit_end: dt.date, max_h: int,
                      seconds: dict[str, float]
                      ) -> tuple[dict[str, HistoricalForecasts | _PendingACI], np.ndarray]:
    """Each method fitted on bars <= fit_end, then forecasting the origins every method can
    (an ACI method up to its state: _PendingACI), and those origins.

    A method that can forecast fewer origins (the model needs a full feature window) narrows
    them for all; none left returns ({}, empty). InsufficientHistory propagates; a ValueError (a
    baseline that cannot fit) becomes _CannotFit naming the method.
    """
    history = series.until(fit_end)
    made: dict[str, HistoricalForecasts | _PendingACI] = {}
    for forecaster in forecasters:
        tick = time.perf_counter()
        try:
            fitted = forecaster.fit(history)
            if isinstance(fitted, ACIForecaster) and len(origins):
                base = fitted.base_forecasts(series, origins, max_h)
                made[forecaster.name] = _PendingACI(
                    fitted, base, *fitted.plan(base, series, origins, max_h))
            else:
                made[forecaster.name] = fitted.historical_forecasts(series, origins, max_h)
        except ValueError as exc:
            raise _CannotFit(forecaster.name, exc) from exc
        finally:
            seconds[_method_seconds(forecaster.name)] += time.perf_counter() - tick
        origins = made[forecaster.name].origins
        if len(origins) == 0:
            return {}, origins
    return made, origins


# Tickers whose ACI states are computed in one stacked call (aci_states): enough to spread the
# α run's per-step cost, few enough that their base forecasts wait in memory (~4 MB a ticker).
ACI_BLOCK = 16


def _resolve_aci(block: list[dict[str, HistoricalForecasts | _PendingACI]], max_h: int,
                 seconds: dict[str, float]) -> None:
    """Each pending ACI method of a block of tickers: states in one call, then its forecasts."""
    names = dict.fromkeys(n for made in block for n, f in made.items()
                          if isinstance(f, _PendingACI))
    for name in names:
        tick = time.perf_counter()
        pending = [made[name] for made in block]
        forecaster = pending[0].forecaster  # one method: the same settings for every ticker
        states = iter(aci_states([p.run for p in pending if p.run is not None],
                                 forecaster.coverages, forecaster.settings))
        for made, p in zip(block, pending):
            state = (next(states) if p.run is not None
                     else p.forecaster.empty_state(p.origins.size, p.slots.size))
            made[name] = p.forecaster.recalibrated(p.base, p.origins, p.slots, state, max_h)
        seconds[_method_seconds(name)] += time.perf_counter() - tick


# Windows per onnxruntime call in the backtest: as fast per window as any size on one thread
# (a call of ~800 windows is ~25 % slower per window: its LSTM activations leave the cache).
ORT_CHUNK = 64
# Rows onnxruntime's CPU kernels (MLAS) may compute together (see ModelForecaster); a multiple
# of every group size seen: 2 for the shipped model (hidden size 64), 4 for the tests' tiny one.
ROW_GROUP = 8


class ModelForecaster(Forecaster):
    """The predictor as a backtest method: a ticker's scaled features built once, and each
    window's forecast computed once, whichever call (the model's origins, ACI's longer run)
    asks for it, bit for bit what `Predictor.historical_forecasts` returns for that call.

    Why a window's forecast hardly depends on the call: onnxruntime's CPU kernels compute a
    batch's rows in groups, with one accumulation order for a row of a full group wherever it
    sits and whatever its neighbours; only the rows of a call's last, partial group (the last
    M mod g of M rows) go through another kernel, whose float32 result can differ in the last
    bit. So each window is computed once in calls of whole groups, and the last M mod ROW_GROUP
    rows of each call once more, as the tail of a call of that many plus ROW_GROUP rows: the
    same partial group for any group size dividing ROW_GROUP.
    (tests/unit/test_backtest_scale.py checks this equals the per-call path bit for bit.)
    """

    name = MODEL

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.quantiles = predictor.quantiles
        self._series: TickerSeries | None = None

    @property
    def served_band(self) -> str:
        return self.predictor.served_band

    def fit(self, history) -> ModelForecaster:
        return self  # the artifact carries the weights and scalers

    def _start(self, series: TickerSeries) -> None:
        """A new ticker: its scaled features once, and no window computed yet."""
        spec = self.predictor.spec
        self._series = series
        scaled = self.predictor.scaled_features(series.ticker, series.bars)
        self._dates = scaled.index  # the feature rows' dates
        # (rows - W + 1, W, F) view: window i ends at feature row i + W - 1 (make_windows').
        values = scaled.to_numpy()
        if not np.isfinite(values).all():  # as make_windows, the per-call path's
            raise ValueError("features must be finite; drop warm-up rows first")
        self._windows = (sliding_window_view(values, spec.window, axis=0).transpose(0, 2, 1)
                         if len(values) >= spec.window else
                         np.empty((0, spec.window, values.shape[1]), dtype=np.float32))
        self._id = self.predictor.manifest.ticker_id(series.ticker)
        self._grouped = np.empty((len(self._windows), spec.horizon, len(self.quantiles)),
                                 dtype=np.float32)
        self._done = np.zeros(len(self._windows), dtype=bool)
        self._tails: dict[tuple[int, ...], np.ndarray] = {}

    def _run(self, rows: np.ndarray) -> np.ndarray:
        windows = np.ascontiguousarray(self._windows[rows], dtype=np.float32)
        return self.predictor.predict(windows, np.full(len(rows), self._id, dtype=np.int64))

    def _forecast_windows(self, rows: np.ndarray) -> np.ndarray:
        """(N, H, Q) forecasts of windows `rows` (ascending) as one onnxruntime call over
        exactly them returns them."""
        if rows.size < ROW_GROUP:  # a short call: itself
            return self._run(rows) if rows.size else self._grouped[rows]
        todo = rows[~self._done[rows]]
        if todo.size:  # whole groups (repeating the last window), in calls of whole groups
            batch = np.append(todo, np.repeat(todo[-1], -todo.size % ROW_GROUP))
            for i in range(0, batch.size, ORT_CHUNK):
                part = batch[i:i + ORT_CHUNK]
                self._grouped[part] = self._run(part)
            self._done[todo] = True
        out = self._grouped[rows]
        tail = rows.size % ROW_GROUP
        if tail:
            key = tuple(rows[-tail:].tolist())
            if key not in self._tails:
                self._tails[key] = self._run(rows[-(tail + ROW_GROUP):])[-tail:]
            out[-tail:] = self._tails[key]
        return out

    def historical_forecasts(self, series: TickerSeries, origins: np.ndarray,
                             horizon: int) -> HistoricalForecasts:
        """Forecasts (all H horizons) at those origins with a full feature window, as
        `Predictor.historical_forecasts` (its origins: the dates among them that end one)."""
        if self._series is not series:
            self._start(series)
        window = self.predictor.spec.window
        full = self._dates[window - 1:]  # the date each window ends at
        # The origins' days (DatetimeIndex.normalize of naive dates, without the frequency
        # inference pandas runs on its result, a third of this method's time).
        wanted = series.dates.values[origins].astype("datetime64[D]").astype(full.dtype)
        rows = np.flatnonzero(np.isin(full.values, wanted))
        return HistoricalForecasts(series.dates.get_indexer(full[rows]),
                                   self._forecast_windows(rows), self.quantiles)


@dataclass(frozen=True)
class MethodSet:
    """A run's methods by name: what builds its forecasters, in a pool worker too (an
    onnxruntime session does not cross processes; this does)."""

    baselines: tuple[str, ...]
    band_baselines: tuple[str, ...]
    aci: ACISettings  # the served band's base's (band_forecasters)
    horizons: tuple[int, ...]

    def build(self, predictor: Predictor) -> list[Forecaster]:
        """The model first, then every baseline, then the band methods (band_forecasters)."""
        model = ModelForecaster(predictor)
        return [model, *(BASELINES[b]() for b in self.baselines),
                *band_forecasters(model, self.band_baselines, self.aci, self.horizons)]


_NOT_FORECASTS = ("ticker", "origin", "target_date", "origin_close", "realized", "origin_vol")

Columns = dict[str, np.ndarray]  # one ticker's forecast frame at a horizon, as its columns


def _overflow(columns: Columns) -> str | None:
    """The first forecast column that turns into a non-finite price (close x exp(r)), or None."""
    names = [c for c in columns if c not in _NOT_FORECASTS]
    values = np.column_stack([columns[c] for c in names])  # (n, C): every column in one pass
    with np.errstate(over="ignore"):
        finite = np.isfinite(prices_from_log_returns(columns["origin_close"], values))
    bad = ~finite.all(axis=0)
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return f"{names[i]} (a log return of {float(np.nanmax(np.abs(values[:, i]))):.3g})"


def _ticker_columns(series: TickerSeries, made: dict[str, HistoricalForecasts],
                    horizons: Sequence[int]) -> dict[int, Columns]:
    """One ticker's forecast frame per horizon (see historical_forecasts), as columns: the
    frames of a run are built once from every ticker's (_frame), not one per ticker."""
    ticker, dates = series.ticker, series.dates
    idx = next(iter(made.values())).origins  # bar index of each origin, shared by all
    log_adj = series.log_close
    vol = series.volatility
    closes = series.bars["close"].to_numpy(dtype=np.float64)
    # (N, H) float64 per column, converted once for all horizons.
    forecast_columns: dict[str, np.ndarray] = {}
    for name, forecast in made.items():
        if forecast.band is None:
            continue
        for level in BAND_LEVELS:
            lower, upper = forecast.band_at(level)
            suffix = "" if level == DEFAULT_LEVEL else f"_{round(level * 100)}"
            forecast_columns[f"{name}_lower{suffix}"] = lower
            forecast_columns[f"{name}_upper{suffix}"] = upper
    for name, forecast in made.items():
        forecast_columns[name] = forecast.median
    out = {}
    for h in horizons:
        ok = idx + h < len(series.bars)
        if not ok.any():
            continue
        t = idx[ok]
        out[h] = {
            "ticker": np.full(t.size, ticker, dtype=object),
            "origin": dates[t].to_numpy(),
            "target_date": dates[t + h].to_numpy(),
            "origin_close": closes[t],
            "realized": log_adj[t + h] - log_adj[t],
            # The origin's EWMA volatility: what the band metrics' volatility terciles cut.
            "origin_vol": vol[t],
            **{name: values[ok, h - 1] for name, values in forecast_columns.items()},
        }
    return out


def _frame(parts: list[Columns]) -> pd.DataFrame:
    """Tickers' columns at one horizon as one frame, in their order."""
    names = list(parts[0])
    if any(list(part) != names for part in parts):  # methods that differ by ticker: union
        return pd.concat([pd.DataFrame(part) for part in parts], ignore_index=True)
    return pd.DataFrame({c: np.concatenate([part[c] for part in parts]) for c in names})


def historical_forecasts(
    forecasters: Sequence[Forecaster],
    bars: Mapping[str, pd.DataFrame],
    *,
    start: dt.date,
    end: dt.date,
    fit_end: dt.date,
    horizons: Sequence[int],
) -> HistoricalRun:
    """Every method's forecasts at every origin in [start, end], each from bars <= origin.

    Per horizon h a frame: ticker, origin, target_date, origin_close, realized (log return),
    `<method>_lower`/`<method>_upper` for a method with a band, and one column per method. A
    ticker whose forecasts overflow a price (bars too odd to score, e.g. a penny-priced shell's
    flat stretches feeding ACI) is skipped with the reason.
    """
    max_h = max(horizons)
    rows: dict[int, list[Columns]] = {h: [] for h in horizons}
    skipped: dict[str, str] = {}
    seconds = {"model": 0.0, "baselines": 0.0}
    tickers = list(bars)
    for i in range(0, len(tickers), ACI_BLOCK):
        # A block of tickers forecast up to their ACI states, the states in one call each, then
        # each ticker's frames; the reasons to skip kept in ticker order.
        reasons: dict[str, str] = {}
        block: list[tuple[TickerSeries, dict, np.ndarray]] = []
        for ticker in tickers[i:i + ACI_BLOCK]:
            series = TickerSeries(ticker, bars[ticker])
            dates = series.dates
            wanted = dates[(dates >= pd.Timestamp(start)) & (dates <= pd.Timestamp(end))]
            if wanted.empty:
                reasons[ticker] = f"no bars between {start} and {end}"
                continue
            try:
                made, origins = _ticker_forecasts(forecasters, series, dates.get_indexer(wanted),
                                                  fit_end, max_h, seconds)
            except InsufficientHistory as exc:
                reasons[ticker] = str(exc)
                continue
            except _CannotFit as exc:
                reasons[ticker] = (f"cannot fit the {exc.method} baseline on bars up to "
                                   f"{fit_end}: {exc}")
                continue
            if not made:
                reasons[ticker] = (f"no origin between {start} and {end} has a full feature "
                                   "window")
                continue
            block.append((series, made, origins))
        _resolve_aci([made for _, made, _ in block], max_h, seconds)
        for series, made, origins in block:
            frames = _ticker_columns(series, {n: f.at(origins) for n, f in made.items()},
                                     horizons)
            bad = next((why for f in frames.values() if (why := _overflow(f))), None)
            if bad is not None:
                reasons[series.ticker] = f"a forecast overflows a price: {bad}"
                continue
            for h, frame in frames.items():
                rows[h].append(frame)
        skipped |= {t: reasons[t] for t in tickers[i:i + ACI_BLOCK] if t in reasons}
    forecasts = {h: _frame(parts) for h, parts in rows.items() if parts}
    return HistoricalRun(forecasts, skipped, seconds)


# A pool worker's forecasters, built once per process by _start_worker.
_WORKER: dict[str, list[Forecaster]] = {}


def _start_worker(artifact_dir: Path, provider: str, threads: int, spec, methods: MethodSet):
    _WORKER["forecasters"] = methods.build(Predictor.load(artifact_dir, provider, threads, spec))
    one_blas_thread()  # after the build: a spawned worker has loaded scipy's BLAS by then


def _forecast_chunk(bars: dict[str, pd.DataFrame], kwargs: dict) -> HistoricalRun:
    return historical_forecasts(_WORKER["forecasters"], bars, **kwargs)


def _pooled_forecasts(predictor: Predictor, methods: MethodSet, bars: Mapping[str, pd.DataFrame],
                      workers: int, **kwargs) -> HistoricalRun:
    """historical_forecasts over chunks of tickers in `workers` processes, merged in order.

    Each worker loads the artifact with onnxruntime on 1 thread (the cores are the workers'),
    so its forecasts equal a one-process run's with STOCKCAST_ORT_INTRA_OP_THREADS=1; a
    multi-threaded session may differ from it at float32 rounding (it splits the products
    differently). Its BLAS runs on 1 thread too (one_blas_thread: the same floats, less
    overhead).
    """
    tickers = list(bars)
    n_chunks = min(len(tickers), workers * 4)  # small chunks even out uneven tickers
    chunks = [{t: bars[t] for t in tickers[i::n_chunks]} for i in range(n_chunks)]
    # fork where there is one (no re-import per worker); the parent's session is not used there.
    methods_ctx = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(
            max_workers=workers, mp_context=methods_ctx, initializer=_start_worker,
            initargs=(predictor.manifest.artifact_dir, predictor.model.requested_provider, 1,
                      predictor.spec, methods)) as pool:
        parts = list(pool.map(_forecast_chunk, chunks, [kwargs] * n_chunks))
    # Back into ticker order: a chunk holds every n_chunks-th ticker.
    order = {t: i for i, t in enumerate(tickers)}
    forecasts = {}
    for h in kwargs["horizons"]:
        frames = [p.forecasts[h] for p in parts if h in p.forecasts]
        if frames:
            frame = pd.concat(frames, ignore_index=True)
            rank = frame["ticker"].map(order).to_numpy()
            forecasts[h] = frame.iloc[np.argsort(rank, kind="stable")].reset_index(drop=True)
    skipped = {t: why for p in parts for t, why in p.skipped.items()}
    skipped = dict(sorted(skipped.items(), key=lambda kv: order[kv[0]]))
    seconds = {k: sum(p.seconds[k] for p in parts) for k in ("model", "baselines")}
    return HistoricalRun(forecasts, skipped, seconds)


def run_backtest(
    predictor: Predictor,
    bars: Mapping[str, pd.DataFrame],
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    horizons: Sequence[int] | None = None,
    baselines: Sequence[str] = tuple(BASELINES),
    band_baselines: Sequence[str] = tuple(BAND_BASELINES),
    aci_settings: ACISettings | None = None,
    workers: int = 1,
) -> BacktestResult:
    """Forecast every origin in [start, end] (default: the model's test segment) and score it.

    `bars` maps ticker -> that ticker's full bars (history before `start` feeds the features;
    bars after `end` supply the realized outcomes). Baselines are fitted on bars up to the end
    of the model's training segment, or up to `start` if that is earlier, so neither sees an
    outcome it is scored on. Tickers without enough history are skipped, with the reason.
    Every method with a band (the model, `band_baselines`) is also scored recalibrated by ACI:
    `model_aci`, `ewma_aci`, ... on the same origins; the served band's base with
    `aci_settings` (default the artifact's), every other with plain ACI (BASELINE_ACI).
    `horizons=None` means those of DEFAULT_HORIZONS (1, 5, 30) the model forecasts.
    `workers` > 1 forecasts chunks of tickers in that many processes (see _pooled_forecasts).
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
    check_date_range(start, end)
    if not bars:
        raise ValueError("no tickers to backtest")
    fit_end = min(manifest.split.train[1], start)
    quantiles = list(spec.quantiles)

    # One list of methods, one interface (MethodSet.build).
    aci = predictor.band_settings if aci_settings is None else aci_settings
    method_set = MethodSet(baseline_names, tuple(band_baselines), aci, horizons)
    forecasters = method_set.build(predictor)
    tick = time.perf_counter()
    window = {"start": start, "end": end, "fit_end": fit_end, "horizons": horizons}
    if workers > 1 and len(bars) > 1:
        for forecaster in forecasters:  # imported once here, not once per worker
            forecaster.preload()
        run = _pooled_forecasts(predictor, method_set, bars, min(workers, len(bars)), **window)
    else:
        run = historical_forecasts(forecasters, bars, **window)
    forecasts, skipped, seconds = run.forecasts, run.skipped, run.seconds
    seconds["forecasts"] = time.perf_counter() - tick
    if not forecasts:
        reasons = "; ".join(f"{t}: {why}" for t, why in skipped.items())
        raise ValueError(f"nothing to backtest between {start} and {end}: {reasons}")
    scored = sorted({t for f in forecasts.values() for t in f["ticker"].unique()})
    methods = tuple(f.name for f in forecasters)

    tick = time.perf_counter()
    metrics = compute_metrics(forecasts, methods, workers)
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
        "interval": [quantiles[i] for i in band_indices(spec.quantiles, DEFAULT_LEVEL)],
        "band_levels": list(BAND_LEVELS),
        "band_baselines": list(band_baselines),
        "aci": aci.to_dict(),  # the served band's; the other bands': baseline_aci
        "baseline_aci": BASELINE_ACI.to_dict(),
        "served_band": predictor.served_band,
        "workers": workers,
        "skipped": skipped,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    return BacktestResult(
        model_version=manifest.version, start=first, end=last, tickers=tuple(scored),
        horizons=tuple(sorted(forecasts)), methods=methods, forecasts=forecasts,
        metrics=metrics, config=config, skipped=skipped, seconds=seconds,
    )
