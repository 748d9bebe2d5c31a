"""Property-based fuzzing of the API against its own OpenAPI schema: the schemathesis CLI with
`--checks all`, against a real uvicorn server, on SQLite and on PostgreSQL.

Every phase schemathesis has (examples, coverage: boundary and type-confusion values, fuzzing)
sends requests valid and invalid by the schema; every check must pass: no 5xx, status codes,
content types, headers and bodies as documented, invalid data rejected, valid data accepted.
`make test` runs STOCKCAST_FUZZ_EXAMPLES (default 12) per operation; `make fuzz` 300. Any
failure fails the test with schemathesis' report (each with a curl line to reproduce it).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.api.main import create_app
from service.db.backtests import store_run
from service.db.session import make_engine, reset_database
from tests.api_factories import API_KEY, Clock, ServerThread, api_settings, store_bars
from tests.bar_factories import ScriptedSource, make_bars
from tests.tiny_model import synthetic_bars_multi

EXAMPLES_PER_OPERATION = int(os.environ.get("STOCKCAST_FUZZ_EXAMPLES", "12"))
SEED = 20261201
# A schema-valid request may still be refused for what only the data knows: 422 for too little
# history, a horizon beyond the served model's (the tiny model's H is 5; the schema allows the
# shipped model's 30) or a start after the end. Schemathesis' default acceptable statuses for
# valid data, plus that documented 422.
# Random symbols are almost never cached: half the generated tickers are cached ones, so
# successful forecasts, bars and backtest rows are checked against their schemas too.
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

[dictionaries.cached]
values = ["AAA", "bbb", "CCC", "DDD"]

[dictionaries.versions]
values = ["%(version)s"]

[parameters]
"path.ticker" = { dictionary = "cached", probability = 0.5 }
"query.ticker" = { dictionary = "cached", probability = 0.5 }
"query.model_version" = { dictionary = "versions", probability = 0.5 }
"""


@pytest.fixture(params=["sqlite", "postgres"])
def fuzz_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'stockcast.db'}"
    else:
        url = request.getfixturevalue("pg_server_url")
    reset_database(url)
    store_bars(url, synthetic_bars_multi())
    return url


def store_a_backtest(url: str, version: str) -> None:
    """One stored run of the tiny model (two methods, two tickers plus the pooled rows)."""
    engine = make_engine(url)
    rows = [(t, h, m, "mae", 1.0 + i / 10) for i, (t, h, m) in enumerate(
        (t, h, m) for t in ("AAA", "BBB", "*") for h in (1, 5) for m in ("model", "naive"))]
    try:
        with engine.begin() as conn:
            store_run(conn, model_version=version, start=dt.date(2021, 1, 4),
                      end=dt.date(2021, 5, 12), tickers=["AAA", "BBB"],
                      config={"horizons": [1, 5], "baselines": ["naive"]}, metrics=rows)
    finally:
        engine.dispose()


def test_every_operation_passes_every_schemathesis_check(fuzz_url, tiny_artifact, tmp_path):
    # Upstream knows one more ticker; every other generated symbol is unknown (404).
    source = ScriptedSource({"DDD": make_bars(360, seed=11)})
    app = create_app(api_settings(fuzz_url, tiny_artifact.model_dir), source=source,
                     clock=Clock())
    version = tiny_artifact.artifact_dir.name
    store_a_backtest(fuzz_url, version)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG % {"version": version})
    st = Path(sys.executable).with_name("st")
    with ServerThread(app) as server:
        run = subprocess.run(
            [str(st), "--config-file", str(config), "run", f"{server.url}/openapi.json",
             "--checks", "all", "--max-examples", str(EXAMPLES_PER_OPERATION),
             "--seed", str(SEED), "--header", f"X-API-Key: {API_KEY}",
             "--generation-database", "none", "--request-timeout", "30", "--workers", "1",
             "--report", "ndjson", "--report-ndjson-path", str(tmp_path / "events.ndjson")],
            check=False, capture_output=True, text=True, timeout=1200, cwd=tmp_path,  # its cache
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"})
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-20000:]
    cases = cases_per_operation(tmp_path / "events.ndjson")
    print("\n".join(f"{op}: {by_phase}" for op, by_phase in sorted(cases.items())))
    # Every operation that takes data got the full count of fuzzed requests (a parameter-free
    # one has a single possible request), besides the coverage phase's boundary values.
    for operation in DATA_OPERATIONS:
        assert cases[operation]["fuzzing"] == EXAMPLES_PER_OPERATION, (operation, cases)
        assert cases[operation]["coverage"] > 0, (operation, cases)


# The operations whose requests carry parameters or a body.
DATA_OPERATIONS = ("POST /predict", "POST /predict/{ticker}", "GET /bars/{ticker}",
                   "GET /metrics/backtest")


def cases_per_operation(ndjson: Path) -> dict[str, dict[str, int]]:
    """Generated cases per operation and phase, from schemathesis' ndjson event report."""
    cases: dict[str, dict[str, int]] = {}
    for line in ndjson.read_text().splitlines():
        event = json.loads(line).get("ScenarioFinished")
        if event and "label" in event.get("recorder", {}):
            recorder = event["recorder"]
            by_phase = cases.setdefault(recorder["label"], {})
            phase = event["phase"]
            by_phase[phase] = by_phase.get(phase, 0) + len(recorder.get("cases", {}))
    return cases
