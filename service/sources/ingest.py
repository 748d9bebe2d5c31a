"""Bulk ingest: read a source's frame, validate it once, upsert it, and reconcile the counts."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine
from tqdm import tqdm

from service.db import bars as bars_db
from service.db.market import sessions_missing
from service.sources.cache import repriced
from service.sources.market import update_market
from service.sources.store import AfterWrite, validate, write_bars
from service.sources.validate import ValidationResult

REBASED = "rebased_history"  # a reject reason of ingest's own (it needs the stored bars)


@dataclass(frozen=True)
class IngestReport:
    """read = stored + rejected, always; written counts new or changed rows among stored."""

    read: int
    stored: int
    written: int
    rejected: dict[str, int] = field(default_factory=dict)
    tickers: int = 0
    # reason -> its first rejected row, "TICKER YYYY-MM-DD": where to look in the file
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def example_lines(self) -> list[str]:
        """One line per reason with an example: `  missing_field: first AAPL 2013-02-08`."""
        return [f"  {reason}: first {self.examples[reason]}" for reason in self.rejected
                if reason in self.examples]

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in self.rejected.items() if v) or "none"
        return (f"read {self.read}, stored {self.stored}, rejected {self.n_rejected} "
                f"({reasons}); {self.written} new or changed, "
                f"{self.stored - self.written} unchanged, {self.tickers} tickers")


def ingest_frame(engine: Engine, frame: pd.DataFrame, source: str,
                 progress: bool = False, after_write: AfterWrite | None = None,
                 today: dt.date | None = None) -> IngestReport:
    """Validate a multi-ticker frame and upsert every valid row in one transaction.

    `after_write(conn, tickers)` then runs in its own transaction (the ledger's scoring).
    Rows dated after `today` (default: the UTC date now) are rejected as future_date, and a
    ticker's rows on another price basis than its stored bars as rebased_history (below).
    """
    validated = validate(frame, today=today)
    result = _refuse_rebased(engine, validated)
    bars = result.bars
    with tqdm(total=len(bars), unit="bars", desc="ingest", disable=not progress,
              mininterval=0.5) as bar:
        count = write_bars(engine, result, source, progress=bar.update, after_write=after_write)
    if not count.written and len(bars):
        _repair_after_write(engine, bars, after_write)
    stored = count.offered
    report = IngestReport(read=result.read, stored=stored, written=count.written,
                          rejected=dict(result.rejected),
                          tickers=int(bars["ticker"].nunique()) if len(bars) else 0,
                          examples=_examples(frame, validated, result))
    assert report.read == report.stored + report.n_rejected, report  # reconciliation invariant
    return report


def _examples(frame: pd.DataFrame, validated: ValidationResult,
              result: ValidationResult) -> dict[str, str]:
    """Each reason's first rejected row as "TICKER YYYY-MM-DD" (as read; "(no ticker)",
    "(no date)" where the row has none); rebased_history's is the first refused ticker's first
    bar."""
    def row(ticker, date) -> str:
        name = "(no ticker)" if ticker is None or pd.isna(ticker) or not str(ticker) else ticker
        day = pd.Timestamp(date)
        return f"{name} {'(no date)' if pd.isna(day) else f'{day:%Y-%m-%d}'}"

    at = list(validated.first.values())  # only those rows' dates: not the whole file's again
    dates = pd.to_datetime(frame["date"].iloc[at], errors="coerce")
    tickers = frame["ticker"].iloc[at] if "ticker" in frame else [None] * len(at)
    out = {reason: row(t, d) for reason, t, d in zip(validated.first, tickers, dates)}
    if REBASED in result.rejected:
        kept = set(result.bars["ticker"])
        refused = validated.bars[~validated.bars["ticker"].isin(kept)]
        out[REBASED] = row(refused["ticker"].iloc[0], refused["date"].iloc[0])
    return out


def _repair_after_write(engine: Engine, bars: pd.DataFrame,
                        after_write: AfterWrite | None) -> None:
    """Nothing new was written: an earlier ingest of these bars may have died after its bars
    committed and before the steps that follow them (the market series, the features), and
    re-running it, the natural repair, did nothing (a hostile pass: 0 market sessions and 0
    feature sets for good). Both steps are no-ops when current: the series is rewritten only
    where it lacks a session, and the features are gated by the bars revision."""
    since, until = (pd.Timestamp(d).date() for d in (bars["date"].min(), bars["date"].max()))
    with engine.begin() as conn:
        if sessions_missing(conn, since, until):
            update_market(conn, since)
    if after_write is not None:
        with engine.begin() as conn:
            after_write(conn, sorted(bars["ticker"].unique()))


def _refuse_rebased(engine: Engine, result: ValidationResult) -> ValidationResult:
    """Reject (as rebased_history) every row of a ticker whose rows differ from its stored bars
    on each of the (two or more) stored dates they cover, when stored bars before the file's
    first date would stay: a file exported after a split or dividend has re-based every past
    price (close at a split, adj_close at both), and upserting it beside the older bars would
    put a fake -69% return (a 2:1 split) into the features and the market series (a hostile
    pass). A file that starts with the stored history replaces it whole and is not checked; one
    that differs on some covered dates only is a correction (last write wins). The last stored
    day is left out, as the refresh path's re-base check does: a partial session corrected.
    """
    bars = result.bars
    if bars.empty:
        return result
    spans = bars.groupby("ticker")["date"].agg(["min", "max"])
    with engine.connect() as conn:
        states = bars_db.ticker_states(conn, list(spans.index))
        refused = []
        for ticker, span in spans.iterrows():
            state = states.get(ticker)
            if (state is None or state.first_bar_date is None
                    or state.first_bar_date >= span["min"].date()):
                continue
            last = min(span["max"].date(), state.last_bar_date - dt.timedelta(days=1))
            stored = bars_db.read_bars(conn, ticker, span["min"].date(), last)
            differs = repriced(stored, bars[bars["ticker"] == ticker])
            if len(differs) >= 2 and differs.all():
                refused.append(ticker)
    if not refused:
        return result
    drop = bars["ticker"].isin(refused).to_numpy()
    rejected = {**result.rejected, REBASED: int(drop.sum())}
    return ValidationResult(bars[~drop].reset_index(drop=True), result.read, rejected)


def ingest_file(engine: Engine, path: Path, ticker: str | None = None,
                progress: bool = False, after_write: AfterWrite | None = None,
                today: dt.date | None = None) -> IngestReport:
    """Ingest a CSV/Parquet file of bars (see service.sources.csv for accepted layouts)."""
    from service.sources.csv import read_bars_file

    return ingest_frame(engine, read_bars_file(path, ticker=ticker), source="csv",
                        progress=progress, after_write=after_write, today=today)


def ingest_from_source(engine: Engine, source, tickers: list[str], start: dt.date | None,
                       end: dt.date | None, progress: bool = False,
                       after_write: AfterWrite | None = None) -> IngestReport:
    """Fetch each ticker from a BarSource and ingest the lot."""
    frames = [source.fetch(t, start, end).assign(ticker=t) for t in tickers]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return ingest_frame(engine, frame, source=source.name, progress=progress,
                        after_write=after_write)


def refresh_tickers(engine: Engine, settings, tickers: list[str] | None, *, chunk: int = 50,
                    progress: bool = False, after_write: AfterWrite | None = None):
    """Refresh `tickers` (None: every cached one) from the settings' source in batches of
    `chunk`, throttled by its refresh interval, then rebuild the market series once (also the
    repair of any earlier write whose own market update failed); a RefreshReport.

    Each ticker's write leaves the series alone: rewriting it from that write's first date
    reads the whole cross-section over the span, once per ticker, and the rebuild at the end
    would rewrite the same sessions again."""
    from service.db.bars import list_tickers
    from service.sources.base import make_source
    from service.sources.breaker import CircuitBreaker
    from service.sources.cache import BarCache

    if tickers is None:
        with engine.connect() as conn:
            tickers = [t.symbol for t in list_tickers(conn)]
    from service.sources.market import rebuild_market

    cache = BarCache(engine, CircuitBreaker(make_source(settings)),
                     refresh_interval=dt.timedelta(minutes=settings.refresh_interval_minutes),
                     after_write=after_write, update_market=False)
    with tqdm(total=len(tickers), unit="tickers", desc="refresh", disable=not progress,
              mininterval=0.5) as bar:
        report = cache.refresh_many(tickers, chunk=chunk, progress=bar.update)
    rebuild_market(engine)
    return report
