"""statsmodels' exact AR(1) + mean likelihood, the same floats, without its per-period BLAS calls.

The ARIMA baseline's fit (statsmodels `ARIMA(order=(1, 0, 0), trend="c")`, exact Gaussian MLE by
L-BFGS-B with a forward-difference gradient) evaluates the likelihood ~21 times a ticker, each a
run of statsmodels' conventional Kalman filter over ~1,000 returns: a dozen BLAS calls on 1 x 1
matrices per period, 9/10 of the fit's time. For this model (state y_t - mean, Z = 1, H = 0,
T = phi, Q = sigma2, stationary start) `ar1_loglikeobs` performs the filter's floating-point
operations in the filter's order — the first periods one by one until P repeats exactly (then
P, F and log F are the same in every later period), the rest as whole-array operations — so
each period's log likelihood is the filter's, bit for bit,
and `exact_ar1_arima` hands the optimizer the same number statsmodels would: the same
optimizer path, the same estimates (tests/unit/test_ar1_likelihood.py compares every
likelihood an estimation asks for, and the estimates, with statsmodels').

The steady state's recursion a_{t+1} = phi (a_t + P (F^-1 (y_t - (mean + a_t)))) is sequential,
but each a_{t+1} hardly depends on a_t (the gain is ~1): it is solved as a fixed point of
whole-array sweeps (each sweep makes at least one more period right: a handful on real returns,
at most 14 over 300 fit-like draws; a near-constant series can need one a period, so past 64
sweeps statsmodels' filter answers instead), and the fixed point is the recursion's own sequence, exactly. Anything outside this model (another
order, fixed parameters, complex-step calls, a filter option changed, a non-positive F) goes to
statsmodels' own filter.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_LOG_2PI = math.log(2 * math.pi)
_MIN_F = 1e-12  # statsmodels' univariate inversion refuses F below this (LinAlgError)
# P repeats after 1-3 periods on real returns; one still changing after this many goes to
# statsmodels' filter.
_MAX_SCALAR_PERIODS = 64
# The state sweeps settle in a few on most series; a near-constant one can take one sweep a
# period (O(n^2)): past this many, statsmodels' filter is the faster way to the same numbers.
_MAX_SWEEPS = 64
# Beyond this scale statsmodels' own stationary variance is computed otherwise (overflow in its
# Lyapunov solver's intermediate products): left to it. Percent returns are ~1e0.
_MAX_SCALE = 1e100


def stationary_ar1_cov(ar: float, sigma2: float) -> float:
    """The stationary variance sigma2 / (1 - ar^2) as statsmodels computes it for one state:
    its discrete Lyapunov solver's bilinear transform (LU solves by a + 1, a continuous
    Lyapunov equation solved by `trsyl`), which for 1 x 1 matrices is these divisions."""
    ap1 = ar + 1.0
    b = (ar - 1.0) / ap1
    f = -2.0 * ((sigma2 / ap1) / ap1)
    return f / (b + b)


def ar1_loglikeobs(y: np.ndarray, mean: float, ar: float, sigma2: float) -> np.ndarray | None:
    """Per-period log likelihoods (n,) of y under y_t - mean ~ AR(1)(ar, sigma2) from the
    stationary start, as statsmodels' conventional Kalman filter computes them; None where
    that filter would refuse (F < 1e-12, not finite) or P never repeats (see below), and where
    its arithmetic is not this one's: a unit or explosive root (|ar| >= 1: its Lyapunov solver
    divides by zero or goes its own way), parameters not finite or beyond `_MAX_SCALE`."""
    if not (abs(ar) < 1.0 and abs(mean) < _MAX_SCALE and 0.0 < sigma2 < _MAX_SCALE):
        return None  # NaN fails every comparison: left to statsmodels too
    n = y.size
    out = np.empty(n)
    a, p = 0.0, stationary_ar1_cov(ar, sigma2)  # predicted state and its variance
    t = 0
    # Period by period until P repeats: forecast, univariate inversion, updating, log
    # likelihood, prediction, symmetrised P (a no-op for 1 x 1). (statsmodels' own steady
    # state never starts here: the mean is an observation intercept per period, so the model is
    # not time-invariant, and the filter recomputes P every period.)
    while t < n:
        v = float(y[t]) - (mean + a)
        if not p >= _MIN_F:  # NaN too
            return None
        inv = 1.0 / p
        gain_v = inv * v
        out[t] = -0.5 * (_LOG_2PI + math.log(p)) - 0.5 * (v * gain_v)
        filtered = a + p * gain_v
        filtered_p = p - (p * inv) * p
        predicted_p = sigma2 + (ar * filtered_p) * ar
        predicted_p = (predicted_p + predicted_p) * 0.5
        a, repeats = ar * filtered, predicted_p == p
        p = predicted_p
        t += 1
        if repeats:
            break
        if t == _MAX_SCALAR_PERIODS:
            return None
    if t == n:
        return out
    # From here P is a fixed point of its own recursion (it depends on nothing else): every
    # later period has this P, F = P and log F. states[k] = a_{t+k}; a first guess from a gain
    # of exactly 1.
    rest = np.asarray(y[t:], dtype=np.float64)
    inv = 1.0 / p
    states = np.empty(rest.size)
    states[0] = a
    states[1:] = ar * (rest[:-1] - mean)
    for _ in range(min(rest.size, _MAX_SWEEPS)):
        v = rest - (mean + states)
        gain_v = inv * v
        following = ar * (states + p * gain_v)
        if np.array_equal(following[:-1], states[1:]):
            break
        states[1:] = following[:-1]
    else:  # not settled within the sweeps: statsmodels' filter
        return None
    out[t:] = -0.5 * (_LOG_2PI + math.log(p)) - 0.5 * (v * gain_v)
    return out


@lru_cache(maxsize=1)
def exact_ar1_arima() -> type:
    """statsmodels' ARIMA whose likelihood, for an ARIMA(1, 0, 0) with a constant evaluated by
    its own `fit`, is `ar1_loglikeobs` summed as statsmodels sums it (np.sum): the same value,
    so `fit` takes the same optimizer path to the same estimates. Every other call (another
    model, fixed parameters, complex step, a changed filter option) is statsmodels' own."""
    from statsmodels.tsa.arima.model import ARIMA
    from statsmodels.tsa.statespace.kalman_filter import (
        FILTER_CONVENTIONAL,
        INVERT_UNIVARIATE,
        STABILITY_FORCE_SYMMETRY,
        TIMING_INIT_PREDICTED,
    )

    class ExactAR1ARIMA(ARIMA):
        _is_ar1: bool | None = None  # the check, held for the length of one `fit` only

        def fit(self, *args, **kwargs):
            # The filter options do not change during a fit, and the checks cost as much as
            # the filter: checked once a fit, not once a likelihood. Between fits a caller may
            # change them (a burn-in, another initialisation): checked again.
            self._is_ar1 = self._check_ar1()
            try:
                return super().fit(*args, **kwargs)
            finally:
                self._is_ar1 = None

        def _ar1_model(self) -> bool:
            """Whether this is the model ar1_loglikeobs computes."""
            return self._check_ar1() if self._is_ar1 is None else self._is_ar1

        def _check_ar1(self) -> bool:
            ssm = self.ssm
            return bool(
                self.order == (1, 0, 0) and self.seasonal_order[:3] == (0, 0, 0)
                and self.param_names == ["const", "ar.L1", "sigma2"]
                and not self._has_fixed_params and ssm.k_states == 1 and ssm.k_endog == 1
                and ssm.filter_method == FILTER_CONVENTIONAL
                and ssm.inversion_method & INVERT_UNIVARIATE
                and ssm.stability_method == STABILITY_FORCE_SYMMETRY
                and ssm.filter_timing == TIMING_INIT_PREDICTED
                and ssm.loglikelihood_burn == 0
                # A time-invariant model would let statsmodels' steady state start (its
                # tolerance test); the mean as a per-period intercept keeps it off.
                and not ssm.time_invariant
                # A missing observation takes the filter's missing-data branch.
                and np.isfinite(self.endog).all()
                and bool(np.abs(self.endog).max() < _MAX_SCALE)
                and ssm.initialization.initialization_type == "stationary")

        def loglike(self, params, *args, **kwargs):
            # The call fit's optimizer makes: loglike(params, flags) with untransformed params.
            if (len(args) == 1 and isinstance(args[0], dict) and not kwargs
                    and not args[0].get("complex_step", False) and self._ar1_model()):
                flags = args[0]
                mean, ar, sigma2 = (float(x) for x in self.handle_params(
                    params, transformed=flags.get("transformed", True),
                    includes_fixed=flags.get("includes_fixed", False)))
                terms = ar1_loglikeobs(self.endog[:, 0], mean, ar, sigma2)
                if terms is not None:
                    return np.sum(terms)
            return super().loglike(params, *args, **kwargs)

    return ExactAR1ARIMA
