// stockcast page: a client of the public API. Fetches /models/current and /tickers on load,
// then for each Forecast: /bars/{ticker}, then POST /predict/{ticker} (as_of = the range's end),
// with /metrics/backtest?ticker= alongside, and draws one Plotly figure (price, RSI, MACD on a shared date
// axis). Every API error ends up as readable text in #message, never only in the console.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const COLORS = {
    up: "#2b8a3e", down: "#c92a2a", close: "#1d2330", sma20: "#1971c2", sma50: "#7048e8",
    bollinger: "#868e96", forecast: "#e8590c", band: "rgba(232, 89, 12, 0.22)",
    actual: "#495057", rsi: "#5f3dc4", macd: "#1971c2", signal: "#c2255c",
  };
  // What to suggest after each problem type (the API's `type` URIs), beyond its own detail.
  const PROBLEM_HINTS = {
    "urn:stockcast:problem:invalid-ticker":
      "Tickers are 1–15 characters: letters, digits and . - ^ = (e.g. AAPL, BRK-B, ^GSPC).",
    "urn:stockcast:problem:unknown-ticker": "Check the symbol, or pick one from the suggestions.",
    "urn:stockcast:problem:insufficient-history":
      "Pick a later “To” date or a ticker with a longer history.",
    "urn:stockcast:problem:source-unavailable":
      "The market-data source is unreachable; cached tickers (in the suggestions) still work.",
    "urn:stockcast:problem:model-not-loaded":
      "The service has no model loaded; charts work, forecasts come back once one is loaded.",
  };
  // Backtest rows shown per horizon; their titles and which way is better come from the API's
  // metric catalogue (GET /metrics/backtest/catalogue), the numbers' format from their unit.
  const BACKTEST_METRICS = ["mae", "rmse", "mape", "directional_accuracy", "coverage",
                            "n_forecasts"];
  const FORMAT_BY_UNIT = {
    dollars: (v) => v.toFixed(2),
    percent: (v) => `${v.toFixed(2)}%`,
    share: (v) => `${(100 * v).toFixed(1)}%`,
    count: (v) => String(Math.round(v)),
  };
  const DEFAULT_DAYS = 10;
  const DAY_MS = 86400000;

  const state = {
    model: null,            // GET /models/current body, or null
    noBacktest: new Set(),  // model versions with no stored backtest run (asked once)
    catalogue: null,        // metric name -> GET /metrics/backtest/catalogue entry
    tickers: new Map(),     // ticker -> TickerPublic
    datesEdited: false,     // the user changed the range: keep it when the ticker changes
    request: 0,             // id of the latest run; older responses are dropped
    view: null,             // what the chart draws: {ticker, bars, forecast, actual}
  };

  class ApiError extends Error {
    constructor(status, problem) {
      super(problem.detail || problem.title || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  // -- API -------------------------------------------------------------------------------

  async function api(path, { method = "GET", body } = {}) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: body === undefined ? { Accept: "application/json" }
          : { Accept: "application/json", "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError(0, { title: "Cannot reach the stockcast API",
                              detail: `${method} ${path} failed: ${err.message}` });
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch (err) {
      payload = null;
    }
    if (!response.ok) {
      const problem = payload && typeof payload === "object" ? payload : {};
      throw new ApiError(response.status, {
        title: problem.title || `HTTP ${response.status}`,
        detail: problem.detail || response.statusText || "the API gave no detail",
        type: problem.type,
      });
    }
    if (payload === null) {
      throw new ApiError(response.status, { title: "Unreadable answer",
                                            detail: `${method} ${path} did not return JSON` });
    }
    return payload;
  }

  const enc = encodeURIComponent;

  // -- dates -----------------------------------------------------------------------------

  const parseDay = (iso) => {
    const [y, m, d] = iso.split("-").map(Number);
    return new Date(Date.UTC(y, m - 1, d));
  };
  const isoDay = (date) => date.toISOString().slice(0, 10);
  const addDays = (iso, n) => isoDay(new Date(parseDay(iso).getTime() + n * DAY_MS));
  const yearBefore = (iso) => {
    const d = parseDay(iso);
    d.setUTCFullYear(d.getUTCFullYear() - 1);
    return isoDay(d);
  };
  const isDay = (s) => /^\d{4}-\d{2}-\d{2}$/.test(s) && !Number.isNaN(parseDay(s).getTime());

  // Weekdays between the first and last date with no bar (exchange holidays): hidden on the
  // axis together with weekends, so candles sit side by side without gaps.
  function holidayBreaks(dates) {
    if (dates.length < 2) return [];
    const have = new Set(dates);
    const out = [];
    const last = parseDay(dates[dates.length - 1]).getTime();
    for (let t = parseDay(dates[0]).getTime(); t <= last; t += DAY_MS) {
      const day = new Date(t).getUTCDay();
      const iso = isoDay(new Date(t));
      if (day !== 0 && day !== 6 && !have.has(iso)) out.push(iso);
    }
    return out;
  }

  // -- messages --------------------------------------------------------------------------

  function showInfo(text) {
    const box = $("message");
    box.className = "message";
    box.textContent = text;
  }

  function showError(title, detail, hint) {
    const box = $("message");
    box.className = "message error";
    box.replaceChildren();
    const strong = document.createElement("strong");
    strong.textContent = title;
    // The API's details are bare clauses; end them so a hint reads as its own sentence.
    const sentence = /[.!?]$/.test(detail) ? detail : `${detail}.`;
    box.append(strong, document.createTextNode(hint ? `${sentence} ${hint}` : sentence));
  }

  function showApiError(prefix, err) {
    const problem = err.problem || { title: "Unexpected error", detail: String(err) };
    showError(`${prefix}: ${problem.title}`, problem.detail, PROBLEM_HINTS[problem.type]);
  }

  function markInvalid(input, invalid) {
    if (invalid) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  // -- form ------------------------------------------------------------------------------

  function horizonLimit() {
    return state.model ? state.model.horizon : Number($("days").max) || 30;
  }

  function applyTickerRange(ticker) {
    const info = state.tickers.get(ticker);
    const start = $("start"), end = $("end");
    if (!info) {
      start.removeAttribute("min"); end.removeAttribute("max");
      return;
    }
    start.min = end.min = info.first_bar_date;
    start.max = end.max = info.last_bar_date;
    if (!state.datesEdited) {
      end.value = info.last_bar_date;
      const from = yearBefore(info.last_bar_date);
      start.value = from < info.first_bar_date ? info.first_bar_date : from;
    }
  }

  // Client-side checks say what is wrong before any request; the API checks everything again.
  function readForm() {
    const ticker = $("ticker").value.trim().toUpperCase();
    const start = $("start").value, end = $("end").value;
    const days = Number($("days").value);
    const limit = horizonLimit();
    for (const id of ["ticker", "start", "end", "days"]) markInvalid($(id), false);
    const fail = (id, title, detail) => {
      markInvalid($(id), true);
      $(id).focus();
      showError(title, detail);
      return null;
    };
    if (!ticker) return fail("ticker", "Enter a ticker", "Type a symbol such as AAPL.");
    if (!isDay(start)) return fail("start", "Invalid start date", "Pick the first day to chart.");
    if (!isDay(end)) return fail("end", "Invalid end date", "Pick the last day to chart.");
    if (start > end) {
      return fail("start", "Invalid date range", `The start (${start}) is after the end (${end}).`);
    }
    if (!Number.isInteger(days) || days < 1 || days > limit) {
      return fail("days", "Invalid number of days",
                  `Days to forecast must be a whole number from 1 to ${limit}.`);
    }
    $("ticker").value = ticker;
    return { ticker, start, end, days };
  }

  // -- one run: bars + forecast + backtest ----------------------------------------------

  async function run() {
    const form = readForm();
    if (!form) {
      state.request += 1; // a pending run's answer would overwrite the message
      finish("invalid");
      return;
    }
    const id = ++state.request;
    const { ticker, start, end, days } = form;
    document.body.dataset.state = "loading";
    $("chart").setAttribute("aria-busy", "true");
    showInfo(`Loading ${ticker}…`);

    // Settled at once: a rejection that lands while the bars are awaited is handled, not an
    // unhandled rejection.
    const backtestAnswer = Promise.allSettled([loadBacktest(ticker)]);
    // Bars first: a ticker that is not cached yet is fetched upstream once, by this call, and
    // when that fails the forecast would only fail the same way.
    const [bars] = await Promise.allSettled([
      api(`bars/${enc(ticker)}?start=${start}&end=${end}`)]);
    const [forecast] = bars.status === "fulfilled"
      ? await Promise.allSettled([
        api(`predict/${enc(ticker)}`, { method: "POST", body: { horizon: days, as_of: end } })])
      : [{ status: "rejected", reason: bars.reason }];
    // After the bars and the forecast: the bars' refresh (if any) says whether the source
    // answers, and a live forecast is in the ledger by then. Asking a source that never
    // answered can take seconds (offline: its retries), so the page does not wait for it.
    const sourceAnswer = api(`source?ticker=${enc(ticker)}`).then(
      (value) => ({ status: "fulfilled", value }), () => ({ status: "rejected" }));
    let [[backtest], [live]] = await Promise.all(
      [backtestAnswer, Promise.allSettled([loadLive(ticker)])]);
    if (forecast.status === "fulfilled" && state.model &&
        forecast.value.model_version !== state.model.version) {
      // A model promoted since the page loaded: its facts, backtest and live record, not the
      // old one's (they were asked for by version).
      const [model] = await Promise.allSettled([api("models/current")]);
      if (model.status === "fulfilled") {
        state.model = model.value;
        renderModel();
        [[backtest], [live]] = await Promise.all([Promise.allSettled([loadBacktest(ticker)]),
                                                  Promise.allSettled([loadLive(ticker)])]);
      }
    }
    let actual = null;
    if (forecast.status === "fulfilled") actual = await realizedAfter(ticker, forecast.value);
    if (id !== state.request) return; // a newer run started meanwhile

    renderBacktest(backtest, ticker, days);
    renderLive(live, ticker);
    renderFacts(ticker, bars, forecast, undefined);
    sourceAnswer.then((source) => {
      if (id === state.request) renderFacts(ticker, bars, forecast, source);
    });
    if (bars.status === "rejected") {
      state.view = null;
      showApiError(`No chart for ${ticker}`, bars.reason);
      showPlaceholder(`No chart for ${ticker}: ${bars.reason.problem?.title || "error"}.`);
      $("forecast-summary").textContent = "";
      $("band-record").textContent = "";
      finish("error");
      return;
    }
    if (bars.value.dates.length === 0) {
      state.view = null;
      showError(`No bars for ${ticker} in this range`,
                `${start} to ${end} has no trading days in the cache.`,
                "Widen the range or move it inside the ticker's history.");
      showPlaceholder(`No bars for ${ticker} between ${start} and ${end}.`);
      $("forecast-summary").textContent = "";
      $("band-record").textContent = "";
      finish("error");
      return;
    }
    state.view = { ticker, bars: bars.value,
                   forecast: forecast.status === "fulfilled" ? forecast.value : null, actual };
    drawChart();
    if (forecast.status === "rejected") {
      showApiError(`No forecast for ${ticker}`, forecast.reason);
      $("forecast-summary").textContent = `History of ${ticker} shown without a forecast.`;
      $("band-record").textContent = "";
      finish("error");
      return;
    }
    const f = forecast.value;
    showInfo(`${ticker}: ${bars.value.dates.length} bars, ${bars.value.dates[0]} to ` +
             `${f.as_of}, and the ${days}-day forecast from there.`);
    $("forecast-summary").textContent = forecastSummary(f);
    $("band-record").textContent = bandRecord(f.band);
    finish("ready");
  }

  function finish(outcome) {
    $("chart").setAttribute("aria-busy", "false");
    document.body.dataset.state = outcome;
    document.body.dataset.runs = String(Number(document.body.dataset.runs || 0) + 1);
  }

  // The served model's latest backtest run: the ticker's rows, or, when the run left the ticker
  // out, its pooled rows (ticker "*"). Only when no run of the served model is stored, the
  // latest run of any model (a rolling evaluation's, an older model's), which the panel labels
  // "not the served model"; {run: null} when none is stored (the API answers 404 to each).
  async function loadBacktest(ticker) {
    if (!state.catalogue) {
      const catalogue = await api("metrics/backtest/catalogue");
      state.catalogue = new Map(catalogue.map((m) => [m.name, m]));
    }
    // A version known to have no run is not asked again (two certain 404s a ticker).
    const served = state.model && !state.noBacktest.has(state.model.version)
      ? state.model.version : null;
    const versions = served ? [`&model_version=${enc(served)}`, ""] : [""];
    for (const version of versions) {
      for (const scope of [ticker, "*"]) {
        try {
          return { scope, ...(await api(`metrics/backtest?ticker=${enc(scope)}${version}`)) };
        } catch (err) {
          if (err.status !== 404) throw err;
        }
      }
      if (version) state.noBacktest.add(served);
    }
    return { scope: null, run: null, metrics: [] };
  }

  // The served model's live record: this ticker's rows and all tickers pooled.
  async function loadLive(ticker) {
    const version = state.model ? `&model_version=${enc(state.model.version)}` : "";
    const [own, pooled] = await Promise.all([
      api(`metrics/live?ticker=${enc(ticker)}${version}`),
      api(`metrics/live?ticker=${enc("*")}${version}`)]);
    return { own: own.metrics, pooled: pooled.metrics };
  }

  // What actually happened after as_of, when the cache already holds those days: a past range
  // then shows the forecast against the outcome. Never triggers an upstream fetch.
  async function realizedAfter(ticker, forecast) {
    const info = state.tickers.get(forecast.ticker);
    const steps = forecast.forecasts;
    if (!info || steps.length === 0 || info.last_bar_date <= forecast.as_of) return null;
    const to = steps[steps.length - 1].date <= info.last_bar_date
      ? steps[steps.length - 1].date : info.last_bar_date;
    try {
      const after = await api(
        `bars/${enc(ticker)}?start=${addDays(forecast.as_of, 1)}&end=${to}`);
      return after.dates.length ? after : null;
    } catch (err) {
      return null; // the comparison is extra; the forecast stands without it
    }
  }

  function forecastSummary(f) {
    const lastStep = f.forecasts[f.forecasts.length - 1];
    const change = 100 * lastStep.predicted_return;
    const sign = change >= 0.05 ? "+" : change <= -0.05 ? "−" : "";
    const pct = `${sign}${Math.abs(change).toFixed(1)}`;
    return `${f.ticker} closed at $${f.last_close.toFixed(2)} on ${f.as_of}. Median forecast ` +
      `for ${lastStep.date} (${lastStep.step} trading day${lastStep.step === 1 ? "" : "s"} ` +
      `ahead): $${lastStep.close.toFixed(2)} (${pct}%), 10–90% band ` +
      `$${lastStep.lower.toFixed(2)} – $${lastStep.upper.toFixed(2)}.`;
  }

  // How the served band has held lately: the share of next-day closes inside the 80% band
  // as it was served the session before (recalibrated online, ACI).
  function bandRecord(band) {
    if (!band || band.recent_coverage === null || !band.recent_sessions) {
      return "No past sessions yet to check the band against.";
    }
    const pct = Math.round(100 * band.recent_coverage);
    return `Last ${band.recent_sessions} sessions: ${pct}% of closes inside the 80% band.`;
  }

  // -- chart -----------------------------------------------------------------------------

  function showPlaceholder(text) {
    const chart = $("chart");
    if (window.Plotly) window.Plotly.purge(chart);
    const p = document.createElement("p");
    p.className = "chart-placeholder";
    p.textContent = text;
    chart.replaceChildren(p);
    chart.setAttribute("aria-busy", "false");
  }

  function line(meta, name, x, y, color, extra = {}) {
    return { type: "scatter", mode: "lines", meta, name, x, y,
             line: { color, width: 1.3 }, hovertemplate: "%{y:.2f}", ...extra };
  }

  function buildFigure(view, narrow) {
    const { ticker, bars, forecast, actual } = view;
    const ind = bars.indicators;
    const x = bars.dates;
    const show = (id) => $(id).checked;
    const data = [];

    if (show("show-candles")) {
      data.push({ type: "candlestick", meta: "price", name: ticker, x,
                  open: bars.open, high: bars.high, low: bars.low, close: bars.close,
                  increasing: { line: { color: COLORS.up, width: 1 } },
                  decreasing: { line: { color: COLORS.down, width: 1 } } });
    } else {
      data.push(line("price", `${ticker} close`, x, bars.close, COLORS.close,
                     { line: { color: COLORS.close, width: 1.6 } }));
    }
    if (show("show-bollinger")) {
      data.push(line("bb_upper", "Bollinger (20, 2)", x, ind.bb_upper, COLORS.bollinger,
                     { legendgroup: "bollinger", line: { color: COLORS.bollinger, width: 1,
                                                         dash: "dot" } }));
      data.push(line("bb_lower", "Bollinger lower", x, ind.bb_lower, COLORS.bollinger,
                     { legendgroup: "bollinger", showlegend: false, fill: "tonexty",
                       fillcolor: "rgba(134, 142, 150, 0.12)",
                       line: { color: COLORS.bollinger, width: 1, dash: "dot" } }));
    }
    if (show("show-sma20")) data.push(line("sma20", "SMA 20", x, ind.sma20, COLORS.sma20));
    if (show("show-sma50")) data.push(line("sma50", "SMA 50", x, ind.sma50, COLORS.sma50));
    if (actual) {
      data.push(line("actual", "Actual after as-of", actual.dates, actual.close, COLORS.actual,
                     { mode: "lines+markers", marker: { size: 4 },
                       line: { color: COLORS.actual, width: 1.4, dash: "dot" } }));
    }
    if (forecast) {
      const fx = forecast.forecasts.map((s) => s.date);
      const lower = forecast.forecasts.map((s) => s.lower);
      const upper = forecast.forecasts.map((s) => s.upper);
      const median = forecast.forecasts.map((s) => s.close);
      // The band is drawn as lower, then upper filled down to it ("tonexty").
      data.push({ type: "scatter", mode: "lines", meta: "forecast_lower", name: "10% quantile",
                  x: fx, y: lower, line: { color: COLORS.forecast, width: 0 },
                  showlegend: false, legendgroup: "forecast", hoverinfo: "skip" });
      data.push({ type: "scatter", mode: "lines", meta: "forecast_upper",
                  name: "10–90% band", x: fx, y: upper, fill: "tonexty",
                  fillcolor: COLORS.band, line: { color: COLORS.forecast, width: 0 },
                  legendgroup: "forecast", hoverinfo: "skip" });
      // Joins the last close to the first forecast day; not part of the forecast itself.
      data.push({ type: "scatter", mode: "lines", meta: "forecast_link", x: [forecast.as_of, fx[0]],
                  y: [forecast.last_close, median[0]], showlegend: false, hoverinfo: "skip",
                  line: { color: COLORS.forecast, width: 2, dash: "dash" } });
      data.push({ type: "scatter", mode: "lines+markers", meta: "forecast",
                  name: "Forecast (median)", x: fx, y: median, legendgroup: "forecast",
                  customdata: forecast.forecasts.map((s) => [s.lower, s.upper]),
                  line: { color: COLORS.forecast, width: 2.5 }, marker: { size: 5 },
                  hovertemplate: "%{y:.2f} (10–90%: %{customdata[0]:.2f} – " +
                                 "%{customdata[1]:.2f})" });
    }
    data.push(line("rsi14", "RSI 14", x, ind.rsi14, COLORS.rsi,
                   { yaxis: "y2", showlegend: false, hovertemplate: "%{y:.1f}" }));
    data.push({ type: "bar", meta: "macd_hist", name: "MACD histogram", x, y: ind.macd_hist,
                yaxis: "y3", showlegend: false, hovertemplate: "%{y:.2f}",
                marker: { color: ind.macd_hist.map((v) => (v !== null && v < 0
                  ? "rgba(201, 42, 42, 0.45)" : "rgba(43, 138, 62, 0.45)")) } });
    data.push(line("macd", "MACD", x, ind.macd, COLORS.macd, { yaxis: "y3", showlegend: false }));
    data.push(line("macd_signal", "MACD signal", x, ind.macd_signal, COLORS.signal,
                   { yaxis: "y3", showlegend: false }));

    const allDates = [...x];
    if (actual) allDates.push(...actual.dates);
    if (forecast) allDates.push(...forecast.forecasts.map((s) => s.date));
    const unique = [...new Set(allDates)].sort();
    // Half a day of room at each end so the outer candles are not cut in half.
    const range = [`${addDays(unique[0], -1)} 12:00`, `${unique[unique.length - 1]} 12:00`];
    const axisFont = { size: narrow ? 10 : 11 };
    const gridColor = "#eceff3";
    const shapes = [
      ...[30, 70].map((level) => ({ type: "line", xref: "paper", x0: 0, x1: 1, yref: "y2",
                                    y0: level, y1: level,
                                    line: { color: "#adb5bd", width: 1, dash: "dot" } })),
    ];
    const annotations = [
      { text: "RSI 14", xref: "paper", yref: "y2 domain", x: 0, y: 1, xanchor: "left",
        yanchor: "bottom", showarrow: false, font: { size: 11, color: COLORS.rsi } },
      { text: "MACD (12, 26, 9)", xref: "paper", yref: "y3 domain", x: 0, y: 1,
        xanchor: "left", yanchor: "bottom", showarrow: false,
        font: { size: 11, color: COLORS.macd } },
    ];
    if (forecast) {
      shapes.push({ type: "line", xref: "x", x0: forecast.as_of, x1: forecast.as_of,
                    yref: "paper", y0: 0, y1: 1,
                    line: { color: "#868e96", width: 1, dash: "dot" } });
      annotations.push({ text: `as of ${forecast.as_of}`, xref: "x", x: forecast.as_of,
                         yref: "y domain", y: 0, xanchor: "right", yanchor: "bottom",
                         showarrow: false, font: { size: 10, color: "#5b6475" } });
    }
    const layout = {
      // Zoom survives toggling overlays; a new ticker or range starts unzoomed.
      uirevision: `${ticker}|${x[0]}|${x[x.length - 1]}`,
      margin: { l: narrow ? 40 : 56, r: narrow ? 8 : 16, t: 8, b: 30 },
      paper_bgcolor: "#ffffff", plot_bgcolor: "#ffffff",
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12,
              color: "#1d2330" },
      showlegend: true,
      legend: { orientation: "h", x: 0, xanchor: "left", y: 1, yanchor: "bottom",
                font: { size: narrow ? 10 : 11 }, bgcolor: "rgba(255,255,255,0)" },
      hovermode: "x unified",
      dragmode: narrow ? false : "zoom", // a phone's drag should scroll the page, not zoom
      xaxis: { type: "date", anchor: "y3", rangeslider: { visible: false }, range,
               rangebreaks: [{ bounds: ["sat", "mon"] },
                             { values: holidayBreaks(unique) }],
               gridcolor: gridColor, tickfont: axisFont, showspikes: true, spikemode: "across",
               spikethickness: 1, spikecolor: "#adb5bd", spikedash: "dot" },
      yaxis: { domain: [0.42, 1], title: { text: narrow ? "" : "Price ($)", font: axisFont },
               gridcolor: gridColor, tickfont: axisFont, automargin: true, fixedrange: narrow },
      yaxis2: { domain: [0.22, 0.36], range: [0, 100], tickvals: [30, 50, 70],
                gridcolor: gridColor, tickfont: axisFont, fixedrange: true, zeroline: false },
      yaxis3: { domain: [0, 0.16], gridcolor: gridColor, tickfont: axisFont, zeroline: true,
                zerolinecolor: "#ced4da", automargin: true, fixedrange: true },
      bargap: 0.2,
      shapes,
      annotations,
    };
    return { data, layout };
  }

  function drawChart() {
    if (!state.view) return;
    const chart = $("chart");
    if (!window.Plotly) {
      showPlaceholder("The chart library (Plotly.js) did not load; reload the page.");
      showError("Chart unavailable", "static/vendor/plotly.min.js did not load.");
      return;
    }
    chart.querySelector(".chart-placeholder")?.remove();
    const narrow = chart.clientWidth < 600;
    const { data, layout } = buildFigure(state.view, narrow);
    window.Plotly.react(chart, data, layout, {
      responsive: true, displaylogo: false, scrollZoom: false,
      modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d", "toImage"],
    });
  }

  // -- panels ----------------------------------------------------------------------------

  function setText(id, text, className) {
    const el = $(id);
    el.textContent = text;
    el.className = className || "";
  }

  function renderFacts(ticker, bars, forecast, source) {
    const info = state.tickers.get(ticker);
    const f = forecast.status === "fulfilled" ? forecast.value : null;
    const b = bars.status === "fulfilled" ? bars.value : null;
    setText("data-as-of", f ? f.as_of : b && b.dates.length ? `— (bars to ${b.dates.at(-1)})` : "—");
    setText("data-last-bar", info ? info.last_bar_date : b && b.dates.length ? b.dates.at(-1) : "—");
    setText("data-seen", f ? (f.seen_in_training ? "Yes" : "No — uses the generic embedding")
                           : "—");
    // The API says when the forecast is in-sample (its sessions overlap those the model was
    // trained and validated on): that warning is the notice, not one of the list below.
    const note = $("in-sample");
    const inSample = f
      ? f.warnings.find((text) => text.startsWith(`as_of ${f.as_of} is inside the period`))
      : undefined;
    note.hidden = inSample === undefined;
    note.textContent = note.hidden ? "" : `${inSample}.`;
    const lastBar = info ? info.last_bar_date : b && b.dates.length ? b.dates.at(-1) : null;
    // undefined: still asking; null: the answer failed.
    const src = source === undefined ? undefined
      : source.status === "fulfilled" ? source.value : null;
    const behind = lastBar ? sessionsBehind(lastBar) : 0;
    const stale = Boolean((f && f.stale) || (b && b.stale));  // a refresh failed
    const warnings = [...new Set([...(b ? b.warnings : []), ...(f ? f.warnings : [])])]
      .filter((text) => text !== inSample);
    const box = $("stale-warning");
    if (!f && !b) {
      setText("data-fresh", "—");
      box.hidden = true;
    } else {
      // Old bars are stale whether or not a refresh failed: never "OK" for them.
      setText("data-fresh", freshness(lastBar, behind, src),
              stale || behind > 0 ? "fresh-stale" : "fresh-ok");
      box.replaceChildren();
      if (stale) {
        const strong = document.createElement("strong");
        strong.textContent = `Refreshing ${ticker} failed: the bars shown may be out of date.`;
        box.append(strong);
      }
      if (warnings.length) {
        const list = document.createElement("ul");
        for (const text of warnings) {
          const item = document.createElement("li");
          item.textContent = text;
          list.append(item);
        }
        box.append(list);
      }
      box.hidden = !stale && warnings.length === 0;
    }
  }

  // Weekdays after the last bar up to yesterday (today's session is not over): 0 = up to date.
  // Exchange holidays are not known here; a holiday can make the line say 1 session behind.
  function sessionsBehind(lastBar) {
    let n = 0;
    const today = isoDay(new Date());
    for (let d = addDays(lastBar, 1); d < today; d = addDays(d, 1)) {
      const weekday = parseDay(d).getUTCDay();
      if (weekday !== 0 && weekday !== 6) n += 1;
    }
    return n;
  }

  // "Last bar 2017-12-06, 3,282 days ago (2,344 sessions behind) · source yfinance: unreachable"
  function freshness(lastBar, behind, src) {
    if (!lastBar) return "—";
    const age = Math.round((parseDay(isoDay(new Date())) - parseDay(lastBar)) / DAY_MS);
    const parts = [`Last bar ${lastBar}, ${age.toLocaleString("en-US")} ` +
                   `day${age === 1 ? "" : "s"} ago`];
    parts[0] += behind > 0
      ? ` (STALE: ${behind.toLocaleString("en-US")} session${behind === 1 ? "" : "s"} behind)`
      : " (up to date)";
    if (src === undefined) parts.push("source: checking…");
    else if (!src) parts.push("source: status unknown");
    else if (src.name === "none") parts.push("no source configured (cache only)");
    else if (src.reachable === null) parts.push(`source ${src.name}: not asked yet`);
    else parts.push(`source ${src.name}: ${src.reachable ? "reachable" : "unreachable"}`);
    return parts.join(" · ");
  }

  // Empty a panel; `para` appends a paragraph to it. A rejected request's problem is said there.
  function openPanel(id, result, what) {
    const box = $(id);
    box.replaceChildren();
    const para = (text, className = "muted") => {
      const p = document.createElement("p");
      p.className = className;
      p.textContent = text;
      box.append(p);
      return p;
    };
    if (result.status === "rejected") {
      const problem = result.reason.problem || {};
      para(`${what} unavailable: ${problem.title || "error"} — ${problem.detail || ""}`);
    }
    return { box, para };
  }

  function renderLive(result, ticker) {
    const { box, para } = openPanel("live", result, "Live metrics");
    if (result.status === "rejected") return;
    const version = state.model ? state.model.version : "the served model";
    const { own, pooled } = result.value;
    const scored = (rows) => rows.some((r) => r.n_scored > 0);
    const recorded = (rows) => rows.reduce((n, r) => Math.max(n, r.n_forecasts), 0);
    if (!own.length && !pooled.length) {
      para(`No live forecast by model ${version} is recorded yet. Every forecast served as of ` +
           "the latest cached bar is recorded, and scored when its bar arrives.");
      return;
    }
    let rows = own, scope = ticker;
    if (!scored(own)) {
      para(own.length
        ? `${ticker}: ${recorded(own)} live forecast${recorded(own) === 1 ? "" : "s"} ` +
          "recorded per horizon, none scored yet (each is scored when its target bar arrives)."
        : `${ticker}: no live forecast recorded yet.`, "notice");
      rows = pooled;
      scope = "All tickers";
    }
    if (!scored(rows)) return;
    para(`${scope}: model ${version}, scored live forecasts against naive.`, "live-meta");
    const table = document.createElement("table");
    table.className = "metrics-table";
    table.id = "live-table";
    const caption = document.createElement("caption");
    caption.className = "visually-hidden";
    caption.textContent = `Live forecasts of ${scope} by horizon`;
    table.append(caption);
    const head = table.createTHead().insertRow();
    for (const text of ["Horizon", "Scored", "MAE", "Naive MAE", "Rel MAE", "In band"]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = text;
      head.append(th);
    }
    const body = table.createTBody();
    const money = (v) => (v === null ? "—" : `$${v.toFixed(3)}`);
    for (const r of rows.filter((x) => x.n_scored > 0)) {
      const tr = body.insertRow();
      tr.dataset.horizon = String(r.horizon);
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = `${r.horizon} d`;
      tr.append(th);
      const cells = [`${r.n_scored} of ${r.n_forecasts}`, money(r.mae), money(r.naive_mae),
                     r.rel_mae === null ? "—" : r.rel_mae.toFixed(3),
                     r.coverage === null ? "—" : `${(100 * r.coverage).toFixed(1)}%`];
      for (const text of cells) tr.insertCell().textContent = text;
      if (r.rel_mae !== null && r.rel_mae !== 1) {
        tr.cells[4].className = r.rel_mae < 1 ? "better" : "worse";
      }
    }
    const scroll = document.createElement("div");
    scroll.className = "table-scroll";  // a phone scrolls the table, never the page
    scroll.append(table);
    box.append(scroll);
  }

  function renderModel() {
    const m = state.model;
    setText("model-version", m ? m.version : "none loaded");
    setText("model-horizon", m ? `1–${m.horizon} trading days` : "—");
    setText("model-trained", m ? `${m.tickers.length} tickers, ${m.split.train[0]} to ` +
                                 `${m.split.train[1]}` : "—");
  }

  function renderBacktest(result, ticker, days) {
    const { box, para } = openPanel("backtest", result, "Backtest metrics");
    if (result.status === "rejected") return;
    const { run, metrics, scope } = result.value;
    if (!run) {
      para("No backtest has been run yet, so there are no metrics to compare with the naive " +
           "baseline. `stockcast backtest` stores one.");
      return;
    }
    if (scope === "*") {
      para(`The latest backtest (run ${run.id}) did not include ${ticker}; below are all its ` +
           `${run.tickers.length} tickers pooled.`, "notice");
    }
    const rows = metrics;
    const meta = [`Run ${run.id}`, `model ${run.model_version}`,
                  `origins ${run.start} to ${run.end}`];
    if (state.model && run.model_version !== state.model.version) {
      meta.push("not the served model");
    }
    para(`${scope === "*" ? "All tickers" : ticker}: ${meta.join(" · ")}.`, "backtest-meta");

    const horizons = [...new Set(rows.map((m) => m.horizon))].sort((a, b) => a - b);
    const label = document.createElement("label");
    label.htmlFor = "backtest-horizon";
    label.textContent = "Horizon";
    const select = document.createElement("select");
    select.id = "backtest-horizon";
    for (const h of horizons) {
      const opt = document.createElement("option");
      opt.value = String(h);
      opt.textContent = `${h} trading day${h === 1 ? "" : "s"} ahead`;
      select.append(opt);
    }
    const chosen = horizons.find((h) => h >= days) ?? horizons[horizons.length - 1];
    select.value = String(chosen);
    const table = document.createElement("div");
    box.append(label, select, table);
    const draw = () => backtestTable(table, rows, Number(select.value));
    select.addEventListener("change", draw);
    draw();
  }

  function backtestTable(container, rows, horizon) {
    // One row per (ticker, horizon, method) with every metric as a field (null: not applicable).
    const value = (method, metric) => {
      const hit = rows.find((m) => m.horizon === horizon && m.method === method);
      const v = hit ? hit[metric] : null;
      return typeof v === "number" ? v : null;
    };
    const table = document.createElement("table");
    table.className = "metrics-table";
    table.id = "backtest-table";
    const caption = document.createElement("caption");
    caption.className = "visually-hidden";
    caption.textContent = `Model vs naive baseline, ${horizon}-day forecasts`;
    table.append(caption);
    const head = table.createTHead().insertRow();
    for (const text of ["Metric", "Model", "Naive"]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = text;
      head.append(th);
    }
    const body = table.createTBody();
    for (const metric of BACKTEST_METRICS) {
      const { title: name, unit, better } = state.catalogue.get(metric);
      const fmt = FORMAT_BY_UNIT[unit] || ((v) => v.toFixed(3));
      const model = value("model", metric), naive = value("naive", metric);
      if (model === null && naive === null) continue;
      const tr = body.insertRow();
      tr.dataset.metric = metric;
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = name;
      tr.append(th);
      const wins = better && model !== null && naive !== null && model !== naive
        ? ((better === "lower") === (model < naive) ? "model" : "naive") : null;
      for (const [method, v] of [["model", model], ["naive", naive]]) {
        const td = tr.insertCell();
        td.textContent = v === null ? "—" : fmt(v);
        if (wins === method) td.className = "better";
      }
    }
    const verdict = document.createElement("p");
    verdict.className = "verdict";
    const rel = value("model", "rel_mae"), p = value("model", "dm_squared_pvalue");
    const parts = [];
    if (rel !== null) {
      parts.push(`Model MAE is ${rel.toFixed(3)}× the naive baseline's ` +
                 `(${rel < 1 ? "better" : rel > 1 ? "worse" : "the same"}).`);
    }
    if (p !== null) {
      parts.push(`Diebold–Mariano p = ${p.toFixed(3)}: ` +
                 (p < 0.05 ? "the difference is statistically significant."
                           : "not a statistically significant difference."));
    }
    verdict.textContent = parts.join(" ");
    container.replaceChildren(table, verdict);
  }

  // -- start -----------------------------------------------------------------------------

  async function init() {
    $("forecast-form").addEventListener("submit", (event) => {
      event.preventDefault();
      run();
    });
    for (const id of ["start", "end"]) {
      $(id).addEventListener("input", () => { state.datesEdited = true; });
    }
    $("ticker").addEventListener("change", () => {
      applyTickerRange($("ticker").value.trim().toUpperCase());
    });
    for (const id of ["show-candles", "show-sma20", "show-sma50", "show-bollinger"]) {
      $(id).addEventListener("change", drawChart);
    }

    const [model, tickers] = await Promise.allSettled([api("models/current"), api("tickers")]);
    if (model.status === "fulfilled") {
      state.model = model.value;
      $("days").max = String(model.value.horizon);
    }
    renderModel();
    $("days").value = String(Math.min(DEFAULT_DAYS, horizonLimit()));
    if (tickers.status === "fulfilled") {
      const list = $("ticker-list");
      for (const t of tickers.value.tickers) {
        state.tickers.set(t.ticker, t);
        const opt = document.createElement("option");
        opt.value = t.ticker;
        opt.label = `${t.first_bar_date} to ${t.last_bar_date}`;
        list.append(opt);
      }
    }
    const cached = [...state.tickers.values()];
    const first = state.tickers.get("AAPL") || cached.find((t) => t.seen_in_training) || cached[0];
    if (!first) {
      const today = isoDay(new Date());
      $("end").value = today;
      $("start").value = yearBefore(today);
      showPlaceholder("No tickers are cached yet: type a symbol and press Forecast.");
      if (tickers.status === "rejected") showApiError("Cannot list tickers", tickers.reason);
      else showInfo("No tickers cached yet; any Yahoo symbol is fetched on demand.");
      document.body.dataset.state = "idle";
      return;
    }
    $("ticker").value = first.ticker;
    applyTickerRange(first.ticker);
    await run();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
