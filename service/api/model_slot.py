"""The served model: loaded once in the lifespan, swapped atomically by POST /admin/reload."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from service.errors import ManifestMismatch, ModelNotLoaded
from service.forecasting.manifest import load_manifest, resolve_current
from service.inference.onnx_model import OnnxModel, Provider
from service.inference.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A predictor with where it came from; replaced whole, never mutated."""

    predictor: Predictor
    artifact_dir: Path
    loaded_at: dt.datetime

    @property
    def version(self) -> str:
        return self.predictor.model_version


class ModelSlot:
    """Holds the current LoadedModel; a request reads `current` once and keeps that object."""

    def __init__(self, model_dir: Path, provider: Provider = "auto", intra_op_threads: int = 1):
        self.model_dir = Path(model_dir)
        self.provider = provider
        self.intra_op_threads = intra_op_threads
        self.current: LoadedModel | None = None
        self.error: str | None = "no model loaded yet"
        self._reload_lock = threading.Lock()

    def load(self) -> LoadedModel:
        """Load the artifact named by model_dir/current and swap it in.

        On failure the previous model (if any) keeps serving and the error is raised
        (ModelNotLoaded, ManifestMismatch).
        """
        with self._reload_lock:  # two reloads at once would load twice; swaps stay ordered
            try:
                artifact_dir = resolve_current(self.model_dir)
                manifest = load_manifest(artifact_dir)
                model = OnnxModel.load(artifact_dir, self.provider, self.intra_op_threads)
                loaded = LoadedModel(Predictor(model, manifest), artifact_dir,
                                     dt.datetime.now(dt.UTC))
            except (ModelNotLoaded, ManifestMismatch) as exc:
                if self.current is None:
                    self.error = str(exc)
                raise
            except Exception as exc:  # a corrupt ONNX file, an ORT provider failure
                message = f"cannot load the model in {self.model_dir}: {type(exc).__name__}: {exc}"
                if self.current is None:
                    self.error = message
                raise ManifestMismatch(message) from exc
            # One reference assignment: requests already holding the old LoadedModel finish
            # with it; new requests see the new one.
            self.current = loaded
            self.error = None
            log.info("serving model %s from %s (providers %s)", loaded.version, artifact_dir,
                     loaded.predictor.model.active_providers)
            return loaded

    def require(self) -> LoadedModel:
        """The current model, or ModelNotLoaded saying why there is none."""
        loaded = self.current
        if loaded is None:
            raise ModelNotLoaded(f"no model loaded: {self.error}")
        return loaded
