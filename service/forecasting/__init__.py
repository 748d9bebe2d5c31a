"""Pure numpy/pandas numerics: features, scaling, windows, split, calendar, metrics, baselines."""
