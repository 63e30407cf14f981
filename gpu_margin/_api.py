"""The pricing functions of the public Python API (SPEC section 9).

NumPy in, NumPy out; CuPy in, CuPy out: the array namespace of the inputs is
kept. Scalars come back as 0-d NumPy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from array_api_compat import is_array_api_obj, is_numpy_namespace

from .kernels import american_price, bsm_price
from .kernels import implied_vol as _implied_vol
from .kernels._xp import namespace


def _on_device(x: Any) -> bool:
    """An array of a namespace other than NumPy (CuPy, ...): booleans already, never strings, and not to be
    copied to the host (CuPy refuses ``np.asarray`` of its arrays)."""
    return is_array_api_obj(x) and not isinstance(x, (np.ndarray, np.generic))


def _style_is_american(style: Any, xp: Any, like: Any) -> Any:
    if _on_device(style):
        return xp.asarray(style, dtype=xp.bool)
    s = np.asarray(style)
    if s.dtype.kind in "US" or s.dtype == object:
        codes = _letter_codes(s)
        amer = codes == ord("A") if codes is not None else s == "A"
        bad = ~(amer | ((codes == ord("E")) if codes is not None else (s == "E")))
        if bad.any():
            raise ValueError(f"style must be 'A' or 'E' (got {s[bad].flat[0]!r})")
        return xp.asarray(amer)
    return xp.asarray(style, dtype=xp.bool)


def _letter_codes(a: np.ndarray) -> np.ndarray | None:
    """One-letter strings as integer code points without per-element string compares (None otherwise)."""
    if a.dtype.kind == "U" and a.dtype.itemsize == 4:
        return np.ascontiguousarray(a).view(np.uint32).reshape(a.shape)
    if a.dtype.kind == "S" and a.dtype.itemsize == 1:
        return np.ascontiguousarray(a).view(np.uint8).reshape(a.shape)
    return None


def _right_is_call(right: Any, xp: Any) -> Any:
    if _on_device(right):
        return xp.asarray(right, dtype=xp.bool)
    r = np.asarray(right)
    if r.dtype.kind in "US" or r.dtype == object:
        codes = _letter_codes(r)
        if codes is not None:
            call = codes == ord("C")
            bad = ~(call | (codes == ord("P")))
        else:
            call = r == "C"
            bad = ~(call | (r == "P"))
        if bad.any():
            raise ValueError(f"right must be 'C' or 'P' (got {r[bad].flat[0]!r})")
        return xp.asarray(call)
    return xp.asarray(right, dtype=xp.bool)


def _european(xp: Any, call: Any, spot: Any, strike: Any, t: Any, vol: Any, rate: Any, q: Any) -> Any:
    """European values; on NumPy through the fused CPU loop on every core."""
    if is_numpy_namespace(xp):
        from .kernels._fused_cpu import HAVE_NUMBA, european_price_fused  # noqa: PLC0415

        if HAVE_NUMBA:
            arrs = np.broadcast_arrays(
                np.asarray(call, dtype=bool), *(np.asarray(a, dtype=np.float64) for a in (spot, strike, t, vol, rate, q))
            )
            out = european_price_fused(*(a.reshape(-1) for a in arrs))
            return out.reshape(arrs[0].shape)
    return bsm_price(call, spot, strike, t, vol, rate, q)


def option_price(
    right: Any,
    spot: Any,
    strike: Any,
    t: Any,
    vol: Any,
    rate: Any,
    dividend_yield: Any = 0.0,
    style: Any = "E",
) -> Any:
    """Model value per unit of underlying of European (BSM) or American (Andersen–Lake–Offengelt, docs/pricing.md) options.

    ``right`` is ``"C"``/``"P"`` (or booleans, True = call), ``style`` ``"E"``/``"A"``;
    every argument broadcasts. ``t`` in years, rates continuous.
    """
    xp = namespace(spot, strike, t, vol, rate, dividend_yield)
    call = _right_is_call(right, xp)
    amer = _style_is_american(style, xp, None)
    euro = _european(xp, call, spot, strike, t, vol, rate, dividend_yield)
    if not bool(xp.any(amer)):
        return euro
    return xp.where(amer, american_price(call, spot, strike, t, vol, rate, dividend_yield), euro)


def implied_vol(
    price: Any,
    right: Any,
    spot: Any,
    strike: Any,
    t: Any,
    rate: Any,
    dividend_yield: Any = 0.0,
    style: Any = "E",
) -> Any:
    """Implied volatility of option prices under the same models; ``nan`` where none exists.

    Use :func:`gpu_margin.kernels.implied_vol` to get the convergence flags too.
    """
    xp = namespace(price, spot, strike, t, rate, dividend_yield)
    call = _right_is_call(right, xp)
    amer = _style_is_american(style, xp, None)
    vol, _ = _implied_vol(price, call, spot, strike, t, rate, dividend_yield, amer)
    return vol
