"""American options (kernels/american.py): accuracy against QuantLib, invariants on every namespace,
the boundary state the scenario grid reuses, and the grid itself."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import quantlib_bsm_process, to_np, to_xp
from gpu_margin.kernels import american_boundary, american_price, bsm_price, price_grid
from gpu_margin.kernels.american import AmericanPut

ql = pytest.importorskip("QuantLib")

# SPEC section 4: within max(0.1% of price, 0.001) of a 2,001-step Leisen–Reimer tree.
REL_TOL = 1e-3
ABS_TOL = 1e-3
# Our own error against the converged value (QuantLib's high-precision QD+ fixed-point engine):
# a quarter of the tolerance, so that the reference tree's own error has room (docs/pricing.md).
OWN_ERROR_SHARE = 0.25
ROUND = 1e-12  # relative slack for the invariants: values differ from their bounds by rounding only


def _realistic(seed: int, n: int) -> dict[str, np.ndarray]:
    """SPEC's realistic inputs: K 25–400, S/K 0.6–1.6, 1–730 days, vol 5–90%, r 0–6%, q 0–4%."""
    rng = np.random.default_rng(seed)
    strike = np.exp(rng.uniform(np.log(25.0), np.log(400.0), n))
    return dict(
        spot=strike * np.exp(rng.uniform(np.log(0.6), np.log(1.6), n)),
        strike=strike,
        days=rng.integers(1, 731, n),
        vol=rng.uniform(0.05, 0.90, n),
        rate=rng.uniform(0.0, 0.06, n),
        q=rng.uniform(0.0, 0.04, n),
    )


def _wide(seed: int, n: int) -> dict[str, np.ndarray]:
    """Beyond the realistic range: S/K 0.3–3, 1 day–3 years, vol 1–300%, r 0–10%, q 0–6%."""
    rng = np.random.default_rng(seed)
    strike = np.exp(rng.uniform(np.log(1.0), np.log(2000.0), n))
    return dict(
        is_call=rng.random(n) < 0.5,
        spot=strike * np.exp(rng.uniform(np.log(0.3), np.log(3.0), n)),
        strike=strike,
        t=rng.integers(1, 3 * 365 + 1, n) / 365.0,
        vol=np.exp(rng.uniform(np.log(0.01), np.log(3.0), n)),
        rate=rng.uniform(0.0, 0.10, n),
        q=rng.uniform(0.0, 0.06, n),
    )


def quantlib_american(is_call: bool, c: dict[str, np.ndarray], engine: str, steps: int = 2001) -> np.ndarray:
    """QuantLib values, T = days/365 exactly: ``engine`` "lr" (binomial tree) or "qdfp" (high precision)."""
    today, process, (s_q, r_q, q_q, v_q) = quantlib_bsm_process()
    if engine == "lr":
        pricing_engine = ql.BinomialVanillaEngine(process, "lr", steps)
    else:
        pricing_engine = ql.QdFpAmericanEngine(process, ql.QdFpAmericanEngine.highPrecisionScheme())
    right = ql.Option.Call if is_call else ql.Option.Put
    out = np.empty(c["spot"].shape[0])
    for i in range(out.shape[0]):
        s_q.setValue(float(c["spot"][i]))
        r_q.setValue(float(c["rate"][i]))
        q_q.setValue(float(c["q"][i]))
        v_q.setValue(float(c["vol"][i]))
        option = ql.VanillaOption(
            ql.PlainVanillaPayoff(right, float(c["strike"][i])), ql.AmericanExercise(today, today + int(c["days"][i]))
        )
        option.setPricingEngine(pricing_engine)
        out[i] = option.NPV()
    return out


def _ours(is_call: bool, c: dict[str, np.ndarray]) -> np.ndarray:
    return american_price(is_call, c["spot"], c["strike"], c["days"] / 365.0, c["vol"], c["rate"], c["q"])


def _error_ratio(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(got - ref) / np.maximum(REL_TOL * np.abs(ref), ABS_TOL)


def _row(c: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: v[i : i + 1] for k, v in c.items()}


# --- accuracy -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def realistic():
    return _realistic(20260115, 150)


@pytest.mark.slow
@pytest.mark.parametrize("is_call", [False, True], ids=["put", "call"])
def test_within_tolerance_of_leisen_reimer_2001(realistic, is_call):
    """SPEC 4's contract on 150 random realistic contracts per right.

    The 2,001-step tree is itself off by more than the tolerance on about one pricing in
    4,000 (docs/pricing.md); where we miss it, the tree with 8,001 steps must agree with us.
    """
    c = realistic
    got = _ours(is_call, c)
    ratio = _error_ratio(got, quantlib_american(is_call, c, "lr"))
    for i in np.flatnonzero(ratio > 1.0):
        finer = quantlib_american(is_call, _row(c, i), "lr", steps=8001)
        ratio[i] = _error_ratio(got[i : i + 1], finer)[0]
    i = int(np.argmax(ratio))
    assert ratio[i] <= 1.0, f"contract {i}: {_row(c, i)} ours {got[i]!r}, error/tolerance {ratio[i]:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("is_call", [False, True], ids=["put", "call"])
def test_own_error_is_a_fraction_of_the_tolerance(realistic, is_call):
    """Against the converged value (QuantLib's QdFpAmericanEngine, high-precision scheme)."""
    c = realistic
    got = _ours(is_call, c)
    ratio = _error_ratio(got, quantlib_american(is_call, c, "qdfp"))
    i = int(np.argmax(ratio))
    assert ratio[i] <= OWN_ERROR_SHARE, f"contract {i}: {_row(c, i)} ours {got[i]!r}, ratio {ratio[i]:.3f}"


@pytest.mark.slow
def test_where_the_2001_step_tree_is_off_we_match_the_finer_tree():
    """A put (found in a 2,000-contract sample) on which LR-2001 reads 3.05271, 1.6 tolerances low."""
    c = dict(
        spot=np.array([173.63762427347775]),
        strike=np.array([109.96395613398016]),
        days=np.array([725]),
        vol=np.array([0.2642003837044449]),
        rate=np.array([0.011248858224011797]),
        q=np.array([0.026884286656213456]),
    )
    finer = quantlib_american(False, c, "lr", steps=8001)
    assert _error_ratio(_ours(False, c), finer)[0] <= 0.01


# --- invariants, on every namespace -------------------------------------------------------------


def _args(xp, c, **over):
    c = {**c, **over}
    return [to_xp(xp, np.asarray(c[k])) for k in ("is_call", "spot", "strike", "t", "vol", "rate", "q")]


def test_bounds_european_and_intrinsic(xp):
    c = _wide(11, 400)
    am = to_np(american_price(*_args(xp, c)))
    eu = bsm_price(*(np.asarray(c[k]) for k in ("is_call", "spot", "strike", "t", "vol", "rate", "q")))
    intrinsic = np.maximum(np.where(c["is_call"], c["spot"] - c["strike"], c["strike"] - c["spot"]), 0.0)
    slack = ROUND * np.maximum(c["spot"], c["strike"])
    assert np.all(np.isfinite(am))
    assert np.all(eu >= 0.0)
    assert np.all(am >= eu - slack)
    assert np.all(am >= intrinsic)


def test_extreme_inputs_are_finite_and_bounded(xp):
    """Out-of-range inputs (the implied-vol solver brackets 1e-4–10) stay finite and silent."""
    grid = np.meshgrid(
        [False, True], [1e-8, 1 / 365, 2.0, 30.0], [1e-4, 0.01, 3.0, 10.0], [0.0, 1e-6, 0.05, 0.2],
        [0.0, 1e-6, 0.04, 0.2], [1e-3, 0.9, 1.0, 1.1, 1e3], indexing="ij",
    )
    call, t, vol, rate, q, x = (g.ravel() for g in grid)
    c = dict(is_call=call, spot=100.0 * x, strike=np.full(x.shape, 100.0), t=t, vol=vol, rate=rate, q=q)
    am = to_np(american_price(*_args(xp, c)))
    eu = bsm_price(call, c["spot"], c["strike"], t, vol, rate, q)
    intrinsic = np.maximum(np.where(call, c["spot"] - 100.0, 100.0 - c["spot"]), 0.0)
    assert np.all(np.isfinite(am))
    assert np.all(am >= np.maximum(eu - ROUND * np.maximum(c["spot"], 100.0), intrinsic))
    b = to_np(american_boundary(*_args(xp, c)))
    assert not np.any(np.isnan(b))


@pytest.mark.parametrize("is_call", [False, True], ids=["put", "call"])
def test_monotone_in_spot(xp, is_call):
    c = _wide(12, 40)
    x = np.exp(np.linspace(np.log(0.3), np.log(3.0), 121))
    spot = c["strike"][:, None] * x[None, :]
    col = lambda a: to_xp(xp, a[:, None])  # noqa: E731
    v = to_np(american_price(is_call, to_xp(xp, spot), col(c["strike"]), col(c["t"]), col(c["vol"]),
                             col(c["rate"]), col(c["q"])))
    step = np.diff(v, axis=1) * (1.0 if is_call else -1.0)
    assert np.all(step >= -ROUND * c["strike"][:, None])


@pytest.mark.parametrize("is_call", [False, True], ids=["put", "call"])
def test_monotone_in_vol(xp, is_call):
    c = _wide(13, 40)
    vols = np.exp(np.linspace(np.log(0.01), np.log(3.0), 61))
    col = lambda a: to_xp(xp, a[:, None])  # noqa: E731
    v = to_np(american_price(is_call, col(c["spot"]), col(c["strike"]), col(c["t"]), to_xp(xp, vols[None, :]),
                             col(c["rate"]), col(c["q"])))
    assert np.all(np.diff(v, axis=1) >= -ROUND * np.maximum(c["spot"], c["strike"])[:, None])


def test_call_without_dividends_and_put_without_rate_are_european(xp):
    c = _wide(14, 200)
    c["is_call"] = np.arange(200) % 2 == 0
    c["q"] = np.where(c["is_call"], 0.0, c["q"])
    c["rate"] = np.where(c["is_call"], c["rate"], np.where(np.arange(200) % 4 == 1, 0.0, -0.01))
    am = to_np(american_price(*_args(xp, c)))
    eu = bsm_price(*(np.asarray(c[k]) for k in ("is_call", "spot", "strike", "t", "vol", "rate", "q")))
    np.testing.assert_allclose(am, eu, rtol=1e-12, atol=1e-12 * c["spot"].max())


def test_expiry_today_is_intrinsic(xp):
    c = _wide(15, 100)
    am = to_np(american_price(*_args(xp, c, t=np.zeros(100))))
    intrinsic = np.maximum(np.where(c["is_call"], c["spot"] - c["strike"], c["strike"] - c["spot"]), 0.0)
    np.testing.assert_array_equal(am, intrinsic)


def test_boundary_separates_exercise_from_continuation(xp):
    c = _realistic(16, 60)
    t = c["days"] / 365.0
    rate = np.maximum(c["rate"], 0.01)
    for is_call in (False, True):
        q = np.maximum(c["q"], 0.01) if is_call else c["q"]
        b = to_np(american_boundary(is_call, *(to_xp(xp, a) for a in (c["spot"], c["strike"], t, c["vol"], rate, q))))
        sign = 1.0 if is_call else -1.0
        inside, outside = b * (1.0 + sign * 1e-6), b * (1.0 - sign * 0.05)
        for s, exercised in ((inside, True), (outside, False)):
            v = american_price(is_call, s, c["strike"], t, c["vol"], rate, q)
            intrinsic = sign * (s - c["strike"])
            assert np.all(np.isclose(v, intrinsic, rtol=1e-12, atol=0.0) == exercised)


# --- the state the grid reuses ------------------------------------------------------------------


def test_take_and_value_agree_with_american_price(xp):
    c = _wide(17, 50)
    r_eff = np.where(c["is_call"], c["q"], c["rate"])
    q_eff = np.where(c["is_call"], c["rate"], c["q"])
    state = AmericanPut(xp, *(to_xp(xp, a) for a in (c["t"], r_eff, q_eff, c["vol"])))
    rng = np.random.default_rng(18)
    idx = rng.integers(0, 50, (30, 7))
    x = np.exp(rng.uniform(np.log(0.3), np.log(3.0), (30, 7)))
    got = to_np(state.take(to_xp(xp, idx)).value(to_xp(xp, x)))
    assert got.shape == (30, 7)
    pick = lambda a: a[idx]  # noqa: E731
    unit = american_price(False, x, 1.0, pick(c["t"]), pick(c["vol"]), pick(r_eff), pick(q_eff))
    np.testing.assert_allclose(got, unit, rtol=1e-13, atol=1e-15)
    # ... which is the option per unit of strike (puts) or of spot (calls, by symmetry)
    spot, strike = 100.0 * np.where(pick(c["is_call"]), 1.0 / x, x), 100.0
    option = american_price(pick(c["is_call"]), spot, strike, pick(c["t"]), pick(c["vol"]), pick(c["rate"]),
                            pick(c["q"]))
    scale = np.where(pick(c["is_call"]), spot, strike)
    np.testing.assert_allclose(scale * got, option, rtol=1e-12, atol=1e-12 * strike)


def test_value_broadcasts_against_the_state(xp):
    c = _wide(19, 8)
    state = AmericanPut(xp, *(to_xp(xp, c[k]) for k in ("t", "rate", "q", "vol")))
    x = np.linspace(0.5, 2.0, 5)
    got = to_np(state.value(to_xp(xp, x[:, None])))
    assert got.shape == (5, 8)
    for j in range(5):
        np.testing.assert_allclose(got[j], to_np(state.value(to_xp(xp, np.full(8, x[j])))), rtol=1e-15, atol=0.0)


@pytest.mark.parametrize("vol_shocks", [False, True], ids=["spot-only", "with-vol-shocks"])
def test_price_grid_american_rows_equal_american_price(xp, vol_shocks):
    c = _wide(20, 300)
    c["t"][:10] = 0.0
    spot_shock = np.linspace(-0.3, 0.3, 11)[None, :]
    vol_shock = np.array([[0.0, -0.5, 0.5] * 3 + [0.0, 0.25]]) if vol_shocks else np.zeros((1, 11))
    amer = np.arange(300) % 3 != 0
    got = to_np(price_grid(*_args(xp, c)[:7], to_xp(xp, amer), to_xp(xp, spot_shock), to_xp(xp, vol_shock)))
    col = lambda a: a[:, None]  # noqa: E731
    sig = np.maximum(col(c["vol"]) * (1.0 + vol_shock), 1e-3)
    args = (col(c["is_call"]), col(c["spot"]) * (1.0 + spot_shock), col(c["strike"]), col(c["t"]), sig,
            col(c["rate"]), col(c["q"]))
    want = np.where(col(amer), american_price(*args), bsm_price(*args))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * c["spot"].max())


def test_short_mills_ratio_is_accurate_to_its_stated_bound():
    """kernels/american.py's 15-operation Mills ratio Φ(-a)·e^{a²/2}: 1.7e-6 relative on [0, 1e30]."""
    mp = pytest.importorskip("mpmath")
    from gpu_margin.kernels.american import _mills_ratio_short

    a = np.concatenate([np.linspace(0.0, 12.0, 1201), np.geomspace(12.0, 1e4, 200)])
    exact = np.array([float(mp.ncdf(-mp.mpf(v)) * mp.exp(mp.mpf(v) ** 2 / 2)) for v in a])
    assert np.max(np.abs(_mills_ratio_short(a) / exact - 1.0)) <= 1.7e-6
    far = np.geomspace(1e4, 1e30, 300)  # mpmath's ncdf underflows here; the asymptotic series is exact
    asymptotic = (1.0 - 1.0 / far**2) / (far * np.sqrt(2.0 * np.pi))
    assert np.max(np.abs(_mills_ratio_short(far) / asymptotic - 1.0)) <= 1.7e-6
