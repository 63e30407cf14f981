"""Shared fixtures: the array namespaces every kernel test runs on."""

from __future__ import annotations

import numpy as np
import pytest

from gpu_margin._backend import gpu_status


def _namespaces():
    import array_api_compat.numpy as xp_numpy
    import array_api_strict

    yield pytest.param(xp_numpy, id="numpy")
    yield pytest.param(array_api_strict, id="array_api_strict")
    ok, reason = gpu_status()
    if ok:
        import array_api_compat.cupy as xp_cupy

        yield pytest.param(xp_cupy, id="cupy", marks=pytest.mark.gpu)
    else:
        yield pytest.param(None, id="cupy", marks=[pytest.mark.gpu, pytest.mark.skip(reason=reason)])


@pytest.fixture(params=list(_namespaces()))
def xp(request):
    """An array namespace: NumPy, array_api_strict, and CuPy where a GPU is usable."""
    return request.param


def to_xp(xp, a, dtype=None):
    """Host NumPy data to namespace ``xp`` (float64 unless ``dtype`` is given)."""
    a = np.asarray(a)
    if dtype is None:
        dtype = xp.bool if a.dtype == bool else (xp.int64 if a.dtype.kind in "iu" else xp.float64)
    return xp.asarray(a, dtype=dtype)


def to_np(a):
    """Any namespace's array back to NumPy for comparison."""
    from gpu_margin._backend import to_host

    if type(a).__module__.startswith("array_api_strict"):
        return np.asarray(a._array)
    return to_host(a)


def random_contracts(seed: int, n: int, *, max_days: int = 3 * 365, expired: float = 0.0,
                     american: float | None = None) -> dict[str, np.ndarray]:
    """Random option contracts for the kernel tests.

    Calls and puts; S 1–5000 and K/S 0.5–2 (log-uniform); whole days 1–``max_days``
    (a share ``expired`` at 0); vol 1–300% (log-uniform); r 0–10%; q 0–6%. Keys:
    ``is_call, spot, strike, days, t`` (days/365), ``vol, rate, q`` and, when
    ``american`` is given, ``american`` (that share True).
    """
    rng = np.random.default_rng(seed)
    spot = np.exp(rng.uniform(np.log(1.0), np.log(5000.0), n))
    days = rng.integers(1, max_days + 1, n)
    if expired:
        days[rng.random(n) < expired] = 0
    out = dict(
        is_call=rng.random(n) < 0.5,
        spot=spot,
        strike=spot * np.exp(rng.uniform(np.log(0.5), np.log(2.0), n)),
        days=days,
        t=days / 365.0,
        vol=np.exp(rng.uniform(np.log(0.01), np.log(3.0), n)),
        rate=rng.uniform(0.0, 0.10, n),
        q=rng.uniform(0.0, 0.06, n),
    )
    if american is not None:
        out["american"] = rng.random(n) < american
    return out


def quantlib_bsm_process():
    """QuantLib's Black–Scholes–Merton process on flat curves (Actual/365, continuous), set per contract.

    Returns ``(today, process, (spot, rate, dividend, vol))``: the evaluation date
    and the quotes to set before each valuation; T = days/365 exactly.
    """
    import QuantLib as ql

    today = ql.Date(15, 1, 2024)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    s_q, r_q, q_q, v_q = (ql.SimpleQuote(0.0) for _ in range(4))
    process = ql.BlackScholesMertonProcess(
        ql.QuoteHandle(s_q),
        ql.YieldTermStructureHandle(ql.FlatForward(today, ql.QuoteHandle(q_q), dc, ql.Continuous)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, ql.QuoteHandle(r_q), dc, ql.Continuous)),
        ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), ql.QuoteHandle(v_q), dc)),
    )
    return today, process, (s_q, r_q, q_q, v_q)
