"""FeatureSpec: the ordered feature list, window length, horizons and quantiles of a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Bump when the meaning of any feature changes; artifacts carry it and are refused on mismatch.
FEATURES_VERSION = 2

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
    # Volatility (daily, of log returns; service/forecasting/volatility.py), added in version 2:
    "ewma_vol",  # EWMA(λ 0.94) close-to-close volatility; the scale of the training target
    "gk_vol",  # Garman–Klass range volatility over 20 sessions (high/low/open/close)
    "atr_ratio",  # ATR(14) on split-adjusted high/low/close / adj_close
    "vol_ratio",  # regime: RMS volatility over 10 sessions / over 60 sessions
)
# The feature whose value at the origin scales the target: returns / (σ_t · √h).
SCALE_FEATURE = "ewma_vol"


# Market context (features.py, read from the market series the bar write path keeps): the
# cross-section's equal-weighted return, the stock's return beyond it, and its EWMA volatility.
MARKET_FEATURES: tuple[str, ...] = ("market_return", "excess_return", "market_vol")

# Named feature sets for ablations (`stockcast evaluate --features`): each names registered
# features, FEATURE_NAMES order first. Serving takes FEATURE_NAMES only.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    # The base: returns, and the volatility the scale-free target is divided by (the graph
    # multiplies it back from the window, so every set carries SCALE_FEATURE).
    "returns": ("log_return", SCALE_FEATURE),
    # + RSI, SMA, MACD, Bollinger, volume and issue 9's volatility features (the shipped set)
    "indicators": FEATURE_NAMES,
    "+market": (*FEATURE_NAMES, *MARKET_FEATURES),  # the shipped set + market context
    "returns+market": ("log_return", SCALE_FEATURE, *MARKET_FEATURES),
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
    gk_window: int = 20
    atr_window: int = 14
    vol_short: int = 10
    vol_long: int = 60


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


# "all": every ticker in the bar cache (the shared dataset's 489 when seeded from it), resolved
# from the database at run time (the CLI's universe_tickers), so it is no fixed tuple above.
ALL_CACHED = "all"


# Central band levels served (`level` 50/80/90 in the API); 0.8 is the lower/upper default.
BAND_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9)
DEFAULT_LEVEL = 0.8


def band_indices(quantiles: tuple[float, ...], level: float) -> tuple[int, int]:
    """Indices of the (1 - level)/2 and (1 + level)/2 quantiles; ValueError if either is absent."""
    want = ((1.0 - level) / 2.0, (1.0 + level) / 2.0)
    found = [next((i for i, q in enumerate(quantiles) if abs(q - w) < 1e-9), None) for w in want]
    if None in found:
        raise ValueError(f"quantiles {list(quantiles)} lack the {level:.0%} band's "
                         f"{want[0]:g}/{want[1]:g} pair")
    return found[0], found[1]


@dataclass(frozen=True)
class FeatureSpec:
    """What a model consumes and produces; saved inside every artifact."""

    features: tuple[str, ...] = FEATURE_NAMES
    window: int = 60
    horizon: int = 30
    # The 10-90% pair is the served band; the others give the 50/90% bands and a reliability
    # diagram (and let online conformal recalibration move between levels).
    quantiles: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
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
