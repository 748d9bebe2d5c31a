"""Rolling walk-forward: blocks train only on their past, cached models resume, the CLI run."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from service.db.backtests import get_metrics, latest_run
from service.db.session import make_engine
from service.evaluation.backtest import bars_by_ticker
from service.evaluation.rolling import bars_digest, forecast_block
from service.evaluation.scoring import METRICS, MODEL, POOLED
from service.forecasting.signals import REVERSAL
from service.forecasting.spec import FEATURE_SETS
from tests.api_factories import store_bars
from tests.bar_factories import random_future
from tests.tiny_model import synthetic_bars_multi, tiny_config
from training.rolling import (
    RollingSpec,
    block_key,
    evaluate_rolling,
    plan_jobs,
    train_blocks,
)

TICKERS = ("AAA", "BBB", "CCC", "DDD", "EEE", "FFF")
# 330 business days from 2020-01-02; the last 80 origins (two blocks of 40) are evaluated.
BARS = synthetic_bars_multi(TICKERS, n=330)
DATES = pd.DatetimeIndex(sorted(BARS["date"].unique()))
START, END = DATES[-90].date(), DATES[-11].date()
SPEC = RollingSpec(start=START, end=END, retrain_every=40, horizons=(1, 5),
                   baselines=("naive", "drift"), top_k=2, cost_bp=10.0)


def _config(**changes):
    return tiny_config(tickers=TICKERS, epochs=2, **changes)


def _evaluate(url, model_dir, bars=BARS, spec=SPEC):
    store_bars(url, bars, reset=True)
    return evaluate_rolling(_config(), spec, url, model_dir, plots_dir=model_dir / "plots",
                            provider="cpu")


def _poisoned(from_date) -> pd.DataFrame:
    """The bars with every bar from `from_date` on redrawn at random (random_future: prices,
    adj_close / close, volume; a future nobody may train on)."""
    before = DATES[DATES.get_loc(pd.Timestamp(from_date)) - 1]
    return pd.concat([random_future(part, before, seed=i) for i, (_, part) in
                      enumerate(BARS.groupby("ticker", sort=True))], ignore_index=True)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rolling")
    return root, _evaluate(f"sqlite:///{root / 'r.db'}", root / "models")


def _versions(run):
    return [b["model_version"] for b in run.result.config["blocks"]]


def _block_models(bars, model_dir):
    """{block: artifact} trained for SPEC on these bars (no forecasting, scoring or storing)."""
    trained = train_blocks(plan_jobs(_config(), bars, SPEC), model_dir, progress=False)
    return {number: artifact for number, (artifact, _) in trained.items()}


def test_blocks_never_train_on_an_origin_they_score(clean_run, tmp_path):
    _, run = clean_run
    blocks = run.result.config["blocks"]
    assert [b["block"] for b in blocks] == [1, 2]
    for b in blocks:
        assert b["train"][1] < b["first"]  # bars strictly before the block
    # Scramble every price from block 2's first origin on: neither block's model may change.
    poisoned = _poisoned(blocks[1]["first"])
    models = _block_models(poisoned, tmp_path / "models")
    assert [models[1].name, models[2].name] == _versions(run)
    # ...and block 1's forecasts (each from bars <= its origin) are those of the clean run:
    # every column (the model's, each baseline's, the reversal signal, every band), to the bit,
    # and the outcomes known before the poison.
    block1 = plan_jobs(_config(), poisoned, SPEC)[0].block
    made = forecast_block(block1, models[1], bars_by_ticker(poisoned), horizons=SPEC.horizons,
                          baselines=SPEC.baselines, provider="cpu")
    for h in SPEC.horizons:
        clean = run.result.forecasts[h]
        clean = clean[clean["block"] == 1].reset_index(drop=True)
        new = made.forecasts[h].reset_index(drop=True)
        assert set(new.columns) <= set(clean.columns) and len(new.columns) > 30
        assert len(new) == len(clean) == len(TICKERS) * 40
        dated = [c for c in new.columns if c != "realized"]
        pd.testing.assert_frame_equal(new[dated], clean[dated], check_exact=True)
        known = (clean["target_date"] < pd.Timestamp(blocks[1]["first"])).to_numpy()
        assert 0 < known.sum() <= len(clean)
        np.testing.assert_array_equal(new.loc[known, "realized"], clean.loc[known, "realized"])
    # Scrambling from one session after block 1 starts changes block 2's model (it does learn
    # from the bars up to its block), not block 1's.
    later = DATES[DATES.get_loc(pd.Timestamp(blocks[0]["first"])) + 1].date()
    moved = _block_models(_poisoned(later), tmp_path / "models2")
    assert moved[1].name == _versions(run)[0]
    assert moved[2].name != _versions(run)[1]


def test_a_rerun_reuses_the_cached_block_models(clean_run):
    root, run = clean_run
    assert not any(b["cached"] for b in run.result.config["blocks"])
    again = evaluate_rolling(_config(), SPEC, f"sqlite:///{root / 'r.db'}", root / "models",
                             plots_dir=root / "plots2", provider="cpu")
    assert all(b["cached"] for b in again.result.config["blocks"])
    assert _versions(again) == _versions(run)
    assert again.run_id == run.run_id + 1
    pd.testing.assert_frame_equal(again.result.metrics, run.result.metrics)
    # A changed config (another seed) or other bars make another key: that block trains again.
    job = plan_jobs(_config(), BARS, SPEC)[0]
    assert block_key(_config(seed=1).with_(start=job.config.start, end=job.config.end,
                                           holdout=job.config.holdout), job.bars) != job.key
    assert block_key(job.config, job.bars.iloc[1:]) != job.key
    assert block_key(job.config.with_(progress=True), job.bars) == job.key
    # The target and members fields came after caches existed: at their defaults they are not
    # in the key (the blocks cached before them are found), any other value is another key.
    keyed = {k: v for k, v in job.config.to_dict().items()
             if k not in ("progress", "target", "members")}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode())
    digest.update(bars_digest(job.bars).encode())
    assert job.key == digest.hexdigest()[:16]
    assert block_key(job.config.with_(target="cs_demeaned"), job.bars) != job.key
    assert block_key(job.config.with_(members=3), job.bars) != job.key


def test_a_seed_ensembles_block_models_are_their_own_and_resume(clean_run):
    root, run = clean_run
    url = f"sqlite:///{root / 'pair.db'}"  # its own runs table: r.db's latest run stays
    store_bars(url, BARS, reset=True)
    # Same model dir as the single-seed run: its cached blocks must not stand in for these.
    spec = RollingSpec(start=START, end=END, retrain_every=40, horizons=(1,),
                       baselines=("naive",), top_k=2, cost_bp=10.0)
    pair = evaluate_rolling(_config(members=2), spec, url, root / "models", provider="cpu")
    assert not any(b["cached"] for b in pair.result.config["blocks"])
    assert set(_versions(pair)).isdisjoint(_versions(run))
    assert pair.result.config["training"]["members"] == 2
    for b in pair.result.config["blocks"]:
        meta = json.loads((root / "models" / b["model_version"] / "meta.json").read_text())
        assert [m["seed"] for m in meta["training"]["members"]] == [0, 1]
    again = evaluate_rolling(_config(members=2), spec, url, root / "models", provider="cpu")
    assert all(b["cached"] for b in again.result.config["blocks"])
    assert _versions(again) == _versions(pair)
    # ...and the single-seed run still finds its own (members=1 is not a members=2 model).
    single = train_blocks(plan_jobs(_config(members=1), BARS, SPEC), root / "models",
                          progress=False)
    assert [single[b][0].name for b in (1, 2)] == _versions(run)
    assert all(cached for _, cached in single.values())


def test_the_stitched_run_is_stored_with_hac_statistics_and_books(clean_run):
    root, run = clean_run
    engine = make_engine(f"sqlite:///{root / 'r.db'}")
    try:
        with engine.connect() as conn:
            stored = get_metrics(conn, run.run_id)
            info = latest_run(conn, run.result.model_version)
    finally:
        engine.dispose()
    assert info.model_version.startswith("rolling-")
    assert info.start == START or info.start > START
    assert set(stored["metric"]) <= set(METRICS)
    pooled = stored[(stored["ticker"] == POOLED) & (stored["horizon"] == 1)]
    value = pooled.set_index(["method", "metric"])["value"]
    n = value[(MODEL, "n_forecasts")]
    assert n == len(TICKERS) * 80  # every origin of both blocks, out of sample
    for metric in ("ic_t_hac", "rank_ic_t_hac", "rank_ic_n_eff", "dm_squared_t_hac",
                   "rel_mae_lo", "rel_mae_hi"):
        assert np.isfinite(value[(MODEL, metric)]), metric
    assert value[(MODEL, "rel_mae_lo")] <= value[(MODEL, "rel_mae")] <= value[(MODEL, "rel_mae_hi")]
    for method in (MODEL, REVERSAL, "buy_and_hold"):
        assert np.isfinite(value[(method, "topk_sharpe")]), method
    # A signal that re-ranks daily trades more than buy-and-hold. (Not asserted of the tiny
    # model: its 2-epoch median is a near-constant multiple of each ticker's volatility, a
    # ranking that rarely changes.)
    assert value[("buy_and_hold", "topk_turnover")] < value[(REVERSAL, "topk_turnover")]
    assert json.dumps(info.config)  # strict JSON (no NaN)


def test_get_metrics_backtest_serves_the_rolling_run_with_its_blocks(clean_run, tiny_artifact):
    from fastapi.testclient import TestClient

    from service.api.main import create_app
    from tests.api_factories import api_settings

    root, run = clean_run
    app = create_app(api_settings(f"sqlite:///{root / 'r.db'}", tiny_artifact.model_dir))
    with TestClient(app) as client:
        body = client.get("/metrics/backtest", params={"ticker": POOLED, "horizon": 1}).json()
    assert body["run"]["model_version"] == run.result.model_version
    blocks = body["run"]["config"]["blocks"]
    assert [b["model_version"] for b in blocks] == _versions(run)
    assert blocks[0]["train"][1] < blocks[0]["first"]
    rows = {r["method"]: r for r in body["metrics"]}
    assert rows[MODEL]["rank_ic_t_hac"] == pytest.approx(
        run.result.value("rank_ic_t_hac"), rel=1e-9)
    assert rows[REVERSAL]["topk_sharpe"] == pytest.approx(
        run.result.value("topk_sharpe", REVERSAL), rel=1e-9)


def test_the_cli_runs_six_tickers_two_blocks_two_epochs_quickly(tmp_path, monkeypatch):
    from service.cli import app
    from service.core.config import get_settings

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store_bars(url, BARS, reset=True)
    monkeypatch.setenv("STOCKCAST_DATABASE_URL", url)
    monkeypatch.setenv("STOCKCAST_ORT_PROVIDER", "cpu")
    get_settings.cache_clear()
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(_config().to_dict()))
    options = ["--start", START.isoformat(), "--end", END.isoformat(), "--retrain-every", "40",
               "--epochs", "2", "--config", str(config), "--horizons", "1,5", "--baselines",
               "naive", "--top-k", "2", "--model-dir", str(tmp_path / "models"), "--no-progress"]
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["evaluate", "--tickers", ",".join(TICKERS), *options,
                                      "--plots-dir", str(tmp_path / "plots")])
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert elapsed < 120
    assert "| block | origins |" in result.output
    assert "rank IC t (HAC)" in result.output
    assert "| reversal |" in result.output
    assert (tmp_path / "plots" / "rolling.png").exists()
    assert "(cached)" not in result.output
    # --universe all is every cached ticker, by symbol: the same six, so the same block keys
    # (the ticker list is part of them) and both blocks come from the cache.
    every = CliRunner().invoke(app, ["evaluate", "--universe", "all", *options,
                                     "--plots-dir", str(tmp_path / "plots-all")])
    assert every.exit_code == 0, every.output
    assert every.output.count("(cached)") == 2
    # --members N: a seed ensemble per block, trained anew (not the cached single-seed blocks).
    pair = CliRunner().invoke(app, ["evaluate", "--universe", "all", "--members", "2", *options,
                                    "--plots-dir", str(tmp_path / "plots-pair")])
    assert pair.exit_code == 0, pair.output
    assert "(cached)" not in pair.output
    metas = [json.loads(m.read_text()) for m in (tmp_path / "models").glob("*/meta.json")]
    assert sorted(m["training"]["config"]["members"] for m in metas) == [1, 1, 2, 2]
    unknown = CliRunner().invoke(app, ["evaluate", "--universe", "top500", *options])
    target = CliRunner().invoke(app, ["evaluate", "--universe", "all", "--target", "excess",
                                      *options])
    get_settings.cache_clear()
    assert unknown.exit_code == 1
    assert "unknown universe 'top500'; known: ['all', 'top24']" in unknown.output
    assert target.exit_code == 1
    assert "target must be one of ('return', 'cs_demeaned')" in target.output
    bad = CliRunner().invoke(app, ["evaluate", "--tickers", "AAA", "--window", "rolling",
                                   "--start", START.isoformat(), "--end", END.isoformat()])
    assert bad.exit_code == 1
    assert "window must be one of ('expanding', 'sliding')" in bad.output


def test_ablation_feature_sets_train_distinct_artifacts_that_refuse_other_features(clean_run,
                                                                                   tmp_path):
    from service.artifacts.manifest import load_manifest
    from service.core.errors import ManifestMismatch
    from service.forecasting.spec import FEATURE_NAMES, FEATURE_SETS
    from service.inference.predictor import Predictor
    from training.pipeline import train_and_export

    root, run = clean_run
    base = _config(features=FEATURE_SETS["returns"])
    job = plan_jobs(base, BARS, SPEC)[0]
    full = plan_jobs(_config(), BARS, SPEC)[0]
    assert job.config.spec.features == ("log_return", "ewma_vol") != full.config.spec.features
    assert job.key != full.key
    artifact = train_and_export(job.config, job.bars, tmp_path)
    # Serving takes the shipped features only; the evaluation asks for the set it trained.
    with pytest.raises(ManifestMismatch, match=r"was built for features \['log_return', 'ewma_vol'\]"):
        load_manifest(artifact)
    assert Predictor.load(artifact, "cpu", expected=job.config.spec).spec.n_features == 2
    indicators = root / "models" / _versions(run)[0]
    assert load_manifest(indicators).spec.features == FEATURE_NAMES
    with pytest.raises(ManifestMismatch, match="was built for features"):
        Predictor.load(indicators, "cpu", expected=job.config.spec)
    made = forecast_block(job.block, artifact, bars_by_ticker(BARS), horizons=(1,),
                          baselines=("naive",), provider="cpu", expected=job.config.spec)
    assert len(made.forecasts[1]) == len(TICKERS) * 40


def test_the_rolling_run_scores_the_served_band_beside_ewma(clean_run):
    from service.evaluation.rolling import rolling_tables

    _, run = clean_run
    assert run.result.config["band_methods"] == ["model_aci", "ewma", "ewma_aci"]
    for h in (1, 5):
        for method in ("model_aci", "ewma_aci"):
            coverage = run.result.value("coverage", method, h)
            assert 0.0 < coverage <= 1.0, (method, h)
            assert run.result.value("interval_score", method, h) > 0.0
        # Scored on the same origins as the model's median.
        assert (run.result.value("n_forecasts", "model_aci", h)
                == run.result.value("n_forecasts", MODEL, h))
    tables = rolling_tables(run.stored, run.result.config)
    assert "| 1 | model_aci |" in tables and "| 5 | ewma_aci |" in tables


def _market_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Bars with the market series a write of exactly these bars would keep (sources/market)."""
    from service.sources.market import market_series

    market = market_series(bars[["ticker", "date", "adj_close"]]).set_index("date")
    return bars.assign(market_return=market["market_return"].reindex(bars["date"]).to_numpy())


def test_market_context_is_causal_and_its_artifacts_refuse_other_features(clean_run, tmp_path):
    from service.artifacts.manifest import load_manifest
    from service.core.errors import ManifestMismatch
    from service.db.bars import read_bars_many
    from service.forecasting.spec import FEATURE_SETS, MARKET_FEATURES
    from service.inference.predictor import Predictor
    from training.pipeline import train_and_export

    root, _ = clean_run
    config = _config(features=FEATURE_SETS["+market"])
    engine = make_engine(f"sqlite:///{root / 'r.db'}")
    try:  # the series the write path kept equals the one derived from the frame
        stored = read_bars_many(engine, list(TICKERS), market=True)
    finally:
        engine.dispose()
    bars = _market_bars(BARS)
    np.testing.assert_allclose(stored["market_return"], bars["market_return"], rtol=1e-12)
    jobs = plan_jobs(config, bars, SPEC)
    # Scrambling every price from block 2 on moves the market from there on, not block 1's key.
    poisoned = plan_jobs(config, _market_bars(_poisoned(jobs[1].block.first)), SPEC)
    assert poisoned[0].key == jobs[0].key and poisoned[1].key == jobs[1].key
    assert plan_jobs(config, _market_bars(_poisoned(jobs[0].block.last)), SPEC)[1].key != (
        jobs[1].key)
    assert jobs[0].key != plan_jobs(_config(), BARS, SPEC)[0].key
    artifact = train_and_export(jobs[0].config, jobs[0].bars, tmp_path)
    with pytest.raises(ManifestMismatch, match="was built for features"):
        load_manifest(artifact)  # serving's default set is not this one
    with pytest.raises(ManifestMismatch, match="was built for features"):
        Predictor.load(artifact, "cpu", expected=_config(features=FEATURE_SETS["returns"]).spec)
    assert set(MARKET_FEATURES) <= set(load_manifest(artifact, config.spec).spec.features)
    without = forecast_block(jobs[0].block, artifact, bars_by_ticker(BARS), horizons=(1,),
                             baselines=("naive",), provider="cpu", expected=config.spec)
    assert not without.forecasts and sorted(without.skipped) == list(TICKERS)
    assert all("reads the market series" in why for why in without.skipped.values())
    made = forecast_block(jobs[0].block, artifact, bars_by_ticker(bars), horizons=(1,),
                          baselines=("naive",), provider="cpu", expected=config.spec)
    assert len(made.forecasts[1]) == len(TICKERS) * 40


def test_blocks_train_on_a_dask_cluster_into_the_same_models(clean_run, tmp_path):
    from distributed import LocalCluster

    _, run = clean_run
    jobs = plan_jobs(_config(), BARS, SPEC)
    # Worker processes of their own, as a remote cluster's would be; the artifacts come back
    # as files, so nothing is shared on disk with the client.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, scheduler_port=0) as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        trained = train_blocks(jobs, tmp_path / "models", progress=False,
                               cluster=cluster.scheduler_address)
    assert [trained[b][0].name for b in (1, 2)] == _versions(run)  # same inputs, same models
    assert not any(cached for _, cached in trained.values())
    again = train_blocks(jobs, tmp_path / "models", progress=False, cluster="tcp://0.0.0.0:1")
    assert all(cached for _, cached in again.values())  # cached blocks never reach a cluster


def test_the_ablation_chooses_on_validation_blocks_and_reports_test_blocks(clean_run):
    from service.evaluation.rolling import score_segment
    from training.rolling import evaluate_ablation

    root, run = clean_run
    result = evaluate_ablation(_config(), SPEC, ("returns", "indicators"), 1,
                               f"sqlite:///{root / 'r.db'}", root / "models",
                               plots_dir=root / "ablation", provider="cpu")
    assert (result.validation_blocks, result.test_blocks) == ((1,), (2,))
    assert result.chosen in ("returns", "indicators") and result.reason
    # The indicators run is the clean run again (its block models come from the cache).
    assert _versions(result.runs["indicators"]) == _versions(run)
    segments = [(s.name, s.segment) for s in result.scores]
    assert segments == [("returns", "validation"), ("indicators", "validation"),
                        ("returns", "test"), ("indicators", "test")]
    test = score_segment("indicators", "test", run.result.forecasts, (2,), SPEC.top_k,
                         SPEC.cost_bp)
    assert result.scores[3].value("rank_ic_mean") == pytest.approx(test.value("rank_ic_mean"))
    assert result.scores[3].value("n_forecasts") == len(TICKERS) * 40
    # Whatever happens on the test block cannot move the validation scores the choice reads.
    # Every number of the test block's rows (outcomes, the model's and each baseline's
    # forecasts, the bands) redrawn at random: each validation metric and daily rank IC stays.
    rng = np.random.default_rng(3)
    scrambled = {}
    for h, f in run.result.forecasts.items():
        f = f.copy()
        test_rows = (f["block"] == 2).to_numpy()
        for column in f.columns[(f.dtypes == np.float64).to_numpy()]:
            drawn = rng.normal(0.0, 0.1, test_rows.sum())
            # a price and a volatility stay positive
            positive = column in ("origin_close", "origin_vol")
            f.loc[test_rows, column] = 50.0 * np.exp(drawn) if positive else drawn
        for method in [c.removesuffix("_lower") for c in f.columns if c.endswith("_lower")]:
            edges = [f"{method}_lower_90", f"{method}_lower", f"{method}_lower_50",
                     f"{method}_upper_50", f"{method}_upper", f"{method}_upper_90"]
            # each band a band again: nested levels, lower <= upper
            f.loc[test_rows, edges] = np.sort(f.loc[test_rows, edges].to_numpy(), axis=1)
        scrambled[h] = f
    again = score_segment("indicators", "validation", scrambled, (1,), SPEC.top_k, SPEC.cost_bp)
    pd.testing.assert_frame_equal(again.metrics, result.scores[1].metrics, check_exact=True)
    pd.testing.assert_series_equal(again.daily_rank_ic, result.scores[1].daily_rank_ic,
                                   check_exact=True)
    assert len(again.metrics) > 10
    moved = score_segment("indicators", "test", scrambled, (2,), SPEC.top_k, SPEC.cost_bp)
    assert moved.value("rank_ic_mean") != result.scores[3].value("rank_ic_mean")
    assert "| features | segment | blocks | rank IC |" in result.table()
    assert result.plot(root / "ablation.png").stat().st_size > 0
    saved = json.loads(json.dumps(result.to_dict()))
    assert saved["chosen"] == result.chosen and saved["test_blocks"] == [2]
    assert saved["scores"][3]["model/1/rank_ic_mean"] == result.scores[3].value("rank_ic_mean")


def test_an_ablation_arm_can_name_a_target_and_trains_its_own_models(clean_run):
    from training.rolling import ablation_variant, evaluate_ablation

    assert ablation_variant("returns") == {"features": FEATURE_SETS["returns"]}
    assert ablation_variant("+market:cs_demeaned") == {"features": FEATURE_SETS["+market"],
                                                       "target": "cs_demeaned"}
    assert ablation_variant("returns:cs_demeaned:m3") == {
        "features": FEATURE_SETS["returns"], "target": "cs_demeaned", "members": 3}
    assert ablation_variant("returns:m5") == {"features": FEATURE_SETS["returns"], "members": 5}
    for bad, why in (("prices", "unknown feature set 'prices'"),
                     ("returns:ranks", "unknown target 'ranks'"),
                     ("returns:m0", "unknown target 'm0'"),
                     ("returns:m3:m2", "names its members twice")):
        with pytest.raises(ValueError, match=why):
            ablation_variant(bad)
    root, run = clean_run
    # Every block validation: the choice alone (the chosen arm's test blocks come later).
    result = evaluate_ablation(_config(), SPEC, ("indicators", "indicators:cs_demeaned"), 2,
                               f"sqlite:///{root / 'r.db'}", root / "models",
                               incumbent="indicators", plots_dir=root / "ablation-target",
                               provider="cpu")
    assert (result.validation_blocks, result.test_blocks) == ((1, 2), ())
    assert [s.segment for s in result.scores] == ["validation", "validation"]
    assert _versions(result.runs["indicators"]) == _versions(run)  # from the cache
    demeaned = result.runs["indicators:cs_demeaned"]
    assert set(_versions(demeaned)).isdisjoint(_versions(run))
    for b in demeaned.result.config["blocks"]:
        meta = json.loads((root / "models" / b["model_version"] / "meta.json").read_text())
        assert meta["training"]["config"]["target"] == "cs_demeaned"
    assert result.chosen in ("indicators", "indicators:cs_demeaned") and result.reason
