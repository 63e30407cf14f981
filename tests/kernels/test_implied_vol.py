"""Implied volatility: round trips through the pricers, rejections, and the public wrappers."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import gpu_margin
from conftest import random_contracts, to_np, to_xp
from gpu_margin.kernels import american_price, bsm_price, implied_vol

_iv_module = sys.modules["gpu_margin.kernels.implied_vol"]
VOL_MIN, VOL_MAX = _iv_module.VOL_MIN, _iv_module.VOL_MAX


def _pricer(american: bool):
    return american_price if american else bsm_price


def _model(c, vol, american):
    return _pricer(american)(c["is_call"], c["spot"], c["strike"], c["t"], vol, c["rate"], c["q"])


def _meaningful_vega(c, price, american):
    """Where the price moves measurably on *both* sides of the true vol.

    One-sided differences over 0.1% of the vol, each at least 1e-3 of the price and 1e-6 of
    the spot: a 1e-8 vol error then shows in the price far above the solver's 1e-12 relative
    tolerance and the price's rounding. (Both sides, because an American option just inside
    its exercise region has a zero derivative below the vol and a positive one above.)
    """
    v = c["vol"]
    h = 1e-3 * v
    up = (_model(c, v + h, american) - price) / h
    down = (price - _model(c, v - h, american)) / h
    slope = np.minimum(up, down)
    return (slope >= 1e-3 * price) & (slope >= 1e-6 * c["spot"])


def _check_round_trip(c, price, vol, ok, american):
    vol, ok = np.asarray(vol), np.asarray(ok)
    assert vol.dtype == np.float64 and ok.dtype == np.bool_ and vol.shape == ok.shape == price.shape
    # rejected rows are nan; accepted ones are finite inside the search interval
    assert np.all(np.isnan(vol[~ok]))
    assert np.all((vol[ok] >= VOL_MIN) & (vol[ok] <= VOL_MAX))
    # every accepted vol reproduces the price (to the solver's 1e-12 relative, with room)
    repriced = _model(c, np.where(ok, vol, 0.2), american)
    tol = 1e-11 * price + 1e-14 * c["spot"]
    bad = ok & ~(np.abs(repriced - price) <= tol)
    assert not bad.any(), f"accepted vols that do not reproduce the price at rows {np.flatnonzero(bad)[:5]}"
    # where the vol is identifiable it is found, to 1e-8
    meaningful = _meaningful_vega(c, price, american)
    assert meaningful.mean() > 0.5  # the check covers most of the book
    err = np.abs(vol - c["vol"])
    missed = meaningful & ~(ok & (err <= 1e-8))
    i = np.flatnonzero(missed)
    assert i.size == 0, (
        f"{i.size} identifiable vols missed, e.g. row {i[0]}: true {c['vol'][i[0]]!r}, "
        f"got {vol[i[0]]!r} (ok={ok[i[0]]})"
    )
    # so an accepted vol far from the true one only happens where the price cannot tell them apart
    assert np.all(~ok | (err <= 1e-8) | ~meaningful)


def _xp_args(xp, c, price):
    return (
        to_xp(xp, price),
        to_xp(xp, c["is_call"]),
        to_xp(xp, c["spot"]),
        to_xp(xp, c["strike"]),
        to_xp(xp, c["t"]),
        to_xp(xp, c["rate"]),
        to_xp(xp, c["q"]),
    )


def test_round_trip_european(xp):
    c = random_contracts(11, 2000)
    price = _model(c, c["vol"], american=False)
    vol, ok = implied_vol(*_xp_args(xp, c, price))
    _check_round_trip(c, price, to_np(vol), to_np(ok), american=False)


def test_round_trip_american():
    c = random_contracts(12, 400)
    price = _model(c, c["vol"], american=True)
    vol, ok = implied_vol(*_xp_args(np, c, price), american=True)
    _check_round_trip(c, price, vol, ok, american=True)


def test_round_trip_mixed_styles():
    """A per-row ``american`` flag: each row is inverted with its own model."""
    n = 200
    c = random_contracts(13, n)
    amer = np.random.default_rng(14).random(n) < 0.5
    price = np.where(amer, _model(c, c["vol"], True), _model(c, c["vol"], False))
    vol, ok = implied_vol(*_xp_args(np, c, price), american=amer)
    for style in (False, True):
        rows = amer == style
        sub = {k: v[rows] for k, v in c.items()}
        _check_round_trip(sub, price[rows], vol[rows], ok[rows], american=style)


def test_round_trip_hand_picked(xp):
    """Ordinary contracts, European, American and mixed: all recovered, to 1e-8."""
    c = dict(
        is_call=np.array([True, False, True, False, True, False]),
        spot=np.array([100.0, 100.0, 42.0, 42.0, 2500.0, 7.5]),
        strike=np.array([100.0, 95.0, 40.0, 45.0, 2600.0, 8.0]),
        t=np.array([30, 91, 182, 365, 730, 7]) / 365.0,
        vol=np.array([0.2, 0.35, 0.2, 0.6, 0.15, 1.2]),
        rate=np.array([0.05, 0.01, 0.1, 0.0, 0.04, 0.03]),
        q=np.array([0.0, 0.02, 0.0, 0.03, 0.015, 0.0]),
    )
    mixed = np.array([False, True, True, False, True, False])
    for american in (False, True, mixed):
        price = np.where(american, _model(c, c["vol"], True), _model(c, c["vol"], False))
        flag = to_xp(xp, american) if isinstance(american, np.ndarray) else american
        vol, ok = implied_vol(*_xp_args(xp, c, price), american=flag)
        assert to_np(ok).all()
        np.testing.assert_allclose(to_np(vol), c["vol"], rtol=0, atol=1e-8)


def test_far_out_of_the_money_converges(xp):
    """Prices that are tiny multiples of the spot are still inverted (a regression test: plain
    Newton on the price creeps there and ran out of iterations, rejecting all four)."""
    c = dict(
        is_call=np.array([True, False, False, True]),
        spot=np.array([100.0, 100.0, 3.0, 1270.0]),
        strike=np.array([200.0, 40.0, 1.576, 2235.0]),
        t=np.array([0.1, 0.25, 1.12, 1.1671]),
        vol=np.array([0.1, 0.1, 0.0281, 0.0183]),
        rate=np.array([0.05, 0.02, 0.015, 0.0799]),
        q=np.array([0.0, 0.01, 0.016, 0.0431]),
    )
    price = _model(c, c["vol"], False)
    assert np.all(price < 1e-70)
    vol, ok = implied_vol(*_xp_args(xp, c, price))
    assert to_np(ok).all()
    np.testing.assert_allclose(to_np(vol), c["vol"], rtol=1e-9)


def test_tiny_vega_does_not_overflow_the_newton_step(xp):
    """Vega ~1e-300 next to a finite price error must give no overflowing step (warnings are
    errors here). Row 1, an ordinary call, used to hit it on the way (its search visits tiny
    vols); the others are flat, deep in the money."""
    c = dict(
        is_call=np.array([True, False, True, False]),
        spot=np.array([35.31037935740815, 50.0, 200.0, 4786.794309226085]),
        strike=np.array([59.18424261524864, 100.0, 100.0, 8863.6]),
        t=np.array([0.8356164383561644, 1.0, 0.5, 0.6958904109589041]),
        vol=np.array([1.369358876024307, 0.01, 0.02, 0.1335]),
        rate=np.array([0.026314045276245382, 0.001, 0.05, 0.0132]),
        q=np.array([0.013900286786807589, 0.0, 0.0, 0.0479]),
    )
    price = _model(c, c["vol"], False)
    vol, ok = implied_vol(*_xp_args(xp, c, price))
    vol, ok = to_np(vol), to_np(ok)
    assert ok[0] and abs(vol[0] - c["vol"][0]) <= 1e-8
    repriced = _model(c, np.where(ok, vol, 0.2), False)
    assert np.all(~ok | (np.abs(repriced - price) <= 1e-11 * price))
    assert np.all(np.isnan(vol[~ok]))


# --- rejections ------------------------------------------------------------------------------


def _bad_prices(american: bool):
    """Prices that no volatility in [1e-4, 10] gives, each with its contract."""
    k, t, r, q = 100.0, 0.5, 0.05, 0.02
    dq, dr = np.exp(-q * t), np.exp(-r * t)
    if american:  # bounds: intrinsic S − K (K − S) below, S (K) above
        itm_call, itm_put, call_cap, put_cap = 30.0, 30.0, 130.0, 100.0
    else:  # bounds: discounted forward intrinsic below, S·e^{-qT} (K·e^{-rT}) above
        itm_call = 130.0 * dq - k * dr
        itm_put = k * dr - 70.0 * dq
        call_cap, put_cap = 130.0 * dq, k * dr
    rows = [
        # (is_call, spot, t, price)
        (True, 130.0, t, itm_call - 0.5),  # below intrinsic
        (False, 70.0, t, itm_put - 0.5),
        (True, 130.0, t, call_cap + 1.0),  # above the upper bound
        (False, 100.0, t, put_cap + 1.0),
        (True, 100.0, t, -1.0),  # negative
        (False, 100.0, t, 0.0),  # zero (below the price at any positive vol)
        (True, 100.0, 0.0, 5.0),  # expired: no vol can matter
        (False, 100.0, 0.0, 0.0),
        (True, 100.0, t, np.nan),
    ]
    is_call, spot, tt, price = (np.array(col) for col in zip(*rows))
    n = len(rows)
    return price, is_call, spot, np.full(n, k), tt, np.full(n, r), np.full(n, q)


@pytest.mark.parametrize("american", [False, True], ids=["european", "american"])
def test_impossible_prices_are_rejected(xp, american):
    args = _bad_prices(american)
    vol, ok = implied_vol(*(to_xp(xp, a) for a in args), american=american)
    vol, ok = to_np(vol), to_np(ok)
    assert not ok.any(), f"accepted rows {np.flatnonzero(ok)}"
    assert np.all(np.isnan(vol))


def test_rejections_do_not_disturb_neighbours(xp):
    """Bad rows mixed into a good book: the good rows come out exactly as on their own."""
    c = random_contracts(21, 50)
    good = _model(c, c["vol"], False)
    alone_vol, alone_ok = (to_np(a) for a in implied_vol(*_xp_args(xp, c, good)))
    bad = _bad_prices(False)
    merged = [np.concatenate([g, b]) for g, b in zip(_xp_args(np, c, good), bad)]
    vol, ok = (to_np(a) for a in implied_vol(*(to_xp(xp, a) for a in merged)))
    np.testing.assert_array_equal(ok[:50], alone_ok)
    np.testing.assert_array_equal(vol[:50], alone_vol)
    assert not ok[50:].any() and np.isnan(vol[50:]).all()


def test_american_price_is_silent_at_the_bracket_vols():
    is_call = np.array([False, False, True, False, True])
    spot = np.array([60.0, 99.0, 101.0, 9.270053671593956, 1.930005197002088])
    strike = np.array([100.0, 100.0, 100.0, 7.197209479872163, 3.3825530155411756])
    t = np.array([1.0, 1.0, 1.0, 2.147945205479452, 0.4520547945205479])
    rate = np.array([0.05, 0.05, 0.0, 0.01897072836734355, 0.07721357541971635])
    q = np.array([0.0, 0.0, 0.05, 0.05486955422654313, 0.0066405746630402345])
    for vol in (VOL_MIN, VOL_MAX):
        for i in range(5):  # one at a time: each row is a case of its own
            american_price(is_call[i], spot[i], strike[i], t[i], vol, rate[i], q[i])


# --- the public wrappers -----------------------------------------------------------------------


def test_public_option_price_scalars():
    c = gpu_margin.option_price("C", 42.0, 40.0, 0.5, 0.2, 0.1)
    p = gpu_margin.option_price("P", 42.0, 40.0, 0.5, 0.2, 0.1, 0.0, "E")
    assert np.shape(c) == () and np.shape(p) == ()
    assert float(c) == pytest.approx(4.759422392871533, rel=1e-12)  # Hull 15.6, mpmath
    assert float(p) == pytest.approx(0.8085993729000936, rel=1e-12)
    a = gpu_margin.option_price("P", 42.0, 40.0, 0.5, 0.2, 0.1, 0.0, "A")
    assert float(a) == pytest.approx(float(american_price(False, 42.0, 40.0, 0.5, 0.2, 0.1, 0.0)), rel=1e-14)
    assert float(a) >= float(p)


def test_public_option_price_and_implied_vol_arrays():
    right = np.array(["C", "P", "C", "P", "P"])
    style = np.array(["E", "A", "A", "E", "A"])
    strike = np.array([90.0, 100.0, 110.0, 120.0, 80.0])
    vol = np.array([0.25, 0.3, 0.2, 0.45, 0.6])
    price = gpu_margin.option_price(right, 100.0, strike, 0.5, vol, 0.05, 0.01, style)
    assert isinstance(price, np.ndarray) and price.shape == (5,)
    is_call = right == "C"
    amer = style == "A"
    expected = np.where(
        amer,
        american_price(is_call, 100.0, strike, 0.5, vol, 0.05, 0.01),
        bsm_price(is_call, 100.0, strike, 0.5, vol, 0.05, 0.01),
    )
    np.testing.assert_allclose(price, expected, rtol=1e-14)
    back = gpu_margin.implied_vol(price, right, 100.0, strike, 0.5, 0.05, 0.01, style)
    np.testing.assert_allclose(back, vol, rtol=0, atol=1e-8)


def test_public_implied_vol_scalar_and_nan():
    price = gpu_margin.option_price("C", 100.0, 100.0, 0.25, 0.3, 0.02)
    v = gpu_margin.implied_vol(price, "C", 100.0, 100.0, 0.25, 0.02)
    assert np.shape(v) == () and float(v) == pytest.approx(0.3, abs=1e-8)
    assert np.isnan(gpu_margin.implied_vol(150.0, "C", 100.0, 100.0, 0.25, 0.02))
    assert np.isnan(gpu_margin.implied_vol(5.0, "P", 100.0, 100.0, 0.0, 0.02))


def test_public_wrappers_accept_booleans_and_reject_unknown_codes():
    p = gpu_margin.option_price(np.array([True, False]), 100.0, 100.0, 0.5, 0.2, 0.05)
    np.testing.assert_allclose(p, bsm_price(np.array([True, False]), 100.0, 100.0, 0.5, 0.2, 0.05), rtol=1e-14)
    with pytest.raises(ValueError, match="right"):
        gpu_margin.option_price("X", 100.0, 100.0, 0.5, 0.2, 0.05)
    with pytest.raises(ValueError, match="style"):
        gpu_margin.option_price("C", 100.0, 100.0, 0.5, 0.2, 0.05, 0.0, "B")
    with pytest.raises(ValueError, match="right"):
        gpu_margin.implied_vol(5.0, np.array(["C", "c"]), 100.0, 100.0, 0.5, 0.05)
