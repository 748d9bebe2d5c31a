"""A costed daily long-short portfolio from a ranking signal (Qlib's TopkDropout view).

Every session t, over the tickers with a finite signal at t, hold w_i = +1/k on the k highest
predicted returns and -1/k on the k lowest (gross 2, net 0); a session with fewer than 2k such
tickers is flat. Positions at t are chosen from what is known at t only: the signal. Whether the
ticker's next-day return exists (a bar at t+1) is the future and plays no part in the choice.
Positions are rebalanced to those targets at each origin's close and held to the next close (no
intraday drift), so the day's return and its trading are

    gross_t = Σ_i w_{t,i} (exp(r_{t,i}) - 1),    traded_t = Σ_i |w_{t,i} - w_{t-1,i}|  (w_{-1} = 0)
    net_t   = gross_t - c · traded_t              (c = cost in basis points per side / 10⁴)

A held leg whose next-day return is missing (NaN: the ticker has no bar at t+1, i.e. a delisting,
a halt or a data hole) is booked explicitly as a 0 return for that leg: its weight still counts in
gross exposure and in traded_t, and it is closed (traded) when it leaves the book. The true
delisting return is unknown here (the bars stop); 0 is the choice, not an estimate of it, and can
flatter the book when a name leaves the data through a collapse.

Turnover is the mean over sessions of traded_t / (2 · gross exposure): 1.0 = the whole book
replaced every day. The benchmark is equal-weight buy-and-hold: 1/N in each ticker held at the
first session (by default every column; the caller passes which tickers were tradable then, e.g.
those with a price at the first session), left to drift, paying c once on entry; a missing return
is a 0 return for that ticker (its value unchanged that day), never a reason to leave it out. Sharpe is annualized with √252, risk-free 0.
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
    """(T, N) weights: +1/k on the top-k signal, -1/k on the bottom-k, among tickers with a
    finite signal at t.

    `realized` is only checked for shape: weights at t never read it (its row t is the t -> t+1
    outcome, unknown at t), so a name is held into a missing return (see the module docstring).
    """
    signal = np.asarray(signal, dtype=np.float64)
    realized = np.asarray(realized, dtype=np.float64)
    if signal.shape != realized.shape or signal.ndim != 2:
        raise ValueError(f"signal and realized must be (sessions, tickers) alike, got "
                         f"{signal.shape} and {realized.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    weights = np.zeros_like(signal)
    valid = np.isfinite(signal)  # known at t; realized[t] is the future
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
    """The daily top-k / bottom-k book of a signal, on (T, N) next-day log returns; a held leg
    with a missing (NaN) next-day return is booked at 0 (a real delisting return is unknown)."""
    weights = topk_weights(signal, realized, k)
    simple = np.nan_to_num(np.expm1(np.asarray(realized, dtype=np.float64)))
    gross = (weights * simple).sum(axis=1)
    previous = np.vstack([np.zeros((1, weights.shape[1])), weights[:-1]])
    traded = np.abs(weights - previous).sum(axis=1)
    return PortfolioResult.of(gross, traded, cost_bp, gross_exposure=2.0)


def buy_and_hold(realized, cost_bp: float = DEFAULT_COST_BP,
                 held: np.ndarray | None = None) -> PortfolioResult:
    """Equal-weight buy-and-hold of the `held` tickers ((N,) bools, known at the first session,
    e.g. those with a price then; default: every column), bought at the first session.

    Membership never reads `realized` (row 0 is the first session's outcome, the future at entry).
    A missing return is a 0 return for that ticker that day (a real delisting return is unknown).
    """
    r = np.asarray(realized, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] == 0:
        raise ValueError(f"realized must be (sessions, tickers) with a session, got {r.shape}")
    held = (np.ones(r.shape[1], dtype=bool) if held is None
            else np.asarray(held, dtype=bool).reshape(-1))
    if held.shape != (r.shape[1],):
        raise ValueError(f"held must be ({r.shape[1]},) bools, got {held.shape}")
    if not held.any():
        raise ValueError("no ticker is held at the first session")
    value = held / held.sum()  # dollars per ticker, 1 in all
    gross = np.empty(r.shape[0])
    for t in range(r.shape[0]):
        before = value.sum()
        value = value * (1.0 + np.nan_to_num(np.expm1(r[t])))  # a missing day: unchanged
        gross[t] = value.sum() / before - 1.0
    traded = np.zeros(r.shape[0])
    traded[0] = 1.0  # the entry; the book is never rebalanced
    return PortfolioResult.of(gross, traded, cost_bp, gross_exposure=1.0)
