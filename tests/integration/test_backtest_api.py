"""GET /metrics/backtest serves the stored numbers, on real SQLite and PostgreSQL."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.db.backtests import store_run
from service.db.session import make_engine
from service.evaluation.scoring import METRICS, MODEL, NAIVE, POOLED
from tests.api_factories import api_settings

PROBLEM = "application/problem+json"




def save(url, run, version=None) -> int:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            return store_run(conn, model_version=version or run.model_version,
                             start=run.start, end=run.end, tickers=run.tickers,
                             config=run.config,
                             metrics=run.metrics.itertuples(index=False, name=None))
    finally:
        engine.dispose()


@pytest.fixture
def client(db_url, tiny_artifact):
    app = create_app(api_settings(db_url, tiny_artifact.model_dir))
    with TestClient(app) as client:
        yield client


def test_no_stored_run_is_a_404_problem(client):
    response = client.get("/metrics/backtest")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["detail"] == "no backtest stored: run `stockcast backtest`"


def test_serves_the_latest_runs_stored_numbers(client, db_url, tiny_backtest):
    save(db_url, tiny_backtest, version="older")
    run_id = save(db_url, tiny_backtest)
    response = client.get("/metrics/backtest")
    assert response.status_code == 200
    body = response.json()
    assert body["run"]["id"] == run_id
    assert body["run"]["model_version"] == tiny_backtest.model_version
    assert body["run"]["start"] == tiny_backtest.start.isoformat()
    assert body["run"]["horizons"] == [1, 5]
    # The point baselines; the band methods (model_aci, ewma, ...) have rows of their own.
    assert body["run"]["baselines"] == tiny_backtest.config["baselines"]
    assert {"model_aci", "ewma", "ewma_aci", "empirical", "empirical_aci"} <= {
        r["method"] for r in body["metrics"]}
    rows = {(r["ticker"], r["horizon"], r["method"]): r for r in body["metrics"]}
    # one object per (ticker or pooled, horizon, method incl. buy-and-hold)
    assert len(rows) == len(body["metrics"]) == 4 * 2 * (len(tiny_backtest.methods) + 1)
    assert body["metrics"][0]["ticker"] == POOLED and body["metrics"][0]["method"] == MODEL
    for r in tiny_backtest.metrics.itertuples():
        served = rows[(r.ticker, r.horizon, r.method)][r.metric]
        if math.isnan(r.value):
            assert served is None
        else:
            assert served == r.value
    # fields that do not apply are null, present in every object
    assert rows[(POOLED, 1, NAIVE)]["coverage"] is None
    assert set(METRICS) <= set(rows[(POOLED, 1, NAIVE)])


def test_filters_and_a_chosen_run(client, db_url, tiny_backtest):
    first = save(db_url, tiny_backtest, version="first")
    save(db_url, tiny_backtest)
    one = client.get("/metrics/backtest", params={"ticker": "aaa", "horizon": 5,
                                                 "method": "model"}).json()
    assert [(r["ticker"], r["horizon"], r["method"]) for r in one["metrics"]] == [("AAA", 5, MODEL)]
    assert one["metrics"][0]["mae"] == tiny_backtest.value("mae", MODEL, 5, "AAA")
    pooled = client.get("/metrics/backtest", params={"ticker": POOLED, "horizon": 1}).json()
    assert {r["ticker"] for r in pooled["metrics"]} == {POOLED}
    by_version = client.get("/metrics/backtest", params={"model_version": "first"}).json()
    assert by_version["run"]["id"] == first
    by_id = client.get("/metrics/backtest", params={"run_id": first}).json()
    assert by_id["run"]["model_version"] == "first"


BAD_QUERIES = [
    ({"run_id": 999}, 404, "no backtest run 999"),
    ({"model_version": "nope"}, 404, "no backtest stored of model nope: run `stockcast backtest`"),
    ({"ticker": "ZZZ"}, 404, "has no metrics for ticker=ZZZ"),
    ({"horizon": 30, "method": "model"}, 404, "has no metrics for horizon=30, method=model"),
    ({"ticker": "bad ticker"}, 422,
     "invalid ticker 'bad ticker': use 1-15 letters, digits, '.', '-', '^' or '='"),
    ({"horizon": 0}, 422, "horizon: Input should be greater than or equal to 1"),
    # Beyond the columns' ranges or with NUL bytes: a client error on every backend, not an
    # OverflowError (SQLite) or a "database unavailable" (Postgres).
    ({"run_id": 99999999999999999999}, 422,
     "run_id: Input should be less than or equal to 2147483647"),
    ({"horizon": 10**12}, 422, "horizon: Input should be less than or equal to 30"),
    ({"method": "mo\x00del"}, 422, "method: String should match pattern '^[a-z0-9_]{1,32}$'"),
    ({"model_version": "v\x00"}, 422,
     "model_version: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'"),
    ({"ticker": "AA\x00"}, 422,
     "invalid ticker 'AA\\x00': use 1-15 letters, digits, '.', '-', '^' or '='"),
]


def test_bad_or_unmatched_queries_are_problems(client, db_url, tiny_backtest):
    run_id = save(db_url, tiny_backtest)
    for params, status, detail in BAD_QUERIES:
        response = client.get("/metrics/backtest", params=params)
        assert response.status_code == status, params
        assert response.headers["content-type"] == PROBLEM
        got = response.json()["detail"]
        assert got.endswith(detail), got
        if "invalid ticker" in detail:  # a query parameter's check, as any other's
            assert response.json()["type"] == "urn:stockcast:problem:validation"
            assert response.json()["errors"] == [
                {"field": "ticker", "location": "query", "message": detail}]
        if "has no metrics" in detail:
            assert got == f"backtest run {run_id} {detail}"


def test_run_of_another_version_is_a_404(client, db_url, tiny_backtest):
    run_id = save(db_url, tiny_backtest, version="vvv")
    response = client.get("/metrics/backtest", params={"run_id": run_id, "model_version": "www"})
    assert response.status_code == 404
    assert response.json()["detail"] == f"backtest run {run_id} is of model vvv, not www"


def test_openapi_documents_every_metric_and_an_example(client):
    schema = client.get("/openapi.json").json()
    fields = schema["components"]["schemas"]["BacktestMetricsPublic"]["properties"]
    assert set(METRICS) <= set(fields)
    assert fields["rel_mae"]["description"] == METRICS["rel_mae"].meaning
    public = schema["components"]["schemas"]["BacktestPublic"]
    assert public["examples"][0]["metrics"][0]["method"] == MODEL
    responses = schema["paths"]["/metrics/backtest"]["get"]["responses"]
    assert "application/problem+json" in responses["404"]["content"]


def test_the_metric_catalogue_is_served_in_display_order(client):
    response = client.get("/metrics/backtest/catalogue")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [m["name"] for m in body] == list(METRICS)
    by_name = {m["name"]: m for m in body}
    assert by_name["rel_mae"] == {
        "name": "rel_mae", "label": "rel MAE", "title": "MAE relative to naive",
        "meaning": "MAE / MAE of naive on the same forecasts (< 1 beats naive)",
        "unit": "ratio", "better": "lower"}
    assert by_name["directional_accuracy"]["title"] == "Direction right"
    assert by_name["coverage"]["better"] is None
