"""American option values by Li's QD+ approximation, in any array namespace.

Method: J. Li (2010), "Analytical approximations for the critical stock prices
of American options: a performance comparison", Review of Derivatives
Research 13, the "QD+" formula, as restated by Andersen, Lake and Offengelt
(2016, "High-performance American option pricing", section 4) and implemented
in QuantLib's ``QdPlusAmericanEngine`` boundary equation.

Everything is done for a *unit-strike put*: a put of strike ``K`` on spot ``S``
is ``K · v(S/K; r, q)``, and a call is priced by the McDonald–Schroder symmetry
``C(S, K; r, q) = P(K, S; q, r) = S · v(K/S; q, r)``. The exercise boundary of
the unit-strike put depends on ``(τ, r, q, σ)`` only, not on the spot, so a
scenario grid solves it once per contract and volatility level and reuses it
across every price move (``kernels.grid``).

Accuracy (measured by ``tests/kernels/test_american.py`` against QuantLib's
2,001-step Leisen–Reimer binomial tree on random contracts with T ≤ 2 years,
vol 5–90%, rate 0–6%, yield 0–4%): see ``docs/pricing.md``.
"""

from __future__ import annotations

from typing import Any

from ._xp import as_bool, broadcast_float, namespace
from .normal import mills_ratio_hart

_INV_SQRT_2PI = 0.3989422804014327
_MAX_ITER = 60
_TOL = 1e-13


def _tails(xp: Any, d: Any):
    """``(Φ(-d), φ(d))`` from one exponential."""
    a = xp.abs(d)
    e = xp.exp(a * a * -0.5)
    tail = e * mills_ratio_hart(a)
    return xp.where(d > 0.0, tail, 1.0 - tail), e * _INV_SQRT_2PI


class AmericanPut:
    """Spot-independent constants of the unit-strike QD+ put and its exercise boundary.

    Arrays of one shape (the options); ``boundary`` is the critical spot/strike
    ratio below which the put is exercised. ``early`` marks options for which
    early exercise can pay (positive rate, positive time and volatility);
    elsewhere the American value equals the European one.
    """

    def __init__(self, xp: Any, tau: Any, r: Any, q: Any, vol: Any) -> None:
        self.xp = xp
        self.early = (r > 0.0) & (tau > 0.0) & (vol > 0.0)
        tau = xp.where(self.early, tau, 1.0)
        r = xp.where(self.early, r, 0.05)
        vol = xp.where(self.early, vol, 0.2)
        self.tau, self.r, self.q, self.vol = tau, r, q, vol
        s2 = vol * vol
        self.v = vol * xp.sqrt(tau)
        self.dr = xp.exp(-r * tau)
        self.dq = xp.exp(-q * tau)
        h = -xp.expm1(-r * tau)
        omega = 2.0 * (r - q) / s2
        disc = xp.sqrt((omega - 1.0) ** 2 + 8.0 * r / (s2 * h))
        self.lam = 0.5 * (-(omega - 1.0) - disc)
        lam_prime = 2.0 * r / (s2 * h * h * disc)
        # 2λ + ω − 1 = −disc
        self.alpha = -2.0 * self.dr * r / (s2 * disc)
        self.beta = self.alpha * (1.0 / h - lam_prime / disc) - self.lam
        self.b2 = 0.5 * self.alpha * lam_prime
        self.boundary = self._solve_boundary()
        npv, theta = self._npv_theta(self.boundary)
        self.premium = 1.0 - self.boundary - npv
        safe = xp.where(self.premium > 0.0, self.premium, 1.0)
        self.c0 = -self.beta - self.lam + self.alpha * theta / (self.dr * r * safe)

    # --- the boundary equation (QuantLib's QdPlusBoundaryEvaluator, unit strike)
    def _npv_theta(self, b: Any):
        xp = self.xp
        dp = xp.log(b * self.dq / self.dr) / self.v + 0.5 * self.v
        n_dp, phi = _tails(xp, dp)
        n_dm, _ = _tails(xp, dp - self.v)
        npv = self.dr * n_dm - b * self.dq * n_dp
        theta = (
            self.r * self.dr * n_dm
            - self.q * b * self.dq * n_dp
            - self.vol * self.vol * b / (2.0 * self.v) * self.dq * phi
        )
        return npv, theta

    def _f_df(self, b: Any):
        xp = self.xp
        dp = xp.log(b * self.dq / self.dr) / self.v + 0.5 * self.v
        dm = dp - self.v
        n_dp, phi = _tails(xp, dp)
        n_dm, _ = _tails(xp, dm)
        npv = self.dr * n_dm - b * self.dq * n_dp
        theta = (
            self.r * self.dr * n_dm
            - self.q * b * self.dq * n_dp
            - self.vol * self.vol * b / (2.0 * self.v) * self.dq * phi
        )
        one_m = 1.0 - self.dq * n_dp
        f = one_m * b - self.beta * (1.0 - b - npv) + self.alpha * theta / (self.dr * self.r)
        charm = -self.dq * (phi * ((self.r - self.q) / self.v - dm / (2.0 * self.tau)) + self.q * n_dp)
        df = one_m + self.dq * phi / self.v + self.beta * one_m + self.alpha / (self.r * self.dr) * charm
        return f, df

    def _solve_boundary(self) -> Any:
        """Safeguarded Newton on a sign-changing bracket, vectorised, to 1e-13 relative."""
        xp = self.xp
        q_pos = xp.where(self.q > 0.0, self.q, 1.0)
        x_max = xp.where(self.q > 0.0, xp.minimum(1.0, self.r / q_pos), 1.0)
        lo = x_max * 1e-10
        hi = x_max
        f_lo, _ = self._f_df(lo)
        f_hi, _ = self._f_df(hi)
        for _ in range(8):  # widen the top of the bracket where f has one sign on it
            same = (f_lo > 0.0) == (f_hi > 0.0)
            hi = xp.where(same, hi * 2.0, hi)
            f_hi, _ = self._f_df(hi)
        x = hi
        for it in range(_MAX_ITER):
            f, df = self._f_df(x)
            lower = (f > 0.0) == (f_lo > 0.0)
            lo = xp.where(lower, x, lo)
            f_lo = xp.where(lower, f, f_lo)
            hi = xp.where(lower, hi, x)
            step = f / xp.where(df != 0.0, df, 1.0)
            newton = x - step
            ok = (newton > lo) & (newton < hi) & (df != 0.0)
            x_new = xp.where(ok, newton, 0.5 * (lo + hi))
            done = xp.abs(x_new - x) <= _TOL * x_new
            x = x_new
            if it % 4 == 3 and bool(xp.all(done | ~self.early)):
                break
        return x

    _FIELDS = ("early", "tau", "r", "q", "vol", "v", "dr", "dq", "lam", "alpha", "beta",
               "b2", "boundary", "premium", "c0")

    def take(self, index: Any) -> "AmericanPut":
        """A copy holding the options at ``index`` (integer array of any shape)."""
        xp = self.xp
        flat = xp.reshape(index, (-1,))
        new = object.__new__(AmericanPut)
        new.xp = xp
        for name in self._FIELDS:
            setattr(new, name, xp.reshape(xp.take(getattr(self, name), flat), index.shape))
        return new

    def value(self, x: Any) -> Any:
        """Unit-strike American put value at spot/strike ratio ``x`` (broadcasts with the state)."""
        euro = _unit_european_put(self.xp, x, self.v, self.dr, self.dq)
        return self.put_value(x, euro)

    def put_value(self, x: Any, european: Any) -> Any:
        """Unit-strike American put value at spot/strike ratio ``x`` given its European value.

        ``x`` and ``european`` broadcast against the constants' shape.
        """
        xp = self.xp
        b = self.boundary
        ratio = x / b
        log_r = xp.log(xp.maximum(ratio, 1e-300))
        den = 1.0 - self.b2 * log_r * log_r - self.c0 * log_r
        addon = self.premium * xp.exp(self.lam * log_r) / xp.where(den > 0.0, den, 1.0)
        cont = european + xp.where((den > 0.0) & (self.premium > 0.0), addon, 0.0)
        value = xp.where(ratio > 1.0, cont, 1.0 - x)
        value = xp.maximum(value, xp.maximum(european, 1.0 - x))
        return xp.where(self.early, value, xp.maximum(european, 0.0))


def _unit_european_put(xp: Any, x: Any, v: Any, dr: Any, dq: Any) -> Any:
    """European put of strike 1 at spot ratio ``x`` with ``v = σ√τ`` > 0."""
    dp = xp.log(x * dq / dr) / v + 0.5 * v
    n_dp, _ = _tails(xp, dp)
    n_dm, _ = _tails(xp, dp - v)
    return xp.maximum(dr * n_dm - x * dq * n_dp, 0.0)


def _symmetric_inputs(xp: Any, is_call: Any, spot: Any, strike: Any, rate: Any, q: Any):
    """Unit-put inputs: ``(x, scale, r_eff, q_eff)`` with value = scale · v(x; r_eff, q_eff)."""
    x = xp.where(is_call, strike / spot, spot / strike)
    scale = xp.where(is_call, spot, strike)
    return x, scale, xp.where(is_call, q, rate), xp.where(is_call, rate, q)


def american_price(
    is_call: Any, spot: Any, strike: Any, t: Any, vol: Any, rate: Any, dividend_yield: Any = 0.0
) -> Any:
    """American option value per unit of underlying (QD+), broadcast over the inputs, float64.

    ``t <= 0`` gives the intrinsic value. Calls on non-dividend-paying
    underlyings equal their European value, as do puts at rates ≤ 0.
    """
    xp = namespace(is_call, spot, strike, t, vol, rate, dividend_yield)
    spot, strike, t, vol, rate, q = broadcast_float(xp, spot, strike, t, vol, rate, dividend_yield)
    call = as_bool(xp, is_call, like=spot)
    if call.shape != spot.shape:
        call = xp.broadcast_to(call, spot.shape)
    x, scale, r_eff, q_eff = _symmetric_inputs(xp, call, spot, strike, rate, q)
    live = (t > 0.0) & (vol > 0.0)
    qd = AmericanPut(xp, xp.where(live, t, 1.0), r_eff, q_eff, xp.where(live, vol, 0.2))
    v = vol * xp.sqrt(xp.maximum(t, 0.0))
    v = xp.where(live, v, 1.0)
    dr = xp.exp(-r_eff * t)
    dq = xp.exp(-q_eff * t)
    euro = _unit_european_put(xp, x, v, dr, dq)
    unit = qd.put_value(x, euro)
    return xp.where(live, scale * unit, scale * xp.maximum(1.0 - x, 0.0))


def american_boundary(
    is_call: Any, spot: Any, strike: Any, t: Any, vol: Any, rate: Any, dividend_yield: Any = 0.0
) -> Any:
    """Critical spot of immediate exercise (QD+), float64.

    A put is exercised at spots at or below it, a call at or above it; ``inf``
    (calls) or 0 (puts) where early exercise never pays.
    """
    xp = namespace(is_call, spot, strike, t, vol, rate, dividend_yield)
    spot, strike, t, vol, rate, q = broadcast_float(xp, spot, strike, t, vol, rate, dividend_yield)
    call = xp.broadcast_to(as_bool(xp, is_call, like=spot), spot.shape)
    _, _, r_eff, q_eff = _symmetric_inputs(xp, call, spot, strike, rate, q)
    live = (t > 0.0) & (vol > 0.0)
    qd = AmericanPut(xp, xp.where(live, t, 1.0), r_eff, q_eff, xp.where(live, vol, 0.2))
    early = qd.early & live
    put_b = xp.where(early, strike * qd.boundary, 0.0)
    call_b = xp.where(early, strike / qd.boundary, xp.inf)
    return xp.where(call, call_b, put_b)
