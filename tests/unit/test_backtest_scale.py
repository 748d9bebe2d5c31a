"""The backtest at scale: a process pool and a bulk write that change no number."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.compare_backtests import metric_differences
from service.evaluation.backtest import (
    ModelForecaster,
    bars_by_ticker,
    historical_forecasts,
    run_backtest,
)
from service.forecasting.baselines import NaiveBaseline
from service.forecasting.features import average_true_range
from service.forecasting.forecaster import TickerSeries


def test_a_pooled_backtest_scores_every_metric_as_one_process(tiny_predictor, tiny_artifact):
    bars = bars_by_ticker(tiny_artifact.bars)
    one = run_backtest(tiny_predictor, bars, horizons=(1, 5))
    pooled = run_backtest(tiny_predictor, bars, horizons=(1, 5), workers=2)
    assert len(one.metrics) > 1000
    assert metric_differences(one.metrics, pooled.metrics).empty
    # Same rows in the same order, and the same forecasts frame by frame.
    pd.testing.assert_frame_equal(one.metrics, pooled.metrics)
    for h in one.forecasts:
        pd.testing.assert_frame_equal(one.forecasts[h], pooled.forecasts[h])


def test_metric_differences_finds_a_last_digit_and_a_missing_row():
    rows = pd.DataFrame({"ticker": ["A", "A"], "horizon": [1, 1], "method": ["model"] * 2,
                         "metric": ["mae", "rmse"], "value": [0.1, np.nan]})
    assert metric_differences(rows, rows.copy()).empty
    nudged = rows.assign(value=[np.nextafter(0.1, 1.0), np.nan])
    assert metric_differences(rows, nudged)["metric"].tolist() == ["mae"]
    assert metric_differences(rows, rows.iloc[:1])["metric"].tolist() == ["rmse"]


@pytest.mark.parametrize("n", [5, 14, 15, 400])
def test_average_true_range_equals_ta_float_for_float(n):
    from ta.volatility import AverageTrueRange

    rng = np.random.default_rng(n)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    high = close * (1 + rng.uniform(0, 0.03, n))
    low = close * (1 - rng.uniform(0, 0.03, n))
    ours = average_true_range(high, low, close, 14)
    if n < 14:
        assert np.isnan(ours).all()
        return
    theirs = AverageTrueRange(pd.Series(high), pd.Series(low), pd.Series(close), window=14,
                              fillna=False).average_true_range().to_numpy().copy()
    theirs[:13] = np.nan  # `ta`'s zeros before its first average
    np.testing.assert_array_equal(ours, theirs)


class _Exploding(NaiveBaseline):
    """Naive, except on one ticker: a log return of 800, exp() of which overflows a float."""

    name = "exploding"

    def predict(self, log_close, origins, horizon: int) -> np.ndarray:
        point = super().predict(log_close, origins, horizon)
        return point + 800.0 if log_close.ticker == "BBB" else point


def test_a_ticker_whose_forecasts_overflow_a_price_is_skipped_with_the_reason(
        tiny_predictor, tiny_artifact):
    # The shared data's BHF (a penny shell's flat bars before its 2017 listing) made ACI's
    # recalibrated empirical band overflow exp(); one such ticker failed the universe's run.
    bars = bars_by_ticker(tiny_artifact.bars)
    first, last = tiny_predictor.manifest.split.test
    run = historical_forecasts(
        [ModelForecaster(tiny_predictor), NaiveBaseline(), _Exploding()], bars, start=first,
        end=last, fit_end=tiny_predictor.manifest.split.train[1], horizons=(1, 5))
    assert sorted(run.forecasts[1]["ticker"].unique()) == ["AAA", "CCC"]
    assert run.skipped == {"BBB": "a forecast overflows a price: exploding (a log return of 800)"}


def test_the_backtests_model_forecasts_are_the_per_call_ones_bit_for_bit(tiny_predictor,
                                                                        tiny_artifact):
    # ModelForecaster computes each window once (64 per onnxruntime call, the odd call's last
    # window alone) and serves both calls from that: each call must return exactly what
    # Predictor.historical_forecasts returns for it, odd and even sizes, overlapping or not.
    for ticker, bars in bars_by_ticker(tiny_artifact.bars).items():
        series = TickerSeries(ticker, bars)
        model = ModelForecaster(tiny_predictor)
        n = len(bars)
        for origins in (np.arange(n - 145, n), np.arange(n - 400, n), np.arange(n - 146, n - 1),
                        np.arange(n - 300, n - 2), np.arange(0, n, 3), np.arange(n - 145, n)):
            ours = model.historical_forecasts(series, origins, 5)
            theirs = tiny_predictor.historical_forecasts(series, origins, 5)
            np.testing.assert_array_equal(ours.origins, theirs.origins)
            np.testing.assert_array_equal(ours.log_returns, theirs.log_returns)


def _blas_threads() -> list[int]:
    """The thread count of every BLAS this process has loaded (numpy's and scipy's OpenBLAS)."""
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.parametrize("pool", ["forecasts", "metrics"])
def test_backtest_pool_workers_run_blas_on_one_thread(tiny_predictor, pool):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import scipy.linalg  # noqa: F401  (scipy's own OpenBLAS loaded, as statsmodels loads it)
    from threadpoolctl import threadpool_limits

    from service.evaluation.backtest import MethodSet, _start_worker
    from service.evaluation.scoring import one_blas_thread

    if pool == "forecasts":  # run_backtest's forecasting pool: _start_worker
        methods = MethodSet(("naive",), (), tiny_predictor.band_settings, (1,))
        init = {"initializer": _start_worker, "initargs": (
            tiny_predictor.manifest.artifact_dir, "cpu", 1, tiny_predictor.spec, methods)}
    else:  # compute_metrics' pool
        init = {"initializer": one_blas_thread}
    with threadpool_limits(2, user_api="blas"):  # the parent's BLAS on 2 threads, where it can
        parent = _blas_threads()
        if min(parent) < 2:
            pytest.skip(f"BLAS cannot run on 2 threads here ({parent})")
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"),
                                 **init) as executor:
            worker = executor.submit(_blas_threads).result()
        assert _blas_threads() == parent  # the parent's own setting is left alone
    assert len(worker) == len(parent) >= 2 and set(worker) == {1}
