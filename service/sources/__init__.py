"""Where bars come from (yfinance, CSV/Parquet), the one validator, and the bar cache."""
