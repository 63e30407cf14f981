"""Reg T strategy-based requirement (SPEC 5.3): published examples, one hand-computed
case per strategy (initial and maintenance, the numbers of docs/regt.md), and
property tests of the pairing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_margin._exceptions import InputFileError
from gpu_margin._regt import regt_requirements

EXP = "2024-06-21"
EXP_LATE = "2025-03-21"  # more than nine months out in these tests (t = 1.0)


def opt(pid, und, right, strike, qty, spot, value, *, acct="A", t=0.25, expiry=EXP, group="equity", mult=100.0):
    """One option row of the validated-positions contract."""
    return dict(
        account_id=acct, position_id=pid, underlying=und, kind="option", right=right,
        is_call=right == "C", strike=float(strike), expiry=pd.Timestamp(expiry), t=float(t),
        style="A", american=True, multiplier=float(mult), quantity=float(qty), spot=float(spot),
        product_group=group, tracks=None, value=float(value),
    )  # fmt: skip


def stk(pid, und, qty, price, *, acct="A", group="equity", tracks=None):
    """One stock (or ETF) row; its value and spot are its price."""
    return dict(
        account_id=acct, position_id=pid, underlying=und, kind="stock", right=None, is_call=False,
        strike=np.nan, expiry=pd.NaT, t=0.0, style=None, american=False, multiplier=1.0,
        quantity=float(qty), spot=float(price), product_group=group, tracks=tracks, value=float(price),
    )  # fmt: skip


def fut(pid, und, qty, price, *, acct="A"):
    row = stk(pid, und, qty, price, acct=acct, group="broad_index")
    row.update(kind="future", expiry=pd.Timestamp(EXP), t=0.25, multiplier=50.0)
    return row


def frame(*rows):
    df = pd.DataFrame(list(rows))
    return df.astype({"expiry": "datetime64[ns]"})


def run(*rows):
    accounts, legs = regt_requirements(frame(*rows))
    return accounts, legs


def account_req(*rows, acct="A"):
    accounts, _ = run(*rows)
    row = accounts.set_index("account_id").loc[acct]
    return row["regt_initial"], row["regt_maintenance"]


def leg(legs, pid, strategy=None):
    sel = legs[legs["position_id"] == pid]
    if strategy is not None:
        sel = sel[sel["strategy"] == strategy]
    assert len(sel) == 1, sel
    return sel.iloc[0]


# --------------------------------------------------------------------------- #
# published examples (/work/shared/cases/README.md)


def test_published_short_strangle():
    call = opt("c", "XYZ", "C", 47, -1, 45, 2.10)
    put = opt("p", "XYZ", "P", 43, -1, 45, 1.20)
    i, m = account_req(call, put)
    premiums = (2.10 + 1.20) * 100
    assert i == pytest.approx(700.0) and m == pytest.approx(700.0)
    assert i + premiums == pytest.approx(1030.0)  # published, including premium
    _, legs = run(call, put)
    assert set(legs["strategy"]) == {"strangle"}
    assert leg(legs, "c")["paired_with"] == "p" and leg(legs, "p")["paired_with"] == "c"


def test_published_naked_call():
    call = opt("c", "ABC", "C", 55, -5, 52, 4.00)
    i, m = account_req(call)
    assert i == pytest.approx(3700.0) and m == pytest.approx(3700.0)
    assert i + 5 * 4.00 * 100 == pytest.approx(5700.0)  # published, including premium


# --------------------------------------------------------------------------- #
# one hand-computed case per strategy (docs/regt.md)


def test_long_stock():
    assert account_req(stk("s", "XYZ", 100, 50)) == pytest.approx((2500.0, 1250.0))


def test_short_stock():
    assert account_req(stk("s", "XYZ", -100, 50)) == pytest.approx((2500.0, 1500.0))


def test_long_option_within_nine_months():
    assert account_req(opt("l", "XYZ", "C", 50, 2, 50, 3.00)) == pytest.approx((600.0, 600.0))


def test_long_option_beyond_nine_months():
    row = opt("l", "XYZ", "C", 50, 2, 50, 3.00, t=1.0, expiry=EXP_LATE)
    assert account_req(row) == pytest.approx((450.0, 450.0))


def test_naked_put():
    # max(20% x 45 - 2, 10% x 43) x 100 = 700
    assert account_req(opt("p", "XYZ", "P", 43, -1, 45, 1.20)) == pytest.approx((700.0, 700.0))


def test_naked_put_minimum_is_ten_percent_of_strike():
    # max(20 - 30, 7) x 100
    assert account_req(opt("p", "XYZ", "P", 70, -1, 100, 0.50)) == pytest.approx((700.0, 700.0))


def test_naked_call_minimum_is_ten_percent_of_spot():
    # max(20 - 30, 10) x 100
    assert account_req(opt("c", "XYZ", "C", 130, -1, 100, 0.40)) == pytest.approx((1000.0, 1000.0))


def test_naked_call_broad_index_uses_fifteen_percent():
    # max(15% x 4000 - 100, 400) x 100 = 50,000
    row = opt("c", "SPX", "C", 4100, -1, 4000, 50.0, group="broad_index")
    assert account_req(row) == pytest.approx((50000.0, 50000.0))
    row = opt("c", "NDX", "C", 4100, -1, 4000, 50.0, group="narrow_index")
    assert account_req(row) == pytest.approx((70000.0, 70000.0))


def test_covered_call():
    rows = (stk("s", "XYZ", 100, 50), opt("c", "XYZ", "C", 55, -1, 50, 2.00))
    assert account_req(*rows) == pytest.approx((2300.0, 1050.0))
    _, legs = run(*rows)
    c = leg(legs, "c")
    assert (c["strategy"], c["paired_with"], c["regt_initial"]) == ("covered_call", "s", pytest.approx(-200.0))
    s = leg(legs, "s")
    assert (s["strategy"], s["paired_quantity"]) == ("covered_call", 100.0)
    assert (s["regt_initial"], s["regt_maintenance"]) == pytest.approx((2500.0, 1250.0))


def test_covered_call_in_the_money_stock_gets_no_credit_above_strike():
    # stock valued at K = 45 for its loan value: I = 45 x 100 x 50% + 500, M = 45 x 100 x 25% + 500
    rows = (stk("s", "XYZ", 100, 50), opt("c", "XYZ", "C", 45, -1, 50, 6.50))
    _, legs = run(*rows)
    assert (leg(legs, "s")["regt_initial"], leg(legs, "s")["regt_maintenance"]) == pytest.approx((2750.0, 1625.0))
    assert account_req(*rows) == pytest.approx((2100.0, 975.0))


def test_covered_call_by_etf_tracking_the_index():
    spy = stk("spy", "SPY", 1000, 400, group="broad_index", tracks="SPX")
    spx = opt("spx", "SPX", "C", 4100, -1, 4000, 50.0, group="broad_index")
    assert account_req(spy, spx) == pytest.approx((195000.0, 95000.0))
    assert leg(run(spy, spx)[1], "spx")["strategy"] == "covered_call"
    # 999 shares are worth less than the index value of one contract: naked
    spy_short = stk("spy", "SPY", 999, 400, group="broad_index", tracks="SPX")
    assert account_req(spy_short, spx) == pytest.approx((50000.0 + 199800.0, 50000.0 + 99900.0))
    assert leg(run(spy_short, spx)[1], "spx")["strategy"] == "naked_call"


def test_covered_put():
    rows = (stk("s", "XYZ", -100, 50), opt("p", "XYZ", "P", 45, -1, 50, 1.50))
    assert account_req(*rows) == pytest.approx((2350.0, 1350.0))
    assert set(run(*rows)[1]["strategy"]) == {"covered_put"}


def test_debit_call_spread():
    rows = (opt("l", "XYZ", "C", 50, 1, 50, 4.00), opt("s", "XYZ", "C", 55, -1, 50, 2.00))
    assert account_req(*rows) == pytest.approx((200.0, 200.0))
    _, legs = run(*rows)
    assert leg(legs, "s")["regt_initial"] == pytest.approx(-200.0)
    assert set(legs["strategy"]) == {"debit_spread"}


def test_credit_call_spread():
    rows = (opt("s", "XYZ", "C", 50, -1, 50, 4.00), opt("l", "XYZ", "C", 55, 1, 50, 2.00))
    assert account_req(*rows) == pytest.approx((300.0, 300.0))  # width 500 - net credit 200
    _, legs = run(*rows)
    assert leg(legs, "s")["regt_initial"] == pytest.approx(100.0)
    assert set(legs["strategy"]) == {"credit_spread"}


def test_credit_put_spread():
    rows = (opt("s", "XYZ", "P", 50, -1, 50, 3.00), opt("l", "XYZ", "P", 45, 1, 50, 1.00))
    assert account_req(*rows) == pytest.approx((300.0, 300.0))
    assert set(run(*rows)[1]["strategy"]) == {"credit_spread"}


def test_debit_put_spread():
    rows = (opt("l", "XYZ", "P", 50, 1, 50, 3.00), opt("s", "XYZ", "P", 45, -1, 50, 1.00))
    assert account_req(*rows) == pytest.approx((200.0, 200.0))
    assert set(run(*rows)[1]["strategy"]) == {"debit_spread"}


def test_credit_spread_capped_at_naked():
    # width 100 x 100 - 500 = 9,500 > naked 2,000: not paired
    rows = (opt("s", "XYZ", "C", 100, -1, 100, 5.00), opt("l", "XYZ", "C", 200, 1, 100, 0.05))
    assert account_req(*rows) == pytest.approx((2005.0, 2005.0))
    _, legs = run(*rows)
    assert leg(legs, "s")["strategy"] == "naked_call" and leg(legs, "l")["strategy"] == "long_option"


def test_spread_needs_long_leg_expiring_no_earlier():
    rows = (
        opt("s", "XYZ", "C", 50, -1, 50, 4.00, t=1.0, expiry=EXP_LATE),
        opt("l", "XYZ", "C", 55, 1, 50, 2.00),
    )
    assert account_req(*rows) == pytest.approx((1200.0, 1200.0))  # naked 1,000 + long 200


def test_spread_long_leg_beyond_nine_months_paid_in_full():
    rows = (
        opt("s", "XYZ", "C", 50, -1, 50, 4.00),
        opt("l", "XYZ", "C", 55, 1, 50, 3.00, t=1.0, expiry=EXP_LATE),
    )
    # alone: 1,000 + 75% x 300; as a spread: (500 - 400) + 300
    assert account_req(*rows) == pytest.approx((400.0, 400.0))
    assert leg(run(*rows)[1], "l")["regt_initial"] == pytest.approx(300.0)


def test_straddle_greater_leg_with_its_premium_decides():
    call = opt("c", "XYZ", "C", 100, -2, 100, 4.00)
    put = opt("p", "XYZ", "P", 100, -2, 100, 5.00)
    # both naked 2,000 per contract; the put is greater with its premium (2,500 > 2,400)
    assert account_req(call, put) == pytest.approx((4000.0, 4000.0))
    _, legs = run(call, put)
    assert leg(legs, "p")["regt_initial"] == pytest.approx(4000.0)
    assert leg(legs, "c")["regt_initial"] == pytest.approx(0.0)
    assert set(legs["strategy"]) == {"straddle"}


def test_straddle_needs_same_expiry():
    call = opt("c", "XYZ", "C", 47, -1, 45, 2.10)
    put = opt("p", "XYZ", "P", 43, -1, 45, 1.20, t=1.0, expiry=EXP_LATE)
    assert account_req(call, put) == pytest.approx((1400.0, 1400.0))


def test_partial_cover_splits_legs():
    rows = (stk("s", "XYZ", 150, 50), opt("c", "XYZ", "C", 55, -3, 50, 2.00))
    # 1 covered (-200), 2 naked (1,000 each); 100 shares behind the call, 50 alone
    assert account_req(*rows) == pytest.approx((4550.0, 2675.0))
    _, legs = run(*rows)
    assert leg(legs, "c", "covered_call")["paired_quantity"] == -1.0
    assert leg(legs, "c", "naked_call")["paired_quantity"] == -2.0
    assert leg(legs, "s", "covered_call")["paired_quantity"] == 100.0
    assert leg(legs, "s", "long_stock")["paired_quantity"] == 50.0


def test_partial_spreads_largest_saving_first():
    rows = (
        opt("l", "XYZ", "C", 50, 2, 50, 4.00),
        opt("s1", "XYZ", "C", 55, -3, 50, 2.00),
        opt("s2", "XYZ", "C", 45, -1, 50, 6.50),
    )
    # s1 debit (saves 1,200), s2 credit (saves 1,150), 2 of s1 naked
    assert account_req(*rows) == pytest.approx((1450.0, 1450.0))
    _, legs = run(*rows)
    assert leg(legs, "s1", "debit_spread")["paired_quantity"] == -1.0
    assert leg(legs, "s1", "naked_call")["paired_quantity"] == -2.0
    assert leg(legs, "s2")["strategy"] == "credit_spread"


def test_cover_before_spread():
    rows = (
        stk("s", "XYZ", 100, 50),
        opt("c", "XYZ", "C", 55, -1, 50, 2.00),
        opt("l", "XYZ", "C", 60, 1, 50, 1.00),
    )
    _, legs = run(*rows)
    assert leg(legs, "c")["strategy"] == "covered_call"
    assert leg(legs, "l")["strategy"] == "long_option"


def test_futures_are_outside_reg_t():
    accounts, legs = run(fut("f", "ES", 2, 4000))
    assert accounts["regt_initial"].tolist() == [0.0] and accounts["regt_maintenance"].tolist() == [0.0]
    assert legs["strategy"].tolist() == ["future"]


def test_every_account_reported_and_frames_have_the_contract_columns():
    accounts, legs = run(fut("f", "ES", 1, 4000, acct="B"), stk("s", "XYZ", 100, 50, acct="A"))
    assert accounts.columns.tolist() == ["account_id", "regt_initial", "regt_maintenance"]
    assert accounts["account_id"].tolist() == ["A", "B"]
    assert legs.columns.tolist() == [
        "position_id", "account_id", "strategy", "paired_with", "paired_quantity",
        "regt_initial", "regt_maintenance",
    ]  # fmt: skip


def test_empty_positions():
    empty = frame(stk("s", "XYZ", 100, 50)).iloc[:0]
    accounts, legs = regt_requirements(empty)
    assert accounts.empty and legs.empty
    assert accounts.columns.tolist() == ["account_id", "regt_initial", "regt_maintenance"]


def test_duplicate_position_id_is_an_error():
    with pytest.raises(InputFileError, match="position_id"):
        run(stk("s", "XYZ", 100, 50), stk("s", "XYZ", 100, 50))


def test_missing_column_is_an_error():
    with pytest.raises(InputFileError, match="value"):
        regt_requirements(frame(stk("s", "XYZ", 100, 50)).drop(columns="value"))


def test_unknown_product_group_is_an_error():
    with pytest.raises(InputFileError, match="product_group"):
        run(opt("c", "XYZ", "C", 55, -1, 50, 2.0, group="crypto"))


# --------------------------------------------------------------------------- #
# properties


def all_naked(df: pd.DataFrame) -> pd.DataFrame:
    """Plain per-row reference: every leg margined alone, summed per account."""
    out = {}
    for r in df.itertuples():
        mv = abs(r.quantity) * r.value * r.multiplier
        if r.kind == "stock":
            i, m = (0.5 * mv, 0.25 * mv) if r.quantity > 0 else (0.5 * mv, 0.30 * mv)
        elif r.kind == "option" and r.quantity > 0:
            i = m = (0.75 if r.t > 0.75 else 1.0) * mv
        elif r.kind == "option":
            pct = 0.15 if r.product_group.startswith("broad") else 0.20
            otm = max(r.strike - r.spot, 0.0) if r.is_call else max(r.spot - r.strike, 0.0)
            low = 0.10 * (r.spot if r.is_call else r.strike)
            i = m = max(pct * r.spot - otm, low) * r.multiplier * abs(r.quantity)
        else:
            i = m = 0.0
        a = out.setdefault(r.account_id, [0.0, 0.0])
        a[0] += i
        a[1] += m
    return pd.DataFrame([(k, *v) for k, v in out.items()], columns=["account_id", "i", "m"]).set_index("account_id")


@st.composite
def books(draw, max_rows=10):
    """Small multi-account books over XYZ, SPX and SPY (tracks SPX), in round lots."""
    n = draw(st.integers(1, max_rows))
    rows = []
    for j in range(n):
        acct = draw(st.sampled_from(["A", "B"]))
        what = draw(st.sampled_from(["xyz", "spy", "xyz_opt", "xyz_opt", "xyz_opt", "spx_opt"]))
        pid = f"p{j:02d}"
        if what == "xyz":
            rows.append(stk(pid, "XYZ", 100 * draw(st.sampled_from([-3, -2, -1, 1, 2, 3])), 50, acct=acct))
        elif what == "spy":
            q = 1000 * draw(st.sampled_from([1, 2]))
            rows.append(stk(pid, "SPY", q, 400, acct=acct, group="broad_index", tracks="SPX"))
        else:
            xyz = what == "xyz_opt"
            late = draw(st.booleans())
            rows.append(opt(
                pid, "XYZ" if xyz else "SPX", draw(st.sampled_from(["C", "P"])),
                draw(st.sampled_from([40, 45, 50, 55, 60] if xyz else [3800, 4000, 4200])),
                draw(st.sampled_from([-3, -2, -1, 1, 2, 3])), 50 if xyz else 4000,
                draw(st.sampled_from([0.5, 1.0, 2.5, 6.0] if xyz else [10.0, 60.0, 150.0])),
                acct=acct, t=1.0 if late else 0.25, expiry=EXP_LATE if late else EXP,
                group="equity" if xyz else "broad_index_high_cap",
            ))  # fmt: skip
    return frame(*rows)


PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(books())
def test_never_worse_than_all_naked(df):
    accounts, _ = regt_requirements(df)
    ref = all_naked(df).loc[accounts["account_id"]]
    assert np.all(accounts["regt_initial"].to_numpy() <= ref["i"].to_numpy() * (1 + 1e-12) + 1e-6)
    assert np.all(accounts["regt_maintenance"].to_numpy() <= ref["m"].to_numpy() * (1 + 1e-12) + 1e-6)


@PROPS
@given(books(), st.randoms(use_true_random=False))
def test_row_order_does_not_matter(df, rnd):
    order = list(range(len(df)))
    rnd.shuffle(order)
    a1, l1 = regt_requirements(df)
    a2, l2 = regt_requirements(df.iloc[order].reset_index(drop=True))
    pd.testing.assert_frame_equal(a1, a2)
    pd.testing.assert_frame_equal(l1, l2)


@PROPS
@given(books(), st.integers(2, 5))
def test_scaling_quantities_scales_requirements(df, k):
    a1, _ = regt_requirements(df)
    a2, _ = regt_requirements(df.assign(quantity=df["quantity"] * k))
    np.testing.assert_allclose(a2["regt_initial"], k * a1["regt_initial"], rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(a2["regt_maintenance"], k * a1["regt_maintenance"], rtol=1e-9, atol=1e-6)


@PROPS
@given(books())
def test_parts_add_up_to_each_position(df):
    _, legs = regt_requirements(df)
    total = legs.groupby("position_id")["paired_quantity"].sum()
    np.testing.assert_allclose(total.loc[df["position_id"]].to_numpy(), df["quantity"].to_numpy(), rtol=1e-12)
    paired = legs[legs["paired_with"].notna()]
    back = paired.set_index(["paired_with", "position_id"]).index
    assert set(back) == set(paired.set_index(["position_id", "paired_with"]).index)


def kahan_reference(labels, values, n_groups):
    """Plain-Python compensated sum per group, rows in order, NaN skipped."""
    out = np.zeros((n_groups, values.shape[1]))
    comp = np.zeros_like(out)
    with np.errstate(invalid="ignore"):  # inf - inf in the compensation, as in the compiled loop
        _kahan_rows(labels, values, out, comp)
    return out


def _kahan_rows(labels, values, out, comp):
    for i, g in enumerate(labels):
        for j, v in enumerate(values[i]):
            if np.isnan(v):
                continue
            y = v - comp[g, j]
            t = out[g, j] + y
            c = t - out[g, j] - y
            comp[g, j] = 0.0 if np.isnan(c) else c
            out[g, j] = t


@pytest.mark.parametrize("seed", range(4))
def test_group_sum_is_the_compensated_sum_in_row_order(seed):
    from gpu_margin._regt import group_sum

    rng = np.random.default_rng(seed)
    n, g = 400, 23
    labels = rng.integers(0, g, n)
    values = rng.standard_normal((n, 2)) * 10.0 ** rng.integers(-3, 12, (n, 2))
    values[rng.random((n, 2)) < 0.05] = np.nan
    if seed % 2:
        values[rng.random((n, 2)) < 0.02] = np.inf
    np.testing.assert_array_equal(group_sum(labels, values, g), kahan_reference(labels, values, g))


def test_group_sum_compensates():
    from gpu_margin._regt import group_sum

    tenths = np.full((10, 1), 0.1)
    plain = 0.0
    for x in tenths[:, 0].tolist():  # left to right (Python 3.12's sum() compensates)
        plain += x
    assert plain != 1.0  # plain summation drifts
    assert group_sum(np.zeros(10, np.int64), tenths, 1)[0, 0] == 1.0
    assert group_sum(np.zeros(0, np.int64), np.zeros((0, 2)), 3).tolist() == [[0.0, 0.0]] * 3


@PROPS
@given(books(), st.randoms(use_true_random=False))
def test_subset_legs_equal_a_fresh_pairing_of_the_pseudo_accounts(df, rnd):
    """What the liquidation engine reruns: rows of prepared legs under new accounts and quantities
    give the maintenance requirement of the same positions passed through regt_requirements."""
    from gpu_margin._regt import maintenance_by_account, prepare_legs, subset_legs

    base = prepare_legs(df)
    n_keys = rnd.randint(1, 4)
    idx, key, qty = [], [], []
    for k in range(n_keys):
        rows = sorted(rnd.sample(range(len(df)), rnd.randint(1, len(df))))
        idx += rows
        key += [k] * len(rows)
        qty += [df["quantity"].iloc[r] * rnd.choice([1.0, 0.5, 2.0, -1.0]) for r in rows]
    idx, key, qty = np.array(idx), np.array(key), np.array(qty)
    legs = subset_legs(base, idx, qty, key, n_keys + 1)  # the last key holds nothing
    got = maintenance_by_account(legs)
    pids = df["position_id"].to_numpy(object)[idx]
    for k in range(n_keys):  # legs keep position_id order within each pseudo-account
        mine = np.flatnonzero(key == k)
        assert list(pids[mine][np.argsort(legs.pos[mine])]) == sorted(pids[mine])
        assert sorted(legs.pos[mine]) == list(range(mine.size))

    sub = df.iloc[idx].reset_index(drop=True)
    sub = sub.assign(account_id=[f"k{k}" for k in key], quantity=qty,
                     position_id=[f"{p}\x00{k}" for p, k in zip(sub["position_id"], key)])
    want, _ = regt_requirements(sub)
    expect = np.zeros(n_keys + 1)
    expect[[int(a[1:]) for a in want["account_id"]]] = want["regt_maintenance"].to_numpy()
    np.testing.assert_array_equal(got, expect)


def test_subset_legs_of_a_large_book_keep_the_output_row_order():
    """Rows of legs prepared on a whole book keep that book's position_id ranks, which exceed the size of
    a small subset: the rows of each leg still come in strategy then partner order, no partner last."""
    from gpu_margin._regt import STRATEGIES, _pair, prepare_legs, subset_legs

    others = [stk(f"A{i:04d}", "XYZ", 10, 50.0, acct="B") for i in range(300)]  # ids ranked before Z*
    mine = [opt("Z1", "XYZ", "C", 55, -3, 50.0, 1.0), opt("Z2", "XYZ", "C", 60, 2, 50.0, 0.5),
            stk("Z3", "XYZ", 100, 50.0), opt("Z4", "XYZ", "P", 45, -2, 50.0, 0.8)]
    df = frame(*others, *mine)
    base = prepare_legs(df)
    idx = np.arange(len(others), len(df))
    legs = subset_legs(base, idx, df["quantity"].to_numpy()[idx], np.zeros(idx.size, np.int64), 1)
    leg_i, partner, strat, *_ = _pair(legs)[0]
    pid = df["position_id"].to_numpy(object)[idx]
    rows = [(pid[a], STRATEGIES[s], pid[p] if p >= 0 else None) for a, p, s in zip(leg_i, partner, strat)]
    assert any(a == b[0] for a, b in zip([r[0] for r in rows[1:]], rows)), rows  # a leg split over rows
    assert rows == sorted(rows, key=lambda r: (r[0], r[1], r[2] is None, r[2] or ""))
    fresh = _pair(prepare_legs(df.iloc[idx].reset_index(drop=True)))[0]
    assert [(pid[a], STRATEGIES[s]) for a, s in zip(fresh[0], fresh[2])] == [r[:2] for r in rows]


def test_float_keys_order_as_the_floats_and_the_radix_sorts_are_stable():
    """The compiled pairing's integer keys of floats order as the floats do, equal values (NaN with NaN,
    last; -0.0 with 0.0) sharing one key; its radix sorts are stable sorts, of the indices and of the
    keys they carry."""
    from gpu_margin._regt_pairing import _argsort_keys, _float_key, _radix_argsort, _radix_sort_pairs

    float_keys = np.vectorize(_float_key, otypes=[np.uint64])
    rng = np.random.default_rng(11)
    for trial in range(600):
        n = int(rng.integers(1, 9000 if trial % 100 == 0 else 3000 if trial % 50 == 0 else 60))
        if trial % 4 == 0:
            x = rng.choice([0.0, -0.0, np.nan, 1.5, -2.0, np.inf, -np.inf, 1e-300, -1e300, 5e-324], n)
        elif trial % 4 == 1:
            x = rng.integers(0, 5, n).astype(np.float64)
        elif trial % 4 == 2:
            x = rng.normal(size=n).round(2) * 10.0 ** rng.integers(-5, 5)
        else:
            x = np.full(n, 3.25)
        distinct = sorted({(1, 0.0) if v != v else (0, v + 0.0) for v in x.tolist()})  # NaN last, -0.0 as 0.0
        want = [distinct.index((1, 0.0) if v != v else (0, v + 0.0)) for v in x.tolist()]
        keys = float_keys(x)
        assert np.unique(keys, return_inverse=True)[1].tolist() == want
        k = rng.integers(0, 1 << int(rng.integers(1, 63)), n).astype(np.uint64)
        np.testing.assert_array_equal(_radix_argsort(k), np.argsort(k, kind="stable"))
        np.testing.assert_array_equal(_argsort_keys(k), np.argsort(k, kind="stable"))
        few = k % np.uint64(int(rng.integers(1, 9)))  # many ties: stability shows
        np.testing.assert_array_equal(_argsort_keys(few), np.argsort(few, kind="stable"))
        items, carried = np.arange(n, dtype=np.int64)[::-1].copy(), few.copy()
        _radix_sort_pairs(items, carried)
        np.testing.assert_array_equal(carried, np.sort(few))
        np.testing.assert_array_equal(items, (n - 1 - np.arange(n))[np.argsort(few, kind="stable")])


def test_an_option_in_a_product_group_reg_t_has_no_rate_for_is_a_one_line_error_naming_the_market_row():
    """A custom product group the PM methodology knows but Reg T does not: the error names the underlying,
    the group and the remedy (the market file), not a positions column."""
    from gpu_margin import compute
    from gpu_margin._methodology import parse_methodology

    meth = parse_methodology("[product_groups.etf]\ndown = 0.15\nup = 0.15\n", name="custom")
    positions = pd.DataFrame({"account_id": ["A"], "position_id": ["p1"], "underlying": ["QQQ"], "kind": ["option"],
                              "right": ["C"], "strike": [400.0], "expiry": [pd.Timestamp("2024-06-21")],
                              "quantity": [-1.0]})
    market = pd.DataFrame({"underlying": ["QQQ"], "spot": [400.0], "vol": [0.2], "dividend_yield": [0.0],
                           "product_group": ["etf"]})
    with pytest.raises(InputFileError) as e:
        compute(positions, market, asof="2024-03-15", rate=0.05, methodology=meth, device="cpu")
    msg = str(e.value)
    assert msg.startswith("market: underlying 'QQQ' has product_group 'etf'") and "market file" in msg
    assert "'p1'" in msg and "\n" not in msg
