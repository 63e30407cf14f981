"""Liquidation plans (SPEC 6): exact relief, the greedy rule, partial closes, bounds.

Every plan here is checked the hard way: its steps are applied to the input
book (positions closed at the mark, proceeds to cash) and the book is margined
again from scratch with ``compute``; the requirement and NLV a plan reports
after each step must be what that recomputation gives.
"""

from __future__ import annotations

import functools
import itertools
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from gpu_margin._backend import gpu_status, select_backend
from gpu_margin._compute import compute
from gpu_margin._liquidation import MAX_STEPS, PLAN_COLUMNS
from gpu_margin._methodology import parse_methodology

ASOF = "2024-03-15"
RATE = 0.05
MARKET = pd.DataFrame({
    "underlying": ["AAA", "BBB", "CCC", "SPX", "SPY", "NDX", "RUT"],
    "spot": [100.0, 50.0, 20.0, 5100.0, 510.0, 18000.0, 2000.0],
    "vol": [0.30, 0.45, 0.60, 0.14, 0.14, 0.20, 0.22],
    "dividend_yield": [0.0, 0.01, 0.0, 0.013, 0.013, 0.008, 0.012],
    "product_group": ["equity", "equity", "equity", "broad_index_high_cap", "equity", "broad_index", "narrow_index"],
    "option_style": ["A", "A", "A", "E", "A", "E", "E"],
    "tracks": [None, None, None, None, "SPX", None, None],
})  # fmt: skip
EXPIRIES = ["2024-04-19", "2024-05-17", "2024-06-21", "2025-01-17"]
ARCHETYPES = ["long_stock", "short_stock", "naked_call", "naked_put", "covered_call", "protective_put",
              "credit_spread", "short_straddle", "index_vs_etf", "futures", "mixed"]
REL = 1e-9  # recomputed from scratch vs the plan: equal to float rounding


# ---- books -----------------------------------------------------------------------------------

def positions(rows):
    """SPEC 3 positions from ``(account, underlying, kind, right, strike, expiry, quantity)`` rows."""
    pos = pd.DataFrame(rows, columns=["account_id", "underlying", "kind", "right", "strike", "expiry", "quantity"])
    pos["expiry"] = pd.to_datetime(pos["expiry"])
    pos["quantity"] = pos["quantity"].astype(float)
    pos["strike"] = pos["strike"].astype(float)
    pos["multiplier"] = np.where(pos["kind"] == "future", 50.0, np.nan)
    pos["position_id"] = [f"{a}-{j:03d}" for j, a in enumerate(pos["account_id"])]
    return pos


def _strike(spot, otm):
    step = 5.0 if spot < 200 else (25.0 if spot < 3000 else 50.0)
    return max(step, round(spot * (1 + otm) / step) * step)


def archetype_rows(rng, acc, kind):
    """Positions of one account of the named archetype (random underlying, size, strikes)."""
    spot = MARKET.set_index("underlying")["spot"]
    rows = []

    def opt(und, right, otm, qty, exp=None):
        rows.append((acc, und, "option", right, _strike(spot[und], otm), exp or rng.choice(EXPIRIES), qty))

    def stk(und, qty):
        rows.append((acc, und, "stock", None, np.nan, None, qty))

    u = str(rng.choice(["AAA", "BBB", "CCC"]))
    n = int(rng.integers(1, 6))
    e = str(rng.choice(EXPIRIES))
    if kind == "long_stock":
        stk(u, 100 * n)
    elif kind == "short_stock":
        stk(u, -100 * n)
    elif kind == "naked_call":
        opt(u, "C", rng.uniform(-0.05, 0.15), -n)
    elif kind == "naked_put":
        opt(u, "P", -rng.uniform(-0.05, 0.15), -n)
    elif kind == "covered_call":
        stk(u, 100 * n)
        opt(u, "C", rng.uniform(0.0, 0.1), -n)
    elif kind == "protective_put":
        stk(u, 100 * n)
        opt(u, "P", -rng.uniform(0.0, 0.1), n)
    elif kind == "credit_spread":
        opt(u, "P", -0.05, -n, e)
        opt(u, "P", -0.12, n, e)
    elif kind == "short_straddle":
        opt(u, "C", 0.0, -n, e)
        opt(u, "P", 0.0, -n, e)
    elif kind == "index_vs_etf":
        stk("SPY", 1000 * n)
        opt("SPX", "C", rng.uniform(0.0, 0.05), -n)
        opt("NDX", "P", -0.05, -1)
    elif kind == "futures":
        rows.append((acc, "SPX", "future", None, np.nan, "2024-06-21", float(rng.choice([-1, 1]) * n)))
        opt("RUT", "P", -0.05, -n)
    else:  # several strategies on several underlyings
        for k in rng.choice(ARCHETYPES[:8], size=3, replace=False):
            rows += archetype_rows(rng, acc, str(k))
    return rows


def run(pos, acc, meth="finra", **kw):
    return compute(pos, MARKET, acc, asof=ASOF, rate=RATE, methodology=meth, device=kw.pop("device", "cpu"), **kw)


def deficit_book(seed, account_type, meth="finra", n_accounts=len(ARCHETYPES), **kw):
    """Archetype accounts with cash set so that NLV = u × requirement, u in (-0.3, 0.95) (-0.2 for the first)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_accounts):
        rows += archetype_rows(rng, f"A{i:03d}", ARCHETYPES[i % len(ARCHETYPES)])
    pos = positions(rows)
    ids = sorted(pos["account_id"].unique())
    acc = pd.DataFrame({"account_id": ids, "cash": 0.0, "account_type": account_type})
    r = run(pos, acc, meth, **kw)["accounts"].set_index("account_id").loc[ids]
    u = rng.uniform(-0.3, 0.95, len(ids))
    u[0] = -0.2  # a long-stock account with negative NLV: no liquidation cures it
    acc["cash"] = u * r["requirement"].to_numpy() - r["nlv"].to_numpy()
    return pos, acc


def apply_plan(pos, acc, valued, plan, upto=None):
    """The book after the plan's steps ``<= upto`` (all by default): closed at the mark, proceeds in cash."""
    steps = plan[plan["step"] > 0]
    if upto is not None:
        steps = steps[steps["step"] <= upto]
    close = steps.groupby("position_id")["close_quantity"].sum()
    val = valued.set_index("position_id")
    unit = (val["value"] * val["multiplier"]).where(val["kind"] != "future", 0.0).reindex(close.index)
    proceeds = (-close * unit).groupby(val["account_id"].reindex(close.index)).sum()
    p = pos.copy()
    p["quantity"] = p["quantity"] + p["position_id"].map(close).fillna(0.0)
    p = p[p["quantity"] != 0.0]
    a = acc.copy()
    a["cash"] = a["cash"] + a["account_id"].map(proceeds).fillna(0.0)
    return p, a


def check_plan_exact(pos, acc, meth="finra", **kw):
    """Recompute after every step; returns the plan. Asserts the reported numbers and every cure."""
    res = run(pos, acc, meth, **kw)
    plan = res["liquidation"]
    assert list(plan.columns) == PLAN_COLUMNS
    deficit = res["margin_calls"].query("reason != 'min_equity'")
    assert set(plan["account_id"]) >= set(deficit["account_id"])
    for s in range(1, int(plan["step"].max()) + 1 if len(plan) else 1):
        p2, a2 = apply_plan(pos, acc, res["positions"], plan, upto=s)
        again = run(p2, a2, meth, **kw)["accounts"].set_index("account_id")
        rows = plan[plan["step"] == s].set_index("account_id")
        req = again["requirement"].reindex(rows.index)
        nlv = again["nlv"].reindex(rows.index)
        scale = np.maximum(np.abs(rows["requirement_after"]), 1.0)
        np.testing.assert_array_less(np.abs(rows["requirement_after"] - req) / scale, REL)
        np.testing.assert_allclose(rows["nlv_after"], nlv, rtol=1e-12, atol=1e-6)  # closing at the mark
        np.testing.assert_allclose(rows["deficit_after"], np.maximum(req - nlv, 0.0), rtol=1e-9, atol=1e-6)
        cured = rows["cured"].to_numpy(bool)
        assert np.all(nlv[cured] >= req[cured] - 1e-9 * scale[cured]), "a plan that says cured must cure"
        assert np.all(rows["cured"] == (rows["requirement_after"] <= rows["nlv_after"]))
    return res


def last_rows(plan):
    return plan.sort_values(["account_id", "step"]).groupby("account_id").tail(1).set_index("account_id")


# ---- hand-checkable ---------------------------------------------------------------------------

def test_regt_long_stock_on_margin_sells_the_fewest_shares():
    # 200 SPY at 510 (MV 102,000), maintenance 25% = 25,500; NLV 22,000. Selling k shares leaves
    # 0.25 × 510 × (200 − k) ≤ 22,000  ⇔  k ≥ 27.45: sell 28, requirement 21,930.
    pos = positions([("L", "SPY", "stock", None, np.nan, None, 200)])
    acc = pd.DataFrame({"account_id": ["L"], "cash": [-80000.0], "account_type": ["regt"]})
    res = check_plan_exact(pos, acc)
    call = res["margin_calls"].iloc[0]
    assert (call["reason"], call["requirement"], call["nlv"], call["deficit"]) == ("regt_deficit", 25500.0, 22000.0,
                                                                                   3500.0)
    plan = res["liquidation"]
    assert len(plan) == 1
    row = plan.iloc[0]
    assert row["step"] == 1 and row["close_quantity"] == -28.0
    assert row["requirement_after"] == pytest.approx(21930.0, rel=1e-12)
    assert row["cured"] and row["deficit_after"] == 0.0


def test_pm_short_stock_buys_back_the_fewest_shares():
    # short 100 AAA at 100: grid risk 15% × 10,000 = 1,500; NLV 610 → 15 × (100 − k) ≤ 610 ⇔ k ≥ 59.33
    pos = positions([("S", "AAA", "stock", None, np.nan, None, -100)])
    acc = pd.DataFrame({"account_id": ["S"], "cash": [10610.0], "account_type": ["portfolio"]})
    res = check_plan_exact(pos, acc)
    assert res["accounts"]["requirement"].iloc[0] == pytest.approx(1500.0, rel=1e-12)
    row = res["liquidation"].iloc[0]
    assert row["close_quantity"] == 60.0  # positive: buys back
    assert row["requirement_after"] == pytest.approx(600.0, rel=1e-12)
    assert row["cured"]


def test_pm_naked_short_calls_close_whole_contracts():
    # the requirement of -3 calls is 3 × the one-contract loss r1 (linear); NLV 1.5 r1 → keep 1, buy back 2
    t_exp = "2024-04-19"
    one = positions([("N", "AAA", "option", "C", 105.0, t_exp, -1)])
    r1 = run(one, None)["accounts"]["requirement"].iloc[0]
    pos = positions([("N", "AAA", "option", "C", 105.0, t_exp, -3)])
    mv = run(pos, None)["accounts"]["nlv"].iloc[0]
    acc = pd.DataFrame({"account_id": ["N"], "cash": [1.5 * r1 - mv], "account_type": ["portfolio"]})
    res = check_plan_exact(pos, acc)
    assert res["accounts"]["requirement"].iloc[0] == pytest.approx(3 * r1, rel=1e-12)
    row = res["liquidation"].iloc[0]
    assert (row["step"], row["close_quantity"], bool(row["cured"])) == (1, 2.0, True)
    assert row["requirement_after"] == pytest.approx(r1, rel=1e-12)


def test_regt_greedy_closes_the_most_relief_per_dollar_first():
    # relief per dollar traded: long option 100% of MV, short stock 30%, long stock 25% (three
    # underlyings, nothing pairs). The deficit needs the option and the short stock and part of the long.
    pos = positions([
        ("G", "AAA", "stock", None, np.nan, None, 100),       # MV 10,000: requirement 2,500
        ("G", "BBB", "stock", None, np.nan, None, -100),      # MV  5,000: requirement 1,500
        ("G", "CCC", "option", "C", 20.0, "2024-04-19", 2),   # MV  2 × 100 × v: requirement = MV
    ])  # fmt: skip
    a0 = pd.DataFrame({"account_id": ["G"], "cash": [0.0], "account_type": ["regt"]})
    r0 = run(pos, a0)
    opt_mv = r0["positions"].set_index("position_id").loc["G-002", "market_value"]
    assert opt_mv > 0.0
    assert r0["accounts"]["requirement"].iloc[0] == pytest.approx(4000.0 + opt_mv, rel=1e-12)
    # NLV 1,500 (+1 cent): closing the option and the short leaves 2,500; then 40 AAA shares (25 × 40)
    acc = a0.assign(cash=1500.01 - r0["accounts"]["nlv"].iloc[0])
    res = check_plan_exact(pos, acc)
    plan = res["liquidation"]
    assert plan["position_id"].tolist() == ["G-002", "G-001", "G-000"]
    assert plan["close_quantity"].tolist() == [-2.0, 100.0, -40.0]  # 25 × 40 = 1,000 exactly
    assert plan["cured"].tolist() == [False, False, True]
    np.testing.assert_allclose(plan["requirement_after"], [4000.0, 2500.0, 1500.0], rtol=1e-12)


def test_short_straddle_on_the_grid_closes_both_legs():
    # neither leg alone lowers the grid requirement (each hedges the other's side): the class closes as
    # a whole, leg by leg; the requirement rises after the first leg and is 0 after the second
    pos = positions([("X", "AAA", "option", "C", 100.0, "2024-04-19", -3),
                     ("X", "AAA", "option", "P", 100.0, "2024-04-19", -3)])
    r = run(pos, None)["accounts"].iloc[0]
    acc = pd.DataFrame({"account_id": ["X"], "cash": [100.0 - r["nlv"]], "account_type": ["portfolio"]})
    res = check_plan_exact(pos, acc)
    plan = res["liquidation"]
    assert len(plan) == 2 and plan["close_quantity"].tolist() == [3.0, 3.0]
    assert plan["requirement_after"].iloc[0] > r["requirement"]
    assert plan["requirement_after"].iloc[1] == 0.0 and plan["cured"].tolist() == [False, True]


def test_accounts_no_liquidation_can_cure():
    # negative NLV on the grid (requirement >= 0) and a call on negative cash alone
    pos = positions([("P", "AAA", "stock", None, np.nan, None, 100), ("P", "BBB", "stock", None, np.nan, None, 50)])
    acc = pd.DataFrame({"account_id": ["P", "Z"], "cash": [-20000.0, -5.0], "account_type": ["portfolio", "regt"]})
    res = check_plan_exact(pos, acc)
    last = last_rows(res["liquidation"])
    assert not last.loc["P", "cured"] and last.loc["P", "requirement_after"] == 0.0  # closed out, still short
    assert last.loc["P", "deficit_after"] == pytest.approx(20000.0 - 10000.0 - 2500.0)
    z = res["liquidation"].set_index("account_id").loc["Z"]
    assert (z["step"], z["position_id"], z["close_quantity"], bool(z["cured"])) == (0, None, 0.0, False)
    assert z["deficit_after"] == 5.0


def test_min_equity_call_has_a_no_action_row():
    pos = positions([("M", "AAA", "stock", None, np.nan, None, 10)])
    acc = pd.DataFrame({"account_id": ["M"], "cash": [5000.0], "account_type": ["portfolio"]})
    res = run(pos, acc)
    call = res["margin_calls"].iloc[0]
    assert call["reason"] == "min_equity" and call["deficit"] == pytest.approx(100000.0 - 6000.0)
    row = res["liquidation"].iloc[0]
    assert (row["step"], row["position_id"], bool(row["cured"])) == (0, None, False)
    assert row["requirement_after"] == 100000.0 and row["deficit_after"] == call["deficit"]


def test_plans_are_bounded():
    # 60 long stocks and negative NLV: never cured; the plan stops at MAX_STEPS rows
    rows = [("B", und, "stock", None, np.nan, None, 10 + i) for i, und in
            enumerate(["AAA", "BBB", "CCC", "SPY", "SPX", "NDX", "RUT"] * 9)][:60]
    pos = positions(rows)
    pos["position_id"] = [f"B-{i:03d}" for i in range(len(pos))]
    acc = pd.DataFrame({"account_id": ["B"], "cash": [-1e8], "account_type": ["portfolio"]})
    plan = run(pos, acc)["liquidation"]
    assert len(plan) == MAX_STEPS and plan["step"].tolist() == list(range(1, MAX_STEPS + 1))
    assert not plan["cured"].any()
    assert plan["position_id"].is_unique


# ---- random books of every archetype: apply the plan, recompute from scratch -----------------

@pytest.mark.parametrize("account_type, meth, seed", [
    ("portfolio", "finra", 1), ("portfolio", "house", 2), ("portfolio", "span16", 3),
    ("regt", "finra", 4), ("regt", "finra", 5),
])  # fmt: skip
def test_random_deficit_books_recompute_to_the_plan(account_type, meth, seed):
    pos, acc = deficit_book(seed, account_type, meth)
    res = check_plan_exact(pos, acc, meth)
    calls = res["margin_calls"]
    assert len(calls) >= len(ARCHETYPES) - 2  # nearly every account is short by construction
    last = last_rows(res["liquidation"])
    assert last["cured"].sum() >= 3 and (~last["cured"]).sum() >= 1  # both outcomes are exercised
    assert res["liquidation"]["step"].max() >= 2


def test_joint_scenarios_plans_recompute_to_the_plan():
    meth = parse_methodology('kind = "scenarios"', name="joint")
    scen = pd.DataFrame({
        "scenario_id": ["crash", "crash", "rally", "vol"], "underlying": ["*", "group:broad_index_high_cap", "*", "*"],
        "price_shock": [-0.12, -0.08, 0.10, 0.0], "vol_shock": [0.3, 0.2, -0.1, 0.5], "weight": [1.0, 1.0, 0.8, 1.0],
        "label": ["c", "c", "r", "v"],
    })  # fmt: skip
    kw = dict(scenarios=scen, multipliers=(1.0, 2.0))
    pos, acc = deficit_book(6, "portfolio", meth, **kw)
    res = check_plan_exact(pos, acc, meth, **kw)
    assert last_rows(res["liquidation"])["cured"].sum() >= 3


# ---- the greedy rule against brute force ---------------------------------------------------------

def _variants(state):
    """One pseudo-account per (account, held position): the account without that position."""
    rows, cash = [], []
    for a, p in state.groupby("account_id"):
        for pid in p["position_id"]:
            name = f"{a}|{pid}"
            rest = p[p["position_id"] != pid]
            rows.append(rest.assign(account_id=name, position_id=name + rest["position_id"]))
            cash.append((name, pid, a))
    return pd.concat(rows, ignore_index=True), pd.DataFrame(cash, columns=["account_id", "removed", "parent"])


@pytest.mark.parametrize("account_type", ["portfolio", "regt"])
def test_each_greedy_step_is_the_brute_force_best(account_type):
    """Before every single-position step, margin the account without each held position from scratch:
    the plan's position has the most relief per dollar of market value traded."""
    pos, acc = deficit_book(11, account_type, n_accounts=len(ARCHETYPES))
    res = run(pos, acc)
    plan = res["liquidation"]
    valued = res["positions"].set_index("position_id")
    checked = 0
    composite = set()  # accounts that took a composite close: later steps may be its forced legs
    for s in range(1, int(plan["step"].max()) + 1):
        p_before, a_before = apply_plan(pos, acc, res["positions"], plan, upto=s - 1)
        rows = plan[(plan["step"] == s)].set_index("account_id")
        state = p_before[p_before["account_id"].isin(rows.index)]
        var, meta = _variants(state)
        meta = meta.merge(a_before[["account_id", "cash", "account_type"]].rename(columns={"account_id": "parent"}))
        removed_mv = meta["removed"].map(valued["value"] * valued["multiplier"]) * \
            meta["removed"].map(state.set_index("position_id")["quantity"])
        removed_mv = removed_mv.where(meta["removed"].map(valued["kind"]) != "future", 0.0)
        vacc = meta.assign(cash=meta["cash"] + removed_mv)[["account_id", "cash", "account_type"]]
        vres = run(var, vacc)["accounts"].set_index("account_id")
        base = run(state, a_before[a_before["account_id"].isin(rows.index)])["accounts"].set_index("account_id")
        after = vres["requirement"].reindex(meta["account_id"]).to_numpy()
        meta["relief"] = meta["parent"].map(base["requirement"]).to_numpy() - after
        meta["score"] = meta["relief"] / np.maximum(np.abs(removed_mv), 1.0)
        for a, m in meta.groupby("parent"):
            if a in composite or m["relief"].max() <= 1e-6:  # no single close helps: a composite close
                composite.add(a)
                continue
            best = m["score"].max()
            chosen = m.set_index("removed").loc[rows.loc[a, "position_id"], "score"]
            assert chosen >= best - 1e-9 * max(1.0, abs(best)), (a, s)
            checked += 1
    assert checked >= 10


# one stock or naked option per product group (four groups): every position's relief is independent
# of the others and linear in its quantity, so relief per dollar is the optimal order (the fractional
# knapsack) and the greedy must match the brute-force best order over all permutations
INDEPENDENT = {
    "portfolio": [("K", "AAA", "stock", None, np.nan, None, 300),        # equity ±15%
                  ("K", "NDX", "stock", None, np.nan, None, 2),          # broad index ±10%
                  ("K", "SPX", "stock", None, np.nan, None, -9),         # high cap: short loses at +6%
                  ("K", "RUT", "option", "P", 1900.0, "2024-05-17", -2)],  # narrow index naked put
    "regt": [("K", "AAA", "stock", None, np.nan, None, 300),             # 25%
             ("K", "BBB", "stock", None, np.nan, None, -200),            # 30%
             ("K", "CCC", "option", "C", 20.0, "2025-01-17", 10),        # long option beyond 9 months: 75%
             ("K", "RUT", "option", "P", 1900.0, "2024-05-17", -2)],     # naked put
}


@functools.lru_cache(maxsize=None)
def _independent(account_type):
    """The INDEPENDENT account margined from scratch without every subset of its positions."""
    pos = positions(INDEPENDENT[account_type])
    a0 = pd.DataFrame({"account_id": ["K"], "cash": [0.0], "account_type": [account_type]})
    r0 = run(pos, a0)
    req0 = r0["accounts"]["requirement"].iloc[0]
    ids = list(pos["position_id"])
    relief = {}
    for k in range(1, len(ids) + 1):
        for sub in itertools.combinations(ids, k):
            rest = pos[~pos["position_id"].isin(sub)]
            relief[sub] = req0 - (run(rest, a0)["accounts"]["requirement"].iloc[0] if len(rest) else 0.0)
    return pos, a0, r0, relief


@pytest.mark.parametrize("account_type", ["portfolio", "regt"])
@pytest.mark.parametrize("share", [0.2, 0.5, 0.85])
def test_greedy_matches_brute_force_where_greedy_is_optimal(account_type, share):
    pos, a0, r0, relief = _independent(account_type)
    req0 = r0["accounts"]["requirement"].iloc[0]
    valued = r0["positions"].set_index("position_id")
    ids = list(pos["position_id"])
    # relief of closing a subset is the sum of its positions' reliefs: the premise of the optimum
    for sub, r in relief.items():
        assert r == pytest.approx(sum(relief[(i,)] for i in sub), rel=1e-9, abs=1e-6)
    mv = {i: abs(valued.loc[i, "market_value"]) for i in ids}
    qty = {i: abs(valued.loc[i, "quantity"]) for i in ids}
    deficit = share * req0
    # brute force: every order; close in that order until cured, the last one partially (continuous)
    def traded(order):
        got, cost, seq = 0.0, 0.0, []
        for i in order:
            need = deficit - got
            if relief[(i,)] >= need:
                return cost + mv[i] * need / relief[(i,)], seq + [i]
            got, cost, seq = got + relief[(i,)], cost + mv[i], seq + [i]
        return np.inf, seq
    best_cost, best_seq = min(traded(o) for o in itertools.permutations(ids))
    nlv = req0 - deficit
    acc = a0.assign(cash=nlv - r0["accounts"]["nlv"].iloc[0])
    plan = check_plan_exact(pos, acc)["liquidation"]
    assert plan["position_id"].tolist() == best_seq
    last = plan.iloc[-1]
    assert last["cured"]
    plan_cost = sum(abs(q) * mv[i] / qty[i] for i, q in zip(plan["position_id"], plan["close_quantity"]))
    unit = mv[last["position_id"]] / qty[last["position_id"]]
    assert best_cost - 1e-6 <= plan_cost <= best_cost + unit + 1e-6  # whole units: at most one unit more


# ---- devices ---------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not gpu_status()[0], reason=gpu_status()[1])
@pytest.mark.parametrize("account_type, meth", [("portfolio", "house"), ("regt", "finra")])
def test_cupy_plans_equal_numpy_plans(account_type, meth):
    pos, acc = deficit_book(21, account_type, meth)
    cpu = run(pos, acc, meth)["liquidation"]
    gpu = run(pos, acc, meth, device="gpu")["liquidation"]
    pd.testing.assert_frame_equal(cpu.drop(columns=["requirement_after", "deficit_after"]),
                                  gpu.drop(columns=["requirement_after", "deficit_after"]))
    np.testing.assert_allclose(gpu["requirement_after"], cpu["requirement_after"], rtol=1e-9, atol=1e-6)


def _margin_result(pos, acc, meth):
    """``margin_frames`` output (with the internal ``_book`` / ``_grid``) on NumPy, and the methodology."""
    from gpu_margin._compute import margin_frames
    from gpu_margin._methodology import load_methodology
    from gpu_margin._validate import validate_accounts, validate_market, validate_positions

    backend = select_backend("cpu")
    m = load_methodology(meth)
    market = validate_market(MARKET)
    valid, rejects = validate_positions(pos, market, asof=ASOF, rate=RATE)
    return margin_frames(valid, rejects, market, validate_accounts(acc), m, backend), m, backend


@pytest.mark.parametrize("meth", ["finra", "house"])
def test_grid_engine_on_the_strict_array_api_namespace(meth):
    """The device code of the grid engine uses only the Array API (as CuPy will run it)."""
    xps = pytest.importorskip("array_api_strict")
    from gpu_margin._calls import margin_calls
    from gpu_margin._liquidation import liquidation_plans

    pos, acc = deficit_book(31, "portfolio", meth)
    res, m, cpu = _margin_result(pos, acc, meth)
    calls = margin_calls(res["accounts"], m, ASOF, 1)
    want = liquidation_plans(res, calls, m, cpu)
    strict = SimpleNamespace(
        name="array_api_strict", xp=xps, is_gpu=False,
        asarray=lambda a, dtype=None: xps.asarray(np.asarray(a, dtype=dtype)),
        to_host=lambda a: np.asarray(a._array) if hasattr(a, "_array") else np.asarray(a),
    )  # fmt: skip
    got = liquidation_plans(res, calls, m, strict)  # the stored P/L rows reach the engine as strict arrays
    pd.testing.assert_frame_equal(got.drop(columns=["requirement_after", "deficit_after"]),
                                  want.drop(columns=["requirement_after", "deficit_after"]))
    np.testing.assert_allclose(got["requirement_after"], want["requirement_after"], rtol=1e-12, atol=1e-9)


def test_relief_per_dollar_ties_within_rounding_noise():
    """Ratios equal but for summation noise rank as ties (the position id decides), and the key keeps
    the order of ratios that really differ."""
    from gpu_margin._liquidation import _ratio_key

    r = 0.25
    noisy = np.array([r, np.nextafter(r, 1.0), np.nextafter(r, 0.0), r * (1 + 4e-16), r * (1 - 4e-16)])
    assert np.unique(_ratio_key(noisy)).size == 1
    rng = np.random.default_rng(5)
    x = rng.uniform(1e-6, 1e6, 10_000)
    apart = x * (1 + 1e-7)  # a real difference: the key must keep the order
    assert np.all(_ratio_key(apart) > _ratio_key(x))
    assert np.all(np.abs(_ratio_key(x) / x - 1) <= 2.0**-30)
