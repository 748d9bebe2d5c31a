"""The web page at / in a real headless Chromium against the real app (see conftest.py)."""

from __future__ import annotations

import datetime as dt
import gzip

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.api.routes.page import PLOTLY_JS, _plotly_gzip
from service.core.errors import InvalidTicker
from service.core.tickers import normalize_ticker
from service.db.backtests import delete_run, get_metrics, get_run, store_run
from service.db.bars import read_bars
from service.db.session import make_engine
from tests.api_factories import api_settings
from tests.bar_factories import timeout_error
from tests.e2e.conftest import LAST_BAR, PAGE_TIMEOUT_MS

browser = pytest.mark.browser

# The figure's traces by their `meta` tag: what the page drew, read back from Plotly itself.
TRACES_JS = """() => Object.fromEntries(document.getElementById('chart').data.map(t => [t.meta, {
    type: t.type, x: t.x, y: t.y || t.close, yaxis: t.yaxis || 'y', xaxis: t.xaxis || 'x',
    fill: t.fill || null, customdata: t.customdata || null}]))"""
KEYBOARD_ORDER = ["docs-link", "ticker", "start", "end", "days", "submit", "show-candles",
                  "show-sma20", "show-sma50", "show-bollinger"]


def load(page, live_app):
    """Open the page and wait for its first run (the default ticker) to finish."""
    page.goto(live_app.url)
    wait_for_run(page, 1)


def wait_for_run(page, n: int) -> str:
    """Wait until the page has finished n runs; returns how the last one ended."""
    page.wait_for_function(f"Number(document.body.dataset.runs || 0) >= {n}")
    return page.evaluate("document.body.dataset.state")


def runs(page) -> int:
    return int(page.evaluate("document.body.dataset.runs || 0"))


def submit(page, ticker: str | None = None, *, days: int | None = None,
           start: str | None = None, end: str | None = None) -> str:
    """Fill the form like a user (Enter in the last field submits) and wait for the answer."""
    before = runs(page)
    last = "#ticker"
    if ticker is not None:
        page.fill("#ticker", ticker)
        page.dispatch_event("#ticker", "change")
    for selector, value in (("#start", start), ("#end", end), ("#days", days)):
        if value is not None:
            page.fill(selector, str(value))
            last = selector
    page.press(last, "Enter")
    return wait_for_run(page, before + 1)


def message(page) -> str:
    return page.inner_text("#message")


def fresh_text(page) -> str:
    """The freshness line once the page has heard from the source (it does not wait for it)."""
    page.wait_for_function(
        "!document.getElementById('data-fresh').textContent.includes('checking')")
    return page.inner_text("#data-fresh")


def freshness(last_bar: dt.date, source: str) -> str:
    """The freshness line the page should show for bars ending on last_bar (UTC today)."""
    today = dt.datetime.now(dt.UTC).date()
    age = (today - last_bar).days
    behind = sum(1 for n in range(1, age) if (last_bar + dt.timedelta(days=n)).weekday() < 5)
    state = (f"STALE: {behind:,} session{'s' if behind != 1 else ''} behind" if behind
             else "up to date")
    return f"Last bar {last_bar}, {age:,} day{'s' if age != 1 else ''} ago ({state}) · {source}"


def api_forecast(live_app, ticker: str, horizon: int, as_of: str) -> dict:
    response = httpx.post(f"{live_app.url}predict/{ticker}",
                          json={"horizon": horizon, "as_of": as_of})
    response.raise_for_status()
    return response.json()


def stored_bars(live_app, ticker: str, start: str, end: str):
    engine = make_engine(live_app.db_url)
    try:
        return read_bars(engine, ticker, dt.date.fromisoformat(start), dt.date.fromisoformat(end))
    finally:
        engine.dispose()


# -- the routes (no browser) -------------------------------------------------------------------


def test_page_and_its_assets_are_served_locally(sqlite_url, tmp_path):
    client = TestClient(create_app(api_settings(sqlite_url, tmp_path)))
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    for asset in ("static/vendor/plotly.min.js", "static/app.js", "static/app.css"):
        assert f'"{asset}"' in page.text  # relative: the page also works under a path prefix
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/app.css").headers["content-type"].startswith("text/css")

    zipped = client.get("/static/vendor/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) < PLOTLY_JS.stat().st_size / 2
    assert zipped.content == PLOTLY_JS.read_bytes()  # httpx decodes; the bytes are the package's
    plain = client.get("/static/vendor/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    for refusing in ("gzip;q=0", "br, gzip; q=0.0", "*;q=0", "deflate"):  # gzip;q=0 got gzip
        response = client.get("/static/vendor/plotly.min.js",
                              headers={"Accept-Encoding": refusing})
        assert "content-encoding" not in response.headers, refusing
    for accepting in ("gzip;q=0.5", "br;q=1, *", "GZIP"):
        response = client.get("/static/vendor/plotly.min.js",
                              headers={"Accept-Encoding": accepting})
        assert response.headers["content-encoding"] == "gzip", accepting
    # Compressed once per process, however many ask (~0.2 s of CPU a time otherwise).
    assert _plotly_gzip.cache_info().currsize == 1 and _plotly_gzip.cache_info().hits >= 3
    assert plain.content == PLOTLY_JS.read_bytes()
    assert gzip.decompress(gzip.compress(plain.content)) == plain.content

    missing = client.get("/static/stockcast.db")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no static file named 'stockcast.db'"
    assert client.get("/static/../stockcast.db").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


def test_the_api_docs_load_their_scripts_from_this_server(sqlite_url, tmp_path):
    """/docs and /redoc reference only files this server serves (FastAPI's default loads them
    from a CDN: offline, a blank page)."""
    client = TestClient(create_app(api_settings(sqlite_url, tmp_path)))
    for path, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")),
                         ("/redoc", ("redoc.standalone.js", "favicon.png"))):
        html = client.get(path)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert "http://" not in html.text and "https://" not in html.text
        for asset in assets:
            assert f'"/static-offline-docs/{asset}"' in html.text
            served = client.get(f"/static-offline-docs/{asset}")
            assert served.status_code == 200 and len(served.content) > 1000
    assert client.get("/static-offline-docs/nope.js").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith("/static-offline-docs") for p in paths)


# -- in the browser ------------------------------------------------------------------------------


@browser
def test_the_api_docs_render_offline(page, live_app):
    """Swagger UI lists the API's operations and ReDoc renders them, with nothing they need
    fetched from another host (this browser has no network beyond the server): the one other
    request is ReDoc's "powered by" logo in its sidebar, which offline is not drawn."""
    urls = []
    page.on("request", lambda r: urls.append(r.url))
    root = live_app.url.rstrip("/")
    page.goto(f"{root}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=PAGE_TIMEOUT_MS)
    listed = page.locator(".opblock-summary-path").all_inner_texts()
    assert {"/predict/{ticker}", "/predict", "/metrics/backtest"} <= {p.strip() for p in listed}
    page.goto(f"{root}/redoc")
    page.wait_for_selector("h1", timeout=PAGE_TIMEOUT_MS)  # ReDoc's title, drawn by its script
    assert page.locator("h1").first.inner_text().startswith("stockcast")
    elsewhere = {u for u in urls if not u.startswith((root, f"blob:{root}"))}  # blob: a worker
    assert elsewhere <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, elsewhere
    assert page.js_errors == []


@browser
def test_forecast_draws_the_requested_days_with_band_and_indicator_panels(page, live_app):
    load(page, live_app)
    days = 4
    assert submit(page, "msft", days=days) == "ready"
    start, end = page.input_value("#start"), page.input_value("#end")
    assert end == LAST_BAR.isoformat()  # the default range ends on the ticker's last bar
    assert start == "2016-12-06"
    traces = page.evaluate(TRACES_JS)

    api = api_forecast(live_app, "MSFT", days, end)
    forecast, lower, upper = traces["forecast"], traces["forecast_lower"], traces["forecast_upper"]
    assert len(forecast["x"]) == len(forecast["y"]) == days
    assert len(lower["y"]) == len(upper["y"]) == days
    assert upper["fill"] == "tonexty"  # the band is filled between the two quantile lines
    assert forecast["x"] == [s["date"] for s in api["forecasts"]]
    assert forecast["y"] == pytest.approx([s["close"] for s in api["forecasts"]])
    assert lower["y"] == pytest.approx([s["lower"] for s in api["forecasts"]])
    assert upper["y"] == pytest.approx([s["upper"] for s in api["forecasts"]])
    assert all(lo <= mid <= hi for lo, mid, hi in zip(lower["y"], forecast["y"], upper["y"]))
    assert forecast["x"][0] > end
    # The band's record beside it: the served 80% band's hits over the last 60 sessions.
    band = api["band"]
    assert band["method"] == "model_aci" and band["recent_sessions"] == 60
    assert (f"Last 60 sessions: {round(100 * band['recent_coverage'])}% of closes inside the "
            "80% band.") == page.text_content("#band-record")

    bars = stored_bars(live_app, "MSFT", start, end)
    price = traces["price"]
    assert price["type"] == "candlestick"
    assert price["x"] == [d.date().isoformat() for d in bars["date"]]
    assert price["y"] == pytest.approx(bars["close"].tolist())
    # RSI and MACD sit in their own panels below, on the same date axis as the price.
    assert traces["rsi14"]["yaxis"] == "y2" and traces["macd"]["yaxis"] == "y3"
    assert traces["macd_hist"]["type"] == "bar" and traces["macd_signal"]["yaxis"] == "y3"
    assert {t["xaxis"] for t in traces.values()} == {"x"}
    assert traces["rsi14"]["x"] == price["x"]

    assert message(page) == (f"MSFT: {len(bars)} bars, {start} to {end}, and the {days}-day "
                             "forecast from there.")
    assert page.inner_text("#data-as-of") == end
    assert page.inner_text("#model-version") == live_app.model_version
    # The shared data ends in 2017: stale by its age, whatever the last refresh said.
    assert fresh_text(page) == freshness(LAST_BAR, "source scripted: reachable")
    assert page.get_attribute("#data-fresh", "class") == "fresh-stale"
    assert page.locator("#in-sample").is_hidden() == (LAST_BAR > live_app.validated_until)
    assert page.js_errors == []


@browser
def test_a_past_range_forecasts_as_of_its_end_and_shows_what_happened(page, live_app):
    load(page, live_app)
    days = 5
    assert submit(page, "AAPL", days=days, start="2016-01-04", end="2016-06-30") == "ready"
    traces = page.evaluate(TRACES_JS)
    api = api_forecast(live_app, "AAPL", days, "2016-06-30")
    assert api["as_of"] == "2016-06-30"
    assert traces["forecast"]["x"] == [s["date"] for s in api["forecasts"]]
    assert traces["price"]["x"][-1] == "2016-06-30"  # no bar after as_of feeds the chart's past
    # The realized closes after as_of, drawn for comparison, are exactly the cached ones.
    after = stored_bars(live_app, "AAPL", "2016-07-01", api["forecasts"][-1]["date"])
    assert traces["actual"]["x"] == [d.date().isoformat() for d in after["date"]]
    assert traces["actual"]["y"] == pytest.approx(after["close"].tolist())
    assert page.inner_text("#data-as-of") == "2016-06-30"
    in_sample = page.locator("#in-sample")
    flagged = [w for w in api["warnings"] if w.startswith("as_of 2016-06-30 is inside the period")]
    if live_app.trained_from <= dt.date(2016, 6, 30) <= live_app.validated_until:
        # The API's in-sample warning is the page's notice, and not repeated in the list.
        assert len(flagged) == 1
        assert in_sample.inner_text() == f"{flagged[0]}."
        assert "is inside the period" not in page.locator("#stale-warning").text_content()
    else:
        assert flagged == [] and in_sample.is_hidden()
    assert page.js_errors == []


@browser
def test_overlay_toggles_redraw_without_new_requests(page, live_app):
    load(page, live_app)
    assert set(page.evaluate(TRACES_JS)) >= {"price", "sma20", "sma50", "forecast"}
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.uncheck("#show-candles")
    page.check("#show-bollinger")
    page.uncheck("#show-sma20")
    traces = page.evaluate(TRACES_JS)
    assert traces["price"]["type"] == "scatter"  # the close line instead of candles
    assert {"bb_upper", "bb_lower", "sma50", "forecast"} <= set(traces)
    assert traces["bb_lower"]["fill"] == "tonexty"
    assert "sma20" not in traces
    assert requests == []
    assert page.js_errors == []


@browser
def test_api_errors_are_readable_messages_in_the_page(page, live_app):
    load(page, live_app)
    live = page.locator("#message")
    assert live.get_attribute("aria-live") == "polite"

    with pytest.raises(InvalidTicker) as invalid:
        normalize_ticker("BAD TICKER!")
    assert submit(page, "bad ticker!") == "error"
    assert message(page) == (f"No chart for BAD TICKER!: Invalid request\n"
                             f"ticker: {invalid.value}.")
    assert page.locator("#chart .chart-placeholder").inner_text() == (
        "No chart for BAD TICKER!: Invalid request.")
    assert page.evaluate("document.getElementById('chart').data") is None

    assert submit(page, "ZZZZ") == "error"
    assert message(page) == (
        "No chart for ZZZZ: Unknown ticker\nunknown ticker 'ZZZZ': the source returned no "
        "bars. Check the symbol, or pick one from the suggestions.")

    # Too little history: the bars are charted, the forecast's problem is said in words.
    problem = httpx.post(f"{live_app.url}predict/SHORT", json={"horizon": 1}).json()
    assert problem["title"] == "Insufficient history"
    assert submit(page, "SHORT", days=1) == "error"
    assert message(page) == (
        f"No forecast for SHORT: Insufficient history\n{problem['detail']}. Pick a later "
        "“To” date or a ticker with a longer history.")
    traces = page.evaluate(TRACES_JS)
    assert len(traces["price"]["x"]) == 40 and "forecast" not in traces

    live_app.source.fail_with = timeout_error("DOWN")
    try:
        assert submit(page, "DOWN") == "error"
    finally:
        live_app.source.fail_with = None
    assert message(page) == (
        "No chart for DOWN: Bar source unavailable\nyfinance unavailable for DOWN after 3 "
        "attempts: timed out. The market-data source is unreachable; cached tickers (in the "
        "suggestions) still work.")

    assert submit(page, "AAPL", days=live_app.horizon + 1) == "invalid"
    assert message(page) == ("Invalid number of days\nDays to forecast must be a whole number "
                             f"from 1 to {live_app.horizon}.")
    assert page.get_attribute("#days", "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "days"
    assert page.js_errors == []


@browser
def test_stale_bars_are_flagged_with_the_refresh_warning(page, live_app, artifacts_dir):
    load(page, live_app)
    assert page.locator("#stale-warning").is_hidden()
    # A range past the last cached bar asks the source for more; the source is down.
    live_app.source.fail_with = timeout_error("JPM")
    try:
        assert submit(page, "JPM", days=1, end="2017-12-29") == "ready"
    finally:
        live_app.source.fail_with = None
    assert fresh_text(page) == freshness(LAST_BAR, "source scripted: unreachable")
    assert page.inner_text("#data-as-of") == LAST_BAR.isoformat()
    assert page.inner_text("#stale-warning strong") == (
        "Refreshing JPM failed: the bars shown may be out of date.")
    # The API's own warnings, each once: the failed fetch (bars), then the throttled retry
    # that did not happen (forecast).
    assert page.locator("#stale-warning li").all_inner_texts() == [
        f"bars for JPM may be out of date: {timeout_error('JPM')}",
        f"bars for JPM may be out of date: last refresh failed ({timeout_error('JPM')})",
    ]
    page.locator(".panels").screenshot(path=str(artifacts_dir / "panels-stale.png"))
    assert page.js_errors == []


@browser
def test_backtest_panel_compares_the_model_with_naive(page, live_app):
    load(page, live_app)  # AAPL by default; the stored run has it
    assert page.input_value("#ticker") == "AAPL"
    assert submit(page, days=5) == "ready"
    assert page.input_value("#backtest-horizon") == "5"  # the stored horizon >= days asked

    def cells():
        return {row.get_attribute("data-metric"): row.locator("td").all_inner_texts()
                for row in page.locator("#backtest-table tbody tr").all()}

    assert cells() == {
        "mae": ["12.50", "11.25"], "rmse": ["18.75", "17.50"], "mape": ["6.25%", "5.63%"],
        "directional_accuracy": ["56.3%", "—"], "coverage": ["81.3%", "—"],
        "n_forecasts": ["150", "150"],
    }
    assert page.locator("#backtest-table tr[data-metric=mae] td.better").inner_text() == "11.25"
    assert page.inner_text("#backtest .verdict") == (
        "Model MAE is 1.111× the naive baseline's (worse). Diebold–Mariano p = 0.375: not a "
        "statistically significant difference.")
    page.select_option("#backtest-horizon", "1")
    assert cells()["mae"] == ["2.50", "2.25"]

    assert submit(page, "JPM") == "ready"  # not in the run: the pooled rows, said plainly
    assert page.inner_text("#backtest .notice") == (
        f"The latest backtest (run {live_app.backtest_run}) did not include JPM; below are all "
        "its 2 tickers pooled.")
    assert cells()["mae"] == ["12.50", "11.25"]

    engine = make_engine(live_app.db_url)
    try:
        with engine.begin() as conn:
            run = get_run(conn, live_app.backtest_run)
            rows = get_metrics(conn, run.id)
            delete_run(conn, run.id)
        assert submit(page, "AAPL") == "ready"
        assert page.inner_text("#backtest") == (
            "No backtest has been run yet, so there are no metrics to compare with the naive "
            "baseline. `stockcast backtest` stores one.")
    finally:
        with engine.begin() as conn:  # put it back (under a new id) for the other tests
            live_app.backtest_run = store_run(
                conn, model_version=run.model_version, start=run.start, end=run.end,
                tickers=run.tickers, config=run.config,
                metrics=rows.itertuples(index=False, name=None))
        engine.dispose()
    assert page.js_errors == []


@browser
def test_backtest_panel_shows_the_served_models_run_before_a_later_one_of_another(page,
                                                                                  live_app):
    """A later run of another model (a rolling evaluation's block models, an older artifact's)
    became the panel's figures, labelled "not the served model", while the served model's own
    run was stored; the panel now asks for the served model's latest run first."""
    def cells():
        return {row.get_attribute("data-metric"): row.locator("td").all_inner_texts()
                for row in page.locator("#backtest-table tbody tr").all()}

    rows = [(t, h, method, metric, value * h) for t in ("AAPL", "*") for h in (1, 5)
            for method, metric, value in (("model", "mae", 4.0), ("naive", "mae", 3.0),
                                          ("model", "n_forecasts", 10.0),
                                          ("naive", "n_forecasts", 10.0))]
    engine = make_engine(live_app.db_url)
    try:
        with engine.begin() as conn:
            other = store_run(conn, model_version="rolling-0123456789ab",
                              start=dt.date(2016, 1, 4), end=dt.date(2016, 3, 1),
                              tickers=["AAPL"], config={"horizons": [1, 5]}, metrics=rows)
        assert other > live_app.backtest_run  # the later run
        load(page, live_app)
        assert submit(page, "AAPL", days=5) == "ready"
        assert page.inner_text("#backtest .backtest-meta") == (
            f"AAPL: Run {live_app.backtest_run} · model {live_app.model_version} · origins "
            "2017-06-01 to 2017-11-30.")
        assert cells()["mae"] == ["12.50", "11.25"]
        # without a run of the served model: the latest run of any, said plainly
        with engine.begin() as conn:
            served = get_run(conn, live_app.backtest_run)
            served_rows = get_metrics(conn, served.id)
            delete_run(conn, served.id)
        asked = []
        page.on("request", lambda r: asked.append(r.url) if "metrics/backtest?" in r.url
                else None)
        try:
            assert submit(page, "AAPL", days=5) == "ready"
            assert page.inner_text("#backtest .backtest-meta") == (
                f"AAPL: Run {other} · model rolling-0123456789ab · origins 2016-01-04 to "
                "2016-03-01 · not the served model.")
            assert cells()["mae"] == ["20.00", "15.00"]
            # the served model's two 404s (ticker, pooled), then any model's run; next time
            # the served model is not asked again
            assert len(asked) == 3 and "model_version=" in asked[0] and "model_version=" in asked[1]
            asked.clear()
            assert submit(page, "AAPL", days=5) == "ready"
            assert len(asked) == 1 and "model_version=" not in asked[0]
        finally:
            with engine.begin() as conn:
                live_app.backtest_run = store_run(
                    conn, model_version=served.model_version, start=served.start,
                    end=served.end, tickers=served.tickers, config=served.config,
                    metrics=served_rows.itertuples(index=False, name=None))
    finally:
        with engine.begin() as conn:
            delete_run(conn, other)
        engine.dispose()
    assert page.js_errors == []


@browser
def test_a_model_promoted_after_the_page_loaded_is_the_one_the_page_describes(page, live_app):
    """The page read /models/current once: after a promotion its facts, its backtest panel and
    its live record asked for the old version. The page loads here believing an older model is
    served (its first /models/current answered so); the forecast names the served one, and the
    page asks again."""
    real = httpx.get(live_app.url + "models/current").json()
    stale = {**real, "version": "0ld0ld0ld0ld"}
    answered = []

    def models_current(route):
        if not answered:
            answered.append("stale")
            route.fulfill(json=stale)
        else:
            answered.append("real")
            route.continue_()

    page.route("**/models/current", models_current)
    load(page, live_app)  # its first run: the forecast says the served version
    assert answered == ["stale", "real"]
    assert page.inner_text("#model-version") == live_app.model_version
    assert page.inner_text("#backtest .backtest-meta").startswith(
        f"AAPL: Run {live_app.backtest_run} · model {live_app.model_version} ·")
    assert "not the served model" not in page.inner_text("#backtest")
    assert submit(page, "MSFT", days=5) == "ready"
    assert answered == ["stale", "real"]  # asked once more, not at every run
    assert page.js_errors == []


@browser
@pytest.mark.parametrize("width,height", [(390, 844), (1366, 900)])
def test_layout_fits_the_viewport_without_jumps_and_is_keyboard_reachable(
        page, live_app, artifacts_dir, width, height):
    page.set_viewport_size({"width": width, "height": height})
    # Where the chart and the panels sit before any data arrives, to compare after drawing.
    page.add_init_script("""document.addEventListener('DOMContentLoaded', () => {
        const box = (sel) => document.querySelector(sel).getBoundingClientRect();
        window.layoutBefore = {chart: box('#chart').toJSON(), panels: box('.panels').toJSON()};
    });""")
    load(page, live_app)
    layout = page.evaluate("""() => {
        const box = (sel) => document.querySelector(sel).getBoundingClientRect().toJSON();
        return {chart: box('#chart'), panels: box('.panels'),
                plot: box('#chart .main-svg'), scroll: document.documentElement.scrollWidth};
    }""")
    before = page.evaluate("window.layoutBefore")
    assert layout["scroll"] <= width  # no sideways scrolling, phone included
    assert layout["chart"]["height"] == before["chart"]["height"] >= 500
    assert layout["chart"]["top"] == pytest.approx(before["chart"]["top"], abs=1)
    assert layout["panels"]["top"] == pytest.approx(before["panels"]["top"], abs=1)
    assert layout["plot"]["width"] <= layout["chart"]["width"] + 1
    page.screenshot(path=str(artifacts_dir / f"page-{width}x{height}.png"), full_page=True)

    # Every control in order with the Tab key, each with a visible focus outline. (Chromium
    # tabs through a date input's month, day and year: one control, several stops.)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    seen = []
    for _ in range(3 * len(KEYBOARD_ORDER)):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.id")
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none", focused
        if not seen or seen[-1] != focused:
            seen.append(focused)
        if focused == KEYBOARD_ORDER[-1]:
            break
    assert seen == KEYBOARD_ORDER
    assert page.js_errors == []
