"""The scenario grid: values of n contracts under m scenarios as one ``(n, m)`` tensor.

A scenario moves the underlying's spot to ``S·(1 + spot_shock)`` and its
volatility to ``σ·(1 + vol_shock)`` (relative) or ``σ + vol_shock`` (absolute),
floored at ``vol_floor``; time, rate and yield stay. Shocks come as tables of
shape ``(k, m)``, one row per underlying (or per product group), and
``shock_row`` says which row each contract uses, so no ``(n, m)`` shock tensor
is ever built.

Everything that does not change across scenarios is computed once per contract
(log-moneyness of the forward, discount factors, ``σ√T``), and the contracts
are valued in row blocks of about ``block_elements`` values so that the dozen
temporaries of a block stay in the core's cache. For European options the
ratio ``φ(d2)/φ(d1) = F·u/K`` lets one exponential serve both normal
distribution values. American contracts (``kernels.american``) solve their
spot-independent exercise boundary once per contract and volatility level and
reuse it across every price move.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import is_cupy_namespace, is_numpy_namespace

from ._xp import as_bool, as_float, namespace
from .american import AmericanPut
from .normal import mills_ratio_hart

VOL_FLOOR = 1e-3
BLOCK_ELEMENTS = 16384
#: On a GPU each array operation is a kernel launch: blocks of this many values keep the device busy.
GPU_BLOCK_ELEMENTS = 1 << 22


def price_grid(
    is_call: Any,
    spot: Any,
    strike: Any,
    t: Any,
    vol: Any,
    rate: Any,
    dividend_yield: Any,
    american: Any,
    spot_shock: Any,
    vol_shock: Any,
    *,
    shock_row: Any = None,
    vol_mode: str = "relative",
    vol_floor: float = VOL_FLOOR,
    block_elements: int | None = None,
    fused: bool = True,
) -> Any:
    """Option values per unit of underlying under every scenario, ``(n, m)`` float64.

    Contract arrays are ``(n,)``; ``spot_shock`` and ``vol_shock`` are ``(k, m)``
    tables and ``shock_row`` ``(n,)`` integers in ``[0, k)`` (``None`` when
    ``k == 1``). Column ``j`` of the result is scenario ``j`` of the contract's
    row. Values agree with :func:`kernels.bsm_price` / :func:`kernels.american_price`
    at the shocked inputs. On NumPy the European part runs in a fused CPU loop
    (``kernels._fused_cpu``) and the American part in fused CPU kernels
    (``kernels._fused_american``) unless ``fused=False``; the result is the same
    to rounding.
    """
    if vol_mode not in ("relative", "absolute"):
        raise ValueError(f"vol_mode must be 'relative' or 'absolute' (got {vol_mode!r})")
    xp = namespace(spot, strike, t, vol, spot_shock, vol_shock)
    spot = as_float(xp, spot)
    n = spot.shape[0]
    strike = as_float(xp, strike, like=spot)
    t = as_float(xp, t, like=spot)
    vol = as_float(xp, vol, like=spot)
    rate = xp.broadcast_to(as_float(xp, rate, like=spot), (n,))
    q = xp.broadcast_to(as_float(xp, dividend_yield, like=spot), (n,))
    call = xp.broadcast_to(as_bool(xp, is_call, like=spot), (n,))
    amer = xp.broadcast_to(as_bool(xp, american, like=spot), (n,))
    spot_shock = as_float(xp, spot_shock, like=spot)
    vol_shock = as_float(xp, vol_shock, like=spot)
    if spot_shock.ndim != 2 or spot_shock.shape != vol_shock.shape:
        raise ValueError("spot_shock and vol_shock must be (k, m) tables of one shape")
    k, m = spot_shock.shape
    if shock_row is None:
        if k != 1:
            raise ValueError("shock_row is required when the shock tables have more than one row")
        shock_row = xp.zeros((n,), dtype=xp.int64)
    if n == 0:
        return xp.zeros((0, m), dtype=xp.float64)

    if block_elements is None:  # larger blocks on a GPU, where an operation is a kernel launch
        block_elements = GPU_BLOCK_ELEMENTS if is_cupy_namespace(xp) else BLOCK_ELEMENTS
    contracts = (call, spot, strike, t, vol, rate, q, shock_row)
    euro_grid = _european_grid
    if fused and is_numpy_namespace(xp) and _fused_available():
        euro_grid = _european_grid_fused
    amer_grid = _american_grid_fused if euro_grid is _european_grid_fused else _american_grid
    n_am = int(xp.sum(xp.astype(amer, xp.int64)))
    if n_am == 0:
        return euro_grid(xp, *contracts, spot_shock, vol_shock, vol_mode, vol_floor, block_elements)
    if n_am == n:
        return amer_grid(xp, *contracts, spot_shock, vol_shock, vol_mode, vol_floor, block_elements)
    idx_e = xp.nonzero(~amer)[0]
    idx_a = xp.nonzero(amer)[0]
    part_e = euro_grid(
        xp, *(xp.take(a, idx_e) for a in contracts), spot_shock, vol_shock, vol_mode, vol_floor, block_elements
    )
    part_a = amer_grid(
        xp, *(xp.take(a, idx_a) for a in contracts), spot_shock, vol_shock, vol_mode, vol_floor, block_elements
    )
    order = xp.concat([idx_e, idx_a])
    inverse = xp.argsort(order)
    return xp.take(xp.concat([part_e, part_a], axis=0), inverse, axis=0)


def _fused_available() -> bool:
    from ._fused_cpu import HAVE_NUMBA  # noqa: PLC0415

    return HAVE_NUMBA


def _european_grid_fused(xp, *args):  # noqa: ARG001
    """NumPy inputs: the fused CPU loop (same arguments as ``_european_grid``)."""
    from ._fused_cpu import european_grid_fused  # noqa: PLC0415

    return european_grid_fused(*args[:-1])


def _american_grid_fused(xp, *args):
    """NumPy inputs: the fused CPU boundary solve and valuation (same arguments as ``_american_grid``)."""
    from . import _fused_american  # noqa: PLC0415

    if not _fused_american.HAVE_NUMBA:  # pragma: no cover
        return _american_grid(xp, *args)
    return _fused_american.american_grid_fused(*args[:-1])


def _shocked_vol(xp: Any, vol: Any, vs: Any, vol_mode: str, vol_floor: float) -> Any:
    sig = vol * (1.0 + vs) if vol_mode == "relative" else vol + vs
    return xp.maximum(sig, vol_floor)


def _rows(xp: Any, table: Any, row: Any, single: bool) -> Any:
    return table if single else xp.take(table, row, axis=0)


def _european_grid(xp, call, spot, strike, t, vol, rate, q, shock_row, spot_shock, vol_shock,
                   vol_mode, vol_floor, block_elements):
    n = spot.shape[0]
    k, m = spot_shock.shape
    single = k == 1
    live = t > 0.0
    sqrt_t = xp.sqrt(xp.where(live, t, 1.0))
    ln_fk = xp.log(spot / strike) + (rate - q) * t
    fk = xp.exp(ln_fk)
    k_dr = strike * xp.exp(-rate * t)
    w = 2.0 * xp.astype(call, xp.float64) - 1.0
    u_tab = 1.0 + spot_shock
    ln_u_tab = xp.log(u_tab)
    out = []
    step = max(1, block_elements // max(m, 1))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        row = shock_row[lo:hi]
        u = _rows(xp, u_tab, row, single)
        s = _shocked_vol(xp, vol[lo:hi, None], _rows(xp, vol_shock, row, single), vol_mode, vol_floor)
        s *= sqrt_t[lo:hi, None]
        d1 = ln_fk[lo:hi, None] + _rows(xp, ln_u_tab, row, single)
        d1 /= s
        s *= 0.5
        d1 += s
        s *= 2.0
        d2 = d1 - s
        a = xp.minimum(xp.abs(d1), 40.0)  # Φ(-40) underflows; keeps P/Q finite
        e1 = a * a
        e1 *= -0.5
        e1 = xp.exp(e1)
        fku = fk[lo:hi, None] * u
        t1 = mills_ratio_hart(a)
        t1 *= e1
        a = xp.minimum(xp.abs(d2), 40.0)
        t2 = mills_ratio_hart(a)
        t2 *= e1
        t2 *= fku
        wb = w[lo:hi, None]
        n1 = xp.where(wb * d1 > 0.0, 1.0 - t1, t1)
        n2 = xp.where(wb * d2 > 0.0, 1.0 - t2, t2)
        n1 *= fku
        n1 -= n2
        n1 *= wb
        n1 *= k_dr[lo:hi, None]
        value = xp.maximum(n1, 0.0)
        intrinsic = xp.maximum(wb * (spot[lo:hi, None] * u - strike[lo:hi, None]), 0.0)
        out.append(xp.where(live[lo:hi, None], value, intrinsic))
    return out[0] if len(out) == 1 else xp.concat(out, axis=0)


def _american_grid(xp, call, spot, strike, t, vol, rate, q, shock_row, spot_shock, vol_shock,
                   vol_mode, vol_floor, block_elements):
    n = spot.shape[0]
    k, m = spot_shock.shape
    single = k == 1
    # distinct volatility shocks: the exercise boundary is solved once per (contract, level)
    levels = xp.unique_values(xp.reshape(vol_shock, (-1,)))
    n_lev = levels.shape[0]
    level_idx = xp.reshape(xp.searchsorted(levels, xp.reshape(vol_shock, (-1,))), (k, m))
    live = t > 0.0
    t_safe = xp.where(live, t, 1.0)
    r_eff = xp.where(call, q, rate)
    q_eff = xp.where(call, rate, q)
    sig = _shocked_vol(xp, vol[:, None], levels[None, :], vol_mode, vol_floor)  # (n, L)
    state = AmericanPut(
        xp,
        xp.reshape(xp.broadcast_to(t_safe[:, None], (n, n_lev)), (-1,)),
        xp.reshape(xp.broadcast_to(r_eff[:, None], (n, n_lev)), (-1,)),
        xp.reshape(xp.broadcast_to(q_eff[:, None], (n, n_lev)), (-1,)),
        xp.reshape(sig, (-1,)),
    )
    u_tab = 1.0 + spot_shock
    base = xp.arange(n, dtype=xp.int64) * n_lev
    out = []
    step = max(1, block_elements // max(m, 1))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        row = shock_row[lo:hi]
        u = _rows(xp, u_tab, row, single)
        lev = _rows(xp, level_idx, row, single)
        idx = base[lo:hi, None] + xp.astype(lev, xp.int64)
        st = state.take(idx)
        s_u = spot[lo:hi, None] * u
        kk = strike[lo:hi, None]
        cb = call[lo:hi, None]
        x = xp.where(cb, kk / s_u, s_u / kk)
        scale = xp.where(cb, s_u, kk)
        value = scale * st.value(x)
        intrinsic = xp.maximum(xp.where(cb, s_u - kk, kk - s_u), 0.0)
        out.append(xp.where(live[lo:hi, None], value, intrinsic))
    return out[0] if len(out) == 1 else xp.concat(out, axis=0)
