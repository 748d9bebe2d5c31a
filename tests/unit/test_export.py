"""The exported artifact: torch/onnxruntime parity, dynamic batch, unknown ids, files and hash."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from service.artifacts.manifest import (
    CURRENT_FILE,
    UNKNOWN_TICKER,
    artifact_version,
    file_sha256,
    resolve_current,
)
from service.inference.onnx_model import OnnxModel, choose_providers
from training.export import OPSET
from training.model import ExportedForecaster


def _torch_reference(tiny_artifact, windows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    result = tiny_artifact.result
    scaler = result.prepared.target_scaler
    wrapper = ExportedForecaster(result.model, scaler.mean, scaler.std).eval()
    with torch.no_grad():
        return wrapper(torch.from_numpy(windows), torch.from_numpy(ids)).numpy()


@pytest.mark.parametrize("batch", [1, 2, 17])
def test_onnxruntime_matches_torch_for_batches_of_1_2_17(tiny_artifact, batch):
    val = tiny_artifact.result.prepared.val
    rng = np.random.default_rng(batch)
    pick = rng.choice(len(val), size=batch, replace=False)
    windows, ids = val.windows[pick], val.ticker_ids[pick]
    model = OnnxModel.load(tiny_artifact.artifact_dir, provider="cpu")
    got = model.run(windows, ids)
    expected = _torch_reference(tiny_artifact, windows, ids)
    assert got.shape == (batch, 5, 3)
    assert np.abs(got - expected).max() < 1e-5


def test_output_is_log_returns_sorted_along_quantiles(tiny_artifact):
    val = tiny_artifact.result.prepared.val
    out = OnnxModel.load(tiny_artifact.artifact_dir, provider="cpu").run(val.windows, val.ticker_ids)
    assert (np.diff(out, axis=-1) >= 0).all()
    # Unscaled: medians are daily-return sized, not unit-variance sized.
    assert np.abs(out[:, 0, 1]).max() < 0.05


def test_ticker_ids_outside_the_vocabulary_use_the_unknown_row(tiny_artifact):
    model = OnnxModel.load(tiny_artifact.artifact_dir, provider="cpu")
    assert model.n_tickers == 4  # unknown + 3 tickers
    window = tiny_artifact.result.prepared.val.windows[:1].repeat(4, axis=0)
    out = model.run(window, np.array([0, -1, 4, 10**9]))
    # Rows of one batch may take different SIMD paths: equal up to float32 rounding.
    for row in (1, 2, 3):
        np.testing.assert_allclose(out[row], out[0], rtol=0, atol=1e-7)
    known = model.run(window[:1], np.array([1]))
    assert np.abs(known[0] - out[0]).max() > 1e-5  # a real ticker's row differs from unknown


def test_graph_maps_out_of_range_ids_itself(tiny_artifact):
    """The clamp is also inside the graph, for consumers that call onnxruntime directly."""
    model = OnnxModel.load(tiny_artifact.artifact_dir, provider="cpu")
    window = tiny_artifact.result.prepared.val.windows[:1].repeat(2, axis=0)
    raw = model.session.run(None, {"window": window, "ticker_id": np.array([0, 99], dtype=np.int64)})
    np.testing.assert_allclose(raw[0][0], raw[0][1], rtol=0, atol=1e-7)


def test_wrong_window_shape_is_a_clear_error(tiny_artifact):
    model = OnnxModel.load(tiny_artifact.artifact_dir, provider="cpu")
    with pytest.raises(ValueError, match=r"windows must have shape \(B, 20, 10\), got \(2, 60, 10\)"):
        model.run(np.zeros((2, 60, 10), dtype=np.float32), np.array([1, 2]))
    with pytest.raises(ValueError, match="3 windows but 2 ticker ids"):
        model.run(np.zeros((3, 20, 10), dtype=np.float32), np.array([1, 2]))


def test_session_options_and_active_provider(tiny_artifact):
    model = OnnxModel.load(tiny_artifact.artifact_dir, provider="cpu", intra_op_threads=3)
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert model.active_providers == ["CPUExecutionProvider"]
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="provider must be auto, cpu or cuda, got 'tpu'"):
        choose_providers("tpu")


def test_graph_has_pinned_opset_and_dynamic_batch(tiny_artifact):
    graph = onnx.load(str(tiny_artifact.artifact_dir / "model.onnx"))
    assert {o.domain: o.version for o in graph.opset_import}[""] == OPSET
    window = graph.graph.input[0].type.tensor_type.shape.dim
    assert window[0].dim_param == "batch"
    assert [d.dim_value for d in window[1:]] == [20, 10]
    assert any(node.op_type == "LSTM" for node in graph.graph.node)


def test_artifact_files_meta_and_content_hash(tiny_artifact):
    artifact = tiny_artifact.artifact_dir
    assert sorted(p.name for p in artifact.iterdir()) == ["history.png", "meta.json", "model.onnx"]
    meta = json.loads((artifact / "meta.json").read_text())
    onnx_bytes = (artifact / "model.onnx").read_bytes()
    assert meta["onnx"]["sha256"] == file_sha256(artifact / "model.onnx")
    assert meta["version"] == artifact.name == artifact_version(onnx_bytes, meta)
    assert meta["ticker_vocab"] == [UNKNOWN_TICKER, "AAA", "BBB", "CCC"]
    assert meta["spec"]["features"][0] == "log_return" and meta["spec"]["window"] == 20
    assert set(meta["split"]) == {"train", "val", "test"}
    assert meta["training"]["config"]["hidden_size"] == 8
    assert meta["onnx"]["opset"] == OPSET and meta["onnx"]["parity_max_abs_diff"] < 1e-5
    assert "val_mae_1d" in meta["metrics"] and meta["created_at"]
    # created_at and run timings do not change the version.
    changed = dict(meta, created_at="2000-01-01T00:00:00+00:00", run={"seconds": 1})
    assert artifact_version(onnx_bytes, changed) == meta["version"]
    assert artifact_version(onnx_bytes, dict(meta, ticker_vocab=["x"])) != meta["version"]
    assert (tiny_artifact.model_dir / CURRENT_FILE).read_text().strip() == artifact.name
    assert resolve_current(tiny_artifact.model_dir) == artifact
