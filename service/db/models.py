"""SQLAlchemy 2.0 typed models: the bar cache and per-ticker refresh bookkeeping."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Date, DateTime, Float, Index, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Bar(Base):
    """One daily OHLCV bar; (ticker, date) is the key, date is the exchange trading date."""

    __tablename__ = "bars"

    ticker: Mapped[str] = mapped_column(String(16), primary_key=True)
    date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    open: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)
    low: Mapped[float] = mapped_column(Float)
    close: Mapped[float] = mapped_column(Float)
    adj_close: Mapped[float] = mapped_column(Float)
    volume: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(32))
    ingested_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Ticker(Base):
    """What the cache knows about one symbol: stored range and the last refresh outcome."""

    __tablename__ = "tickers"

    symbol: Mapped[str] = mapped_column(String(16), primary_key=True)
    first_bar_date: Mapped[dt.date | None] = mapped_column(Date)
    last_bar_date: Mapped[dt.date | None] = mapped_column(Date)
    last_refresh_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_refresh_status: Mapped[str | None] = mapped_column(String(16))
    last_refresh_error: Mapped[str | None] = mapped_column(Text)


Index("ix_bars_date", Bar.date)
