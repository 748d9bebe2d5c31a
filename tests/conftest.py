"""Shared fixtures: a throwaway PostgreSQL database per session, a SQLite file per test,
the shared market dataset (skipped with a reason where ../shared is absent)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.core.config import PROJECT_ROOT

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get(
    "STOCKCAST_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SHARED_DATASET = PROJECT_ROOT.parent / "shared" / "data" / "sp500_daily_2012_2017.csv.gz"


def _skip_or_fail(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required here)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_dataset() -> Path:
    """Path of the shared S&P 500 dataset; skips where it is absent (fails under CI)."""
    if not SHARED_DATASET.exists():
        _skip_or_fail(f"shared dataset not found at {SHARED_DATASET}")
    return SHARED_DATASET


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """URL of a throwaway PostgreSQL database created for this test session and dropped after."""
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "no postgres here"
        admin.dispose()
        _skip_or_fail(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}")
    name = f"stockcast_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(
            sa.text(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where datname = :n and pid <> pg_backend_pid()"
            ),
            {"n": name},
        )
        conn.execute(sa.text(f'drop database if exists "{name}"'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A real SQLite file for one test."""
    return f"sqlite:///{tmp_path / 'stockcast.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    """Each backend in turn, migrated to head and empty."""
    from service.db.session import reset_database

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'stockcast.db'}"
    else:
        url = request.getfixturevalue("pg_server_url")
    reset_database(url)
    return url


@pytest.fixture
def engine(db_url):
    """An engine on `db_url` (each backend in turn, migrated and empty), disposed after."""
    from service.db.session import make_engine

    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    """A tiny LSTM trained once per session on synthetic bars, exported to a models folder."""
    from service.artifacts.manifest import set_current
    from tests.tiny_model import train_tiny_artifact

    tiny = train_tiny_artifact(tmp_path_factory.mktemp("models"))
    # Export leaves models/current alone (only the promotion gate sets it); the API tests serve
    # the tiny model as current.
    set_current(tiny.model_dir, tiny.artifact_dir.name)
    return tiny


@pytest.fixture(scope="session")
def tiny_predictor(tiny_artifact):
    """The serving Predictor over the tiny artifact (CPU onnxruntime)."""
    from service.inference.predictor import Predictor

    return Predictor.load(tiny_artifact.artifact_dir, "cpu")


@pytest.fixture(scope="session")
def tiny_two_sided_predictor(tiny_artifact, tmp_path_factory):
    """The tiny model's weights re-exported (`reband`, in a models folder of its own) with a
    two-sided ACI band, as `stockcast reband` would ship one: a Q̂ and an α run per tail."""
    import shutil

    from service.artifacts.manifest import reband
    from service.forecasting.bands import ACI_SUFFIX, ACISettings
    from service.forecasting.forecaster import MODEL
    from service.inference.predictor import Predictor

    model_dir = tmp_path_factory.mktemp("two_sided_models")
    source = model_dir / tiny_artifact.artifact_dir.name
    shutil.copytree(tiny_artifact.artifact_dir, source)
    target = reband(model_dir, source.name, {"served": f"{MODEL}{ACI_SUFFIX}",
                                             "aci": ACISettings(two_sided=True).to_dict()})
    return Predictor.load(target, "cpu")


@pytest.fixture(scope="session")
def tiny_backtest(tiny_artifact, tiny_predictor):
    """The walk-forward backtest of the tiny model over its own bars, horizons 1 and 5."""
    from service.evaluation.backtest import bars_by_ticker, run_backtest

    return run_backtest(tiny_predictor, bars_by_ticker(tiny_artifact.bars), horizons=(1, 5))


@dataclass(frozen=True)
class CliEnv:
    """Where a CLI test's settings point: a migrated SQLite DB and a models folder."""

    url: str
    model_dir: Path
    root: Path


@pytest.fixture
def cli_env(monkeypatch, tmp_path, tiny_artifact) -> CliEnv:
    """A migrated SQLite DB with the tiny bars, the tiny model; settings from the environment."""
    from service.core.config import get_settings
    from tests.api_factories import copy_models, store_bars

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store_bars(url, tiny_artifact.bars, reset=True)
    model_dir = tmp_path / "models"
    copy_models(tiny_artifact.artifact_dir, model_dir)
    for name, value in (("DATABASE_URL", url), ("MODEL_DIR", str(model_dir)),
                        ("ORT_PROVIDER", "cpu"), ("ORT_INTRA_OP_THREADS", "1")):
        monkeypatch.setenv(f"STOCKCAST_{name}", value)
    get_settings.cache_clear()
    yield CliEnv(url, model_dir, tmp_path)
    get_settings.cache_clear()
