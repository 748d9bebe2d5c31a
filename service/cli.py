"""The `stockcast` command line. Training commands import torch lazily: serving never does."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from service.core.config import LOG_LEVELS, get_settings, setting_errors

if TYPE_CHECKING:
    from sqlalchemy import Engine

# ctx.meta's key: whether the command line asks for help (_HelpFirst), read by the callback.
HELP_ASKED = "stockcast.help_asked"


class _HelpFirst(TyperGroup):
    """The app's group, noting in ctx.meta whether the words after the command ask for help
    (a help option before any `--`, or a group given no command: no_args_is_help). Click runs
    the app's callback before the command parses its own words, so the callback would check
    the settings, and fail, before `--help` could answer."""

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        words = rest[:rest.index("--")] if "--" in rest else rest
        ctx.meta[HELP_ASKED] = (any(w in ctx.help_option_names for w in words)
                                or (getattr(command, "no_args_is_help", False)
                                    and hasattr(command, "commands") and not rest))
        return name, command, rest


app = typer.Typer(cls=_HelpFirst,
                  help="stockcast: stock forecasts from an ONNX model over a bar cache.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _fail(message: str, code: int = 1):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _first_line(exc: BaseException | None) -> str:
    lines = str(exc).strip().splitlines() if exc is not None else []
    return lines[0] if lines else type(exc).__name__


@contextmanager
def _database_errors(engine: Engine | None = None) -> Iterator[None]:
    """A database the command cannot use, said in one line and exit 1 instead of a traceback:
    a missing table names the revision and `stockcast db upgrade` (read on `engine`, else on
    one made for it), a database that does not answer the driver's error, a URL SQLAlchemy
    cannot read says so (the API answers the same cases 503). Any other database error (a
    statement's own: a bug) propagates."""
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    from service.db.health import (
        current_revision,
        head_revision,
        is_database_fault,
        is_missing_schema,
    )
    from service.db.session import make_engine

    url = get_settings().database_url
    try:
        yield
    except (ArgumentError, NoSuchModuleError) as exc:
        _fail(f"STOCKCAST_DATABASE_URL {url!r} is no database URL SQLAlchemy can use: {exc}")
    except DBAPIError as exc:
        why = f"{type(exc.orig).__name__}: {_first_line(exc.orig)}"
        if is_missing_schema(exc):
            reader = engine if engine is not None else make_engine(url)
            try:
                at = current_revision(reader)
            except DBAPIError:
                at = None
            finally:
                if engine is None:
                    reader.dispose()
            _fail(f"the database is not migrated (at {at or 'no revision'}, the head is "
                  f"{head_revision()}): run `stockcast db upgrade` ({why})")
        if is_database_fault(exc):
            _fail(f"the database did not answer: {why}")
        raise


@contextmanager
def _engine() -> Iterator[Engine]:
    """The configured database's engine, disposed (its pool closed) when the command ends; a
    database it cannot use is one line (_database_errors)."""
    from service.db.session import make_engine

    with _database_errors():
        engine = make_engine(get_settings().database_url)
    try:
        with _database_errors(engine):
            yield engine
    finally:
        engine.dispose()


def _parse_tickers(raw: str | None) -> list[str]:
    """A --tickers list, normalized; one given empty (`--tickers ''`) or with a name that is no
    symbol is an error, said in one line (every command parses before its own error handling)."""
    from service.core.errors import InvalidTicker
    from service.core.tickers import normalize_ticker

    try:
        names = [normalize_ticker(t) for t in (raw or "").replace(" ", ",").split(",") if t]
    except InvalidTicker as exc:
        _fail(str(exc))
    if raw is not None and not names:
        _fail("--tickers is empty: give a comma list of symbols")
    return names


def _read_config(config: Path):
    """A TrainConfig JSON file, or one line saying why it is none."""
    import json

    from training.config import TrainConfig

    try:
        values = json.loads(config.read_text())
        if not isinstance(values, dict):
            raise TypeError(f"a TrainConfig is a JSON object, got {type(values).__name__}")
        return TrainConfig.from_dict(values)
    except (OSError, ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        _fail(f"--config {config}: {exc}")


def _check_universe(universe: str | None) -> None:
    """Fail on a universe name no command knows (the one message every command gives)."""
    from service.forecasting.spec import ALL_CACHED, UNIVERSES

    if universe is not None and universe != ALL_CACHED and universe not in UNIVERSES:
        _fail(f"unknown universe {universe!r}; known: {sorted([*UNIVERSES, ALL_CACHED])}")


def _universe_tickers(universe: str) -> tuple[str, ...]:
    """A named universe's tickers; `all` (ALL_CACHED): every ticker in the bar cache, by symbol."""
    from service.forecasting.spec import ALL_CACHED, UNIVERSES

    _check_universe(universe)
    if universe == ALL_CACHED:
        from service.db.bars import list_tickers

        with _engine() as engine, engine.connect() as conn:
            names = tuple(t.symbol for t in list_tickers(conn))
        if not names:
            _fail(f"--universe {ALL_CACHED}: the bar cache holds no ticker; "
                  "load them first (stockcast seed / ingest)")
        return names
    return UNIVERSES[universe]


def _settings():
    """The settings, or one line per bad STOCKCAST_* value and exit 1 (as a database URL that
    is none) instead of pydantic's traceback."""
    from pydantic import ValidationError

    try:
        return get_settings()
    except ValidationError as exc:
        for line in setting_errors(exc):
            typer.echo(line, err=True)
        raise typer.Exit(1) from None


@app.callback()
def main(ctx: typer.Context,
         log_level: Annotated[str | None, typer.Option(help="Logging level.")] = None):
    # Every command's settings, checked before it starts (serve: before uvicorn); help is
    # answered whatever the environment (no command runs).
    if ctx.meta.get(HELP_ASKED):
        return
    settings = _settings()
    if log_level is not None and log_level.upper() not in LOG_LEVELS:
        _fail(f"--log-level {log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(level=(log_level or settings.log_level).upper(),
                        format="%(levelname)s %(name)s: %(message)s")


@contextmanager
def _revision_errors() -> Iterator[None]:
    """A revision Alembic cannot migrate to, said in one line instead of its traceback: one it
    does not know names this code's head."""
    from alembic.script.revision import ResolutionError
    from alembic.util import CommandError

    from service.db.health import head_revision

    try:
        yield
    except CommandError as exc:
        if isinstance(exc.__cause__, ResolutionError):
            _fail(f"unknown revision {exc.__cause__.argument!r} (head is {head_revision()})")
        _fail(_first_line(exc))


@db_app.command("upgrade")
def db_upgrade(revision: str = "head"):
    """Migrate the configured database up to REVISION (default head)."""
    from service.db.session import upgrade

    with _database_errors(), _revision_errors():
        upgrade(get_settings().database_url, revision)
    typer.echo(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str):
    """Migrate the configured database down to REVISION ("base" empties it)."""
    from service.db.session import downgrade

    with _database_errors(), _revision_errors():
        downgrade(get_settings().database_url, revision)
    typer.echo(f"database at {revision}")


@app.command()
def ingest(
    source: Annotated[str, typer.Option(help="csv (a file) or yfinance (the network).")] = "csv",
    path: Annotated[Path | None, typer.Option(help="CSV/Parquet file (gzip ok).")] = None,
    ticker: Annotated[str | None, typer.Option(help="Ticker of a single-ticker file.")] = None,
    tickers: Annotated[str | None, typer.Option(help="Comma list, for yfinance.")] = None,
    start: Annotated[dt.datetime | None, typer.Option(formats=["%Y-%m-%d"])] = None,
    end: Annotated[dt.datetime | None, typer.Option(formats=["%Y-%m-%d"])] = None,
    progress: bool = True,
):
    """Load bars into the cache and print `read N, stored M, rejected K (reasons)`."""
    from service.core.errors import StockcastError
    from service.evaluation.feature_store import after_bars_written
    from service.forecasting.calendar import check_date_range
    from service.sources.base import SOURCES, make_source
    from service.sources.ingest import ingest_file, ingest_from_source

    with _engine() as engine:
        try:
            if source == "csv":
                if path is None:
                    _fail("--path is required with --source csv")
                if not path.exists():
                    _fail(f"no such file: {path}")
                if path.is_dir():
                    _fail(f"{path} is a directory: give a CSV or Parquet file")
                report = ingest_file(engine, path, ticker=ticker, progress=progress,
                                     after_write=after_bars_written)
            elif source in SOURCES:
                try:
                    check_date_range(start and start.date(), end and end.date())
                except ValueError as exc:
                    _fail(str(exc))
                if not (tickers or ticker):
                    _fail(f"--tickers is required with --source {source}")
                settings = get_settings().model_copy(update={"source": source})
                report = ingest_from_source(
                    engine, make_source(settings), _parse_tickers(tickers or ticker),
                    start.date() if start else None, end.date() if end else None,
                    progress=progress, after_write=after_bars_written)
            else:
                _fail(f"unknown source {source!r}: use csv or one of {', '.join(SOURCES)}")
        except StockcastError as exc:
            _fail(str(exc))
    typer.echo(report.summary())
    for line in report.example_lines():
        typer.echo(line)


@app.command()
def refresh(
    universe: Annotated[str | None, typer.Option(
        help="A named universe, e.g. top24; all = every cached ticker (as --all).")] = None,
    all_tickers: Annotated[bool, typer.Option("--all", help="Every cached ticker.")] = False,
    tickers: Annotated[str | None, typer.Option(help="Comma list.")] = None,
    chunk: Annotated[int, typer.Option(help="Tickers per upstream call.", min=1)] = 50,
    prewarm: Annotated[bool, typer.Option(
        help="Then fill the serving stores (features, band states) for the current model.")
    ] = True,
    progress: bool = True,
):
    """Fetch newer bars for many tickers, batched upstream; prints the per-outcome counts, then
    prewarms the serving stores so each ticker's next cold forecast is one row read, no model run."""
    from service.evaluation.feature_store import after_bars_written
    from service.forecasting.spec import ALL_CACHED, UNIVERSES
    from service.sources.ingest import refresh_tickers

    if sum((universe is not None, all_tickers, tickers is not None)) != 1:
        _fail("give exactly one of --universe NAME, --all or --tickers LIST")
    _check_universe(universe)
    if universe == ALL_CACHED:
        universe, all_tickers = None, True
    names = None if all_tickers else (
        list(UNIVERSES[universe]) if universe else _parse_tickers(tickers))
    with _engine() as engine:
        report = refresh_tickers(engine, get_settings(), names, chunk=chunk, progress=progress,
                                 after_write=after_bars_written)
        typer.echo(report.summary())
        if prewarm:
            typer.echo(_prewarm(engine, names))
    if report.counts()["failed"]:
        raise typer.Exit(1)


def _prewarm(engine, tickers: list[str] | None) -> str:
    """Prewarm the current model's serving stores; a line saying what it did (or why not)."""
    from service.core.errors import StockcastError
    from service.evaluation.schedule import prewarm_current

    try:
        return prewarm_current(engine, get_settings(), tickers).summary()
    except StockcastError as exc:  # no model to prewarm for: the refresh itself stands
        return f"no prewarm: {exc}"


@app.command()
def schedule(
    universe: Annotated[str, typer.Option(
        help="The universe the daily cycle covers (all: the tickers cached at start).")] = "top24",
    once: Annotated[bool, typer.Option(help="Run what is due now, then exit.")] = False,
    poll_seconds: Annotated[float, typer.Option(help="Seconds between checks.", min=1)] = 300,
    retrain_every_days: Annotated[int, typer.Option(
        help="Retrain -> backtest -> gate once per this many days; 0 = never.", min=0)] = 30,
):
    """Run the daily cycle after each NYSE close (refresh, score the ledger, record the
    universe's forecasts) and the periodic retrain; each job once per key, one scheduler at a
    time (advisory lock)."""
    from service.evaluation.schedule import run_due, run_forever

    settings = get_settings()
    tickers = list(_universe_tickers(universe))

    def retrain() -> str:
        from training.retrain import retrain as retrain_universe  # torch: only when due

        return retrain_universe(settings, tickers)

    job = retrain if retrain_every_days else None
    with _engine() as engine:
        if once:
            for o in run_due(engine, settings, tickers, job, dt.datetime.now(dt.UTC),
                             max(1, retrain_every_days)):
                typer.echo(f"{o.job} {o.key}: {o.status} {o.detail}")
            return
        run_forever(engine, settings, tickers, job, poll_seconds=poll_seconds,
                    retrain_every_days=max(1, retrain_every_days))


SHARED_DATASET_NAME = "sp500_daily_2012_2017.csv.gz"


def seed_dataset_path() -> Path | None:
    """The offline bars to seed from: the shared dataset, else bokeh-sampledata's stocks."""
    shared = get_settings().data_dir / SHARED_DATASET_NAME
    if shared.exists():
        return shared
    try:
        from importlib.resources import files

        candidate = files("bokeh_sampledata") / "_data" / "stocks.csv.gz"
    except ModuleNotFoundError:
        return None
    return Path(str(candidate)) if candidate.is_file() else None


@app.command()
def seed(force: bool = typer.Option(False, help="Ingest even if bars are already cached.")):
    """Fill an empty cache from offline real bars (shared dataset or bokeh-sampledata), and
    store the served model's own backtest (models/<version>/backtest.json) if none is stored."""
    from service.db.bars import count_bars
    from service.evaluation.artifact_backtest import store_current_report
    from service.evaluation.feature_store import after_bars_written
    from service.sources.ingest import ingest_file

    with _engine() as engine:
        existing = count_bars(engine)
        if existing and not force:
            typer.echo(f"cache already holds {existing} bars; nothing to seed")
        else:
            path = seed_dataset_path()
            if path is None:
                _fail(f"no offline bars found: expected "
                      f"{get_settings().data_dir / SHARED_DATASET_NAME} "
                      "or the bokeh-sampledata package (pip install bokeh-sampledata)")
            typer.echo(f"seeding the bar cache from {path}")
            typer.echo(ingest_file(engine, path, progress=True,
                                   after_write=after_bars_written).summary())
        typer.echo(store_current_report(engine, get_settings().model_dir))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (one model session each).")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
):
    """Serve the API with uvicorn: the current model, the configured database and source."""
    import os

    import uvicorn

    if workers < 1:
        _fail(f"--workers must be >= 1, got {workers}")
    if workers > 1 and "STOCKCAST_ORT_INTRA_OP_THREADS" not in os.environ:
        # Workers share the CPUs (the container's limit, if any): each session gets its slice.
        from service.core.config import available_cpus

        os.environ["STOCKCAST_ORT_INTRA_OP_THREADS"] = str(max(1, available_cpus() // workers))
    with _engine():  # a database URL it cannot use: one line here, not a lifespan traceback
        pass
    # A factory: each worker process builds its own app (engine, model session) from the env.
    uvicorn.run("service.api.main:create_app", factory=True, host=host, port=port,
                workers=workers, access_log=access_log,
                log_level=get_settings().log_level.lower())


@app.command("tickers")
def list_cached_tickers():
    """List cached tickers with their stored date range and last refresh outcome."""
    from service.db.bars import list_tickers

    with _engine() as engine, engine.connect() as conn:
        for t in list_tickers(conn):
            typer.echo(f"{t.symbol:<10} {t.first_bar_date} .. {t.last_bar_date}  "
                       f"{t.last_refresh_status or '-'}")


@app.command()
def train(
    tickers: Annotated[str | None, typer.Option(help="Comma list (beats --universe).")] = None,
    universe: Annotated[str, typer.Option(
        help="Named ticker universe: top24, or all (every cached ticker).")] = "top24",
    start: Annotated[dt.datetime | None, typer.Option(formats=["%Y-%m-%d"])] = None,
    end: Annotated[dt.datetime | None, typer.Option(formats=["%Y-%m-%d"])] = None,
    epochs: Annotated[int | None, typer.Option(help="Max epochs (early stopping).", min=1)] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    train_stride: Annotated[int | None, typer.Option(help="Every k-th train origin.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    members: Annotated[int | None, typer.Option(
        help="Seed ensemble: N networks (seeds seed..seed+N-1) averaged in one ONNX graph.",
        min=1)] = None,
    config: Annotated[Path | None, typer.Option(help="TrainConfig JSON; options win.")] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Artifacts folder.")] = None,
    gate: Annotated[bool, typer.Option(
        "--promote/--no-promote",
        help="Backtest the new version on its test segment (stored, as `stockcast backtest`) "
             "and let the gate point models/current at it (as `stockcast promote`).")] = True,
    max_rel_mae: Annotated[float, typer.Option(
        help="The gate: highest pooled 1-day MAE relative to naive that may be promoted.")] = 1.0,
    coverage_tolerance: Annotated[float, typer.Option(
        help="The gate: largest |80% band coverage - 0.80| at h=1 and h=5.")] = 0.05,
    max_interval_ratio: Annotated[float, typer.Option(
        help="The gate: highest 1-day interval score / the EWMA+ACI band's.")] = 1.0,
    band_source: Annotated[str | None, typer.Option(
        help="Band served around the median: model (its quantiles + ACI) or ewma.")] = None,
    plots_dir: Annotated[Path | None, typer.Option(
        help="Where the gate backtest's PNGs go "
             "(default: <model dir>/runs/<database key>/run-<id>).")] = None,
    progress: bool = True,
):
    """Train the LSTM + ticker-embedding model on cached bars and export models/<version>/.

    Then (--promote, the default) backtest the new version on its test segment, store the run
    and call the gate: models/current moves to it only if it passes; a refusal says by how much
    it lost and exits 1. --no-promote exports only. Runs under `torchrun --nproc_per_node=K -m
    service.cli train ...` too
    (DistributedDataParallel; rank 0 exports and gates).
    """

    # torch is imported here only: `import service.cli` must not load it.
    from training.config import TrainConfig
    from training.pipeline import train_and_gate
    from training.train import TrainingDiverged

    base = _read_config(config) if config else TrainConfig()
    changes: dict = {"progress": progress}
    if tickers:
        changes["tickers"] = tuple(_parse_tickers(tickers))
    elif config is None or universe != "top24":
        changes["tickers"] = _universe_tickers(universe)
    for name, value in (("epochs", epochs), ("device", device), ("batch_size", batch_size),
                        ("train_stride", train_stride), ("threads", threads), ("seed", seed),
                        ("band_source", band_source), ("members", members)):
        if value is not None:
            changes[name] = value
    if start:
        changes["start"] = start.date()
    if end:
        changes["end"] = end.date()
    try:
        train_config = base.with_(**changes)
        settings = get_settings()
        from service.evaluation.promotion import GateThresholds

        thresholds = GateThresholds(max_rel_mae, coverage_tolerance, max_interval_ratio)
        with _database_errors():
            outcome = train_and_gate(
                train_config, settings.database_url, model_dir or settings.model_dir,
                gate=gate, thresholds=thresholds, plots_dir=plots_dir,
                provider=settings.ort_provider, intra_op_threads=settings.ort_intra_op_threads)
    except (ValueError, TrainingDiverged) as exc:
        _fail(str(exc))
    if outcome is None:  # a rank other than 0
        return
    artifact, meta = outcome.artifact, outcome.meta
    one_day = meta["metrics"]["horizons"]["1"]
    members = meta["training"].get("members")
    if members:  # a seed ensemble: each member's own best epoch
        typer.echo(f"artifact {artifact}  (seed ensemble of {len(members)}: best epochs "
                   + ", ".join(f"{m['best_epoch']} of {m['epochs_run']} (seed {m['seed']})"
                               for m in members) + ")")
    else:
        typer.echo(f"artifact {artifact}  (best epoch {meta['training']['best_epoch']} "
                   f"of {meta['training']['epochs_run']})")
    typer.echo(f"val 1-day MAE {one_day['mae_median']:.5f} "
               f"vs naive {one_day['mae_naive_zero']:.5f} "
               f"(rel {one_day['rel_mae_vs_naive']:.3f}), "
               f"10-90% coverage {one_day['coverage']:.2f}")
    if not gate:
        typer.echo(f"not promoted (--no-promote): models/current unchanged; gate it with "
                   f"`stockcast backtest --version {artifact.name}`, then "
                   f"`stockcast promote {artifact.name}`")
        return
    typer.echo("")
    if outcome.backtest is not None:
        _echo_backtest(outcome.backtest)
    if outcome.refused is not None:
        _fail(str(outcome.refused))
    typer.echo(f"promoted {outcome.verdict.describe()}")


@app.command()
def backtest(
    tickers: Annotated[str | None, typer.Option(help="Comma list (beats --universe).")] = None,
    universe: Annotated[str | None, typer.Option(
        help="Named ticker universe, e.g. top24, or all (as --all) (default: the model's "
             "training tickers).")] = None,
    all_tickers: Annotated[bool, typer.Option(
        "--all", help="Every cached ticker (tickers the model never saw use its unseen id).")
    ] = False,
    start: Annotated[dt.datetime | None, typer.Option(
        formats=["%Y-%m-%d"], help="First origin (default: the model's test segment).")] = None,
    end: Annotated[dt.datetime | None, typer.Option(formats=["%Y-%m-%d"])] = None,
    horizons: Annotated[str, typer.Option(help="Comma list, in trading days.")] = "1,5,30",
    baselines: Annotated[str | None, typer.Option(help="Comma list (default: all).")] = None,
    version: Annotated[str | None, typer.Option(help="Model version (default current).")] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Artifacts folder.")] = None,
    plots_dir: Annotated[Path | None, typer.Option(
        help="Where the PNGs go (default: <model dir>/runs/<database key>/run-<id>).")] = None,
    readme: Annotated[bool, typer.Option(
        help="Print the README's form of the table (fewer columns, methods by title).")] = False,
    workers: Annotated[int, typer.Option(
        help="Processes forecasting chunks of tickers (1: this one; >1: onnxruntime on one "
             "thread each).", min=1)] = 1,
):
    """Walk-forward backtest of the model vs baselines: store it, print the table, write plots."""
    from importlib.util import find_spec

    # The runtime image leaves the backtest extra out; say so instead of a ModuleNotFoundError.
    if not all(find_spec(name) for name in ("statsmodels", "matplotlib")):
        _fail("stockcast backtest needs the backtest extra (statsmodels, matplotlib): "
              "pip install 'stockcast[backtest]'; in Docker, the train image has it")

    from service.artifacts.manifest import artifact_path, resolve_current
    from service.core.errors import StockcastError
    from service.evaluation.runs import backtest_and_store
    from service.forecasting.baselines import BASELINES
    from service.forecasting.spec import ALL_CACHED, UNIVERSES

    settings = get_settings()
    model_dir = model_dir or settings.model_dir
    _check_universe(universe)
    if all_tickers and (tickers or universe):
        _fail("give at most one of --all, --universe NAME or --tickers LIST")
    if universe == ALL_CACHED and not tickers:
        universe, all_tickers = None, True
    try:
        wanted_h = [int(h) for h in horizons.replace(" ", "").split(",") if h]
    except ValueError:
        _fail(f"--horizons must be a comma list of integers, got {horizons!r}")
    wanted_b = [b for b in (baselines or ",".join(BASELINES)).replace(" ", "").split(",") if b]
    names = _parse_tickers(tickers) if tickers else list(UNIVERSES[universe]) if universe else None
    try:
        artifact_dir = (artifact_path(model_dir, version) if version
                        else resolve_current(model_dir))
        with _engine() as engine:
            run = backtest_and_store(
                engine, artifact_dir, tickers=names, every_ticker=all_tickers,
                start=start.date() if start else None,
                end=end.date() if end else None, horizons=wanted_h, baselines=wanted_b,
                plots_dir=plots_dir, provider=settings.ort_provider,
                intra_op_threads=settings.ort_intra_op_threads, workers=workers)
    except (StockcastError, ValueError) as exc:
        _fail(str(exc))
    _echo_backtest(run, readme=readme)


def _echo_backtest(run, readme: bool = False) -> None:
    """What `stockcast backtest` prints about a stored run (evaluation.runs.StoredBacktest)."""
    from service.evaluation.report import README_COLUMNS, band_table, summary_table

    result = run.result
    if result.config["in_sample_origins"]:
        typer.echo(f"warning: origins before {result.config['test_segment'][0]} were seen in "
                   "training; those forecasts are in-sample", err=True)
    typer.echo(f"backtest run {run.run_id}: model {result.model_version}, "
               f"{len(result.tickers)} tickers, origins {result.start} .. {result.end}, horizons "
               f"{','.join(map(str, result.horizons))}")
    for ticker, why in result.skipped.items():
        typer.echo(f"skipped {ticker}: {why}")
    typer.echo("")
    typer.echo(summary_table(run.stored, columns=README_COLUMNS, readme=True) if readme
               else summary_table(run.stored))
    typer.echo("")
    if "served_band" in result.config:  # a run with band methods (not a rolling evaluation)
        typer.echo(f"bands (served: {result.config['served_band']}; DM p IS = Diebold-Mariano "
                   "of the 80% interval score vs ewma_aci):")
        typer.echo(band_table(run.stored, readme=readme))
        typer.echo("")
    if 1 in result.horizons:
        typer.echo(f"naive next-day $ deviation (mean |close_t+1 - close_t|, adjusted moves): "
                   f"${result.value('mae', 'naive', 1):.3f}; model ${result.value('mae'):.3f}")
    sec = result.seconds
    typer.echo(f"wall time {run.seconds['wall']:.2f}s (load {run.seconds['load']:.2f}s, "
               f"model {sec['model']:.2f}s, baselines {sec['baselines']:.2f}s, "
               f"metrics {sec['metrics']:.2f}s)")
    typer.echo("plots: " + ", ".join(str(p) for p in run.plots))
    if run.report is not None:
        typer.echo(f"report: {run.report}" + ("" if run.report_written else
                   " (unchanged: it already holds these figures)"))


@app.command()
def evaluate(
    tickers: Annotated[str | None, typer.Option(help="Comma list (beats --universe).")] = None,
    universe: Annotated[str, typer.Option(
        help="Named ticker universe: top24, or all (every cached ticker).")] = "top24",
    start: Annotated[dt.datetime, typer.Option(
        formats=["%Y-%m-%d"], help="First origin of the rolling period.")] = "2015-01-02",
    end: Annotated[dt.datetime, typer.Option(
        formats=["%Y-%m-%d"], help="Last origin of the rolling period.")] = "2017-12-05",
    retrain_every: Annotated[int, typer.Option(help="Sessions per block (one model each).")] = 126,
    window: Annotated[str, typer.Option(help="expanding or sliding training window.")] = (
        "expanding"),
    sliding_sessions: Annotated[int, typer.Option(help="Sessions of a sliding window.")] = 756,
    epochs: Annotated[int | None, typer.Option(help="Max epochs per block model.", min=1)] = None,
    features: Annotated[str | None, typer.Option(
        help="Feature set (ablation): returns, indicators, +market, returns+market "
             "(default: the config's).")] = None,
    horizons: Annotated[str, typer.Option(help="Comma list, in trading days.")] = "1,5,30",
    baselines: Annotated[str | None, typer.Option(help="Comma list (default: all).")] = None,
    top_k: Annotated[int, typer.Option(help="Long the top k, short the bottom k, daily.")] = 5,
    cost_bp: Annotated[float, typer.Option(help="Trading cost, basis points per side.")] = 5.0,
    target: Annotated[str | None, typer.Option(
        help="What the network learns: return, or cs_demeaned (minus the date's "
             "cross-sectional mean; a ranking-only option).")] = None,
    ablation: Annotated[str | None, typer.Option(
        help="Comma list of arms, each a feature set, optionally :<target> (e.g. "
             "returns:cs_demeaned): one rolling run each, the arm chosen on the validation "
             "blocks, all reported on the test blocks.")] = None,
    incumbent: Annotated[str, typer.Option(
        help="With --ablation: the arm kept unless another beats it on validation.")] = (
        "indicators"),
    validation_blocks: Annotated[int, typer.Option(
        help="With --ablation: the first N blocks choose; the rest are test.")] = 2,
    band_baselines: Annotated[str, typer.Option(
        help="Band baselines scored beside the served band (comma list; ewma, empirical).")] = (
        "ewma"),
    workers: Annotated[int, typer.Option(help="Blocks trained in parallel (processes).")] = 1,
    cluster: Annotated[str | None, typer.Option(
        help="Dask scheduler address (tcp://host:8786): blocks train there, not here.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads per block.")] = None,
    members: Annotated[int | None, typer.Option(
        help="Seed ensemble per block: N networks (seeds seed..seed+N-1) averaged in one ONNX "
             "graph.", min=1)] = None,
    config: Annotated[Path | None, typer.Option(help="TrainConfig JSON; options win.")] = None,
    model_dir: Annotated[Path | None, typer.Option(
        help="Where block models and their cache go (default: var/rolling).")] = None,
    plots_dir: Annotated[Path | None, typer.Option(
        help="Where the PNGs go (default: var/evaluations/run-<id>).")] = None,
    progress: bool = True,
):
    """Rolling walk-forward: retrain every N sessions, forecast each block out of sample, store.

    Each block's model trains on bars strictly before the block (with the usual gap) and is
    cached by the content hash of its config and bars, so a rerun resumes. The stitched run is
    stored as the latest backtest (GET /metrics/backtest), with a per-block breakdown, HAC
    t-statistics and a costed top-k/bottom-k portfolio beside buy-and-hold and 1-day reversal.
    """

    from service.core.config import PROJECT_ROOT
    from service.core.errors import StockcastError
    from service.forecasting.baselines import BASELINES
    from service.forecasting.spec import FEATURE_SETS
    from training.config import TrainConfig
    from training.rolling import RollingSpec, evaluate_ablation, evaluate_rolling
    from training.train import TrainingDiverged

    base = _read_config(config) if config else TrainConfig()
    names = tuple(_parse_tickers(tickers)) if tickers else _universe_tickers(universe)
    changes: dict = {"tickers": names, "progress": progress}
    if features is not None:
        if features not in FEATURE_SETS:
            _fail(f"unknown feature set {features!r}; known: {sorted(FEATURE_SETS)}")
        changes["features"] = FEATURE_SETS[features]
    for name, value in (("epochs", epochs), ("threads", threads), ("target", target),
                        ("members", members)):
        if value is not None:
            changes[name] = value
    try:
        wanted_h = tuple(int(h) for h in horizons.replace(" ", "").split(",") if h)
    except ValueError:
        _fail(f"--horizons must be a comma list of integers, got {horizons!r}")
    wanted_b = tuple(b for b in (baselines or ",".join(BASELINES)).replace(" ", "").split(",")
                     if b)
    settings = get_settings()
    try:
        with _database_errors():
            spec = RollingSpec(start=start.date(), end=end.date(), retrain_every=retrain_every,
                               window=window, sliding_sessions=sliding_sessions, horizons=wanted_h,
                               baselines=wanted_b,
                               band_baselines=tuple(b for b in band_baselines.replace(" ", "")
                                                    .split(",") if b),
                               top_k=top_k, cost_bp=cost_bp, workers=workers, cluster=cluster)
            model_dir = model_dir or PROJECT_ROOT / "var" / "rolling"
            if ablation:
                sets = tuple(x for x in ablation.replace(" ", "").split(",") if x)
                result = evaluate_ablation(base.with_(**changes), spec, sets, validation_blocks,
                                           settings.database_url, model_dir, incumbent=incumbent,
                                           plots_dir=plots_dir,
                                           provider=settings.ort_provider,
                                           intra_op_threads=settings.ort_intra_op_threads)
            else:
                run = evaluate_rolling(base.with_(**changes), spec, settings.database_url,
                                       model_dir, plots_dir=plots_dir, provider=settings.ort_provider,
                                       intra_op_threads=settings.ort_intra_op_threads)
    except (StockcastError, ValueError, TrainingDiverged) as exc:
        _fail(str(exc))
    if ablation:
        _echo_ablation(result, Path(model_dir) / "ablation.json")
        return
    _echo_backtest(run)
    _echo_rolling(run)


def _echo_ablation(result, path: Path) -> None:
    """Each feature set's run id, the ablation table, the choice and why; JSON beside."""
    import json

    for name, run in result.runs.items():
        typer.echo(f"{name}: stored as run {run.run_id} ({run.result.model_version})")
    typer.echo(f"validation blocks {list(result.validation_blocks)}, "
               f"test blocks {list(result.test_blocks)}\n")
    typer.echo(result.table())
    typer.echo(f"\nchosen on validation: {result.chosen} ({result.reason})")
    path.write_text(json.dumps(result.to_dict(), indent=1, default=str))
    typer.echo(f"written: {path}, {result.plot(path.with_suffix('.png'))}")


def _echo_rolling(run) -> None:
    """The rolling run's blocks and costed books (evaluation.rolling's stored figures)."""
    from service.evaluation.rolling import rolling_tables

    typer.echo("")
    typer.echo(rolling_tables(run.stored, run.result.config))


@app.command()
def reband(
    version: str,
    model_dir: Annotated[Path | None, typer.Option(help="Artifacts folder.")] = None,
    har: Annotated[bool, typer.Option(
        "--har/--no-har", help="Rescale the band by the range-based HAR volatility (fitted on "
        "the bar cache's bars of the training tickers up to the training end), ACI at "
        "calibration 500, β 1; --no-har: this code's default ACI settings.")] = True,
):
    """Re-export VERSION's weights with this code's band settings (chosen on the validation
    segment: the HAR-rescaled band, or with --no-har ACI + the volatility blend) as a new
    version; then backtest and promote it."""
    from service.artifacts.manifest import har_band_settings
    from service.artifacts.manifest import reband as reband_artifact
    from service.core.errors import StockcastError
    from service.forecasting.bands import ACI_SUFFIX, ACISettings
    from service.forecasting.forecaster import MODEL

    model_dir = model_dir or get_settings().model_dir
    try:
        from service.artifacts.manifest import artifact_path, load_manifest

        manifest = load_manifest(artifact_path(model_dir, version))
        served = manifest.band.get("served", f"{MODEL}{ACI_SUFFIX}")
        settings = ACISettings()
        if har:
            from service.db.bars import read_bars_many
            from service.evaluation.backtest import bars_by_ticker

            with _engine() as engine:
                bars = bars_by_ticker(read_bars_many(engine, list(manifest.tickers)))
            settings = har_band_settings(manifest, bars)
        target = reband_artifact(model_dir, version,
                                 {"served": served, "aci": settings.to_dict()})
    except (StockcastError, ValueError) as exc:
        _fail(str(exc))
    shown = {k: v for k, v in settings.to_dict().items() if k != "har"}
    typer.echo(f"artifact {target} (the weights of {version}, band {served} with {shown}"
               f"{' + HAR volatility' if har else ''}); models/current unchanged: run "
               f"`stockcast backtest --version {target.name}`, then "
               f"`stockcast promote {target.name}`")


@app.command()
def promote(
    version: str,
    max_rel_mae: Annotated[float, typer.Option(
        help="Highest pooled 1-day MAE relative to naive that may be promoted.")] = 1.0,
    coverage_tolerance: Annotated[float, typer.Option(
        help="Largest |80% band coverage - 0.80| allowed at h=1 and h=5.")] = 0.05,
    max_interval_ratio: Annotated[float, typer.Option(
        help="Highest 1-day interval score of the served band / the EWMA+ACI band's.")] = 1.0,
    model_dir: Annotated[Path | None, typer.Option(help="Artifacts folder.")] = None,
):
    """Point models/current at VERSION only if its stored backtest passes the gate."""
    from service.core.errors import StockcastError
    from service.evaluation.promotion import GateThresholds
    from service.evaluation.promotion import promote as promote_version

    try:
        thresholds = GateThresholds(max_rel_mae, coverage_tolerance, max_interval_ratio)
        with _engine() as engine:
            verdict = promote_version(engine, model_dir or get_settings().model_dir, version,
                                      max_rel_mae, thresholds)
    except (StockcastError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"promoted {verdict.describe()}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
