"""bars -> features -> scaled window -> onnxruntime -> log returns -> prices: one inference path.

Three visible steps: `preprocess` (bars to a scaled window), `predict` (one batched onnxruntime
call), `postprocess` (quantile log returns to dated prices). The API and the backtest both call
this class, so what the backtest measures is what the API serves.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from service.artifacts.manifest import Manifest, load_manifest
from service.artifacts.profile import read_profile
from service.core.errors import InsufficientHistory, ManifestMismatch
from service.forecasting.bands import ACI_SUFFIX, ACIForecaster, ACISettings
from service.forecasting.baselines import BAND_BASELINES
from service.forecasting.calendar import next_trading_days
from service.forecasting.drift import TrainingRange
from service.forecasting.features import build_features, min_bars
from service.forecasting.forecaster import (
    MODEL,
    Forecaster,
    HistoricalForecasts,
    TickerSeries,
)
from service.forecasting.spec import BAND_LEVELS, DEFAULT_LEVEL, FeatureSpec, band_indices
from service.forecasting.windows import make_windows, prices_from_log_returns
from service.inference.onnx_model import OnnxModel, Provider

# Sessions behind "recent coverage": how often the served 80 % band held the next close lately.
RECENT_SESSIONS = 60
# Bars read beyond the minimum: MACD and RSI are exponential averages over the whole history;
# after 300 more bars the initial value's weight is below ~1e-10, so served features equal the
# full-history features the backtest uses (tests/integration/test_api_predict.py checks it).
SERVING_EXTRA_BARS = 300


@lru_cache(maxsize=64)
def _band_pairs(band_levels: tuple[float, ...]) -> dict[int, tuple[int, int]]:
    """Level in percent -> the indices of its (lower, upper) quantiles among band_levels."""
    return {round(level * 100): band_indices(band_levels, level) for level in BAND_LEVELS}


@dataclass(frozen=True)
class ForecastStep:
    """One future trading day: the median close and its bands (the served, recalibrated ones)."""

    step: int
    date: dt.date
    predicted_return: float  # simple return to the median close: exp(median log return) - 1
    close: float
    lower: float  # the 10-90% band
    upper: float
    bands: dict[int, tuple[float, float]]  # level in percent (50, 80, 90) -> (lower, upper)


@dataclass(frozen=True)
class Forecast:
    """A forecast for one ticker from the bars up to `as_of`."""

    ticker: str
    as_of: dt.date  # date of the last bar used
    last_close: float  # unadjusted close of that bar
    model_version: str
    seen_in_training: bool
    steps: tuple[ForecastStep, ...]
    warnings: tuple[str, ...] = ()  # e.g. an input window outside the training range
    band_method: str = ""  # which band is served (model_aci, or ewma_aci as the fallback)
    # Share of the last `recent_sessions` next-day closes inside the served 80 % band as it was
    # served at each of those origins (NaN without any known outcome).
    recent_coverage: float = float("nan")
    recent_sessions: int = 0


@dataclass(frozen=True)
class ModelInput:
    """Pre-processed input of one ticker: its latest scaled window, what post-processing needs."""

    ticker: str
    window: np.ndarray | None  # (W, F) float32, feature-scaled (None: the output is stored)
    ticker_id: int
    as_of: dt.date
    last_close: float
    seen_in_training: bool


@dataclass(frozen=True)
class BandState:
    """The served band's state of one ticker at its last origin: ACI's Q̂ per horizon slot and
    band level or tail (K, W), known there, and the recent coverage. With that origin's own
    quantiles it is all the served band needs (ACIForecaster.apply)."""

    ticker: str
    as_of: dt.date
    last_close: float
    qhat: np.ndarray  # (K, W): slots 1..K, W = ACIForecaster.state_width (a Q̂ per level or tail)
    recent_coverage: float
    recent_sessions: int
    # The model's own output at that origin, (H, Q) (its float32 values as float64), and the
    # forecast's range warnings: with them the stores hold the forecast itself (no model run).
    quantiles: np.ndarray | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredInput:
    """A forecast's inputs read from the serving stores: the band state as of the latest bar
    and, unless the state holds the model's output there, the latest feature rows (unscaled, in
    `columns`' order, the last one at state.as_of)."""

    features: np.ndarray | None  # (>= W, len(columns)) float64; None: state.quantiles is set
    columns: tuple[str, ...]
    state: BandState


class Predictor(Forecaster):
    """An OnnxModel with its manifest: pre-process, predict, post-process.

    Also the model's Forecaster (the interface the baselines share): fitted offline, its
    `historical_forecasts` are `predict_origins` over a TickerSeries.
    """

    name = MODEL

    def __init__(self, model: OnnxModel, manifest: Manifest):
        spec = manifest.spec
        expected = (spec.window, spec.n_features, spec.horizon, len(spec.quantiles),
                    len(manifest.ticker_vocab))
        got = (model.window, model.n_features, model.horizon, model.n_quantiles, model.n_tickers)
        if got != expected:
            raise ManifestMismatch(
                f"model.onnx (window, features, horizon, quantiles, tickers) = {got} "
                f"but artifact {manifest.version}'s meta says {expected}"
            )
        self.model = model
        self.manifest = manifest
        self.spec = spec
        self.min_bars = min_bars(spec)
        # Per feature the training range and bins (artifacts.profile); None: no range checks.
        self.training_profile: dict[str, dict] | None = None
        self._range: tuple[dict, TrainingRange] | None = None  # the profile's, vectorised
        self._profile_digest: tuple[dict | None, str | None] = (None, None)
        # The model's own ACI forecaster (band_forecaster()) and the manifest band it was built
        # from: a cold forecast asked for it three times, ≈ 40 µs each.
        self._band: tuple[dict, ACIForecaster] | None = None
        self.quantiles = tuple(spec.quantiles)
        quantiles = list(spec.quantiles)
        self._median = quantiles.index(0.5)
        self._lower, self._upper = band_indices(spec.quantiles, DEFAULT_LEVEL)

    @classmethod
    def load(cls, artifact_dir: Path | str, provider: Provider = "auto",
             intra_op_threads: int = 1, expected: FeatureSpec | None = None) -> Predictor:
        """The one way from an artifact folder to a predictor: manifest, checked graph, session.

        `expected` (an ablation's feature set) replaces the code's default features as what the
        artifact must have been built for.
        """
        manifest = load_manifest(artifact_dir, expected)
        predictor = cls(OnnxModel.load(artifact_dir, provider, intra_op_threads), manifest)
        predictor.training_profile = read_profile(manifest)
        return predictor

    @property
    def model_version(self) -> str:
        return self.manifest.version

    @property
    def profile_digest(self) -> str | None:
        """sha256 of the training profile the range warnings check (None: no profile); the
        profile is outside the version hash, so a stored forecast's warnings name it."""
        profile = self.training_profile
        if profile is None:
            return None
        if self._profile_digest[0] is not profile:  # computed once per profile
            text = json.dumps(profile, sort_keys=True, separators=(",", ":"))
            self._profile_digest = (profile, hashlib.sha256(text.encode()).hexdigest())
        return self._profile_digest[1]

    # -- pre-process ---------------------------------------------------------------------------

    def scaled_features(self, ticker: str, bars: pd.DataFrame) -> pd.DataFrame:
        """Feature rows of `bars`, scaled with the training scaler; InsufficientHistory if short."""
        if len(bars) < self.min_bars:
            raise InsufficientHistory(ticker, len(bars), self.min_bars)
        features = build_features(bars, self.spec)
        scaled = self.manifest.feature_scaler.transform(features.to_numpy(dtype=np.float64))
        return pd.DataFrame(scaled.astype(np.float32), index=features.index,
                            columns=features.columns)

    def preprocess(self, ticker: str, bars: pd.DataFrame, as_of: dt.date | None = None,
                   scaled: pd.DataFrame | None = None) -> ModelInput:
        """Bars up to as_of -> the latest scaled window (W, F) and the ticker's id.

        `scaled`: the bars' scaled features when the caller has built them already.
        """
        if as_of is not None:
            bars = bars.loc[bars["date"] <= pd.Timestamp(as_of)]
        if scaled is None:
            scaled = self.scaled_features(ticker, bars)
        last = bars.iloc[-1]
        return ModelInput(
            ticker=ticker,
            window=scaled.to_numpy()[-self.spec.window:],
            ticker_id=self.manifest.ticker_id(ticker),
            as_of=pd.Timestamp(last["date"]).date(),
            last_close=float(last["close"]),
            seen_in_training=self.manifest.seen_in_training(ticker),
        )

    # -- predict -------------------------------------------------------------------------------

    def predict(self, windows: np.ndarray, ticker_ids: np.ndarray) -> np.ndarray:
        """(B, W, F) scaled windows, (B,) ids -> (B, H, Q) quantile log returns (one ORT call)."""
        return self.model.run(windows, ticker_ids)

    # -- post-process --------------------------------------------------------------------------

    def postprocess(self, item: ModelInput, median: np.ndarray, band: np.ndarray,
                    band_levels: tuple[float, ...], horizon: int,
                    recent: tuple[float, int] = (float("nan"), 0)) -> Forecast:
        """Median (H,) and band quantiles (H, Q') log returns -> dated prices: close x exp(r)."""
        dates = next_trading_days(item.as_of, horizon)
        close = prices_from_log_returns(item.last_close, np.asarray(median[:horizon], float))
        prices = prices_from_log_returns(item.last_close, np.asarray(band[:horizon], float))
        pairs = _band_pairs(tuple(band_levels))
        steps = []
        for h in range(horizon):
            bands = {pct: (float(prices[h, lo]), float(prices[h, hi]))
                     for pct, (lo, hi) in pairs.items()}
            lower, upper = bands[round(DEFAULT_LEVEL * 100)]
            steps.append(ForecastStep(
                step=h + 1, date=dates[h], predicted_return=float(np.expm1(median[h])),
                close=float(close[h]), lower=lower, upper=upper, bands=bands))
        return Forecast(item.ticker, item.as_of, item.last_close, self.model_version,
                        item.seen_in_training, tuple(steps), band_method=self.served_band,
                        recent_coverage=recent[0], recent_sessions=recent[1])

    # -- the served band -----------------------------------------------------------------------

    @property
    def served_band(self) -> str:
        """The band served with the median: the model's recalibrated by ACI, or a fallback's."""
        return self.manifest.band.get("served", f"{MODEL}{ACI_SUFFIX}")

    @property
    def band_settings(self) -> ACISettings:
        """ACI's settings for this artifact (its meta's, else the defaults)."""
        aci = self.manifest.band.get("aci")
        return ACISettings.from_dict(aci) if aci else ACISettings()

    @property
    def band_history(self) -> int:
        """Origins before the last one that the served band and its recent coverage read."""
        return self.band_settings.history + self.spec.horizon + RECENT_SESSIONS

    @property
    def serving_bars(self) -> int:
        """Bars a forecast from bars reads: a window's, 300 more, and the band's origins."""
        return self.min_bars + SERVING_EXTRA_BARS + self.band_history

    def band_forecaster(self, slots: tuple[int, ...] | None = None) -> ACIForecaster:
        """The served band's forecaster: ACI around the model or around a band baseline.

        ACI around the model for every slot is built once and reused while the manifest's band
        is unchanged (it keeps no state: its settings and quantiles are fixed at __init__); a
        baseline's is built afresh each time (a baseline is fitted, so it is not shared).
        """
        band, cached = self.manifest.band, self._band
        # (its base checked too: a copy of this predictor shares the attribute)
        if slots is None and cached is not None and cached[1].base is self and cached[0] == band:
            return cached[1]
        base_name = self.served_band.removesuffix(ACI_SUFFIX)
        base = self if base_name == MODEL else BAND_BASELINES[base_name](self.quantiles)
        forecaster = ACIForecaster(base, self.band_settings, slots=slots)
        if slots is None and base is self:
            self._band = (copy.deepcopy(band), forecaster)
        return forecaster

    # -- the three steps together --------------------------------------------------------------

    def _check_horizon(self, horizon: int) -> None:
        if not 1 <= horizon <= self.spec.horizon:
            raise ValueError(f"horizon must be between 1 and {self.spec.horizon}, got {horizon}")

    def forecast(self, ticker: str, bars: pd.DataFrame, horizon: int = 1,
                 as_of: dt.date | None = None) -> Forecast:
        """Forecast `horizon` trading days ahead of the last bar on or before as_of."""
        return self.forecast_many([(ticker, bars)], horizon, as_of)[0]

    def forecast_many(self, items: Sequence[tuple[str, pd.DataFrame]], horizon: int = 1,
                      as_of: dt.date | None = None) -> list[Forecast]:
        """Forecasts for several tickers, with the served band and its recent coverage."""
        return [f for f, _ in self.forecast_with_states(items, horizon, as_of)]

    def forecast_with_states(self, items: Sequence[tuple[str, pd.DataFrame]], horizon: int = 1,
                             as_of: dt.date | None = None
                             ) -> list[tuple[Forecast, BandState | None]]:
        """Forecasts from bars, each with the band state it was served with (None when the
        served band is a baseline's, which the store does not hold).

        Per ticker one onnxruntime call over the latest origins: the last one is the forecast,
        the ones before feed ACI (the band at the last origin, and the bands the last
        RECENT_SESSIONS origins were served with, scored against the closes that followed) —
        the same ACIForecaster the backtest walks, so the served band equals the backtest's.
        """
        self._check_horizon(horizon)
        served = self.band_forecaster()
        out = []
        for ticker, bars in items:
            if as_of is not None:
                bars = bars.loc[bars["date"] <= pd.Timestamp(as_of)]
            series = TickerSeries(ticker, bars)
            scaled = self.scaled_features(ticker, series.bars)  # built once for both uses
            item = self.preprocess(ticker, series.bars, scaled=scaled)  # the latest window
            last = len(series.bars) - 1
            origins = np.arange(max(0, last - self.band_history), last + 1)
            model = self.historical_forecasts(series, origins, self.spec.horizon, scaled)
            base = (model if served.base is self
                    else served.base.historical_forecasts(series, origins, self.spec.horizon))
            _, slots, state = served.state_at(base, series, np.array([last]), horizon)
            band = served.apply(np.asarray(base.log_returns, np.float64)[-1:, slots - 1],
                                base.quantiles, state.qhat)[0]
            recent = self._recent_coverage(served, base, series, last)
            median = model.median[-1]  # the model's own median, whichever band is served
            forecast = self._finish(item, median, band, served, horizon, recent)
            out.append((self._with_period_warning(forecast), BandState(
                ticker, item.as_of, item.last_close, state.qhat[0], *recent,
                quantiles=np.asarray(model.log_returns[-1], np.float64),
                warnings=forecast.warnings) if served.base is self else None))
        return out

    def forecast_stored(self, items: Sequence[StoredInput], horizon: int = 1) -> list[Forecast]:
        """Forecasts from the serving stores, each band the stored state applied to its
        quantiles (as forecast_with_states): a state that holds the model's output at its origin
        runs no model (the very output forecast_with_states stored, so the same forecast); the
        others take one onnxruntime call over their latest windows together.

        The caller checks each state is fresh for the bars and holds slots 1..horizon.
        """
        self._check_horizon(horizon)
        served = self.band_forecaster()
        if served.base is not self:
            raise ValueError(f"the served band {self.served_band} is not the model's: "
                             "no stored state applies")
        if not items:
            return []
        run = [b for b, item in enumerate(items) if item.state.quantiles is None]
        inputs = [self._stored_input(item) if item.state.quantiles is None
                  else self._stored_origin(item.state) for item in items]
        quantiles = np.empty((len(items), self.spec.horizon, len(self.quantiles)))
        for b, item in enumerate(items):
            if item.state.quantiles is not None:
                quantiles[b] = item.state.quantiles
        if run:
            ids = np.array([inputs[b].ticker_id for b in run], dtype=np.int64)
            quantiles[run] = self.predict(np.stack([inputs[b].window for b in run]), ids)
        bands = served.apply(quantiles[:, :horizon], self.quantiles,
                             np.stack([item.state.qhat[:horizon] for item in items]))
        median = quantiles[:, :, self._median]
        out = []
        for b, (i, item) in enumerate(zip(inputs, items)):
            recent = (item.state.recent_coverage, item.state.recent_sessions)
            if item.state.quantiles is None:
                forecast = self._finish(i, median[b], bands[b], served, horizon, recent)
            else:  # the warnings its window had, stored with the output
                forecast = dataclasses.replace(
                    self.postprocess(i, median[b], bands[b], served.quantiles, horizon, recent),
                    warnings=item.state.warnings)
            out.append(self._with_period_warning(forecast))
        return out

    def _stored_origin(self, state: BandState) -> ModelInput:
        """A stored output's ModelInput: its origin without a window (no model run)."""
        return ModelInput(ticker=state.ticker, window=None, ticker_id=self.manifest.ticker_id(
            state.ticker), as_of=state.as_of, last_close=state.last_close,
            seen_in_training=self.manifest.seen_in_training(state.ticker))

    def _stored_input(self, item: StoredInput) -> ModelInput:
        """A stored window's ModelInput: its columns picked in the spec's order and scaled."""
        cols = [item.columns.index(name) for name in self.spec.features]
        rows = item.features[-self.spec.window:, cols]
        if len(rows) < self.spec.window:
            raise InsufficientHistory(item.state.ticker, len(rows), self.min_bars)
        window = self.manifest.feature_scaler.transform(rows.astype(np.float64))
        return dataclasses.replace(self._stored_origin(item.state),
                                   window=window.astype(np.float32))

    def _finish(self, item: ModelInput, median: np.ndarray, band: np.ndarray,
                served: ACIForecaster, horizon: int, recent: tuple[float, int]) -> Forecast:
        """The dated forecast, with the range warnings of its window."""
        forecast = self.postprocess(item, median, band, served.quantiles, horizon, recent)
        if self.training_profile is not None:
            forecast = dataclasses.replace(forecast, warnings=self._range_warnings(item))
        return forecast

    @staticmethod
    def _recent_coverage(served: ACIForecaster, base: HistoricalForecasts,
                         series: TickerSeries, last: int) -> tuple[float, int]:
        """(share, sessions): next closes inside the 80 % band served at the origins before."""
        past = np.arange(max(0, last - RECENT_SESSIONS), last)  # outcomes known by `last`
        bands = served.recalibrate(base, series, past, 1)
        if len(bands.origins) == 0:
            return float("nan"), 0
        lower, upper = bands.band_at(DEFAULT_LEVEL)
        y = series.log_close
        realized = y[bands.origins + 1] - y[bands.origins]
        inside = (realized >= lower[:, 0]) & (realized <= upper[:, 0])
        return float(inside.mean()), int(inside.size)

    def _with_period_warning(self, forecast: Forecast) -> Forecast:
        """The forecast with a warning when the sessions it forecasts overlap those whose
        outcomes shaped the weights: the training targets from the first training origin on, up
        to the last validation origin's horizon-day target (early stopping read it). Then it is
        in-sample and looks better than a real one would, for any ticker (the market on those
        days was learned). An origin after that, in the gap before the test segment, or an era
        before training is not. Not stored with a band state (the stores keep the window's
        range warnings): it depends on the dates alone."""
        split = self.manifest.split
        last_target = next_trading_days(split.val[1], self.spec.horizon)[-1]
        if forecast.as_of >= last_target or forecast.steps[-1].date <= split.train[0]:
            return forecast
        warning = (f"as_of {forecast.as_of} is inside the period model "
                   f"{self.manifest.version} was trained and validated on (its targets ran "
                   f"from {split.train[0]} to {last_target}): this forecast is in-sample and "
                   "looks better than a real one would")
        return dataclasses.replace(forecast, warnings=(*forecast.warnings, warning))

    def _range_warnings(self, item: ModelInput) -> tuple[str, ...]:
        """A warning when the input window leaves the range the model saw in training."""
        scaler = self.manifest.feature_scaler
        values = scaler.inverse_transform(item.window.astype(np.float64))
        profile = self.training_profile
        if self._range is None or self._range[0] is not profile:  # built once per profile
            self._range = (profile, TrainingRange.of(profile, tuple(self.spec.features)))
        outside = self._range[1].outside(values)
        if not outside:
            return ()
        warning = (f"the input window of {item.ticker} lies outside the training range "
                   f"(value > or < the training max or min): {', '.join(outside)}; the "
                   "forecast extrapolates")
        return (warning,)

    def predict_origins(
        self, ticker: str, bars: pd.DataFrame, origins: Sequence[dt.date] | None = None,
        scaled: pd.DataFrame | None = None,
    ) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
        """Forecasts at many origins: (origin dates (N,), log returns (N, H, Q), closes (N,)).

        Features are built once; the window at origin t holds feature rows <= t, which use bars
        <= t only, so no origin sees its future. `origins=None` means every date with a full
        window; requested dates without one (or without a bar) are left out of the result.
        """
        if scaled is None:
            scaled = self.scaled_features(ticker, bars)
        windows, _, rows = make_windows(scaled.to_numpy(), None, self.spec.window)
        dates = scaled.index[rows]
        if origins is not None:
            wanted = pd.DatetimeIndex(pd.to_datetime(list(origins))).normalize()
            keep = dates.isin(wanted)
            windows, dates = windows[keep], dates[keep]
        ids = np.full(len(windows), self.manifest.ticker_id(ticker), dtype=np.int64)
        quantiles = self.predict(windows, ids)
        closes = bars.set_index("date")["close"].reindex(dates).to_numpy(dtype=np.float64)
        return pd.DatetimeIndex(dates, name="date"), quantiles, closes

    # -- the Forecaster interface --------------------------------------------------------------

    def fit(self, history) -> Predictor:
        """Nothing to fit: the artifact carries the trained weights and scalers."""
        return self

    def historical_forecasts(self, series: TickerSeries, origins: np.ndarray,
                             horizon: int,
                             scaled: pd.DataFrame | None = None) -> HistoricalForecasts:
        """Forecasts (all H horizons) at those origins with a full feature window; `scaled`:
        the series' scaled features when the caller has built them already."""
        dates, quantiles, _ = self.predict_origins(series.ticker, series.bars,
                                                   list(series.dates[origins]), scaled)
        return HistoricalForecasts(series.dates.get_indexer(dates), quantiles, self.quantiles)
