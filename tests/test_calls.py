"""Margin calls (SPEC 6): who is called, for what, and when it is due.

The rule under test (``gpu_margin._calls``): a ``pm_deficit`` or
``regt_deficit`` call for exactly the accounts with negative excess (by
account type), and a ``min_equity`` call for a ``portfolio`` account that
holds positions, meets its requirement (excess >= 0) and has NLV below the
methodology's ``min_equity``. One call per account at most.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from gpu_margin import JobError
from gpu_margin._calls import CALL_COLUMNS, due_date, margin_calls
from gpu_margin._compute import compute
from gpu_margin._methodology import load_methodology, parse_methodology

ASOF = "2024-03-15"  # a Friday
RATE = 0.05
MARKET = pd.DataFrame({
    "underlying": ["AAA", "BBB", "SPX"],
    "spot": [100.0, 50.0, 5100.0],
    "vol": [0.30, 0.45, 0.14],
    "dividend_yield": [0.0, 0.0, 0.013],
    "product_group": ["equity", "equity", "broad_index_high_cap"],
    "option_style": ["A", "A", "E"],
})  # fmt: skip


def d(s):
    return dt.date.fromisoformat(s)


# ---- due dates ---------------------------------------------------------------------------------

@pytest.mark.parametrize("asof, days, due", [
    ("2024-03-14", 1, "2024-03-15"),  # Thursday → Friday
    ("2024-03-15", 1, "2024-03-18"),  # Friday → Monday
    ("2024-03-15", 3, "2024-03-20"),
    ("2024-03-28", 1, "2024-04-01"),  # Good Friday 2024-03-29 is an NYSE holiday
    ("2024-07-03", 1, "2024-07-05"),  # Independence Day
    ("2024-11-27", 3, "2024-12-03"),  # Thanksgiving and a weekend
    ("2024-12-31", 2, "2025-01-03"),  # New Year's Day
    ("2025-01-08", 1, "2025-01-10"),  # 2025-01-09: national day of mourning, NYSE closed
    ("2012-10-26", 1, "2012-10-31"),  # Hurricane Sandy closed the NYSE 29-30 October 2012
    ("2024-03-15", 0, "2024-03-15"),  # due the same day
])  # fmt: skip
def test_due_date_counts_nyse_sessions(asof, days, due):
    assert due_date(d(asof), days) == d(due)


@pytest.mark.parametrize("asof, days, due", [
    ("2024-03-16", 1, "2024-03-18"),  # Saturday: the next session is business day 1
    ("2024-03-16", 2, "2024-03-19"),
    ("2024-03-16", 0, "2024-03-18"),
    ("2024-07-04", 1, "2024-07-05"),  # asof on a holiday
])  # fmt: skip
def test_due_date_from_a_non_session_counts_the_next_session_as_day_one(asof, days, due):
    assert due_date(asof, days) == d(due)


def test_due_dates_skip_every_weekend_and_holiday_over_two_years():
    start = d("2023-01-02")
    for k in range(0, 730, 7):
        asof = start + dt.timedelta(days=k)
        due = due_date(asof, 1)
        assert due.weekday() < 5 and due > asof
        between = pd.bdate_range(asof + dt.timedelta(days=1), due - dt.timedelta(days=1))
        # every weekday strictly between a session asof and its due date is an NYSE holiday
        if due_date(asof, 0) == asof:
            assert all(due_date(day.date(), 0) > day.date() for day in between)


@pytest.mark.parametrize("asof, days", [("1985-06-03", 1), ("2075-12-30", 5), ("2024-03-15", -1)])
def test_due_date_outside_the_calendar_is_a_user_error(asof, days):
    with pytest.raises(JobError, match="due"):
        due_date(asof, days)


# ---- who is called -----------------------------------------------------------------------------

def random_book(seed, n=40):
    """Accounts of one to three stock/option positions, both types, cash from -150% to +150% of requirement."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        for _ in range(int(rng.integers(1, 4))):
            und = str(rng.choice(["AAA", "BBB", "SPX"]))
            spot = MARKET.set_index("underlying").loc[und, "spot"]
            if rng.random() < 0.5:
                qty = float(rng.choice([-1, 1]) * 10 * rng.integers(1, 50))
                rows.append((f"C{i:03d}", und, "stock", None, np.nan, None, qty))
            else:
                k = round(spot * rng.uniform(0.9, 1.1))
                rows.append((f"C{i:03d}", und, "option", str(rng.choice(["C", "P"])), float(k), "2024-05-17",
                             float(rng.choice([-1, 1]) * rng.integers(1, 5))))
    pos = pd.DataFrame(rows, columns=["account_id", "underlying", "kind", "right", "strike", "expiry", "quantity"])
    pos["expiry"] = pd.to_datetime(pos["expiry"])
    ids = sorted(pos["account_id"].unique())
    atype = np.where(rng.random(len(ids)) < 0.5, "portfolio", "regt")
    acc = pd.DataFrame({"account_id": ids, "cash": 0.0, "account_type": atype})
    r = compute(pos, MARKET, acc, asof=ASOF, rate=RATE)["accounts"].set_index("account_id").loc[ids]
    acc["cash"] = rng.uniform(-1.5, 1.5, len(ids)) * r["requirement"].abs().to_numpy() + 1e5 * rng.random(len(ids)) \
        - r["nlv"].to_numpy()
    # two accounts with no positions (cash only), one short of cash
    acc = pd.concat([acc, pd.DataFrame({"account_id": ["E1", "E2"], "cash": [-10.0, 50.0],
                                        "account_type": ["portfolio", "portfolio"]})], ignore_index=True)
    return pos, acc


@pytest.mark.parametrize("seed", [1, 2])
def test_deficit_calls_are_exactly_the_accounts_with_negative_excess(seed):
    pos, acc = random_book(seed)
    res = compute(pos, MARKET, acc, asof=ASOF, rate=RATE)
    a = res["accounts"].set_index("account_id")
    calls = res["margin_calls"].set_index("account_id")
    assert list(res["margin_calls"].columns) == CALL_COLUMNS
    assert calls.index.is_unique and res["margin_calls"]["account_id"].is_monotonic_increasing
    deficit = calls[calls["reason"] != "min_equity"]
    assert set(deficit.index) == set(a.index[a["excess"] < 0])
    assert len(deficit) >= 5 and (a["excess"] >= 0).sum() >= 5
    want = np.where(a.loc[deficit.index, "account_type"] == "portfolio", "pm_deficit", "regt_deficit")
    assert deficit["reason"].tolist() == want.tolist()
    np.testing.assert_array_equal(deficit["deficit"], -a.loc[deficit.index, "excess"])
    np.testing.assert_array_equal(deficit["requirement"], a.loc[deficit.index, "requirement"])
    np.testing.assert_array_equal(deficit["nlv"], a.loc[deficit.index, "nlv"])
    assert "E1" in deficit.index and "E2" not in calls.index  # negative cash alone is a deficit
    # min_equity: portfolio, with positions, excess >= 0, NLV below the preset's $100,000
    eq = calls[calls["reason"] == "min_equity"]
    expect = a.index[(a["account_type"] == "portfolio") & (a["n_positions"] > 0) & (a["excess"] >= 0)
                     & (a["nlv"] < 100000.0)]
    assert set(eq.index) == set(expect) and len(eq) >= 1
    np.testing.assert_array_equal(eq["requirement"], 100000.0)
    np.testing.assert_array_equal(eq["deficit"], 100000.0 - a.loc[eq.index, "nlv"])
    assert (calls["deficit"] > 0).all()
    assert (calls["asof"] == d(ASOF)).all() and (calls["due"] == d("2024-03-18")).all()


def accounts_frame(rows):
    """``(account_id, account_type, requirement, nlv, n_positions)`` → a margin_frames-style accounts table."""
    a = pd.DataFrame(rows, columns=["account_id", "account_type", "requirement", "nlv", "n_positions"])
    a["excess"] = a["nlv"] - a["requirement"]
    return a


def test_min_equity_is_a_separate_reason_on_accounts_that_meet_their_requirement():
    a = accounts_frame([
        ("a_short_both", "portfolio", 50000.0, 30000.0, 3),   # pm_deficit of 20,000 (not the 70,000 equity gap)
        ("b_equity", "portfolio", 1000.0, 60000.0, 2),        # min_equity: 40,000
        ("c_at_req", "portfolio", 60000.0, 60000.0, 2),       # excess exactly 0: min_equity, not a deficit
        ("d_at_min", "portfolio", 1000.0, 100000.0, 2),       # NLV exactly the minimum: no call
        ("e_no_pos", "portfolio", 0.0, 5000.0, 0),            # holds nothing: no call
        ("f_regt", "regt", 1000.0, 5000.0, 4),                # Reg T: no minimum equity
        ("g_regt_short", "regt", 6000.0, 5000.0, 4),          # regt_deficit
        ("h_fine", "portfolio", 1000.0, 250000.0, 4),
    ])  # fmt: skip
    calls = margin_calls(a, load_methodology("finra"), d(ASOF), 1).set_index("account_id")
    assert calls["reason"].to_dict() == {"a_short_both": "pm_deficit", "b_equity": "min_equity",
                                         "c_at_req": "min_equity", "g_regt_short": "regt_deficit"}
    assert calls["deficit"].to_dict() == {"a_short_both": 20000.0, "b_equity": 40000.0, "c_at_req": 40000.0,
                                          "g_regt_short": 1000.0}
    assert calls.loc["b_equity", "requirement"] == 100000.0
    assert calls.loc["a_short_both", "requirement"] == 50000.0


def test_min_equity_zero_turns_the_equity_call_off():
    m = parse_methodology("min_equity = 0\n[product_groups.equity]\ndown = 0.15\nup = 0.15", name="m")
    a = accounts_frame([("b", "portfolio", 1000.0, 60000.0, 2), ("c", "portfolio", 2000.0, 1000.0, 1)])
    calls = margin_calls(a, m, d(ASOF), 1)
    assert calls["account_id"].tolist() == ["c"] and calls["reason"].tolist() == ["pm_deficit"]


def test_no_calls_gives_empty_tables_with_the_columns():
    pos = pd.DataFrame({"account_id": ["R"], "underlying": ["AAA"], "kind": ["stock"], "quantity": [10.0]})
    acc = pd.DataFrame({"account_id": ["R"], "cash": [1e6], "account_type": ["portfolio"]})
    res = compute(pos, MARKET, acc, asof=ASOF, rate=RATE)
    assert res["margin_calls"].empty and list(res["margin_calls"].columns) == CALL_COLUMNS
    assert res["liquidation"].empty and "cured" in res["liquidation"].columns


# ---- compute() and the output tables --------------------------------------------------------------

def test_compute_returns_calls_and_plans_and_no_internal_keys():
    pos, acc = random_book(3, n=12)
    res = compute(pos, MARKET, acc, asof=ASOF, rate=RATE, due_days=3)
    assert {"margin_calls", "liquidation", "accounts"} <= set(res)
    assert not any(k.startswith("_") for k in res)
    assert (res["margin_calls"]["due"] == d("2024-03-20")).all()
    called = set(res["margin_calls"]["account_id"])
    assert set(res["liquidation"]["account_id"]) == called  # every call has a plan (at least a step-0 row)


def test_non_ascii_account_ids_are_matched_and_ordered_as_python_orders_them():
    """Account ids are matched and sorted as Arrow bytes; UTF-8 bytes order as Python orders ``str``."""
    pos, acc = random_book(5, n=12)
    names = ["Zoë", "zebra", "Émile", "émile", "Ábc", "a", "ß-1", "日本", "😀", "Zo", "Z", "C010"]
    rename = dict(zip(sorted(pos["account_id"].unique()), names))
    pos["account_id"] = pos["account_id"].map(rename)
    acc["account_id"] = acc["account_id"].map(lambda a: rename.get(a, a))
    res = compute(pos, MARKET, acc, asof=ASOF, rate=RATE)
    want = sorted(set(pos["account_id"]) | set(acc["account_id"]))
    assert list(res["accounts"]["account_id"]) == want
    undo = {v: k for k, v in rename.items()}
    ref = compute(pos.assign(account_id=pos["account_id"].map(undo)), MARKET,
                  acc.assign(account_id=acc["account_id"].map(lambda a: undo.get(a, a))), asof=ASOF, rate=RATE)
    got = res["accounts"].set_index("account_id").sort_index()
    exp = ref["accounts"].assign(account_id=ref["accounts"]["account_id"].map(lambda a: rename.get(a, a))) \
        .set_index("account_id").sort_index()
    pd.testing.assert_frame_equal(got, exp)  # the same figures, whatever the ids' spelling
    assert set(res["margin_calls"]["account_id"]) <= set(want)
    assert set(res["liquidation"]["account_id"]) == set(res["margin_calls"]["account_id"])


@pytest.mark.parametrize("asof", ["2024-13-45", "not a date", None])
def test_compute_with_an_unusable_asof_is_a_one_line_error(asof):
    pos, acc = random_book(3, n=12)
    with pytest.raises(JobError, match=r"asof .* is not a usable date; give it as YYYY-MM-DD"):
        compute(pos, MARKET, acc, asof=asof, rate=RATE)


def test_calls_and_plans_fit_the_output_schemas():
    from gpu_margin._outputs import SCHEMAS, to_table

    pos, acc = random_book(4, n=12)
    res = compute(pos, MARKET, acc, asof=ASOF, rate=RATE)
    for name in ("margin_calls", "liquidation"):
        table = to_table(name, res[name])
        assert isinstance(table, pa.Table) and table.schema.equals(SCHEMAS[name])
        assert table.num_rows == len(res[name]) > 0
        back = table.to_pandas()
        for col in res[name].columns:
            if res[name][col].dtype.kind == "f":
                np.testing.assert_array_equal(back[col].to_numpy(), res[name][col].to_numpy())


def test_nyse_sessions_are_kept_in_the_user_cache(tmp_path, monkeypatch):
    """The sessions are built once per exchange-calendars version and read back from the cache after;
    a damaged cache file is rebuilt, and a cache directory that cannot be written is skipped."""
    import sys

    from gpu_margin import _calls

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _calls.nyse_sessions.cache_clear()
    built = _calls.nyse_sessions()
    path = _calls._sessions_cache()
    assert path.parent == tmp_path / "gpu-margin" and path.exists()
    assert built.dtype == np.dtype("datetime64[D]") and np.datetime64("2024-03-15") in built
    assert np.datetime64("2024-03-29") not in built  # Good Friday

    _calls.nyse_sessions.cache_clear()
    monkeypatch.setitem(sys.modules, "exchange_calendars", None)  # importing it would fail now
    np.testing.assert_array_equal(_calls.nyse_sessions(), built)
    monkeypatch.delitem(sys.modules, "exchange_calendars")

    path.write_bytes(b"not a numpy file")
    _calls.nyse_sessions.cache_clear()
    np.testing.assert_array_equal(_calls.nyse_sessions(), built)
    np.testing.assert_array_equal(np.load(path), built)  # written again

    monkeypatch.setenv("XDG_CACHE_HOME", str(path))  # a file where the directory should be
    _calls.nyse_sessions.cache_clear()
    np.testing.assert_array_equal(_calls.nyse_sessions(), built)
    _calls.nyse_sessions.cache_clear()
