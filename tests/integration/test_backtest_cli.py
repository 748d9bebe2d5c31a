"""`stockcast backtest` and `stockcast promote` end to end: real DB, tiny ONNX model, real files."""

from __future__ import annotations

import datetime as dt

import pytest
from typer.testing import CliRunner

from service.cli import app
from service.config import get_settings
from service.db.backtests import get_metrics, latest_run, store_run
from service.db.session import make_engine
from service.forecasting.backtest import MODEL, NAIVE, POOLED
from service.promotion import PromotionRefused, evaluate_gate, promote
from tests.api_factories import copy_models, store_bars

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def env(monkeypatch, tmp_path, tiny_artifact):
    """CLI settings: a fresh SQLite DB with the tiny bars, a models folder with the tiny model."""
    from service.db.session import reset_database

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    reset_database(url)
    store_bars(url, tiny_artifact.bars)
    model_dir = tmp_path / "models"
    copy_models(tiny_artifact.artifact_dir, model_dir)
    for name, value in (("DATABASE_URL", url), ("MODEL_DIR", str(model_dir)),
                        ("ORT_PROVIDER", "cpu"), ("ORT_INTRA_OP_THREADS", "1")):
        monkeypatch.setenv(f"STOCKCAST_{name}", value)
    get_settings.cache_clear()
    yield url, model_dir
    get_settings.cache_clear()


def store_gate_metrics(url, version, model_mae, naive_mae=1.0) -> int:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            return store_run(conn, model_version=version, start=dt.date(2021, 3, 31),
                             end=dt.date(2021, 5, 18), tickers=["AAA"], config={},
                             metrics=[(POOLED, 1, MODEL, "mae", model_mae),
                                      (POOLED, 1, NAIVE, "mae", naive_mae)])
    finally:
        engine.dispose()


def test_backtest_command_stores_prints_and_plots(env, tmp_path, tiny_artifact):
    url, _ = env
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
    assert written == ["equity_h1.png", "equity_h5.png", "predicted_vs_actual_h1.png"]
    assert all((plots / name).read_bytes()[:8] == PNG_MAGIC for name in written)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--horizons", "1,x"], "error: --horizons must be a comma list of integers, got '1,x'"),
        (["--horizons", "30"], "error: horizons must lie in 1..5 (the model's horizon), got [30]"),
        (["--tickers", "AAA,QQQ"], "error: no cached bars for ['QQQ']: load them first"),
        (["--universe", "nasdaq"], "error: unknown universe 'nasdaq'; known: ['top24']"),
        (["--version", "nope"], "error: no model artifact at"),
    ],
)
def test_backtest_command_refuses_bad_input(env, args, message):
    out = CliRunner().invoke(app, ["backtest", *args])
    assert out.exit_code == 1
    assert message in out.output


def test_promote_refuses_a_model_worse_than_naive_and_says_by_how_much(env, tiny_artifact):
    url, model_dir = env
    version = tiny_artifact.artifact_dir.name
    (model_dir / "current").write_text("previous\n")
    run_id = store_gate_metrics(url, version, model_mae=1.05)
    out = CliRunner().invoke(app, ["promote", version])
    assert out.exit_code == 1
    assert out.output.strip() == (
        f"error: refused: {version}: 1-day MAE $1.0500 vs naive $1.0000 (rel MAE 1.0500, "
        f"loses to naive by 5.00%; threshold 1.0000, backtest run {run_id}); it exceeds the "
        "threshold by 0.0500. current still names previous"
    )
    assert (model_dir / "current").read_text() == "previous\n"
    # a looser gate lets the same backtest through
    out = CliRunner().invoke(app, ["promote", version, "--max-rel-mae", "1.1"])
    assert out.exit_code == 0, out.output
    assert (model_dir / "current").read_text().strip() == version


def test_promote_accepts_a_model_that_beats_naive_using_the_latest_run(env, tiny_artifact):
    url, model_dir = env
    version = tiny_artifact.artifact_dir.name
    (model_dir / "current").write_text("previous\n")
    store_gate_metrics(url, version, model_mae=1.2)
    later = store_gate_metrics(url, version, model_mae=0.9)
    engine = make_engine(url)
    verdict = promote(engine, model_dir, version)
    engine.dispose()
    assert verdict.run_id == later
    assert verdict.rel_mae == pytest.approx(0.9)
    assert verdict.passed
    assert (model_dir / "current").read_text().strip() == version
    assert "beats naive by 10.00%" in verdict.describe()


def test_promote_refuses_without_a_stored_backtest_or_an_artifact(env, tiny_artifact):
    url, model_dir = env
    version = tiny_artifact.artifact_dir.name
    engine = make_engine(url)
    with pytest.raises(PromotionRefused) as exc:
        evaluate_gate(engine, version)
    assert str(exc.value) == (f"no stored backtest for model {version}: run "
                              f"`stockcast backtest --version {version}` first")
    out = CliRunner().invoke(app, ["promote", "missing"])
    assert out.exit_code == 1
    assert f"error: no model artifact at {model_dir / 'missing'}" in out.output
    with pytest.raises(ValueError, match="max_rel_mae must be positive, got 0"):
        evaluate_gate(engine, version, max_rel_mae=0)
    engine.dispose()
