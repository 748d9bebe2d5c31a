"""Two stored backtest runs, row by row: is every metric the same to 17 significant digits?

Every (ticker, horizon, method, metric) row of run A must exist in run B and vice versa, with the
same value printed at 17 significant digits (which round-trips a float64 exactly; NULL equals
NULL). Used to show a speed change moved no forecast and no metric: run the old and the new code
on the same bars, then `python bench/compare_backtests.py A B` (exit 1 on any difference).
Options: --database-url URL (default: the settings'), --skip-tickers T1,T2 (rows of tickers one
run could not score, e.g. a ticker the old code failed on, left out of both).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.core.config import get_settings
from service.db.backtests import METRIC_COLUMNS, get_metrics
from service.db.session import make_engine

KEY = list(METRIC_COLUMNS[:-1])


def _digits(value: float) -> str:
    return "NULL" if value is None or not math.isfinite(value) else f"{value:.17g}"


def metric_differences(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Rows (key, value_a, value_b) that differ at 17 significant digits or exist in one only."""
    merged = a.merge(b, on=KEY, how="outer", suffixes=("_a", "_b"), indicator=True)
    text_a = merged["value_a"].map(_digits)
    text_b = merged["value_b"].map(_digits)
    differ = (merged["_merge"] != "both") | (text_a != text_b)
    return merged.loc[differ, [*KEY, "value_a", "value_b", "_merge"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=int)
    parser.add_argument("run_b", type=int)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--skip-tickers", default="")
    args = parser.parse_args()
    engine = make_engine(args.database_url or get_settings().database_url)
    with engine.connect() as conn:
        a, b = get_metrics(conn, args.run_a), get_metrics(conn, args.run_b)
    engine.dispose()
    skip = {t for t in args.skip_tickers.split(",") if t}
    a, b = a[~a["ticker"].isin(skip)], b[~b["ticker"].isin(skip)]
    diff = metric_differences(a, b)
    print(f"run {args.run_a}: {len(a):,} rows, run {args.run_b}: {len(b):,} rows; "
          f"{len(diff):,} differ at 17 significant digits")
    if not diff.empty:
        print(diff.head(20).to_string(index=False))
    return 1 if len(diff) else 0


if __name__ == "__main__":
    sys.exit(main())
