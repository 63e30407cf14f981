"""price_grid against the pricers evaluated at the shocked inputs, on every array namespace."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import random_contracts, to_np, to_xp
from gpu_margin.kernels import american_price, bsm_price, price_grid
from gpu_margin.kernels.grid import BLOCK_ELEMENTS, VOL_FLOOR

# Values agree with the pricers to 1e-12 relative; values that are essentially zero (far
# out of the money, where the grid's shared-exponential form of the normal tail and
# bsm_price's differ in the last bits of a tiny difference) get an absolute floor of 1e-14·S.
RTOL = 1e-12
ATOL_PER_SPOT = 1e-14


def _is_numpy(xp) -> bool:
    return xp.__name__.endswith("numpy")


def _book(seed: int, n: int, american: float = 0.0, expired: float = 0.05) -> dict[str, np.ndarray]:
    """:func:`random_contracts` with some expired (T = 0) and a share American."""
    return random_contracts(seed, n, expired=expired, american=american)


def _tables(seed: int, k: int, m: int, vol_mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(k, m) spot and vol shock tables; column 0 is the zero scenario."""
    rng = np.random.default_rng(seed)
    spot_shock = rng.uniform(-0.6, 0.6, (k, m))
    vol_shock = rng.uniform(-0.9, 1.5, (k, m)) if vol_mode == "relative" else rng.uniform(-0.5, 0.5, (k, m))
    spot_shock[:, 0] = 0.0
    vol_shock[:, 0] = 0.0
    return spot_shock, vol_shock


def expected_grid(b, spot_shock, vol_shock, shock_row, vol_mode, vol_floor=VOL_FLOOR):
    """The pricers at the shocked inputs, elementwise, in NumPy: ``(n, m)``."""
    row = np.zeros(b["spot"].shape[0], dtype=np.int64) if shock_row is None else shock_row
    col = lambda a: a[:, None]  # noqa: E731
    s = col(b["spot"]) * (1.0 + spot_shock[row])
    sig = col(b["vol"]) * (1.0 + vol_shock[row]) if vol_mode == "relative" else col(b["vol"]) + vol_shock[row]
    sig = np.maximum(sig, vol_floor)
    call = np.broadcast_to(col(b["is_call"]), s.shape)
    args = (call, s, col(b["strike"]), col(b["t"]), sig, col(b["rate"]), col(b["q"]))
    out = bsm_price(*args)
    if b["american"].any():
        out = np.where(col(b["american"]), american_price(*args), out)
    return out


def run_grid(xp, b, spot_shock, vol_shock, shock_row=None, **kw):
    args = [to_xp(xp, b[k]) for k in ("is_call", "spot", "strike", "t", "vol", "rate", "q", "american")]
    row = None if shock_row is None else to_xp(xp, shock_row)
    out = price_grid(*args, to_xp(xp, spot_shock), to_xp(xp, vol_shock), shock_row=row, **kw)
    return to_np(out)


def assert_grid_close(got, expected, b, what=""):
    assert got.shape == expected.shape and got.dtype == np.float64
    tol = np.maximum(RTOL * np.abs(expected), ATOL_PER_SPOT * b["spot"][:, None])
    excess = np.abs(got - expected) - tol
    i, j = np.unravel_index(int(np.argmax(excess)), excess.shape)
    assert excess[i, j] <= 0.0, (
        f"{what} row {i} scenario {j}: grid {got[i, j]!r}, pricer {expected[i, j]!r}; "
        + ", ".join(f"{k}={v[i]!r}" for k, v in b.items())
    )


@pytest.fixture(params=[True, False], ids=["fused", "xp-path"])
def fused(request, xp):
    """On NumPy the European grid has two paths (a Numba loop and the xp code); test both."""
    if request.param and not _is_numpy(xp):
        pytest.skip("the fused loop is NumPy-only; the xp path is tested")
    return request.param


@pytest.mark.parametrize("vol_mode", ["relative", "absolute"])
def test_european_single_row_table(xp, fused, vol_mode):
    b = _book(1, 500)
    ss, vs = _tables(2, 1, 16, vol_mode)
    got = run_grid(xp, b, ss, vs, vol_mode=vol_mode, fused=fused)
    assert_grid_close(got, expected_grid(b, ss, vs, None, vol_mode), b)


@pytest.mark.parametrize("vol_mode", ["relative", "absolute"])
def test_european_multi_row_tables(xp, fused, vol_mode):
    b = _book(3, 500)
    ss, vs = _tables(4, 5, 12, vol_mode)
    row = np.random.default_rng(5).integers(0, 5, 500)
    got = run_grid(xp, b, ss, vs, row, vol_mode=vol_mode, fused=fused)
    assert_grid_close(got, expected_grid(b, ss, vs, row, vol_mode), b)


def test_zero_scenario_is_the_base_price(xp, fused):
    b = _book(6, 400)
    ss, vs = _tables(7, 3, 8, "relative")
    row = np.random.default_rng(8).integers(0, 3, 400)
    got = run_grid(xp, b, ss, vs, row, fused=fused)
    base = bsm_price(b["is_call"], b["spot"], b["strike"], b["t"], b["vol"], b["rate"], b["q"])
    assert_grid_close(got[:, :1], base[:, None], b)


def test_expired_rows_are_intrinsic_at_the_shocked_spot(xp, fused):
    b = _book(9, 300, expired=1.0)
    ss, vs = _tables(10, 2, 10, "relative")
    row = np.random.default_rng(11).integers(0, 2, 300)
    got = run_grid(xp, b, ss, vs, row, fused=fused)
    s = b["spot"][:, None] * (1.0 + ss[row])
    k = b["strike"][:, None]
    intrinsic = np.maximum(np.where(b["is_call"][:, None], s - k, k - s), 0.0)
    # to the rounding of S·u − K (the fused loop may contract it into one multiply-add)
    assert np.all(np.abs(got - intrinsic) <= 4.5e-16 * np.maximum(s, k))


@pytest.mark.parametrize("vol_mode", ["relative", "absolute"])
def test_vol_floor(xp, fused, vol_mode):
    """Shocks that drive the vol to or below zero price at the floor (default and custom)."""
    b = _book(12, 200, expired=0.0)
    if vol_mode == "relative":
        vs = np.array([[0.0, -1.0, -2.0, -0.999999]])
    else:
        vs = np.array([[0.0, -5.0, -b["vol"].max(), -0.01]])
    ss = np.array([[0.0, 0.1, -0.1, 0.0]])
    for floor in (VOL_FLOOR, 0.05):
        got = run_grid(xp, b, ss, vs, vol_mode=vol_mode, vol_floor=floor, fused=fused)
        assert_grid_close(got, expected_grid(b, ss, vs, None, vol_mode, vol_floor=floor), b)


@pytest.mark.parametrize("vol_mode", ["relative", "absolute"])
def test_mixed_european_and_american(xp, vol_mode):
    n = 150 if _is_numpy(xp) else 40  # American pricing is slow on array_api_strict
    b = _book(13, n, american=0.5)
    # where early exercise never pays: calls without yield, puts at zero rate
    b["is_call"][:10], b["q"][:10] = True, 0.0
    b["is_call"][10:20], b["rate"][10:20] = False, 0.0
    ss, vs = _tables(14, 3, 7, vol_mode)
    row = np.random.default_rng(15).integers(0, 3, n)
    got = run_grid(xp, b, ss, vs, row, vol_mode=vol_mode)
    assert_grid_close(got, expected_grid(b, ss, vs, row, vol_mode), b, "mixed")
    # and there the American value is the European one, scenario by scenario
    never = np.zeros(n, dtype=bool)
    never[:20] = b["american"][:20]
    sub = {k: v[never] for k, v in b.items()}
    euro = expected_grid({**sub, "american": np.zeros_like(sub["american"])}, ss, vs, row[never], vol_mode)
    assert_grid_close(got[never], euro, sub, "american = european")


def test_american_only_with_expired_rows(xp):
    n = 120 if _is_numpy(xp) else 30
    b = _book(16, n, american=1.0, expired=0.2)
    ss, vs = _tables(17, 1, 9, "relative")
    got = run_grid(xp, b, ss, vs)
    assert_grid_close(got, expected_grid(b, ss, vs, None, "relative"), b, "american")


@pytest.mark.parametrize("block_elements", [1, 7, 100, 10**7])
def test_block_size_does_not_change_results(xp, fused, block_elements):
    b = _book(18, 90, american=0.3, expired=0.1)
    ss, vs = _tables(19, 2, 11, "relative")
    row = np.random.default_rng(20).integers(0, 2, 90)
    ref = run_grid(xp, b, ss, vs, row, fused=fused, block_elements=BLOCK_ELEMENTS)
    got = run_grid(xp, b, ss, vs, row, fused=fused, block_elements=block_elements)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("chunk", [3, 100])
def test_boundary_solve_chunk_does_not_change_results(xp, chunk, monkeypatch):
    """The American boundary is solved ``_CHUNK`` options at a time (2,048 on the CPU, 2**18 on a GPU):
    the values do not depend on it, bit for bit (the book's hundreds of options in chunks of 3 or 100 against
    one chunk)."""
    from gpu_margin.kernels import american

    b = _book(25, 40, american=1.0, expired=0.1)
    ss, vs = _tables(26, 2, 7, "relative")
    row = np.random.default_rng(27).integers(0, 2, 40)
    ref = run_grid(xp, b, ss, vs, row, fused=False)
    monkeypatch.setattr(american, "_CHUNK", chunk)
    np.testing.assert_array_equal(run_grid(xp, b, ss, vs, row, fused=False), ref)


def test_row_order_is_kept_for_mixed_styles():
    """Each contract's row is its own: the same grid with the contracts permuted, permuted."""
    b = _book(21, 60, american=0.5)
    ss, vs = _tables(22, 2, 5, "absolute")
    row = np.random.default_rng(23).integers(0, 2, 60)
    perm = np.random.default_rng(24).permutation(60)
    got = run_grid(np, b, ss, vs, row, vol_mode="absolute")
    got_perm = run_grid(np, {k: v[perm] for k, v in b.items()}, ss, vs, row[perm], vol_mode="absolute")
    np.testing.assert_array_equal(got_perm, got[perm])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    k=st.integers(1, 4),
    m=st.integers(1, 9),
    vol_mode=st.sampled_from(["relative", "absolute"]),
)
def test_european_random_shapes(xp, seed, n, k, m, vol_mode):
    b = _book(seed, n)
    ss, vs = _tables(seed + 1, k, m, vol_mode)
    row = None if k == 1 else np.random.default_rng(seed + 2).integers(0, k, n)
    got = run_grid(xp, b, ss, vs, row, vol_mode=vol_mode)
    assert_grid_close(got, expected_grid(b, ss, vs, row, vol_mode), b)


def test_empty_book(xp):
    b = {k: v[:0] for k, v in _book(25, 3).items()}
    ss, vs = _tables(26, 1, 6, "relative")
    got = run_grid(xp, b, ss, vs)
    assert got.shape == (0, 6)


def test_argument_errors():
    b = _book(27, 4)
    ss, vs = _tables(28, 2, 3, "relative")
    with pytest.raises(ValueError, match="shock_row"):
        run_grid(np, b, ss, vs)
    with pytest.raises(ValueError, match="vol_mode"):
        run_grid(np, b, ss[:1], vs[:1], vol_mode="log")
    with pytest.raises(ValueError, match="one shape"):
        run_grid(np, b, ss[:1], vs[:1, :2])
