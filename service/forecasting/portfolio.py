"""A costed daily long-short portfolio from a ranking signal (Qlib's TopkDropout view).

Every session t, over the tickers with both a signal and a realized next-day return, hold
w_i = +1/k on the k highest predicted returns and -1/k on the k lowest (gross 2, net 0); a
session with fewer than 2k such tickers is flat. Positions are rebalanced to those targets at
each origin's close and held to the next close (no intraday drift), so the day's return and its
trading are

    gross_t = Σ_i w_{t,i} (exp(r_{t,i}) - 1),    traded_t = Σ_i |w_{t,i} - w_{t-1,i}|  (w_{-1} = 0)
    net_t   = gross_t - c · traded_t              (c = cost in basis points per side / 10⁴)

Turnover is the mean over sessions of traded_t / (2 · gross exposure): 1.0 = the whole book
replaced every day. The benchmark is equal-weight buy-and-hold: 1/N in each ticker at the first
session, left to drift, paying c once on entry. Sharpe is annualized with √252, risk-free 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.forecasting.metrics import annualized_sharpe, cumulative_return, max_drawdown

DEFAULT_TOP_K = 5
DEFAULT_COST_BP = 5.0


@dataclass(frozen=True)
class PortfolioResult:
    """Daily net and gross returns of one book, and what they add up to."""

    net: np.ndarray  # (T,) net simple returns
    gross: np.ndarray  # (T,) before costs
    traded: np.ndarray  # (T,) Σ|Δw| per session
    turnover: float
    cost: float  # Σ_t c · traded_t: total cost in return units
    sharpe: float
    gross_sharpe: float
    cum_return: float
    max_drawdown: float

    @classmethod
    def of(cls, gross: np.ndarray, traded: np.ndarray, cost_bp: float,
           gross_exposure: float) -> PortfolioResult:
        costs = cost_bp / 1e4 * traded
        net = gross - costs
        return cls(net=net, gross=gross, traded=traded,
                   turnover=float(np.mean(traded) / (2.0 * gross_exposure)) if traded.size
                   else float("nan"),
                   cost=float(costs.sum()), sharpe=annualized_sharpe(net, 1),
                   gross_sharpe=annualized_sharpe(gross, 1), cum_return=cumulative_return(net),
                   max_drawdown=max_drawdown(net) if net.size else float("nan"))


def topk_weights(signal: np.ndarray, realized: np.ndarray, k: int) -> np.ndarray:
    """(T, N) weights: +1/k on the top-k signal, -1/k on the bottom-k, among tickers with both."""
    signal = np.asarray(signal, dtype=np.float64)
    realized = np.asarray(realized, dtype=np.float64)
    if signal.shape != realized.shape or signal.ndim != 2:
        raise ValueError(f"signal and realized must be (sessions, tickers) alike, got "
                         f"{signal.shape} and {realized.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    weights = np.zeros_like(signal)
    valid = np.isfinite(signal) & np.isfinite(realized)
    for t in range(signal.shape[0]):
        names = np.flatnonzero(valid[t])
        if names.size < 2 * k:
            continue
        # Stable sort: ties go to the earlier column (ticker order), so weights are reproducible.
        order = names[np.argsort(signal[t, names], kind="stable")]
        weights[t, order[-k:]] = 1.0 / k
        weights[t, order[:k]] = -1.0 / k
    return weights


def topk_long_short(signal, realized, k: int = DEFAULT_TOP_K,
                    cost_bp: float = DEFAULT_COST_BP) -> PortfolioResult:
    """The daily top-k / bottom-k book of a signal, on (T, N) next-day log returns."""
    weights = topk_weights(signal, realized, k)
    simple = np.nan_to_num(np.expm1(np.asarray(realized, dtype=np.float64)))
    gross = (weights * simple).sum(axis=1)
    previous = np.vstack([np.zeros((1, weights.shape[1])), weights[:-1]])
    traded = np.abs(weights - previous).sum(axis=1)
    return PortfolioResult.of(gross, traded, cost_bp, gross_exposure=2.0)


def buy_and_hold(realized, cost_bp: float = DEFAULT_COST_BP) -> PortfolioResult:
    """Equal-weight buy-and-hold of the tickers with a return at the first session."""
    r = np.asarray(realized, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] == 0:
        raise ValueError(f"realized must be (sessions, tickers) with a session, got {r.shape}")
    held = np.isfinite(r[0])
    if not held.any():
        raise ValueError("no ticker has a return at the first session")
    value = held / held.sum()  # dollars per ticker, 1 in all
    gross = np.empty(r.shape[0])
    for t in range(r.shape[0]):
        before = value.sum()
        value = value * (1.0 + np.nan_to_num(np.expm1(r[t])))  # a missing day: unchanged
        gross[t] = value.sum() / before - 1.0
    traded = np.zeros(r.shape[0])
    traded[0] = 1.0  # the entry; the book is never rebalanced
    return PortfolioResult.of(gross, traded, cost_bp, gross_exposure=1.0)
