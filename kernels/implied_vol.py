"""Implied volatility from option prices, vectorised, for European and American options.

Safeguarded Newton on a bracket: every element keeps ``[lo, hi]`` with the
model price below the target at ``lo`` and above it at ``hi``. The Newton step
is taken on the logarithm of the price (slope: European vega / price; a secant
of the log price for American prices), which converges on far out-of-the-money
prices where Newton on the price itself creeps; a step that would leave the
bracket is replaced by bisection. An element converges when its volatility moves
by less than ``1e-10`` or its price matches to ``1e-12`` relative; elements whose price is
outside the no-arbitrage bounds, or that do not converge in the iteration
budget, come back ``nan`` with ``ok = False``.
"""

from __future__ import annotations

from typing import Any

from ._xp import as_bool, broadcast_float, namespace
from .american import american_price
from .black_scholes import bsm_price, bsm_vega

VOL_MIN = 1e-4
VOL_MAX = 10.0
_MAX_ITER = 100
_VOL_TOL = 1e-10


def implied_vol(
    price: Any,
    is_call: Any,
    spot: Any,
    strike: Any,
    t: Any,
    rate: Any,
    dividend_yield: Any = 0.0,
    american: Any = False,
) -> tuple[Any, Any]:
    """Implied volatility per element: ``(vol, ok)``, float64 and bool arrays.

    ``vol`` is within 1e-8 of the volatility that reproduces ``price`` where
    ``ok``; ``nan`` where the price admits no volatility in [1e-4, 10] (below
    intrinsic value, above the no-arbitrage upper bound, ``t <= 0``) or the
    solver did not converge.
    """
    xp = namespace(price, is_call, spot, strike, t, rate, dividend_yield, american)
    price, spot, strike, t, rate, q = broadcast_float(xp, price, spot, strike, t, rate, dividend_yield)
    call = xp.broadcast_to(as_bool(xp, is_call, like=spot), spot.shape)
    amer = xp.broadcast_to(as_bool(xp, american, like=spot), spot.shape)

    def model(vol: Any) -> Any:
        euro = bsm_price(call, spot, strike, t, vol, rate, q)
        if not bool(xp.any(amer)):
            return euro
        return xp.where(amer, american_price(call, spot, strike, t, vol, rate, q), euro)

    lo = xp.full(spot.shape, VOL_MIN, dtype=xp.float64)
    hi = xp.full(spot.shape, VOL_MAX, dtype=xp.float64)
    p_lo = model(lo)
    p_hi = model(hi)
    valid = (t > 0.0) & (price > p_lo) & (price < p_hi) & (spot > 0.0) & (strike > 0.0)
    # exact hits of the bounds: a degenerate but legitimate answer
    vol = _initial_guess(xp, price, spot, strike, t, rate, q)
    vol = xp.clip(vol, VOL_MIN * 2, VOL_MAX / 2)
    done = ~valid
    prev_vol = vol
    prev_g = None
    log_price = xp.log(xp.where(valid, price, 1.0))
    for _ in range(_MAX_ITER):
        p = model(vol)
        f = p - price
        above = f > 0.0
        hi = xp.where(above & ~done, vol, hi)
        lo = xp.where(~above & ~done, vol, lo)
        # Newton on log(price): the price of an option far out of the money behaves like
        # exp(-c/σ²), on which plain Newton creeps (steps of σ³/2c) and never converges.
        pos = p > 0.0
        g = xp.log(xp.where(pos, p, 1.0)) - log_price
        slope = bsm_vega(call, spot, strike, t, vol, rate, q) / xp.where(pos, p, 1.0)
        if prev_g is not None:  # American prices: the secant of log(price)
            dv = vol - prev_vol
            secant = (g - prev_g) / xp.where(dv != 0.0, dv, 1.0)
            slope = xp.where(amer & (dv != 0.0) & (secant > 0.0), secant, slope)
        # Newton only where its step stays within the bracket's width (|g| / slope would
        # overflow where the slope is tiny, deep in the money); bisect elsewhere.
        ok_step = pos & (slope > 0.0) & (xp.abs(g) < slope * (hi - lo))
        newton = vol - g / xp.where(ok_step, slope, 1.0)
        ok_step = ok_step & (newton > lo) & (newton < hi)
        new_vol = xp.where(ok_step, newton, 0.5 * (lo + hi))
        tiny_f = xp.abs(f) <= 1e-12 * xp.maximum(price, 1e-300)
        conv = tiny_f | (xp.abs(new_vol - vol) <= _VOL_TOL) | ((hi - lo) <= _VOL_TOL)
        newly = conv & ~done
        vol_final = xp.where(tiny_f, vol, new_vol)
        prev_vol, prev_g = vol, g
        vol = xp.where(done, vol, vol_final)
        done = done | newly
        if bool(xp.all(done)):
            break
    ok = valid & done
    return xp.where(ok, vol, xp.nan), ok


def _initial_guess(xp: Any, price: Any, spot: Any, strike: Any, t: Any, rate: Any, q: Any) -> Any:
    """Brenner–Subrahmanyam / Corrado–Miller style starting point, clipped later."""
    tt = xp.maximum(t, 1e-8)
    fwd_leg = spot * xp.exp(-q * tt)
    k_leg = strike * xp.exp(-rate * tt)
    mid = 0.5 * (fwd_leg + k_leg)
    # a call-equivalent price via parity is not needed: the guess only seeds the bracket
    guess = (2.5066282746310002 / xp.sqrt(tt)) * xp.abs(price - 0.5 * xp.abs(fwd_leg - k_leg)) / mid
    return xp.where(xp.isfinite(guess), guess, 0.3)
