"""The grid and joint-scenario methodologies on hand-computable books (SPEC 5.1, 5.2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gpu_margin import MethodologyError, option_price
from gpu_margin._backend import select_backend
from gpu_margin._methodology import load_methodology, parse_methodology
from gpu_margin._pm import grid_margin, prepare_book, scenario_pnl_by_account
from gpu_margin._compute import value_positions
from gpu_margin._scenarios import joint_table

CPU = select_backend("cpu")
MARKET = pd.DataFrame({
    "underlying": ["AAA", "BBB", "SPX"],
    "spot": [100.0, 50.0, 4000.0],
    "vol": [0.30, 0.40, 0.18],
    "dividend_yield": [0.0, 0.0, 0.015],
    "product_group": ["equity", "equity", "broad_index_high_cap"],
})


def book(rows, market=MARKET, rate=0.05):
    """Validated positions from short specs: (account, underlying, kind, qty, right, strike, t, style)."""
    mk = market.set_index("underlying")
    recs = []
    for i, r in enumerate(rows):
        acc, und, kind, qty = r[:4]
        right, strike, t, style = (list(r[4:]) + [None, np.nan, 0.0, "E"])[:4] if kind == "option" else (None, np.nan, r[4] if kind == "future" else 0.0, None)
        recs.append(dict(
            source="t", row=i, account_id=acc, position_id=f"p{i}", underlying=und, kind=kind, right=right,
            is_call=right == "C", strike=float(strike), t=float(t), style=style, american=style == "A",
            multiplier=100.0 if kind == "option" else (50.0 if kind == "future" else 1.0), quantity=float(qty),
            mark=np.nan, iv=np.nan, spot=mk.loc[und, "spot"], dividend_yield=mk.loc[und, "dividend_yield"],
            rate=rate, product_group=mk.loc[und, "product_group"], tracks=None, vol_market=mk.loc[und, "vol"],
            vol=mk.loc[und, "vol"], vol_source="market",
        ))
    return pd.DataFrame(recs)


def run_grid(rows, meth="finra", cash=None, market=MARKET):
    m = meth if not isinstance(meth, str) or meth in ("finra", "house", "span16") else parse_methodology(meth)
    m = load_methodology(m) if isinstance(m, str) else m
    b = prepare_book(book(rows, market), np.sort(market["underlying"].to_numpy(object)))
    value_positions(b, CPU)
    nlv = pd.Series(cash or {}, dtype=float)
    return grid_margin(b, market, m, nlv, CPU), b


def meth_text(**top):
    base = {"equity": (0.15, 0.15, 5, 0.0), "broad_index_high_cap": (0.08, 0.06, 5, 0.9)}
    groups = top.pop("groups", {})
    base.update(groups)
    lines = [f"{k} = {v!r}".replace("(", "[").replace(")", "]") if not isinstance(v, str) else f'{k} = "{v}"'
             for k, v in top.items()]
    for g, (d, u, n, o) in base.items():
        lines += [f"[product_groups.{g}]", f"down = {d}", f"up = {u}", f"points_per_side = {n}", f"offset = {o}"]
    return parse_methodology("\n".join(lines), name="test")


# ---- methodology files ---------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["finra", "house", "span16"])
def test_presets_load(preset):
    m = load_methodology(preset)
    assert {"equity", "broad_index_high_cap", "broad_index"} <= set(m.product_groups)


@pytest.mark.parametrize("text, key", [
    ("min_charge_per_contract = 0.375\nvol_shock = [0.0]\n[product_groups.equity]\ndown=0.15\nup=0.15", "vol_shock"),
    ("[product_groups.equity]\ndown=0.15\nup=0.15\nofset=0.5", "ofset"),
    ("[product_groups.equity]\nup=0.15", "down"),
    ("contingency_rate = 'high'\n[product_groups.equity]\ndown=0.15\nup=0.15", "contingency_rate"),
    ("[product_groups.equity]\ndown=1.5\nup=0.15", "down"),
    ("[product_groups.equity]\ndown=0.15\nup=0.15\noffset=1.2", "offset"),
    ("kind = 'gird'\n[product_groups.equity]\ndown=0.15\nup=0.15", "kind"),
])
def test_bad_methodology_names_the_key(text, key):
    with pytest.raises(MethodologyError) as err:
        parse_methodology(text, name="m.toml")
    msg = str(err.value)
    assert "m.toml" in msg and key in msg and "\n" not in msg


def test_unknown_product_group_is_an_error():
    m = parse_methodology("[product_groups.equity]\ndown=0.15\nup=0.15", name="m.toml")
    with pytest.raises(MethodologyError, match="broad_index_high_cap"):
        run_grid([("A", "SPX", "stock", 1)], m)


# ---- grid rules --------------------------------------------------------------------------

def test_long_stock_loses_the_range():
    res, _ = run_grid([("A", "AAA", "stock", 100)])
    acc = res.accounts.set_index("account_id").loc["A"]
    assert acc["pm_requirement"] == pytest.approx(100 * 100 * 0.15, rel=1e-12)
    assert acc["worst_scenario"].startswith("equity:-1R")


def test_high_cap_index_uses_its_own_asymmetric_range():
    res, _ = run_grid([("A", "SPX", "stock", -10)])
    assert res.accounts["pm_requirement"].iloc[0] == pytest.approx(10 * 4000 * 0.06, rel=1e-12)


@pytest.mark.parametrize("offset, expected", [(0.0, 1500.0), (0.5, 750.0), (1.0, 0.0)])
def test_offsets_between_classes_of_one_group(offset, expected):
    m = meth_text(groups={"equity": (0.15, 0.15, 5, offset)})
    # long 100 AAA (notional 10,000) vs short 200 BBB (notional 10,000): equal and opposite P/L
    res, _ = run_grid([("A", "AAA", "stock", 100), ("A", "BBB", "stock", -200)], m)
    assert res.accounts["pm_requirement"].iloc[0] == pytest.approx(expected, abs=1e-9)
    cls = res.classes.set_index("underlying")
    assert cls.loc["AAA", "class_risk"] == pytest.approx(1500.0)
    assert cls.loc["BBB", "class_risk"] == pytest.approx(1500.0)


def test_minimum_charge_and_its_cap_for_long_options():
    # far out-of-the-money call: long is charged min(0.375 x 100, market value); short the full minimum
    v = float(option_price("C", 100.0, 300.0, 0.1, 0.30, 0.05))
    res, _ = run_grid([("L", "AAA", "option", 2, "C", 300.0, 0.1), ("S", "AAA", "option", -2, "C", 300.0, 0.1)])
    acc = res.accounts.set_index("account_id")
    assert acc.loc["L", "pm_requirement"] == pytest.approx(min(2 * 37.5, 2 * 100 * v), rel=1e-9)
    assert acc.loc["S", "pm_requirement"] == pytest.approx(2 * 37.5, rel=1e-9)


def test_naked_call_grid_matches_hand_computation():
    # the founding example: sell 1 XYZ 100 call, underlying 95; grid +-15%, price only
    mk = pd.DataFrame({"underlying": ["XYZ"], "spot": [95.0], "vol": [0.30], "dividend_yield": [0.0],
                       "product_group": ["equity"]})
    t = 30 / 365
    res, _ = run_grid([("A", "XYZ", "option", -1, "C", 100.0, t)], market=mk)
    v0 = float(option_price("C", 95.0, 100.0, t, 0.30, 0.05))
    moves = np.linspace(-0.15, 0.15, 11)
    losses = [100 * (float(option_price("C", 95.0 * (1 + mv), 100.0, t, 0.30, 0.05)) - v0) for mv in moves]
    assert res.accounts["pm_requirement"].iloc[0] == pytest.approx(max(max(losses), 37.5), rel=1e-9)
    # an implied-volatility shock on top of the price moves (house) adds risk to the short call
    house = run_grid([("A", "XYZ", "option", -1, "C", 100.0, t)], "house", market=mk)[0]
    assert house.accounts["pm_requirement"].iloc[0] > res.accounts["pm_requirement"].iloc[0]


def test_short_put_hedged_by_short_stock_lowers_requirement():
    put = [("A", "AAA", "option", -1, "P", 100.0, 60 / 365)]
    alone = run_grid(put)[0].accounts["pm_requirement"].iloc[0]
    hedged = run_grid(put + [("A", "AAA", "stock", -50)])[0].accounts["pm_requirement"].iloc[0]
    assert hedged < alone


def test_contingency_on_net_short_options():
    m = meth_text(contingency_rate=0.02)
    rows = [("A", "AAA", "option", -3, "C", 120.0, 0.2), ("A", "AAA", "option", 1, "C", 130.0, 0.2)]
    with_c = run_grid(rows, m)[0].classes["contingency"].iloc[0]
    assert with_c == pytest.approx(0.02 * (300 - 100) * 100.0, rel=1e-12)


def test_extreme_moves_count_at_partial_coverage():
    m0 = meth_text()
    m1 = meth_text(extreme_multiple=3.0, extreme_coverage=0.35)
    # far OTM short put: the regular range hardly touches it; a 3x move (-45%) does
    rows = [("A", "AAA", "option", -1, "P", 60.0, 0.25)]
    base = run_grid(rows, m0)[0].classes["class_risk"].iloc[0]
    ext = run_grid(rows, m1)[0].classes
    v0 = float(option_price("P", 100.0, 60.0, 0.25, 0.30, 0.05))
    v_ext = float(option_price("P", 55.0, 60.0, 0.25, 0.30, 0.05))
    assert ext["class_risk"].iloc[0] == pytest.approx(max(base, 0.35 * 100 * (v_ext - v0)), rel=1e-9)
    assert "extreme" in ext["worst_scenario"].iloc[0]


def test_an_extreme_move_past_minus_100_percent_stops_at_the_grid_floor():
    """-7 x 15% would be -105%: no price goes below zero, so the move tested is the grid's floor (-99%),
    for stock (whose P/L is linear: 0.35 x 0.99 x 10,000, not 0.35 x 1.05 x 10,000) and for options (whose
    values below a zero price were NaN, and NaN became a zero requirement)."""
    from gpu_margin._scenarios import MAX_DOWN

    m = meth_text(extreme_multiple=7.0, extreme_coverage=0.35)
    res, _ = run_grid([("A", "AAA", "stock", 100)], m)
    assert res.accounts["pm_requirement"].iloc[0] == pytest.approx(0.35 * MAX_DOWN * 100 * 100.0, rel=1e-12)
    assert res.classes["worst_price_move"].iloc[0] == -MAX_DOWN
    for style in ("E", "A"):
        res, _ = run_grid([("A", "AAA", "option", -1, "P", 90.0, 0.25, style)], m)
        risk = res.classes["class_risk"].iloc[0]
        v0 = float(option_price("P", 100.0, 90.0, 0.25, 0.30, 0.05, 0.0, style))
        v_floor = float(option_price("P", 100.0 * (1 - MAX_DOWN), 90.0, 0.25, 0.30, 0.05, 0.0, style))
        assert risk == pytest.approx(0.35 * 100 * (v_floor - v0), rel=1e-9)
        assert res.accounts["pm_requirement"].iloc[0] == pytest.approx(risk, rel=1e-12)


def test_turbulence_never_takes_the_extreme_move_below_zero():
    """A 200% vol widens the range to 53% (3 sigma, 2 days) and the 2x extreme to -107%: the short put's
    requirement is its loss at the floor, finite, not the NaN-turned-zero it once was."""
    from gpu_margin._scenarios import MAX_DOWN

    market = MARKET.assign(vol=[2.0, 0.40, 0.18])
    m = meth_text(vol_scaled_sigmas=3.0, vol_scaled_horizon_days=2, extreme_multiple=2.0, extreme_coverage=1.0)
    res, _ = run_grid([("A", "AAA", "option", -10, "P", 100.0, 0.25)], m, market=market)
    v0 = float(option_price("P", 100.0, 100.0, 0.25, 2.0, 0.05))
    v_floor = float(option_price("P", 100.0 * (1 - MAX_DOWN), 100.0, 0.25, 2.0, 0.05))
    assert res.classes["class_risk"].iloc[0] == pytest.approx(1000 * (v_floor - v0), rel=1e-9)
    assert np.isfinite(res.accounts[["pm_requirement", "pm_scenario_risk"]].to_numpy()).all()


def test_a_loss_that_is_not_a_number_stops_the_run_naming_account_and_underlying(monkeypatch):
    """Never a zero requirement from NaN: a non-finite class loss is a one-line error."""
    from gpu_margin import _pm
    from gpu_margin._exceptions import UserInputError

    original = _pm.price_grid
    monkeypatch.setattr(_pm, "price_grid", lambda *args, **kwargs: original(*args, **kwargs) * np.nan)
    with pytest.raises(UserInputError, match=r"^account A, underlying AAA: the largest loss .* not a finite") as e:
        run_grid([("A", "AAA", "option", -1, "P", 90.0, 0.25)], "finra")
    assert "\n" not in str(e.value)


def test_vol_shock_mode_overridden_for_one_product_group():
    """SPEC 9: any top-level key may be overridden per group, vol_shock_mode too. Equity shocks absolute
    (sigma + 0.1), index shocks relative (sigma x 1.1) in one run: each class is what a run with its mode
    everywhere gives, bit for bit, and the equity class differs from the all-relative run."""
    def text(top_mode, equity_mode=None):
        return parse_methodology(
            f'vol_shocks = [-0.1, 0.0, 0.1]\nvol_shock_mode = "{top_mode}"\n'
            "[product_groups.equity]\ndown = 0.15\nup = 0.15\npoints_per_side = 2\noffset = 0.0\n"
            + (f'vol_shock_mode = "{equity_mode}"\n' if equity_mode else "")
            + "[product_groups.broad_index_high_cap]\ndown = 0.08\nup = 0.06\npoints_per_side = 2\noffset = 0.0\n",
            name="test")

    rows = [("A", "AAA", "option", -1, "C", 100.0, 0.25), ("A", "SPX", "option", -1, "C", 4000.0, 0.25, "A")]
    mixed = run_grid(rows, text("relative", "absolute"))[0].classes.set_index("underlying")["class_risk"]
    rel = run_grid(rows, text("relative"))[0].classes.set_index("underlying")["class_risk"]
    ab = run_grid(rows, text("absolute"))[0].classes.set_index("underlying")["class_risk"]
    assert mixed["AAA"] == ab["AAA"] and mixed["SPX"] == rel["SPX"]
    assert mixed["AAA"] != rel["AAA"]
    # hand check: the AAA call's worst is price +15%, vol 0.30 + 0.10 (absolute)
    v0 = float(option_price("C", 100.0, 100.0, 0.25, 0.30, 0.05))
    assert mixed["AAA"] == pytest.approx(100 * (float(option_price("C", 115.0, 100.0, 0.25, 0.40, 0.05)) - v0),
                                         rel=1e-9)


def test_concentration_add_on():
    m = meth_text(concentration_threshold=0.1, concentration_down=0.30, concentration_up=0.30)
    res, _ = run_grid([("A", "AAA", "stock", 100)], m, cash={"A": 0.0})
    # own risk 1,500 > 10% of NLV 10,000 -> add-on = 30% re-stress (3,000) - 1,500
    assert res.classes["concentration"].iloc[0] == pytest.approx(1500.0, rel=1e-12)
    res2, _ = run_grid([("A", "AAA", "stock", 100)], m, cash={"A": 1e6})
    assert res2.classes["concentration"].iloc[0] == 0.0


def test_turbulence_widens_the_range():
    m = meth_text(vol_scaled_sigmas=5.0, vol_scaled_horizon_days=20)
    res, _ = run_grid([("A", "AAA", "stock", 100)], m)
    widened = 5.0 * 0.30 * np.sqrt(20 / 252)
    assert res.accounts["pm_requirement"].iloc[0] == pytest.approx(100 * 100 * widened, rel=1e-12)


def _random_rows(rng, n_acc=6, n=40):
    unds = ["AAA", "BBB", "SPX"]
    rows = []
    for _ in range(n):
        acc = f"A{rng.integers(n_acc)}"
        u = unds[rng.integers(3)]
        spot = MARKET.set_index("underlying").loc[u, "spot"]
        if rng.random() < 0.25:
            rows.append((acc, u, "stock", float(rng.integers(-300, 300) or 1)))
        else:
            rows.append((acc, u, "option", float(rng.integers(-5, 6) or 1), "C" if rng.random() < 0.5 else "P",
                         float(np.round(spot * rng.uniform(0.8, 1.2))), float(rng.integers(5, 400)) / 365,
                         "A" if (u != "SPX" and rng.random() < 0.5) else "E"))
    return rows


def _reference_requirement(rows, meth):
    """Plain loops over positions with the public pricer: class P/L, offsets, minimums."""
    mk = MARKET.set_index("underlying")
    out = {}
    for acc in sorted({r[0] for r in rows}):
        groups = {}
        mins = {}
        for r in rows:
            if r[0] != acc:
                continue
            u = r[1]
            g = mk.loc[u, "product_group"]
            p = meth.group(g)
            n = p.points_per_side
            frac = np.arange(-n, n + 1) / n
            moves = np.where(frac < 0, frac * p.down, frac * p.up)
            s = mk.loc[u, "spot"]
            q = mk.loc[u, "dividend_yield"]
            vol = mk.loc[u, "vol"]
            if r[2] == "stock":
                pnl = r[3] * s * moves
                mn = 0.0
            else:
                _, _, _, qty, right, k, t, style = r
                v0 = float(option_price(right, s, k, t, vol, 0.05, q, style))
                pnl = np.array([100 * qty * (float(option_price(right, s * (1 + mv), k, t, vol, 0.05, q, style)) - v0)
                                for mv in moves])
                mn = p.min_charge_per_contract * 100 * abs(qty)
                if qty > 0:
                    mn = min(mn, 100 * qty * v0)
            groups.setdefault(g, {}).setdefault(u, np.zeros_like(pnl))
            groups[g][u] = groups[g][u] + pnl
            mins[g] = mins.get(g, 0.0) + mn
        total = 0.0
        for g, classes in groups.items():
            off = meth.group(g).offset
            comb = sum(np.minimum(c, 0) + off * np.maximum(c, 0) for c in classes.values())
            total += max(max(0.0, float(np.max(-comb))), mins[g])
        out[acc] = total
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_vectorised_grid_matches_plain_loop_reference(seed):
    rng = np.random.default_rng(seed)
    rows = _random_rows(rng)
    meth = load_methodology("finra")
    res, _ = run_grid(rows, meth)
    ref = _reference_requirement(rows, meth)
    got = res.accounts.set_index("account_id")["pm_requirement"]
    for acc, val in ref.items():
        assert got[acc] == pytest.approx(val, rel=1e-9, abs=1e-9)


def test_scaling_and_permutation_invariance():
    rng = np.random.default_rng(5)
    rows = [r for r in _random_rows(rng) if r[2] == "stock" or r[3] < 0]
    meth = load_methodology("house")
    a = run_grid(rows, meth)[0].accounts.set_index("account_id")
    perm = [rows[i] for i in rng.permutation(len(rows))]
    b = run_grid(perm, meth)[0].accounts.set_index("account_id")
    pd.testing.assert_series_equal(a["pm_requirement"], b["pm_requirement"].reindex(a.index), rtol=1e-12)
    k3 = [(*r[:3], 3 * r[3], *r[4:]) for r in rows]
    c = run_grid(k3, meth)[0].accounts.set_index("account_id")
    np.testing.assert_allclose(c["pm_scenario_risk"], 3 * a["pm_scenario_risk"], rtol=1e-9)


def test_perfect_hedge_never_raises_requirement():
    rng = np.random.default_rng(11)
    rows = _random_rows(rng, n_acc=1, n=12)
    meth = load_methodology("finra")
    base = run_grid(rows, meth)[0].accounts["pm_requirement"].iloc[0]
    hedge = [(*r[:3], -r[3], *r[4:]) for r in rows if r[2] == "stock"]
    hedged = run_grid(rows + hedge, meth)[0].accounts["pm_requirement"].iloc[0]
    assert hedged <= base + 1e-9


def test_requirement_at_least_minimums():
    rng = np.random.default_rng(12)
    rows = _random_rows(rng)
    res, _ = run_grid(rows, load_methodology("span16"))
    g = res.classes.groupby("account_id")["minimum"].sum()
    req = res.accounts.set_index("account_id")["pm_requirement"]
    assert np.all(req.reindex(g.index) >= g - 1e-9)


# ---- joint scenarios ---------------------------------------------------------------------

def test_two_stock_joint_scenario_matches_per_position_calculation():
    mk = pd.DataFrame({"underlying": ["A", "B"], "spot": [150.0, 48.0], "vol": [0.25, 0.35],
                       "dividend_yield": [0.0, 0.0], "product_group": ["equity", "equity"]})
    rows = [("X", "A", "stock", 100), ("X", "B", "option", -1, "C", 50.0, 45 / 365)]
    scen = pd.DataFrame({"scenario_id": ["s1", "s1", "s2"], "underlying": ["A", "B", "*"],
                         "price_shock": [-0.10, 0.20, -0.05], "vol_shock": [0.0, 0.30, 0.0], "weight": 1.0,
                         "label": ["crash", "crash", "dip"]})
    table, index = joint_table(scen, mk, (1.0, 2.0))
    b = prepare_book(book(rows, mk), np.sort(mk["underlying"].to_numpy(object)))
    pnl = scenario_pnl_by_account(b, table, CPU)
    v0 = float(option_price("C", 48.0, 50.0, 45 / 365, 0.35, 0.05))
    for j, (sid, mult) in enumerate(zip(index["scenario_id"], index["multiplier"])):
        if sid == "s1":
            a, bb, vs = -0.10 * mult, 0.20 * mult, 0.30 * mult
        else:
            a = bb = -0.05 * mult
            vs = 0.0
        exp = 100 * 150.0 * a - 100 * (float(option_price("C", 48.0 * (1 + bb), 50.0, 45 / 365, 0.35 * (1 + vs), 0.05)) - v0)
        assert pnl[0, j] == pytest.approx(exp, rel=1e-10)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("preset", ["finra", "house"])
def test_fused_class_pnl_is_the_segment_sum_of_position_pnl(seed, preset):
    """The fused class P/L (never building the positions' P/L) gives the same bits as building it and
    summing by class; and the P/L rows liquidation asks for are rows of the whole book's P/L."""
    from gpu_margin._pm import class_pnl, option_values, position_pnl
    from gpu_margin._scenarios import grid_table
    from gpu_margin.kernels import segment_sum

    rng = np.random.default_rng(seed)
    meth = load_methodology(preset)
    b = prepare_book(book(_random_rows(rng, n=60), MARKET), np.sort(MARKET["underlying"].to_numpy(object)))
    tables = [grid_table(MARKET, meth)] + ([grid_table(MARKET, meth, wide=True)] if preset == "house" else [])
    n_cls = int(b.pos["_cls"].max()) + 1
    for table in tables:
        v0, v = option_values(b, table, CPU)
        pnl = position_pnl(b, table, v0, v, CPU)
        want = segment_sum(pnl, b.pos["_cls"].to_numpy(np.int64), n_cls)
        got = class_pnl(b, table, v0, v, CPU, n_cls)
        np.testing.assert_array_equal(got, want)
        n_acc = len(b.accounts)  # by account, as joint-scenario replays sum
        np.testing.assert_array_equal(class_pnl(b, table, v0, v, CPU, n_acc, by="_acc"),
                                      segment_sum(pnl, b.pos["_acc"].to_numpy(np.int64), n_acc))
        rows = np.sort(rng.choice(len(b.pos), 17, replace=False))
        np.testing.assert_array_equal(position_pnl(b, table, v0, v, CPU, rows), pnl[rows])
    stocks = b.pos["_kind"].to_numpy() == 0  # a book without options: nothing to gather
    sb = prepare_book(b.pos.loc[stocks, b.pos.columns[~b.pos.columns.str.startswith("_")]].reset_index(drop=True),
                      b.und_names)
    v0, v = option_values(sb, tables[0], CPU)
    n_s = int(sb.pos["_cls"].max()) + 1
    np.testing.assert_array_equal(class_pnl(sb, tables[0], v0, v, CPU, n_s),
                                  segment_sum(position_pnl(sb, tables[0], v0, v, CPU),
                                              sb.pos["_cls"].to_numpy(np.int64), n_s))


@pytest.mark.parametrize("seed", [4, 9])
def test_prepare_book_is_the_same_whatever_the_row_order(seed, monkeypatch):
    """Rows in book order skip the sort; rows in (account, position id) order (accounts in any order) are
    ordered on integer keys with no string sort of the rows; any other order sorts the strings. The book
    is the same, and ``_pid_rank`` is each row's place in (account, position id) order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    import gpu_margin._pm as pm
    from gpu_margin._io import is_sorted

    rng = np.random.default_rng(seed)
    und = np.sort(MARKET["underlying"].to_numpy(object))
    rows = book(_random_rows(rng, n=80), MARKET)
    keys = ["account_id", "product_group", "underlying", "position_id"]
    shuffled = rows.iloc[rng.permutation(len(rows))].reset_index(drop=True)
    want = prepare_book(shuffled, und)
    in_order = want.pos[rows.columns]
    assert not is_sorted(pa.Table.from_pandas(shuffled[keys], preserve_index=False), keys)
    assert is_sorted(pa.Table.from_pandas(in_order[keys], preserve_index=False), keys)
    by_id = in_order.sort_values(["account_id", "position_id"]).reset_index(drop=True)
    accounts_reversed = by_id.iloc[np.lexsort((np.arange(len(by_id)), -pd.factorize(by_id["account_id"])[0]))]
    rank = np.lexsort((want.pos["position_id"].to_numpy(object), want.pos["account_id"].to_numpy(object)))
    want_rank = np.empty(len(rank), np.int64)
    want_rank[rank] = np.arange(len(rank))
    assert want.pos["_pid_rank"].tolist() == want_rank.tolist()

    table_sorts = []
    real_sort = pc.sort_indices

    def counting_sort(values, *args, **kwargs):
        if isinstance(values, pa.Table):
            table_sorts.append(values.num_columns)
        return real_sort(values, *args, **kwargs)

    monkeypatch.setattr(pm.pc, "sort_indices", counting_sort)
    for given, string_sorts in ((rows, 2), (in_order, 1), (by_id, 0), (accounts_reversed, 0)):
        table_sorts.clear()
        got = prepare_book(given.reset_index(drop=True), und)
        assert len(table_sorts) == string_sorts
        pd.testing.assert_frame_equal(got.pos, want.pos)
        for name in ("classes", "groups", "contracts"):
            pd.testing.assert_frame_equal(getattr(got, name), getattr(want, name))
        assert got.accounts.tolist() == want.accounts.tolist()
        assert got.account_ids.equals(want.account_ids)


def test_prepare_book_orders_by_the_names_when_the_market_lacks_an_underlying():
    """Books are ordered on the market's codes of the underlying only when every row has one; a row whose
    underlying the names lack (never after validation) is placed by its name, its code -1."""
    import pyarrow as pa

    from gpu_margin._io import is_sorted

    rng = np.random.default_rng(11)
    rows = book(_random_rows(rng, n=80), MARKET)
    rows = rows.sort_values(["account_id", "position_id"]).reset_index(drop=True)  # ordered on integer keys
    # the last of two underlyings of one account and product group: coded -1 it would come first
    mixed = rows.groupby(["account_id", "product_group"])["underlying"].agg(["nunique", "max"])
    dropped = mixed.loc[mixed["nunique"] > 1, "max"].iloc[0]
    und = np.sort(MARKET["underlying"].to_numpy(object))
    got = prepare_book(rows, und[und != dropped])
    keys = ["account_id", "product_group", "underlying", "position_id"]
    assert is_sorted(pa.Table.from_pandas(got.pos[keys], preserve_index=False), keys)
    lacking = (got.pos["underlying"] == dropped).to_numpy()
    assert lacking.any() and (got.pos["_und"].to_numpy()[lacking] == -1).all()
    assert (got.pos["_und"].to_numpy()[~lacking] >= 0).all()
    runs = got.pos[keys[:3]].ne(got.pos[keys[:3]].shift()).any(axis=1).cumsum().to_numpy() - 1
    assert got.pos["_cls"].tolist() == runs.tolist()
    full = prepare_book(rows, und)
    pd.testing.assert_frame_equal(got.pos.drop(columns=["_und", "_con"]), full.pos.drop(columns=["_und", "_con"]))
    # names in descending order: the book is ordered by the names all the same, each code a place among them
    descending = und[::-1]  # every pair of names inverted
    got = prepare_book(rows, descending)
    pd.testing.assert_frame_equal(got.pos.drop(columns=["_und", "_con"]), full.pos.drop(columns=["_und", "_con"]))
    assert (descending[got.pos["_und"].to_numpy()] == got.pos["underlying"].to_numpy(object)).all()


def test_first_max_of_runs_is_the_sorted_choice():
    """An account's worst group (its largest requirement, the first on ties, NaN below any number) found
    with no sort equals the choice of a stable sort of (account, -requirement, index)."""
    from gpu_margin._pm import _first_max_of_runs

    rng = np.random.default_rng(3)
    for trial in range(500):
        n = int(rng.integers(0, 40))
        acc = np.sort(rng.integers(0, 8, n))
        values = rng.choice([0.0, -0.0, 1.0, 2.0, np.nan, -np.inf, np.inf], n) if trial % 2 \
            else rng.normal(size=n).round(1)
        order = np.lexsort((np.arange(n), -values, acc))
        want = order[np.r_[True, acc[order][1:] != acc[order][:-1]]] if n else order
        assert _first_max_of_runs(values, acc).tolist() == want.tolist()
