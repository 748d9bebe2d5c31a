"""`stockcast backtest` and `stockcast promote` end to end: real DB, tiny ONNX model, real files."""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from service.artifacts.manifest import load_manifest
from service.cli import app
from service.db.backtests import get_metrics, latest_run, store_run
from service.db.session import make_engine
from service.evaluation.promotion import PromotionRefused, evaluate_gate, promote
from service.evaluation.scoring import MODEL, NAIVE, POOLED

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def store_gate_metrics(url, manifest, model_mae, naive_mae=1.0, *, start=None,
                       tickers=None, config=None, coverage=(0.8, 0.8),
                       interval_scores=(0.04, 0.04)) -> int:
    """A stored run with pooled 1-day MAEs and the band metrics the gate reads (the served
    band's 80 % coverage at h = 1, 5; its and ewma_aci's 1-day interval score); by default what
    `stockcast backtest` would store: the test segment, every training ticker, out of sample."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            return store_run(
                conn, model_version=manifest.version, start=start or manifest.split.test[0],
                end=dt.date(2021, 5, 18), tickers=manifest.tickers if tickers is None else tickers,
                config={"in_sample_origins": False} if config is None else config,
                metrics=[(POOLED, 1, MODEL, "mae", model_mae),
                         (POOLED, 1, NAIVE, "mae", naive_mae),
                         (POOLED, 1, "model_aci", "coverage", coverage[0]),
                         (POOLED, 5, "model_aci", "coverage", coverage[1]),
                         (POOLED, 1, "model_aci", "interval_score", interval_scores[0]),
                         (POOLED, 1, "ewma_aci", "interval_score", interval_scores[1])])
    finally:
        engine.dispose()


def test_backtest_command_stores_prints_and_plots(cli_env, tmp_path, tiny_artifact):
    url = cli_env.url
    plots = tmp_path / "plots"
    out = CliRunner().invoke(app, ["backtest", "--tickers", "AAA,BBB,CCC", "--horizons", "1,5",
                                   "--plots-dir", str(plots)])
    assert out.exit_code == 0, out.output
    version = tiny_artifact.artifact_dir.name
    engine = make_engine(url)
    with engine.connect() as conn:
        run = latest_run(conn, version)
        stored = get_metrics(conn, run.id, ticker=POOLED, horizon=1, metric="mae")
    engine.dispose()
    assert f"backtest run {run.id}: model {version}, 3 tickers" in out.output
    assert "| h | method | MAE ($) | rel MAE | DirAcc |" in out.output
    model_mae = stored.set_index("method").loc[MODEL, "value"]
    assert f"| 1 | model | {model_mae:.3f} |" in out.output
    assert "wall time" in out.output
    written = sorted(p.name for p in plots.iterdir())
    assert written == ["band_coverage_h1.png", "band_reliability.png", "equity_h1.png",
                       "equity_h5.png", "predicted_vs_actual_h1.png"]
    assert all((plots / name).read_bytes()[:8] == PNG_MAGIC for name in written)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--horizons", "1,x"], "error: --horizons must be a comma list of integers, got '1,x'"),
        (["--horizons", "30"], "error: horizons must lie in 1..5 (the model's horizon), got [30]"),
        (["--tickers", "AAA,QQQ"], "error: no cached bars for ['QQQ']: load them first"),
        (["--universe", "nasdaq"],
         "error: unknown universe 'nasdaq'; known: ['all', 'top24']"),
        (["--all", "--universe", "all"],
         "error: give at most one of --all, --universe NAME or --tickers LIST"),
        (["--version", "nope"], "error: no model artifact at"),
    ],
)
def test_backtest_command_refuses_bad_input(cli_env, args, message):
    out = CliRunner().invoke(app, ["backtest", *args])
    assert out.exit_code == 1
    assert message in out.output


def test_promote_refuses_a_model_worse_than_naive_and_says_by_how_much(cli_env, tiny_artifact):
    url, model_dir = cli_env.url, cli_env.model_dir
    version = tiny_artifact.artifact_dir.name
    (model_dir / "current").write_text("previous\n")
    run_id = store_gate_metrics(url, load_manifest(model_dir / version), model_mae=1.05)
    out = CliRunner().invoke(app, ["promote", version])
    assert out.exit_code == 1
    assert out.output.strip() == (
        f"error: refused: {version}: 1-day MAE $1.0500 vs naive $1.0000 (rel MAE 1.0500, "
        f"loses to naive by 5.00%; threshold 1.0000, backtest run {run_id}); model_aci band: "
        "80% coverage 0.800 at h=1, 0.800 at h=5 (allowed 0.80 ± 0.05), 1-day interval score "
        "0.04000 vs ewma_aci 0.04000 (ratio 1.0000, allowed 1.0000); rel MAE exceeds the "
        "threshold by 0.0500. current still names previous"
    )
    assert (model_dir / "current").read_text() == "previous\n"
    # a looser gate lets the same backtest through
    out = CliRunner().invoke(app, ["promote", version, "--max-rel-mae", "1.1"])
    assert out.exit_code == 0, out.output
    assert (model_dir / "current").read_text().strip() == version


def test_promote_accepts_a_model_that_beats_naive_using_the_latest_run(cli_env, tiny_artifact):
    url, model_dir = cli_env.url, cli_env.model_dir
    version = tiny_artifact.artifact_dir.name
    (model_dir / "current").write_text("previous\n")
    manifest = load_manifest(model_dir / version)
    store_gate_metrics(url, manifest, model_mae=1.2)
    later = store_gate_metrics(url, manifest, model_mae=0.9)
    engine = make_engine(url)
    verdict = promote(engine, model_dir, version)
    engine.dispose()
    assert verdict.run_id == later
    assert verdict.rel_mae == pytest.approx(0.9)
    assert verdict.passed
    assert (model_dir / "current").read_text().strip() == version
    assert "beats naive by 10.00%" in verdict.describe()


def test_promote_refuses_without_a_stored_backtest_or_an_artifact(cli_env, tiny_artifact):
    url, model_dir = cli_env.url, cli_env.model_dir
    version = tiny_artifact.artifact_dir.name
    engine = make_engine(url)
    manifest = load_manifest(model_dir / version)
    with pytest.raises(PromotionRefused) as exc:
        evaluate_gate(engine, manifest)
    assert str(exc.value) == (f"no stored backtest for model {version}: run "
                              f"`stockcast backtest --version {version}` first")
    out = CliRunner().invoke(app, ["promote", "missing"])
    assert out.exit_code == 1
    assert f"error: no model artifact at {model_dir / 'missing'}" in out.output
    with pytest.raises(ValueError, match="max_rel_mae must be positive, got 0"):
        evaluate_gate(engine, manifest, max_rel_mae=0)
    engine.dispose()


def backtest_then_promote(version, *backtest_args):
    """`stockcast backtest --version V ARGS` (stored), then `stockcast promote V` with a gate
    every model passes on MAE and bands (so only the run's origins and tickers can refuse it)."""
    out = CliRunner().invoke(app, ["backtest", "--version", version, "--horizons", "1,5",
                                   *backtest_args])
    assert out.exit_code == 0, out.output
    return CliRunner().invoke(app, ["promote", version, "--max-rel-mae", "100",
                                    "--coverage-tolerance", "1", "--max-interval-ratio", "100"])


def test_promote_refuses_a_miscalibrated_band_and_names_each_condition(cli_env, tiny_artifact):
    url, model_dir = cli_env.url, cli_env.model_dir
    version = tiny_artifact.artifact_dir.name
    (model_dir / "current").write_text("previous\n")
    manifest = load_manifest(model_dir / version)
    # Beats naive, but its band covers 0.70 next day and 0.86 at a week, and scores 8 % worse.
    run_id = store_gate_metrics(url, manifest, model_mae=0.99, coverage=(0.70, 0.86),
                                interval_scores=(0.054, 0.05))
    with make_engine_disposed(url) as engine, pytest.raises(PromotionRefused) as exc:
        promote(engine, model_dir, version)
    message = str(exc.value)
    assert message.startswith(f"refused: {version}: 1-day MAE $0.9900 vs naive $1.0000")
    assert f"backtest run {run_id}" in message
    assert message.endswith(
        "; 1-day coverage 0.700 is 0.050 outside 0.80 ± 0.05; 5-day coverage 0.860 is 0.010 "
        "outside 0.80 ± 0.05; 1-day interval score is 1.0800x ewma_aci's, 0.0800 above the "
        "allowed 1.0000x. current still names previous")
    assert (model_dir / "current").read_text() == "previous\n"
    # Each threshold is configurable: looser ones let the same run through.
    out = CliRunner().invoke(app, ["promote", version, "--coverage-tolerance", "0.11",
                                   "--max-interval-ratio", "1.1"])
    assert out.exit_code == 0, out.output
    assert (model_dir / "current").read_text().strip() == version


def test_promote_refuses_a_run_without_band_metrics(cli_env, tiny_artifact):
    url, model_dir = cli_env.url, cli_env.model_dir
    version = tiny_artifact.artifact_dir.name
    manifest = load_manifest(model_dir / version)
    engine = make_engine(url)
    with engine.begin() as conn:
        run_id = store_run(conn, model_version=version, start=manifest.split.test[0],
                           end=dt.date(2021, 5, 18), tickers=manifest.tickers,
                           config={"in_sample_origins": False},
                           metrics=[(POOLED, 1, MODEL, "mae", 0.9), (POOLED, 1, NAIVE, "mae", 1.0)])
    with pytest.raises(PromotionRefused) as exc:
        promote(engine, model_dir, version)
    engine.dispose()
    assert str(exc.value).startswith(
        f"backtest run {run_id} of {version} lacks the band metrics the gate reads "
        "(coverage of model_aci at h=1, coverage of model_aci at h=5, interval_score of "
        "model_aci at h=1, interval_score of ewma_aci at h=1)")


def test_promote_refuses_an_in_sample_backtest(cli_env, tiny_artifact, tmp_path):
    url, model_dir = cli_env.url, cli_env.model_dir
    version = tiny_artifact.artifact_dir.name
    (model_dir / "current").write_text("previous\n")
    test_first = load_manifest(model_dir / version).split.test[0]  # 2021-03-31
    out = backtest_then_promote(version, "--start", "2021-01-04", "--plots-dir",
                                str(tmp_path / "plots"))
    run_id = latest_run_id(url, version)
    assert out.exit_code == 1
    assert out.output.strip() == (
        f"error: backtest run {run_id} of {version} is in-sample: its origins start 2021-01-04, "
        f"before the test segment ({test_first}), on dates the model was fitted on; run "
        f"`stockcast backtest --version {version}` (by default: the test segment, every "
        "training ticker)")
    assert (model_dir / "current").read_text() == "previous\n"
    # A stored run that starts early is in-sample even if its config does not say so.
    manifest = load_manifest(model_dir / version)
    early = store_gate_metrics(url, manifest, model_mae=0.5, start=dt.date(2021, 3, 30),
                               config={})
    with make_engine_disposed(url) as engine, pytest.raises(PromotionRefused) as exc:
        promote(engine, model_dir, version, max_rel_mae=100)
    assert str(exc.value).startswith(f"backtest run {early} of {version} is in-sample: its "
                                     "origins start 2021-03-30, before the test segment")
    # The default backtest (the test segment) is then accepted.
    out = backtest_then_promote(version, "--plots-dir", str(tmp_path / "plots2"))
    assert out.exit_code == 0, out.output
    assert (model_dir / "current").read_text().strip() == version


def test_promote_refuses_a_backtest_over_part_of_the_training_tickers(cli_env, tiny_artifact,
                                                                      tmp_path):
    url, model_dir = cli_env.url, cli_env.model_dir
    version = tiny_artifact.artifact_dir.name
    (model_dir / "current").write_text("previous\n")
    out = backtest_then_promote(version, "--tickers", "AAA", "--plots-dir",
                                str(tmp_path / "plots"))
    run_id = latest_run_id(url, version)
    assert out.exit_code == 1
    assert out.output.strip() == (
        f"error: backtest run {run_id} of {version} scores 1 of the model's 3 training tickers "
        f"(missing ['BBB', 'CCC']); run `stockcast backtest --version {version}` (by default: "
        "the test segment, every training ticker)")
    assert (model_dir / "current").read_text() == "previous\n"


def latest_run_id(url, version) -> int:
    with make_engine_disposed(url) as engine, engine.connect() as conn:
        return latest_run(conn, version).id


@contextmanager
def make_engine_disposed(url):
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def test_runs_of_two_databases_plot_into_their_own_folders(cli_env, monkeypatch, tmp_path,
                                                          tiny_artifact):
    from service.core.config import get_settings
    from service.evaluation.plots import database_key
    from tests.api_factories import store_bars

    other = f"sqlite:///{tmp_path / 'other.db'}"
    store_bars(other, tiny_artifact.bars, reset=True)
    args = ["backtest", "--tickers", "AAA", "--horizons", "1"]
    first = CliRunner().invoke(app, args)
    monkeypatch.setenv("STOCKCAST_DATABASE_URL", other)
    get_settings.cache_clear()
    second = CliRunner().invoke(app, args)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    runs = cli_env.model_dir / "runs"
    folders = sorted(str(p.relative_to(runs)) for p in runs.glob("*/run-*"))
    # Both databases' first run is run 1: two folders, one per database.
    assert folders == sorted([f"{database_key(cli_env.url)}/run-1",
                              f"{database_key(other)}/run-1"])
    # predicted vs actual and equity at h=1, the bands' rolling coverage and reliability
    assert all(len(list((runs / f).iterdir())) == 4 for f in folders)
    assert database_key("postgresql://u:secret@h/a") == database_key("postgresql://u:other@h/a")
    assert database_key("postgresql://u@h/a") != database_key("postgresql://u@h/b")


@pytest.mark.parametrize("version", ["../models", "/etc", "a/b"])
def test_backtest_and_promote_refuse_a_version_outside_the_model_directory(cli_env, version):
    for command in (["backtest", "--version", version], ["promote", version]):
        out = CliRunner().invoke(app, command)
        assert out.exit_code == 1
        assert "is not a model version" in out.output


def test_reband_command_writes_the_codes_band_as_a_new_version(cli_env, tiny_artifact):
    from service.artifacts.manifest import reband
    from service.forecasting.bands import BASELINE_ACI, ACISettings

    # A copy of the tiny model with plain ACI (as artifacts before the blend were) ...
    plain = reband(cli_env.model_dir, tiny_artifact.artifact_dir.name,
                   {"served": "model_aci", "aci": BASELINE_ACI.to_dict()})
    out = CliRunner().invoke(app, ["reband", plain.name, "--no-har"])
    assert out.exit_code == 0, out.output
    # ... rebanded with the code's settings is the tiny model again (exported with them).
    assert f"artifact {cli_env.model_dir / tiny_artifact.artifact_dir.name} " in out.output
    assert f"`stockcast promote {tiny_artifact.artifact_dir.name}`" in out.output
    assert load_manifest(cli_env.model_dir / tiny_artifact.artifact_dir.name).band["aci"] == (
        ACISettings().to_dict())
    assert CliRunner().invoke(app, ["reband", "nope"]).exit_code == 1


def test_reband_command_with_har_fits_it_on_the_training_tickers_bars(cli_env, tiny_artifact):
    from service.artifacts.manifest import har_band_settings
    from service.db.bars import read_bars_many
    from service.db.session import make_engine
    from service.evaluation.backtest import bars_by_ticker
    from service.forecasting.bands import ACISettings

    version = tiny_artifact.artifact_dir.name
    out = CliRunner().invoke(app, ["reband", version])  # --har is the default
    assert out.exit_code == 0, out.output
    target = out.output.split("artifact ", 1)[1].split(" ", 1)[0]
    manifest = load_manifest(target)
    assert manifest.version != version and "+ HAR volatility" in out.output
    settings = ACISettings.from_dict(manifest.band["aci"])
    assert (settings.calibration, settings.vol_beta) == (500, 1.0)
    assert settings.har is not None and settings.har.horizon == manifest.spec.horizon
    engine = make_engine(cli_env.url)
    try:
        bars = bars_by_ticker(read_bars_many(engine))
    finally:
        engine.dispose()
    # The training tickers' bars only, up to the training end: the same fit from the cache.
    assert settings == har_band_settings(load_manifest(tiny_artifact.artifact_dir), bars)
    # models/current is left alone.
    from service.artifacts.manifest import resolve_current

    assert resolve_current(cli_env.model_dir).name == version


def test_backtest_universe_all_is_every_cached_ticker_as_all_is(cli_env, tiny_artifact,
                                                                 tmp_path):
    # One spelling for every command (train and evaluate take --universe all too); DDD is
    # cached but not one of the model's training tickers, so only "every cached" scores it.
    from tests.api_factories import store_bars

    bars = tiny_artifact.bars
    store_bars(cli_env.url, bars[bars["ticker"] == "AAA"].assign(ticker="DDD"))
    outs = [CliRunner().invoke(app, ["backtest", *args, "--horizons", "1", "--plots-dir",
                                     str(tmp_path / str(i))])
            for i, args in enumerate((["--universe", "all"], ["--all"], []))]
    for out in outs:
        assert out.exit_code == 0, out.output
    heads = [next(line for line in out.output.splitlines() if line.startswith("backtest run"))
             .split(":", 1)[1] for out in outs]
    assert heads[0] == heads[1]  # the same model and tickers
    assert " 4 tickers" in heads[0] and " 3 tickers" in heads[2], heads
