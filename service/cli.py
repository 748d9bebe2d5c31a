"""The `stockcast` command line. Training commands import torch lazily: serving never does."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from service.config import get_settings

app = typer.Typer(help="stockcast: stock forecasts from an ONNX model over a bar cache.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _fail(message: str, code: int = 1):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _engine():
    from service.db.session import make_engine

    return make_engine(get_settings().database_url)


def _parse_tickers(raw: str | None) -> list[str]:
    from service.tickers import normalize_ticker

    return [normalize_ticker(t) for t in (raw or "").replace(" ", ",").split(",") if t]


@app.callback()
def main(log_level: Annotated[Optional[str], typer.Option(help="Logging level.")] = None):
    logging.basicConfig(level=(log_level or get_settings().log_level).upper(),
                        format="%(levelname)s %(name)s: %(message)s")


@db_app.command("upgrade")
def db_upgrade(revision: str = "head"):
    """Migrate the configured database up to REVISION (default head)."""
    from service.db.session import upgrade

    upgrade(get_settings().database_url, revision)
    typer.echo(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str):
    """Migrate the configured database down to REVISION ("base" empties it)."""
    from service.db.session import downgrade

    downgrade(get_settings().database_url, revision)
    typer.echo(f"database at {revision}")


@app.command()
def ingest(
    source: Annotated[str, typer.Option(help="csv (a file) or yfinance (the network).")] = "csv",
    path: Annotated[Optional[Path], typer.Option(help="CSV/Parquet file (gzip ok).")] = None,
    ticker: Annotated[Optional[str], typer.Option(help="Ticker of a single-ticker file.")] = None,
    tickers: Annotated[Optional[str], typer.Option(help="Comma list, for yfinance.")] = None,
    start: Annotated[Optional[dt.datetime], typer.Option(formats=["%Y-%m-%d"])] = None,
    end: Annotated[Optional[dt.datetime], typer.Option(formats=["%Y-%m-%d"])] = None,
    progress: bool = True,
):
    """Load bars into the cache and print `read N, stored M, rejected K (reasons)`."""
    from service.errors import StockcastError
    from service.ingest import ingest_file, ingest_from_source

    engine = _engine()
    try:
        if source == "csv":
            if path is None:
                _fail("--path is required with --source csv")
            if not path.exists():
                _fail(f"no such file: {path}")
            report = ingest_file(engine, path, ticker=ticker, progress=progress)
        elif source == "yfinance":
            from service.sources.base import make_source

            settings = get_settings().model_copy(update={"source": "yfinance"})
            report = ingest_from_source(
                engine, make_source(settings), _parse_tickers(tickers or ticker),
                start.date() if start else None, end.date() if end else None, progress=progress)
        else:
            _fail(f"unknown source {source!r}: use csv or yfinance")
    except StockcastError as exc:
        _fail(str(exc))
    typer.echo(report.summary())


@app.command("tickers")
def list_cached_tickers():
    """List cached tickers with their stored date range and last refresh outcome."""
    from service.db.bars import list_tickers

    with _engine().connect() as conn:
        for t in list_tickers(conn):
            typer.echo(f"{t.symbol:<10} {t.first_bar_date} .. {t.last_bar_date}  "
                       f"{t.last_refresh_status or '-'}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
