"""The serving stores on real SQLite and PostgreSQL: stored features are build_features' values,
kept fresh as bars change; a cold forecast from the stores equals the one from bars; a missing
or stale store falls back to the bars and answers the same."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, inspect, text

from service.api.main import create_app
from service.artifacts.manifest import load_manifest
from service.artifacts.profile import write_profile
from service.db import features as store_db
from service.db.bars import bar_revisions, read_bars
from service.db.session import downgrade, make_engine, upgrade
from service.evaluation import feature_store
from service.evaluation.drift import training_features
from service.evaluation.feature_store import (
    after_bars_written,
    prewarm,
    stored_features,
    stored_inputs,
    update_features,
)
from service.forecasting.drift import feature_profile
from service.forecasting.features import build_features
from service.forecasting.spec import BAND_LEVELS
from service.inference.predictor import Predictor
from service.sources.ingest import ingest_frame
from tests.api_factories import LAST_BAR, api_settings
from tests.bar_factories import make_bars, random_future
from tests.tiny_model import synthetic_bars_multi


def _ingest(engine, frame: pd.DataFrame) -> None:
    ingest_frame(engine, frame, source="test", after_write=after_bars_written)


def _ticker(frame: pd.DataFrame, ticker: str) -> pd.DataFrame:
    return frame[frame["ticker"] == ticker].drop(columns="ticker").reset_index(drop=True)


def _assert_stored_equal_built(engine, frame: pd.DataFrame) -> None:
    with engine.connect() as conn:
        for ticker in frame["ticker"].unique():
            expected = build_features(_ticker(frame, ticker))
            pd.testing.assert_frame_equal(stored_features(conn, ticker), expected,
                                          check_freq=False, check_exact=True)


def test_ingest_stores_exactly_what_build_features_gives(engine):
    frame = synthetic_bars_multi()
    _ingest(engine, frame)
    _assert_stored_equal_built(engine, frame)
    with engine.begin() as conn:  # nothing changed: nothing is recomputed
        assert update_features(conn) == 0


def test_new_bars_append_and_a_rebased_history_replaces(engine):
    frame = synthetic_bars_multi()
    older = frame.groupby("ticker").head(300)
    _ingest(engine, older)
    with engine.connect() as conn:
        before = store_db.read_features(conn, feature_store.STORE_VERSION, "AAA", 14)
    _ingest(engine, frame)  # 60 new sessions per ticker
    _assert_stored_equal_built(engine, frame)
    with engine.connect() as conn:
        after = store_db.read_features(conn, feature_store.STORE_VERSION, "AAA", 14)
    np.testing.assert_array_equal(after[1][: len(before[1])], before[1])

    # A split re-adjusts adj_close before it: every stored row of that ticker is recomputed.
    rebased = frame.copy()
    early = (rebased["ticker"] == "BBB") & (rebased["date"] < rebased["date"].iloc[200])
    rebased.loc[early, "adj_close"] *= 0.5
    _ingest(engine, rebased)
    _assert_stored_equal_built(engine, rebased)


def test_two_feature_updates_of_a_ticker_are_serialised_and_the_stored_set_is_true(
        db_url, engine, monkeypatch):
    """A second updater read the set the first was replacing (its write not committed yet),
    appended nothing and labelled the first's rows with its own revision: rows of bars no
    longer stored, marked fresh for good (a hostile pass, both backends). Now the second
    reads nothing before the first commits, and the stored set is its bars' features."""
    frame = synthetic_bars_multi()
    aaa = frame[frame["ticker"] == "AAA"].reset_index(drop=True)
    _ingest(engine, aaa)  # revision 1, its features stored
    shifted = aaa.assign(**{c: aaa[c] * 1.05 for c in ("open", "high", "low", "close",
                                                       "adj_close")})
    ingest_frame(engine, shifted, source="test")  # revision 2, features not updated yet
    first_wrote, release = threading.Event(), threading.Event()
    events: list[str] = []
    real_write, real_revisions = store_db.write_features, feature_store.bar_revisions

    def write_then_wait(conn, version, updates):
        n = real_write(conn, version, updates)
        if threading.current_thread().name == "first":
            first_wrote.set()
            release.wait(10)
        return n

    def revisions(conn, tickers=None):
        events.append(f"{threading.current_thread().name} reads")
        return real_revisions(conn, tickers)

    monkeypatch.setattr(store_db, "write_features", write_then_wait)
    monkeypatch.setattr(feature_store, "bar_revisions", revisions)
    other = make_engine(db_url)

    def first():
        with engine.begin() as conn:
            update_features(conn, ["AAA"])

    def second():  # the original bars again, then their features (another writer)
        ingest_frame(other, aaa, source="test", after_write=after_bars_written)

    one = threading.Thread(target=first, name="first")
    two = threading.Thread(target=second, name="second")
    one.start()
    assert first_wrote.wait(10)
    two.start()
    two.join(1.0)  # time enough to read, were it not held
    events.append("first may commit")
    release.set()
    one.join(10)
    two.join(30)
    other.dispose()
    assert events == ["first reads", "first may commit", "second reads"]
    with engine.connect() as conn:
        fset = store_db.feature_sets(conn, feature_store.STORE_VERSION, ["AAA"])["AAA"]
        revision = bar_revisions(conn, ["AAA"])["AAA"]
    assert fset.bars_revision == revision
    _assert_stored_equal_built(engine, frame[frame["ticker"] == "AAA"])


def test_a_new_feature_version_recomputes_every_ticker(engine, monkeypatch):
    frame = synthetic_bars_multi()
    _ingest(engine, frame)
    monkeypatch.setattr(feature_store, "STORE_VERSION", "99-test")
    with engine.begin() as conn:
        assert update_features(conn) == 3
    _assert_stored_equal_built(engine, frame)  # read under the new version


def test_prewarm_drops_the_rows_of_older_feature_versions(engine, tiny_predictor, monkeypatch):
    # An upgrade brings a new feature version: its rows are computed under their own key, and
    # the old version's (never read again) are dropped by the next prewarm, the current kept.
    frame = synthetic_bars_multi()
    _ingest(engine, frame)  # rows under the version of this code
    current = feature_store.STORE_VERSION
    with engine.connect() as conn:
        kept = conn.execute(text("select count(*) from feature_rows")).scalar()
    monkeypatch.setattr(feature_store, "STORE_VERSION", "0-older")
    with engine.begin() as conn:  # as the code before the upgrade stored them
        assert update_features(conn) == 3
    monkeypatch.undo()
    report = prewarm(engine, tiny_predictor)
    assert report.pruned == kept and "older feature versions dropped" in report.summary()
    with engine.connect() as conn:
        versions = conn.execute(text("select version, count(*) from feature_rows "
                                     "group by version")).all()
        sets = conn.execute(text("select distinct version from feature_sets")).scalars().all()
    assert [tuple(v) for v in versions] == [(current, kept)] and sets == [current]
    _assert_stored_equal_built(engine, frame)
    assert prewarm(engine, tiny_predictor).pruned == 0


def test_stored_rows_at_t_ignore_the_bars_after_t(engine):
    frame = synthetic_bars_multi()
    _ingest(engine, frame)
    t = frame["date"].iloc[250]
    with engine.connect() as conn:
        before = {ticker: stored_features(conn, ticker) for ticker in ("AAA", "BBB", "CCC")}
    # CCC's bars after t redrawn at random (prices, adj_close / close, volume), written over
    # the stored ones: the rows at or before t stay to the bit, every later one is rewritten.
    scrambled = frame.copy()
    ccc = scrambled["ticker"] == "CCC"
    scrambled.loc[ccc] = random_future(frame[ccc], t, seed=7)
    _ingest(engine, scrambled)
    with engine.connect() as conn:
        after = {ticker: stored_features(conn, ticker) for ticker in ("AAA", "BBB", "CCC")}
    pd.testing.assert_frame_equal(after["CCC"].loc[:t], before["CCC"].loc[:t], check_exact=True,
                                  check_freq=False)
    later = after["CCC"].index > t
    assert later.sum() == 360 - 251
    pd.testing.assert_index_equal(after["CCC"].index, before["CCC"].index)
    assert (after["CCC"][later].to_numpy() != before["CCC"][later].to_numpy()).any(axis=1).all()
    for ticker in ("AAA", "BBB"):  # the other tickers' rows are untouched
        pd.testing.assert_frame_equal(after[ticker], before[ticker], check_exact=True,
                                      check_freq=False)
    _assert_stored_equal_built(engine, scrambled)


def test_migration_0004_downgrades_to_0003_and_back(db_url):
    engine = make_engine(db_url)
    _ingest(engine, synthetic_bars_multi())
    downgrade(db_url, "0003")
    tables = set(inspect(engine).get_table_names())
    assert not {"feature_rows", "feature_sets", "band_states"} & tables
    assert "bars_revision" not in {c["name"] for c in inspect(engine).get_columns("tickers")}
    upgrade(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from bars")).scalar() == 3 * 360
        assert conn.execute(text("select count(*) from feature_rows")).scalar() == 0
    with engine.begin() as conn:  # the revision column is back at 0; the store refills
        assert update_features(conn) == 3
    engine.dispose()


# -- cold forecasts through the API ---------------------------------------------------------------


@pytest.fixture
def store_app(db_url, tiny_artifact, tiny_predictor):
    """(client, forecast service, engine, bars) of an app over the tiny bars, stores prewarmed."""
    frame = synthetic_bars_multi()
    engine = make_engine(db_url)
    _ingest(engine, frame)
    report = prewarm(engine, tiny_predictor)
    assert (report.computed, report.fresh) == (3, 0)
    app = create_app(api_settings(db_url, tiny_artifact.model_dir))
    with TestClient(app) as client:
        yield client, app.state.forecasts, engine, frame
    engine.dispose()


def _from_bars(predictor, engine, ticker, horizon):
    bars = read_bars(engine, ticker, last=predictor.serving_bars)
    return predictor.forecast(ticker, bars, horizon)


def _assert_same_forecast(body: dict, expected, level: int = 80) -> None:
    assert body["as_of"] == expected.as_of.isoformat()
    assert body["last_close"] == expected.last_close
    assert body["band"]["recent_sessions"] == expected.recent_sessions
    assert body["band"]["recent_coverage"] == pytest.approx(expected.recent_coverage)
    for got, step in zip(body["forecasts"], expected.steps, strict=True):
        assert got["date"] == step.date.isoformat()
        # Equal to float32 rounding: a stored window runs one onnxruntime call of its own (a
        # stored forecast is exact: _assert_exactly).
        assert got["close"] == pytest.approx(step.close, rel=1e-6)
        assert got["lower"] == pytest.approx(step.bands[level][0], rel=1e-6)
        assert got["upper"] == pytest.approx(step.bands[level][1], rel=1e-6)


@pytest.mark.parametrize("horizon", [1, 5])
def test_cold_forecast_from_the_stores_equals_the_forecast_from_bars(store_app, tiny_predictor,
                                                                     horizon):
    client, service, engine, _ = store_app
    body = client.post("/predict/BBB", json={"horizon": horizon}).json()
    assert service.from_store == 1
    _assert_same_forecast(body, _from_bars(tiny_predictor, engine, "BBB", horizon))
    batch = client.post("/predict", json={"tickers": ["AAA", "CCC"], "horizon": horizon,
                                          "level": 90}).json()
    assert service.from_store == 3 and not batch["errors"]
    for got in batch["forecasts"]:
        _assert_same_forecast(got, _from_bars(tiny_predictor, engine, got["ticker"], horizon),
                              level=90)


def _assert_exactly(body: dict, expected, level: int = 80) -> None:
    """Every served figure equal to the forecast from bars, not merely to float32 rounding."""
    assert (body["as_of"], body["last_close"]) == (expected.as_of.isoformat(),
                                                   expected.last_close)
    assert body["band"]["recent_coverage"] == expected.recent_coverage
    # (besides the bar check's own: the tiny app has no source, so its bars are "out of date")
    assert [w for w in body["warnings"] if not w.startswith("bars for")] == list(
        expected.warnings)
    assert [(s["close"], s["lower"], s["upper"], s["predicted_return"])
            for s in body["forecasts"]] == [(s.close, *s.bands[level], s.predicted_return)
                                            for s in expected.steps]


@pytest.mark.parametrize("horizon", [1, 5])  # the tiny model's horizons: 1..5
def test_a_prewarmed_forecast_runs_no_model_and_equals_the_forecast_from_bars_exactly(
        store_app, tiny_predictor, monkeypatch, horizon):
    # The prewarm stored each ticker's forecast (the model's output at its last bar) with its
    # band state: a cold request reads that row and never calls onnxruntime.
    client, service, engine, _ = store_app
    expected = {t: _from_bars(tiny_predictor, engine, t, horizon) for t in ("AAA", "BBB", "CCC")}

    def no_model_run(self, *args, **kwargs):
        raise AssertionError("the model ran for a prewarmed forecast")

    monkeypatch.setattr(Predictor, "predict", no_model_run)
    body = client.post("/predict/BBB", json={"horizon": horizon}).json()
    _assert_exactly(body, expected["BBB"])
    batch = client.post("/predict", json={"tickers": ["AAA", "CCC"], "horizon": horizon,
                                          "level": 50}).json()
    assert not batch["errors"] and service.from_store == 3
    for got in batch["forecasts"]:
        _assert_exactly(got, expected[got["ticker"]], level=50)


def test_a_state_stored_without_its_forecast_runs_the_window_and_prewarm_fills_it(
        store_app, tiny_predictor):
    # States written before migration 0006 hold no forecast: served through the stored window
    # and one onnxruntime call (equal to float32 rounding), and the next prewarm stores them.
    client, service, engine, _ = store_app
    with engine.begin() as conn:
        conn.execute(text("update band_states set quantiles = null, warnings = null"))
    body = client.post("/predict/AAA", json={"horizon": 5}).json()
    assert service.from_store == 1
    _assert_same_forecast(body, _from_bars(tiny_predictor, engine, "AAA", 5))
    report = prewarm(engine, tiny_predictor)
    assert (report.computed, report.fresh) == (3, 0)
    with engine.connect() as conn:
        stored = stored_inputs(conn, tiny_predictor, ["AAA", "BBB", "CCC"], 5)
    assert all(item.state.quantiles is not None and item.features is None
               for item in stored.values()) and len(stored) == 3


def test_a_stored_forecast_warns_as_the_training_profile_it_is_served_with(
        db_url, tiny_artifact, tiny_predictor, tmp_path):
    # The training profile is outside the version hash (`stockcast backtest` writes it into an
    # artifact already served): states stored under no profile must not serve their warnings
    # (none) under one. The window is checked instead, and the next prewarm stores them again.
    engine = make_engine(db_url)
    frame = synthetic_bars_multi()
    _ingest(engine, frame)
    assert tiny_predictor.training_profile is None
    prewarm(engine, tiny_predictor)
    artifact = tmp_path / tiny_artifact.artifact_dir.name
    shutil.copytree(tiny_artifact.artifact_dir, artifact)
    manifest = load_manifest(artifact)
    reference = training_features(frame, manifest).iloc[:40]  # narrow: the last windows leave it
    write_profile(manifest, feature_profile(reference), len(reference))
    profiled = Predictor.load(artifact, "cpu")
    assert profiled.model_version == tiny_predictor.model_version
    tickers = ["AAA", "BBB", "CCC"]
    expected = {t: _from_bars(profiled, engine, t, 5).warnings for t in tickers}
    assert all(expected.values())
    for _ in range(2):  # before and after the prewarm under the profile
        with engine.connect() as conn:
            stored = stored_inputs(conn, profiled, tickers, 5)
        got = profiled.forecast_stored([stored[t] for t in tickers], 5)
        assert {f.ticker: f.warnings for f in got} == expected
        prewarm(engine, profiled)
    assert all(item.state.quantiles is not None for item in stored.values())
    with engine.begin() as conn:  # warnings naming no profile (0006 as first written)
        conn.execute(text("update band_states set warnings = '[]'"))
        stored = stored_inputs(conn, profiled, tickers, 5)
    assert all(item.state.quantiles is None and item.features is not None
               for item in stored.values())
    engine.dispose()


def test_a_state_rewritten_by_code_before_0006_does_not_serve_its_old_forecast(
        db_url, tiny_predictor):
    # A worker or scheduler still on 0005's code, running against the upgraded database (a
    # rolling deploy), upserts a state from re-based bars: it sets the revision and Q̂ but not
    # the columns it does not know. The output left there is the old bars' forecast.
    engine = make_engine(db_url)
    frame = synthetic_bars_multi()
    _ingest(engine, frame)
    prewarm(engine, tiny_predictor)
    rebased = frame[frame["ticker"] == "AAA"].copy()
    rebased.loc[rebased.index[:-5], "adj_close"] *= 0.9  # same last bar, another window
    _ingest(engine, rebased)
    [(expected, state, revision)] = feature_store.forecasts_from_bars(
        engine, tiny_predictor, ["AAA"], 5)
    with engine.begin() as conn:  # 0005's upsert: every column it knows, nothing else
        conn.execute(text(
            "update band_states set bars_revision = :revision, qhat = :qhat, horizons = 5, "
            "last_close = :close, recent_coverage = :coverage, recent_sessions = :sessions "
            "where ticker = 'AAA'"),
            {"revision": revision, "qhat": store_db.encode(state.qhat),
             "close": state.last_close, "coverage": state.recent_coverage,
             "sessions": state.recent_sessions})
        stored = stored_inputs(conn, tiny_predictor, ["AAA"], 5)
    got = tiny_predictor.forecast_stored([stored["AAA"]], 5)[0]
    assert [s.close for s in got.steps] == pytest.approx([s.close for s in expected.steps],
                                                         rel=1e-6)
    engine.dispose()


def test_migration_0006_downgrades_to_0005_and_back(db_url, tiny_predictor):
    engine = make_engine(db_url)
    _ingest(engine, synthetic_bars_multi())
    prewarm(engine, tiny_predictor)
    downgrade(db_url, "0005")
    columns = {c["name"] for c in inspect(engine).get_columns("band_states")}
    assert not {"quantiles", "warnings"} & columns
    upgrade(db_url)
    with engine.connect() as conn:  # the states kept, without their forecasts: served by window
        stored = stored_inputs(conn, tiny_predictor, ["AAA"], 5)
    assert stored["AAA"].state.quantiles is None and stored["AAA"].features is not None
    engine.dispose()


def test_a_two_sided_band_state_is_stored_per_tail_and_served_as_from_bars(
        engine, tiny_predictor, tiny_two_sided_predictor):
    """A two-sided band's state (a Q̂ per level and tail) goes through the store and serves the
    from-bars band; the symmetric artifact's states of the same bars stay beside it in their
    own shape (states are keyed by model version, and the band settings are in the version)."""
    _ingest(engine, synthetic_bars_multi())
    two, symmetric = tiny_two_sided_predictor, tiny_predictor
    assert two.model_version != symmetric.model_version
    assert prewarm(engine, two).computed == 3
    assert prewarm(engine, symmetric).computed == 3  # the other version's states do not count
    levels = len(BAND_LEVELS)
    with engine.connect() as conn:
        stored = stored_inputs(conn, two, ["AAA", "BBB", "CCC"], 5)
        old_shape = stored_inputs(conn, symmetric, ["AAA", "BBB", "CCC"], 5)
    assert set(stored) == set(old_shape) == {"AAA", "BBB", "CCC"}
    for ticker, item in stored.items():
        assert item.state.qhat.shape == (two.spec.horizon, 2 * levels)
        assert old_shape[ticker].state.qhat.shape == (symmetric.spec.horizon, levels)
        got = two.forecast_stored([item], 5)[0]
        expected = _from_bars(two, engine, ticker, 5)
        assert got.as_of == expected.as_of and got.recent_coverage == expected.recent_coverage
        for g, e in zip(got.steps, expected.steps, strict=True):
            for pct in (50, 80, 90):
                assert g.bands[pct] == pytest.approx(e.bands[pct], rel=1e-6)
        # ... and the symmetric artifact's stored band is its own, not the two-sided one.
        other = symmetric.forecast_stored([old_shape[ticker]], 5)[0]
        assert other.steps[4].bands[80] == pytest.approx(
            _from_bars(symmetric, engine, ticker, 5).steps[4].bands[80], rel=1e-6)
        assert other.steps[4].bands[80] != pytest.approx(got.steps[4].bands[80], rel=1e-6)


def test_a_missing_or_stale_store_falls_back_to_the_bars(store_app, tiny_predictor):
    client, service, engine, frame = store_app
    with engine.begin() as conn:
        conn.execute(text("delete from band_states where ticker = 'AAA'"))
    missing = client.post("/predict/AAA", json={"horizon": 5}).json()
    assert service.from_store == 0
    _assert_same_forecast(missing, _from_bars(tiny_predictor, engine, "AAA", 5))
    with engine.connect() as conn:  # the fallback stored the state it was served with
        assert set(stored_inputs(conn, tiny_predictor, ["AAA"], 5)) == {"AAA"}

    # A new bar of BBB: its state is stale (another revision), its features follow the write.
    last = _ticker(frame, "BBB").iloc[-1]
    newer = pd.DataFrame([{**last, "ticker": "BBB", "date": last["date"] + pd.offsets.BDay(),
                           "close": last["close"] * 1.01, "adj_close": last["adj_close"] * 1.01,
                           "high": max(last["high"], last["close"] * 1.01)}])
    _ingest(engine, newer)
    service.clear()
    stale = client.post("/predict/BBB", json={"horizon": 5}).json()
    assert service.from_store == 0
    _assert_same_forecast(stale, _from_bars(tiny_predictor, engine, "BBB", 5))
    assert stale["as_of"] == (last["date"] + pd.offsets.BDay()).date().isoformat()


def test_a_state_of_fewer_horizons_is_not_served_beyond_them(store_app, tiny_predictor):
    client, service, engine, _ = store_app
    with engine.begin() as conn:
        conn.execute(text("delete from band_states"))
    client.post("/predict/CCC", json={"horizon": 2})  # from bars: a state of slots 1..2
    service.clear()
    body = client.post("/predict/CCC", json={"horizon": 4}).json()
    assert service.from_store == 0
    _assert_same_forecast(body, _from_bars(tiny_predictor, engine, "CCC", 4))
    service.clear()
    client.post("/predict/CCC", json={"horizon": 1})  # slots 1..4 stored now: served
    assert service.from_store == 1


def test_a_batch_of_more_than_100_tickers_is_answered(db_url, tiny_artifact, tiny_predictor):
    tickers = [f"T{i:03d}" for i in range(120)]
    frame = pd.concat([make_bars(200, start="2020-08-03", seed=i, ticker=t)
                       for i, t in enumerate(tickers)], ignore_index=True)
    engine = make_engine(db_url)
    _ingest(engine, frame)
    prewarm(engine, tiny_predictor, tickers[:110])  # 10 left to the bars
    app = create_app(api_settings(db_url, tiny_artifact.model_dir,
                                  refresh_interval_minutes=1e6))
    with TestClient(app) as client:
        body = client.post("/predict", json={"tickers": [*tickers, "NOPE"], "horizon": 2})
        assert body.status_code == 200, body.text
        assert [f["ticker"] for f in body.json()["forecasts"]] == tickers
        assert [e["ticker"] for e in body.json()["errors"]] == ["NOPE"]
        assert app.state.forecasts.from_store == 110
        for got in body.json()["forecasts"][105:115]:
            _assert_same_forecast(got, _from_bars(tiny_predictor, engine, got["ticker"], 2))
    engine.dispose()


def test_a_batch_reads_its_tickers_states_in_one_statement(db_url, tiny_artifact,
                                                          tiny_predictor):
    # The bar check of a cold batch: one SELECT of the tickers' states for all of them (not one
    # per ticker), with the same answers as each ticker asked on its own; the stale flags and
    # warnings of a failed refresh included.
    tickers = [f"T{i:03d}" for i in range(30)]
    frame = pd.concat([make_bars(200, start="2020-08-03", seed=i, ticker=t)
                       for i, t in enumerate(tickers)], ignore_index=True)
    engine = make_engine(db_url)
    _ingest(engine, frame)
    prewarm(engine, tiny_predictor, tickers)
    with engine.begin() as conn:  # refreshed just now (none due); T001's refresh failed
        now = {"at": pd.Timestamp.now("UTC").to_pydatetime()}
        conn.execute(text("UPDATE tickers SET last_refresh_status = 'ok', "
                          "last_refresh_at = :at"), now)
        conn.execute(text("UPDATE tickers SET last_refresh_status = 'error', "
                          "last_refresh_error = 'source down' WHERE symbol = 'T001'"))
    app = create_app(api_settings(db_url, tiny_artifact.model_dir,
                                  refresh_interval_minutes=1e6))
    with TestClient(app) as client:
        statements = []
        event.listen(app.state.engine, "before_cursor_execute",
                     lambda *args, **kw: statements.append(args[2]))
        batch = client.post("/predict", json={"tickers": tickers, "horizon": 2})
        assert batch.status_code == 200, batch.text
        states = [s for s in statements if "FROM tickers" in s]
        assert len(states) == 1, states
        assert app.state.forecasts.from_store == len(tickers)
        app.state.forecasts.clear()
        for got in batch.json()["forecasts"]:
            alone = client.post(f"/predict/{got['ticker']}", json={"horizon": 2})
            assert alone.status_code == 200, alone.text
            assert got == alone.json()
        stale = batch.json()["forecasts"][1]
        assert stale["stale"] is True and "last refresh failed (source down)" in \
            " ".join(stale["warnings"])
        assert not batch.json()["forecasts"][0]["stale"]
    engine.dispose()


def test_prewarm_skips_what_is_fresh(engine, tiny_predictor):
    _ingest(engine, synthetic_bars_multi())
    first = prewarm(engine, tiny_predictor)
    again = prewarm(engine, tiny_predictor)
    assert (first.computed, again.computed, again.fresh) == (3, 0, 3)
    with engine.connect() as conn:
        assert stored_inputs(conn, tiny_predictor, ["AAA"], 5)["AAA"].state.as_of == LAST_BAR


def test_prices_whose_features_would_overflow_are_rejected_and_the_rest_is_stored(engine):
    # Prices near 1e300 are positive and finite, but the Bollinger variance of them overflows:
    # validation refuses them (implausible_price), the other tickers' bars and features stay.
    frame = synthetic_bars_multi()
    huge = frame["ticker"] == "CCC"
    for column in ("open", "high", "low", "close", "adj_close"):
        frame.loc[huge, column] *= 1e299
    report = ingest_frame(engine, frame, source="test", after_write=after_bars_written)
    assert report.rejected == {"implausible_price": int(huge.sum())}
    assert report.written == int((~huge).sum())
    with engine.connect() as conn:
        stored = store_db.feature_sets(conn, feature_store.STORE_VERSION, ["AAA", "BBB", "CCC"])
    assert set(stored) == {"AAA", "BBB"}
    _assert_stored_equal_built(engine, frame[~huge])


def test_a_ticker_whose_features_fail_blocks_neither_the_write_nor_the_others(
        engine, monkeypatch):
    # Whatever makes one ticker's features raise (a bug, not bad input: validation refuses what
    # it can), the write keeps every bar and stores the other tickers' features.
    real = feature_store.build_features

    def failing_for_ccc(bars, *args, **kwargs):
        if float(bars["adj_close"].iloc[0]) == ccc_first:
            raise RuntimeError("non-finite feature after the warm-up from valid bars")
        return real(bars, *args, **kwargs)

    frame = synthetic_bars_multi()
    ccc_first = float(frame.loc[frame["ticker"] == "CCC", "adj_close"].iloc[0])
    monkeypatch.setattr(feature_store, "build_features", failing_for_ccc)
    report = ingest_frame(engine, frame, source="test", after_write=after_bars_written)
    assert report.written == len(frame)
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from bars")).scalar() == len(frame)
        stored = store_db.feature_sets(conn, feature_store.STORE_VERSION, ["AAA", "BBB", "CCC"])
    assert set(stored) == {"AAA", "BBB"}
    _assert_stored_equal_built(engine, frame[frame["ticker"] != "CCC"])


def test_a_history_rebased_up_to_the_same_last_bar_is_not_served_from_the_old_rows(
        store_app, tiny_predictor):
    # A dividend or split re-adjusts adj_close of every earlier bar; the last bar's date stays.
    client, service, engine, frame = store_app
    client.post("/predict/AAA", json={"horizon": 3})
    assert service.from_store == 1
    rebased = frame[frame["ticker"] == "AAA"].copy()
    rebased.loc[rebased.index[:-5], "adj_close"] *= 0.9
    _ingest(engine, rebased)
    service.clear()
    body = client.post("/predict/AAA", json={"horizon": 3}).json()
    assert service.from_store == 1  # the old state and rows are stale: from the bars
    _assert_same_forecast(body, _from_bars(tiny_predictor, engine, "AAA", 3))
    service.clear()
    again = client.post("/predict/AAA", json={"horizon": 3}).json()
    assert service.from_store == 2  # the state stored by that fallback, the new rows
    _assert_same_forecast(again, _from_bars(tiny_predictor, engine, "AAA", 3))


def test_the_stores_read_one_snapshot_while_a_write_commits_between_its_statements(
        db_url, tiny_predictor, monkeypatch):
    # consistent_read: the band state and the feature rows a cold forecast reads must come from
    # the same bars, even when a re-based history (same last bar) commits between the reads.
    frame = synthetic_bars_multi()
    engine, writer = make_engine(db_url), make_engine(db_url)
    _ingest(engine, frame)
    prewarm(engine, tiny_predictor)
    with engine.begin() as conn:  # a state stored without its forecast (before 0006): the
        conn.execute(text("update band_states set quantiles = null"))  # window is read
    with engine.connect() as conn:
        _, old_rows = store_db.read_features(conn, feature_store.STORE_VERSION, "AAA", 14)
    rebased = frame[frame["ticker"] == "AAA"].copy()
    rebased.loc[rebased.index[:-5], "adj_close"] *= 0.9
    read_rows = store_db.read_latest_features

    def write_then_read(conn, *args):
        _ingest(writer, rebased)  # commits bars and new feature rows
        return read_rows(conn, *args)

    monkeypatch.setattr(store_db, "read_latest_features", write_then_read)
    with store_db.consistent_read(engine) as conn:
        got = stored_inputs(conn, tiny_predictor, ["AAA"], 1)
    monkeypatch.undo()
    with engine.connect() as conn:
        _, new_rows = store_db.read_features(conn, feature_store.STORE_VERSION, "AAA", 14)
    assert not np.array_equal(new_rows[-20:], old_rows[-20:])
    # Read before the write: the old state with the old rows (never the old state, new rows).
    np.testing.assert_array_equal(got["AAA"].features, old_rows[-len(got["AAA"].features):])
    engine.dispose()
    writer.dispose()


def test_a_history_rebased_by_another_writer_is_not_answered_from_the_forecast_cache(
        store_app, tiny_predictor):
    # `stockcast ingest` or the scheduler re-bases AAA up to the same last bar while the API
    # holds AAA's forecast in memory: the next request (bar check renewed) must see new bars.
    client, service, engine, frame = store_app
    first = client.post("/predict/AAA", json={"horizon": 3}).json()
    rebased = frame[frame["ticker"] == "AAA"].copy()
    rebased.loc[rebased.index[:-5], "adj_close"] *= 0.9
    _ingest(engine, rebased)
    body = client.post("/predict/AAA", json={"horizon": 3}).json()
    assert body["forecasts"] != first["forecasts"]
    _assert_same_forecast(body, _from_bars(tiny_predictor, engine, "AAA", 3))
    again = client.post("/predict/AAA", json={"horizon": 3}).json()
    assert again["forecasts"] == body["forecasts"] and service.hits >= 1  # cached again


# -- a cold request from the stores: one connection, one snapshot ------------------------------


@pytest.fixture
def quiet_store_app(db_url, tiny_artifact, tiny_predictor):
    """(client, app, engine) over the tiny bars, stores prewarmed, every ticker refreshed just
    now (none due: a cold request is served from the stores alone), no forecast cache."""
    frame = synthetic_bars_multi()
    engine = make_engine(db_url)
    _ingest(engine, frame)
    prewarm(engine, tiny_predictor)
    with engine.begin() as conn:
        conn.execute(text("UPDATE tickers SET last_refresh_status = 'ok', last_refresh_at = :at"),
                     {"at": pd.Timestamp.now("UTC").to_pydatetime()})
    app = create_app(api_settings(db_url, tiny_artifact.model_dir, forecast_cache_size=0,
                                  refresh_interval_minutes=1e6))
    with TestClient(app) as client:
        yield client, app, engine
    engine.dispose()


def test_a_cold_forecast_from_the_stores_checks_out_one_connection(quiet_store_app):
    # The bar check and the store read share one connection and one snapshot (they took two
    # checkouts); the first forecast of a ticker also writes its ledger row (a second one).
    client, app, _ = quiet_store_app
    assert client.post("/predict/AAA").status_code == 200  # the app's first (schema check)
    checkouts, statements = [], []
    event.listen(app.state.engine, "checkout", lambda *args: checkouts.append(args))
    event.listen(app.state.engine, "before_cursor_execute",
                 lambda *args, **kw: statements.append(args[2]))
    first = client.post("/predict/BBB", json={"horizon": 2})
    assert first.status_code == 200, first.text
    assert len(checkouts) == 2 and any("INSERT INTO ledger_forecasts" in s for s in statements)
    checkouts.clear()
    statements.clear()
    again = client.post("/predict/BBB", json={"horizon": 2})
    assert again.json() == first.json()
    assert len(checkouts) == 1, statements
    assert len([s for s in statements if "FROM tickers" in s and "band_states" not in s]) == 1
    assert len([s for s in statements if "FROM band_states" in s]) == 1
    assert not any("INSERT" in s for s in statements)
    assert app.state.forecasts.from_store == 3
