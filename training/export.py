"""Export a trained model to models/<version>/ (model.onnx, meta.json, history.png) and verify it."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service import package_version
from service.artifacts.manifest import (
    HISTORY_FILE,
    META_FILE,
    N_TICKERS_PROPERTY,
    ONNX_FILE,
    QUANTILES_OUTPUT,
    TICKER_INPUT,
    WINDOW_INPUT,
    artifact_version,
)
from service.forecasting.bands import ACI_SUFFIX, ACISettings
from training.dataset import PreparedData
from training.model import ExportedForecaster, QuantileEnsemble, QuantileLSTM

log = logging.getLogger(__name__)

# Pinned explicitly: torch >= 2.9 defaults to the dynamo exporter, and the two paths export
# LSTMs differently. The TorchScript path with opset 17 gives one fused LSTM node per layer.
OPSET = 17
DYNAMO = False
# LSTM export can bake in the example's batch size; an example larger than 1 (plus the dynamic
# axis) keeps batch truly dynamic, which the parity test checks with batches of 1, 2 and 17.
EXAMPLE_BATCH = 4
PARITY_TOLERANCE = 1e-5


def export_onnx(wrapper: ExportedForecaster, example_window: torch.Tensor,
                example_ticker_ids: torch.Tensor) -> bytes:
    """ONNX bytes of ExportedForecaster: (B, W, F) float32 + (B,) int64 -> (B, H, Q) log returns."""
    wrapper = wrapper.cpu().eval()
    model = wrapper.model
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (see DYNAMO); its deprecation notice and the
        # tracer's notes about LSTM internals are expected and say nothing about this graph.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        torch.onnx.export(
            wrapper,
            (example_window, example_ticker_ids),
            buffer,
            dynamo=DYNAMO,
            opset_version=OPSET,
            input_names=[WINDOW_INPUT, TICKER_INPUT],
            output_names=[QUANTILES_OUTPUT],
            dynamic_axes={WINDOW_INPUT: {0: "batch"}, TICKER_INPUT: {0: "batch"},
                          QUANTILES_OUTPUT: {0: "batch"}},
        )
    graph = onnx.load_from_string(buffer.getvalue())
    # A seed ensemble says so in the graph too (one network's graph is as it always was).
    members = ({"stockcast.members": str(len(model.members))}
               if isinstance(model, QuantileEnsemble) else {})
    # The vocabulary size travels with the graph so OnnxModel can map unknown ids without meta.
    onnx.helper.set_model_props(graph, {
        N_TICKERS_PROPERTY: str(wrapper.n_tickers),
        "stockcast.quantiles": json.dumps(list(model.quantiles)),
        "stockcast.output_units": "log_return",
        "stockcast.target": "log return / (max(sigma_t, VOL_FLOOR) sqrt(h)); multiplied back "
                            "inside this graph",
        **members,
    })
    onnx.checker.check_model(graph)
    return graph.SerializeToString()


def check_parity(onnx_bytes: bytes, wrapper: ExportedForecaster,
                 window: np.ndarray, ticker_ids: np.ndarray) -> float:
    """Max |torch - onnxruntime| on a batch; raises if above PARITY_TOLERANCE."""
    wrapper = wrapper.cpu().eval()
    with torch.no_grad():
        expected = wrapper(torch.from_numpy(window), torch.from_numpy(ticker_ids)).numpy()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {WINDOW_INPUT: window, TICKER_INPUT: ticker_ids})[0]
    diff = float(np.abs(expected - got).max())
    if not diff < PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from torch by {diff:.2e} (> {PARITY_TOLERANCE})")
    return diff


def plot_history(history: list[dict], path: Path, best_epoch: int | None = None,
                 members: tuple[dict, ...] = ()) -> None:
    """PNG of train/val loss and learning rate per epoch; for a seed ensemble `history` is its
    first member's, and every member's validation loss is drawn beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 5), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    first = f", member seed {members[0]['seed']}" if members else ""
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label=f"train loss{first}")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label=f"val loss{first}")
    for member in members[1:]:
        ax_loss.plot([h["epoch"] for h in member["history"]],
                     [h["val_loss"] for h in member["history"]], linewidth=0.8, alpha=0.7,
                     label=f"val loss, member seed {member['seed']}")
    if best_epoch:
        best = f"best (epoch {best_epoch})" if not members else \
            f"best of seed {members[0]['seed']} (epoch {best_epoch})"
        ax_loss.axvline(best_epoch, color="grey", linestyle=":", label=best)
    ax_loss.set_ylabel("pinball loss (scaled)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(epochs, [h["lr"] for h in history], color="tab:green")
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@dataclass(frozen=True)
class TrainingRecord:
    """What an artifact records about the run that made it (meta.json's metrics and training)."""

    config: dict  # the TrainConfig, to_dict()
    metrics: dict  # validation metrics
    best_epoch: int
    history: list[dict]  # one entry per epoch run
    weights_sha256: str
    world_size: int
    seconds: float
    # A seed ensemble's members (training/ensemble.py), each {seed, best_epoch, epochs_run,
    # weights_sha256, val_pinball_scaled, seconds, history}; empty for one network.
    members: tuple[dict, ...] = ()


def build_meta(model: QuantileLSTM | QuantileEnsemble, prepared: PreparedData,
               record: TrainingRecord, onnx_bytes: bytes, parity: float) -> dict:
    """meta.json contents; `version` is the content hash and `run` holds what varies per run."""
    import hashlib

    spec = prepared.spec
    meta = {
        "package_version": package_version(),
        "spec": spec.to_dict(),
        "feature_scaler": prepared.feature_scaler.to_dict(),
        "target_scaler": prepared.target_scaler.to_dict(),
        "ticker_vocab": list(prepared.vocab),
        "split": prepared.split.to_dict(),
        "onnx": {
            "file": ONNX_FILE,
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "exporter": f"torch.onnx.export(dynamo={DYNAMO})",
            "opset": OPSET,
            "inputs": {WINDOW_INPUT: ["batch", spec.window, spec.n_features],
                       TICKER_INPUT: ["batch"]},
            "outputs": {QUANTILES_OUTPUT: ["batch", spec.horizon, len(spec.quantiles)]},
            "output_units": "log_return (target scaling and the volatility scale are inside "
                            "the graph)",
            "input_scaling": "windows are scaled with feature_scaler before the call",
            "parity_max_abs_diff": parity,
        },
        "model": model.config.to_dict(),
        "metrics": record.metrics,
        # What the server puts around the median (service.inference.Predictor.band_forecaster).
        "band": {"served": f"{record.config.get('band_source', 'model')}{ACI_SUFFIX}",
                 "aci": ACISettings().to_dict()},
        "training": {
            "config": record.config,
            "best_epoch": record.best_epoch,
            "epochs_run": len(record.history),
            "samples": {"train": len(prepared.train), "val": len(prepared.val)},
            "weights_sha256": record.weights_sha256,
            "torch_version": torch.__version__,
            "world_size": record.world_size,
        },
        "run": {
            "seconds": record.seconds,
            "history": record.history,
        },
    }
    if record.members:
        # What each member learned is part of the hash; how long each took is not (run).
        meta["training"]["members"] = [
            {k: v for k, v in member.items() if k not in ("seconds", "history")}
            for member in record.members]
        meta["run"]["members"] = [{"seed": member["seed"], "seconds": member["seconds"],
                                   "history": member["history"]} for member in record.members]
    meta["version"] = artifact_version(onnx_bytes, meta)
    meta["created_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return meta


def export_artifact(model: QuantileLSTM | QuantileEnsemble, prepared: PreparedData,
                    record: TrainingRecord, model_dir: Path) -> Path:
    """Write models/<version>/{model.onnx, meta.json, history.png}; `current` is left alone.

    Only the promotion gate (service.evaluation.promotion.promote, which `stockcast train`
    calls after a backtest of the new version) points models/current at an artifact.
    """
    model = model.cpu().eval()
    wrapper = ExportedForecaster.of(model, prepared)
    val = prepared.val
    example_window = torch.from_numpy(val.windows[:EXAMPLE_BATCH].copy())
    example_ids = torch.from_numpy(val.ticker_ids[:EXAMPLE_BATCH].copy())
    onnx_bytes = export_onnx(wrapper, example_window, example_ids)
    check = min(len(val), 64)
    parity = check_parity(onnx_bytes, wrapper, val.windows[:check], val.ticker_ids[:check])
    meta = build_meta(model, prepared, record, onnx_bytes, parity)

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; a non-root server must read it
    try:
        (staging / ONNX_FILE).write_bytes(onnx_bytes)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        plot_history(record.history, staging / HISTORY_FILE, record.best_epoch, record.members)
        final = model_dir / meta["version"]
        if final.exists():  # same content hash: the same model; replace its files
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s (%d KB onnx)", final, len(onnx_bytes) // 1024)
    return final
