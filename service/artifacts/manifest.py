"""What a model artifact carries (spec, scalers, ticker vocabulary, split, ONNX hash) and its checks.

An artifact is a folder `models/<version>/` with `model.onnx`, `meta.json` and `history.png`;
`models/current` is a text file naming the version to serve.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from service.core.errors import ManifestMismatch, ModelNotLoaded
from service.forecasting.bands import ACI_SUFFIX, ACISettings
from service.forecasting.baselines import BAND_BASELINES
from service.forecasting.forecaster import MODEL
from service.forecasting.scaling import StandardScaler
from service.forecasting.spec import FEATURE_NAMES, FEATURES_VERSION, FeatureSpec
from service.forecasting.split import Split
from service.forecasting.volatility import fit_har

META_FILE = "meta.json"
ONNX_FILE = "model.onnx"
HISTORY_FILE = "history.png"
CURRENT_FILE = "current"
# Id 0 of the embedding: tickers not seen in training (a trained "average stock").
UNKNOWN_TICKER = "<unknown>"
UNKNOWN_TICKER_ID = 0
# The ONNX graph's interface, written by the exporter (training/) and read by the session.
WINDOW_INPUT = "window"  # (B, W, F) float32 scaled feature windows
TICKER_INPUT = "ticker_id"  # (B,) int64 embedding ids
QUANTILES_OUTPUT = "quantiles"  # (B, H, Q) float32 quantile log returns
N_TICKERS_PROPERTY = "stockcast.n_tickers"  # graph metadata: the embedding's row count

# What may name an artifact (a version, `current`'s content): one plain folder name inside the
# model directory, never a path (no '/', no '..', not absolute).
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_VERSION_RE = re.compile(VERSION_PATTERN)

_REQUIRED_KEYS = (
    "version", "spec", "feature_scaler", "target_scaler", "ticker_vocab", "split", "onnx",
)
# Optional keys and the JSON type each must have when present: GET /models/current serves
# them as they are (ModelPublic), so a wrong one would be a 500 for as long as it is served.
_OPTIONAL_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "metrics": (dict, "an object"), "training": (dict, "an object"), "band": (dict, "an object"),
    "created_at": ((str, type(None)), "a string or null"),
    "package_version": ((str, type(None)), "a string or null"),
}
# The bands an artifact may serve (its meta's band.served): ACI around the model or around a
# band baseline, what Predictor.band_forecaster builds.
SERVABLE_BANDS = tuple(f"{base}{ACI_SUFFIX}" for base in (MODEL, *BAND_BASELINES))


def _band_settings(name: str, band: dict) -> ACISettings | None:
    """The ACI settings of meta's band (None: none written, this code's defaults serve), or
    ManifestMismatch naming what cannot be read: the predictor reads band.aci and its har as
    mappings and builds the served band by name on every forecast, so a wrong one would raise
    there (an AttributeError in the model watch, a 500 on reload) instead of refusing the load."""
    def refused(where: str, why: str) -> ManifestMismatch:
        return ManifestMismatch(f"artifact {name}: {META_FILE}'s band.{where} {why}; refused)")

    served = band.get("served", f"{MODEL}{ACI_SUFFIX}")
    if not isinstance(served, str):
        raise refused("served", f"is not a string (got {type(served).__name__}")
    if served not in SERVABLE_BANDS:
        raise refused("served", f"{served!r} names no band (known: {', '.join(SERVABLE_BANDS)}")
    aci = band.get("aci")
    if aci is None:
        return None
    if not isinstance(aci, dict):
        raise refused("aci", f"is not an object (got {type(aci).__name__}")
    if not isinstance(aci.get("har"), dict | None):
        raise refused("aci.har", f"is not an object or null (got {type(aci['har']).__name__}")
    if not aci:
        return None  # {}: the defaults, as the predictor reads it
    try:
        return ACISettings.from_dict(aci)
    except (KeyError, TypeError, ValueError) as exc:
        raise refused("aci", f"cannot be read ({type(exc).__name__}: {exc}") from None


def ticker_vocabulary(tickers: Iterable[str]) -> tuple[str, ...]:
    """Id -> ticker: UNKNOWN_TICKER at 0, then the training tickers sorted."""
    return (UNKNOWN_TICKER, *sorted(set(tickers)))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# Meta keys left out of the content hash: the hash itself, and what differs between two runs
# that produce the same model (wall-clock times).
_UNHASHED_KEYS = ("version", "created_at", "run")


def artifact_version(onnx_bytes: bytes, meta: dict) -> str:
    """Content hash: first 12 hex of sha256(onnx bytes + canonical meta minus timestamps)."""
    stable = {k: v for k, v in meta.items() if k not in _UNHASHED_KEYS}
    digest = hashlib.sha256(onnx_bytes)
    digest.update(json.dumps(stable, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()[:12]


def is_version(name: str) -> bool:
    """Whether `name` can name an artifact folder (VERSION_PATTERN, no '..')."""
    return isinstance(name, str) and bool(_VERSION_RE.fullmatch(name)) and ".." not in name


def artifact_path(model_dir: Path | str, version: str) -> Path:
    """The folder of `version` inside model_dir; ModelNotLoaded for a name that is a path."""
    model_dir = Path(model_dir)
    if not is_version(version):
        raise ModelNotLoaded(f"{version!r} is not a model version: a version is one folder name "
                             "in the model directory (letters, digits, '.', '_', '-')")
    path = model_dir / version
    # A symlinked folder pointing elsewhere is still outside the model directory.
    if path.resolve().parent != model_dir.resolve():
        raise ModelNotLoaded(f"model version {version!r} resolves outside the model directory")
    return path


@dataclass(frozen=True, eq=False)
class Manifest:
    """A loaded, checked meta.json of one artifact."""

    version: str
    spec: FeatureSpec
    feature_scaler: StandardScaler
    target_scaler: StandardScaler
    ticker_vocab: tuple[str, ...]
    split: Split
    onnx_sha256: str
    artifact_dir: Path
    metrics: dict = field(default_factory=dict)
    created_at: str | None = None
    package_version: str | None = None
    training: dict = field(default_factory=dict)
    # The served band: {"served": "model_aci" | "ewma_aci", "aci": ACISettings.to_dict()}.
    band: dict = field(default_factory=dict)

    @property
    def onnx_path(self) -> Path:
        return self.artifact_dir / ONNX_FILE

    @property
    def tickers(self) -> tuple[str, ...]:
        """Tickers seen in training (the vocabulary without the unknown entry)."""
        return self.ticker_vocab[1:]

    def ticker_id(self, ticker: str) -> int:
        """Embedding id of a ticker; UNKNOWN_TICKER_ID for one not seen in training."""
        return self._ids.get(ticker, UNKNOWN_TICKER_ID)

    def seen_in_training(self, ticker: str) -> bool:
        """Whether the ticker has its own embedding row."""
        return ticker in self._ids

    @property
    def _ids(self) -> dict[str, int]:
        ids = self.__dict__.get("_id_cache")
        if ids is None:
            ids = {t: i for i, t in enumerate(self.ticker_vocab) if i != UNKNOWN_TICKER_ID}
            object.__setattr__(self, "_id_cache", ids)
        return ids

    def summary(self) -> dict:
        """What /models/current shows: version, spec, vocabulary size, split, metrics."""
        return {
            "version": self.version,
            "created_at": self.created_at,
            "package_version": self.package_version,
            "features": list(self.spec.features),
            "window": self.spec.window,
            "horizon": self.spec.horizon,
            "quantiles": list(self.spec.quantiles),
            "tickers": list(self.tickers),
            "split": self.split.to_dict(),
            "metrics": self.metrics,
            "band": self.band,
            "onnx_sha256": self.onnx_sha256,
        }


def load_manifest(artifact_dir: Path | str, expected: FeatureSpec | None = None) -> Manifest:
    """Read and check an artifact's meta.json against this code; ManifestMismatch on any conflict.

    The feature list, order and feature version must equal this code's; with `expected`, the
    window, horizon and quantiles must match it too. The ONNX file's hash must match meta, and
    the version must be the content hash (artifact_version) of model.onnx and meta.json as they
    are now, and the folder's name: an edited meta.json or model.onnx is refused, never served
    under the old name.
    """
    artifact_dir = Path(artifact_dir)
    meta_path = artifact_dir / META_FILE
    if not meta_path.is_file():
        raise ModelNotLoaded(f"no model artifact at {artifact_dir}: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestMismatch(f"artifact {artifact_dir.name}: {META_FILE} is not JSON: {exc}")
    if not isinstance(meta, dict):
        raise ManifestMismatch(f"artifact {artifact_dir.name}: {META_FILE} is not an object")
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise ManifestMismatch(f"artifact {artifact_dir.name}: {META_FILE} lacks {missing}")
    name = meta["version"]
    for key, (kind, described) in _OPTIONAL_TYPES.items():
        if key in meta and not isinstance(meta[key], kind):
            raise ManifestMismatch(f"artifact {name}: {META_FILE}'s {key} is not {described} "
                                   f"(got {type(meta[key]).__name__}; refused)")

    spec = FeatureSpec.from_dict(meta["spec"])
    code_features = expected.features if expected is not None else FEATURE_NAMES
    code_version = expected.version if expected is not None else FEATURES_VERSION
    if list(spec.features) != list(code_features):
        raise ManifestMismatch(
            f"artifact {name} was built for features {list(spec.features)} "
            f"but this code computes {list(code_features)}"
        )
    if spec.version != code_version:
        raise ManifestMismatch(
            f"artifact {name} was built with feature version {spec.version} "
            f"but this code computes feature version {code_version}"
        )
    if expected is not None:
        for attr in ("window", "horizon", "quantiles"):
            got, want = getattr(spec, attr), getattr(expected, attr)
            if attr == "quantiles":
                got, want = list(got), list(want)
            if got != want:
                raise ManifestMismatch(
                    f"artifact {name} was built for {attr} {got} but this code expects {want}"
                )

    feature_scaler = StandardScaler.from_dict(meta["feature_scaler"])
    target_scaler = StandardScaler.from_dict(meta["target_scaler"])
    if feature_scaler.mean.shape != (spec.n_features,):
        raise ManifestMismatch(
            f"artifact {name}: feature scaler has {feature_scaler.mean.shape[0]} entries "
            f"for {spec.n_features} features"
        )
    if target_scaler.mean.shape != (spec.horizon,):
        raise ManifestMismatch(
            f"artifact {name}: target scaler has {target_scaler.mean.shape[0]} entries "
            f"for horizon {spec.horizon}"
        )
    vocab = tuple(meta["ticker_vocab"])
    if not vocab or vocab[0] != UNKNOWN_TICKER:
        raise ManifestMismatch(f"artifact {name}: ticker_vocab must start with {UNKNOWN_TICKER!r}")

    onnx_path = artifact_dir / ONNX_FILE
    if not onnx_path.is_file():
        raise ModelNotLoaded(f"no model artifact at {artifact_dir}: {ONNX_FILE} is missing")
    onnx_bytes = onnx_path.read_bytes()
    recorded = meta["onnx"].get("sha256") if isinstance(meta["onnx"], dict) else None
    actual = hashlib.sha256(onnx_bytes).hexdigest()
    if recorded != actual:
        raise ManifestMismatch(
            f"artifact {name}: {ONNX_FILE} has sha256 {actual[:12]}… "
            f"but {META_FILE} records {str(recorded)[:12]}…"
        )
    content = artifact_version(onnx_bytes, meta)
    if name != content:
        raise ManifestMismatch(
            f"artifact {name}: its content hashes to {content}, not to its version; "
            f"{META_FILE} or {ONNX_FILE} was changed after export (refused)"
        )
    if artifact_dir.name != name:
        raise ManifestMismatch(
            f"artifact {name} lies in a folder named {artifact_dir.name!r}; "
            "a version is served only from its own folder"
        )

    aci = _band_settings(name, meta.get("band", {}))
    har = aci.har if aci is not None else None
    if har is not None and har.horizon != spec.horizon:
        raise ManifestMismatch(
            f"artifact {name}: its band's HAR volatility forecasts {har.horizon} horizons, the "
            f"model {spec.horizon}; every served horizon needs its own (refused)")

    return Manifest(
        version=name,
        spec=spec,
        feature_scaler=feature_scaler,
        target_scaler=target_scaler,
        ticker_vocab=vocab,
        split=Split.from_dict(meta["split"]),
        onnx_sha256=actual,
        artifact_dir=artifact_dir,
        metrics=meta.get("metrics", {}),
        created_at=meta.get("created_at"),
        package_version=meta.get("package_version"),
        training=meta.get("training", {}),
        band=meta.get("band", {}),
    )


def resolve_current(model_dir: Path | str) -> Path:
    """The artifact folder named by `model_dir/current`; ModelNotLoaded if absent."""
    model_dir = Path(model_dir)
    pointer = model_dir / CURRENT_FILE
    if not pointer.is_file():
        raise ModelNotLoaded(f"no {pointer}: train a model (stockcast train) or restore one")
    version = pointer.read_text().strip()
    artifact_dir = artifact_path(model_dir, version)
    if not artifact_dir.is_dir():
        raise ModelNotLoaded(f"{pointer} names {version!r}, which is not a folder in {model_dir}")
    return artifact_dir


def set_current(model_dir: Path | str, version: str) -> None:
    """Point `model_dir/current` at a version (written atomically)."""
    model_dir = Path(model_dir)
    if not artifact_path(model_dir, version).is_dir():
        raise ModelNotLoaded(f"no artifact {version!r} in {model_dir}")
    tmp = model_dir / f".{CURRENT_FILE}.tmp"
    tmp.write_text(version + "\n")
    tmp.replace(model_dir / CURRENT_FILE)


# What a re-banded artifact copies from its source: the weights, their training plot and the
# training profile (the same model); its backtest is not copied (it measured another band).
_REBAND_COPIED = (ONNX_FILE, HISTORY_FILE, "training_profile.json")  # profile.PROFILE_FILE


def reband(model_dir: Path | str, version: str, band: dict) -> Path:
    """A new artifact with `version`'s weights and meta but `band` as its served band.

    The band (which band is served, ACI's settings) is part of meta, so of the content hash:
    the new folder is a new version; the old one is left as it is, and `current` too (only the
    gate moves it). Returns the new artifact's folder; one that exists already (the same band
    again, or the source's own band) is returned as it is.
    """
    model_dir = Path(model_dir)
    source = load_manifest(artifact_path(model_dir, version)).artifact_dir
    meta = json.loads((source / META_FILE).read_text())
    meta["band"] = band
    # Outside the hash: when, and from which version (so `make train` reproduces the version).
    meta["run"] = {**meta.get("run", {}), "rebanded_from": version}
    meta["created_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    onnx_bytes = (source / ONNX_FILE).read_bytes()
    meta["version"] = artifact_version(onnx_bytes, meta)
    target = artifact_path(model_dir, meta["version"])
    if (target / META_FILE).is_file():
        return load_manifest(target).artifact_dir
    target.mkdir(exist_ok=True)
    for name in _REBAND_COPIED:
        if (source / name).is_file():
            (target / name).write_bytes((source / name).read_bytes())
    (target / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    load_manifest(target)  # the checks a server runs
    return target


# The HAR band's settings, chosen on the validation segment (README, "Bands"; research of
# 2026-12-01): the network's half-widths rescaled by σ_HAR,h / (σ_EWMA √h), then ACI with
# calibration 500 and no blend (β 1: the HAR already reverts to the mean).
HAR_BAND_CALIBRATION = 500
HAR_BAND_VOL_BETA = 1.0


def har_band_settings(manifest: Manifest, bars_by_ticker: dict) -> ACISettings:
    """The HAR band's ACI settings for an artifact: HarVolatility fitted on the bars of its
    training tickers (those of `bars_by_ticker` it was trained on) up to its training
    segment's last origin, one fit per horizon 1..spec.horizon."""
    train = {t: bars for t, bars in bars_by_ticker.items() if t in set(manifest.tickers)}
    if not train:
        raise ValueError(f"no bars of {manifest.version}'s training tickers to fit the HAR on")
    har = fit_har(train, manifest.split.train[1], manifest.spec.horizon)
    return ACISettings(calibration=HAR_BAND_CALIBRATION, vol_beta=HAR_BAND_VOL_BETA, har=har)
