"""norm_cdf / norm_pdf against mpmath, and their invariants, on every array namespace."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import to_np, to_xp
from gpu_margin.kernels import norm_cdf, norm_pdf

# Dense grid of [-38, 38] (step 0.01) plus seeded random points and a few hand-picked ones.
_GRID = np.linspace(-38.0, 38.0, 7601)
_RANDOM = np.random.default_rng(20240611).uniform(-38.0, 38.0, 1500)
_SPECIAL = np.array([0.0, 5e-324, -5e-324, 1e-300, -1e-300, 1e-8, -1e-8, 7.07106781186547, -7.07106781186547])
_X = np.concatenate([_GRID, _RANDOM, _SPECIAL])


@pytest.fixture(scope="module")
def reference():
    """Φ(x) and φ(x) of ``_X`` to 30 digits (mpmath), rounded to float64."""
    with mpmath.workdps(30):
        cdf = np.array([float(mpmath.ncdf(mpmath.mpf(float(v)))) for v in _X])
        pdf = np.array([float(mpmath.npdf(mpmath.mpf(float(v)))) for v in _X])
    return cdf, pdf


def test_norm_cdf_absolute_error_vs_mpmath(xp, reference):
    cdf, _ = reference
    got = to_np(norm_cdf(to_xp(xp, _X)))
    assert got.dtype == np.float64 and got.shape == _X.shape
    err = np.abs(got - cdf)
    worst = int(np.argmax(err))
    assert err[worst] <= 1e-15, f"|Φ error| {err[worst]:.3g} at x={_X[worst]!r}"


def test_norm_cdf_documented_absolute_error(reference):
    """The module docstring promises an absolute error of at most 2.3e-16 on [-38, 38]."""
    cdf, _ = reference
    assert np.max(np.abs(norm_cdf(_X) - cdf)) <= 2.3e-16


@pytest.mark.parametrize(
    ("limit", "bound"),
    # the relative error of the lower tail Φ(-|x|) that the module docstring documents
    [(2.0, 1.4e-15), (5.0, 5e-11), (7.07, 3e-9), (38.0, 4e-6)],
)
def test_norm_cdf_lower_tail_relative_error(reference, limit, bound):
    cdf, _ = reference
    lower = (_X <= 0.0) & (_X >= -limit)
    rel = np.abs(norm_cdf(_X[lower]) - cdf[lower]) / cdf[lower]
    assert rel.max() <= bound


def test_norm_cdf_limits_and_nan(xp):
    x = to_xp(xp, [-np.inf, -1e300, -40.0, 40.0, 1e300, np.inf, np.nan])
    got = to_np(norm_cdf(x))
    np.testing.assert_array_equal(got[:6], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert np.isnan(got[6])


def test_norm_cdf_monotone_and_in_unit_interval(xp):
    got = to_np(norm_cdf(to_xp(xp, _GRID)))
    assert np.all(np.diff(got) >= 0.0)
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_norm_cdf_at_zero_is_one_half(xp):
    assert float(to_np(norm_cdf(to_xp(xp, [0.0])))[0]) == 0.5


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(-40.0, 40.0, allow_nan=False), min_size=1, max_size=50))
def test_norm_cdf_symmetry(xp, xs):
    x = np.asarray(xs, dtype=np.float64)
    lo = to_np(norm_cdf(to_xp(xp, -x)))
    hi = to_np(norm_cdf(to_xp(xp, x)))
    np.testing.assert_allclose(lo + hi, 1.0, rtol=0, atol=2.3e-16)


def test_norm_pdf_vs_mpmath(xp, reference):
    _, pdf = reference
    got = to_np(norm_pdf(to_xp(xp, _X)))
    # exp of a rounded argument: relative error grows like x²/2 · 2⁻⁵³
    tol = 4e-16 * (1.0 + 0.5 * _X * _X) * pdf + 1e-300
    assert np.all(np.abs(got - pdf) <= tol)


def test_norm_pdf_symmetric_and_peak(xp):
    x = np.random.default_rng(7).uniform(-40.0, 40.0, 500)
    np.testing.assert_array_equal(to_np(norm_pdf(to_xp(xp, x))), to_np(norm_pdf(to_xp(xp, -x))))
    assert float(to_np(norm_pdf(to_xp(xp, [0.0])))[0]) == pytest.approx(1.0 / math.sqrt(2.0 * math.pi), rel=1e-16)
    np.testing.assert_array_equal(to_np(norm_pdf(to_xp(xp, [-np.inf, np.inf]))), [0.0, 0.0])


def test_norm_cdf_is_integral_of_pdf():
    """Φ(b) − Φ(a) against Simpson's rule on φ: the two functions describe one distribution."""
    edges = np.linspace(-8.0, 8.0, 33)
    for a, b in zip(edges[:-1], edges[1:]):
        x = np.linspace(a, b, 201)
        y = norm_pdf(x)
        h = x[1] - x[0]
        simpson = h / 3.0 * (y[0] + y[-1] + 4.0 * y[1:-1:2].sum() + 2.0 * y[2:-1:2].sum())
        assert float(norm_cdf(b) - norm_cdf(a)) == pytest.approx(simpson, rel=1e-9, abs=1e-16)
