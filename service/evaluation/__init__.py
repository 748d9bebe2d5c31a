"""Evaluation: walk-forward forecasts over many origins, scoring, reports and plots, the gate."""
