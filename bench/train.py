"""Training and inference benchmark for the default universe, measured in one run.

Prints (1) training throughput (samples/s) and seconds per epoch on this machine's CPU (and on
CUDA where torch sees a GPU), and (2) torch-eager vs onnxruntime latency of the exported model
for one window and for a batch of 500 windows: medians of repeated runs, and their ratio.
Targets: an epoch over the default universe <= 15 s on CPU; onnxruntime single-window latency
<= 0.5 x torch eager.
Run: `make bench-train` (needs the bar cache filled: `stockcast ingest` or `make seed`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from service.core.config import get_settings
from service.inference.onnx_model import OnnxModel
from training.config import TrainConfig
from training.export import export_artifact
from training.model import ExportedForecaster
from training.pipeline import read_training_bars
from training.train import fit


def median_ms(fn, repeat: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def train_row(bars, config: TrainConfig, device: str) -> tuple[dict, object]:
    # Patience above the epoch count: every epoch runs, none is cut by early stopping.
    result = fit(config.with_(device=device, early_stopping_patience=config.epochs + 1), bars)
    seconds = [h["seconds"] for h in result.history]
    # The first epoch carries one-off costs (allocator warm-up, CUDA init); report the rest.
    steady = seconds[1:] or seconds
    per_epoch = statistics.median(steady)
    return {
        "device": device,
        "samples": len(result.prepared.train),
        "epoch_s": per_epoch,
        "samples_per_s": len(result.prepared.train) / per_epoch,
        "epochs": len(seconds),
    }, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--single-repeat", type=int, default=300)
    parser.add_argument("--batch-repeat", type=int, default=30)
    args = parser.parse_args()

    config = TrainConfig(epochs=args.epochs, progress=False, threads=args.threads)
    bars = read_training_bars(get_settings().database_url, config)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows, result = [], None
    for device in devices:
        row, trained = train_row(bars, config, device)
        rows.append(row)
        result = result or trained

    print(f"\nTraining: default universe ({len(config.tickers)} tickers), window "
          f"{config.window}, H {config.horizon}, batch {config.batch_size}, "
          f"{args.threads} CPU thread(s), median of epochs 2..{args.epochs}")
    print("| device | train samples | s / epoch | samples / s |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['device']} | {r['samples']} | {r['epoch_s']:.1f} | {r['samples_per_s']:.0f} |")
    if len(rows) > 1:
        print(f"CUDA / CPU throughput: {rows[1]['samples_per_s'] / rows[0]['samples_per_s']:.1f}x")

    with tempfile.TemporaryDirectory() as tmp:
        artifact = export_artifact(result.model, result.prepared, result.record, Path(tmp))
        onnx_model = OnnxModel.load(artifact, provider="cpu", intra_op_threads=args.threads)
        scaler = result.prepared.target_scaler
        eager = ExportedForecaster(result.model.cpu(), scaler.mean, scaler.std).eval()
        torch.set_num_threads(args.threads)
        val = result.prepared.val
        rng = np.random.default_rng(0)
        table = []
        for batch, repeat in ((1, args.single_repeat), (500, args.batch_repeat)):
            pick = rng.choice(len(val), size=batch, replace=batch > len(val))
            windows, ids = val.windows[pick], val.ticker_ids[pick]
            tw, ti = torch.from_numpy(windows), torch.from_numpy(ids)

            def run_torch(tw=tw, ti=ti):
                with torch.inference_mode():
                    eager(tw, ti)

            def run_ort(windows=windows, ids=ids):
                onnx_model.run(windows, ids)

            torch_ms = median_ms(run_torch, repeat)
            ort_ms = median_ms(run_ort, repeat)
            table.append((batch, torch_ms, ort_ms))

    print(f"\nInference latency (CPU, {args.threads} thread(s), median ms)")
    print("| windows | torch eager | onnxruntime | ort / torch |")
    print("|---:|---:|---:|---:|")
    for batch, torch_ms, ort_ms in table:
        print(f"| {batch} | {torch_ms:.2f} | {ort_ms:.2f} | {ort_ms / torch_ms:.2f} |")


if __name__ == "__main__":
    main()
