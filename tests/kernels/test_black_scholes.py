"""bsm_price and its Greeks against QuantLib's AnalyticEuropeanEngine, plus no-arbitrage invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import quantlib_bsm_process, random_contracts, to_np, to_xp
from gpu_margin.kernels import bsm_delta, bsm_gamma, bsm_price, bsm_vega

ql = pytest.importorskip("QuantLib")

# Tolerances. Relative agreement with QuantLib, except for values that are essentially zero:
# the Hart normal CDF is accurate to 2.3e-16 *absolute*, but its relative accuracy in the far
# lower tail degrades (5e-11 at 5 sd, 3e-9 at 7 sd, see kernels/normal.py), and so does
# QuantLib's difference of two tiny terms, so far out-of-the-money values get an absolute
# floor proportional to the spot.
PRICE_RTOL = 1e-9
PRICE_ATOL_PER_SPOT = 1e-12
GREEK_RTOL = 1e-8
GREEK_ATOL = 1e-12  # delta (dimensionless); gamma gets 1e-12/S, vega 1e-12·S


def quantlib_values(is_call, spot, strike, days, vol, rate, q) -> np.ndarray:
    """``(n, 4)``: NPV, delta, gamma, vega (per 1.00 of vol) from QuantLib, T = days/365 exactly."""
    today, process, (s_q, r_q, q_q, v_q) = quantlib_bsm_process()
    engine = ql.AnalyticEuropeanEngine(process)
    arrays = np.broadcast_arrays(is_call, spot, strike, days, vol, rate, q)
    out = np.empty((arrays[0].size, 4))
    for i, (c, s, k, d, v, r, y) in enumerate(zip(*(a.ravel() for a in arrays))):
        s_q.setValue(float(s))
        r_q.setValue(float(r))
        q_q.setValue(float(y))
        v_q.setValue(float(v))
        payoff = ql.PlainVanillaPayoff(ql.Option.Call if c else ql.Option.Put, float(k))
        option = ql.VanillaOption(payoff, ql.EuropeanExercise(today + int(d)))
        option.setPricingEngine(engine)
        out[i] = option.NPV(), option.delta(), option.gamma(), option.vega()
    return out


@pytest.fixture(scope="module")
def book():
    c = random_contracts(20240611, 4000)
    return c, quantlib_values(*(c[k] for k in ("is_call", "spot", "strike", "days", "vol", "rate", "q")))


def _args(xp, c):
    return (
        to_xp(xp, c["is_call"]),
        to_xp(xp, c["spot"]),
        to_xp(xp, c["strike"]),
        to_xp(xp, c["days"] / 365.0),
        to_xp(xp, c["vol"]),
        to_xp(xp, c["rate"]),
        to_xp(xp, c["q"]),
    )


def _assert_close(got, ref, rtol, atol, what, c):
    err = np.abs(got - ref)
    excess = err - np.maximum(rtol * np.abs(ref), atol)
    i = int(np.argmax(excess))
    assert excess[i] <= 0.0, (
        f"{what}: got {got[i]!r}, QuantLib {ref[i]!r} for "
        + ", ".join(f"{k}={v[i]!r}" for k, v in c.items())
    )


def test_price_vs_quantlib(xp, book):
    c, ref = book
    got = to_np(bsm_price(*_args(xp, c)))
    assert got.dtype == np.float64 and got.shape == c["spot"].shape
    _assert_close(got, ref[:, 0], PRICE_RTOL, PRICE_ATOL_PER_SPOT * c["spot"], "price", c)


def test_most_prices_are_checked_relatively(book):
    """The absolute floor must not swallow the comparison: most of the book is far above it."""
    c, ref = book
    assert np.mean(ref[:, 0] > 1e-3 * c["spot"]) > 0.75


@pytest.mark.parametrize(
    ("greek", "col", "floor"),
    [
        (bsm_delta, 1, lambda s: GREEK_ATOL + 0.0 * s),
        (bsm_gamma, 2, lambda s: GREEK_ATOL / s),
        (bsm_vega, 3, lambda s: GREEK_ATOL * s),
    ],
    ids=["delta", "gamma", "vega"],
)
def test_greeks_vs_quantlib(xp, book, greek, col, floor):
    c, ref = book
    got = to_np(greek(*_args(xp, c)))
    _assert_close(got, ref[:, col], GREEK_RTOL, floor(c["spot"]), greek.__name__, c)


EDGE_CASES = [
    # (is_call, spot, strike, days, vol, rate, q)
    (True, 100.0, 1.0, 365, 0.2, 0.05, 0.01),  # deep ITM call
    (False, 100.0, 10000.0, 365, 0.2, 0.05, 0.01),  # deep ITM put
    (True, 100.0, 10000.0, 365, 0.2, 0.05, 0.01),  # deep OTM call (0)
    (False, 100.0, 1.0, 365, 0.2, 0.05, 0.01),  # deep OTM put (0)
    (True, 100.0, 100.0, 30, 0.01, 0.03, 0.0),  # vol 1%
    (False, 100.0, 101.0, 1, 0.01, 0.0, 0.0),  # vol 1%, one day
    (True, 100.0, 120.0, 1095, 3.0, 0.10, 0.06),  # vol 300%, three years
    (False, 100.0, 80.0, 1095, 3.0, 0.10, 0.06),
    (True, 1e6, 1.1e6, 180, 0.3, 0.04, 0.02),  # huge spot
    (False, 1e6, 0.9e6, 180, 0.3, 0.04, 0.02),
    (True, 1e-3, 1.1e-3, 180, 0.3, 0.04, 0.02),  # tiny spot
    (False, 1e-3, 0.9e-3, 180, 0.3, 0.04, 0.02),
    (True, 100.0, 100.0, 1, 0.2, 0.0, 0.0),  # one day at the money
]


@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_cases_vs_quantlib(xp, case):
    is_call, s, k, d, v, r, y = case
    ref = quantlib_values(np.array([is_call]), s, k, d, v, r, y)[0]
    args = (to_xp(xp, [is_call]), *(to_xp(xp, [a]) for a in (s, k, d / 365.0, v, r, y)))
    price = float(to_np(bsm_price(*args))[0])
    assert abs(price - ref[0]) <= max(PRICE_RTOL * abs(ref[0]), PRICE_ATOL_PER_SPOT * s)
    for greek, col, floor in ((bsm_delta, 1, 1e-12), (bsm_gamma, 2, 1e-12 / s), (bsm_vega, 3, 1e-12 * s)):
        g = float(to_np(greek(*args))[0])
        assert abs(g - ref[col]) <= max(GREEK_RTOL * abs(ref[col]), floor), greek.__name__


def test_hull_example_15_6(xp):
    """Hull, Options, Futures and Other Derivatives, example 15.6: c = 4.76, p = 0.81."""
    call = to_xp(xp, [True, False])
    one = lambda v: to_xp(xp, [v, v])  # noqa: E731
    got = to_np(bsm_price(call, one(42.0), one(40.0), one(0.5), one(0.2), one(0.1), one(0.0)))
    np.testing.assert_allclose(got, [4.76, 0.81], atol=0.005)
    # the exact values (mpmath, 30 digits): d1 = 0.76926, d2 = 0.62784
    np.testing.assert_allclose(got, [4.759422392871535, 0.8085993729000922], rtol=1e-12)


def test_scalars_and_broadcasting():
    """Python scalars give a 0-d result; a (n,) flag broadcasts against scalar inputs."""
    p = bsm_price(True, 42.0, 40.0, 0.5, 0.2, 0.1)
    assert np.shape(p) == () and float(p) == pytest.approx(4.759422392871535, rel=1e-12)
    both = bsm_price(np.array([True, False]), 42.0, 40.0, 0.5, 0.2, 0.1)
    np.testing.assert_allclose(both, [4.759422392871535, 0.8085993729000922], rtol=1e-12)
    grid = bsm_price(True, np.array([[40.0], [42.0]]), np.array([38.0, 40.0, 42.0]), 0.5, 0.2, 0.1)
    assert grid.shape == (2, 3)
    assert grid[1, 1] == pytest.approx(4.759422392871535, rel=1e-12)


# --- invariants, on hypothesis-drawn books --------------------------------------------------

_book = st.integers(0, 2**32 - 1).map(lambda seed: random_contracts(seed, 64))
_hyp = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _np_args(c):
    return c["is_call"], c["spot"], c["strike"], c["days"] / 365.0, c["vol"], c["rate"], c["q"]


@_hyp
@given(_book)
def test_put_call_parity(xp, c):
    _, s, k, t, v, r, y = _args(xp, c)
    call = to_np(bsm_price(to_xp(xp, np.ones_like(c["is_call"])), s, k, t, v, r, y))
    put = to_np(bsm_price(to_xp(xp, np.zeros_like(c["is_call"])), s, k, t, v, r, y))
    t_np = c["days"] / 365.0
    fwd = c["spot"] * np.exp(-c["q"] * t_np) - c["strike"] * np.exp(-c["rate"] * t_np)
    assert np.all(np.abs(call - put - fwd) <= 1e-13 * (c["spot"] + c["strike"]))


@_hyp
@given(_book)
def test_no_arbitrage_bounds(xp, c):
    is_call, s, k, t, v, r, y = _np_args(c)
    price = to_np(bsm_price(*_args(xp, c)))
    dq, dr = np.exp(-y * t), np.exp(-r * t)
    lower = np.maximum(np.where(is_call, s * dq - k * dr, k * dr - s * dq), 0.0)
    upper = np.where(is_call, s * dq, k * dr)
    slack = 1e-13 * (s + k)
    assert np.all(price >= 0.0)
    assert np.all(price >= lower - slack)
    assert np.all(price <= upper + slack)


@_hyp
@given(_book)
def test_monotone_in_spot_and_vol(xp, c):
    is_call, s, k, t, v, r, y = _np_args(c)
    bump = 1.0 + 1e-3
    base = to_np(bsm_price(*_args(xp, c)))
    up_s = to_np(bsm_price(*_args(xp, {**c, "spot": s * bump})))
    up_v = to_np(bsm_price(*_args(xp, {**c, "vol": v * bump})))
    noise = 1e-14 * (s + k)
    # calls rise with the spot, puts fall; both rise with the volatility
    assert np.all(np.where(is_call, up_s - base, base - up_s) >= -noise)
    assert np.all(up_v - base >= -noise)
    # and the Greeks agree in sign
    assert np.all(np.where(is_call, 1.0, -1.0) * bsm_delta(is_call, s, k, t, v, r, y) >= 0.0)
    assert np.all(bsm_gamma(is_call, s, k, t, v, r, y) >= 0.0)
    assert np.all(bsm_vega(is_call, s, k, t, v, r, y) >= 0.0)


@settings(max_examples=40, deadline=None)
@given(_book, st.floats(1e-3, 1e3))
def test_homogeneous_in_spot_and_strike(c, lam):
    """V(λS, λK) = λ·V(S, K): huge and tiny spots price like ordinary ones."""
    is_call, s, k, t, v, r, y = _np_args(c)
    base = bsm_price(is_call, s, k, t, v, r, y)
    scaled = bsm_price(is_call, lam * s, lam * k, t, v, r, y)
    assert np.all(np.abs(scaled - lam * base) <= 1e-12 * lam * base + 1e-14 * lam * (s + k))


def test_greeks_match_finite_differences():
    c = random_contracts(99, 400)
    is_call, s, k, t, v, r, y = _np_args(c)
    h = 1e-3 * s * v * np.sqrt(t)  # a thousandth of the distribution's width
    price = lambda spot, vol: bsm_price(is_call, spot, k, t, vol, r, y)  # noqa: E731
    fd_delta = (price(s + h, v) - price(s - h, v)) / (2 * h)
    fd_gamma = (price(s + h, v) - 2 * price(s, v) + price(s - h, v)) / (h * h)
    hv = 1e-4 * v
    fd_vega = (price(s, v + hv) - price(s, v - hv)) / (2 * hv)
    for got, fd, rtol, atol in (
        (bsm_delta(is_call, s, k, t, v, r, y), fd_delta, 1e-5, 1e-7),
        # the second difference loses ~1e-15·(S+K)/h² to rounding
        (bsm_gamma(is_call, s, k, t, v, r, y), fd_gamma, 1e-3, 1e-15 * (s + k) / (h * h) + 1e-6 / s),
        (bsm_vega(is_call, s, k, t, v, r, y), fd_vega, 1e-5, 1e-7 * s),
    ):
        assert np.all(np.abs(got - fd) <= rtol * np.abs(fd) + atol)


# --- expiry and zero volatility -----------------------------------------------------------


def test_at_expiry_values_are_intrinsic(xp):
    rng = np.random.default_rng(3)
    n = 200
    is_call = rng.random(n) < 0.5
    s = rng.uniform(1.0, 500.0, n)
    k = s * rng.uniform(0.5, 2.0, n)
    k[:10] = s[:10]  # at the money
    v, r, y = rng.uniform(0.01, 3.0, n), rng.uniform(0.0, 0.1, n), rng.uniform(0.0, 0.06, n)
    zero = np.zeros(n)
    args = [to_xp(xp, a) for a in (is_call, s, k, zero, v, r, y)]
    intrinsic = np.maximum(np.where(is_call, s - k, k - s), 0.0)
    np.testing.assert_array_equal(to_np(bsm_price(*args)), intrinsic)
    np.testing.assert_array_equal(to_np(bsm_gamma(*args)), 0.0)
    np.testing.assert_array_equal(to_np(bsm_vega(*args)), 0.0)
    delta = to_np(bsm_delta(*args))
    itm = np.where(is_call, s > k, k > s)
    np.testing.assert_array_equal(delta, np.where(itm, np.where(is_call, 1.0, -1.0), 0.0))


def test_zero_and_vanishing_vol_give_discounted_forward_intrinsic(xp):
    is_call = np.array([True, False, True, False])
    s = np.full(4, 100.0)
    k = np.array([90.0, 110.0, 110.0, 90.0])
    t, r, y = np.full(4, 0.5), np.full(4, 0.05), np.full(4, 0.02)
    expected = np.maximum(np.where(is_call, 1.0, -1.0) * (s * np.exp(-y * t) - k * np.exp(-r * t)), 0.0)
    for vol in (0.0, 1e-200):
        args = [to_xp(xp, a) for a in (is_call, s, k, t, np.full(4, vol), r, y)]
        got = to_np(bsm_price(*args))
        np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0.0)
