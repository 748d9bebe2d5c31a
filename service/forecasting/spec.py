"""FeatureSpec: the ordered feature list, window length, horizons and quantiles of a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Bump when the meaning of any feature changes; artifacts carry it and are refused on mismatch.
FEATURES_VERSION = 1

FEATURE_NAMES: tuple[str, ...] = (
    "log_return",  # log(adj_close_t / adj_close_{t-1})
    "rsi14",  # RSI(14) / 100
    "sma20_ratio",  # SMA20(adj_close) / adj_close - 1
    "sma50_ratio",  # SMA50(adj_close) / adj_close - 1
    "macd",  # MACD line (12, 26) / adj_close
    "macd_signal",  # MACD signal (9) / adj_close
    "macd_hist",  # MACD histogram / adj_close
    "bb_pctb",  # Bollinger %B (20, 2)
    "bb_width",  # Bollinger band width (upper - lower) / middle
    "volume_z",  # z-score of log volume over 20 days
)


# Named feature sets for ablations (`stockcast evaluate --features`): each a subset of the
# registered features, in FEATURE_NAMES order. Serving takes FEATURE_NAMES only.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "returns": ("log_return",),  # the base: returns only
    "indicators": FEATURE_NAMES,  # + RSI, SMA, MACD, Bollinger, volume (the shipped set)
}


@dataclass(frozen=True)
class IndicatorParams:
    """Parameters of the `ta` indicators behind the features and the chart overlays."""

    rsi_window: int = 14
    sma_short: int = 20
    sma_long: int = 50
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    bollinger_window: int = 20
    bollinger_dev: int = 2
    volume_z_window: int = 20


# The one table: features.py (scale-free, on adj_close) and indicators.py (price units, on close)
# both read it, so a chart's SMA20 is the model's sma20_ratio in dollars. Changing a value changes
# what a feature means: bump FEATURES_VERSION with it (the names above carry the defaults).
INDICATOR_PARAMS = IndicatorParams()


# Named ticker universes. "top24": large, liquid tickers with bars for the whole shared dataset
# (2012-12-06..2017-12-06, 1260 sessions each), the default training and backtest set.
UNIVERSES: dict[str, tuple[str, ...]] = {
    "top24": (
        "AAPL", "MSFT", "AMZN", "GOOGL", "FB", "JPM", "JNJ", "XOM", "WFC", "BAC", "PG", "GE",
        "T", "CVX", "PFE", "VZ", "KO", "INTC", "CSCO", "WMT", "HD", "MRK", "DIS", "BA",
    ),
}


@dataclass(frozen=True)
class FeatureSpec:
    """What a model consumes and produces; saved inside every artifact."""

    features: tuple[str, ...] = FEATURE_NAMES
    window: int = 60
    horizon: int = 30
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    version: int = FEATURES_VERSION
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def n_features(self) -> int:
        return len(self.features)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        d["quantiles"] = list(self.quantiles)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        return cls(
            features=tuple(d["features"]),
            window=int(d["window"]),
            horizon=int(d["horizon"]),
            quantiles=tuple(float(q) for q in d["quantiles"]),
            version=int(d.get("version", FEATURES_VERSION)),
        )
