"""A fresh start shows everything: the artifact carries its backtest, seeding stores it, and the
API serves it; the report never changes the model's version."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.api.main import create_app
from service.artifacts.manifest import artifact_version, load_manifest, resolve_current
from service.cli import app
from service.db.backtests import latest_run
from service.db.session import make_engine
from service.evaluation.artifact_backtest import REPORT_FILE, read_report, store_report
from tests.api_factories import api_settings, copy_models
from tests.e2e.conftest import SHIPPED_MODELS


@pytest.fixture
def seed_env(monkeypatch, tmp_path, shared_dataset):
    """Settings pointing at an empty SQLite file, the shipped models and a data folder holding
    three tickers of the shared dataset (a fresh clone's `make run`, in seconds)."""
    from service.core.config import get_settings

    if not (SHIPPED_MODELS / "current").is_file():
        pytest.skip("no shipped model")
    data = tmp_path / "data"
    data.mkdir()
    bars = pd.read_csv(shared_dataset)
    subset = bars[bars["ticker"].isin(["AAPL", "MSFT", "JPM"])]
    with gzip.open(data / shared_dataset.name, "wt") as f:
        subset.to_csv(f, index=False)
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    for name, value in (("DATABASE_URL", url), ("MODEL_DIR", str(SHIPPED_MODELS)),
                        ("DATA_DIR", str(data)), ("SOURCE", "none"), ("ORT_PROVIDER", "cpu")):
        monkeypatch.setenv(f"STOCKCAST_{name}", value)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_a_fresh_seeded_cache_serves_the_shipped_backtest(seed_env):
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    out = runner.invoke(app, ["seed"])
    assert out.exit_code == 0, out.output
    manifest = load_manifest(resolve_current(SHIPPED_MODELS))
    assert f"stored the backtest model {manifest.version} ships with as run 1" in out.output
    # Seeding again stores nothing twice.
    again = runner.invoke(app, ["seed"])
    assert f"model {manifest.version} already has a stored backtest (run 1)" in again.output

    report = read_report(manifest)
    shipped = {(t, h, method, metric): v for t, h, method, metric, v in report["metrics"]}
    client_app = create_app(api_settings(seed_env, SHIPPED_MODELS))
    with TestClient(client_app) as client:
        body = client.get("/metrics/backtest", params={"ticker": "*", "horizon": 1}).json()
    assert body["run"]["model_version"] == manifest.version
    assert body["run"]["start"] == report["run"]["start"]
    assert sorted(body["run"]["tickers"]) == sorted(manifest.tickers)
    model = next(r for r in body["metrics"] if r["method"] == "model")
    assert model["mae"] == shipped[("*", 1, "model", "mae")]
    assert model["rel_mae"] == shipped[("*", 1, "model", "rel_mae")] < 1.0


def test_the_report_is_outside_the_version_hash():
    """Adding backtest.json changed neither model.onnx, meta.json nor the version."""
    manifest = load_manifest(resolve_current(SHIPPED_MODELS))
    artifact = manifest.artifact_dir
    assert (artifact / REPORT_FILE).is_file()
    meta = json.loads((artifact / "meta.json").read_text())
    assert artifact_version((artifact / "model.onnx").read_bytes(), meta) == manifest.version


def test_a_report_of_another_model_is_never_stored(tmp_path, tiny_artifact, sqlite_url):
    from tests.api_factories import store_bars

    store_bars(sqlite_url, tiny_artifact.bars.head(0), reset=True)
    models = tmp_path / "models"
    target = copy_models(tiny_artifact.artifact_dir, models)
    shipped = resolve_current(SHIPPED_MODELS) / REPORT_FILE
    shutil.copy(shipped, target / REPORT_FILE)  # the shipped model's report, in another artifact
    manifest = load_manifest(target)
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn, pytest.raises(ValueError, match="measured model"):
            store_report(conn, manifest)
        with engine.connect() as conn:
            assert latest_run(conn) is None
    finally:
        engine.dispose()


def test_backtest_writes_the_report_only_for_a_run_the_gate_would_accept(cli_env, tmp_path):
    artifact = cli_env.model_dir / (cli_env.model_dir / "current").read_text().strip()
    runner = CliRunner()
    subset = runner.invoke(app, ["backtest", "--tickers", "AAA", "--horizons", "1",
                                 "--plots-dir", str(tmp_path / "p1")])
    assert subset.exit_code == 0, subset.output
    assert not (artifact / REPORT_FILE).exists()  # one of three training tickers: not the model's
    full = runner.invoke(app, ["backtest", "--horizons", "1,5", "--plots-dir",
                               str(tmp_path / "p2")])
    assert full.exit_code == 0, full.output
    assert f"report: {artifact / REPORT_FILE}" in full.output
    report = json.loads((artifact / REPORT_FILE).read_text())
    assert report["model_version"] == artifact.name
    assert dt.date.fromisoformat(report["run"]["start"]) >= load_manifest(artifact).split.test[0]


def test_a_rerun_with_the_same_figures_leaves_the_report_as_it_was(cli_env, tmp_path):
    # Only the timings and the run's creation time would differ: a tracked report stays
    # unchanged in git; a figure that moved is written (and shows in a diff).
    artifact = cli_env.model_dir / (cli_env.model_dir / "current").read_text().strip()
    path = artifact / REPORT_FILE
    runner = CliRunner()
    args = ["backtest", "--horizons", "1", "--plots-dir"]
    first = runner.invoke(app, [*args, str(tmp_path / "p1")])
    assert first.exit_code == 0, first.output
    assert f"report: {path}\n" in first.output
    written = path.read_bytes()
    again = runner.invoke(app, [*args, str(tmp_path / "p2")])
    assert again.exit_code == 0, again.output
    assert f"report: {path} (unchanged: it already holds these figures)" in again.output
    assert path.read_bytes() == written
    report = json.loads(written)
    # The same code on another CPU: the last bits of a figure differ, the measurement does not.
    row = next(r for r in report["metrics"] if r[-1])
    row[-1] *= 1 + 1e-9
    report["run"]["config"]["workers"] = 7  # how many processes ran it: no figure depends on it
    path.write_text(json.dumps(report))
    nudged = path.read_bytes()
    fourth = runner.invoke(app, [*args, str(tmp_path / "p4")])
    assert fourth.exit_code == 0, fourth.output
    assert "(unchanged: it already holds these figures)" in fourth.output
    assert path.read_bytes() == nudged
    report["metrics"][0][-1] = 123.0  # a figure that no longer matches the measurement
    path.write_text(json.dumps(report))
    third = runner.invoke(app, [*args, str(tmp_path / "p3")])
    assert third.exit_code == 0, third.output
    assert f"report: {path}\n" in third.output
    restored = json.loads(path.read_text())
    assert restored["metrics"] == json.loads(written)["metrics"]


@pytest.mark.parametrize("args, url, message", [
    (["tickers"], "sqlite:///{tmp}/never-migrated.db",
     "error: the database is not migrated (at no revision, the head is "),
    (["train", "--epochs", "1", "--no-promote"], "sqlite:///{tmp}/never-migrated.db",
     "error: the database is not migrated (at no revision, the head is "),
    (["tickers"], "postgresql://nobody@127.0.0.1:1/none",
     "error: the database did not answer: OperationalError: "),
    (["db", "upgrade"], "postgresql://nobody@127.0.0.1:1/none",
     "error: the database did not answer: OperationalError: "),
    (["tickers"], "bogus://x",
     "error: STOCKCAST_DATABASE_URL 'bogus://x' is no database URL SQLAlchemy can use: "),
    (["tickers"], "mysql://u@h/d",  # ModuleNotFoundError: MySQLdb
     ("error: STOCKCAST_DATABASE_URL 'mysql://u@h/d' is no database URL SQLAlchemy can use: "
      "its driver is not installed: No module named 'MySQLdb'")),
    (["tickers"], "sqlite:////dev/null/x.db",  # FileExistsError
     ("error: STOCKCAST_DATABASE_URL 'sqlite:////dev/null/x.db' is no database URL SQLAlchemy "
      "can use: cannot make the SQLite file's folder: [Errno 17] File exists: '/dev/null'")),
])
def test_a_command_on_a_database_it_cannot_use_says_why_in_one_line(args, url, message,
                                                                     monkeypatch, tmp_path):
    """Before `db upgrade`, on a database that is down or a URL that is none: one line and
    exit 1 (each was a traceback of 22-58 frames; found by a hostile test pass and review)."""
    from service.core.config import get_settings

    monkeypatch.setenv("STOCKCAST_DATABASE_URL", url.format(tmp=tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, args)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an error escaping
    assert message in result.output
    if "not migrated" in message:
        assert "run `stockcast db upgrade`" in result.output


@pytest.mark.parametrize("url", ["bogus://x", "mysql://u@h/d", "sqlite:////dev/null/x.db"])
def test_serve_on_a_database_url_it_cannot_use_says_why_before_uvicorn_starts(url, monkeypatch):
    """One line and exit 1, where uvicorn's lifespan failed with a traceback (found by a
    hostile ops pass)."""
    import uvicorn

    from service.core.config import get_settings

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn started"))
    monkeypatch.setenv("STOCKCAST_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["serve"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.output.startswith(f"error: STOCKCAST_DATABASE_URL {url!r} is no database URL "
                                    "SQLAlchemy can use: ")
    assert len(result.output.splitlines()) == 1
