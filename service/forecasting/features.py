"""Technical features of one ticker's bars, computed with the `ta` library; strictly causal.

Every price indicator reads `adj_close`, so a stock split (a jump in raw `close`) is not a crash.
A feature row at date t depends only on bars at dates <= t: `ta` is called with `fillna=False`
(its fills back-fill), and the leading warm-up rows, where an indicator is still undefined, are
dropped rather than filled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from ta.momentum import RSIIndicator
from ta.trend import MACD, SMAIndicator
from ta.volatility import BollingerBands

from service.core.bars import BAR_COLUMNS as BARS_COLUMNS
from service.forecasting.spec import FEATURE_NAMES, FeatureSpec
from service.forecasting.spec import INDICATOR_PARAMS as P

# FeatureSpec is frozen, so one shared default instance is safe.
DEFAULT_SPEC = FeatureSpec()

# Leading bars without a defined value, per feature, for the parameters in INDICATOR_PARAMS; the
# test suite checks each against what `ta` actually returns. RSI(14) is defined from bar 13
# because `ta` treats the undefined first change as 0; the MACD signal needs 25 + 8 bars.
FEATURE_WARMUP: dict[str, int] = {
    "log_return": 1,
    "rsi14": P.rsi_window - 1,
    "sma20_ratio": P.sma_short - 1,
    "sma50_ratio": P.sma_long - 1,
    "macd": P.macd_slow - 1,
    "macd_signal": P.macd_slow - 1 + P.macd_signal - 1,
    "macd_hist": P.macd_slow - 1 + P.macd_signal - 1,
    "bb_pctb": P.bollinger_window - 1,
    "bb_width": P.bollinger_window - 1,
    "volume_z": P.volume_z_window - 1,
}


def _check_feature_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in FEATURE_WARMUP]
    if unknown:
        raise ValueError(f"unknown features {unknown}; known: {list(FEATURE_NAMES)}")


def warmup_bars(spec: FeatureSpec = DEFAULT_SPEC) -> int:
    """Leading bars dropped by build_features for this spec (the slowest feature's warm-up)."""
    _check_feature_names(spec.features)
    return max(FEATURE_WARMUP[name] for name in spec.features)


WARMUP_BARS = warmup_bars(DEFAULT_SPEC)


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
    bad = ~(np.isfinite(price) & (price > 0) & np.isfinite(shares) & (shares >= 0))
    if bad.any():
        raise ValueError(
            f"bars on {dates[np.argmax(bad)].date()} need a positive adj_close "
            "and a non-negative volume"
        )
    # A RangeIndex keeps the `ta` series aligned with each other whatever index bars carries.
    all_features = _indicators(pd.Series(price), pd.Series(shares))
    values = np.column_stack([all_features[name][warmup:] for name in spec.features])
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


def _indicators(adj: pd.Series, volume: pd.Series) -> dict[str, np.ndarray]:
    """Every known feature over the whole series, NaN during each one's warm-up."""
    # Arithmetic on the `ta` outputs is done in numpy: per-op pandas overhead dominates here,
    # and the serving path calls this on cold requests.
    price = adj.to_numpy()
    macd = MACD(adj, window_slow=P.macd_slow, window_fast=P.macd_fast,
                window_sign=P.macd_signal, fillna=False)
    bands = BollingerBands(adj, window=P.bollinger_window, window_dev=P.bollinger_dev,
                           fillna=False)
    # pband is undefined on a flat 20-day window (upper == lower); the price then sits on the
    # middle band, which is %B 0.5. Rows still in the band's own warm-up stay NaN.
    pctb = bands.bollinger_pband().to_numpy()
    flat = np.isnan(pctb) & ~np.isnan(bands.bollinger_mavg().to_numpy())
    pctb = np.where(flat, 0.5, pctb)

    log_volume = np.log1p(volume)
    rolling = log_volume.rolling(P.volume_z_window, min_periods=P.volume_z_window)
    vol_mean, vol_std = rolling.mean().to_numpy(), rolling.std(ddof=0).to_numpy()
    # A flat volume window has no spread: call today's volume typical (z = 0).
    with np.errstate(divide="ignore", invalid="ignore"):
        volume_z = np.where(vol_std > 0, (log_volume.to_numpy() - vol_mean) / vol_std, 0.0)
    volume_z[np.isnan(vol_std)] = np.nan

    sma_short = SMAIndicator(adj, window=P.sma_short).sma_indicator().to_numpy()
    sma_long = SMAIndicator(adj, window=P.sma_long).sma_indicator().to_numpy()
    log_price = np.log(price)
    log_return = np.empty_like(log_price)
    log_return[0] = np.nan
    log_return[1:] = np.diff(log_price)
    return {
        "log_return": log_return,
        "rsi14": RSIIndicator(adj, window=P.rsi_window, fillna=False).rsi().to_numpy() / 100.0,
        "sma20_ratio": sma_short / price - 1.0,
        "sma50_ratio": sma_long / price - 1.0,
        "macd": macd.macd().to_numpy() / price,
        "macd_signal": macd.macd_signal().to_numpy() / price,
        "macd_hist": macd.macd_diff().to_numpy() / price,
        "bb_pctb": pctb,
        # ta's wband is in percent: (upper - lower) / middle * 100.
        "bb_width": bands.bollinger_wband().to_numpy() / 100.0,
        "volume_z": volume_z,
    }


def _empty_dtype(column: str):
    if column == "ticker":
        return object
    if column == "date":
        return "datetime64[ns]"
    return np.float64
