"""Backtest runs stored in and read back from real SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect

from service.db import backtests as store
from service.db.session import downgrade, upgrade
from service.evaluation.scoring import MODEL, NAIVE, POOLED


def save(engine, run, version=None) -> int:
    with engine.begin() as conn:
        return store.store_run(
            conn, model_version=version or run.model_version, start=run.start,
            end=run.end, tickers=run.tickers, config=run.config,
            metrics=run.metrics.itertuples(index=False, name=None))


def test_migration_adds_and_removes_the_backtest_tables(db_url, engine):
    tables = set(inspect(engine).get_table_names())
    assert {"backtest_runs", "backtest_metrics"} <= tables
    pk = inspect(engine).get_pk_constraint("backtest_metrics")["constrained_columns"]
    assert pk == ["run_id", "ticker", "horizon", "method", "metric"]
    downgrade(db_url, "0001")
    assert not {"backtest_runs", "backtest_metrics"} & set(inspect(engine).get_table_names())
    assert "bars" in set(inspect(engine).get_table_names())
    upgrade(db_url)
    assert {"backtest_runs", "backtest_metrics"} <= set(inspect(engine).get_table_names())


def test_a_stored_run_reads_back_exactly(engine, tiny_backtest):
    run_id = save(engine, tiny_backtest)
    with engine.connect() as conn:
        run = store.get_run(conn, run_id)
        stored = store.get_metrics(conn, run_id)
    assert run.model_version == tiny_backtest.model_version
    assert (run.start, run.end) == (tiny_backtest.start, tiny_backtest.end)
    assert run.tickers == list(tiny_backtest.tickers)
    assert run.config == tiny_backtest.config
    assert run.created_at.tzinfo is not None
    want = tiny_backtest.metrics.sort_values(["horizon", "ticker", "method", "metric"])
    pd.testing.assert_frame_equal(stored.reset_index(drop=True), want.reset_index(drop=True),
                                  check_exact=True)
    # an undefined metric (naive's directional accuracy) round-trips as NaN via NULL
    naive_diracc = stored[(stored.method == NAIVE) & (stored.metric == "directional_accuracy")]
    assert naive_diracc["value"].isna().all() and len(naive_diracc) == 4 * 2  # 3 tickers + pooled, 2 h


def test_filters_select_ticker_horizon_method_and_metric(engine, tiny_backtest):
    run_id = save(engine, tiny_backtest)
    with engine.connect() as conn:
        pooled = store.get_metrics(conn, run_id, ticker=POOLED, horizon=5)
        one = store.get_metrics(conn, run_id, ticker="AAA", horizon=1, method=MODEL, metric="mae")
        none = store.get_metrics(conn, run_id, ticker="ZZZ")
    assert set(pooled["ticker"]) == {POOLED} and set(pooled["horizon"]) == {5}
    assert set(pooled["method"]) == {*tiny_backtest.methods, "buy_and_hold"}
    assert one["value"].tolist() == [tiny_backtest.value("mae", MODEL, 1, "AAA")]
    assert none.empty and list(none.columns) == list(store.METRIC_COLUMNS)


def test_latest_run_is_the_newest_overall_or_of_one_version(engine, tiny_backtest):
    with engine.connect() as conn:
        assert store.latest_run(conn) is None
    first = save(engine, tiny_backtest, version="aaaa")
    second = save(engine, tiny_backtest, version="bbbb")
    third = save(engine, tiny_backtest, version="aaaa")
    with engine.connect() as conn:
        assert store.latest_run(conn).id == third
        assert store.latest_run(conn, "bbbb").id == second
        assert store.latest_run(conn, "cccc") is None
        assert store.get_run(conn, 10_000) is None
        assert [r.id for r in store.list_runs(conn, "aaaa")] == [third, first]
    with engine.begin() as conn:
        assert store.delete_run(conn, third)
        assert not store.delete_run(conn, third)
    with engine.connect() as conn:
        assert store.latest_run(conn, "aaaa").id == first
        assert store.get_metrics(conn, third).empty


def test_nan_and_inf_are_stored_as_null(engine):
    with engine.begin() as conn:
        run_id = store.store_run(
            conn, model_version="v", start=dt.date(2021, 1, 4), end=dt.date(2021, 1, 8),
            tickers=["AAA"], config={},
            metrics=[("AAA", 1, MODEL, "mae", 1.5), ("AAA", 1, MODEL, "rel_mae", math.nan),
                     ("AAA", 1, MODEL, "long_flat_sharpe", np.inf)])
    with engine.connect() as conn:
        stored = store.get_metrics(conn, run_id)
        raw = conn.exec_driver_sql(
            "select count(*) from backtest_metrics where value is null").scalar()
    assert raw == 2
    assert stored.set_index("metric")["value"].to_dict() == pytest.approx(
        {"mae": 1.5, "rel_mae": math.nan, "long_flat_sharpe": math.nan}, nan_ok=True)


def test_a_failed_bulk_write_raises_sqlalchemys_error_and_stores_nothing(engine, tiny_backtest):
    """The metric rows go through the raw driver (executemany / COPY); its error must still be
    SQLAlchemy's (what the callers' fault handling and the API's problem mapping catch), and the
    run's transaction rolls back whole: no run without its metrics."""
    before = save(engine, tiny_backtest)
    twice = [("AAA", 1, MODEL, "mae", 1.5), ("AAA", 1, MODEL, "mae", 2.5)]  # the key repeated
    with pytest.raises(sa_exc.IntegrityError) as caught, engine.begin() as conn:
        store.store_run(conn, model_version="v", start=dt.date(2021, 1, 4),
                        end=dt.date(2021, 1, 8), tickers=["AAA"], config={}, metrics=twice)
    assert caught.value.orig.__class__.__module__.split(".")[0] in ("sqlite3", "psycopg")
    with engine.connect() as conn:
        assert [r.id for r in store.list_runs(conn)] == [before]
        assert len(store.get_metrics(conn, before)) == len(tiny_backtest.metrics)
