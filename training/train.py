"""The training loop, top to bottom: data from the bar cache, fit, validate, export on rank 0.

Runs as one process (`stockcast train`) or under `torchrun --nproc_per_node=K` with
DistributedDataParallel: gloo on CPU, nccl on GPU; each rank trains on its shard of every epoch,
evaluates the whole validation set (so early stopping decides identically everywhere), and
rank 0 alone writes the artifact.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from service.forecasting import metrics as m
from service.forecasting.spec import DEFAULT_LEVEL, band_indices
from training.allocator import heap_allocations
from training.config import TrainConfig
from training.dataset import PreparedData, WindowDataset, batches, prepare_data
from training.export import TrainingRecord
from training.model import ExportedForecaster, QuantileLSTM, pinball_loss

log = logging.getLogger(__name__)

EVAL_BATCH = 2048
# torch's NaN fill of new tensors in deterministic mode, off (see _setup); bench/train.py turns
# it on for its in-run baseline, the path before.
FILL_UNINITIALIZED_MEMORY = False
# glibc malloc keeps the run's large tensors on its heap while fit runs (training.allocator):
# the same values, ≈ 40% less CPU time per step. bench/train.py turns it off for its in-run
# baselines, the path before.
HEAP_ALLOCATIONS = True
# Horizons whose validation metrics the artifact reports (those beyond H are skipped).
REPORTED_HORIZONS = (1, 5, 30)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing is exported."""


@dataclass
class TrainResult:
    """A trained model (best validation epoch, on CPU) and what the artifact records about it."""

    model: QuantileLSTM
    prepared: PreparedData
    config: TrainConfig
    history: list[dict]
    best_epoch: int
    metrics: dict
    weights_sha256: str
    seconds: float
    rank: int = 0
    world_size: int = 1

    @property
    def record(self) -> TrainingRecord:
        """What the artifact records about this run."""
        return TrainingRecord(self.config.to_dict(), self.metrics, self.best_epoch, self.history,
                              self.weights_sha256, self.world_size, self.seconds)


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch sees no CUDA GPU")
    return torch.device(name)


def _init_distributed(device: torch.device) -> tuple[_Dist, torch.device]:
    """Join the process group torchrun describes in the environment (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Dist(), device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size()), device


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, in state_dict order (identical replicas agree)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class _Training:
    """What one training run holds while it runs (set up once by `_setup`)."""

    config: TrainConfig
    ctx: _Dist
    device: torch.device
    prepared: PreparedData
    model: QuantileLSTM
    net: torch.nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    grad_scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype
    quantiles: torch.Tensor
    train_set: WindowDataset
    val_set: WindowDataset
    sampler: DistributedSampler
    n_batches: int


class _EarlyStopping:
    """Keeps the best validation epoch's weights; says stop after `patience` epochs without."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_loss, self.best_epoch, self.best_state, self.waited = float("inf"), 0, None, 0

    def step(self, val_loss: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record one epoch; True when training should stop."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.waited = val_loss, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.waited += 1
        return self.waited >= self.patience


def fit(config: TrainConfig, bars_multi: pd.DataFrame) -> TrainResult:
    """Train on multi-ticker bars; returns the best-validation model (every rank returns)."""
    with heap_allocations(HEAP_ALLOCATIONS):
        return _fit(config, bars_multi)


def _fit(config: TrainConfig, bars_multi: pd.DataFrame) -> TrainResult:
    started = time.perf_counter()
    run = _setup(config, bars_multi)
    stopper = _EarlyStopping(config.early_stopping_patience)
    history: list[dict] = []
    for epoch in range(1, config.epochs + 1):
        epoch_started, epoch_cpu = time.perf_counter(), time.process_time()
        train_loss = _train_one_epoch(run, epoch)
        val_loss = evaluate(run.model, run.val_set, run.quantiles, run.device)
        if not np.isfinite(val_loss):
            raise TrainingDiverged(f"validation loss became {val_loss} at epoch {epoch}; "
                                   "nothing was exported")
        run.scheduler.step(val_loss)
        lr = run.optimizer.param_groups[0]["lr"]
        seconds = time.perf_counter() - epoch_started
        # CPU time beside wall time: on a shared machine the wall clock measures the others.
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                        "lr": lr, "seconds": seconds,
                        "cpu_seconds": time.process_time() - epoch_cpu})
        if run.ctx.is_main:
            line = (f"epoch {epoch:3d}/{config.epochs}  train {train_loss:.4f}  "
                    f"val {val_loss:.4f}  lr {lr:.2e}  {seconds:.1f}s")
            tqdm.write(line) if config.progress else log.info(line)
        if stopper.step(val_loss, epoch, run.model):
            if run.ctx.is_main:
                log.info("early stop at epoch %d: best val %.5f at epoch %d",
                         epoch, stopper.best_loss, stopper.best_epoch)
            break
    return _finish(run, stopper, history, started)


def _setup(config: TrainConfig, bars_multi: pd.DataFrame) -> _Training:
    """Device, process group, seeds, data, model, optimiser: everything before epoch 1."""
    device = resolve_device(config.device)
    ctx, device = _init_distributed(device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if device.type == "cpu":
        # Deterministic CPU runs: same seed, same data -> same weights.
        torch.use_deterministic_algorithms(True)
        # Deterministic mode also fills every new tensor with NaN (a guard against kernels
        # reading memory they never wrote): a third of an LSTM training step on CPU, and no
        # effect on any value computed (the weights are bit-identical without it).
        torch.utils.deterministic.fill_uninitialized_memory = FILL_UNINITIALIZED_MEMORY
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)

    prepared = prepare_data(bars_multi, config.spec, config.split_fractions, config.train_stride,
                            config.holdout, config.target)
    spec = prepared.spec
    model = QuantileLSTM(config.model_config(spec, len(prepared.vocab))).to(device)
    net: torch.nn.Module = model
    if ctx.active:
        # DDP broadcasts rank 0's initial weights and averages gradients every step.
        device_ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)
    # Dropout and ticker masking may differ per rank; gradients are averaged anyway.
    torch.manual_seed(config.seed + ctx.rank)

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience
    )
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    grad_scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    quantiles = torch.tensor(spec.quantiles, dtype=torch.float32, device=device)

    train_set, val_set = WindowDataset(prepared.train), WindowDataset(prepared.val)
    sampler = DistributedSampler(
        train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed
    )
    n_batches = -(-len(sampler) // config.batch_size)
    if ctx.is_main:
        log.info(
            "training on %d samples (%d tickers), validating on %d; "
            "%d batches/epoch x %d rank(s), %s",
            len(train_set), len(prepared.vocab) - 1, len(val_set), n_batches, ctx.world_size,
            device,
        )
    return _Training(config, ctx, device, prepared, model, net, optimizer, scheduler,
                     grad_scaler, use_amp, amp_dtype, quantiles, train_set, val_set, sampler,
                     n_batches)


def _train_one_epoch(run: _Training, epoch: int) -> float:
    """One pass over this rank's shard; the mean training loss over every rank."""
    config, device = run.config, run.device
    run.sampler.set_epoch(epoch)
    run.net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    bar = tqdm(total=run.n_batches, desc=f"epoch {epoch}/{config.epochs}", leave=False,
               disable=not (config.progress and run.ctx.is_main))
    for batch_no, (window, target, ticker_id) in enumerate(
        batches(run.train_set, run.sampler, config.batch_size), start=1
    ):
        window = window.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        ticker_id = ticker_id.to(device, non_blocking=True)
        if config.unknown_ticker_prob > 0:
            masked = torch.rand(ticker_id.shape, device=device) < config.unknown_ticker_prob
            ticker_id = ticker_id.masked_fill(masked, 0)
        with torch.autocast(device.type, dtype=run.amp_dtype, enabled=run.use_amp):
            pred = run.net(window, ticker_id)  # (B, W, F), (B,) -> (B, H, Q)
        loss = pinball_loss(pred.float(), target, run.quantiles)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"training loss became {loss.item()} at epoch {epoch}, batch {batch_no} "
                f"(learning_rate={config.learning_rate}); nothing was exported"
            )
        run.optimizer.zero_grad(set_to_none=True)
        run.grad_scaler.scale(loss).backward()
        run.grad_scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
        run.grad_scaler.step(run.optimizer)
        run.grad_scaler.update()
        loss_sum += loss.detach().double() * len(window)
        seen += len(window)
        bar.update(1)
        if batch_no % 10 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
    bar.close()

    totals = torch.tensor([loss_sum.item(), float(seen)], dtype=torch.float64, device=device)
    if run.ctx.active:
        dist.all_reduce(totals)
    return float(totals[0] / totals[1])


def _finish(run: _Training, stopper: _EarlyStopping, history: list[dict],
            started: float) -> TrainResult:
    """The best epoch's weights on CPU, replicas checked identical, validation metrics."""
    ctx = run.ctx
    model = run.model
    model.load_state_dict(stopper.best_state)
    model = model.cpu().eval()
    digest = weights_sha256(model)
    if ctx.active:
        digests = [None] * ctx.world_size
        dist.all_gather_object(digests, digest)
        print(f"rank {ctx.rank} weights sha256 {digest}", flush=True)
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP replicas diverged: weight digests {digests}")
        dist.barrier()
    metrics = validation_metrics(model, run.prepared)
    metrics["val_pinball_scaled"] = stopper.best_loss
    return TrainResult(model, run.prepared, run.config, history, stopper.best_epoch, metrics,
                       digest, time.perf_counter() - started, ctx.rank, ctx.world_size)


@torch.no_grad()
def evaluate(model: QuantileLSTM, dataset: WindowDataset, quantiles: torch.Tensor,
             device: torch.device) -> float:
    """Mean pinball loss (scaled-target units) over a whole dataset, dropout off."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for window, target, ticker_id in batches(dataset, None, EVAL_BATCH):
        pred = model(window.to(device), ticker_id.to(device)).float()
        total += pinball_loss(pred, target.to(device), quantiles).item() * len(window)
        count += len(window)
    model.train(was_training)
    return total / count


@torch.no_grad()
def predict_log_returns(model: QuantileLSTM, prepared: PreparedData,
                        which: str = "val") -> np.ndarray:
    """(N, H, Q) quantile log returns of a segment, through the exported graph's own module."""
    wrapper = ExportedForecaster.of(model.cpu(), prepared).eval()
    dataset = WindowDataset(getattr(prepared, which))
    outputs = [wrapper(w, t).numpy() for w, _, t in batches(dataset, None, EVAL_BATCH)]
    return np.concatenate(outputs).astype(np.float64)  # (N, H, Q)


def validation_metrics(model: QuantileLSTM, prepared: PreparedData) -> dict:
    """The model's validation forecasts scored by score_log_returns, in log-return units."""
    pred = predict_log_returns(model, prepared, "val")  # (N, H, Q)
    return score_log_returns(prepared.val.returns, pred, prepared.spec.quantiles)


def _finite_or_none(value: float) -> float | None:
    # meta.json is strict JSON: an undefined metric is null, not NaN.
    return value if np.isfinite(value) else None


def score_log_returns(actual: np.ndarray, pred: np.ndarray, quantiles) -> dict:
    """Pinball loss, and per reported horizon h the median vs the naive zero return.

    actual (N, H) realized log returns, pred (N, H, Q) quantile forecasts of them.
    pinball_q(y, y_q) = max(q (y - y_q), (q - 1)(y - y_q)), averaged over everything; per h,
    with the metrics module's definitions: MAE = mean |y_h - median_h|; naive = the random walk,
    predicting a zero return (MAE = mean |y_h|); rel = MAE / naive MAE (< 1 beats naive);
    DirAcc = share of sign(median) == sign(y) over pairs where neither is 0; coverage = share of
    y_h inside the 10-90% band [q_lo, q_hi]; width = mean(q_hi - q_lo).
    """
    q = np.asarray(quantiles, dtype=np.float64)
    error = actual[:, :, None] - pred
    pinball = np.maximum(q * error, (q - 1.0) * error).mean()
    mid = list(quantiles).index(0.5)
    lo, hi = band_indices(tuple(quantiles), DEFAULT_LEVEL)
    out: dict = {"val_samples": len(actual), "val_pinball_log_return": float(pinball),
                 "horizons": {}}
    for h in REPORTED_HORIZONS:
        if h > actual.shape[1]:
            continue
        y, p = actual[:, h - 1], pred[:, h - 1, :]
        zero = np.zeros_like(y)
        out["horizons"][str(h)] = {
            "mae_median": m.mae(y, p[:, mid]),
            "mae_naive_zero": m.mae(y, zero),
            "rel_mae_vs_naive": _finite_or_none(m.relative_mae(y, p[:, mid], zero)),
            "directional_accuracy": _finite_or_none(m.directional_accuracy(y, p[:, mid])),
            "coverage": m.interval_coverage(y, p[:, lo], p[:, hi]),
            "mean_interval_width": float((p[:, hi] - p[:, lo]).mean()),
        }
    one_day = out["horizons"]["1"]
    out["val_mae_1d"] = one_day["mae_median"]
    out["val_mae_1d_naive"] = one_day["mae_naive_zero"]
    out["beats_naive_1d"] = one_day["mae_median"] < one_day["mae_naive_zero"]
    return out
