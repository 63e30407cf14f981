"""TEST-ONLY ORACLE: the previous implementation of ``gpu_margin._regt`` (as of
commit 4ea790e: pandas merges and sorts on string columns), kept verbatim as a
reference so that ``tests/test_regt_perf.py`` can check that the faster NumPy
implementation gives exactly the same per-account and per-leg frames. Not used
by the package; do not optimise or "fix" it: it is the specification by example.
Only the import of ``InputFileError`` was made absolute, and the rules' constants
(percentages, column lists, tolerances) are imported from the package instead of repeated.

Reg T strategy-based requirement (SPEC 5.3), per account and per leg, on NLV.

Every number here is a requirement on net liquidation value: premium received
is already in NLV, so a short option's requirement excludes its premium and an
account complies when ``NLV >= requirement``. Initial (I) and maintenance (M)
differ only for stock; see ``docs/regt.md`` for the formulas, worked examples
and the pairing order.

Pairing runs as a fixed sequence of strategy passes (covered, vertical spread,
straddle/strangle); whatever is left is margined standalone (naked). Each pass
builds every candidate pair across all accounts at once (merges), ranks them,
and forms them with :func:`greedy_match`, a vectorised greedy b-matching that
gives exactly the result of taking the candidates one by one in rank order.
A candidate is formed only if it lowers both the initial and the maintenance
requirement, so the result is never worse than margining every leg naked.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gpu_margin._exceptions import InputFileError

# the rules' constants are the package's (one definition); only the implementation is kept here
from gpu_margin._regt import (
    _MIN_SAVING,
    _REL_TOL,
    ACCOUNT_COLUMNS,
    LEG_COLUMNS,
    LONG_OPTION_LONG_TERM,
    LONG_OPTION_SHORT_TERM,
    LONG_STOCK,
    LONG_TERM_YEARS,
    NAKED_MIN_PCT,
    NAKED_PCT,
    REQUIRED_COLUMNS,
    SHORT_STOCK,
)

__all__ = ["greedy_match", "regt_requirements"]


def regt_requirements(positions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reg T initial and maintenance requirements on NLV, per account and per leg.

    ``positions``: one row per valid position (columns of :data:`REQUIRED_COLUMNS`;
    ``value`` is the market value per unit, ``quantity`` signed).

    Returns ``(accounts, legs)``. ``accounts``: ``account_id``, ``regt_initial``,
    ``regt_maintenance`` (float64 dollars, one row per account, sorted).
    ``legs``: one row per leg or part of a leg: ``position_id``, ``account_id``,
    ``strategy``, ``paired_with`` (the other leg's ``position_id`` or None),
    ``paired_quantity`` (signed quantity of this position in this part; the
    parts of a position add up to its quantity), ``regt_initial``,
    ``regt_maintenance``. Both frames are sorted, so the result does not
    depend on the row order of ``positions``.
    """
    legs = _prepare(positions)
    stand_i, stand_m = standalone_requirements(legs)
    rem = legs["quantity"].abs().to_numpy(dtype=np.float64).copy()
    absq = rem.copy()

    parts = []
    for pass_no, build in enumerate((_cover_edges, _spread_edges, _straddle_edges)):
        edges = build(legs, rem)
        if edges.empty:
            continue
        edges = _rank(edges, legs, stand_i, stand_m)
        if edges.empty:
            continue
        q = greedy_match(
            edges["ia"].to_numpy(), edges["ib"].to_numpy(), edges["rb"].to_numpy(),
            edges["integral"].to_numpy(), rem, absq,
        )  # fmt: skip
        taken = edges[q > 0].assign(q=q[q > 0])
        parts.append(_pair_parts(taken, legs, pass_no))

    parts.append(_standalone_parts(legs, rem, stand_i, stand_m, pass_no=3))
    leg_frame = pd.concat(parts, ignore_index=True)
    # the order of the regt_legs output (the package sorts the legs of a position the same way)
    leg_frame = leg_frame.sort_values(
        ["account_id", "position_id", "strategy", "paired_with"], kind="mergesort", na_position="last"
    ).reset_index(drop=True)[LEG_COLUMNS]

    accounts = (
        leg_frame.groupby("account_id", sort=True)[["regt_initial", "regt_maintenance"]]
        .sum()
        .reindex(pd.Index(sorted(legs["account_id"].unique()), name="account_id"), fill_value=0.0)
        .reset_index()
    )
    accounts = accounts.astype({"regt_initial": np.float64, "regt_maintenance": np.float64})
    return accounts[ACCOUNT_COLUMNS], leg_frame


def standalone_requirements(legs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Requirement per unit of ``|quantity|`` of each leg margined alone (naked).

    ``legs`` as prepared by :func:`_prepare`. Returns ``(initial, maintenance)``,
    each ``(n_legs,) float64`` dollars per share or per contract.
    """
    kind = legs["kind"].to_numpy()
    long_ = legs["quantity"].to_numpy() > 0
    mv = legs["mv_unit"].to_numpy()
    stock = kind == "stock"
    option = kind == "option"
    init = np.zeros(len(legs), dtype=np.float64)
    maint = np.zeros(len(legs), dtype=np.float64)
    for mask, (ri, rm) in ((stock & long_, LONG_STOCK), (stock & ~long_, SHORT_STOCK)):
        init = np.where(mask, ri * mv, init)
        maint = np.where(mask, rm * mv, maint)
    long_opt = option & long_
    init = np.where(long_opt, legs["long_rate"].to_numpy() * mv, init)
    maint = np.where(long_opt, legs["long_rate"].to_numpy() * mv, maint)
    short_opt = option & ~long_
    init = np.where(short_opt, legs["naked_unit"].to_numpy(), init)
    maint = np.where(short_opt, legs["naked_unit"].to_numpy(), maint)
    return init, maint


def greedy_match(
    ia: np.ndarray,
    ib: np.ndarray,
    rb: np.ndarray,
    integral: np.ndarray,
    rem: np.ndarray,
    absq: np.ndarray,
) -> np.ndarray:
    """Form candidate pairs greedily in rank order; returns pair units per candidate.

    Candidates ``(n_edges,)`` arrive sorted best first: ``ia`` / ``ib`` index the
    two legs in ``rem`` (remaining ``|quantity|``, ``(n_legs,) float64``, updated
    in place); one pair unit uses 1 of leg ``a`` and ``rb`` of leg ``b``; where
    ``integral`` only whole pair units fit in ``b`` (shares must cover whole
    contracts). The result equals taking the candidates one at a time in rank
    order; each round forms every candidate that is the best still-feasible one
    at both its legs (vectorised over all accounts), and each round retires at
    least the best feasible candidate, so the loop ends.
    """
    n_edges = ia.shape[0]
    taken = np.zeros(n_edges, dtype=np.float64)
    alive = np.ones(n_edges, dtype=bool)
    while True:
        cap_b = rem[ib] / rb
        cap_b = np.where(integral, np.floor(cap_b + 1e-9), cap_b)
        cap = np.minimum(rem[ia], cap_b)
        alive &= cap > 0
        idx = np.flatnonzero(alive)
        if idx.size == 0:
            return taken
        best = np.zeros(n_edges, dtype=bool)
        _, first_a = np.unique(ia[idx], return_index=True)
        best[idx[first_a]] = True
        best_b = np.zeros(n_edges, dtype=bool)
        _, first_b = np.unique(ib[idx], return_index=True)
        best_b[idx[first_b]] = True
        sel = np.flatnonzero(best & best_b)
        q = cap[sel]
        rem[ia[sel]] -= q
        rem[ib[sel]] -= q * rb[sel]
        rem[rem <= _REL_TOL * absq] = 0.0
        taken[sel] += q
        alive[sel] = False


# --------------------------------------------------------------------------- #
# preparation


def _prepare(positions: pd.DataFrame) -> pd.DataFrame:
    """Check the columns, sort by (account, position) and add per-unit amounts."""
    missing = [c for c in REQUIRED_COLUMNS if c not in positions.columns]
    if missing:
        raise InputFileError(
            f"positions: missing column(s) {missing} for the Reg T requirement; "
            "pass the validated positions frame with market columns joined"
        )
    legs = positions.loc[:, list(REQUIRED_COLUMNS)].copy()
    dup = legs["position_id"].duplicated(keep=False)
    if dup.any():
        raise InputFileError(
            f"positions: 'position_id' must be unique (got {legs.loc[dup, 'position_id'].iloc[0]!r} "
            "more than once); give each position its own id"
        )
    legs["account_id"] = legs["account_id"].astype(str)
    legs["position_id"] = legs["position_id"].astype(str)
    legs = legs.sort_values(["account_id", "position_id"], kind="mergesort").reset_index(drop=True)
    legs["idx"] = np.arange(len(legs), dtype=np.int64)

    option = (legs["kind"] == "option").to_numpy()
    pct = legs["product_group"].map(NAKED_PCT)
    bad = option & pct.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputFileError(
            f"market: underlying {legs['underlying'].iloc[row]!r} has product_group "
            f"{legs['product_group'].iloc[row]!r}, which has no Reg T naked-option rate (position "
            f"{legs['position_id'].iloc[row]!r} is an option on it); give the underlying one of "
            f"{sorted(NAKED_PCT)} in the market file (SPEC 5.3)"
        )
    is_call = legs["is_call"].to_numpy(dtype=bool)
    s = legs["spot"].to_numpy(dtype=np.float64)
    k = legs["strike"].to_numpy(dtype=np.float64)
    mult = legs["multiplier"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        otm = np.where(is_call, np.maximum(k - s, 0.0), np.maximum(s - k, 0.0))
        floor = NAKED_MIN_PCT * np.where(is_call, s, k)
        naked = np.maximum(pct.to_numpy(dtype=np.float64) * s - otm, floor) * mult
    legs["naked_unit"] = np.where(option, naked, 0.0)
    legs["mv_unit"] = legs["value"].to_numpy(dtype=np.float64) * mult
    t = legs["t"].to_numpy(dtype=np.float64)
    legs["long_rate"] = np.where(t > LONG_TERM_YEARS, LONG_OPTION_LONG_TERM, LONG_OPTION_SHORT_TERM)
    legs["sign"] = np.sign(legs["quantity"].to_numpy(dtype=np.float64))
    return legs


def _alive(legs: pd.DataFrame, rem: np.ndarray, mask: np.ndarray) -> pd.DataFrame:
    return legs[mask & (rem > 0)]


# --------------------------------------------------------------------------- #
# candidate pairs; every builder returns ia, ib, rb, integral, cost_{a,b}_{i,m}
# (per pair unit), strategy, tie-break columns (tie1, tie2, smaller is better)


def _cover_edges(legs: pd.DataFrame, rem: np.ndarray) -> pd.DataFrame:
    """Short call vs long shares (own or tracking ETF); short put vs short shares."""
    kind = legs["kind"].to_numpy()
    q = legs["quantity"].to_numpy()
    is_call = legs["is_call"].to_numpy(dtype=bool)
    out = []
    for call, stock_long in ((True, True), (False, False)):
        opt_mask = (kind == "option") & (q < 0) & (is_call == call)
        stk_mask = (kind == "stock") & ((q > 0) == stock_long)
        a = _alive(legs, rem, opt_mask)[["idx", "account_id", "underlying", "strike", "spot", "multiplier"]]
        b = _alive(legs, rem, stk_mask)[["idx", "account_id", "underlying", "tracks", "value", "multiplier"]]
        if a.empty or b.empty:
            continue
        own = a.merge(b.drop(columns="tracks"), on=["account_id", "underlying"], suffixes=("_a", "_b"))
        own["rb"] = own["multiplier_a"] / own["multiplier_b"]
        own["tie1"] = 0.0
        b_etf = b[b["tracks"].notna()].rename(columns={"underlying": "stock_underlying"})
        etf = a.merge(
            b_etf, left_on=["account_id", "underlying"], right_on=["account_id", "tracks"], suffixes=("_a", "_b")
        )
        etf = etf[etf["stock_underlying"] != etf["underlying"]].drop(columns=["tracks", "stock_underlying"])
        # ETF shares whose value equals the call's aggregate index value per contract
        etf["rb"] = etf["spot"] * etf["multiplier_a"] / (etf["value"] * etf["multiplier_b"])
        etf["tie1"] = 1.0  # own shares before ETF shares
        e = pd.concat([own, etf], ignore_index=True)
        if e.empty:
            continue
        e = e.rename(columns={"idx_a": "ia", "idx_b": "ib"})
        mv = e["rb"] * e["value"] * e["multiplier_b"]  # stock value per contract covered
        ratio = e["strike"] / e["spot"]
        # the stock earns no credit beyond the strike: valued at min(S, K) behind a
        # call, at max(S, K) behind a put (equal to the plain rule when OTM)
        v_star = mv * (np.minimum(1.0, ratio) if call else np.maximum(1.0, ratio))
        rates = LONG_STOCK if stock_long else SHORT_STOCK
        e["cost_b_i"] = rates[0] * v_star + (mv - v_star).abs()
        e["cost_b_m"] = rates[1] * v_star + (mv - v_star).abs()
        prem = legs["mv_unit"].to_numpy()[e["ia"].to_numpy()]
        e["cost_a_i"] = -prem
        e["cost_a_m"] = -prem
        e["strategy"] = "covered_call" if call else "covered_put"
        e["integral"] = True
        e["tie2"] = 0.0
        out.append(e)
    return _finish(out)


def _spread_edges(legs: pd.DataFrame, rem: np.ndarray) -> pd.DataFrame:
    """Short option vs long option, same underlying, right and multiplier, long expiring no earlier."""
    option = (legs["kind"] == "option").to_numpy()
    q = legs["quantity"].to_numpy()
    cols = ["idx", "account_id", "underlying", "is_call", "multiplier", "strike", "expiry"]
    cols += ["mv_unit", "naked_unit"]
    a = _alive(legs, rem, option & (q < 0))[cols]
    b = _alive(legs, rem, option & (q > 0))[cols]
    if a.empty or b.empty:
        return _finish([])
    e = a.merge(b, on=["account_id", "underlying", "is_call", "multiplier"], suffixes=("_a", "_b"))
    e = e[e["expiry_b"] >= e["expiry_a"]]
    if e.empty:
        return _finish([])
    e = e.rename(columns={"idx_a": "ia", "idx_b": "ib"})
    risk_width = np.where(e["is_call"], e["strike_b"] - e["strike_a"], e["strike_a"] - e["strike_b"])
    short_cost = np.maximum(risk_width, 0.0) * e["multiplier"] - e["mv_unit_a"]
    e["cost_a_i"] = short_cost
    e["cost_a_m"] = short_cost
    # the long leg of a spread is paid for in full, also beyond nine months
    e["cost_b_i"] = e["mv_unit_b"]
    e["cost_b_m"] = e["mv_unit_b"]
    e["strategy"] = np.where(risk_width > 0, "credit_spread", "debit_spread")
    e["rb"] = 1.0
    e["integral"] = False
    e["tie1"] = (e["strike_b"] - e["strike_a"]).abs()
    e["tie2"] = (e["expiry_b"] - e["expiry_a"]).dt.days.astype(np.float64)
    return _finish([e])


def _straddle_edges(legs: pd.DataFrame, rem: np.ndarray) -> pd.DataFrame:
    """Short call vs short put, same underlying, expiry and multiplier."""
    option = (legs["kind"] == "option").to_numpy()
    q = legs["quantity"].to_numpy()
    is_call = legs["is_call"].to_numpy(dtype=bool)
    cols = ["idx", "account_id", "underlying", "expiry", "multiplier", "strike", "mv_unit", "naked_unit"]
    a = _alive(legs, rem, option & (q < 0) & is_call)[cols]
    b = _alive(legs, rem, option & (q < 0) & ~is_call)[cols]
    if a.empty or b.empty:
        return _finish([])
    e = a.merge(b, on=["account_id", "underlying", "expiry", "multiplier"], suffixes=("_a", "_b"))
    if e.empty:
        return _finish([])
    e = e.rename(columns={"idx_a": "ia", "idx_b": "ib"})
    # the greater naked requirement counted with its own premium, plus the other
    # premium; on NLV both premiums come off: the greater leg's naked amount
    call_greater = (e["naked_unit_a"] + e["mv_unit_a"]) >= (e["naked_unit_b"] + e["mv_unit_b"])
    e["cost_a_i"] = np.where(call_greater, e["naked_unit_a"], 0.0)
    e["cost_b_i"] = np.where(call_greater, 0.0, e["naked_unit_b"])
    e["cost_a_m"] = e["cost_a_i"]
    e["cost_b_m"] = e["cost_b_i"]
    e["strategy"] = np.where(e["strike_a"] == e["strike_b"], "straddle", "strangle")
    e["rb"] = 1.0
    e["integral"] = False
    e["tie1"] = (e["strike_a"] - e["strike_b"]).abs()
    e["tie2"] = 0.0
    return _finish([e])


_EDGE_COLUMNS = [
    "ia", "ib", "rb", "integral", "cost_a_i", "cost_a_m", "cost_b_i", "cost_b_m",
    "strategy", "tie1", "tie2",
]  # fmt: skip


def _finish(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f[_EDGE_COLUMNS] for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=_EDGE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def _rank(edges: pd.DataFrame, legs: pd.DataFrame, stand_i: np.ndarray, stand_m: np.ndarray) -> pd.DataFrame:
    """Keep candidates that lower both I and M; sort best first (largest initial saving per pair unit)."""
    ia = edges["ia"].to_numpy(dtype=np.int64)
    ib = edges["ib"].to_numpy(dtype=np.int64)
    rb = edges["rb"].to_numpy(dtype=np.float64)
    save_i = stand_i[ia] + stand_i[ib] * rb - edges["cost_a_i"].to_numpy() - edges["cost_b_i"].to_numpy()
    save_m = stand_m[ia] + stand_m[ib] * rb - edges["cost_a_m"].to_numpy() - edges["cost_b_m"].to_numpy()
    pid = legs["position_id"].to_numpy()
    edges = edges.assign(
        ia=ia, ib=ib, rb=rb, _neg_save=-save_i, _ok=np.minimum(save_i, save_m) > _MIN_SAVING,
        pid_a=pid[ia], pid_b=pid[ib], integral=edges["integral"].to_numpy(dtype=bool),
    )  # fmt: skip
    edges = edges[edges["_ok"]]
    keys = ["_neg_save", "tie1", "tie2", "pid_a", "pid_b"]
    return edges.sort_values(keys, kind="mergesort").reset_index(drop=True)


# --------------------------------------------------------------------------- #
# output rows


def _pair_parts(taken: pd.DataFrame, legs: pd.DataFrame, pass_no: int) -> pd.DataFrame:
    """Two rows (one per leg) for every formed pair; amounts are per pair unit times units."""
    acct = legs["account_id"].to_numpy()
    sign = legs["sign"].to_numpy()
    q = taken["q"].to_numpy()
    ia = taken["ia"].to_numpy()
    ib = taken["ib"].to_numpy()
    qb = q * taken["rb"].to_numpy()
    order = np.arange(len(taken), dtype=np.int64)
    side_a = pd.DataFrame({
        "position_id": taken["pid_a"].to_numpy(), "account_id": acct[ia],
        "strategy": taken["strategy"].to_numpy(), "paired_with": taken["pid_b"].to_numpy(),
        "paired_quantity": sign[ia] * q,
        "regt_initial": taken["cost_a_i"].to_numpy() * q, "regt_maintenance": taken["cost_a_m"].to_numpy() * q,
        "_pass": pass_no, "_order": order,
    })  # fmt: skip
    side_b = pd.DataFrame({
        "position_id": taken["pid_b"].to_numpy(), "account_id": acct[ib],
        "strategy": taken["strategy"].to_numpy(), "paired_with": taken["pid_a"].to_numpy(),
        "paired_quantity": sign[ib] * qb,
        "regt_initial": taken["cost_b_i"].to_numpy() * q, "regt_maintenance": taken["cost_b_m"].to_numpy() * q,
        "_pass": pass_no, "_order": order,
    })  # fmt: skip
    return pd.concat([side_a, side_b], ignore_index=True).astype(
        {"paired_quantity": np.float64, "regt_initial": np.float64, "regt_maintenance": np.float64}
    )


def _standalone_parts(
    legs: pd.DataFrame, rem: np.ndarray, stand_i: np.ndarray, stand_m: np.ndarray, pass_no: int
) -> pd.DataFrame:
    """Rows for what is left of every leg after pairing, margined alone."""
    keep = rem > 0
    kind = legs["kind"].to_numpy()
    long_ = legs["quantity"].to_numpy() > 0
    is_call = legs["is_call"].to_numpy(dtype=bool)
    strategy = np.select(
        [kind == "future", (kind == "stock") & long_, kind == "stock", long_, is_call],
        ["future", "long_stock", "short_stock", "long_option", "naked_call"],
        default="naked_put",
    )
    return pd.DataFrame({
        "position_id": legs["position_id"].to_numpy()[keep],
        "account_id": legs["account_id"].to_numpy()[keep],
        "strategy": strategy[keep],
        "paired_with": np.full(int(keep.sum()), None, dtype=object),
        "paired_quantity": (legs["sign"].to_numpy() * rem)[keep].astype(np.float64),
        "regt_initial": (stand_i * rem)[keep].astype(np.float64),
        "regt_maintenance": (stand_m * rem)[keep].astype(np.float64),
        "_pass": pass_no,
        "_order": np.zeros(int(keep.sum()), dtype=np.int64),
    })  # fmt: skip

