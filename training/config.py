"""One training configuration on one screen, defaults visible; saved inside every artifact."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, fields, replace

from service.forecasting.spec import UNIVERSES, FeatureSpec

DEFAULT_UNIVERSE = "top24"
# What the network learns (training.dataset.prepare_data): each sample's scale-free h-day
# return, or that minus its origin date's cross-sectional mean.
TARGETS = ("return", "cs_demeaned")


@dataclass(frozen=True)
class ModelConfig:
    """Everything the network's shape depends on: passed whole to QuantileLSTM, saved in meta."""

    n_features: int
    n_tickers: int  # the vocabulary, row 0 the unknown ticker
    horizon: int
    quantiles: tuple[float, ...]
    hidden_size: int
    num_layers: int
    dropout: float
    embedding_dim: int
    head_hidden: int

    def to_dict(self) -> dict:
        return {**asdict(self), "quantiles": list(self.quantiles)}


# Fields that count something (epochs, sizes, patiences): integers >= 1.
_COUNTS = ("epochs", "batch_size", "hidden_size", "num_layers", "embedding_dim", "head_hidden",
           "early_stopping_patience", "lr_patience")


@dataclass(frozen=True)
class TrainConfig:
    """Data, model, optimisation and run settings of one training run."""

    # data
    tickers: tuple[str, ...] = UNIVERSES[DEFAULT_UNIVERSE]
    start: dt.date | None = None  # first bar date read from the cache (None: all)
    end: dt.date | None = None  # last bar date read from the cache (None: all)
    # The feature spec's defaults (60-day window, 30 horizons, 0.1/0.5/0.9), stated once there.
    features: tuple[str, ...] = FeatureSpec.features  # spec.FEATURE_SETS names ablation sets
    window: int = FeatureSpec.window
    horizon: int = FeatureSpec.horizon
    quantiles: tuple[float, ...] = FeatureSpec.quantiles
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    train_stride: int = 1  # keep every k-th training origin (1 = all); val is never strided
    # A test segment given from outside (a rolling block, first..last origin): the bars end
    # before it, train/val share the origins before its gap (see chronological_split).
    holdout: tuple[dt.date, dt.date] | None = None
    # "return": the scale-free h-day return; "cs_demeaned": minus its origin date's mean over
    # the tickers (TARGETS), a ranking-only ablation: forecasts become excess
    # returns and their band misses the market's variance.
    target: str = "return"
    # model
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.3
    embedding_dim: int = 8
    head_hidden: int = 64
    # Probability that a training sample's ticker id is replaced by the unknown id 0, so the
    # unknown embedding is a trained "average stock" that unseen tickers can use.
    unknown_ticker_prob: float = 0.1
    # optimisation. Overlapping windows make the data far smaller than its sample count: at
    # lr 2e-3 / wd 1e-4 / dropout 0.2 validation loss was best after epoch 1 and no better than
    # the training targets' unconditional quantiles (0.2114 vs 0.2113); these values gave the
    # lowest validation loss (0.2078) of three settings tried on the default universe.
    epochs: int = 40
    batch_size: int = 256
    learning_rate: float = 5e-4
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    early_stopping_patience: int = 10
    lr_patience: int = 5
    lr_factor: float = 0.5
    # The band served with the median, recalibrated online by ACI: the model's own quantiles
    # ("model") or the random-walk EWMA-volatility band ("ewma", the fallback when the model's
    # band does not beat it on the validation segment).
    band_source: str = "model"
    # A seed ensemble: `members` networks trained alike with seeds seed, seed + 1, ...; the
    # exported graph averages their quantiles (training/ensemble.py). 1: one network, as before.
    members: int = 1
    # run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch intra-op threads on CPU (None: torch's default)
    progress: bool = True

    def __post_init__(self):
        for name in _COUNTS:  # a JSON config's "x" or -3 would fail deep inside training
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.tickers:
            raise ValueError("tickers must not be empty")
        if len(set(self.tickers)) != len(self.tickers):
            raise ValueError("tickers must be unique")
        if self.band_source not in ("model", "ewma"):
            raise ValueError(f"band_source must be model or ewma, got {self.band_source!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        for name in ("members", "train_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if not 0.0 <= self.unknown_ticker_prob < 1.0:
            raise ValueError(
                f"unknown_ticker_prob must be in [0, 1), got {self.unknown_ticker_prob}")
        if 0.5 not in self.quantiles or list(self.quantiles) != sorted(set(self.quantiles)):
            raise ValueError(
                f"quantiles must be sorted, unique and include 0.5, got {self.quantiles}")

    def model_config(self, spec: FeatureSpec, n_tickers: int) -> ModelConfig:
        """The network's config for data of this spec and vocabulary size."""
        return ModelConfig(
            n_features=spec.n_features, n_tickers=n_tickers, horizon=spec.horizon,
            quantiles=spec.quantiles, hidden_size=self.hidden_size, num_layers=self.num_layers,
            dropout=self.dropout, embedding_dim=self.embedding_dim, head_hidden=self.head_hidden,
        )

    @property
    def spec(self) -> FeatureSpec:
        """The feature spec (window, horizon, quantiles) this run trains for."""
        return FeatureSpec(features=self.features, window=self.window, horizon=self.horizon,
                           quantiles=self.quantiles)

    def to_dict(self) -> dict:
        """JSON-able form (dates as ISO strings, tuples as lists)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, dt.date):
                out[key] = value.isoformat()
            elif isinstance(value, tuple):
                out[key] = [v.isoformat() if isinstance(v, dt.date) else v for v in value]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of to_dict; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}")
        values = dict(d)
        for key in ("start", "end"):
            if values.get(key) is not None:
                values[key] = dt.date.fromisoformat(values[key])
        for key in ("tickers", "features", "quantiles", "split_fractions"):
            if key in values:
                if not isinstance(values[key], list):  # "AAA" would be ("A", "A", "A")
                    raise ValueError(f"{key} must be a JSON list, got {values[key]!r}")
                values[key] = tuple(values[key])
        if values.get("holdout") is not None:
            values["holdout"] = tuple(dt.date.fromisoformat(d) for d in values["holdout"])
        return cls(**values)

    def with_(self, **changes) -> TrainConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)
