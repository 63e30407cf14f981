"""The fused CPU grid loop agrees with the xp kernel it accelerates."""

import threading

import numpy as np
import pytest

from gpu_margin.kernels import price_grid
from gpu_margin.kernels._fused_cpu import HAVE_NUMBA

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="Numba not importable")


def _book(n, seed):
    rng = np.random.default_rng(seed)
    spot = rng.uniform(1.0, 3000.0, n)
    t = rng.uniform(0.0, 2.5, n)
    t[rng.random(n) < 0.05] = 0.0
    return dict(
        is_call=rng.random(n) < 0.5,
        spot=spot,
        strike=spot * np.exp(rng.uniform(-0.7, 0.7, n)),
        t=t,
        vol=rng.uniform(0.01, 2.0, n),
        rate=rng.uniform(0.0, 0.08, n),
        dividend_yield=rng.uniform(0.0, 0.05, n),
    )


@pytest.mark.parametrize("vol_mode", ["relative", "absolute"])
def test_fused_equals_xp_path_with_shock_rows(vol_mode):
    b = _book(3000, 7)
    rng = np.random.default_rng(8)
    k, m = 5, 13
    spot_shock = rng.uniform(-0.6, 0.6, (k, m))
    spot_shock[:, 0] = 0.0
    vol_shock = rng.uniform(-0.9, 0.9, (k, m))
    row = rng.integers(0, k, 3000)
    args = (*b.values(), False, spot_shock, vol_shock)
    fast = price_grid(*args, shock_row=row, vol_mode=vol_mode)
    ref = price_grid(*args, shock_row=row, vol_mode=vol_mode, fused=False)
    np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-12 * b["spot"].max())
    assert np.all(np.signbit(fast) == False)  # noqa: E712  (no -0.0: outputs are byte-stable)


def test_fused_from_worker_thread_matches_main_thread():
    b = _book(500, 9)
    shocks = np.linspace(-0.15, 0.15, 11)[None, :]
    zero = np.zeros_like(shocks)
    main = price_grid(*b.values(), False, shocks, zero)
    box = {}
    th = threading.Thread(target=lambda: box.setdefault("v", price_grid(*b.values(), False, shocks, zero)))
    th.start()
    th.join()
    np.testing.assert_array_equal(box["v"], main)
