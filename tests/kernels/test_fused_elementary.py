"""The fused loops' own exp, log and normal CDF (kernels/_fused_cpu.py), and the fused
``option_price`` loop against the xp ``bsm_price`` it replaces on NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import ndtr

from gpu_margin.kernels import bsm_price, price_grid
from gpu_margin.kernels import _fused_cpu as fc
from gpu_margin.kernels.normal import norm_cdf

pytestmark = pytest.mark.skipif(not fc.HAVE_NUMBA, reason="Numba not importable")

DBL_MIN = 2.2250738585072014e-308


def _ulps(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(got - ref) / np.spacing(np.abs(ref))


def test_exp_within_one_ulp_of_libm():
    rng = np.random.default_rng(1)
    x = np.concatenate([
        rng.uniform(-40.0, 40.0, 200_000),
        rng.uniform(-1.0, 1.0, 50_000),
        rng.uniform(-1e-8, 1e-8, 10_000),
        rng.uniform(-708.0, 709.7, 50_000),
        np.arange(-1022, 1024) * math.log(2.0),  # reduction boundaries n·ln2 (and ± half ulps)
        np.arange(-1022, 1024) * math.log(2.0) + 0.5 * math.log(2.0),
        [0.0, -0.0, 1.0, -1.0, 709.0, 709.78, -708.39, -800.0 / 2],
    ])
    x = x[(x > -708.39) & (x < 709.78)]
    got = fc.exp_vec(x)
    ref = np.array([math.exp(v) for v in x])
    assert _ulps(got, ref).max() <= 1.0
    assert fc.exp_vec(np.array([0.0]))[0] == 1.0


def test_exp_extremes_nan_and_underflow():
    x = np.array([np.nan, np.inf, -np.inf, 709.79, 1e300, -708.4, -745.0, -800.0, -1e300, -40.0 * 40.0 / 2])
    got = fc.exp_vec(x)
    assert np.isnan(got[0])
    assert got[1] == np.inf and got[3] == np.inf and got[4] == np.inf
    assert got[2] == 0.0
    # below ln 2^-1022 the result is 0 (never a subnormal): within DBL_MIN of e^x
    assert np.all(got[5:] == 0.0) and not np.signbit(got[5:]).any()
    assert np.all(np.abs(got[5:] - np.exp(x[5:])) <= DBL_MIN)


def test_log_within_one_ulp_of_libm():
    rng = np.random.default_rng(2)
    x = np.concatenate([
        np.exp(rng.uniform(-700.0, 700.0, 200_000)),
        rng.uniform(0.5, 2.0, 100_000),  # ratios S/K near 1: cancellation in ln
        1.0 + rng.uniform(-1e-10, 1e-10, 10_000),
        [1.0, 2.0, 0.5, math.sqrt(2.0), np.nextafter(math.sqrt(2.0), 3.0), DBL_MIN, 1.7976931348623157e308],
        np.array([5e-324, 1e-310, 3e-320]),  # subnormals
    ])
    got = fc.log_vec(x)
    ref = np.array([math.log(v) for v in x])
    err = np.where(ref == 0.0, np.abs(got), _ulps(got, ref))
    assert err.max() <= 1.0
    assert fc.log_vec(np.array([1.0]))[0] == 0.0


def test_log_special_values():
    got = fc.log_vec(np.array([0.0, -0.0, -1.0, -np.inf, np.nan, np.inf]))
    assert got[0] == -np.inf and got[1] == -np.inf
    assert np.isnan(got[2]) and np.isnan(got[3]) and np.isnan(got[4])
    assert got[5] == np.inf


def test_norm_cdf_matches_ndtr_and_the_xp_kernel():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(-40.0, 40.0, 200_000), rng.normal(0.0, 1.0, 100_000),
                        np.linspace(-45.0, 45.0, 9001), [0.0, -0.0, 38.5, -38.5, 40.0, -40.0, 1e300, -1e300]])
    got = fc.norm_cdf_vec(x)
    assert np.abs(got - ndtr(x)).max() <= 2.5e-16  # the documented absolute error of Hart's form
    # the xp kernel's formula, up to a few ulps of the tail (the exponential's last bit, FMA
    # contraction in Horner's scheme); above 0 that is 1 - tail, within an ulp of 1
    ref = norm_cdf(x)
    assert np.all(np.abs(got - ref) <= np.maximum(2e-15 * np.abs(ref), 2.3e-16))
    assert np.all((got >= 0.0) & (got <= 1.0))
    assert got[x == 0.0][0] == 0.5


def test_norm_cdf_limits_and_nan():
    got = fc.norm_cdf_vec(np.array([-np.inf, np.inf, np.nan, -39.0, 39.0]))
    assert got[0] == 0.0 and got[1] == 1.0 and np.isnan(got[2])
    assert got[3] == 0.0 and got[4] == 1.0


def _book(n: int, seed: int) -> dict[str, np.ndarray]:
    """Calls and puts, S 0.01–1e6, K/S 0.02–50, T 0–3 years (some exactly 0), vol 0–300% (some 0)."""
    rng = np.random.default_rng(seed)
    spot = np.exp(rng.uniform(np.log(0.01), np.log(1e6), n))
    t = rng.integers(0, 3 * 365 + 1, n) / 365.0
    t[rng.random(n) < 0.05] = 0.0
    vol = np.exp(rng.uniform(np.log(0.01), np.log(3.0), n))
    vol[rng.random(n) < 0.02] = 0.0
    return dict(
        is_call=rng.random(n) < 0.5,
        spot=spot,
        strike=spot * np.exp(rng.uniform(np.log(0.02), np.log(50.0), n)),
        t=t,
        vol=vol,
        rate=rng.uniform(0.0, 0.10, n),
        dividend_yield=rng.uniform(0.0, 0.06, n),
    )


def test_fused_price_equals_xp_bsm_price():
    b = _book(50_000, 11)
    fast = fc.european_price_fused(*b.values())
    ref = bsm_price(*b.values())
    # 1e-12 relative; values that are essentially zero (a tiny difference of two legs, where the
    # shared-exponential tail and bsm_price's two exponentials differ in the last bits) get 1e-14·S
    tol = np.maximum(1e-12 * np.abs(ref), 1e-14 * np.maximum(b["spot"], b["strike"]))
    assert np.all(np.abs(fast - ref) <= tol)
    assert not np.signbit(fast).any()
    # the floor matters only for values far below the legs: elsewhere the check is relative
    sizable = ref > 1e-4 * np.maximum(b["spot"], b["strike"])
    assert sizable.mean() > 0.6
    assert np.all(np.abs(fast - ref)[sizable] <= 1e-12 * ref[sizable])


def test_fused_price_nan_inputs_give_nan():
    b = {k: v[:6].copy() for k, v in _book(6, 5).items()}
    b["t"][:] = 0.5
    b["vol"][:] = 0.3
    b["spot"][0] = np.nan
    b["strike"][1] = np.nan
    b["vol"][2] = np.nan
    b["rate"][3] = np.nan
    b["dividend_yield"][4] = np.nan
    got = fc.european_price_fused(*b.values())
    ref = bsm_price(*b.values())
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    # a nan vol is not "live" (vol·√T > 0 is false) in either path: the discounted intrinsic value
    assert np.isnan(got[[0, 1, 3, 4]]).all() and np.isfinite(got[[2, 5]]).all()


def test_fused_price_does_not_depend_on_position():
    b = _book(3001, 12)
    base = fc.european_price_fused(*b.values())
    perm = np.random.default_rng(0).permutation(3001)
    shuffled = fc.european_price_fused(*(v[perm] for v in b.values()))
    np.testing.assert_array_equal(shuffled, base[perm])


@pytest.mark.parametrize("k", [1, 4])
def test_fused_grid_does_not_depend_on_position(k):
    b = _book(1001, 13)
    b["vol"] = np.maximum(b["vol"], 0.01)
    rng = np.random.default_rng(14)
    m = 37  # more than a tile's scenarios: two passes per tile
    spot_shock = rng.uniform(-0.5, 0.5, (k, m))
    vol_shock = rng.uniform(-0.5, 0.5, (k, m))
    row = rng.integers(0, k, 1001)
    base = price_grid(*b.values(), False, spot_shock, vol_shock, shock_row=row)
    perm = rng.permutation(1001)
    shuffled = price_grid(*(v[perm] for v in b.values()), False, spot_shock, vol_shock, shock_row=row[perm])
    np.testing.assert_array_equal(shuffled, base[perm])


def test_fused_grid_nan_inputs_give_nan_like_the_xp_path():
    b = {k: v[:4].copy() for k, v in _book(4, 15).items()}
    b["t"][:] = 0.5
    b["vol"][:] = 0.3
    b["vol"][0] = np.nan
    b["spot"][1] = np.nan
    shocks = np.linspace(-0.1, 0.1, 5)[None, :]
    fast = price_grid(*b.values(), False, shocks, np.zeros_like(shocks))
    ref = price_grid(*b.values(), False, shocks, np.zeros_like(shocks), fused=False)
    assert np.array_equal(np.isnan(fast), np.isnan(ref))
    assert np.isnan(fast[:2]).all() and np.isfinite(fast[2:]).all()
