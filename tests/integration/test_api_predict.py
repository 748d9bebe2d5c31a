"""POST /predict end to end over HTTP on real SQLite and PostgreSQL, the tiny ONNX model, and a
scripted stand-in for the network source."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from service.api.main import create_app
from service.artifacts.manifest import load_manifest
from service.db.session import make_engine
from service.forecasting.calendar import next_trading_days
from service.forecasting.features import build_features, min_bars
from service.forecasting.spec import FeatureSpec
from tests.api_factories import LAST_BAR, NOW, Clock, api_settings, store_bars
from tests.bar_factories import ScriptedSource, make_bars, timeout_error
from tests.tiny_model import synthetic_bars_multi

PROBLEM = "application/problem+json"


@pytest.fixture
def source() -> ScriptedSource:
    """Upstream knows DDD (never cached), a short history, and the odd Yahoo symbols."""
    return ScriptedSource({
        "DDD": make_bars(360, seed=11, price=50.0),
        "SHORT": make_bars(40, start="2021-03-24", seed=12),
        "^GSPC": make_bars(360, seed=13, price=3000.0),
        "BRK-B": make_bars(360, seed=14, price=200.0),
        "EURUSD=X": make_bars(360, seed=15, price=1.2),
    })


@pytest.fixture
def bars_multi() -> pd.DataFrame:
    return synthetic_bars_multi()


@pytest.fixture
def app_parts(db_url, tiny_artifact, source, bars_multi):
    """(client, app, source, clock, db url) of an app over a DB holding AAA, BBB and CCC."""
    store_bars(db_url, bars_multi)
    clock = Clock()
    app = create_app(api_settings(db_url, tiny_artifact.model_dir), source=source, clock=clock)
    with TestClient(app) as client:
        yield client, app, source, clock, db_url


@pytest.fixture
def client(app_parts) -> TestClient:
    return app_parts[0]



def ticker_bars(bars_multi, ticker):
    return bars_multi[bars_multi["ticker"] == ticker].drop(columns="ticker").reset_index(drop=True)


# -- forecasts --------------------------------------------------------------------------------


def test_predict_cached_ticker_matches_the_predictor(app_parts, tiny_artifact, tiny_predictor,
                                                      bars_multi):
    client, _, source, _, _ = app_parts
    response = client.post("/predict/aaa", json={"horizon": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    bars = ticker_bars(bars_multi, "AAA")
    expected = tiny_predictor.forecast("AAA", bars, horizon=3)
    assert body["ticker"] == "AAA"
    assert body["as_of"] == LAST_BAR.isoformat() == expected.as_of.isoformat()
    assert body["last_close"] == pytest.approx(bars["close"].iloc[-1], rel=1e-12)
    assert body["model_version"] == tiny_artifact.artifact_dir.name
    assert body["seen_in_training"] is True
    assert body["horizon"] == 3 and body["stale"] is False and body["warnings"] == []
    assert [f["date"] for f in body["forecasts"]] == [
        d.isoformat() for d in next_trading_days(LAST_BAR, 3)]
    for got, want in zip(body["forecasts"], expected.steps):
        assert got["step"] == want.step
        assert got["close"] == pytest.approx(want.close, rel=1e-6)
        assert got["lower"] == pytest.approx(want.lower, rel=1e-6)
        assert got["upper"] == pytest.approx(want.upper, rel=1e-6)
        assert got["lower"] <= got["close"] <= got["upper"]
        assert got["predicted_return"] == pytest.approx(got["close"] / body["last_close"] - 1,
                                                        abs=1e-9)
    assert source.calls == []  # cached and current: no upstream call
    # The band: the model's recalibrated by ACI, 80 % by default, with its recent coverage.
    band = body["band"]
    assert (band["method"], band["level"], band["nominal_coverage"]) == ("model_aci", 80, 0.8)
    assert band["recent_sessions"] == 60
    assert band["recent_coverage"] == pytest.approx(expected.recent_coverage, abs=1e-12)
    assert band["recent_coverage"] * 60 == pytest.approx(round(band["recent_coverage"] * 60))


def test_level_picks_the_50_80_or_90_percent_band(app_parts, tiny_predictor, bars_multi):
    client = app_parts[0]
    bars = ticker_bars(bars_multi, "AAA")
    expected = tiny_predictor.forecast("AAA", bars, horizon=2)
    widths = []
    for level in (50, 80, 90):
        body = client.post("/predict/AAA", json={"horizon": 2, "level": level}).json()
        assert body["band"]["level"] == level
        assert body["band"]["nominal_coverage"] == level / 100
        for got, want in zip(body["forecasts"], expected.steps):
            assert (got["lower"], got["upper"]) == pytest.approx(want.bands[level], rel=1e-9)
        widths.append(body["forecasts"][1]["upper"] - body["forecasts"][1]["lower"])
    assert widths[0] < widths[1] < widths[2]  # nested bands
    # The same cached forecast answers every level; the default is 80.
    default = client.post("/predict/AAA", json={"horizon": 2}).json()
    assert default["forecasts"][1]["lower"] == pytest.approx(expected.steps[1].lower, rel=1e-9)
    batch = client.post("/predict", json={"tickers": ["AAA"], "horizon": 2, "level": 50}).json()
    assert batch["forecasts"][0]["forecasts"][1]["upper"] == pytest.approx(
        expected.steps[1].bands[50][1], rel=1e-9)


def test_predict_fetches_an_uncached_ticker_through_the_source(app_parts):
    client, _, source, _, _ = app_parts
    body = client.post("/predict/DDD", json={"horizon": 2}).json()
    assert body["ticker"] == "DDD" and body["seen_in_training"] is False
    assert body["as_of"] == make_bars(360)["date"].iloc[-1].date().isoformat()
    assert [c[0] for c in source.calls] == ["DDD"]
    listed = [t["ticker"] for t in client.get("/tickers").json()["tickers"]]
    assert listed == ["AAA", "BBB", "CCC", "DDD"]


@pytest.mark.parametrize("path, ticker", [
    ("/predict/%5Egspc", "^GSPC"), ("/predict/brk-b", "BRK-B"), ("/predict/EURUSD=X", "EURUSD=X"),
])
def test_yahoo_symbols_in_the_path_are_accepted_and_upper_cased(app_parts, path, ticker):
    client = app_parts[0]
    response = client.post(path)
    assert response.status_code == 200, response.text
    assert response.json()["ticker"] == ticker


def test_batch_predict_answers_each_ticker_in_order(app_parts, tiny_predictor, bars_multi):
    client, app, _, _, _ = app_parts
    response = client.post("/predict", json={"tickers": ["AAA", "bbb", "DDD", "ZZZZ"],
                                             "horizon": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [f["ticker"] for f in body["forecasts"]] == ["AAA", "BBB", "DDD"]
    assert body["errors"] == [{
        "ticker": "ZZZZ", "status": 404, "title": "Unknown ticker",
        "detail": "unknown ticker 'ZZZZ': the source returned no bars"}]
    assert app.state.forecasts.computed == 3  # one predictor call for the three
    single = tiny_predictor.forecast("BBB", ticker_bars(bars_multi, "BBB"), 2)
    assert [s["close"] for s in body["forecasts"][1]["forecasts"]] == pytest.approx(
        [s.close for s in single.steps], rel=1e-5)


def test_as_of_uses_no_later_bars(app_parts, bars_multi):
    client, app, _, _, url = app_parts
    as_of = dt.date(2021, 3, 6)  # a Saturday: the last bar used is Friday's
    first = client.post("/predict/AAA", json={"horizon": 5, "as_of": as_of.isoformat()})
    assert first.status_code == 200, first.text
    assert first.json()["as_of"] == "2021-03-05"
    # Rewrite every later bar; the forecast as of the past date must not move.
    later = bars_multi[(bars_multi["ticker"] == "AAA") & (bars_multi["date"] > "2021-03-05")]
    store_bars(url, later.assign(close=later["close"] * 1.5, adj_close=later["adj_close"] * 1.5,
                                 high=later["high"] * 1.5, open=later["open"] * 1.5,
                                 low=later["low"] * 1.5))
    app.state.forecasts.clear()
    again = client.post("/predict/AAA", json={"horizon": 5, "as_of": as_of.isoformat()})
    assert again.json() == first.json()
    assert app.state.forecasts.computed == 2  # recomputed, not served from the cache
    latest = client.post("/predict/AAA", json={"horizon": 5}).json()
    assert latest["last_close"] == pytest.approx(later["close"].iloc[-1] * 1.5)


def test_stale_bars_are_served_with_a_warning_when_the_refresh_fails(app_parts):
    client, _, source, clock, _ = app_parts
    clock.now = NOW + dt.timedelta(days=7)  # a week later: newer bars are expected
    source.fail_with = timeout_error("AAA")
    body = client.post("/predict/AAA").json()
    assert body["stale"] is True and body["as_of"] == LAST_BAR.isoformat()
    assert body["warnings"] == [(
        "bars for AAA may be out of date: yfinance unavailable for AAA after 3 attempts: "
        "timed out")]
    assert [c[0] for c in source.calls] == ["AAA"]
    # The failed refresh is not retried on the next request (throttled), still stale.
    again = client.post("/predict/AAA", json={"horizon": 2}).json()
    assert again["stale"] is True and len(source.calls) == 1


def test_a_new_bar_invalidates_the_cached_forecast(app_parts, bars_multi):
    client, app, _, clock, url = app_parts
    assert client.post("/predict/CCC").json()["as_of"] == LAST_BAR.isoformat()
    new_day = make_bars(1, start="2021-05-20", seed=99, price=float(
        ticker_bars(bars_multi, "CCC")["close"].iloc[-1]), ticker="CCC")
    store_bars(url, new_day)
    clock.now = NOW + dt.timedelta(days=1)
    body = client.post("/predict/CCC").json()
    assert body["as_of"] == "2021-05-20"
    assert body["last_close"] == pytest.approx(new_day["close"].iloc[0])
    assert app.state.forecasts.computed == 2


def test_a_warm_request_does_no_feature_work_and_no_sql(db_url, tiny_artifact, bars_multi):
    store_bars(db_url, bars_multi)
    app = create_app(api_settings(db_url, tiny_artifact.model_dir, bar_check_ttl_seconds=60),
                     source=ScriptedSource(), clock=Clock())
    with TestClient(app) as client:
        cold = client.post("/predict/BBB", json={"horizon": 4}).json()
        statements = []
        event.listen(app.state.engine, "before_cursor_execute",
                     lambda *args, **kw: statements.append(args[2]))
        warm = client.post("/predict/bbb", json={"horizon": 4}).json()
        assert warm == cold
        assert statements == []  # neither the bar check nor the bars touched the DB
        assert app.state.forecasts.computed == 1
        assert (app.state.forecasts.hits, app.state.forecasts.misses) == (1, 1)
        # Another horizon is another forecast.
        client.post("/predict/BBB", json={"horizon": 2})
        assert app.state.forecasts.computed == 2
        exposition = client.get("/metrics").text
        assert 'stockcast_forecast_cache_lookups_total{result="hit"} 1.0' in exposition
        assert 'stockcast_forecast_cache_lookups_total{result="miss"} 2.0' in exposition
        # Both cold forecasts computed in the forecast lane, none waited for or handed back.
        assert "stockcast_forecast_lane_busy 0.0" in exposition
        assert "stockcast_forecast_lane_waits_timed_out_total 0.0" in exposition
        assert "stockcast_forecast_lane_handed_back_total 0.0" in exposition


def test_served_window_equals_the_full_history_features():
    """The served read (min_bars + 300 bars) gives the backtest's full-history features."""
    from service.inference.predictor import SERVING_EXTRA_BARS

    spec = FeatureSpec()
    bars = make_bars(1500, seed=3)
    full = build_features(bars, spec).to_numpy()[-spec.window:]
    tail = bars.iloc[-(min_bars(spec) + SERVING_EXTRA_BARS):].reset_index(drop=True)
    served = build_features(tail, spec).to_numpy()[-spec.window:]
    assert np.abs(served - full).max() < 1e-9
    # Without the extra bars the exponential indicators have not converged.
    short = build_features(bars.iloc[-min_bars(spec):].reset_index(drop=True), spec)
    assert np.abs(short.to_numpy()[-spec.window:] - full).max() > 1e-4


# -- errors: status and exact problem+json bodies ---------------------------------------------


def assert_problem(response, status: int, body: dict):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json() == body
    assert "Traceback" not in response.text


def test_unknown_ticker_is_404(client):
    assert_problem(client.post("/predict/ZZZZ"), 404, {
        "type": "urn:stockcast:problem:unknown-ticker", "title": "Unknown ticker",
        "status": 404, "detail": "unknown ticker 'ZZZZ': the source returned no bars",
        "instance": "/predict/ZZZZ"})


def test_source_down_with_nothing_cached_is_503(app_parts):
    client, _, source, _, _ = app_parts
    source.fail_with = timeout_error("DDD")
    response = client.post("/predict/DDD")
    assert_problem(response, 503, {
        "type": "urn:stockcast:problem:source-unavailable", "title": "Bar source unavailable",
        "status": 503, "detail": "yfinance unavailable for DDD after 3 attempts: timed out",
        "instance": "/predict/DDD"})
    assert response.headers["retry-after"] == "60"


def test_too_little_history_is_422_naming_the_bar_counts(client, tiny_artifact):
    needed = min_bars(load_manifest(tiny_artifact.artifact_dir).spec)
    assert_problem(client.post("/predict/SHORT"), 422, {
        "type": "urn:stockcast:problem:insufficient-history", "title": "Insufficient history",
        "status": 422,
        "detail": f"SHORT has 40 usable bars; at least {needed} are needed for one window",
        "instance": "/predict/SHORT", "ticker": "SHORT", "n_bars": 40, "needed": needed})


def test_as_of_before_the_first_bar_is_422_with_zero_bars(client, tiny_artifact):
    needed = min_bars(load_manifest(tiny_artifact.artifact_dir).spec)
    response = client.post("/predict/AAA", json={"as_of": "2019-06-03"})
    assert response.status_code == 422
    assert response.json()["n_bars"] == 0 and response.json()["needed"] == needed


SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
def test_invalid_ticker_is_422_naming_the_field(client):
    message = "invalid ticker 'AA$PL': use 1-15 letters, digits, '.', '-', '^' or '='"
    assert_problem(client.post("/predict/AA$PL"), 422, {
        "type": "urn:stockcast:problem:validation", "title": "Invalid request", "status": 422,
        "detail": f"ticker: {message}", "instance": "/predict/AA$PL",
        "errors": [{"field": "ticker", "location": "path", "message": message}]})


@SQLITE_ONLY
@pytest.mark.parametrize("body, field, message", [
    ({"horizon": 0}, "horizon", "Input should be greater than or equal to 1"),
    ({"horizon": 31}, "horizon", "Input should be less than or equal to 30"),
    # Strict types: nothing is coerced into a horizon or a date.
    ({"horizon": "soon"}, "horizon", "Input should be a valid integer"),
    ({"horizon": "5"}, "horizon", "Input should be a valid integer"),
    ({"horizon": True}, "horizon", "Input should be a valid integer"),
    ({"horizon": 2.5}, "horizon", "Input should be a valid integer"),
    ({"horizon": 10**30}, "horizon", "Input should be less than or equal to 30"),
    ({"horizon": 6}, "horizon", "must be at most 5, the served model's horizon"),
    ({"as_of": "yesterday"}, "as_of", "must be a date string YYYY-MM-DD"),
    ({"as_of": 0}, "as_of", "must be a date string YYYY-MM-DD"),
    ({"as_of": "0001-01-01"}, "as_of", "must be within 1900-01-01..2100-12-31"),
    ({"as_of": "2017-02-30"}, "as_of",
     "Input should be a valid date or datetime, day value is outside expected range"),
    ({"horizon": 1, "model": "x"}, "model", "Extra inputs are not permitted"),
    ({"horizon": 1, "level": 70}, "level", "Input should be 50, 80 or 90"),
])
def test_invalid_body_is_422_naming_the_field(client, body, field, message):
    assert_problem(client.post("/predict/AAA", json=body), 422, {
        "type": "urn:stockcast:problem:validation", "title": "Invalid request", "status": 422,
        "detail": f"{field}: {message}", "instance": "/predict/AAA",
        "errors": [{"field": field, "location": "body", "message": message}]})


@SQLITE_ONLY
def test_options_sent_as_query_parameters_are_refused_not_ignored(client):
    """`?horizon=5` was a 1-day forecast, answered 200 (found by a hostile test pass)."""
    message = "this route takes no query parameters: send horizon, as_of and level in the JSON body"
    for path, body in (("/predict/AAA?horizon=5", None), ("/predict?horizon=5",
                                                          {"tickers": ["AAA"]})):
        assert_problem(client.post(path, json=body), 422, {
            "type": "urn:stockcast:problem:validation", "title": "Invalid request",
            "status": 422, "detail": f"horizon: {message}", "instance": path.split("?")[0],
            "errors": [{"field": "horizon", "location": "query", "message": message}]})
    long = client.post("/predict/AAA?" + "h" * 60_000 + "=5")  # its name clipped (review)
    assert long.status_code == 422 and len(long.content) < 1_000
    assert long.json()["errors"][0]["field"] == "h" * 40 + "... (60000 characters)"


@SQLITE_ONLY
def test_invalid_ticker_in_a_batch_names_its_position(client):
    response = client.post("/predict", json={"tickers": ["AAA", "no good"]})
    assert response.status_code == 422
    assert response.json()["errors"] == [{
        "field": "tickers.1", "location": "body",
        "message": "invalid ticker 'no good': use 1-15 letters, digits, '.', '-', '^' or '='"}]


def test_database_down_is_503(tiny_artifact):
    # Nothing listens on port 1: every connection is refused at once.
    app = create_app(api_settings("postgresql+psycopg://postgres@127.0.0.1:1/none",
                                  tiny_artifact.model_dir), source=ScriptedSource())
    with TestClient(app) as client:
        assert_problem(client.post("/predict/AAA"), 503, {
            "type": "urn:stockcast:problem:database-unavailable",
            "title": "Database unavailable", "status": 503,
            "detail": "bar database unavailable: OperationalError", "instance": "/predict/AAA"})
        ready = client.get("/readyz")
        assert ready.status_code == 503
        # Within the breaker's second the database is not asked again.
        assert ready.json()["checks"]["database"] == {"ok": False, "detail": (
            "bar database unavailable: connect failed (OperationalError); "
            "not asked again for 1 s")}
        assert client.get("/healthz").json() == {"status": "ok"}


def test_every_route_answers_a_database_outage_with_503_never_500(tiny_artifact):
    # Routes reach the DB through the bar cache, their own SQL, or a plain engine.connect();
    # one handler maps a connection failure anywhere to the same problem.
    app = create_app(api_settings("postgresql+psycopg://postgres@127.0.0.1:1/none",
                                  tiny_artifact.model_dir), source=ScriptedSource())
    outage = {"type": "urn:stockcast:problem:database-unavailable",
              "title": "Database unavailable", "status": 503}
    answers = {}
    with TestClient(app, raise_server_exceptions=False) as client:
        for route, operations in client.get("/openapi.json").json()["paths"].items():
            if "get" in operations:  # every documented GET route
                path = route.format(ticker="AAA")
                answers[path] = client.get(path)
        answers["POST /predict/AAA"] = client.post("/predict/AAA")
        answers["POST /predict"] = client.post("/predict", json={"tickers": ["AAA", "BBB"]})
    assert {"/tickers", "/bars/AAA", "/metrics/backtest", "/readyz"} <= set(answers)
    for path, response in answers.items():
        assert response.status_code != 500, f"{path}: {response.text}"
        if response.status_code >= 500:
            assert response.headers["content-type"] == PROBLEM, path
            assert response.json()["type"] in (outage["type"], "urn:stockcast:problem:not-ready")
    # The first refused connect opens the breaker: the others are not tried for a second.
    details = ("bar database unavailable: OperationalError",
               ("bar database unavailable: connect failed (OperationalError); "
                "not asked again for 1 s"))
    for path in ("/tickers", "/bars/AAA", "/metrics/backtest", "POST /predict/AAA",
                 "POST /predict"):
        body = answers[path].json()
        assert answers[path].status_code == 503, path
        assert {k: body[k] for k in outage} == outage, path
        assert body["detail"] in details, path
        assert answers[path].headers["retry-after"] == "1"
    assert answers["/readyz"].status_code == 503
    assert answers["/healthz"].status_code == 200 and answers["/models/current"].status_code == 200


def test_a_corrupt_stored_bar_is_a_500_without_a_stack_trace(sqlite_url, tiny_artifact,
                                                              bars_multi):
    from service.db.session import upgrade

    upgrade(sqlite_url)
    store_bars(sqlite_url, bars_multi)
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:  # damage a row behind the validator's back
        conn.execute(text("update bars set adj_close = -1 where ticker = 'AAA' "
                          "and date = '2021-05-18'"))
    engine.dispose()
    app = create_app(api_settings(sqlite_url, tiny_artifact.model_dir), source=ScriptedSource(),
                     clock=Clock())
    with TestClient(app, raise_server_exceptions=False) as client:
        assert_problem(client.post("/predict/AAA"), 500, {
            "type": "urn:stockcast:problem:internal", "title": "Internal server error",
            "status": 500, "detail": "an unexpected error occurred; it has been logged",
            "instance": "/predict/AAA"})


@pytest.fixture
def direct_forecasts(sqlite_url, tiny_predictor, bars_multi):
    """A ForecastService over a migrated SQLite cache of bars_multi, with a settable clock.

    Yields (service, predictor, engine, now): `now[0]` is the service's monotonic time and the
    bar check lives 1 s.
    """
    from service.api.forecasts import ForecastService
    from service.db.session import upgrade
    from service.sources.cache import BarCache

    upgrade(sqlite_url)
    store_bars(sqlite_url, bars_multi)
    engine = make_engine(sqlite_url)
    now = [100.0]
    service = ForecastService(BarCache(engine, ScriptedSource(), clock=Clock()),
                              bar_check_ttl=1.0, monotonic=lambda: now[0])
    yield service, tiny_predictor, engine, now
    engine.dispose()


def test_an_expired_bar_check_is_renewed_by_one_request_while_others_use_it(direct_forecasts):
    service, predictor, _, now = direct_forecasts
    assert service.cached(predictor, "AAA") is None  # nothing known yet
    first = service.forecast(predictor, "AAA")
    assert service.cached(predictor, "AAA").forecast == first.forecast
    now[0] += 1.5  # the shared check has expired
    assert service.cached(predictor, "AAA") is None  # this caller renews it...
    assert service.cached(predictor, "AAA").forecast == first.forecast  # ...the others don't
    renewed = service.forecast(predictor, "AAA")  # the renewal: DB read, then a cache hit
    assert renewed.cached and service.computed == 1
    now[0] += 0.5
    assert service.cached(predictor, "AAA") is not None  # fresh again, and nobody renewing
    now[0] += 1.0
    assert service.cached(predictor, "AAA") is None


def test_only_the_request_that_took_on_a_bar_check_renewal_gives_it_back(direct_forecasts):
    from service.core.errors import DatabaseUnavailable

    service, predictor, engine, now = direct_forecasts
    first = service.forecast(predictor, "AAA")
    now[0] += 1.5  # the shared check has expired
    renewer, other, third = object(), object(), object()
    assert service.cached(predictor, "AAA", claimant=renewer) is None  # renewer takes it on
    # Meanwhile another request wants a horizon nobody asked for, so it reads the last bar
    # itself, and the database fails under it: it must not drop the renewer's claim.
    with engine.begin() as conn:
        conn.execute(text("alter table bars rename to bars_away"))
    with pytest.raises(DatabaseUnavailable):
        service.forecast(predictor, "AAA", horizon=2, claimant=other)
    with engine.begin() as conn:
        conn.execute(text("alter table bars_away rename to bars"))
    assert service.cached(predictor, "AAA", claimant=third).forecast == first.forecast
    renewed = service.forecast(predictor, "AAA", claimant=renewer)  # renews, gives it back
    assert renewed.cached and renewed.forecast == first.forecast
    now[0] += 1.5  # expired again, and nobody holds a claim: the next request takes it on
    assert service.cached(predictor, "AAA", claimant=third) is None


def test_a_tickers_turn_lock_lives_only_while_requests_use_it(direct_forecasts):
    service, predictor, _, _ = direct_forecasts
    for ticker in ("AAA", "BBB", "CCC", "aaa"):
        assert service.forecast(predictor, ticker).forecast.ticker == ticker.upper()
    # One lock per ticker ever asked for would grow without bound on a public API.
    assert len(service._ticker_locks) == 0


def test_offline_only_the_first_ticker_waits_for_the_failing_source(db_url, tiny_artifact,
                                                                     bars_multi):
    store_bars(db_url, bars_multi)
    source = ScriptedSource()
    clock = Clock(NOW + dt.timedelta(days=7))  # every cached ticker wants newer bars
    settings = api_settings(db_url, tiny_artifact.model_dir, source_cooldown_seconds=300)
    with TestClient(create_app(settings, source=source, clock=clock)) as client:
        # A failing fetch takes 2 s (yfinance's retries take 2-4 s); BBB must not wait for one.
        source.fail_with, source.delay = timeout_error("AAA"), 2.0
        first = client.post("/predict/AAA").json()
        started = time.perf_counter()
        second = client.post("/predict/BBB").json()
        elapsed = time.perf_counter() - started
    assert first["stale"] and second["stale"]
    assert [c[0] for c in source.calls] == ["AAA"]  # BBB was answered without asking
    assert elapsed < 1.0
    assert second["warnings"][0].startswith(
        "bars for BBB may be out of date: scripted not asked for BBB: it failed ")


def test_a_ticker_refused_in_the_cooldown_is_asked_once_the_source_is_back(db_url, tiny_artifact,
                                                                           bars_multi):
    """The breaker's refusal is not the ticker's own failed refresh: recorded as one, it kept a
    ticker never asked from the source for refresh_interval (an hour) after the cool-down, with
    the refusal's "it failed 22 s ago" repeated meanwhile (found by a hostile test pass)."""
    store_bars(db_url, bars_multi[bars_multi["ticker"] != "CCC"])
    ccc = bars_multi[bars_multi["ticker"] == "CCC"].reset_index(drop=True)
    source = ScriptedSource({"CCC": ccc})
    clock = Clock(NOW + dt.timedelta(days=7))  # every cached ticker wants newer bars
    settings = api_settings(db_url, tiny_artifact.model_dir, source_cooldown_seconds=0.5)
    engine = make_engine(db_url)
    with TestClient(create_app(settings, source=source, clock=clock)) as client:
        source.fail_with = timeout_error("AAA")
        assert client.post("/predict/AAA").json()["stale"]  # asked, failed: the breaker opens
        refused = client.post("/predict/CCC")
        stale = client.post("/predict/BBB").json()
        with engine.connect() as conn:
            rows = conn.execute(text("select symbol from tickers where symbol = 'CCC'")).all()
        assert [c[0] for c in source.calls] == ["AAA"]  # neither was asked
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"] == "urn:stockcast:problem:source-unavailable"
        assert refused.json()["detail"].startswith("scripted not asked for CCC: it failed ")
        assert refused.headers["retry-after"] == "1"  # the cool-down's remaining 0.5 s, rounded up
        assert rows == []  # nothing recorded for a ticker nothing was tried for
        assert stale["stale"] and stale["warnings"][0].startswith(
            "bars for BBB may be out of date: scripted not asked for BBB: it failed ")
        time.sleep(0.6)  # the cool-down over, the source back
        source.fail_with = None
        back = client.post("/predict/CCC")
        bbb = client.post("/predict/BBB").json()
    engine.dispose()
    assert back.status_code == 200, back.text
    assert back.json()["as_of"] == ccc["date"].iloc[-1].date().isoformat()
    assert [c[0] for c in source.calls] == ["AAA", "CCC", "BBB"]  # each asked once it could be
    assert not any("not asked" in w for w in bbb["warnings"])


def test_a_warm_answer_is_the_body_fastapi_renders_for_the_forecast(db_url, tiny_artifact,
                                                                    bars_multi):
    """The route answers bytes it rendered once; they equal FastAPI's own ForecastPublic output."""
    from fastapi import FastAPI

    from service.api.routes.predict import forecast_public
    from service.api.schemas import ForecastPublic

    store_bars(db_url, bars_multi)
    app = create_app(api_settings(db_url, tiny_artifact.model_dir, bar_check_ttl_seconds=60),
                     source=ScriptedSource(), clock=Clock())
    with TestClient(app) as client:
        cold = client.post("/predict/BBB", json={"horizon": 4, "level": 90})
        warm = client.post("/predict/BBB", json={"horizon": 4, "level": 90})
        other_level = client.post("/predict/BBB", json={"horizon": 4, "level": 50})
        served = app.state.forecasts.cached(app.state.models.current.predictor, "BBB", 4)
    assert served is not None and served.cached

    reference = FastAPI()  # the route as it was: the model returned for FastAPI to render

    @reference.get("/", response_model=ForecastPublic)
    async def render(level: int) -> ForecastPublic:
        return forecast_public(served, 4, level)

    with TestClient(reference) as plain:
        want90, want50 = plain.get("/?level=90"), plain.get("/?level=50")
    assert warm.content == cold.content == want90.content
    assert other_level.content == want50.content != want90.content
    for response in (cold, warm):
        assert response.headers["content-type"] == want90.headers["content-type"]
        assert response.headers["content-length"] == want90.headers["content-length"]


def test_a_rendered_body_is_reused_only_for_the_same_forecast_and_freshness(direct_forecasts):
    from dataclasses import replace

    service, predictor, _, _ = direct_forecasts
    renders = []

    def render(served):
        renders.append(served)
        return f"{served.stale} {served.warnings}".encode()

    first = service.forecast(predictor, "AAA")
    assert service.rendered(first, (1, 80), render) == b"False ()"
    warm = service.cached(predictor, "AAA")
    assert service.rendered(warm, (1, 80), render) == b"False ()" and len(renders) == 1
    assert service.rendered(warm, (1, 50), render) == b"False ()" and len(renders) == 2
    # Bars served stale now (a refresh failed): another body, rendered from what is served.
    stale = replace(warm, stale=True, warnings=("out of date",))
    assert service.rendered(stale, (1, 80), render) == b"True ('out of date',)"
    assert len(renders) == 3
    # The same forecast computed again (after clear) is rendered again, not answered from before.
    service.clear()
    again = service.forecast(predictor, "AAA")
    assert again.forecast is not first.forecast
    service.rendered(again, (1, 80), render)
    assert len(renders) == 4 and renders[-1] is again
