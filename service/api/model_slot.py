"""The served model: loaded once in the lifespan, swapped atomically by POST /admin/reload or
when `models/current` changes.

Each uvicorn worker holds its own slot, and POST /admin/reload reaches only the worker that
answers it; so every slot also watches `models/current` itself (one stat every few seconds, in
a background thread) and loads the artifact it names once it changes.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.artifacts.manifest import CURRENT_FILE, is_version, resolve_current
from service.core.errors import ManifestMismatch, ModelNotLoaded
from service.inference.onnx_model import Provider
from service.inference.predictor import Predictor

log = logging.getLogger(__name__)

# What identifies one write of models/current: inode, mtime (ns), size. set_current replaces the
# file (a new inode), and an in-place edit changes mtime or size.
PointerStamp = tuple[int, int, int]


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
    """Holds the current LoadedModel; a request reads `current` once and keeps that object.

    `on_load(previous, loaded)` runs after every swap (the app clears its forecast cache and
    updates its metrics there), whichever way the load came.
    """

    def __init__(self, model_dir: Path, provider: Provider = "auto", intra_op_threads: int = 1,
                 on_load: Callable[[LoadedModel | None, LoadedModel], None] | None = None):
        self.model_dir = Path(model_dir)
        self.provider = provider
        self.intra_op_threads = intra_op_threads
        self.on_load = on_load
        self.current: LoadedModel | None = None
        # Why the last load failed (None after a success), in full (logged, and in the answer
        # of the authenticated POST /admin/reload) and in short for the public: /readyz and
        # 503s show no file paths or onnxruntime internals. While a model serves, the failed
        # newer one is reported next to it in /readyz.
        self.error: str | None = "no model loaded yet"
        self.public_error: str | None = "no model loaded yet"
        self._reload_lock = threading.Lock()
        self._seen: PointerStamp | None = None  # models/current as of the last load attempt
        self._stop_watching: threading.Event | None = None
        self._watcher: threading.Thread | None = None

    @property
    def pointer(self) -> Path:
        return self.model_dir / CURRENT_FILE

    def load(self) -> LoadedModel:
        """Load the artifact named by model_dir/current and swap it in.

        On failure the previous model (if any) keeps serving and the error is raised
        (ModelNotLoaded, ManifestMismatch).
        """
        with self._reload_lock:  # two reloads at once would load twice; swaps stay ordered
            return self._load()

    def refresh(self) -> LoadedModel | None:
        """Load models/current again if it changed since the last load; None if nothing new.

        One stat when it has not changed. A failed load keeps the old model, is logged and
        shown in /readyz, and is not retried until models/current changes again (or a reload).
        """
        if self._stamp() == self._seen:
            return None
        with self._reload_lock:
            stamp = self._stamp()
            if stamp == self._seen:  # another thread (POST /admin/reload) got here first
                return None
            loaded = self.current
            try:
                named = self.pointer.read_text().strip()
            except OSError:
                named = None
            if loaded is not None and named == loaded.artifact_dir.name:
                # Rewritten with the name already served (touched, or a failed change undone).
                self._seen, self.error, self.public_error = stamp, None, None
                return None
            try:
                return self._load()
            except (ModelNotLoaded, ManifestMismatch):
                return None  # logged, and shown in /readyz (_failed)

    def require(self) -> LoadedModel:
        """The current model, or ModelNotLoaded saying why there is none."""
        loaded = self.current
        if loaded is None:
            raise ModelNotLoaded(f"no model loaded: {self.public_error}")
        return loaded

    def watch(self, interval: float) -> None:
        """Check models/current every `interval` seconds in a daemon thread (0: never)."""
        if interval <= 0 or self._watcher is not None:
            return
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(interval):
                try:
                    self.refresh()
                except Exception:  # the watcher must outlive any surprise; keep serving
                    log.exception("checking %s failed", self.pointer)

        self._stop_watching = stop
        self._watcher = threading.Thread(target=run, name="model-watch", daemon=True)
        self._watcher.start()

    def stop_watching(self) -> None:
        """Stop the watcher thread (the lifespan's shutdown)."""
        if self._watcher is None or self._stop_watching is None:
            return
        self._stop_watching.set()
        self._watcher.join(timeout=10)
        self._watcher = self._stop_watching = None

    # -- internals -----------------------------------------------------------------------------

    def _failed(self, exc: Exception) -> None:
        """Remember why a load failed: in full for the log, in short for the public."""
        self.error = str(exc)
        log.warning("cannot load the model named by %s (still serving %s): %s", self.pointer,
                    self.current.version if self.current else "no model", exc)
        try:
            named = self.pointer.read_text().strip()
        except OSError:
            named = ""
        what = f"model {named}" if is_version(named) else "models/current"
        kind = ("artifact refused" if isinstance(exc, ManifestMismatch)
                else "no loadable artifact")
        self.public_error = f"{what}: {kind} (the reason is in the server log)"

    def _stamp(self) -> PointerStamp | None:
        try:
            st = os.stat(self.pointer)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _load(self) -> LoadedModel:
        # Stamped before reading: a write that lands in between is seen by the next check.
        self._seen = self._stamp()
        previous = self.current
        try:
            artifact_dir = resolve_current(self.model_dir)
            predictor = Predictor.load(artifact_dir, self.provider, self.intra_op_threads)
            loaded = LoadedModel(predictor, artifact_dir, dt.datetime.now(dt.UTC))
        except (ModelNotLoaded, ManifestMismatch) as exc:
            self._failed(exc)
            raise
        except Exception as exc:  # a corrupt ONNX file, an ORT provider failure
            message = f"cannot load the model in {self.model_dir}: {type(exc).__name__}: {exc}"
            failure = ManifestMismatch(message)
            self._failed(failure)
            raise failure from exc
        # One reference assignment: requests already holding the old LoadedModel finish
        # with it; new requests see the new one.
        self.current = loaded
        self.error = self.public_error = None
        log.info("serving model %s from %s (providers %s)", loaded.version, artifact_dir,
                 loaded.predictor.model.active_providers)
        if self.on_load is not None:
            self.on_load(previous, loaded)
        return loaded
