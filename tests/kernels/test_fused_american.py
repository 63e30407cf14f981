"""The fused CPU path for American contracts (kernels/_fused_american.py) agrees with the xp kernel."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import random_contracts
from gpu_margin.kernels import _fused_american, price_grid

pytestmark = pytest.mark.skipif(not _fused_american.HAVE_NUMBA, reason="Numba not importable")

RTOL = 1e-12
ATOL_PER_SPOT = 1e-12


def _book(n: int, seed: int) -> dict[str, np.ndarray]:
    """Calls and puts, S 1–5000, K/S 0.05–20 (deep in and out of the money), T 1 day–5 years
    (5% expired), vol 1–300%, r 0–10%, q 0–6%; calls without yield and puts at zero rate."""
    b = random_contracts(seed, n, max_days=5 * 365, expired=0.05)
    b["dividend_yield"] = b.pop("q")
    del b["days"]
    spot = b["spot"]
    rng = np.random.default_rng([seed, 1])  # the extra draws below
    deep = rng.random(n) < 0.1
    b["strike"][deep] = spot[deep] * np.exp(rng.uniform(np.log(0.05), np.log(20.0), deep.sum()))
    k = n // 20
    b["is_call"][:k], b["dividend_yield"][:k] = True, 0.0  # calls without yield: European
    b["is_call"][k : 2 * k], b["rate"][k : 2 * k] = False, 0.0  # puts at zero rate: European
    b["rate"][2 * k : 2 * k + 3] = 1e-13  # below the rate threshold
    return b


def _tables(seed: int, k: int, m: int, vol_mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(k, m) shock tables: column 0 the zero scenario, repeated vol levels across and within rows,
    and shocks that take the vol to or below the floor."""
    rng = np.random.default_rng(seed)
    spot_shock = rng.uniform(-0.6, 0.6, (k, m))
    spot_shock[:, 0] = 0.0
    if vol_mode == "relative":
        vol_shock = rng.choice(np.r_[rng.uniform(-0.9, 1.5, 2 * m), -1.0, -2.0], (k, m))
    else:
        vol_shock = rng.choice(np.r_[rng.uniform(-0.5, 0.5, 2 * m), -5.0], (k, m))
    vol_shock[:, 0] = 0.0
    return spot_shock, vol_shock


def _few_levels_tables(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(3, 40) tables whose rows have 1, 3 and 40 distinct vol levels: the first two are valued
    by option (all scenarios of a contract and level together), the last lane by lane."""
    rng = np.random.default_rng(seed)
    spot_shock = rng.uniform(-0.5, 0.5, (3, 40))
    spot_shock[:, 0] = 0.0
    vol_shock = np.zeros((3, 40))
    vol_shock[1] = rng.choice([-0.4, 0.0, 0.7], 40)
    vol_shock[2] = rng.uniform(-0.5, 1.0, 40)
    return spot_shock, vol_shock


def _grid(b, spot_shock, vol_shock, shock_row=None, **kw):
    return price_grid(*b.values(), True, spot_shock, vol_shock, shock_row=shock_row, **kw)


def assert_agrees(fast, ref, b, what=""):
    assert fast.shape == ref.shape and fast.dtype == np.float64
    assert np.isfinite(fast).all(), f"{what}: non-finite values"
    assert not np.signbit(fast).any(), f"{what}: negative values or -0.0"
    tol = np.maximum(RTOL * np.abs(ref), ATOL_PER_SPOT * b["spot"][:, None])
    excess = np.abs(fast - ref) - tol
    i, j = np.unravel_index(int(np.argmax(excess)), excess.shape)
    assert excess[i, j] <= 0.0, (
        f"{what} row {i} scenario {j}: fused {fast[i, j]!r}, xp {ref[i, j]!r}; "
        + ", ".join(f"{k}={v[i]!r}" for k, v in b.items())
    )


@pytest.mark.parametrize("vol_mode", ["relative", "absolute"])
def test_fused_equals_xp_path_with_shock_rows(vol_mode):
    b = _book(1500, 1)
    ss, vs = _tables(2, 4, 9, vol_mode)
    row = np.random.default_rng(3).integers(0, 4, 1500)
    fast = _grid(b, ss, vs, row, vol_mode=vol_mode)
    ref = _grid(b, ss, vs, row, vol_mode=vol_mode, fused=False)
    assert_agrees(fast, ref, b, vol_mode)


@pytest.mark.parametrize("vol_floor", [1e-3, 0.05, 0.0])
def test_fused_equals_xp_path_at_the_vol_floor(vol_floor):
    b = _book(600, 4)
    ss = np.array([[0.0, 0.1, -0.1, 0.3, -0.3]])
    vs = np.array([[0.0, -1.0, -0.999999, -2.0, 0.5]])
    fast = _grid(b, ss, vs, vol_floor=vol_floor)
    ref = _grid(b, ss, vs, vol_floor=vol_floor, fused=False)
    assert_agrees(fast, ref, b, f"floor {vol_floor}")


def test_fused_equals_xp_path_with_a_distinct_vol_shock_per_scenario():
    """A replay: every scenario its own vol level, each row its own scenarios."""
    b = _book(300, 5)
    rng = np.random.default_rng(6)
    ss = rng.uniform(-0.3, 0.3, (2, 60))
    vs = rng.uniform(-0.5, 1.0, (2, 60))
    row = rng.integers(0, 2, 300)
    fast = _grid(b, ss, vs, row)
    ref = _grid(b, ss, vs, row, fused=False)
    assert_agrees(fast, ref, b, "replay")


@pytest.mark.parametrize("vol_mode", ["relative", "absolute"])
def test_fused_equals_xp_path_by_option(vol_mode):
    """Rows with many scenarios per vol level (a plain grid of price moves) take the by-option path."""
    assert 40 >= _fused_american.OPTION_MAJOR * 3  # rows of 1 and 3 levels by option, with uneven counts
    b = _book(800, 7)
    ss, vs = _few_levels_tables(8)
    row = np.random.default_rng(9).integers(0, 3, 800)
    fast = _grid(b, ss, vs, row, vol_mode=vol_mode)
    ref = _grid(b, ss, vs, row, vol_mode=vol_mode, fused=False)
    assert_agrees(fast, ref, b, vol_mode)


def test_fused_values_do_not_depend_on_position_or_path():
    """Shuffling the book changes the tiles every option and pair falls in, not a bit of any value;
    and a contract valued by option (a row of few levels) equals the same contract valued lane by
    lane (a row of a level per scenario) where the scenario is the same."""
    b = _book(700, 21)
    ss, vs = _few_levels_tables(22)
    row = np.random.default_rng(23).integers(0, 3, 700)
    base = _grid(b, ss, vs, row)
    perm = np.random.default_rng(24).permutation(700)
    shuffled = _grid({k: v[perm] for k, v in b.items()}, ss, vs, row[perm])
    np.testing.assert_array_equal(shuffled, base[perm])
    # row 0: one level (by option); row 1: the same scenarios, but 40 levels (lane by lane)
    ss2 = np.vstack([ss[0], ss[0]])
    vs2 = np.vstack([np.zeros(40), np.r_[0.0, np.linspace(1e-9, 2e-9, 39)]])
    by_option = _grid(b, ss2, vs2, np.zeros(700, dtype=np.int64))
    by_lane = _grid(b, ss2, vs2, np.ones(700, dtype=np.int64))
    np.testing.assert_array_equal(by_option[:, 0], by_lane[:, 0])


@pytest.mark.parametrize("n, m", [(1, 1), (1, 7), (3, 1), (65, 3), (130, 17)])
def test_fused_equals_xp_path_on_small_shapes(n, m):
    """Books and tables smaller and not multiples of a tile, with expired and European rows."""
    b = _book(n, 10 + n)
    ss, vs = _tables(11 + m, 1, m, "relative")
    fast = _grid(b, ss, vs)
    ref = _grid(b, ss, vs, fused=False)
    assert_agrees(fast, ref, b, f"{n}x{m}")


def test_mixed_styles_take_the_fused_path(monkeypatch):
    calls = []
    real = _fused_american.american_grid_fused

    def spy(*args):
        calls.append(args[0].shape[0])
        return real(*args)

    monkeypatch.setattr(_fused_american, "american_grid_fused", spy)
    b = _book(200, 12)
    amer = np.random.default_rng(13).random(200) < 0.5
    ss, vs = _tables(14, 1, 6, "relative")
    fast = price_grid(*b.values(), amer, ss, vs)
    assert calls == [int(amer.sum())]
    ref = price_grid(*b.values(), amer, ss, vs, fused=False)
    assert calls == [int(amer.sum())]  # fused=False never enters it
    assert_agrees(fast, ref, b, "mixed")


@pytest.mark.parametrize("tables", ["by lane", "by option"])
def test_fused_is_deterministic_and_independent_of_order_and_threads(tables):
    """Each value is computed by the same instructions wherever its contract sits in the book
    and however many threads run: repeated, permuted and single-threaded runs agree bit for bit."""
    numba = pytest.importorskip("numba")
    b = _book(700, 15)
    ss, vs = _tables(16, 3, 8, "absolute") if tables == "by lane" else _few_levels_tables(16)
    row = np.random.default_rng(17).integers(0, 3, 700)
    first = _grid(b, ss, vs, row, vol_mode="absolute")
    np.testing.assert_array_equal(_grid(b, ss, vs, row, vol_mode="absolute"), first)
    perm = np.random.default_rng(18).permutation(700)
    permuted = _grid({k: v[perm] for k, v in b.items()}, ss, vs, row[perm], vol_mode="absolute")
    np.testing.assert_array_equal(permuted, first[perm])
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        np.testing.assert_array_equal(_grid(b, ss, vs, row, vol_mode="absolute"), first)
    finally:
        numba.set_num_threads(threads)


def test_fused_from_worker_threads_matches_main_thread():
    """Off the main thread (a Dask worker) the serial variant runs; several at once are safe."""
    b = _book(500, 19)
    ss, vs = _few_levels_tables(20)
    row = np.random.default_rng(21).integers(0, 3, 500)
    main = _grid(b, ss, vs, row)
    box: dict[int, np.ndarray] = {}
    workers = [threading.Thread(target=lambda i=i: box.setdefault(i, _grid(b, ss, vs, row))) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(box) == [0, 1, 2, 3]
    for v in box.values():
        np.testing.assert_array_equal(v, main)


def test_row_slots_match_each_rows_own_unique():
    """The slot tables built for all shock rows at once are, row by row, what ``np.unique`` of the row's
    level codes gives (levels ascending, scenarios stably by slot, slot starts 0 after the last)."""
    rng = np.random.default_rng(7)
    for trial in range(600):
        k, m = int(rng.integers(1, 10)), int(rng.integers(1, 30))
        pool = rng.choice([-0.3, -0.1, 0.0, 0.05, 0.25, np.nan], size=int(rng.integers(1, 6)), replace=False)
        vol_shock = rng.choice(pool, size=(k, m))
        if trial % 6 == 0:  # a replay's table: about one level per cell, some repeated
            vol_shock = np.round(rng.normal(0.0, 0.2, (k, m)), 2)
        slot_tab, row_levels, n_slots, scen_order, slot_start = _fused_american._row_slots(vol_shock)
        levels = np.unique(vol_shock)
        for r in range(k):  # the reference: one row at a time
            used, slot, count = np.unique(np.searchsorted(levels, vol_shock[r]), return_inverse=True,
                                          return_counts=True)
            assert n_slots[r] == used.size
            np.testing.assert_array_equal(slot_tab[r], slot)
            np.testing.assert_array_equal(row_levels[r], np.r_[levels[used], np.zeros(m - used.size)])
            np.testing.assert_array_equal(scen_order[r], np.argsort(slot, kind="stable"))
            np.testing.assert_array_equal(slot_start[r], np.r_[0, np.cumsum(count), np.zeros(m - used.size)])


def test_row_slots_memory_grows_with_the_table_not_its_distinct_levels():
    """A replay's shock table has about one distinct level per cell: the slot tables take memory of order
    k x m (the first version's dense k x levels table, k^2 x m, peaked at 4.3 GB here)."""
    import tracemalloc

    k, m = 1000, 251
    vol_shock = np.random.default_rng(3).normal(0.0, 0.2, (k, m))
    tracemalloc.start()
    try:
        _fused_american._row_slots(vol_shock)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * k * m * 8  # about 8 MB of output and as much again of temporaries
