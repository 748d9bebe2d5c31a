"""One onnxruntime InferenceSession over an artifact's model.onnx, with explicit session options."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from service.artifacts.manifest import (
    N_TICKERS_PROPERTY,
    ONNX_FILE,
    TICKER_INPUT,
    UNKNOWN_TICKER_ID,
    WINDOW_INPUT,
)
from service.core.errors import ManifestMismatch

Provider = Literal["auto", "cpu", "cuda"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(provider: Provider) -> list[str]:
    """auto -> CUDA first when this onnxruntime build offers it; cpu -> CPU only."""
    if provider == "cpu":
        return [CPU]
    if provider == "cuda":
        return [CUDA, CPU]
    if provider == "auto":
        return [CUDA, CPU] if CUDA in ort.get_available_providers() else [CPU]
    raise ValueError(f"provider must be auto, cpu or cuda, got {provider!r}")


class OnnxModel:
    """(B, W, F) scaled windows + (B,) ticker ids -> (B, H, Q) quantile log returns."""

    def __init__(self, session: ort.InferenceSession, path: Path, requested_provider: Provider):
        self.session = session
        self.path = path
        self.requested_provider = requested_provider
        inputs = {i.name: i for i in session.get_inputs()}
        if set(inputs) != {WINDOW_INPUT, TICKER_INPUT}:
            raise ManifestMismatch(
                f"{path}: expected inputs {WINDOW_INPUT} and {TICKER_INPUT}, got {sorted(inputs)}")
        _, self.window, self.n_features = inputs[WINDOW_INPUT].shape
        _, self.horizon, self.n_quantiles = session.get_outputs()[0].shape
        props = session.get_modelmeta().custom_metadata_map
        if N_TICKERS_PROPERTY not in props:
            raise ManifestMismatch(f"{path}: graph lacks the {N_TICKERS_PROPERTY} property")
        self.n_tickers = int(props[N_TICKERS_PROPERTY])

    @classmethod
    def load(cls, artifact_dir: Path | str, provider: Provider = "auto",
             intra_op_threads: int = 1) -> OnnxModel:
        """One session over artifact_dir/model.onnx; threads set explicitly, not from host cores."""
        path = Path(artifact_dir) / ONNX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {ONNX_FILE} in {artifact_dir}")
        options = ort.SessionOptions()
        # ORT's default sizes its pools from the host's cores, not the container's CPU limit.
        options.intra_op_num_threads = max(1, int(intra_op_threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), sess_options=options,
                                       providers=choose_providers(provider))
        return cls(session, path, provider)

    @property
    def active_providers(self) -> list[str]:
        """Providers the session actually runs on (ORT falls back to CPU silently)."""
        return list(self.session.get_providers())

    def run(self, windows: np.ndarray, ticker_ids: np.ndarray) -> np.ndarray:
        """(B, W, F) float32 feature-scaled windows, (B,) ids -> (B, H, Q) float32 log returns."""
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        if windows.ndim != 3 or windows.shape[1:] != (self.window, self.n_features):
            raise ValueError(
                f"windows must have shape (B, {self.window}, {self.n_features}), "
                f"got {windows.shape}"
            )
        ids = np.asarray(ticker_ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(windows):
            raise ValueError(f"{len(windows)} windows but {len(ids)} ticker ids")
        if len(ids) == 0:
            return np.empty((0, self.horizon, self.n_quantiles), dtype=np.float32)
        # Providers differ on out-of-range Gather: unknown ids become the trained unknown row.
        ids = np.where((ids >= 0) & (ids < self.n_tickers), ids, UNKNOWN_TICKER_ID)
        return self.session.run(None, {WINDOW_INPUT: windows, TICKER_INPUT: ids})[0]
