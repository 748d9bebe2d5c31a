"""The forecast ledger against a real database, by time travel: bars up to a day, forecasts
served, later bars ingested or refreshed, scores compared with hand-computed ones."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.api.main import create_app
from service.db.ledger import read_ledger
from service.db.session import downgrade, make_engine, upgrade
from service.evaluation.ledger import score_ledger
from service.sources.ingest import ingest_frame
from tests.api_factories import Clock, api_settings, store_bars
from tests.bar_factories import ScriptedSource
from tests.tiny_model import synthetic_bars_multi

CUT = 340  # bars stored before the forecasts are served: the first CUT of each ticker


def evening_after(day: pd.Timestamp) -> dt.datetime:
    """21:00 UTC the next calendar day: the cache expects no bar newer than `day`."""
    return dt.datetime.combine(day.date() + dt.timedelta(days=1), dt.time(21), dt.UTC)


@pytest.fixture
def travel(db_url, tiny_artifact):
    """(client, clock, db url, per-ticker bars) with bars stored up to the CUT-th session."""
    bars = synthetic_bars_multi()
    per_ticker = {t: g.drop(columns="ticker").reset_index(drop=True)
                  for t, g in bars.groupby("ticker")}
    store_bars(db_url, bars.groupby("ticker").head(CUT))
    clock = Clock(evening_after(per_ticker["AAA"]["date"].iloc[CUT - 1]))
    # Upstream has three sessions of BBB beyond the stored ones.
    source = ScriptedSource({"BBB": per_ticker["BBB"].iloc[:CUT + 3]})
    app = create_app(api_settings(db_url, tiny_artifact.model_dir), source=source, clock=clock)
    with TestClient(app) as client:
        yield client, clock, db_url, per_ticker


def ledger(url: str, **filters) -> pd.DataFrame:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return read_ledger(conn, **filters)
    finally:
        engine.dispose()


def expected_scores(served: dict, bars: pd.DataFrame) -> list[dict]:
    """Each step of a served forecast scored by hand against the later bars."""
    after = bars[bars["date"] > pd.Timestamp(served["as_of"])].reset_index(drop=True)
    out = []
    for step in served["forecasts"]:
        if step["step"] > len(after):
            out.append({"horizon": step["step"], "realized_close": None})
            continue
        realized = float(after["close"].iloc[step["step"] - 1])
        out.append({"horizon": step["step"], "realized_close": realized,
                    "realized_date": after["date"].iloc[step["step"] - 1].date(),
                    "error": step["close"] - realized,
                    "naive_error": served["last_close"] - realized,
                    "inside": step["lower"] <= realized <= step["upper"]})
    return out


def assert_scored_as(rows: pd.DataFrame, expected: list[dict]) -> None:
    rows = rows.set_index("horizon")
    for want in expected:
        got = rows.loc[want["horizon"]]
        if want["realized_close"] is None:
            assert pd.isna(got["realized_close"]) and got["inside"] is None
            continue
        assert got["realized_date"] == want["realized_date"]
        for key in ("realized_close", "error", "naive_error"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key
        assert bool(got["inside"]) is want["inside"]


def test_live_forecasts_are_scored_when_their_bars_arrive(travel):
    client, clock, url, per_ticker = travel
    aaa = client.post("/predict/AAA", json={"horizon": 3}).json()
    bbb = client.post("/predict", json={"tickers": ["BBB"], "horizon": 2}).json()["forecasts"][0]
    cut_day = per_ticker["AAA"]["date"].iloc[CUT - 1].date()
    assert aaa["as_of"] == bbb["as_of"] == cut_day.isoformat()
    # Served again (another horizon that overlaps, the same one warm): recorded once.
    client.post("/predict/AAA", json={"horizon": 2})
    client.post("/predict/AAA", json={"horizon": 3})
    recorded = ledger(url)
    assert sorted(zip(recorded["ticker"], recorded["horizon"])) == [
        ("AAA", 1), ("AAA", 2), ("AAA", 3), ("BBB", 1), ("BBB", 2)]
    assert recorded["realized_close"].isna().all()
    assert ledger(url, ticker="AAA", horizon=3)["median"].iloc[0] == pytest.approx(
        aaa["forecasts"][2]["close"])
    # Each row holds the served 80 % band and says so (the model has 7 quantiles, 0.05..0.95:
    # the rows were labelled with those ends).
    assert (recorded["lower_quantile"] == 0.1).all() and (recorded["upper_quantile"] == 0.9).all()
    assert ledger(url, ticker="AAA", horizon=3)["upper"].iloc[0] == pytest.approx(
        aaa["forecasts"][2]["upper"])

    # Two more AAA sessions through a bulk ingest: h=1 and h=2 are due, h=3 is not yet.
    engine = make_engine(url)
    try:
        later = per_ticker["AAA"].iloc[CUT:CUT + 2].assign(ticker="AAA")
        ingest_frame(engine, later, source="test", after_write=score_ledger)
    finally:
        engine.dispose()
    aaa_rows = ledger(url, ticker="AAA")
    assert_scored_as(aaa_rows, expected_scores(aaa, per_ticker["AAA"].iloc[:CUT + 2]))
    assert aaa_rows.set_index("horizon").loc[3, "realized_close"] != aaa_rows.set_index(
        "horizon").loc[3, "realized_close"]  # NaN: not yet due

    # Three days later BBB is refreshed from the source by a request: its forecasts are due.
    clock.now = evening_after(per_ticker["BBB"]["date"].iloc[CUT + 2])
    newer = client.post("/predict/BBB", json={"horizon": 1}).json()
    assert newer["as_of"] == per_ticker["BBB"]["date"].iloc[CUT + 2].date().isoformat()
    bbb_rows = ledger(url, ticker="BBB", model_version=bbb["model_version"])
    first = bbb_rows[bbb_rows["as_of"] == cut_day]
    assert_scored_as(first, expected_scores(bbb, per_ticker["BBB"].iloc[:CUT + 3]))
    # The new live forecast is recorded, unscored.
    assert bbb_rows[bbb_rows["as_of"] != cut_day]["realized_close"].isna().all()

    # GET /metrics/live: pooled h=1 over AAA and BBB, from the hand-computed errors.
    h1 = [expected_scores(aaa, per_ticker["AAA"].iloc[:CUT + 2])[0],
          expected_scores(bbb, per_ticker["BBB"].iloc[:CUT + 3])[0]]
    body = client.get("/metrics/live", params={"horizon": 1}).json()["metrics"]
    pooled = next(r for r in body if r["ticker"] == "*")
    mae = sum(abs(e["error"]) for e in h1) / 2
    naive = sum(abs(e["naive_error"]) for e in h1) / 2
    assert pooled["n_forecasts"] == 3 and pooled["n_scored"] == 2
    assert pooled["mae"] == pytest.approx(mae) and pooled["naive_mae"] == pytest.approx(naive)
    assert pooled["rel_mae"] == pytest.approx(mae / naive)
    assert pooled["coverage"] == pytest.approx(sum(e["inside"] for e in h1) / 2)
    per = {r["ticker"]: r for r in body if r["ticker"] != "*"}
    assert (per["AAA"]["n_forecasts"], per["BBB"]["n_forecasts"]) == (1, 2)
    three = client.get("/metrics/live", params={"ticker": "aaa", "horizon": 3}).json()
    assert three["metrics"] == [{"ticker": "AAA", "horizon": 3,
                                 "model_version": aaa["model_version"], "n_forecasts": 1,
                                 "n_scored": 0, "mae": None, "naive_mae": None,
                                 "rel_mae": None, "coverage": None}]
    exposition = client.get("/metrics").text
    assert f'stockcast_live_mae{{horizon="1",model_version="{aaa["model_version"]}"}} ' \
        in exposition


def test_as_of_what_ifs_never_enter_the_ledger(travel):
    client, _, url, per_ticker = travel
    days = per_ticker["AAA"]["date"]
    for as_of in (days.iloc[CUT - 6], days.iloc[CUT - 2]):
        body = client.post("/predict/AAA", json={"horizon": 2,
                                                 "as_of": as_of.date().isoformat()}).json()
        assert body["as_of"] == as_of.date().isoformat()
    client.post("/predict", json={"tickers": ["AAA", "CCC"], "horizon": 2,
                                  "as_of": days.iloc[CUT - 3].date().isoformat()})
    assert ledger(url).empty
    # CCC asked live afterwards: only that forecast, as of the latest bar, is recorded.
    client.post("/predict", json={"tickers": ["CCC"], "horizon": 2})
    rows = ledger(url)
    assert set(rows["as_of"]) == {days.iloc[CUT - 1].date()} and set(rows["ticker"]) == {"CCC"}


def test_a_forecast_asked_as_of_the_latest_bar_is_the_live_one_and_recorded_once(travel):
    client, _, url, per_ticker = travel
    latest = per_ticker["AAA"]["date"].iloc[CUT - 1].date().isoformat()
    # What the web page asks: as of the range's end, which is the latest cached bar.
    what_if = client.post("/predict/AAA", json={"horizon": 2, "as_of": latest}).json()
    live = client.post("/predict/AAA", json={"horizon": 2}).json()
    assert what_if["forecasts"] == live["forecasts"]
    rows = ledger(url)
    assert list(zip(rows["as_of"].map(str), rows["horizon"])) == [(latest, 1), (latest, 2)]


def test_metrics_live_is_empty_before_anything_is_served_and_checks_its_input(travel):
    client = travel[0]
    assert client.get("/metrics/live").json() == {"metrics": []}
    bad = client.get("/metrics/live", params={"ticker": "NOT A TICKER"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith(
        "application/problem+json")
    assert bad.json()["errors"] == [{  # a query parameter (it said location path)
        "field": "ticker", "location": "query",
        "message": "invalid ticker 'NOT A TICKER': use 1-15 letters, digits, '.', '-', '^' or '='"}]
    assert client.get("/metrics/live", params={"horizon": 0}).status_code == 422
    # A NUL byte is a client's error on every backend (Postgres refused it as a DataError, which
    # answered 503 "database unavailable"; found by review), named by the field.
    for params in ({"model_version": "\x00"}, {"model_version": "a\x00b", "ticker": "AAA"}):
        response = client.get("/metrics/live", params=params)
        assert response.status_code == 422, params
        assert response.json()["detail"].startswith("model_version: String should match pattern")


def test_models_current_and_metrics_show_input_drift(travel, tiny_artifact):
    client = travel[0]
    drift = client.get("/models/current").json()["drift"]
    features = client.get("/models/current").json()["features"]
    assert sorted(drift["psi"]) == sorted(features)
    assert drift["recent_sessions"] == 60
    assert all(value >= 0 for value in drift["psi"].values())
    exposition = client.get("/metrics").text
    assert 'stockcast_feature_psi{feature="log_return",model_version=' in exposition


def test_source_status_says_what_the_last_answer_was(db_url, tiny_artifact):
    from tests.bar_factories import timeout_error

    bars = synthetic_bars_multi()
    store_bars(db_url, bars)
    later = Clock(evening_after(pd.Timestamp("2021-05-24")))  # AAA's bars are now due
    source = ScriptedSource({})
    source.fail_with = timeout_error("AAA")
    settings = api_settings(db_url, tiny_artifact.model_dir)
    with TestClient(create_app(settings, source=source, clock=later)) as client:
        down = client.get("/source", params={"ticker": "AAA"}).json()
        assert (down["name"], down["reachable"]) == ("scripted", False)
        assert down["detail"] == str(timeout_error("AAA"))
    # Another worker (a restart): the refresh is throttled, the stored outcome still says so.
    with TestClient(create_app(settings, source=ScriptedSource({}), clock=later)) as client:
        again = client.get("/source", params={"ticker": "AAA"}).json()
        assert again["reachable"] is False
        assert again["detail"] == f"the last refresh of AAA failed: {timeout_error('AAA')}"
        assert client.get("/source").json()["reachable"] is None  # no ticker: not asked


def test_recording_counts_only_new_forecasts_on_every_backend(db_url):
    # psycopg reports rowcount -1 for INSERT .. ON CONFLICT DO NOTHING; the count must be real.
    from service.db.ledger import FORECAST_COLUMNS, record_forecasts

    row = dict(zip(FORECAST_COLUMNS, ("AAA", dt.date(2017, 1, 3), "v1", 1, dt.date(2017, 1, 4),
                                      10.0, 9.0, 10.0, 11.0, 0.1, 0.9), strict=True))
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            assert record_forecasts(conn, [row, {**row, "horizon": 2}]) == 2
        with engine.begin() as conn:
            assert record_forecasts(conn, [row, {**row, "horizon": 3}]) == 1
    finally:
        engine.dispose()
    assert sorted(ledger(db_url)["horizon"]) == [1, 2, 3]


def test_migration_0007_relabels_the_rows_recorded_with_the_outermost_quantiles(travel):
    """Rows recorded before 0007 by a 7-quantile model say 0.05/0.95 but hold the 10-90 % band:
    relabelled 0.1/0.9, values untouched; rows already labelled 0.1/0.9 (BBB's, as a 3-quantile
    model's were) stay as they are, and the downgrade changes nothing."""
    client, _, url, _ = travel
    client.post("/predict/AAA", json={"horizon": 2})
    client.post("/predict/BBB", json={"horizon": 1})
    engine = make_engine(url)
    try:
        with engine.begin() as conn:  # as the code before 0007 labelled AAA's rows
            conn.execute(text("update ledger_forecasts set lower_quantile = 0.05, "
                              "upper_quantile = 0.95 where ticker = 'AAA'"))
        before = ledger(url)
        downgrade(url, "0006")
        assert ledger(url).equals(before)
        upgrade(url)
        after = ledger(url)
        assert (after["lower_quantile"] == 0.1).all() and (after["upper_quantile"] == 0.9).all()
        changed = ["lower_quantile", "upper_quantile"]
        assert after.drop(columns=changed).equals(before.drop(columns=changed))
    finally:
        engine.dispose()
