"""A real browser against the real app: uvicorn on 127.0.0.1 over a SQLite file seeded with real
bars from the shared dataset, the served model, and headless Debian Chromium driven by Playwright.

Browser tests skip where /usr/bin/chromium (or the playwright package) is absent, except under
CI=true, where they fail: `.ci/run` installs Chromium. Playwright never downloads a browser here:
it is pointed at the system one.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from service.api.main import create_app
from service.artifacts.manifest import load_manifest
from service.core.config import PROJECT_ROOT
from service.db.backtests import store_run
from service.db.session import make_engine, reset_database
from service.sources.csv import read_bars_file
from service.sources.ingest import ingest_frame
from tests.api_factories import ServerThread, api_settings
from tests.bar_factories import ScriptedSource, make_bars
from tests.conftest import IN_CI

CHROMIUM = Path("/usr/bin/chromium")
# Offline, quiet, throwaway: nothing reaches the network, no profile outlives the test run.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
SHIPPED_MODELS = PROJECT_ROOT / "models"
# Real tickers charted by the tests: AAPL and MSFT are in the stored backtest, JPM is not.
REAL_TICKERS = ("AAPL", "MSFT", "JPM")
LAST_BAR = dt.date(2017, 12, 6)  # the shared dataset's last day
SHORT_BARS = 40  # fewer than any model's window: "too little history"
# Page load waits: a cold page parses ~4.8 MB of Plotly.js on a 2-core machine.
PAGE_TIMEOUT_MS = 30_000


def _skip_or_fail(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: browser tests must run)")
    pytest.skip(reason)


@dataclass
class LiveApp:
    """The running server and what the tests need to check its answers."""

    url: str
    db_url: str
    source: ScriptedSource
    model_version: str
    horizon: int
    trained_from: dt.date  # first training origin: from it to validated_until, in-sample
    validated_until: dt.date  # last validation origin
    backtest_run: int


@pytest.fixture(scope="session")
def served_models(request) -> Path:
    """The shipped models folder (models/current); the tiny test model where none is shipped."""
    if (SHIPPED_MODELS / "current").is_file():
        return SHIPPED_MODELS
    return request.getfixturevalue("tiny_artifact").model_dir


def seed_backtest(db_url: str, model_version: str) -> int:
    """One stored run over AAPL and MSFT with known model and naive numbers; returns its id."""
    rows = []
    for ticker in ("AAPL", "MSFT", "*"):
        for horizon in (1, 5):
            scale = horizon  # distinct numbers per horizon, so the table shows the chosen one
            rows += [
                (ticker, horizon, "model", "n_forecasts", 150.0),
                (ticker, horizon, "model", "mae", 2.5 * scale),
                (ticker, horizon, "model", "rmse", 3.75 * scale),
                (ticker, horizon, "model", "mape", 1.25 * scale),
                (ticker, horizon, "model", "rel_mae", 1.25 / 1.125),
                (ticker, horizon, "model", "directional_accuracy", 0.5625),
                (ticker, horizon, "model", "coverage", 0.8125),
                (ticker, horizon, "model", "dm_squared_pvalue", 0.375),
                (ticker, horizon, "naive", "n_forecasts", 150.0),
                (ticker, horizon, "naive", "mae", 2.25 * scale),
                (ticker, horizon, "naive", "rmse", 3.5 * scale),
                (ticker, horizon, "naive", "mape", 1.125 * scale),
                (ticker, horizon, "naive", "rel_mae", 1.0),
                (ticker, horizon, "naive", "directional_accuracy", float("nan")),
            ]
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            return store_run(conn, model_version=model_version, start=dt.date(2017, 6, 1),
                             end=dt.date(2017, 11, 30), tickers=["AAPL", "MSFT"],
                             config={"horizons": [1, 5], "baselines": ["naive"]}, metrics=rows)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def live_app(shared_dataset, served_models, tmp_path_factory) -> LiveApp:
    """uvicorn on a free 127.0.0.1 port: real bars of REAL_TICKERS, a 40-bar SHORT, a stored
    backtest run, the served model, and a source that knows no ticker (the network stand-in)."""
    db_url = f"sqlite:///{tmp_path_factory.mktemp('e2e-db') / 'stockcast.db'}"
    reset_database(db_url)
    bars = read_bars_file(shared_dataset)
    short = make_bars(SHORT_BARS, start="2017-10-09", seed=7, ticker="SHORT")
    engine = make_engine(db_url)
    try:
        ingest_frame(engine, pd.concat([bars[bars["ticker"].isin(REAL_TICKERS)], short],
                                       ignore_index=True), source="csv")
    finally:
        engine.dispose()
    current = (served_models / "current").read_text().strip()
    manifest = load_manifest(served_models / current)
    run_id = seed_backtest(db_url, manifest.version)
    source = ScriptedSource({})
    app = create_app(api_settings(db_url, served_models), source=source)
    with ServerThread(app) as server:
        yield LiveApp(url=server.url + "/", db_url=db_url, source=source,
                      model_version=manifest.version, horizon=manifest.spec.horizon,
                      trained_from=manifest.split.train[0],
                      validated_until=manifest.split.val[1], backtest_run=run_id)


@pytest.fixture(scope="session")
def browser_context():
    """One headless Chromium for the session; its HTTP cache keeps Plotly.js between pages."""
    if not CHROMIUM.exists():
        _skip_or_fail(f"Chromium not found at {CHROMIUM} (Debian package `chromium`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("the playwright package is not installed (pip install -e '.[dev]')")
    with tempfile.TemporaryDirectory(prefix="stockcast-chromium-") as profile, \
            sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1366, "height": 900})
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context):
    """A fresh tab; JavaScript exceptions are collected in page.js_errors and must stay empty."""
    tab = browser_context.new_page()
    tab.js_errors = []
    tab.on("pageerror", lambda exc: tab.js_errors.append(str(exc)))
    yield tab
    tab.close()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where screenshots go (gitignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
