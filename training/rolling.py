"""`stockcast evaluate`: rolling walk-forward with retraining, one model per block.

For each block of `retrain_every` sessions (service/evaluation/rolling.py plans them), the
training pipeline's `train_and_export` fits the usual model on the bars strictly before the
block (expanding from the first cached bar, or a sliding window of sessions), with the block as
the run's held-out test segment (`TrainConfig.holdout`: train/val end `window + horizon`
sessions before it, the usual gap). Each block's model is cached by the content hash of its
inputs (the training config and the exact bars it reads), so a rerun trains only what changed.
Blocks are independent: uncached ones train in a local process pool (`workers`) or as tasks on
a Dask cluster (`cluster`, a scheduler address; the artifacts come back as files). Then each
block is forecast out of sample through the serving Predictor and the blocks are stitched,
scored and stored as one backtest run (service/evaluation/rolling.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import multiprocessing
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from service.artifacts.manifest import META_FILE
from service.db.bars import read_bars_many
from service.db.session import make_engine
from service.evaluation.backtest import DEFAULT_HORIZONS, bars_by_ticker, check_methods
from service.evaluation.rolling import (
    DEFAULT_BAND_BASELINES,
    WINDOWS,
    Block,
    BlockRun,
    SegmentScore,
    ablation_table,
    band_method_names,
    bars_digest,
    choose_feature_set,
    forecast_block,
    plan_blocks,
    plot_ablation,
    score_segment,
    stitch_and_store,
    training_range,
)
from service.evaluation.runs import StoredBacktest
from service.forecasting import portfolio
from service.forecasting.baselines import BASELINES
from service.forecasting.calendar import check_date_range
from service.forecasting.features import needs_market
from service.forecasting.spec import FEATURE_SETS
from service.inference.onnx_model import Provider
from training.config import TARGETS, TrainConfig
from training.pipeline import train_and_export

log = logging.getLogger(__name__)

CACHE_DIR = "blocks"  # <model_dir>/blocks/<key>.json names the version trained for that key
# Config fields that change how a run looks, not what it learns: left out of a block's key.
_UNKEYED = ("progress",)
# Config fields added after block caches existed: left out of the key at these defaults, so the
# blocks cached before them (the same training) are still found.
_KEYED_UNLESS_DEFAULT = {"target": "return", "members": 1}
CLUSTER_CONNECT_TIMEOUT_S = 30


@dataclass(frozen=True)
class RollingSpec:
    """What to evaluate: the period, the retraining rhythm, the window, what to score."""

    start: dt.date
    end: dt.date
    retrain_every: int = 126  # sessions per block (half a year)
    window: str = "expanding"  # expanding | sliding
    sliding_sessions: int = 756  # bars per sliding training window (three years)
    horizons: tuple[int, ...] = DEFAULT_HORIZONS
    baselines: tuple[str, ...] = tuple(BASELINES)
    band_baselines: tuple[str, ...] = DEFAULT_BAND_BASELINES
    top_k: int = portfolio.DEFAULT_TOP_K
    cost_bp: float = portfolio.DEFAULT_COST_BP
    workers: int = 1
    cluster: str | None = None  # a Dask scheduler address: blocks train there, not locally

    def __post_init__(self):
        # Checked before any block trains: each was found only after every block had trained
        # (top_k: when the books were made), or as an IndexError (a sliding window of 0).
        check_date_range(self.start, self.end)
        if self.retrain_every < 1:
            raise ValueError(f"retrain_every must be >= 1 session, got {self.retrain_every}")
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
        if self.sliding_sessions < 1:
            raise ValueError(f"sliding_sessions must be >= 1 session, got {self.sliding_sessions}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not (math.isfinite(self.cost_bp) and self.cost_bp >= 0):
            raise ValueError(f"cost_bp must be a finite cost >= 0 basis points, got {self.cost_bp}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not self.horizons:
            raise ValueError("horizons must name at least one horizon")


@dataclass(frozen=True)
class BlockJob:
    """One block's training: its config (with the holdout), the bars it reads, its cache key."""

    block: Block
    config: TrainConfig
    bars: pd.DataFrame
    key: str


def block_key(config: TrainConfig, bars: pd.DataFrame) -> str:
    """Content hash of a block's inputs: the training config and the bars slice it trains on."""
    keyed = {k: v for k, v in config.to_dict().items()
             if k not in _UNKEYED and _KEYED_UNLESS_DEFAULT.get(k, object()) != v}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode())
    digest.update(bars_digest(bars).encode())
    return digest.hexdigest()[:16]


def cached_artifact(model_dir: Path, key: str) -> Path | None:
    """The artifact trained earlier for this key, if it is still there."""
    entry = Path(model_dir) / CACHE_DIR / f"{key}.json"
    if not entry.exists():
        return None
    artifact = Path(model_dir) / json.loads(entry.read_text())["version"]
    return artifact if (artifact / META_FILE).exists() else None


def _remember(model_dir: Path, key: str, artifact: Path, job: BlockJob) -> None:
    entry = Path(model_dir) / CACHE_DIR / f"{key}.json"
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text(json.dumps({"version": artifact.name, **job.block.to_dict(),
                                 "train": [job.config.start.isoformat(),
                                           job.config.end.isoformat()]}, indent=1))


def plan_jobs(config: TrainConfig, bars: pd.DataFrame, spec: RollingSpec) -> list[BlockJob]:
    """Each block's training job: bars strictly before it, the block as holdout."""
    dates = pd.DatetimeIndex(bars["date"])
    jobs = []
    for block in plan_blocks(dates, spec.start, spec.end, spec.retrain_every):
        first, last = training_range(block, dates.min().date(), spec.window,
                                     spec.sliding_sessions, dates)
        part = bars[(dates >= pd.Timestamp(first)) & (dates <= pd.Timestamp(last))]
        job_config = config.with_(start=first, end=last, holdout=(block.first, block.last))
        jobs.append(BlockJob(block, job_config, part.reset_index(drop=True),
                             block_key(job_config, part)))
    return jobs


def _train(job: BlockJob, model_dir: Path) -> Path:
    artifact = train_and_export(job.config, job.bars, model_dir)
    if artifact is None:  # only rank 0 exports; a pool worker is always rank 0
        raise RuntimeError(f"block {job.block.number}: no artifact was exported")
    return artifact


def _train_elsewhere(job: BlockJob) -> tuple[str, dict[str, bytes]]:
    """Train a block on a cluster worker: (artifact name, {file: bytes}), nothing shared on disk.

    A cluster's workers need not see this machine's model dir, so the artifact comes back as
    its files; the client writes them under its own model dir (the hash covers them).
    """
    with tempfile.TemporaryDirectory(prefix="stockcast-block-") as tmp:
        artifact = _train(job, Path(tmp))
        return artifact.name, {str(p.relative_to(artifact)): p.read_bytes()
                               for p in sorted(artifact.rglob("*")) if p.is_file()}


def _unpack(model_dir: Path, name: str, files: dict[str, bytes]) -> Path:
    artifact = Path(model_dir) / name
    for rel, data in files.items():
        (artifact / rel).parent.mkdir(parents=True, exist_ok=True)
        (artifact / rel).write_bytes(data)
    return artifact


def _train_on_cluster(todo: Sequence[BlockJob], model_dir: Path, address: str,
                      done) -> None:
    """Each block a task on the Dask cluster at `address`; `done(job, artifact)` as they end."""
    try:
        from distributed import Client, as_completed
    except ImportError as exc:  # the `cluster` extra
        raise ValueError("--cluster needs dask's distributed: pip install "
                           "'stockcast[cluster]'") from exc
    with Client(address, timeout=CLUSTER_CONNECT_TIMEOUT_S) as client:
        # pure=False: a block's key is ours (the content hash), not Dask's argument hash.
        futures = {client.submit(_train_elsewhere, job, key=f"block-{job.key}", pure=False): job
                   for job in todo}
        for future in as_completed(futures):
            name, files = future.result()
            done(futures[future], _unpack(model_dir, name, files))


def train_blocks(jobs: Sequence[BlockJob], model_dir: Path, workers: int = 1,
                 progress: bool = True,
                 cluster: str | None = None) -> dict[int, tuple[Path, bool]]:
    """{block number: (artifact, cached)}: cached models reused, the rest trained.

    Uncached blocks train one after another, in a local process pool (`workers` > 1), or as
    tasks on the Dask cluster at `cluster` (a scheduler address such as tcp://host:8786).
    """
    out: dict[int, tuple[Path, bool]] = {}
    todo = []
    for job in jobs:
        hit = cached_artifact(model_dir, job.key)
        if hit is not None:
            out[job.block.number] = (hit, True)
        else:
            todo.append(job)
    bar = tqdm(total=len(jobs), initial=len(out), desc="blocks trained", disable=not progress)

    def done(job: BlockJob, artifact: Path) -> None:
        out[job.block.number] = (artifact, False)
        _remember(model_dir, job.key, artifact, job)
        bar.update(1)

    if cluster and todo:
        _train_on_cluster(todo, model_dir, cluster, done)
    elif workers <= 1 or len(todo) <= 1:
        for job in todo:
            bar.set_postfix_str(f"block {job.block.number}: {job.block.first}..{job.block.last}")
            done(job, _train(job, model_dir))
    else:
        # spawn, not fork: torch's thread pools do not survive a fork.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)),
                                 mp_context=context) as pool:
            futures = {pool.submit(_train, job, model_dir): job for job in todo}
            for future, job in futures.items():
                done(job, future.result())
    bar.close()
    return out


def evaluate_rolling(config: TrainConfig, spec: RollingSpec, database_url: str,
                     model_dir: Path, *, plots_dir: Path | None = None,
                     provider: Provider = "auto", intra_op_threads: int = 1) -> StoredBacktest:
    """Train (or reuse) one model per block, forecast each block out of sample, store the run."""
    # What forecast_block would refuse, refused before any block trains.
    check_methods(spec.horizons, config.spec.horizon, spec.baselines, spec.band_baselines)
    engine = make_engine(database_url)
    try:
        # Session t's market return reads bars <= t of every cached ticker: causal, so a block
        # trains on the market of its own past only.
        bars = read_bars_many(engine, list(config.tickers), market=needs_market(config.spec))
        missing = sorted(set(config.tickers) - set(bars["ticker"].unique()))
        if missing:
            raise ValueError(f"no bars in the cache for {missing}: load them first "
                             "(stockcast ingest / seed)")
        progress = config.progress
        if spec.workers > 1 or spec.cluster:
            # The workers share the cores; one bar per block, not interleaved epoch bars.
            config = config.with_(threads=config.threads or 1, progress=False)
        jobs = plan_jobs(config, bars, spec)
        trained = train_blocks(jobs, model_dir, spec.workers, progress, spec.cluster)
        series = bars_by_ticker(bars)
        runs = []
        for job in tqdm(jobs, desc="blocks forecast", disable=not progress):
            artifact, cached = trained[job.block.number]
            made = forecast_block(job.block, artifact, series, horizons=spec.horizons,
                                  baselines=spec.baselines,
                                  band_baselines=spec.band_baselines, provider=provider,
                                  intra_op_threads=intra_op_threads, expected=config.spec)
            runs.append(BlockRun(job.block, artifact.name, (job.config.start, job.config.end),
                                 cached, made))
        run_config = {
            "baselines": [b for b in dict.fromkeys(("naive", *spec.baselines))],
            "band_methods": band_method_names(spec.band_baselines),
            "requested_start": spec.start.isoformat(), "requested_end": spec.end.isoformat(),
            "retrain_every": spec.retrain_every, "window": spec.window,
            "sliding_sessions": spec.sliding_sessions if spec.window == "sliding" else None,
            "workers": spec.workers,
            "cluster": bool(spec.cluster),
            "training": {k: v for k, v in config.to_dict().items()
                         if k not in ("tickers", "start", "end", "holdout")},
            "prices": "close_t * exp(log return of adj_close); actual uses the realized adj return",
            "point_forecast": "median (q=0.5)",
        }
        return stitch_and_store(engine, runs, config=run_config, top_k=spec.top_k,
                                cost_bp=spec.cost_bp, plots_dir=plots_dir)
    finally:
        engine.dispose()


@dataclass
class Ablation:
    """Each feature set's rolling run, its scores per segment, and the set chosen on validation."""

    runs: dict[str, StoredBacktest]
    scores: list[SegmentScore]
    chosen: str
    reason: str
    validation_blocks: tuple[int, ...]
    test_blocks: tuple[int, ...]

    def table(self) -> str:
        return ablation_table(self.scores, self.chosen)

    def plot(self, path: Path) -> Path:
        """Each set's rank IC per block, the validation/test boundary marked."""
        return plot_ablation({name: run.result.config["blocks"] for name, run in self.runs.items()},
                             len(self.validation_blocks), path)

    def to_dict(self) -> dict:
        return {
            "chosen": self.chosen, "reason": self.reason,
            "validation_blocks": list(self.validation_blocks),
            "test_blocks": list(self.test_blocks),
            "runs": {name: run.run_id for name, run in self.runs.items()},
            "scores": [{"features": s.name, "segment": s.segment, "blocks": list(s.blocks),
                        **{f"{method}/{h}/{metric}": s.value(metric, method, h)
                           for method, h, metric in sorted({(r.method, int(r.horizon), r.metric)
                                                            for r in s.metrics.itertuples()})}}
                       for s in self.scores],
        }


# An ablation arm: a feature set, optionally ":<target>" (TARGETS) and ":m<N>" (a seed
# ensemble of N members), e.g. returns:cs_demeaned:m3.
VARIANT_SEP = ":"
_MEMBERS_ARM = re.compile(r"m([1-9][0-9]*)")


def ablation_variant(name: str) -> dict:
    """The config changes of one ablation arm: `returns`, `returns:cs_demeaned` (a target),
    `returns:cs_demeaned:m3` (and a seed ensemble of 3)."""
    features, *options = name.split(VARIANT_SEP)
    if features not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {features!r}; known: {sorted(FEATURE_SETS)}")
    changes: dict = {"features": FEATURE_SETS[features]}
    for option in options:
        members = _MEMBERS_ARM.fullmatch(option)
        key = "members" if members else "target"
        if key in changes:
            raise ValueError(f"{name!r} names its {key} twice")
        if members:
            changes["members"] = int(members.group(1))
        elif option in TARGETS:
            changes["target"] = option
        else:
            raise ValueError(f"unknown target {option!r} in {name!r}; known: {list(TARGETS)} "
                             "(or m<N>, a seed ensemble of N)")
    return changes


def evaluate_ablation(config: TrainConfig, spec: RollingSpec, feature_sets: Sequence[str],
                      validation_blocks: int, database_url: str, model_dir: Path, *,
                      incumbent: str = "indicators", plots_dir: Path | None = None,
                      provider: Provider = "auto", intra_op_threads: int = 1) -> Ablation:
    """One rolling run per arm (a feature set, optionally with a target: ablation_variant; same
    blocks, same config otherwise); the arm is chosen on the first `validation_blocks` blocks
    only, and every arm is reported on the rest."""
    variants = {name: ablation_variant(name) for name in feature_sets}
    if incumbent not in feature_sets:
        raise ValueError(f"the incumbent set {incumbent!r} must be among {list(feature_sets)}")
    runs: dict[str, StoredBacktest] = {}
    for name, changes in variants.items():
        log.info("ablation: %s", name)
        folder = name.replace("+", "plus-").replace(VARIANT_SEP, "-")
        runs[name] = evaluate_rolling(
            config.with_(**changes), spec, database_url, model_dir,
            plots_dir=None if plots_dir is None else Path(plots_dir) / folder,
            provider=provider, intra_op_threads=intra_op_threads)
    numbers = [b["block"] for b in next(iter(runs.values())).result.config["blocks"]]
    # Every block validation is allowed: the choice first, the chosen arm's test blocks later.
    if not 1 <= validation_blocks <= len(numbers):
        raise ValueError(f"validation_blocks must be 1..{len(numbers)} of {len(numbers)} "
                         f"blocks, got {validation_blocks}")
    val, test = tuple(numbers[:validation_blocks]), tuple(numbers[validation_blocks:])
    segments = (("validation", val), ("test", test)) if test else (("validation", val),)
    scores = {(name, seg): score_segment(name, seg, run.result.forecasts, blocks, spec.top_k,
                                         spec.cost_bp)
              for name, run in runs.items() for seg, blocks in segments}
    chosen, reason = choose_feature_set(
        {name: scores[(name, "validation")] for name in runs}, incumbent)
    ordered = [scores[(name, seg)] for seg, _ in segments for name in runs]
    return Ablation(runs, ordered, chosen, reason, val, test)
