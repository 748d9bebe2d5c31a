"""Property-based fuzzing of the API against its own OpenAPI schema (schemathesis), bounded.

Every operation gets a fixed number of generated requests, valid and invalid by the schema; each
response must not be a 5xx and must match the status codes, content types and schemas the
OpenAPI document declares (schemathesis' default checks).

Cases come from each operation's Hypothesis strategy: schemathesis' lazy pytest loader does not
run under pytest 9 (it writes the node's private `_nodeid`).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.main import create_app
from service.core.config import Settings
from service.db.session import upgrade
from tests.api_factories import Clock, api_settings, store_bars
from tests.bar_factories import ScriptedSource, make_bars
from tests.tiny_model import synthetic_bars_multi

EXAMPLES_PER_OPERATION = 12
# A schema-valid request may still be refused for what only the data knows: 422 for too little
# history or a horizon beyond the served model's (the tiny model's H is 5; the schema allows the
# shipped model's 30). Schemathesis' default acceptable statuses, plus that documented 422.
CONFIG = schemathesis.Config.from_dict({"checks": {"positive_data_acceptance": {
    "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]}}})
# The documented operations, read from a schema-only app (no lifespan, nothing loaded).
OPERATIONS = [
    (method.upper(), path)
    for path, methods in create_app(Settings(database_url="sqlite://")).openapi()["paths"].items()
    for method in methods
]


@pytest.fixture(scope="module")
def api_schema(tiny_artifact, tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'stockcast.db'}"
    upgrade(url)
    store_bars(url, synthetic_bars_multi())
    # Upstream knows one more ticker; every other generated symbol is unknown (404).
    source = ScriptedSource({"DDD": make_bars(360, seed=11)})
    app = create_app(api_settings(url, tiny_artifact.model_dir), source=source, clock=Clock())
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)


@pytest.mark.parametrize("method, path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_conforms_to_its_schema(api_schema, method, path):
    operation = api_schema[path][method]
    strategies = [operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
                  operation.as_strategy(schemathesis.GenerationMode.NEGATIVE)]
    if "{ticker}" in path:
        # Random symbols are almost never cached: also fuzz everything else on a cached one,
        # so successful responses are checked against their schemas too.
        strategies.append(operation.as_strategy(schemathesis.GenerationMode.POSITIVE,
                                                path_parameters={"ticker": "AAA"}))
    cases = st.one_of(strategies)

    @given(case=cases)
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
              database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate()

    check()
