"""The page's "how this model has done live" panel, from a ledger with known scores."""

from __future__ import annotations

import datetime as dt

import httpx
import pandas as pd

from service.db.ledger import record_forecasts, store_scores
from service.db.session import make_engine
from tests.e2e.test_page import browser, load, submit

# Two scored 1-day forecasts of MSFT: |errors| 1 and 3 (MAE 2), naive's 2 and 2 (MAE 2): rel
# MAE 1.000; the first inside its band, the second not. A 5-day one is not yet due.
SCORED = [("2017-11-01", 1, 84.0, 85.0, 1.0, 2.0, True),
          ("2017-11-02", 1, 84.0, 81.0, -3.0, 2.0, False)]


def seed_ledger(db_url: str, version: str) -> None:
    rows = [{"ticker": "MSFT", "as_of": dt.date.fromisoformat(day), "model_version": version,
             "horizon": h, "target_date": dt.date.fromisoformat(day) + dt.timedelta(days=1),
             "last_close": close, "lower": close - 2, "median": close + err, "upper": close + 2,
             "lower_quantile": 0.1, "upper_quantile": 0.9}
            for day, h, close, _, err, _, _ in SCORED]
    rows.append({**rows[0], "as_of": dt.date(2017, 11, 3), "horizon": 5})
    scores = pd.DataFrame([
        {"ticker": "MSFT", "as_of": dt.date.fromisoformat(day), "model_version": version,
         "horizon": h, "realized_date": dt.date.fromisoformat(day) + dt.timedelta(days=1),
         "realized_close": realized, "error": err, "naive_error": naive, "inside": inside}
        for day, h, _, realized, err, naive, inside in SCORED])
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            record_forecasts(conn, rows)
            store_scores(conn, scores)
    finally:
        engine.dispose()


@browser
def test_live_panel_shows_the_scored_forecasts_beside_the_backtest(page, live_app,
                                                                    artifacts_dir):
    seed_ledger(live_app.db_url, live_app.model_version)
    load(page, live_app)
    assert submit(page, "MSFT", days=5) == "ready"
    api = httpx.get(f"{live_app.url}metrics/live",
                    params={"ticker": "MSFT", "horizon": 1}).json()["metrics"][0]
    assert (api["n_scored"], api["mae"], api["naive_mae"], api["rel_mae"], api["coverage"]) == (
        2, 2.0, 2.0, 1.0, 0.5)
    assert page.inner_text("#live .live-meta") == (
        f"MSFT: model {live_app.model_version}, scored live forecasts against naive.")
    rows = page.locator("#live-table tbody tr")
    assert rows.count() == 1  # only horizons with a scored forecast
    assert rows.first.locator("th, td").all_inner_texts() == [
        "1 d", f"2 of {api['n_forecasts']}", "$2.000", "$2.000", "1.000", "50.0%"]
    # The page's own forecast (as of MSFT's latest bar) entered the ledger, unscored.
    five = httpx.get(f"{live_app.url}metrics/live",
                     params={"ticker": "MSFT", "horizon": 5}).json()["metrics"][0]
    assert five["n_forecasts"] == 2 and five["n_scored"] == 0
    # Beside the backtest on a desktop: the same row, side by side.
    live_box = page.locator("#live").bounding_box()
    backtest_box = page.locator("#backtest").bounding_box()
    assert live_box["x"] > backtest_box["x"] + backtest_box["width"] - 1
    page.locator(".panels").screenshot(path=str(artifacts_dir / "panels-live.png"))
    assert page.js_errors == []


@browser
def test_live_panel_says_when_nothing_is_scored_for_the_ticker(page, live_app):
    load(page, live_app)
    assert submit(page, "JPM", days=2) == "ready"
    recorded = httpx.get(f"{live_app.url}metrics/live",
                         params={"ticker": "JPM", "horizon": 1}).json()["metrics"][0]
    n = recorded["n_forecasts"]
    assert recorded["n_scored"] == 0
    assert page.inner_text("#live .notice") == (
        f"JPM: {n} live forecast{'s' if n > 1 else ''} recorded per horizon, none scored yet "
        "(each is scored when its target bar arrives).")
    assert page.js_errors == []

