"""Training: chronological split and training-only scalers, determinism, divergence, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from service.artifacts.manifest import CURRENT_FILE, load_manifest
from service.forecasting import metrics as m
from service.forecasting.features import build_features
from service.forecasting.scaling import StandardScaler
from service.forecasting.windows import forward_log_returns
from tests.api_factories import store_bars
from tests.bar_factories import random_future
from tests.tiny_model import TINY_TICKERS, synthetic_bars_multi, tiny_config
from training.dataset import prepare_data
from training.pipeline import read_training_bars
from training.train import TrainingDiverged, fit, predict_log_returns, score_log_returns


@pytest.fixture(scope="module")
def bars_multi() -> pd.DataFrame:
    return synthetic_bars_multi()


def _training_rows(bars_multi, spec, last_train_date):
    rows = []
    for _, bars in bars_multi.groupby("ticker"):
        features = build_features(bars.drop(columns="ticker").reset_index(drop=True), spec)
        rows.append(features.loc[features.index <= pd.Timestamp(last_train_date)].to_numpy())
    return np.concatenate(rows)


def test_feature_scaler_is_fit_on_training_dates_only(bars_multi):
    spec = tiny_config().spec
    prepared = prepare_data(bars_multi, spec)
    train_rows = _training_rows(bars_multi, spec, prepared.split.train[1])
    all_rows = _training_rows(bars_multi, spec, "2100-01-01")
    expected = StandardScaler.fit(train_rows)
    np.testing.assert_allclose(prepared.feature_scaler.mean, expected.mean, rtol=1e-12)
    np.testing.assert_allclose(prepared.feature_scaler.std, expected.std, rtol=1e-12)
    everything = StandardScaler.fit(all_rows)
    assert np.abs(prepared.feature_scaler.mean - everything.mean).max() > 1e-4


def _random_after(bars_multi: pd.DataFrame, after) -> pd.DataFrame:
    """Every ticker's bars after `after` redrawn at random (random_future)."""
    return pd.concat([random_future(part, after, seed=i) for i, (_, part) in
                      enumerate(bars_multi.groupby("ticker", sort=True))], ignore_index=True)


def test_scalers_and_training_samples_ignore_every_bar_after_the_last_training_target(
        bars_multi):
    """The scalers are fitted on the past only: the feature scaler on rows <= the training
    end, the target scaler on training targets, which read bars up to `horizon` sessions past
    it (into the gap). Every bar after that redrawn at random leaves both scalers, every
    training window, target and return the same to the bit; the validation inputs move."""
    spec = tiny_config().spec
    before = prepare_data(bars_multi, spec)
    dates = np.sort(bars_multi["date"].unique())
    last_target = dates[np.searchsorted(dates, np.datetime64(before.split.train[1]))
                        + spec.horizon]
    after = prepare_data(_random_after(bars_multi, last_target), spec)
    assert after.split == before.split
    assert after.feature_scaler.to_dict() == before.feature_scaler.to_dict()
    assert after.target_scaler.to_dict() == before.target_scaler.to_dict()
    for name in ("windows", "targets", "returns", "ticker_ids", "origin_dates"):
        np.testing.assert_array_equal(getattr(after.train, name), getattr(before.train, name))
    assert not np.array_equal(after.val.windows, before.val.windows)  # the scramble reached


def test_target_scaler_is_fit_on_training_origins_only(bars_multi):
    spec = tiny_config().spec
    prepared = prepare_data(bars_multi, spec)
    last_train = pd.Timestamp(prepared.split.train[1])
    targets = []
    for _, bars in bars_multi.groupby("ticker"):
        features = build_features(bars.drop(columns="ticker").reset_index(drop=True), spec)
        adj = bars.set_index("date")["adj_close"].reindex(features.index).to_numpy()
        # Scale-free: the h-day log return over the origin's EWMA volatility x sqrt(h).
        sigma = features["ewma_vol"].to_numpy()[:, None]
        y = forward_log_returns(adj, spec.horizon) / (sigma * np.sqrt(np.arange(1, spec.horizon + 1)))
        origin = np.arange(len(features)) >= spec.window - 1
        first_train = pd.Timestamp(prepared.split.train[0])
        in_train = origin & (features.index >= first_train) & (features.index <= last_train)
        targets.append(y[in_train])
    expected = StandardScaler.fit(np.concatenate(targets))
    # Windows hold float32 targets; the scaler sees those.
    np.testing.assert_allclose(prepared.target_scaler.mean, expected.mean, rtol=1e-6)
    np.testing.assert_allclose(prepared.target_scaler.std, expected.std, rtol=1e-6)
    # The scaled training targets then have zero mean and unit std per horizon.
    np.testing.assert_allclose(prepared.train.targets.mean(axis=0), 0.0, atol=1e-5)


def test_cs_demeaned_targets_are_the_returns_minus_their_dates_cross_sectional_mean(bars_multi):
    spec = tiny_config().spec
    plain = prepare_data(bars_multi, spec)
    demeaned = prepare_data(bars_multi, spec, target="cs_demeaned")
    for segment in ("train", "val"):
        a, b = getattr(plain, segment), getattr(demeaned, segment)
        np.testing.assert_array_equal(a.origin_dates, b.origin_dates)
        np.testing.assert_array_equal(a.windows, b.windows)  # the inputs are untouched
        np.testing.assert_array_equal(a.returns, b.returns)
        y = pd.DataFrame(plain.target_scaler.inverse_transform(a.targets.astype(np.float64)))
        expected = y - y.groupby(a.origin_dates).transform("mean")
        got = demeaned.target_scaler.inverse_transform(b.targets.astype(np.float64))
        np.testing.assert_allclose(got, expected.to_numpy(), atol=1e-5)
        # Every origin date's targets now average zero across the tickers.
        np.testing.assert_allclose(pd.DataFrame(got).groupby(b.origin_dates).mean(), 0.0,
                                   atol=1e-5)
    with pytest.raises(ValueError, match="target must be one of"):
        tiny_config(target="excess")


def test_segments_are_chronological_with_a_window_plus_horizon_gap(bars_multi):
    spec = tiny_config().spec
    prepared = prepare_data(bars_multi, spec)
    dates = np.unique(bars_multi["date"].to_numpy().astype("datetime64[D]"))
    position = {d: i for i, d in enumerate(dates)}
    train_last = position[prepared.train.origin_dates.max()]
    val_first = position[prepared.val.origin_dates.min()]
    # The last training target ends at train_last + H; the first val window starts at
    # val_first - W + 1: they must not meet.
    assert train_last + spec.horizon < val_first - spec.window + 1
    assert val_first - train_last == spec.window + spec.horizon + 1
    assert prepared.val.origin_dates.max() < np.datetime64(prepared.split.test[0])


def test_a_ticker_with_missing_sessions_cannot_carry_a_train_target_across_the_gap(bars_multi):
    """The gap is counted in the dates of all tickers, windows and targets in a ticker's own
    rows: a ticker without bars for 12 sessions after the training segment would have its last
    training targets read bars inside the validation windows (found by a look-ahead audit). Such
    samples are dropped: scrambling every bar from the first validation input on moves no
    training target, no training window and not the target scaler; without holes no sample is
    dropped (the shipped model's training data is unchanged)."""
    spec = tiny_config().spec
    clean = prepare_data(bars_multi, spec)
    dates = np.sort(bars_multi["date"].unique())
    i = np.searchsorted(dates, np.datetime64(clean.split.train[1]))
    holed = bars_multi[~((bars_multi["ticker"] == TINY_TICKERS[1])
                         & bars_multi["date"].isin(dates[i + 1 : i + 13]))].reset_index(drop=True)
    before = prepare_data(holed, spec)
    assert before.split == clean.split
    first_val_input = dates[np.searchsorted(dates, np.datetime64(clean.split.val[0]))
                            - spec.window + 1]
    poisoned = _random_after(holed, dates[np.searchsorted(dates, first_val_input) - 1])
    after = prepare_data(poisoned, spec)
    np.testing.assert_array_equal(after.train.windows, before.train.windows)
    np.testing.assert_array_equal(after.train.targets, before.train.targets)
    np.testing.assert_array_equal(after.train.returns, before.train.returns)
    assert after.target_scaler.to_dict() == before.target_scaler.to_dict()
    # The holed ticker lost exactly the samples whose target crosses into the gap.
    ids = dict(zip(before.vocab, range(len(before.vocab))))
    holed_id, other_id = ids[TINY_TICKERS[1]], ids[TINY_TICKERS[0]]
    assert (np.sum(before.train.ticker_ids == holed_id)
            < np.sum(clean.train.ticker_ids == holed_id))
    assert (np.sum(before.train.ticker_ids == other_id)
            == np.sum(clean.train.ticker_ids == other_id))
    # Without holes: every window with a target whose origin lies in a segment is its sample.
    for segment, got in (("train", clean.train), ("val", clean.val)):
        first, last = (np.datetime64(d, "D") for d in getattr(clean.split, segment))
        want = 0
        for _, bars in bars_multi.groupby("ticker"):
            rows = build_features(bars.drop(columns="ticker").reset_index(drop=True), spec).index
            origins = rows.to_numpy().astype("datetime64[D]")[spec.window - 1:
                                                              len(rows) - spec.horizon]
            want += int(np.count_nonzero((origins >= first) & (origins <= last)))
        assert len(got) == want


def test_vocabulary_reserves_zero_for_unknown_and_ids_cover_training_tickers(bars_multi):
    prepared = prepare_data(bars_multi, tiny_config().spec)
    assert prepared.vocab == ("<unknown>", *sorted(TINY_TICKERS))
    assert set(np.unique(prepared.train.ticker_ids)) == {1, 2, 3}


def test_train_stride_keeps_every_kth_training_origin_and_all_validation(bars_multi):
    spec = tiny_config().spec
    full = prepare_data(bars_multi, spec)
    strided = prepare_data(bars_multi, spec, train_stride=3)
    per_ticker = [np.sum(full.train.ticker_ids == i) for i in (1, 2, 3)]
    assert len(strided.train) == sum(-(-n // 3) for n in per_ticker)
    assert len(strided.val) == len(full.val)


def test_training_is_deterministic_on_cpu(bars_multi):
    first = fit(tiny_config(epochs=2), bars_multi)
    second = fit(tiny_config(epochs=2), bars_multi)
    assert first.weights_sha256 == second.weights_sha256
    assert [h["val_loss"] for h in first.history] == [h["val_loss"] for h in second.history]
    other_seed = fit(tiny_config(epochs=2, seed=1), bars_multi)
    assert other_seed.weights_sha256 != first.weights_sha256


def test_training_without_the_nan_fill_of_new_tensors_gives_the_same_weights(bars_multi,
                                                                            monkeypatch):
    """The fill is a guard only (kernels never read what they did not write): skipping it,
    the faster default, changes no value."""
    import torch

    import training.train as train_loop

    flags = torch.utils.deterministic
    # fit sets torch's process-wide flag; it is put back as it was after the test.
    monkeypatch.setattr(flags, "fill_uninitialized_memory", flags.fill_uninitialized_memory)
    fast = fit(tiny_config(epochs=2), bars_multi)
    assert flags.fill_uninitialized_memory is False
    monkeypatch.setattr(train_loop, "FILL_UNINITIALIZED_MEMORY", True)
    filled = fit(tiny_config(epochs=2), bars_multi)
    assert flags.fill_uninitialized_memory is True
    assert fast.weights_sha256 == filled.weights_sha256
    assert [h["val_loss"] for h in fast.history] == [h["val_loss"] for h in filled.history]


def test_training_with_large_tensors_on_the_heap_gives_the_same_weights(bars_multi,
                                                                        monkeypatch):
    """glibc malloc keeping the tensors on its heap (the default) moves bytes, changes no value."""
    import training.train as train_loop

    # 64 hidden units: a step's LSTM tensors (≈ 1 MiB and more) are over glibc's 128 KiB mmap
    # threshold, so the two runs place them differently (in a fresh process; bench/train.py's
    # rows, each its own process, compare the full model's digests the same way).
    config = tiny_config(epochs=2, hidden_size=64, head_hidden=64)
    heap = fit(config, bars_multi)
    monkeypatch.setattr(train_loop, "HEAP_ALLOCATIONS", False)
    mapped = fit(config, bars_multi)
    assert heap.weights_sha256 == mapped.weights_sha256
    assert [h["val_loss"] for h in heap.history] == [h["val_loss"] for h in mapped.history]


def test_early_stopping_restores_the_best_epoch(bars_multi):
    result = fit(tiny_config(epochs=6, early_stopping_patience=2, learning_rate=0.05), bars_multi)
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert result.metrics["val_pinball_scaled"] == pytest.approx(min(losses))
    # Stopped after `patience` epochs without improvement, or ran out of epochs.
    assert len(losses) == 6 or len(losses) == result.best_epoch + 2


def test_validation_metrics_compare_the_median_with_the_naive_zero_return(tiny_artifact):
    metrics = tiny_artifact.result.metrics
    one_day = metrics["horizons"]["1"]
    val = tiny_artifact.result.prepared.val
    scaler = tiny_artifact.result.prepared.target_scaler
    y1 = val.returns[:, 0]  # the realized 1-day log returns, not the scale-free targets
    assert one_day["mae_naive_zero"] == pytest.approx(np.abs(y1).mean(), rel=1e-12)
    # The targets are those returns over each origin's volatility, then target-scaled.
    k = list(val_spec := tiny_artifact.result.prepared.spec.features).index("ewma_vol")
    features = tiny_artifact.result.prepared.feature_scaler
    sigma = val.windows[:, -1, k] * features.std[k] + features.mean[k]
    free = val.targets[:, 0] * scaler.std[0] + scaler.mean[0]
    np.testing.assert_allclose(free * sigma, y1, rtol=1e-4, atol=1e-7)
    assert len(val_spec) == 14
    assert one_day["rel_mae_vs_naive"] == pytest.approx(
        one_day["mae_median"] / one_day["mae_naive_zero"])
    assert metrics["beats_naive_1d"] == (one_day["mae_median"] < one_day["mae_naive_zero"])
    assert 0.0 <= one_day["coverage"] <= 1.0
    assert set(metrics["horizons"]) == {"1", "5"}  # 30 is beyond the tiny horizon of 5


def test_validation_scores_follow_the_metrics_module_zero_calls_excluded():
    # One horizon, four origins; the medians include a zero forecast (no call).
    actual = np.array([[0.02], [-0.01], [0.0], [0.03]])
    median = np.array([0.01, 0.0, 0.02, -0.01])
    pred = np.stack([median - 0.02, median, median + 0.02], axis=-1)[:, None, :]  # (4, 1, 3)
    scores = score_log_returns(actual, pred, (0.1, 0.5, 0.9))
    one_day = scores["horizons"]["1"]
    assert one_day["mae_median"] == pytest.approx(0.02)  # (0.01 + 0.01 + 0.02 + 0.04) / 4
    assert one_day["mae_naive_zero"] == pytest.approx(0.015)
    assert one_day["rel_mae_vs_naive"] == pytest.approx(0.02 / 0.015)
    # Calls where both moves are non-zero: (0.02, 0.01) right, (0.03, -0.01) wrong. The zero
    # forecast at -0.01 is no call (counting it a miss would give 1/3), as in the backtest.
    assert one_day["directional_accuracy"] == 0.5
    assert one_day["directional_accuracy"] == m.directional_accuracy(actual[:, 0], median)
    assert one_day["coverage"] == 0.75  # 0.03 lies outside [-0.03, 0.01]
    assert one_day["mean_interval_width"] == pytest.approx(0.04)
    assert scores["val_mae_1d"] == one_day["mae_median"] and not scores["beats_naive_1d"]
    # No call at all: undefined, stored as null (meta.json is strict JSON), not a fake 0.
    flat = score_log_returns(actual, np.zeros_like(pred), (0.1, 0.5, 0.9))
    assert flat["horizons"]["1"]["directional_accuracy"] is None


def test_validation_metrics_are_the_scores_of_the_unscaled_forecasts(tiny_artifact):
    result = tiny_artifact.result
    prepared = result.prepared
    pred = predict_log_returns(result.model, prepared, "val")
    expected = score_log_returns(prepared.val.returns, pred, prepared.spec.quantiles)
    assert {k: v for k, v in result.metrics.items() if k != "val_pinball_scaled"} == expected
    # Log returns, not scale-free units: the graph's module multiplied the volatility back.
    # A 10-90% band of a unit-variance-trained network would be ~2.6 wide; in log returns it is
    # the returns' own size (a few times their std).
    width = (pred[:, 0, 5] - pred[:, 0, 1]).mean()
    assert 0.3 < width / prepared.val.returns[:, 0].std() < 10


def test_diverging_loss_raises_and_names_the_epoch(bars_multi):
    with pytest.raises(TrainingDiverged, match=r"training loss became (nan|inf) at epoch 1, batch \d+ "
                                               r"\(learning_rate=1e\+30\); nothing was exported"):
        fit(tiny_config(learning_rate=1e30, grad_clip=1e30), bars_multi)


def test_missing_tickers_in_the_cache_are_named(sqlite_url, bars_multi):
    store_bars(sqlite_url, bars_multi, reset=True)
    with pytest.raises(ValueError) as err:
        read_training_bars(sqlite_url, tiny_config(tickers=("AAA", "ZZZ", "YYY")))
    assert str(err.value) == (
        f"no bars in the cache at {sqlite_url} for ['YYY', 'ZZZ']: load them first (stockcast ingest)"
    )


def test_too_short_history_for_any_window_is_a_clear_error():
    short = synthetic_bars_multi(("AAA",), n=50)
    with pytest.raises(ValueError, match=r"no ticker has enough bars for one window of 20 feature "
                                         r"rows \(tickers given: \['AAA'\]\)"):
        prepare_data(short, tiny_config().spec)


def _cli(tmp_path, sqlite_url, monkeypatch, config, *args):
    from service.cli import app
    from service.core.config import get_settings

    monkeypatch.setenv("STOCKCAST_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(config.to_dict()))
    models = tmp_path / "models"
    try:
        result = CliRunner().invoke(
            app, ["train", "--config", str(cfg), "--model-dir", str(models), "--no-progress",
                  "--plots-dir", str(tmp_path / "plots"), *args])
    finally:
        get_settings.cache_clear()
    return result, models


def _stored_runs(url, version):
    from service.db.backtests import list_runs
    from service.db.session import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list_runs(conn, version)
    finally:
        engine.dispose()


def test_cli_train_reads_the_cache_and_writes_the_artifact(tmp_path, sqlite_url, bars_multi,
                                                           monkeypatch):
    store_bars(sqlite_url, bars_multi, reset=True)
    # A gate every model passes (MAE and bands): this test is about training and export.
    result, models = _cli(tmp_path, sqlite_url, monkeypatch, tiny_config(epochs=2),
                          "--max-rel-mae", "100", "--coverage-tolerance", "1",
                          "--max-interval-ratio", "100")
    assert result.exit_code == 0, result.output
    version = (models / CURRENT_FILE).read_text().strip()
    manifest = load_manifest(models / version)
    assert manifest.tickers == TINY_TICKERS
    assert (models / version / "history.png").read_bytes()[:4] == b"\x89PNG"
    assert f"artifact {models / version}" in result.output
    assert "val 1-day MAE" in result.output
    # Promoted through the gate, on a stored backtest of the test segment over every ticker.
    [run] = _stored_runs(sqlite_url, version)
    assert run.start == manifest.split.test[0] and run.tickers == list(TINY_TICKERS)
    assert f"backtest run {run.id}: model {version}, 3 tickers" in result.output
    assert f"promoted {version}: 1-day MAE $" in result.output
    assert f"threshold 100.0000, backtest run {run.id})" in result.output


def test_cli_train_leaves_current_alone_when_the_gate_refuses(tmp_path, sqlite_url, bars_multi,
                                                              monkeypatch):
    store_bars(sqlite_url, bars_multi, reset=True)
    models = tmp_path / "models"
    models.mkdir()
    (models / CURRENT_FILE).write_text("previous\n")
    # No model is 100x better than naive: the gate refuses.
    result, _ = _cli(tmp_path, sqlite_url, monkeypatch, tiny_config(epochs=2),
                     "--max-rel-mae", "0.01")
    assert result.exit_code == 1
    assert (models / CURRENT_FILE).read_text() == "previous\n"
    [artifact] = [p for p in models.iterdir() if p.is_dir()]
    [run] = _stored_runs(sqlite_url, artifact.name)
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"error: refused: {artifact.name}: 1-day MAE $")
    assert f"threshold 0.0100, backtest run {run.id}); model_aci band: " in last
    assert "; rel MAE exceeds the threshold by " in last
    assert last.endswith(". current still names previous")


def test_cli_train_no_promote_exports_without_a_backtest(tmp_path, sqlite_url, bars_multi,
                                                         monkeypatch):
    store_bars(sqlite_url, bars_multi, reset=True)
    result, models = _cli(tmp_path, sqlite_url, monkeypatch, tiny_config(epochs=2),
                          "--no-promote")
    assert result.exit_code == 0, result.output
    [artifact] = [p for p in models.iterdir() if p.is_dir()]
    assert not (models / CURRENT_FILE).exists()
    assert _stored_runs(sqlite_url, artifact.name) == []
    assert result.output.strip().splitlines()[-1] == (
        "not promoted (--no-promote): models/current unchanged; gate it with "
        f"`stockcast backtest --version {artifact.name}`, then "
        f"`stockcast promote {artifact.name}`")


def test_cli_train_members_exports_one_averaged_artifact(tmp_path, sqlite_url, bars_multi,
                                                         monkeypatch):
    store_bars(sqlite_url, bars_multi, reset=True)
    result, models = _cli(tmp_path, sqlite_url, monkeypatch, tiny_config(epochs=1),
                          "--no-promote", "--members", "2", "--seed", "3")
    assert result.exit_code == 0, result.output
    [artifact] = [p for p in models.iterdir() if p.is_dir()]
    meta = json.loads((artifact / "meta.json").read_text())
    assert meta["training"]["config"]["members"] == 2
    assert [m["seed"] for m in meta["training"]["members"]] == [3, 4]
    assert "seed ensemble of 2: best epochs 1 of 1 (seed 3), 1 of 1 (seed 4)" in result.output
    assert load_manifest(artifact).version == artifact.name  # what a server loads
    refused, _ = _cli(tmp_path, sqlite_url, monkeypatch, tiny_config(epochs=1), "--no-promote",
                      "--members", "0")
    assert refused.exit_code == 2  # typer's own range check


def test_cli_train_that_diverges_exports_nothing(tmp_path, sqlite_url, bars_multi, monkeypatch):
    store_bars(sqlite_url, bars_multi, reset=True)
    config = tiny_config(learning_rate=1e30, grad_clip=1e30)
    result, models = _cli(tmp_path, sqlite_url, monkeypatch, config)
    assert result.exit_code == 1
    assert "nothing was exported" in result.output
    assert not models.exists() or not any(models.iterdir())


def test_a_one_session_window_with_a_holdout_after_the_bars_splits(bars_multi):
    """segment_reach indexed one past the dates for a holdout block beyond the bars with a
    window of 1 (an IndexError; found by review)."""
    import dataclasses
    import datetime as dt

    spec = dataclasses.replace(tiny_config().spec, window=1)
    last = pd.Timestamp(bars_multi["date"].max()).date()
    block = (last + dt.timedelta(days=30), last + dt.timedelta(days=90))
    prepared = prepare_data(bars_multi, spec, holdout=block)
    assert prepared.split.test == block and len(prepared.train) > 0
