"""Black–Scholes–Merton European option values and sensitivities, in any array namespace.

Flat continuously compounded rate ``r`` and dividend yield ``q``; time ``t`` in
years. At ``t <= 0`` (or zero volatility) the value is the discounted intrinsic
value of the forward, which is the plain intrinsic value at ``t = 0``.
"""

from __future__ import annotations

from typing import Any

from ._xp import as_bool, broadcast_float, namespace
from .normal import _ABS_MAX, mills_ratio_hart, norm_pdf

_INV_SQRT_2PI = 0.3989422804014327


def _d1_d2(xp: Any, spot: Any, strike: Any, t: Any, vol: Any, rate: Any, q: Any):
    """``(d1, d2, v, live, dr, dq)`` with ``v = vol·sqrt(t)`` (1 where not live)."""
    sqrt_t = xp.sqrt(xp.maximum(t, 0.0))
    v = vol * sqrt_t
    live = v > 0.0
    v = xp.where(live, v, 1.0)
    dr = xp.exp(-rate * t)
    dq = xp.exp(-q * t)
    d1 = (xp.log(spot / strike) + (rate - q) * t) / v + 0.5 * v
    return d1, d1 - v, v, live, dr, dq


def _sign(xp: Any, is_call: Any, like: Any) -> Any:
    """+1.0 for calls, -1.0 for puts, float64 (broadcasts against ``like``).

    (Not ``xp.where(call, 1.0, -1.0)``: the Array API allows at most one Python
    scalar among ``where``'s operands, and ``array_api_strict`` enforces it.)
    """
    call = xp.astype(as_bool(xp, is_call, like=like), xp.float64)
    return 2.0 * call - 1.0


def _signed_cdf(xp: Any, d: Any, w: Any) -> Any:
    """Φ(w·d) for w = ±1, from one Hart evaluation."""
    a = xp.minimum(xp.abs(d), _ABS_MAX)  # huge |d| (a tiny σ√T) must not overflow Hart's polynomials
    tail = xp.exp(a * a * -0.5) * mills_ratio_hart(a)
    return xp.where(w * d > 0.0, 1.0 - tail, tail)


def bsm_price(
    is_call: Any, spot: Any, strike: Any, t: Any, vol: Any, rate: Any, dividend_yield: Any = 0.0
) -> Any:
    """European option value per unit of underlying, broadcast over the inputs, float64."""
    xp = namespace(is_call, spot, strike, t, vol, rate, dividend_yield)
    spot, strike, t, vol, rate, q = broadcast_float(xp, spot, strike, t, vol, rate, dividend_yield)
    w = _sign(xp, is_call, spot)
    d1, d2, _, live, dr, dq = _d1_d2(xp, spot, strike, t, vol, rate, q)
    fwd_leg = spot * dq
    strike_leg = strike * dr
    value = w * (fwd_leg * _signed_cdf(xp, d1, w) - strike_leg * _signed_cdf(xp, d2, w))
    intrinsic = xp.maximum(w * (fwd_leg - strike_leg), 0.0)
    return xp.where(live, xp.maximum(value, 0.0), intrinsic)


def bsm_delta(
    is_call: Any, spot: Any, strike: Any, t: Any, vol: Any, rate: Any, dividend_yield: Any = 0.0
) -> Any:
    """∂V/∂S of the European value (per unit of underlying), float64."""
    xp = namespace(is_call, spot, strike, t, vol, rate, dividend_yield)
    spot, strike, t, vol, rate, q = broadcast_float(xp, spot, strike, t, vol, rate, dividend_yield)
    w = _sign(xp, is_call, spot)
    d1, _, _, live, dr, dq = _d1_d2(xp, spot, strike, t, vol, rate, q)
    itm = w * (spot * dq - strike * dr) > 0.0
    return xp.where(live, w * dq * _signed_cdf(xp, d1, w), xp.where(itm, w * dq, 0.0))


def bsm_gamma(
    is_call: Any, spot: Any, strike: Any, t: Any, vol: Any, rate: Any, dividend_yield: Any = 0.0
) -> Any:
    """∂²V/∂S² of the European value, float64 (0 where t or vol is 0)."""
    xp = namespace(is_call, spot, strike, t, vol, rate, dividend_yield)
    spot, strike, t, vol, rate, q = broadcast_float(xp, spot, strike, t, vol, rate, dividend_yield)
    d1, _, v, live, _, dq = _d1_d2(xp, spot, strike, t, vol, rate, q)
    return xp.where(live, dq * norm_pdf(d1) / (spot * v), 0.0)


def bsm_vega(
    is_call: Any, spot: Any, strike: Any, t: Any, vol: Any, rate: Any, dividend_yield: Any = 0.0
) -> Any:
    """∂V/∂σ of the European value (per unit of volatility, not per point), float64."""
    xp = namespace(is_call, spot, strike, t, vol, rate, dividend_yield)
    spot, strike, t, vol, rate, q = broadcast_float(xp, spot, strike, t, vol, rate, dividend_yield)
    d1, _, _, live, _, dq = _d1_d2(xp, spot, strike, t, vol, rate, q)
    return xp.where(live, spot * dq * norm_pdf(d1) * xp.sqrt(xp.maximum(t, 0.0)), 0.0)
