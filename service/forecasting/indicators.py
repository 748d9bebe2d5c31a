"""Chart indicators in price units (what GET /bars draws), from `ta` like the model's features.

The model's features (features.py) are the same indicators made scale-free (divided by the
price) on adj_close; a chart overlays them on the traded close, so here they stay in price units
on `close`. Same `ta` classes, same parameters: no second implementation of any indicator.
"""

from __future__ import annotations

import pandas as pd
from ta.momentum import RSIIndicator
from ta.trend import MACD, SMAIndicator
from ta.volatility import BollingerBands

INDICATOR_NAMES = ("sma20", "sma50", "bb_upper", "bb_lower", "rsi14", "macd", "macd_signal",
                   "macd_hist")


def chart_indicators(bars: pd.DataFrame, price: str = "close") -> pd.DataFrame:
    """Frame (index `date`, INDICATOR_NAMES columns) of one ticker's bars; NaN in warm-up."""
    series = pd.Series(bars[price].to_numpy(dtype="float64"))
    macd = MACD(series, window_slow=26, window_fast=12, window_sign=9, fillna=False)
    bands = BollingerBands(series, window=20, window_dev=2, fillna=False)
    columns = {
        "sma20": SMAIndicator(series, window=20).sma_indicator(),
        "sma50": SMAIndicator(series, window=50).sma_indicator(),
        "bb_upper": bands.bollinger_hband(),
        "bb_lower": bands.bollinger_lband(),
        "rsi14": RSIIndicator(series, window=14, fillna=False).rsi(),
        "macd": macd.macd(),
        "macd_signal": macd.macd_signal(),
        "macd_hist": macd.macd_diff(),
    }
    frame = pd.DataFrame({name: col.to_numpy() for name, col in columns.items()})
    frame.index = pd.DatetimeIndex(bars["date"], name="date")
    return frame
