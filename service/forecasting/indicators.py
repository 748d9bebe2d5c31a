"""Chart indicators in price units (what GET /bars draws), from `ta` like the model's features.

The model's features (features.py) are the same indicators made scale-free (divided by the
price) on adj_close; a chart overlays them on the traded close, so here they stay in price units
on `close`. Same `ta` classes, same parameters (spec.INDICATOR_PARAMS): no second
implementation of any indicator.
"""

from __future__ import annotations

import pandas as pd
from ta.momentum import RSIIndicator
from ta.trend import MACD, SMAIndicator
from ta.volatility import BollingerBands

from service.forecasting.spec import INDICATOR_PARAMS as P

# Every chart indicator GET /bars serves, with what it is: the API's schema is generated from
# this table, so adding one here (and its column below) is all the data side needs.
INDICATORS: dict[str, str] = {
    "sma20": f"SMA({P.sma_short}) of the close.",
    "sma50": f"SMA({P.sma_long}) of the close.",
    "bb_upper": f"Bollinger upper band ({P.bollinger_window}, {P.bollinger_dev}).",
    "bb_lower": f"Bollinger lower band ({P.bollinger_window}, {P.bollinger_dev}).",
    "rsi14": f"RSI({P.rsi_window}), 0..100.",
    "macd": f"MACD line ({P.macd_fast}, {P.macd_slow}).",
    "macd_signal": f"MACD signal ({P.macd_signal}).",
    "macd_hist": "MACD line - signal.",
}
INDICATOR_NAMES = tuple(INDICATORS)


def chart_indicators(bars: pd.DataFrame, price: str = "close") -> pd.DataFrame:
    """Frame (index `date`, INDICATOR_NAMES columns) of one ticker's bars; NaN in warm-up."""
    series = pd.Series(bars[price].to_numpy(dtype="float64"))
    macd = MACD(series, window_slow=P.macd_slow, window_fast=P.macd_fast,
                window_sign=P.macd_signal, fillna=False)
    bands = BollingerBands(series, window=P.bollinger_window, window_dev=P.bollinger_dev,
                           fillna=False)
    columns = {
        "sma20": SMAIndicator(series, window=P.sma_short).sma_indicator(),
        "sma50": SMAIndicator(series, window=P.sma_long).sma_indicator(),
        "bb_upper": bands.bollinger_hband(),
        "bb_lower": bands.bollinger_lband(),
        "rsi14": RSIIndicator(series, window=P.rsi_window, fillna=False).rsi(),
        "macd": macd.macd(),
        "macd_signal": macd.macd_signal(),
        "macd_hist": macd.macd_diff(),
    }
    # In the table's order; a documented indicator without a column here is a KeyError.
    frame = pd.DataFrame({name: columns[name].to_numpy() for name in INDICATORS})
    frame.index = pd.DatetimeIndex(bars["date"], name="date")
    return frame
