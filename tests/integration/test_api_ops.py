"""Operational endpoints over HTTP: liveness under load, readiness, model hot swap, metrics, bars,
and the packaging checks (no torch in the serving import, a valid compose file)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.artifacts.manifest import load_manifest, set_current
from service.core.config import PROJECT_ROOT
from service.db.health import head_revision
from service.forecasting.indicators import chart_indicators
from tests.api_factories import (
    API_KEY,
    LAST_BAR,
    Clock,
    ServerThread,
    api_settings,
    copy_models,
    store_bars,
)
from tests.bar_factories import ScriptedSource, make_bars
from tests.tiny_model import synthetic_bars_multi

PROBLEM = "application/problem+json"
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def seeded_url(db_url) -> str:
    store_bars(db_url, synthetic_bars_multi())
    return db_url


# -- liveness while forecasts are in flight, and the hot swap ---------------------------------


def test_healthz_answers_while_forecasts_are_in_flight(seeded_url, tiny_artifact):
    # Fetching SLOW takes 4 s upstream; four such requests occupy threadpool workers. Had
    # /healthz waited for them it would take >= 3.5 s; the bound leaves room for a loaded CI.
    source = ScriptedSource({"SLOW": make_bars(360, seed=21)}, delay=4.0)
    app = create_app(api_settings(seeded_url, tiny_artifact.model_dir), source=source,
                     clock=Clock())
    with ServerThread(app) as server:
        results = []

        def predict():
            results.append(httpx.post(f"{server.url}/predict/SLOW", timeout=30))

        workers = [threading.Thread(target=predict) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(0.5)  # the forecasts are now waiting on the source
        started = time.perf_counter()
        health = httpx.get(f"{server.url}/healthz", timeout=5)
        elapsed = time.perf_counter() - started
        in_flight = sum(w.is_alive() for w in workers)
        for w in workers:
            w.join()
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert in_flight == 4 and elapsed < 1.5
    assert [r.status_code for r in results] == [200] * 4
    assert len(source.calls) == 1  # the four requests shared one upstream fetch


def test_reload_swaps_the_model_and_in_flight_requests_keep_theirs(seeded_url, tiny_artifact,
                                                                   tmp_path):
    models = tmp_path / "models"
    first = copy_models(tiny_artifact.artifact_dir, models, variant="one")
    source = ScriptedSource({"SLOW": make_bars(360, seed=22)}, delay=1.5)
    app = create_app(api_settings(seeded_url, models), source=source, clock=Clock())
    with ServerThread(app) as server:
        assert httpx.post(f"{server.url}/predict/AAA").json()["model_version"] == first.name
        slow = []
        worker = threading.Thread(
            target=lambda: slow.append(httpx.post(f"{server.url}/predict/SLOW", timeout=30)))
        worker.start()
        time.sleep(0.4)  # SLOW is in flight on model-one
        second = copy_models(first, models, variant="two")  # training promoted a new model
        reload = httpx.post(f"{server.url}/admin/reload", headers={"X-API-Key": API_KEY})
        after = httpx.post(f"{server.url}/predict/AAA").json()
        worker.join()
    assert reload.status_code == 200
    assert reload.json() == {"previous_version": first.name, "version": second.name,
                             "changed": True}
    assert after["model_version"] == second.name
    assert slow[0].status_code == 200 and slow[0].json()["model_version"] == first.name


# Seconds between two checks of models/current in the watch tests (2 s in production).
WATCH_INTERVAL = 0.1


def wait_until(condition, timeout: float = 10.0) -> float:
    """Poll `condition` until it holds; the seconds it took (fails the test after timeout)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - started


@SQLITE_ONLY
def test_a_reload_on_one_worker_reaches_the_others_through_models_current(
        seeded_url, tiny_artifact, tmp_path):
    # Two apps on one models folder stand in for two uvicorn workers (separate processes, each
    # with its own slot): the reload request lands on one of them only.
    models = tmp_path / "models"
    first = copy_models(tiny_artifact.artifact_dir, models, variant="one")
    settings = api_settings(seeded_url, models, model_check_interval_seconds=WATCH_INTERVAL)
    with TestClient(create_app(settings, source=ScriptedSource(), clock=Clock())) as one, \
            TestClient(create_app(settings, source=ScriptedSource(), clock=Clock())) as two:
        assert two.post("/predict/AAA").json()["model_version"] == first.name
        second = copy_models(first, models, variant="two")  # training promoted a new model
        reload = one.post("/admin/reload", headers={"X-API-Key": API_KEY})
        took = wait_until(lambda: two.get("/models/current").json()["version"] == second.name)
        after = two.post("/predict/AAA").json()
        metrics = two.get("/metrics").text
    assert reload.status_code == 200 and reload.json()["version"] == second.name
    # One check interval, then loading the tiny model (milliseconds).
    assert took < WATCH_INTERVAL + 1.0
    assert after["model_version"] == second.name
    assert ('stockcast_model_info{providers="CPUExecutionProvider",'
            f'version="{second.name}"}} 1.0') in metrics
    # Only the model served now (the ledger's gauges keep both versions' live records).
    assert f',version="{first.name}"}}' not in metrics


@SQLITE_ONLY
def test_a_watched_models_current_that_cannot_load_keeps_the_old_model(
        seeded_url, tiny_artifact, tmp_path, caplog):
    models = tmp_path / "models"
    good = copy_models(tiny_artifact.artifact_dir, models, variant="good")
    settings = api_settings(seeded_url, models, model_check_interval_seconds=WATCH_INTERVAL)

    def model_detail() -> str:
        return client.get("/readyz").json()["checks"]["model"]["detail"]

    with TestClient(create_app(settings, source=ScriptedSource(), clock=Clock())) as client:
        loaded_at = client.get("/models/current").json()["loaded_at"]
        # Rewritten, same artifact: nothing to load.
        set_current(models, good.name)
        time.sleep(3 * WATCH_INTERVAL)
        assert client.get("/models/current").json()["loaded_at"] == loaded_at

        # Broken before current names it: the watcher must never see it whole.
        broken = copy_models(good, models, variant="broken", point_current=False)
        (broken / "model.onnx").write_bytes(b"not a model")
        set_current(models, broken.name)
        wait_until(lambda: model_detail() != good.name)
        ready = client.get("/readyz")
        predict = client.post("/predict/AAA").json()
        current = client.get("/models/current").json()

        set_current(models, good.name)  # the bad promotion undone
        wait_until(lambda: model_detail() == good.name)
        assert client.get("/models/current").json()["loaded_at"] == loaded_at
    assert ready.status_code == 200
    model_check = ready.json()["checks"]["model"]
    assert model_check == {"ok": True, "detail": (
        f"{good.name}; the last load failed: model {broken.name}: artifact refused "
        "(the reason is in the server log)")}
    # The public detail is short and path-free; the log has the full reason.
    assert str(tmp_path) not in ready.text
    assert any("sha256" in r.getMessage() and broken.name in r.getMessage()
               for r in caplog.records)
    assert predict["model_version"] == good.name
    assert current["version"] == good.name and current["loaded_at"] == loaded_at


@SQLITE_ONLY
def test_a_model_promoted_after_startup_is_loaded_without_a_reload(seeded_url, tiny_artifact,
                                                                   tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    settings = api_settings(seeded_url, models, model_check_interval_seconds=WATCH_INTERVAL)
    with TestClient(create_app(settings, source=ScriptedSource(), clock=Clock())) as client:
        assert client.post("/predict/AAA").status_code == 503
        copy_models(tiny_artifact.artifact_dir, models)
        wait_until(lambda: client.get("/readyz").status_code == 200)
        assert client.post("/predict/AAA").json()["model_version"] == \
            tiny_artifact.artifact_dir.name


@SQLITE_ONLY
def test_reload_needs_the_api_key(seeded_url, tiny_artifact):
    app = create_app(api_settings(seeded_url, tiny_artifact.model_dir), source=ScriptedSource())
    with TestClient(app) as client:
        for headers in ({}, {"X-API-Key": "wrong"}):
            response = client.post("/admin/reload", headers=headers)
            assert response.status_code == 401
            assert response.headers["content-type"] == PROBLEM
            assert response.headers["www-authenticate"] == "X-API-Key"
            assert response.json() == {
                "type": "about:blank", "title": "Unauthorized", "status": 401,
                "detail": "missing or wrong X-API-Key header", "instance": "/admin/reload"}
        ok = client.post("/admin/reload", headers={"X-API-Key": API_KEY})
        assert ok.status_code == 200 and ok.json()["changed"] is False


@SQLITE_ONLY
def test_admin_is_disabled_without_a_configured_key(seeded_url, tiny_artifact):
    settings = api_settings(seeded_url, tiny_artifact.model_dir, api_key=None)
    with TestClient(create_app(settings, source=ScriptedSource())) as client:
        response = client.post("/admin/reload", headers={"X-API-Key": "anything"})
    assert response.status_code == 503
    assert response.json()["detail"] == ("admin endpoints are disabled: STOCKCAST_API_KEY is "
                                         "not set")


def test_readiness_before_and_after_a_model_is_loaded(seeded_url, tiny_artifact, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    app = create_app(api_settings(seeded_url, models), source=ScriptedSource(), clock=Clock())
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.headers["content-type"] == PROBLEM
        reason = (f"no {models / 'current'}: train a model (stockcast train) or restore one")
        public = "models/current: no loadable artifact (the reason is in the server log)"
        assert not_ready.json() == {
            "type": "urn:stockcast:problem:not-ready", "title": "Not ready", "status": 503,
            "detail": "failed checks: model, provider", "instance": "/readyz",
            "checks": {"model": {"ok": False, "detail": public},
                       "database": {"ok": True, "detail": "select 1 answered"},
                       "schema": {"ok": True, "detail": f"at {head_revision()} (head)"},
                       "provider": {"ok": False, "detail": "requested cpu; no session"}}}
        predict = client.post("/predict/AAA")
        assert predict.status_code == 503 and predict.headers["content-type"] == PROBLEM
        assert predict.json() == {
            "type": "urn:stockcast:problem:model-not-loaded", "title": "No model loaded",
            "status": 503, "detail": f"no model loaded: {public}", "instance": "/predict/AAA"}
        batch = client.post("/predict", json={"tickers": ["AAA"]})
        assert batch.status_code == 503 and batch.json()["instance"] == "/predict"
        # A malformed body is wrong whatever the server's state: 422 before the model's 503.
        for path, body in (("/predict/AAA", {"horizon": "soon"}), ("/predict", {"tickers": []})):
            assert client.post(path, json=body).status_code == 422, path
        assert client.get("/models/current").status_code == 503
        # The authenticated admin answer carries the full reason.
        failed = client.post("/admin/reload", headers={"X-API-Key": API_KEY})
        assert failed.status_code == 409
        assert failed.json()["detail"] == f"{reason}; still serving model none"

        copy_models(tiny_artifact.artifact_dir, models)
        loaded = client.post("/admin/reload", headers={"X-API-Key": API_KEY})
        assert loaded.json() == {"previous_version": None,
                                 "version": tiny_artifact.artifact_dir.name, "changed": True}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["model"] == {"ok": True,
                                                   "detail": tiny_artifact.artifact_dir.name}
        assert client.post("/predict/AAA").status_code == 200


@SQLITE_ONLY
def test_a_broken_new_artifact_keeps_the_old_model_serving(seeded_url, tiny_artifact, tmp_path):
    models = tmp_path / "models"
    good = copy_models(tiny_artifact.artifact_dir, models, variant="good")
    app = create_app(api_settings(seeded_url, models), source=ScriptedSource(), clock=Clock())
    with TestClient(app) as client:
        broken = copy_models(good, models, variant="broken")
        (broken / "model.onnx").write_bytes(b"not a model")
        response = client.post("/admin/reload", headers={"X-API-Key": API_KEY})
        assert response.status_code == 409
        assert response.json()["detail"].endswith(f"; still serving model {good.name}")
        assert "sha256" in response.json()["detail"]
        assert client.post("/predict/AAA").json()["model_version"] == good.name


@SQLITE_ONLY
def test_an_artifact_whose_band_aci_is_no_object_is_refused_and_the_old_model_kept(
        seeded_url, tiny_artifact, tmp_path):
    """`"aci": 3` raised AttributeError in load_manifest: the reload route answered 500 (found
    by a hostile ops pass); now the 409 every refused artifact gets."""
    import json

    from service.artifacts.manifest import artifact_version

    models = tmp_path / "models"
    good = copy_models(tiny_artifact.artifact_dir, models, variant="good")
    meta = json.loads((good / "meta.json").read_text())
    meta["band"] = {**meta.get("band", {}), "aci": 3}
    meta["version"] = artifact_version((good / "model.onnx").read_bytes(), meta)
    bad = models / meta["version"]
    shutil.copytree(good, bad)
    (bad / "meta.json").write_text(json.dumps(meta))
    app = create_app(api_settings(seeded_url, models), source=ScriptedSource(), clock=Clock())
    with TestClient(app) as client:
        set_current(models, bad.name)
        response = client.post("/admin/reload", headers={"X-API-Key": API_KEY})
        predict = client.post("/predict/AAA")
        current = client.get("/models/current")
    assert response.status_code == 409 and response.headers["content-type"] == PROBLEM
    assert response.json() == {
        "type": "urn:stockcast:problem:model-invalid", "title": "Reload failed", "status": 409,
        "detail": f"artifact {bad.name}: meta.json's band.aci is not an object (got int; "
                  f"refused); still serving model {good.name}",
        "instance": "/admin/reload"}
    assert predict.status_code == 200 and predict.json()["model_version"] == good.name
    assert current.json()["version"] == good.name


# -- describing the model, metrics --------------------------------------------------------------


@SQLITE_ONLY
def test_models_current_reports_the_manifest_and_active_providers(seeded_url, tiny_artifact):
    manifest = load_manifest(tiny_artifact.artifact_dir)
    app = create_app(api_settings(seeded_url, tiny_artifact.model_dir), source=ScriptedSource())
    with TestClient(app) as client:
        body = client.get("/models/current").json()
        ready = client.get("/readyz").json()
    assert body["version"] == manifest.version
    assert (body["window"], body["horizon"]) == (20, 5)
    assert body["features"] == list(manifest.spec.features)
    assert body["quantiles"] == [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    assert body["vocab_size"] == 4 and body["tickers"] == ["AAA", "BBB", "CCC"]
    assert body["split"] == manifest.split.to_dict()
    assert body["metrics"] == manifest.metrics
    assert body["requested_provider"] == "cpu"
    assert body["active_providers"] == ["CPUExecutionProvider"]
    assert ready["checks"]["provider"] == {
        "ok": True, "detail": "requested cpu; active CPUExecutionProvider"}


@SQLITE_ONLY
def test_cuda_requested_but_not_active_fails_readiness(seeded_url, tiny_artifact):
    # No GPU here: onnxruntime falls back to CPU silently, which readiness must not accept.
    settings = api_settings(seeded_url, tiny_artifact.model_dir, ort_provider="cuda")
    with TestClient(create_app(settings, source=ScriptedSource())) as client:
        ready = client.get("/readyz")
        current = client.get("/models/current").json()
    assert current["requested_provider"] == "cuda"
    assert current["active_providers"] == ["CPUExecutionProvider"]
    assert ready.status_code == 503
    assert ready.json()["checks"]["provider"] == {
        "ok": False, "detail": "requested cuda; active CPUExecutionProvider"}


@SQLITE_ONLY
def test_metrics_exposition_and_the_backtest_route_coexist(seeded_url, tiny_artifact):
    app = create_app(api_settings(seeded_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock())
    with TestClient(app) as client:
        client.post("/predict/AAA")
        metrics = client.get("/metrics")
        backtest = client.get("/metrics/backtest")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    version = tiny_artifact.artifact_dir.name
    assert (f'stockcast_model_info{{providers="CPUExecutionProvider",version="{version}"}} 1.0'
            in metrics.text)
    assert 'http_requests_total{handler="/predict/{ticker}",method="POST",status="2xx"} 1.0' \
        in metrics.text
    # The backtest route answers (stored results, or 404 when none), not the exposition.
    assert backtest.status_code in (200, 404)
    assert backtest.headers["content-type"] in ("application/json", PROBLEM)
    # Requests to /metrics/backtest and /metrics/live are counted like any route's; only the
    # exposition itself is left out (the exclusion was a regex matching every /metrics/... path;
    # found by review).
    with TestClient(app) as client:
        client.get("/metrics/live")
        counted = client.get("/metrics").text
    assert 'http_requests_total{handler="/metrics/live",method="GET",status="2xx"} 1.0' in counted
    assert f'handler="/metrics/backtest",method="GET",status="{backtest.status_code // 100}xx"' \
        in counted
    assert 'handler="/metrics",' not in counted


@contextlib.contextmanager
def _route_labels(seeded_url, tiny_artifact):
    """(client, the started app's CachedRouteInstrumentation): the middleware stack is built
    at startup, so one request goes first."""
    from service.api.telemetry import CachedRouteInstrumentation

    app = create_app(api_settings(seeded_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock())
    with TestClient(app) as client:
        client.get("/healthz")
        middleware = app.middleware_stack
        while not isinstance(middleware, CachedRouteInstrumentation):
            middleware = middleware.app
        yield client, middleware


@SQLITE_ONLY
def test_cached_route_labels_are_the_instrumentators_own(seeded_url, tiny_artifact):
    # CachedRouteInstrumentation resolves a path's handler label once; each label must be what
    # the library's per-request matching gives, asked twice (the second from the cache).
    from prometheus_fastapi_instrumentator import routing
    from starlette.requests import Request

    with _route_labels(seeded_url, tiny_artifact) as (client, middleware):
        app = client.app
        for method, path in [("POST", "/predict/AAA"), ("POST", "/predict/BBB"),
                             ("POST", "/predict"), ("GET", "/healthz"), ("GET", "/metrics"),
                             ("GET", "/metrics/backtest"), ("GET", "/bars/AAA"),
                             ("GET", "/predict/AAA"), ("GET", "/no/such/path"), ("GET", "/")]:
            request = Request({"type": "http", "method": method, "path": path, "root_path": "",
                               "query_string": b"", "headers": [], "app": app})
            name = routing.get_route_name(request, should_include_root_path=False)
            expected = (name or path, name is not None)
            assert middleware._get_handler(request) == expected == middleware._get_handler(
                request), (method, path)
        assert len(middleware._labels) == 10


@SQLITE_ONLY
def test_long_paths_are_labelled_without_being_remembered(seeded_url, tiny_artifact):
    # uvicorn takes paths up to ~64 KB: 4,096 remembered ones would pin ~0.5 GB per worker
    # (the path in the key, and again as an untemplated label). Their labels stay the library's.
    with _route_labels(seeded_url, tiny_artifact) as (client, middleware):
        for i in range(20):
            client.post(f"/predict/{i}{'A' * 60_000}")
            client.get(f"/junk/{i}{'A' * 60_000}")
        held = sum(len(key[2]) + len(label[0])
                   for key, label in middleware._labels._entries.items())
        metrics = client.get("/metrics").text
    assert held < 10_000
    assert 'handler="/predict/{ticker}",method="POST",status="4xx"} 20.0' in metrics


# -- bars for the chart -------------------------------------------------------------------------


def test_bars_with_indicators_for_a_date_range(seeded_url, tiny_artifact):
    bars_multi = synthetic_bars_multi()
    bars = bars_multi[bars_multi["ticker"] == "BBB"].drop(columns="ticker").reset_index(drop=True)
    app = create_app(api_settings(seeded_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock())
    with TestClient(app) as client:
        body = client.get("/bars/bbb", params={"start": "2021-04-01", "end": "2021-04-30"}).json()
        default = client.get("/bars/BBB").json()
        tickers = client.get("/tickers").json()["tickers"]
    in_range = (bars["date"] >= "2021-04-01") & (bars["date"] <= "2021-04-30")
    assert body["ticker"] == "BBB" and body["stale"] is False
    assert body["dates"] == [d.date().isoformat() for d in bars.loc[in_range, "date"]]
    assert body["close"] == pytest.approx(bars.loc[in_range, "close"].tolist())
    assert body["volume"] == bars.loc[in_range, "volume"].astype(int).tolist()
    # Indicators over the whole history, shown for the range.
    expected = chart_indicators(bars).loc[in_range.to_numpy()]
    for name in ("sma20", "sma50", "bb_upper", "bb_lower", "rsi14", "macd", "macd_signal",
                 "macd_hist"):
        assert body["indicators"][name] == pytest.approx(expected[name].tolist(), rel=1e-9)
    # Default range: the year up to the latest bar.
    assert default["dates"][-1] == LAST_BAR.isoformat()
    assert default["dates"][0] >= "2020-05-19"
    assert tickers[1] == {"ticker": "BBB", "first_bar_date": "2020-01-02",
                          "last_bar_date": LAST_BAR.isoformat(), "last_refresh_status": None,
                          "seen_in_training": True}


@SQLITE_ONLY
def test_bars_warm_up_is_null_and_a_reversed_range_is_422(seeded_url, tiny_artifact):
    app = create_app(api_settings(seeded_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock())
    with TestClient(app) as client:
        first = client.get("/bars/AAA", params={"start": "2020-01-01", "end": "2020-03-31"})
        reversed_range = client.get("/bars/AAA", params={"start": "2021-02-01",
                                                         "end": "2021-01-01"})
    sma50 = first.json()["indicators"]["sma50"]
    assert sma50[:49] == [None] * 49 and sma50[49] is not None
    assert reversed_range.status_code == 422
    assert reversed_range.json()["errors"] == [
        {"field": "start", "location": "query", "message": "must be on or before end (2021-01-01)"}]


def test_chart_indicators_are_the_features_in_price_units():
    """SMA20 and the MACD line on the chart agree with the scale-free model features."""
    from service.forecasting.features import build_features

    bars = make_bars(300, seed=5)
    bars = bars.assign(adj_close=bars["close"])  # the same price series for both
    chart = chart_indicators(bars)
    features = build_features(bars)
    price = pd.Series(bars["close"].to_numpy(), index=pd.DatetimeIndex(bars["date"]))
    at = features.index
    np.testing.assert_allclose(chart.loc[at, "sma20"] / price[at] - 1, features["sma20_ratio"],
                               rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(chart.loc[at, "macd"] / price[at], features["macd"], rtol=1e-10,
                               atol=1e-14)
    np.testing.assert_allclose(chart.loc[at, "rsi14"] / 100, features["rsi14"], rtol=1e-12)


# -- packaging ----------------------------------------------------------------------------------


# Run in a fresh interpreter: serve the shipped model end to end (lifespan, a forecast, bars
# with indicators, a stored backtest), then report whether anything loaded torch, or what the
# runtime image leaves out (the backtest extra: statsmodels/scipy, matplotlib), on the way.
SERVE_WITHOUT_TORCH = """
import datetime as dt
import json
import sys

import service.cli  # noqa: F401 - the CLI module imports too
from fastapi.testclient import TestClient
from service.api.main import create_app
from service.core.config import PROJECT_ROOT
from service.db.backtests import store_run
from service.db.session import make_engine, reset_database
from tests.api_factories import Clock, api_settings, store_bars
from tests.bar_factories import ScriptedSource, make_bars

url = sys.argv[1]
reset_database(url)
store_bars(url, make_bars(360, seed=3, price=150.0, ticker="AAPL"))
engine = make_engine(url)
with engine.begin() as conn:
    store_run(conn, model_version="381c7b89db93", start=dt.date(2021, 3, 1),
              end=dt.date(2021, 5, 18), tickers=["AAPL"], config={},
              metrics=[("AAPL", 1, "model", "mae", 1.0), ("AAPL", 1, "naive", "mae", 1.1)])
engine.dispose()
app = create_app(api_settings(url, PROJECT_ROOT / "models"), source=ScriptedSource(),
                 clock=Clock())
with TestClient(app) as client:
    forecast = client.post("/predict/AAPL")
    bars = client.get("/bars/AAPL")
    backtest = client.get("/metrics/backtest")
print(json.dumps({
    "status": [forecast.status_code, bars.status_code, backtest.status_code],
    "version": forecast.json()["model_version"],
    "n_bars": len(bars.json()["dates"]),
    "mae": [m["mae"] for m in backtest.json()["metrics"]],
    "torch": "torch" in sys.modules,
    "extras": [m for m in ("statsmodels", "scipy", "matplotlib") if m in sys.modules],
}))
"""


def test_serving_the_shipped_model_never_imports_torch_or_the_backtest_extra(tmp_path):
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    out = subprocess.run([sys.executable, "-c", SERVE_WITHOUT_TORCH, url], capture_output=True,
                         text=True, cwd=PROJECT_ROOT, check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    shipped = (PROJECT_ROOT / "models" / "current").read_text().strip()
    assert result["status"] == [200, 200, 200]
    assert result["version"] == shipped
    assert result["n_bars"] > 200  # the default chart year
    assert result["mae"] == [1.0, 1.1]  # the stored run: model, then naive
    assert result["torch"] is False
    assert result["extras"] == []  # `make compose-smoke` runs the image without them


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True,
                               check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_is_valid():
    command = _compose_command()
    if command is None:
        pytest.skip("no docker compose client (neither the plugin nor docker-compose)")
    for profiles in ([], ["--profile", "train"], ["--profile", "gpu"]):
        result = subprocess.run([*command, "-f", "docker-compose.yml", *profiles, "config", "-q"],
                                cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
