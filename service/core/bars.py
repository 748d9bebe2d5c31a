"""The bar schema: the column names every layer uses, defined once."""

from __future__ import annotations

PRICE_COLUMNS = ("open", "high", "low", "close", "adj_close")
NUMERIC_COLUMNS = (*PRICE_COLUMNS, "volume")  # the values of one bar
BAR_COLUMNS = ("date", *NUMERIC_COLUMNS)  # one ticker's bars frame, in this order
TICKER_BAR_COLUMNS = ("ticker", *BAR_COLUMNS)  # a multi-ticker frame, and the bars table
# The column a market read adds to the bars (`read_bars(..., market=True)`): the equal-weighted
# market's one-session log return on that bar's date, which the market features read.
MARKET_RETURN = "market_return"
