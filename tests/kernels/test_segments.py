"""segment_sum against a plain NumPy scatter-add, on every array namespace."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import to_np, to_xp
from gpu_margin.kernels import segment_sum
from gpu_margin.kernels._compat import segment_sum_generic


def reference(values: np.ndarray, ids: np.ndarray, n_segments: int) -> np.ndarray:
    out = np.zeros((n_segments, values.shape[1]))
    np.add.at(out, ids, values)
    return out


def _tolerance(values, ids, n_segments):
    """Summation-order rounding: a few ulps of the segment's sum of magnitudes."""
    return 1e-15 * max(ids.shape[0], 1) * reference(np.abs(values), ids, n_segments) + 1e-300


def _random_case(seed: int, n: int, m: int, n_segments: int):
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.integers(0, n_segments, n))
    values = rng.standard_normal((n, m)) * np.exp(rng.uniform(-5, 5, (n, 1)))
    return values, ids


def _check(xp, values, ids, n_segments, fn=None):
    fn = fn or segment_sum
    got = to_np(fn(to_xp(xp, values), to_xp(xp, ids), n_segments))
    assert got.shape == (n_segments, values.shape[1]) and got.dtype == np.float64
    expected = reference(values, ids, n_segments)
    assert np.all(np.abs(got - expected) <= _tolerance(values, ids, n_segments))
    # segments without rows are exactly zero
    empty = np.setdiff1d(np.arange(n_segments), ids)
    assert np.all(got[empty] == 0.0)
    return got


@pytest.mark.parametrize(
    ("n", "m", "n_segments"),
    [(1000, 7, 300), (1000, 1, 5000), (257, 3, 1), (64, 16, 64), (1, 1, 1), (1, 4, 10)],
)
def test_matches_scatter_add(xp, n, m, n_segments):
    values, ids = _random_case(n * 7 + m, n, m, n_segments)
    _check(xp, values, ids, n_segments)


def test_leading_trailing_and_inner_empty_segments(xp):
    ids = np.array([2, 2, 2, 5, 6, 6, 9, 9, 9, 9])
    values = np.arange(1.0, 21.0).reshape(10, 2)
    got = _check(xp, values, ids, 12)
    np.testing.assert_array_equal(got[2], [1 + 3 + 5, 2 + 4 + 6])
    np.testing.assert_array_equal(got[[0, 1, 3, 4, 7, 8, 10, 11]], 0.0)


def test_no_rows(xp):
    got = to_np(segment_sum(to_xp(xp, np.zeros((0, 3))), to_xp(xp, np.zeros(0, dtype=np.int64)), 4))
    np.testing.assert_array_equal(got, np.zeros((4, 3)))


def test_int32_ids():
    values, ids = _random_case(3, 200, 2, 50)
    got = segment_sum(values, ids.astype(np.int32), 50)
    np.testing.assert_allclose(got, reference(values, ids, 50), rtol=1e-13, atol=1e-12)


def test_generic_path_matches_numpy_path():
    """The Array-API-only scan (used by array_api_strict) against the NumPy branch, on NumPy."""
    import array_api_compat.numpy as xp_numpy

    values, ids = _random_case(4, 777, 5, 120)
    fast = segment_sum(values, ids, 120)
    generic = to_np(segment_sum_generic(xp_numpy, xp_numpy.asarray(values), xp_numpy.asarray(ids), 120))
    assert np.all(np.abs(fast - generic) <= _tolerance(values, ids, 120))


@pytest.mark.gpu
def test_cupy_path_adds_in_row_order_like_the_numpy_loop_bit_for_bit():
    """The CuPy branch (one thread per segment and column, rows added in order) gives the compiled NumPy
    loop's bits, the same on a rerun (no atomics), -0.0 kept and segments without rows zero."""
    from gpu_margin._backend import gpu_status
    from gpu_margin.kernels._fused_cpu import HAVE_NUMBA

    ok, reason = gpu_status()
    if not ok:
        pytest.skip(reason)
    if not HAVE_NUMBA:
        pytest.skip("Numba is not importable")
    import cupy

    values, ids = _random_case(5, 20_000, 37, 1500)
    ids = np.where(ids % 10 == 3, ids + 1, ids)  # segments 3, 13, ... hold no row
    values[ids == ids[0]] = -0.0
    want = segment_sum(values, ids, 1500)  # the NumPy loop
    got = [segment_sum(cupy.asarray(values), cupy.asarray(ids), 1500).get() for _ in range(2)]
    assert np.array_equal(got[0].view(np.int64), want.view(np.int64))
    assert np.array_equal(got[1].view(np.int64), got[0].view(np.int64))
    fortran = segment_sum(cupy.asfortranarray(cupy.asarray(values)), cupy.asarray(ids), 1500).get()
    assert np.array_equal(fortran.view(np.int64), want.view(np.int64))


def test_small_segment_after_a_huge_one_keeps_full_precision(xp):
    """No running total across segments: 0.1 + 0.2 + 0.3 next to 1e17-sized neighbours."""
    big = np.full((1000, 1), 1e17)
    small = np.array([[0.1], [0.2], [0.3]])
    values = np.concatenate([big, small, -big, small[::-1], big[:1]])
    ids = np.concatenate([np.zeros(1000), np.ones(3), np.full(1000, 2), np.full(3, 3), [4]]).astype(np.int64)
    got = to_np(segment_sum(to_xp(xp, values), to_xp(xp, ids), 5))[:, 0]
    assert got[1] == pytest.approx(0.6, rel=2e-16)
    assert got[3] == pytest.approx(0.6, rel=2e-16)
    assert got[0] == 1e20 and got[2] == -1e20 and got[4] == 1e17


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 120),
    m=st.integers(1, 5),
    n_segments=st.integers(1, 60),
)
def test_random_books(xp, seed, n, m, n_segments):
    values, ids = _random_case(seed, n, m, n_segments)
    _check(xp, values, ids, n_segments)


@pytest.mark.parametrize("layout", ["c", "fortran", "strided"])
def test_compiled_numpy_path_adds_each_segment_in_row_order(layout):
    """The NumPy branch (a compiled loop that releases the GIL) equals adding the rows in order; -0.0 stays."""
    from gpu_margin.kernels._fused_cpu import HAVE_NUMBA

    if not HAVE_NUMBA:
        pytest.skip("Numba is not importable")
    values, ids = _random_case(5, 600, 11, 90)
    values[ids == ids[0]] = -0.0  # a segment of negative zeros
    if layout == "fortran":
        values = np.asfortranarray(values)
    elif layout == "strided":
        values = np.repeat(values, 2, axis=1)[:, ::2]
    got = segment_sum(values, ids, 90)
    want = np.zeros((90, values.shape[1]))
    for s in np.unique(ids):
        rows = values[ids == s]
        acc = rows[0].copy()
        for r in rows[1:]:
            acc = acc + r
        want[s] = acc
    assert np.array_equal(got, want) and np.all(np.signbit(got[ids[0]]))
