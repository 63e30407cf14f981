"""forward_price: F = S·exp((r − q)·T), on every array namespace."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import to_np, to_xp
from gpu_margin.kernels import bsm_price, forward_price


def _book(seed: int, n: int):
    rng = np.random.default_rng(seed)
    return (
        np.exp(rng.uniform(np.log(1e-3), np.log(1e6), n)),
        rng.integers(0, 3 * 365 + 1, n) / 365.0,
        rng.uniform(-0.02, 0.10, n),
        rng.uniform(0.0, 0.06, n),
    )


def test_matches_mpmath(xp):
    s, t, r, q = _book(1, 500)
    got = to_np(forward_price(*(to_xp(xp, a) for a in (s, t, r, q))))
    with mpmath.workdps(30):
        ref = np.array([float(mpmath.mpf(a) * mpmath.exp((mpmath.mpf(b) - mpmath.mpf(c)) * mpmath.mpf(d)))
                        for a, b, c, d in zip(s, r, q, t)])
    np.testing.assert_allclose(got, ref, rtol=1e-15, atol=0.0)  # a few ulps (exp, two products)


def test_expiry_and_no_carry_give_the_spot(xp):
    s = np.array([1e-3, 42.0, 1e6])
    for t, r, q in ((0.0, 0.05, 0.01), (2.0, 0.03, 0.03), (-1.0, 0.05, 0.0)):  # T < 0 is clipped to 0
        got = to_np(forward_price(to_xp(xp, s), to_xp(xp, np.full(3, t)), to_xp(xp, np.full(3, r)),
                                  to_xp(xp, np.full(3, q))))
        np.testing.assert_array_equal(got, s)


def test_default_yield_and_scalars():
    assert float(forward_price(100.0, 1.0, 0.05)) == pytest.approx(100.0 * np.exp(0.05), rel=1e-15)
    assert np.shape(forward_price(100.0, 1.0, 0.05, 0.01)) == ()
    out = forward_price(np.array([100.0, 200.0]), 0.5, 0.04, 0.01)
    np.testing.assert_allclose(out, [100.0 * np.exp(0.015), 200.0 * np.exp(0.015)], rtol=1e-15)
    assert out.dtype == np.float64


def test_broadcasting(xp):
    s = to_xp(xp, np.array([[100.0], [50.0]]))
    t = to_xp(xp, np.array([0.0, 0.5, 1.0]))
    got = to_np(forward_price(s, t, to_xp(xp, np.array(0.05)), to_xp(xp, np.array(0.01))))
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, np.array([[100.0], [50.0]]) * np.exp(0.04 * np.array([0.0, 0.5, 1.0])),
                               rtol=1e-15)


@settings(max_examples=50, deadline=None)
@given(
    s=st.floats(1e-3, 1e6),
    k_ratio=st.floats(0.5, 2.0),
    days=st.integers(1, 3 * 365),
    vol=st.floats(0.01, 3.0),
    r=st.floats(0.0, 0.1),
    q=st.floats(0.0, 0.06),
)
def test_put_call_parity_on_the_forward(s, k_ratio, days, vol, r, q):
    """C − P = e^{-rT}·(F − K): the forward the futures kernel uses is the one options imply."""
    t = days / 365.0
    k = s * k_ratio
    f = float(forward_price(s, t, r, q))
    c = float(bsm_price(True, s, k, t, vol, r, q))
    p = float(bsm_price(False, s, k, t, vol, r, q))
    assert c - p == pytest.approx(np.exp(-r * t) * (f - k), rel=1e-11, abs=1e-13 * (s + k))
