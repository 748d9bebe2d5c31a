"""Engines are disposed (their pools closed): by the API lifespan even when startup fails after
the engine exists, and by every CLI command that opens one, on success and on failure."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from typer.testing import CliRunner

from service.api.main import create_app
from service.cli import app as cli
from service.db.session import reset_database
from tests.api_factories import api_settings
from tests.bar_factories import ScriptedSource


class EngineLog:
    """Every engine that opened a connection, and every engine disposed, while installed."""

    def __init__(self):
        self.connected: list[Engine] = []
        self.disposed: list[Engine] = []

    def on_connect(self, conn) -> None:
        if not any(e is conn.engine for e in self.connected):
            self.connected.append(conn.engine)

    def on_dispose(self, engine: Engine) -> None:
        self.disposed.append(engine)

    def left_open(self) -> list[Engine]:
        return [e for e in self.connected if not any(d is e for d in self.disposed)]


@pytest.fixture
def engines():
    log = EngineLog()
    # Listeners on the Engine class see every engine, including those made inside the code.
    event.listen(Engine, "engine_connect", log.on_connect)
    event.listen(Engine, "engine_disposed", log.on_dispose)
    yield log
    event.remove(Engine, "engine_connect", log.on_connect)
    event.remove(Engine, "engine_disposed", log.on_dispose)


def test_a_startup_failure_after_the_engine_exists_disposes_it(sqlite_url, tiny_artifact,
                                                               tmp_path, engines):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    # yfinance's cache folder cannot be created: the source fails after make_engine.
    settings = api_settings(sqlite_url, tiny_artifact.model_dir, source="yfinance",
                            yfinance_cache_dir=not_a_folder / "yfinance")
    with pytest.raises(OSError), TestClient(create_app(settings)):
        pass
    assert [str(e.url) for e in engines.disposed] == [sqlite_url]


def test_a_normal_shutdown_disposes_the_engine(sqlite_url, tiny_artifact, engines):
    reset_database(sqlite_url)
    engines.connected.clear()  # the migration's own engine
    app = create_app(api_settings(sqlite_url, tiny_artifact.model_dir), source=ScriptedSource())
    with TestClient(app) as client:
        assert client.get("/tickers").status_code == 200
        assert engines.connected and engines.left_open() == engines.connected
    assert engines.left_open() == []


def test_every_cli_command_disposes_the_engines_it_opens(cli_env, tiny_artifact, engines):
    csv = cli_env.root / "bars.csv"
    tiny_artifact.bars[tiny_artifact.bars["ticker"] == "AAA"].to_csv(csv, index=False)
    # (arguments, exit code, whether it connects: a missing artifact fails before any query)
    runs = {
        "tickers": (["tickers"], 0, True),
        "seed": (["seed"], 0, True),  # the cache already holds bars: nothing to seed
        "ingest": (["ingest", "--path", str(csv), "--no-progress"], 0, True),
        "backtest": (["backtest", "--tickers", "AAA", "--horizons", "1", "--baselines", "naive",
                      "--plots-dir", str(cli_env.root / "plots")], 0, True),
        "promote (refused)": (["promote", "missing"], 1, False),
    }
    for name, (args, code, connects) in runs.items():
        before = len(engines.connected)
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == code, f"{name}: {result.output}"
        assert engines.left_open() == [], f"{name} left an engine open"
        assert (len(engines.connected) > before) == connects, f"{name} opened no engine"
