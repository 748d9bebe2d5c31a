"""Training and inference benchmark for the default universe, measured in one run.

Prints (1) training throughput (samples/s, samples per CPU second) and seconds per epoch on
this machine's CPU at 1 thread and at --threads, each beside its in-run baseline, the path
before issue 12: the same training with torch's NaN fill of new tensors (deterministic mode's
default) on and glibc malloc's defaults; then without the fill; then without it and with the
large tensors kept on malloc's heap (training.allocator), as `fit` trains now. Each run is a
fresh process, so no run inherits another's allocator or torch state. On CUDA (where torch sees
a GPU, with AMP as `fit` uses it) a row beside the CPU row, named by the GPU; and (2) torch-eager
vs onnxruntime latency of the exported model for one window and for a batch of 500 windows:
medians of repeated runs, their ratio, and onnxruntime's active provider (CUDA as well where
onnxruntime-gpu sees a GPU).
Targets: an epoch over the default universe <= 15 s on CPU; training >= 1.3 x the baseline's
samples/s; onnxruntime single-window latency <= 0.5 x torch eager; GPU epoch >= 10 x CPU.
Run: `make bench-train` (needs the bar cache filled: `stockcast ingest` or `make seed`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import onnxruntime as ort
import torch

import training.train as train_loop
from service.core.config import get_settings
from service.inference.onnx_model import CUDA, OnnxModel
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


def train_row(bars, config: TrainConfig, device: str, label: str, fill: bool = False,
              heap: bool = True, keep: bool = False) -> tuple[dict, object]:
    """One training run's steady epochs, in a fresh process (its own malloc and torch state).

    `fill`: torch's NaN fill of new tensors on; `heap`: glibc malloc keeps the large tensors
    on its heap (training.allocator); `keep`: also return the TrainResult (else None).
    """
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(_train_row, bars, config, device, label, fill, heap, keep).result()


def _train_row(bars, config: TrainConfig, device: str, label: str, fill: bool, heap: bool,
               keep: bool) -> tuple[dict, object]:
    train_loop.FILL_UNINITIALIZED_MEMORY = fill
    train_loop.HEAP_ALLOCATIONS = heap
    # Patience above the epoch count: every epoch runs, none is cut by early stopping.
    result = fit(config.with_(device=device, early_stopping_patience=config.epochs + 1), bars)
    seconds = [h["seconds"] for h in result.history]
    cpu_seconds = [h["cpu_seconds"] for h in result.history]
    # The first epoch carries one-off costs (allocator warm-up, CUDA init); report the rest.
    per_epoch = statistics.median(seconds[1:] or seconds)
    cpu_per_epoch = statistics.median(cpu_seconds[1:] or cpu_seconds)
    return {
        "label": label,
        "samples": len(result.prepared.train),
        "epoch_s": per_epoch,
        "samples_per_s": len(result.prepared.train) / per_epoch,
        "cpu_s": cpu_per_epoch,
        "samples_per_cpu_s": len(result.prepared.train) / cpu_per_epoch,
        "val_loss": result.history[-1]["val_loss"],
        "weights": result.weights_sha256[:12],
        # The process's peak resident memory (KiB on Linux): what keeping freed memory costs.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }, (result if keep else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="the second CPU row's threads (the first has 1)")
    parser.add_argument("--single-repeat", type=int, default=300)
    parser.add_argument("--batch-repeat", type=int, default=30)
    args = parser.parse_args()

    config = TrainConfig(epochs=args.epochs, progress=False, threads=1)
    bars = read_training_bars(get_settings().database_url, config)
    rows, result = [], None
    for threads in sorted({1, args.threads}):
        cpu = config.with_(threads=threads)
        name = f"cpu, {threads} thread(s)"
        baseline, _ = train_row(bars, cpu, "cpu", f"{name}, baseline: NaN fill, glibc defaults",
                                fill=True, heap=False)
        no_fill, _ = train_row(bars, cpu, "cpu", f"{name}, no NaN fill, glibc defaults",
                               heap=False)
        row, trained = train_row(bars, cpu, "cpu", f"{name}, no NaN fill, heap allocations",
                                 keep=result is None)
        for r in (no_fill, row):
            r["x_baseline"] = r["samples_per_s"] / baseline["samples_per_s"]
            r["x_baseline_cpu"] = r["samples_per_cpu_s"] / baseline["samples_per_cpu_s"]
        rows += [baseline, no_fill, row]
        result = result or trained
    cpu_row = rows[-1]
    if torch.cuda.is_available():
        row, _ = train_row(bars, config.with_(threads=args.threads), "cuda",
                           f"cuda + AMP ({torch.cuda.get_device_name(0)})")
        row["x_cpu"] = row["samples_per_s"] / cpu_row["samples_per_s"]
        rows.append(row)
    else:
        print("no CUDA device: the CUDA + AMP epoch time is not measured")

    print(f"\nTraining: default universe ({len(config.tickers)} tickers), window "
          f"{config.window}, H {config.horizon}, batch {config.batch_size}, median of epochs "
          f"2..{args.epochs}; 1-min load average {os.getloadavg()[0]:.1f}")
    print("(CPU seconds: the process's user + system time; with 1 thread they measure the work "
          "whatever else the machine runs)")
    print("| run | train samples | s / epoch | samples / s | x baseline | CPU s / epoch | "
          "samples / CPU s | x baseline (CPU) | peak RSS MiB | last val loss | weights sha256 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        ratio = r.get("x_baseline", r.get("x_cpu"))
        ratio = f"{ratio:.2f}" + (" (x cpu)" if "x_cpu" in r else "") if ratio else "-"
        cpu_ratio = f"{r['x_baseline_cpu']:.2f}" if "x_baseline_cpu" in r else "-"
        print(f"| {r['label']} | {r['samples']} | {r['epoch_s']:.1f} | "
              f"{r['samples_per_s']:.0f} | {ratio} | {r['cpu_s']:.1f} | "
              f"{r['samples_per_cpu_s']:.0f} | {cpu_ratio} | {r['peak_rss_mib']:.0f} | "
              f"{r['val_loss']:.5f} | "
              f"{r['weights']} |")

    with tempfile.TemporaryDirectory() as tmp:
        artifact = export_artifact(result.model, result.prepared, result.record, Path(tmp))
        sessions = {"cpu": OnnxModel.load(artifact, provider="cpu",
                                          intra_op_threads=args.threads)}
        if CUDA in ort.get_available_providers():
            sessions["cuda"] = OnnxModel.load(artifact, provider="cuda")
        else:
            print("\nonnxruntime sees no CUDA provider: onnxruntime-gpu latency is not measured")
        eager = ExportedForecaster.of(result.model.cpu(), result.prepared).eval()
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

            torch_ms = median_ms(run_torch, repeat)
            ort_ms = {name: median_ms(lambda m=m, w=windows, i=ids: m.run(w, i), repeat)
                      for name, m in sessions.items()}
            table.append((batch, torch_ms, ort_ms))

    names = list(sessions)
    print(f"\nInference latency ({args.threads} CPU thread(s), median ms); onnxruntime "
          "active providers: " + "; ".join(
              f"{n}: {','.join(m.active_providers)}" for n, m in sessions.items()))
    print("| windows | torch eager (cpu) | " + " | ".join(f"onnxruntime {n}" for n in names)
          + " | ort cpu / torch |")
    print("|---:|---:|" + "---:|" * len(names) + "---:|")
    for batch, torch_ms, ort_ms in table:
        print(f"| {batch} | {torch_ms:.2f} | " + " | ".join(f"{ort_ms[n]:.2f}" for n in names)
              + f" | {ort_ms['cpu'] / torch_ms:.2f} |")


if __name__ == "__main__":
    main()
