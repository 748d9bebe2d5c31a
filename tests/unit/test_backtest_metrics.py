"""Backtest metric plumbing against values computed by hand on a tiny three-ticker frame."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from service.evaluation.report import pooled_equity, summary_table
from service.evaluation.scoring import (
    BUY_AND_HOLD,
    METRICS,
    MODEL,
    NAIVE,
    POOLED,
    compute_metrics,
    metric_value,
)
from service.forecasting import metrics as m

DATES = pd.bdate_range("2021-01-04", periods=4)
BDAY = pd.offsets.BDay(1)
LN = np.log
# Ticker A in round dollars: close 10, actual 11, 9, 10, 12; model 10.5, 9.5, 11, 11.
A_REALIZED = LN([1.1, 0.9, 1.0, 1.2])
A_MODEL = LN([1.05, 0.95, 1.1, 1.1])
A_LOWER, A_UPPER = LN([1.0, 0.9, 0.9, 1.0]), LN([1.2, 1.0, 1.05, 1.15])  # bands in dollars /10
B_REALIZED, B_MODEL = np.array([0.02, -0.01, 0.03, -0.02]), np.array([0.01, 0.01, -0.01, -0.01])
C_REALIZED, C_MODEL = np.array([-0.03, 0.02, 0.01, 0.00]), np.array([-0.02, 0.03, 0.0, 0.01])


def one_ticker(ticker, close, realized, model, lower=None, upper=None) -> pd.DataFrame:
    return pd.DataFrame({
        "ticker": ticker, "origin": DATES, "target_date": DATES + pd.offsets.BDay(1),
        "origin_close": close, "realized": realized,
        "model_lower": model - 0.05 if lower is None else lower,
        "model_upper": model + 0.05 if upper is None else upper,
        MODEL: model, NAIVE: 0.0,
    })


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.concat([
        one_ticker("A", 10.0, A_REALIZED, A_MODEL, A_LOWER, A_UPPER),
        one_ticker("B", 20.0, B_REALIZED, B_MODEL),
        one_ticker("C", 40.0, C_REALIZED, C_MODEL),
    ], ignore_index=True)


@pytest.fixture(scope="module")
def metrics(frame) -> pd.DataFrame:
    return compute_metrics({1: frame}, (MODEL, NAIVE))


def value(metrics, metric, method=MODEL, ticker="A"):
    return metric_value(metrics, metric, method, 1, ticker)


def test_price_errors_of_one_ticker_in_dollars(metrics):
    # errors 0.5, 0.5, 1, 1; naive errors 1, 1, 0, 2
    assert value(metrics, "mae") == pytest.approx(0.75)
    assert value(metrics, "rmse") == pytest.approx(math.sqrt(2.5 / 4))
    assert value(metrics, "mape") == pytest.approx(100 * (0.5 / 11 + 0.5 / 9 + 1 / 10 + 1 / 12) / 4)
    assert value(metrics, "rel_mae") == pytest.approx(0.75)
    assert value(metrics, "mae", NAIVE) == pytest.approx(1.0)
    assert value(metrics, "rel_mae", NAIVE) == pytest.approx(1.0)
    assert value(metrics, "n_forecasts") == 4


def test_return_skill_of_one_ticker(metrics):
    r, rhat = A_REALIZED, A_MODEL
    assert value(metrics, "r2_returns") == pytest.approx(
        1 - np.sum((r - rhat) ** 2) / np.sum((r - r.mean()) ** 2))
    # the zero move on day 3 is not scored; the other three calls are right
    assert value(metrics, "directional_accuracy") == pytest.approx(1.0)
    assert math.isnan(value(metrics, "directional_accuracy", NAIVE))


def test_interval_coverage_and_width_in_dollars(metrics):
    # actual 11 in [10, 12], 9 in [9, 10] (closed), 10 in [9, 10.5], 12 not in [10, 11.5]
    assert value(metrics, "coverage") == pytest.approx(0.75)
    assert value(metrics, "width_dollars") == pytest.approx((2 + 1 + 1.5 + 1.5) / 4)
    assert value(metrics, "width_relative") == pytest.approx(0.15)
    assert "coverage" not in set(metrics.loc[metrics["method"] == NAIVE, "metric"])


def test_strategies_of_one_ticker(metrics):
    # long/flat holds days 1, 3, 4: +10%, 0, 0, +20%; long/short also shorts day 2's -10%
    assert value(metrics, "long_flat_cum_return") == pytest.approx(1.1 * 1.2 - 1)
    assert value(metrics, "long_short_cum_return") == pytest.approx(1.1 * 1.1 * 1.2 - 1)
    s = np.array([0.1, 0.0, 0.0, 0.2])
    assert value(metrics, "long_flat_sharpe") == pytest.approx(
        s.mean() / s.std(ddof=1) * math.sqrt(252))
    assert value(metrics, "long_flat_max_drawdown") == pytest.approx(0.0)
    assert value(metrics, "buy_and_hold_cum_return", BUY_AND_HOLD) == pytest.approx(
        1.1 * 0.9 * 1.0 * 1.2 - 1)
    assert value(metrics, "buy_and_hold_max_drawdown", BUY_AND_HOLD) == pytest.approx(0.1)
    # the naive forecast never takes a position
    assert value(metrics, "long_flat_cum_return", NAIVE) == 0.0
    assert math.isnan(value(metrics, "long_flat_sharpe", NAIVE))


def test_dm_per_ticker_is_the_metrics_module_on_dollar_prices(metrics):
    actual = 10 * np.exp(A_REALIZED)
    for loss in ("squared", "absolute"):
        want = m.diebold_mariano(actual, 10 * np.exp(A_MODEL), np.full(4, 10.0), 1, loss)
        assert value(metrics, f"dm_{loss}_stat") == pytest.approx(want.statistic)
        assert value(metrics, f"dm_{loss}_pvalue") == pytest.approx(want.pvalue)
    assert "dm_squared_stat" not in set(metrics.loc[metrics["method"] == NAIVE, "metric"])


def test_pooled_rows_pool_every_forecast(frame, metrics):
    actual = frame["origin_close"] * np.exp(frame["realized"])
    pred = frame["origin_close"] * np.exp(frame[MODEL])
    assert value(metrics, "mae", ticker=POOLED) == pytest.approx(np.mean(np.abs(actual - pred)))
    naive_mae = np.mean(np.abs(actual - frame["origin_close"]))
    assert value(metrics, "rel_mae", ticker=POOLED) == pytest.approx(
        np.mean(np.abs(actual - pred)) / naive_mae)
    assert value(metrics, "n_forecasts", ticker=POOLED) == 12


def test_pooled_dm_averages_the_loss_differential_across_tickers_per_date(frame, metrics):
    close = frame["origin_close"].to_numpy()
    actual, pred = close * np.exp(frame["realized"]), close * np.exp(frame[MODEL])
    d = (actual - pred) ** 2 - (actual - close) ** 2
    per_date = [d[frame["origin"] == day].mean() for day in DATES]
    want = m.diebold_mariano_differential(np.array(per_date), 1)
    assert value(metrics, "dm_squared_stat", ticker=POOLED) == pytest.approx(want.statistic)
    assert value(metrics, "dm_squared_pvalue", ticker=POOLED) == pytest.approx(want.pvalue)


def test_pooled_ic_is_the_mean_daily_cross_sectional_correlation(frame, metrics):
    pearson, spearman = [], []
    for day in DATES:
        g = frame[frame["origin"] == day]
        pearson.append(np.corrcoef(g[MODEL], g["realized"])[0, 1])
        spearman.append(stats.spearmanr(g[MODEL], g["realized"]).statistic)
    assert value(metrics, "ic_mean", ticker=POOLED) == pytest.approx(np.mean(pearson))
    assert value(metrics, "ic_icir", ticker=POOLED) == pytest.approx(
        np.mean(pearson) / np.std(pearson, ddof=1))
    assert value(metrics, "rank_ic_mean", ticker=POOLED) == pytest.approx(np.mean(spearman))
    # cross-sectional: not defined for one ticker, so not stored there
    assert "ic_mean" not in set(metrics.loc[metrics["ticker"] == "A", "metric"])
    # the naive forecast is the same (0) for every ticker: no IC
    assert math.isnan(value(metrics, "ic_mean", NAIVE, POOLED))


def test_pooled_strategy_is_an_equal_weight_book(frame, metrics):
    realized = np.stack([A_REALIZED, B_REALIZED, C_REALIZED], axis=1)
    predicted = np.stack([A_MODEL, B_MODEL, C_MODEL], axis=1)
    period = ((predicted > 0) * np.expm1(realized)).mean(axis=1)
    assert value(metrics, "long_flat_cum_return", ticker=POOLED) == pytest.approx(
        np.prod(1 + period) - 1)
    equity = pooled_equity(frame, MODEL, 1, "long_flat")
    np.testing.assert_allclose(equity.to_numpy(), np.cumprod(np.r_[1.0, 1 + period]))
    # indexed by the start, then each holding period's end date
    assert list(equity.index) == [DATES[0], *(DATES + pd.offsets.BDay(1))]


def test_pooled_strategy_steps_by_session_and_lets_a_late_ticker_join():
    # Six sessions, h = 2 (periods start at sessions 0, 2, 4). A and B trade from the start; L
    # has forecasts only from session 3 on, so it joins the book at session 4.
    dates = pd.bdate_range("2021-01-04", periods=6)

    def ticker(name, realized, model, first=0):
        return pd.DataFrame({
            "ticker": name, "origin": dates[first:], "target_date": dates[first:] + 2 * BDAY,
            "origin_close": 10.0, "realized": realized[first:], "model_lower": -1.0,
            "model_upper": 1.0, MODEL: model[first:], NAIVE: 0.0,
        })

    a_real, a_model = LN([1.1, 9, 0.9, 9, 1.2, 9]), np.array([1, 1, 1, 1, 1, 1]) * 0.01
    b_real, b_model = LN([1.3, 9, 1.1, 9, 0.8, 9]), np.array([-1, 1, 1, 1, 1, 1]) * 0.01
    l_real, l_model = LN([9, 9, 9, 2.0, 1.5, 9]), np.array([1, 1, 1, 1, -1, 1]) * 0.01
    frame = pd.concat([ticker("A", a_real, a_model), ticker("B", b_real, b_model),
                       ticker("L", l_real, l_model, first=3)], ignore_index=True)
    metrics = compute_metrics({2: frame}, (MODEL, NAIVE))

    def pooled(metric, method=MODEL):
        return metric_value(metrics, metric, method, 2, POOLED)

    # long/short: session 0 (+0.1 - 0.3) / 2, session 2 (-0.1 + 0.1) / 2, session 4
    # (+0.2 - 0.2 - 0.5, L short) / 3. Dropping every session before L's first one would have
    # traded sessions 3 and 5 only (x9 moves everywhere).
    long_short = np.array([-0.1, 0.0, -0.5 / 3])
    assert pooled("long_short_cum_return") == pytest.approx(np.prod(1 + long_short) - 1)
    assert pooled("long_short_cum_return") == pytest.approx(-0.25)
    hold = np.array([(0.1 + 0.3) / 2, (-0.1 + 0.1) / 2, (0.2 - 0.2 + 0.5) / 3])
    assert pooled("buy_and_hold_cum_return", BUY_AND_HOLD) == pytest.approx(np.prod(1 + hold) - 1)
    equity = pooled_equity(frame, None, 2, BUY_AND_HOLD)
    np.testing.assert_allclose(equity.to_numpy(), np.cumprod(np.r_[1.0, 1 + hold]))
    assert list(equity.index) == [dates[0], dates[0] + 2 * BDAY, dates[2] + 2 * BDAY,
                                  dates[4] + 2 * BDAY]


def test_every_stored_metric_is_documented(metrics):
    assert set(metrics["metric"]) <= set(METRICS)


def test_summary_table_lists_model_then_baselines_and_buy_and_hold(frame, metrics):
    table = summary_table(metrics).splitlines()
    assert table[0].startswith("| h | method | MAE ($) | rel MAE | DirAcc |")
    assert table[2].startswith("| 1 | model | ")
    close = frame["origin_close"]
    naive_mae = np.mean(np.abs(close * np.exp(frame["realized"]) - close))
    assert table[3].startswith(f"| 1 | naive | {naive_mae:.3f} | 1.000 | n/a |  |  | n/a | n/a |")
    assert table[4].startswith("| 1 | buy & hold |")
    with pytest.raises(KeyError):
        summary_table(metrics, ticker="ZZZ")


def test_the_readme_table_is_the_report_of_the_catalogue_and_registry(frame, metrics):
    # The README's Results table has exactly the generated header and methods (by title); its
    # numbers are `stockcast backtest --readme` on the shipped model (compared in the report).
    from service.core.config import PROJECT_ROOT
    from service.evaluation.report import README_COLUMNS
    from service.forecasting.baselines import BASELINES

    generated = summary_table(metrics, columns=README_COLUMNS, readme=True).splitlines()
    assert generated[0] == "| h | method | " + " | ".join(
        METRICS[name].label for _, name, _ in README_COLUMNS) + " |"
    assert generated[2].startswith("| 1 | **model** | ")
    assert generated[3].startswith("| 1 | naive | ")
    readme = (PROJECT_ROOT / "README.md").read_text().splitlines()
    start = readme.index(generated[0])
    assert readme[start + 1] == generated[1]
    rows = readme[start + 2:readme.index("", start)]
    # Per horizon: the model, then registered baselines in registry order (those the shipped
    # run scored: a baseline added later appears once the run is repeated), then buy & hold.
    order = {t: i for i, t in enumerate(["**model**", *(B.title for B in BASELINES.values()),
                                         "buy & hold"])}
    for h in (1, 5, 30):
        shown = [r.split(" | ")[1] for r in rows if r.startswith(f"| {h} | ")]
        assert shown[0] == "**model**" and shown[1] == "naive" and shown[-1] == "buy & hold"
        assert [order[t] for t in shown] == sorted(order[t] for t in shown)
