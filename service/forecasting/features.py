"""Technical features of one ticker's bars, computed with the `ta` library; strictly causal.

Every price indicator reads `adj_close`, so a stock split (a jump in raw `close`) is not a crash.
A feature row at date t depends only on bars at dates <= t: `ta` is called with `fillna=False`
(its fills back-fill), and the leading warm-up rows, where an indicator is still undefined, are
dropped rather than filled. The market-context features also read the bars' MARKET_COLUMN, the
cross-section's return on each bar's date (sources/market.py, joined on by the bar read), so
only a spec that names one of them needs it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from ta.momentum import RSIIndicator
from ta.trend import MACD, SMAIndicator
from ta.volatility import BollingerBands

from service.core.bars import BAR_COLUMNS as BARS_COLUMNS
from service.core.bars import MARKET_RETURN
from service.forecasting.spec import FEATURE_NAMES, FEATURES_VERSION, FeatureSpec
from service.forecasting.spec import INDICATOR_PARAMS as P
from service.forecasting.volatility import (
    EWMA_LAMBDA,
    EWMA_MIN_PERIODS,
    ewma_volatility,
    garman_klass_volatility,
    log_returns,
    rms_volatility,
)

# FeatureSpec is frozen, so one shared default instance is safe.
DEFAULT_SPEC = FeatureSpec()


# The bars column the market features read (core.bars.MARKET_RETURN).
MARKET_COLUMN = MARKET_RETURN


class _Series:
    """One ticker's adj close and volume (RangeIndex), the shared `ta` indicators made once.

    `ohlc` is (T, 4) open, high, low, close as quoted (unadjusted), for the range features;
    `market` (T,) the market return on each bar's date, or None when the bars carry none.
    """

    def __init__(self, adj: pd.Series, volume: pd.Series, ohlc: np.ndarray,
                 market: np.ndarray | None = None):
        self.adj, self.volume, self.ohlc, self._market = adj, volume, ohlc, market
        self.price = adj.to_numpy()

    @property
    def market(self) -> np.ndarray:
        if self._market is None:
            raise ValueError(f"this feature set reads the market series: the bars need a "
                             f"{MARKET_COLUMN!r} column (read them with the market joined on)")
        out = self._market.copy()
        out[:1] = np.nan  # like log_return: no return on the ticker's first bar
        return out

    @cached_property
    def log_return(self) -> np.ndarray:
        return log_returns(np.log(self.price))

    @cached_property
    def macd(self) -> MACD:
        return MACD(self.adj, window_slow=P.macd_slow, window_fast=P.macd_fast,
                    window_sign=P.macd_signal, fillna=False)

    @cached_property
    def bands(self) -> BollingerBands:
        return BollingerBands(self.adj, window=P.bollinger_window, window_dev=P.bollinger_dev,
                              fillna=False)


@dataclass(frozen=True)
class Feature:
    """One registered feature: its name, its warm-up (leading bars it leaves NaN), its formula."""

    name: str
    warmup: int
    compute: Callable[[_Series], np.ndarray]  # the whole series' values, NaN in the warm-up
    market: bool = False  # reads the market series (the bars' MARKET_COLUMN)


# Every feature a model may use, by name (a spec picks and orders them: FeatureSpec.features).
# Adding one: a function below with @feature(name, warmup), plus its test; listing it in
# spec.FEATURE_NAMES makes it a default input (bump FEATURES_VERSION when meanings change).
FEATURES: dict[str, Feature] = {}


def feature(name: str, warmup: int, *, market: bool = False):
    """Register `compute(series) -> values` as the feature `name`."""
    def register(compute: Callable[[_Series], np.ndarray]):
        FEATURES[name] = Feature(name, warmup, compute, market)
        return compute
    return register


# Leading bars without a defined value, per feature, for the parameters in INDICATOR_PARAMS; the
# test suite checks each against what `ta` actually returns. RSI(14) is defined from bar 13
# because `ta` treats the undefined first change as 0; the MACD signal needs 25 + 8 bars.
# Arithmetic on the `ta` outputs is done in numpy: per-op pandas overhead dominates here, and the
# serving path computes features on cold requests.


@feature("log_return", warmup=1)
def _log_return(s: _Series) -> np.ndarray:
    return s.log_return


@feature("rsi14", warmup=P.rsi_window - 1)
def _rsi(s: _Series) -> np.ndarray:
    return RSIIndicator(s.adj, window=P.rsi_window, fillna=False).rsi().to_numpy() / 100.0


@feature("sma20_ratio", warmup=P.sma_short - 1)
def _sma_short_ratio(s: _Series) -> np.ndarray:
    return SMAIndicator(s.adj, window=P.sma_short).sma_indicator().to_numpy() / s.price - 1.0


@feature("sma50_ratio", warmup=P.sma_long - 1)
def _sma_long_ratio(s: _Series) -> np.ndarray:
    return SMAIndicator(s.adj, window=P.sma_long).sma_indicator().to_numpy() / s.price - 1.0


@feature("macd", warmup=P.macd_slow - 1)
def _macd(s: _Series) -> np.ndarray:
    return s.macd.macd().to_numpy() / s.price


@feature("macd_signal", warmup=P.macd_slow - 1 + P.macd_signal - 1)
def _macd_signal(s: _Series) -> np.ndarray:
    return s.macd.macd_signal().to_numpy() / s.price


@feature("macd_hist", warmup=P.macd_slow - 1 + P.macd_signal - 1)
def _macd_hist(s: _Series) -> np.ndarray:
    return s.macd.macd_diff().to_numpy() / s.price


@feature("bb_pctb", warmup=P.bollinger_window - 1)
def _bollinger_pctb(s: _Series) -> np.ndarray:
    # pband is undefined on a flat 20-day window (upper == lower); the price then sits on the
    # middle band, which is %B 0.5. Rows still in the band's own warm-up stay NaN.
    pctb = s.bands.bollinger_pband().to_numpy()
    flat = np.isnan(pctb) & ~np.isnan(s.bands.bollinger_mavg().to_numpy())
    return np.where(flat, 0.5, pctb)


@feature("bb_width", warmup=P.bollinger_window - 1)
def _bollinger_width(s: _Series) -> np.ndarray:
    # ta's wband is in percent: (upper - lower) / middle * 100.
    return s.bands.bollinger_wband().to_numpy() / 100.0


@feature("volume_z", warmup=P.volume_z_window - 1)
def _volume_z(s: _Series) -> np.ndarray:
    log_volume = np.log1p(s.volume)
    rolling = log_volume.rolling(P.volume_z_window, min_periods=P.volume_z_window)
    vol_mean, vol_std = rolling.mean().to_numpy(), rolling.std(ddof=0).to_numpy()
    # A flat volume window has no spread: call today's volume typical (z = 0).
    with np.errstate(divide="ignore", invalid="ignore"):
        volume_z = np.where(vol_std > 0, (log_volume.to_numpy() - vol_mean) / vol_std, 0.0)
    volume_z[np.isnan(vol_std)] = np.nan
    return volume_z


# Volatility (daily, of log returns; service/forecasting/volatility.py), feature version 2.


@feature("ewma_vol", warmup=EWMA_MIN_PERIODS)  # min_periods returns, the first at bar 1
def _ewma_vol(s: _Series) -> np.ndarray:
    return ewma_volatility(s.log_return)


@feature("gk_vol", warmup=P.gk_window - 1)
def _garman_klass_vol(s: _Series) -> np.ndarray:
    open_, high, low, close = s.ohlc.T
    return garman_klass_volatility(open_, high, low, close, P.gk_window)


@feature("atr_ratio", warmup=P.atr_window - 1)
def _atr_ratio(s: _Series) -> np.ndarray:
    # True range reads the previous close: on quoted prices a split is a huge fake range, so
    # high/low/close are put on the adjusted basis first (factor adj_close / close per bar).
    _, high, low, close = s.ohlc.T
    factor = s.price / close
    atr = average_true_range(high * factor, low * factor, s.price, P.atr_window)
    return atr / s.price


def average_true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray,
                       window: int) -> np.ndarray:
    """`ta`'s AverageTrueRange, float for float, NaN (not `ta`'s zeros) before its first value.

    Wilder's smoothing ATR_i = (ATR_{i-1} (w - 1) + TR_i) / w from ATR_{w-1} = mean(TR_0..w-1),
    TR_i = max(high - low, |high - close_{i-1}|, |low - close_{i-1}|) (NaNs skipped). `ta` runs
    the recursion through pandas' per-element indexing, a third of a cold forecast's features;
    the same operations on Python floats give the same numbers (a test compares them).
    """
    prev = np.concatenate([[np.nan], close[:-1]])
    true_range = np.fmax(np.fmax(high - low, np.abs(high - prev)), np.abs(low - prev))
    atr = np.full(len(close), np.nan)
    if len(close) < window:
        return atr
    tr = true_range.tolist()
    value = pd.Series(true_range[:window]).mean()  # pandas' mean, as `ta`'s seed
    out = [value]
    for x in tr[window:]:
        value = (value * (window - 1) + x) / float(window)
        out.append(value)
    atr[window - 1:] = out
    return atr


@feature("vol_ratio", warmup=P.vol_long)  # vol_long returns, the first at bar 1
def _vol_ratio(s: _Series) -> np.ndarray:
    short = rms_volatility(s.log_return, P.vol_short)
    long = rms_volatility(s.log_return, P.vol_long)
    # A flat stretch has no volatility in either window: call the regime unchanged (ratio 1).
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(long > 0, short / long, 1.0)
    ratio[np.isnan(long)] = np.nan
    return ratio


# Market context (the cross-section's equal-weighted return, sources/market.py): opt-in, in the
# "+market" ablation set, not in FEATURE_NAMES.


@feature("market_return", warmup=1, market=True)
def _market_return(s: _Series) -> np.ndarray:
    return s.market


@feature("excess_return", warmup=1, market=True)
def _excess_return(s: _Series) -> np.ndarray:
    return s.log_return - s.market  # the stock's own move beyond the market's


@feature("market_vol", warmup=EWMA_MIN_PERIODS, market=True)
def _market_vol(s: _Series) -> np.ndarray:
    return ewma_volatility(s.market)  # the same EWMA as ewma_vol, of the market's returns


FEATURE_WARMUP: dict[str, int] = {name: f.warmup for name, f in FEATURES.items()}


def needs_market(spec: FeatureSpec) -> bool:
    """Whether a spec's features read the market series (its bars need MARKET_COLUMN)."""
    return any(FEATURES[name].market for name in spec.features if name in FEATURES)


def _indicators(adj: pd.Series, volume: pd.Series, ohlc: np.ndarray,
                market: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every registered feature over the whole series (the market ones if `market` is given),
    NaN during each one's warm-up."""
    series = _Series(adj, volume, ohlc, market)
    return {name: f.compute(series) for name, f in FEATURES.items()
            if market is not None or not f.market}


def _check_feature_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ValueError(f"unknown features {unknown}; known: {list(FEATURES)}")


def warmup_bars(spec: FeatureSpec = DEFAULT_SPEC) -> int:
    """Leading bars dropped by build_features for this spec (the slowest feature's warm-up)."""
    _check_feature_names(spec.features)
    return max(FEATURES[name].warmup for name in spec.features)


WARMUP_BARS = warmup_bars(DEFAULT_SPEC)


def store_version() -> str:
    """The feature store's key for what a stored row means: FEATURES_VERSION and a fingerprint
    of the stored columns (FEATURE_NAMES) and every parameter behind them."""
    meaning = json.dumps({"features": FEATURE_NAMES, "params": asdict(P),
                          "ewma": [EWMA_LAMBDA, EWMA_MIN_PERIODS]}, sort_keys=True)
    return f"{FEATURES_VERSION}-{hashlib.sha256(meaning.encode()).hexdigest()[:12]}"


def min_bars(spec: FeatureSpec = DEFAULT_SPEC) -> int:
    """Bars needed to serve one forecast: the warm-up plus one full window of feature rows."""
    return warmup_bars(spec) + spec.window


def build_features(bars: pd.DataFrame, spec: FeatureSpec = DEFAULT_SPEC) -> pd.DataFrame:
    """Feature frame (index `date`, columns `spec.features`, float64) of one ticker's bars."""
    _check_feature_names(spec.features)
    missing = [c for c in BARS_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars are missing columns {missing}; expected {list(BARS_COLUMNS)}")
    dates = pd.DatetimeIndex(bars["date"], name="date")
    if not (dates.is_monotonic_increasing and dates.is_unique):
        raise ValueError("bars dates must be unique and sorted ascending")

    warmup = warmup_bars(spec)
    if len(bars) <= warmup:
        return pd.DataFrame(
            np.empty((0, len(spec.features))), index=dates[:0], columns=list(spec.features)
        )

    price = bars["adj_close"].to_numpy(dtype=np.float64)
    shares = bars["volume"].to_numpy(dtype=np.float64)
    ohlc = bars[["open", "high", "low", "close"]].to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(price) & (price > 0) & np.isfinite(shares) & (shares >= 0))
    if bad.any():
        raise ValueError(
            f"bars on {dates[np.argmax(bad)].date()} need a positive adj_close "
            "and a non-negative volume"
        )
    bad = ~(np.isfinite(ohlc) & (ohlc > 0)).all(axis=1)
    if bad.any():
        raise ValueError(
            f"bars on {dates[np.argmax(bad)].date()} need a positive open, high, low and close"
        )
    market = (bars[MARKET_COLUMN].to_numpy(dtype=np.float64) if MARKET_COLUMN in bars.columns
              else None)
    # A RangeIndex keeps the `ta` series aligned with each other whatever index bars carries.
    series = _Series(pd.Series(price), pd.Series(shares), ohlc, market)
    values = np.column_stack([FEATURES[name].compute(series)[warmup:] for name in spec.features])
    if market is not None and needs_market(spec) and np.isnan(market[warmup:]).any():
        raise ValueError(f"no market return on {dates[warmup:][np.isnan(market[warmup:])][0].date()}"
                         ": the market series lacks that session (is the database migrated?)")
    # Valid bars give finite features past the warm-up; anything else is a bug here, not bad input.
    if not np.isfinite(values).all():
        raise RuntimeError("non-finite feature after the warm-up from valid bars")
    return pd.DataFrame(values, index=dates[warmup:], columns=list(spec.features))


def build_features_many(
    bars_multi: pd.DataFrame,
    spec: FeatureSpec = DEFAULT_SPEC,
    *,
    keep: Sequence[str] = (),
) -> pd.DataFrame:
    """Long feature frame (`ticker`, `date`, *keep, *spec.features) of a multi-ticker bars frame.

    `keep` carries bars columns (e.g. `adj_close` for targets) through on the same rows.
    """
    if "ticker" not in bars_multi.columns:
        raise ValueError("bars_multi is missing column 'ticker'")
    unknown = [c for c in keep if c not in BARS_COLUMNS or c == "date"]
    if unknown:
        raise ValueError(f"keep may only name bars columns other than date; got {unknown}")
    parts = []
    for ticker, bars in bars_multi.groupby("ticker", sort=True):
        if not bars["date"].is_monotonic_increasing:
            bars = bars.sort_values("date")
        features = build_features(bars, spec)
        if features.empty:
            continue
        part = features.reset_index()
        part.insert(0, "ticker", ticker)
        tail = bars.iloc[len(bars) - len(features) :]
        for i, col in enumerate(keep):
            part.insert(2 + i, col, tail[col].to_numpy())
        parts.append(part)
    columns = ["ticker", "date", *keep, *spec.features]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=_empty_dtype(c)) for c in columns})
    return pd.concat(parts, ignore_index=True)[columns]


def _empty_dtype(column: str):
    if column == "ticker":
        return object
    if column == "date":
        return "datetime64[ns]"
    return np.float64
