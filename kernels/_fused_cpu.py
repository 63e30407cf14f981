"""A fused CPU loop for the European scenario grid (Numba), checked against the ``xp`` kernel.

The ``xp`` code of ``kernels.grid`` is the one statement of the math; NumPy
runs it at about 17 million valuations a second a core because every one of
its ~80 array operations makes a trip through memory. This module evaluates the
same formula — the same Hart coefficients, the same shared exponential, the
same vol floor and intrinsic value at expiry — one valuation at a time in
registers, in parallel over contracts. ``tests/kernels/test_fused_cpu.py``
checks it against the ``xp`` path to 1e-13 on random books, and
``price_grid(..., fused=False)`` forces the ``xp`` path.

Threading: called from the main thread, the loop runs on every core
(``numba.prange``); called from another thread (a Dask worker thread, which
already provides the parallelism) it runs serially, so two Dask threads never
enter Numba's thread pool at once.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from .normal import _P, _Q

try:  # Numba is a dependency; keep the xp path usable if it is broken on a platform.
    import numba

    HAVE_NUMBA = True
except Exception:  # pragma: no cover
    numba = None
    HAVE_NUMBA = False

P0, P1, P2, P3, P4, P5, P6 = _P
Q0, Q1, Q2, Q3, Q4, Q5, Q6, Q7 = _Q


def _value(wi, ln_fk, fk, k_dr, sqrt_t, sig, ln_u, uj, floor):
    """One European value from the precomputed contract terms (the xp kernel's formula)."""
    s = max(sig, floor) * sqrt_t
    d1 = (ln_fk + ln_u) / s + 0.5 * s
    d2 = d1 - s
    a = min(abs(d1), 40.0)
    e1 = math.exp(-0.5 * a * a)
    fku = fk * uj
    p = ((((((P0 * a + P1) * a + P2) * a + P3) * a + P4) * a + P5) * a + P6)
    q = (((((((Q0 * a + Q1) * a + Q2) * a + Q3) * a + Q4) * a + Q5) * a + Q6) * a + Q7)
    t1 = e1 * (p / q)
    a = min(abs(d2), 40.0)
    p = ((((((P0 * a + P1) * a + P2) * a + P3) * a + P4) * a + P5) * a + P6)
    q = (((((((Q0 * a + Q1) * a + Q2) * a + Q3) * a + Q4) * a + Q5) * a + Q6) * a + Q7)
    t2 = e1 * fku * (p / q)
    n1 = 1.0 - t1 if wi * d1 > 0.0 else t1
    n2 = 1.0 - t2 if wi * d2 > 0.0 else t2
    v = k_dr * (wi * (fku * n1 - n2))
    return v if v > 0.0 else 0.0


def _grid_loop(call, spot, strike, t, vol, rate, q, row, ln_u, u, vs, relative, floor, out):
    n = spot.shape[0]
    m = out.shape[1]
    for i in numba.prange(n):  # noqa: B023
        r = row[i]
        wi = 1.0 if call[i] else -1.0
        ur = u[r]
        lur = ln_u[r]
        vr = vs[r]
        oi = out[i]
        if not t[i] > 0.0:
            for j in range(m):
                x = wi * (spot[i] * ur[j] - strike[i])
                oi[j] = x if x > 0.0 else 0.0
            continue
        # what does not change across scenarios, once per contract
        ln_fk = math.log(spot[i] / strike[i]) + (rate[i] - q[i]) * t[i]
        fk = math.exp(ln_fk)
        k_dr = strike[i] * math.exp(-rate[i] * t[i])
        sqrt_t = math.sqrt(t[i])
        if relative:
            for j in range(m):
                oi[j] = value(wi, ln_fk, fk, k_dr, sqrt_t, vol[i] * (1.0 + vr[j]), lur[j], ur[j], floor)
        else:
            for j in range(m):
                oi[j] = value(wi, ln_fk, fk, k_dr, sqrt_t, vol[i] + vr[j], lur[j], ur[j], floor)


def _price_loop(call, spot, strike, t, vol, rate, q, out):
    for i in numba.prange(spot.shape[0]):  # noqa: B023
        wi = 1.0 if call[i] else -1.0
        if t[i] > 0.0 and vol[i] > 0.0:
            ln_fk = math.log(spot[i] / strike[i]) + (rate[i] - q[i]) * t[i]
            out[i] = value(wi, ln_fk, math.exp(ln_fk), strike[i] * math.exp(-rate[i] * t[i]),
                           math.sqrt(t[i]), vol[i], 0.0, 1.0, 0.0)
        else:
            x = wi * (spot[i] * math.exp(-q[i] * t[i]) - strike[i] * math.exp(-rate[i] * t[i]))
            out[i] = x if x > 0.0 else 0.0


def european_price_fused(call, spot, strike, t, vol, rate, q) -> np.ndarray:
    """European values of independent contracts (1-D NumPy arrays), the ``bsm_price`` formula."""
    out = np.empty(spot.shape[0], dtype=np.float64)
    loop = _price_parallel if threading.current_thread() is threading.main_thread() else _price_serial
    loop(*(np.ascontiguousarray(a) for a in (call, spot, strike, t, vol, rate, q)), out)
    return out


def european_grid_fused(
    call: np.ndarray,
    spot: np.ndarray,
    strike: np.ndarray,
    t: np.ndarray,
    vol: np.ndarray,
    rate: np.ndarray,
    q: np.ndarray,
    shock_row: np.ndarray,
    spot_shock: np.ndarray,
    vol_shock: np.ndarray,
    vol_mode: str,
    vol_floor: float,
) -> Any:
    """Same contract as ``kernels.grid._european_grid`` for NumPy inputs; ``(n, m)`` float64."""
    n = spot.shape[0]
    m = spot_shock.shape[1]
    u = 1.0 + np.asarray(spot_shock, dtype=np.float64)
    out = np.empty((n, m), dtype=np.float64)
    loop = _grid_parallel if threading.current_thread() is threading.main_thread() else _grid_serial
    f64 = [np.ascontiguousarray(a, dtype=np.float64) for a in (spot, strike, t, vol, rate, q)]
    loop(
        np.ascontiguousarray(call, dtype=np.bool_), *f64, np.ascontiguousarray(shock_row, dtype=np.int64),
        np.ascontiguousarray(np.log(u)), np.ascontiguousarray(u), np.ascontiguousarray(vol_shock, dtype=np.float64),
        vol_mode == "relative", float(vol_floor), out,
    )
    return out


# Reassociation, contraction to FMA and fast reciprocals let LLVM vectorise the loop;
# not "nnan"/"ninf" (no promise about inputs) nor "nsz" (a zero value stays +0.0).
_FASTMATH = {"reassoc", "contract", "arcp", "afn"}

if HAVE_NUMBA:
    value = numba.njit(inline="always", cache=True, fastmath=_FASTMATH)(_value)
    _grid_parallel = numba.njit(parallel=True, cache=True, nogil=True, fastmath=_FASTMATH)(_grid_loop)
    _grid_serial = numba.njit(parallel=False, cache=True, nogil=True, fastmath=_FASTMATH)(_grid_loop)
    _price_parallel = numba.njit(parallel=True, cache=True, nogil=True, fastmath=_FASTMATH)(_price_loop)
    _price_serial = numba.njit(parallel=False, cache=True, nogil=True, fastmath=_FASTMATH)(_price_loop)
