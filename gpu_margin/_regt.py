"""Reg T strategy-based requirement (SPEC 5.3), per account and per leg, on NLV.

Every number here is a requirement on net liquidation value: premium received
is already in NLV, so a short option's requirement excludes its premium and an
account complies when ``NLV >= requirement``. Initial (I) and maintenance (M)
differ only for stock; see ``docs/regt.md`` for the formulas, worked examples
and the pairing order.

Pairing runs as a fixed sequence of strategy passes (covered, vertical spread,
straddle/strangle); whatever is left is margined standalone (naked). Each pass
builds every candidate pair across all accounts at once (sorted joins on
integer keys), ranks them, and forms them with :func:`greedy_match`, a
greedy b-matching that takes the candidates one by one in rank order (one
compiled loop). A candidate is formed only if it lowers
both the initial and the maintenance requirement, so the result is never worse
than margining every leg naked.

Performance: the string columns (``account_id``, ``position_id``,
``underlying``, ``tracks``, ``kind``, ``product_group``) are turned into
integer codes once on entry; everything after that works on NumPy
``int64``/``float64`` arrays (joins by ``argsort``/``searchsorted``, ranking by
one ``argsort`` of a packed integer key) and the two output frames are built
once at the end.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ._exceptions import InputFileError
from ._io import arrow_strings, positions_in, str_column

__all__ = ["greedy_match", "regt_requirements"]

#: ``pct`` of the naked-option formula by product group.
NAKED_PCT = {"equity": 0.20, "narrow_index": 0.20, "broad_index": 0.15, "broad_index_high_cap": 0.15}
#: Minimum of the naked formula, as a share of spot (calls) or strike (puts).
NAKED_MIN_PCT = 0.10
#: Stock requirement as a share of market value: (initial, maintenance).
LONG_STOCK = (0.50, 0.25)
SHORT_STOCK = (0.50, 0.30)
#: Long options: a share of market value; beyond ``LONG_TERM_YEARS`` 75%.
LONG_OPTION_SHORT_TERM = 1.00
LONG_OPTION_LONG_TERM = 0.75
LONG_TERM_YEARS = 0.75  # 9 months, with t = days / 365

REQUIRED_COLUMNS = (
    "account_id", "position_id", "underlying", "kind", "is_call", "strike", "expiry", "t",
    "multiplier", "quantity", "spot", "product_group", "tracks", "value",
)  # fmt: skip

LEG_COLUMNS = [
    "position_id", "account_id", "strategy", "paired_with", "paired_quantity",
    "regt_initial", "regt_maintenance",
]  # fmt: skip
ACCOUNT_COLUMNS = ["account_id", "regt_initial", "regt_maintenance"]

_MIN_SAVING = 1e-7  # dollars per pair unit: a pairing must save more than this
_REL_TOL = 1e-9  # remaining quantities below this share of the position are zero

#: Strategy names; legs carry an index into this tuple until the output is built.
STRATEGIES = (
    "covered_call", "covered_put", "credit_spread", "debit_spread", "straddle", "strangle",
    "future", "long_stock", "short_stock", "long_option", "naked_call", "naked_put",
)  # fmt: skip
_S = {name: code for code, name in enumerate(STRATEGIES)}
_STRATEGY_RANK = np.argsort(np.argsort(np.array(STRATEGIES)))  # code -> place in alphabetical order

_KEY_LIMIT = 1 << 62  # packed integer keys stay below this


def regt_requirements(positions: pd.DataFrame, *, legs: bool = True) -> tuple[pd.DataFrame, pd.DataFrame | None]:
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
    depend on the row order of ``positions``. With ``legs=False`` only the
    accounts frame is built (the legs frame is ``None``).
    """
    prepared, rows = _paired_rows(positions)
    if rows is None:
        acc, leg_frame = _empty_result()
        return acc, leg_frame if legs else None
    frame = legs_frame(_legs_table(prepared, *rows), prepared) if legs else None
    return _accounts_frame(prepared, rows), frame


def regt_tables(positions: pd.DataFrame, book: bool = False,
                und_names: np.ndarray | None = None) -> tuple[pd.DataFrame, pa.Table, SimpleNamespace]:
    """:func:`regt_requirements` with the legs as an Arrow table of the ``regt_legs`` output schema.

    The same rows and numbers, already in the output's sort order (account,
    position, strategy, partner), built from Arrow takes with no Python string
    per leg: what the overnight run writes. Also returns the positions as
    prepared for :func:`subset_legs` (what liquidation plans rerun on), which
    :func:`legs_frame` needs to turn the table into :func:`regt_requirements`' frame.
    ``book``: ``positions`` is a prepared book's frame, whose codes are used (see :func:`_prepare`);
    ``und_names``: that book's underlying names (``Book.und_names``), which its ``_und`` codes index.
    """
    legs, rows = _paired_rows(positions, book=book, und_names=und_names)
    if rows is None:
        return _empty_result()[0], _legs_schema().empty_table(), legs
    return _accounts_frame(legs, rows), _legs_table(legs, *rows), legs


def _paired_rows(positions: pd.DataFrame, book: bool = False,
                 und_names: np.ndarray | None = None) -> tuple[SimpleNamespace, tuple[np.ndarray, ...] | None]:
    """The positions prepared (:func:`_prepare`) and their output rows in output order (:func:`_sorted_rows`),
    or ``None`` for no positions."""
    legs = _prepare(positions, book=book, und_names=und_names)
    if legs.n == 0:
        return legs, None
    parts, empty_pair_part = _pairing(legs)
    _note_dtypes(legs, parts, empty_pair_part)
    return legs, _sorted_rows(legs, parts)


def legs_frame(table: pa.Table, prepared: SimpleNamespace) -> pd.DataFrame:
    """The legs frame of :func:`regt_requirements` from the table of :func:`regt_tables` (same columns,
    order, dtypes; ``paired_with`` is ``None`` for a leg margined alone)."""
    if prepared.n == 0:
        return _empty_result()[1]
    object_ids, object_strategy = prepared.object_ids, prepared.object_strategy

    def col(name: str) -> pa.Array:
        return table.column(name).combine_chunks()

    return pd.DataFrame({
        "position_id": str_column(col("position_id"), object_ids),
        "account_id": str_column(col("account_id"), object_ids),
        "strategy": str_column(col("strategy"), object_strategy),
        "paired_with": pd.Series(col("paired_with").to_numpy(zero_copy_only=False), dtype=object, copy=False),
        **{name: col(name).to_numpy(zero_copy_only=False).astype(np.float64)
           for name in ("paired_quantity", "regt_initial", "regt_maintenance")},
    })  # fmt: skip


def _note_dtypes(legs: SimpleNamespace, parts: list[tuple], empty_pair_part: bool) -> None:
    """Which string columns the legs frame has always given as ``object`` (not ``str``): the ids when a
    pass ranked candidates but formed none or no leg is left standalone, the strategy in the first case."""
    legs.object_ids = empty_pair_part or parts[-1][0].size == 0
    legs.object_strategy = empty_pair_part


def _legs_schema() -> pa.Schema:
    from ._outputs import SCHEMAS  # noqa: PLC0415

    return SCHEMAS["regt_legs"]


def _legs_table(legs: SimpleNamespace, leg: np.ndarray, partner: np.ndarray, strat: np.ndarray, pq: np.ndarray,
                ri: np.ndarray, rm: np.ndarray) -> pa.Table:
    """The sorted output rows as the ``regt_legs`` table: Arrow takes of the ids, no Python strings."""
    leg_idx = pa.array(leg)
    partner_idx = pa.array(np.maximum(partner, 0), mask=partner < 0)  # a null index takes a null
    cols = {
        "account_id": legs.acct_ids.take(leg_idx), "position_id": legs.pid.take(leg_idx),
        "strategy": pa.array(STRATEGIES, type=pa.string()).take(pa.array(strat)),
        "paired_with": legs.pid.take(partner_idx),
        **{name: pa.array(x, type=pa.float64(), from_pandas=True)  # NaN is null, as in a pandas column
           for name, x in (("paired_quantity", pq), ("regt_initial", ri), ("regt_maintenance", rm))},
    }  # fmt: skip
    schema = _legs_schema()
    return pa.Table.from_arrays([cols[f.name].cast(f.type) for f in schema], schema=schema)


def prepare_legs(positions: pd.DataFrame) -> SimpleNamespace:
    """The positions prepared once for repeated :func:`maintenance_by_account` calls on parts of them.

    Checks the columns and codes the strings as :func:`regt_requirements`
    does; :func:`subset_legs` then takes rows of it with other quantities and
    other accounts, with no string work.
    """
    return _prepare(positions)


def subset_legs(base: SimpleNamespace, idx: np.ndarray, qty: np.ndarray, account: np.ndarray,
                n_accounts: int) -> SimpleNamespace:
    """Rows ``idx`` of prepared legs holding ``qty``, regrouped into accounts ``account`` (``0..n_accounts-1``).

    A row may appear several times under different accounts (each a
    pseudo-account: one account's holdings after some change). Legs keep their
    ``position_id`` order within an account, so pairing ties break exactly as
    in :func:`regt_requirements` on the same positions.
    """
    idx = np.asarray(idx, dtype=np.int64)
    legs = SimpleNamespace(n=int(idx.size), n_acc=int(n_accounts), n_und=base.n_und, n_mult=base.n_mult,
                           acct=np.asarray(account, dtype=np.int64))
    for name in _ROW_FIELDS:
        setattr(legs, name, getattr(base, name)[idx])
    _set_quantity(legs, np.asarray(qty, dtype=np.float64))
    legs.pid_bound = base.pid_bound  # pid_rank keeps the numbering of the legs first prepared
    _set_order(legs, legs.pid_bound)
    return legs


def maintenance_by_account(legs: SimpleNamespace) -> np.ndarray:
    """Reg T maintenance requirement of every account of prepared legs, ``(n_acc,) float64``.

    The same numbers as the ``regt_maintenance`` column of
    :func:`regt_requirements` (same pairing, same summation order), without
    building any frame: what liquidation plans rerun many times.
    """
    if legs.n == 0:
        return np.zeros(legs.n_acc)
    parts, _ = _pairing(legs)
    leg, *_, rm = _sorted_rows(legs, parts)
    return group_sum(legs.acct[leg], rm[:, None], legs.n_acc)[:, 0]


def _pairing(legs: SimpleNamespace) -> tuple[list[tuple], bool]:
    """The strategy passes, then the standalone remainder: the output row blocks, in (pass, order) order.

    Also says whether a pass ranked candidates but formed none (which decides
    the output dtypes of :func:`regt_requirements`).
    """
    stand_i, stand_m = standalone_requirements(legs)
    rem = legs.absq.copy()
    absq = rem.copy()
    parts = []  # (leg, partner, strategy code, paired_quantity, initial, maintenance)
    empty_pair_part = False
    for build in (_cover_edges, _spread_edges, _straddle_edges):
        edges = build(legs, rem)
        if edges is None:
            continue
        edges = _rank(edges, legs, stand_i, stand_m)
        if edges is None:
            continue
        q = greedy_match(edges.ia, edges.ib, edges.rb, edges.integral, rem, absq)
        t = np.flatnonzero(q > 0)
        if t.size == 0:
            empty_pair_part = True
            continue
        parts.extend(_pair_parts(edges, t, q[t], legs.sign))
    parts.append(_standalone_parts(legs, rem, stand_i, stand_m))
    return parts, empty_pair_part


def standalone_requirements(legs: SimpleNamespace) -> tuple[np.ndarray, np.ndarray]:
    """Requirement per unit of ``|quantity|`` of each leg margined alone (naked).

    ``legs`` as prepared by :func:`_prepare`. Returns ``(initial, maintenance)``,
    each ``(n_legs,) float64`` dollars per share or per contract.
    """
    long_, stock = legs.long_, legs.stock
    long_opt = legs.option & long_
    naked = np.where(legs.option & ~long_, legs.naked_unit, 0.0)  # short options
    by_value = stock | long_opt  # a share of market value
    out = []
    for k in (0, 1):  # initial, maintenance
        rate = np.where(stock, np.where(long_, LONG_STOCK[k], SHORT_STOCK[k]), legs.long_rate)
        out.append(np.where(by_value, rate * legs.mv_unit, naked))
    return out[0], out[1]


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
    contracts). Each candidate in turn takes as many units as both its legs
    still allow; a leg whose remainder falls to ``_REL_TOL`` of ``absq`` or
    less is exhausted (set to 0).

    This is inherently sequential (each candidate sees what the better ones
    left), so it runs as one compiled loop over the candidates: linear in
    their number, whatever the shape of the accounts (a vectorised version in
    rounds needed one round per link of the longest chain of competing
    candidates in the largest account).
    """
    n_edges = ia.shape[0]
    if n_edges == 0:
        return np.zeros(0, dtype=np.float64)
    taken = np.zeros(n_edges, dtype=np.float64)
    formed = _greedy_loop()(np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64),
                            np.asarray(rb, dtype=np.float64), np.asarray(integral, dtype=np.bool_),
                            rem, np.asarray(absq, dtype=np.float64), _REL_TOL, taken)
    if formed:
        rem[rem <= _REL_TOL * absq] = 0.0
    return taken


def _greedy_loop_py(a, b, r, g, rem, absq, tol, taken):  # noqa: ANN001, ANN202  (compiled by Numba)
    formed = False
    for e in range(a.shape[0]):
        la, lb = a[e], b[e]
        cap_b = rem[lb] / r[e]
        if g[e]:
            cap_b = np.floor(cap_b + 1e-9)
        cap = min(rem[la], cap_b)
        if cap > 0.0:
            formed = True
            taken[e] = cap
            rem[la] -= cap
            rem[lb] -= cap * r[e]
            if rem[la] <= tol * absq[la]:
                rem[la] = 0.0
            if rem[lb] <= tol * absq[lb]:
                rem[lb] = 0.0
    return formed


@functools.lru_cache(maxsize=1)
def _greedy_loop():
    import numba  # noqa: PLC0415

    return numba.njit(cache=True, nogil=True)(_greedy_loop_py)


# --------------------------------------------------------------------------- #
# preparation


def _prepare(positions: pd.DataFrame, book: bool = False, und_names: np.ndarray | None = None) -> SimpleNamespace:
    """Check the columns; sort by (account, position); code the strings; per-unit amounts.

    Returns NumPy arrays in the row order of ``positions``: integer codes for
    the strings (``acct`` numbers the accounts in sorted order), the numbers of
    the formulas, ``rank`` (each row's place in (account, position_id) order),
    and the ``position_id`` / account id strings (Arrow) for the output.

    ``book``: ``positions`` is a prepared book's frame (``_pm.prepare_book``):
    rows in account order with their account codes in ``_acc`` and kinds in
    ``_kind``, position ids unique (validation rejected repeats). Those codes
    are used instead of coding the strings again, and ``pid_rank`` is the
    book's ``_pid_rank`` (or orders the ids within each account only, which is
    all it is compared on). With the book's ``und_names`` its ``_und`` codes
    are the underlying's codes too, and what an ETF tracks is looked up among
    the same names.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in positions.columns]
    if missing:
        raise InputFileError(
            f"positions: missing column(s) {missing} for the Reg T requirement; "
            "pass the validated positions frame with market columns joined"
        )
    n = len(positions)
    pid_arr = arrow_strings(_as_str(positions["position_id"]))
    acct_arr = arrow_strings(_as_str(positions["account_id"]))

    pid_rank = np.empty(n, dtype=np.int64)
    if book:
        acct0 = positions["_acc"].to_numpy(np.int64)
        n_acc = int(acct0[-1]) + 1 if n else 0
        first = np.flatnonzero(np.r_[True, acct0[1:] != acct0[:-1]]) if n else np.zeros(0, np.int64)
        sorted_names = acct_arr.take(pa.array(first))  # the book is in account order
        # (account, position_id) order: the ids are compared within an account only
        if "_pid_rank" in positions.columns:  # the book's (prepare_book ranked its rows; drop it with new ids)
            by_pid = None
            pid_rank = positions["_pid_rank"].to_numpy(np.int64)
        else:
            by_pid = pc.sort_indices(pa.table({"a": acct0, "p": pid_arr}),
                                     sort_keys=[("a", "ascending"), ("p", "ascending")]).to_numpy().astype(np.int64)
    else:
        # position_id order (also finds duplicates: equal ids are adjacent there)
        by_pid = pc.sort_indices(pid_arr).to_numpy().astype(np.int64)
        if pid_arr.null_count > 1:
            _raise_duplicate(positions)
        if n > 1:
            s = pid_arr.take(pa.array(by_pid))
            if pc.any(pc.equal(s.slice(1), s.slice(0, n - 1))).as_py():
                _raise_duplicate(positions)
        # accounts: codes in sorted order of the ids
        enc = pc.dictionary_encode(acct_arr)
        acct_names = enc.dictionary
        n_acc = len(acct_names)
        name_order = pc.sort_indices(acct_names).to_numpy().astype(np.int64)
        name_rank = np.empty(n_acc, dtype=np.int64)
        name_rank[name_order] = np.arange(n_acc, dtype=np.int64)
        acct0 = name_rank[enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)] if n \
            else np.zeros(0, np.int64)
        sorted_names = acct_names.take(pa.array(name_order))
    if by_pid is not None:
        pid_rank[by_pid] = np.arange(n, dtype=np.int64)
    pid_bound = int(pid_rank.max()) + 1 if n else 0  # n for ranks of these rows (more for rows of a larger book)

    legs = SimpleNamespace(n=n, n_acc=n_acc, acct=acct0, pid_rank=pid_rank, pid_bound=pid_bound)
    # on a book the ranks are (account, position_id) ranks already: of these rows when they are 0..n-1
    _set_order(legs, pid_bound, ranked=book and pid_bound == n)
    legs.acct_names = sorted_names  # sorted account ids
    legs.pid = pid_arr
    legs.acct_ids = acct_arr

    # the other string columns as integer codes (-1: missing); underlying and
    # tracks share theirs, a missing underlying has its own (as in a merge). On a
    # book the codes are places in the market's names: an underlying the market
    # lacks (validation rejects those) shares the missing code, and what an ETF
    # tracks is -1 also when the market lacks it (no leg can have it as underlying)
    if book and und_names is not None and "_und" in positions.columns:
        n_und = len(und_names)
        und = positions["_und"].to_numpy(np.int64)  # place in und_names, -1: not a market underlying
        trk = positions_in(arrow_strings(positions["tracks"]), np.asarray(und_names, dtype=object))
    else:
        both, n_und = _factorize([positions["underlying"], positions["tracks"]])
        und, trk = both[:n], both[n:]
    legs.n_und = n_und + 1
    legs.und = np.where(und < 0, n_und, und)
    legs.trk = trk  # the underlying code of what an ETF tracks, -1: none

    if book:  # the book's kind codes (stock 0, option 1, future 2)
        kind_code = positions["_kind"].to_numpy()
        legs.option, legs.stock, legs.future = kind_code == 1, kind_code == 0, kind_code == 2
    else:
        kind_codes, kinds = _factorize([positions["kind"]], values=True)

        def kind_is(name: str) -> np.ndarray:
            lut = np.array([k == name for k in kinds] + [False], dtype=bool)
            return lut[kind_codes]

        legs.option, legs.stock, legs.future = kind_is("option"), kind_is("stock"), kind_is("future")

    grp_codes, groups = _factorize([positions["product_group"]], values=True)
    pct = np.array([NAKED_PCT.get(u, np.nan) if isinstance(u, str) else np.nan for u in groups] + [np.nan])
    pct = pct[grp_codes]
    bad = legs.option & np.isnan(pct)
    if bad.any():
        rows = np.flatnonzero(bad)
        row = int(rows[np.argmin(legs.rank[rows])])  # the first in (account, position_id) order
        raise InputFileError(
            f"positions: 'product_group' must be one of {sorted(NAKED_PCT)} "
            f"(got {positions['product_group'].iloc[row]!r} for position {pid_arr[row].as_py()!r})"
        )

    def num(col: str) -> np.ndarray:
        return positions[col].to_numpy(dtype=np.float64)

    legs.is_call = positions["is_call"].to_numpy(dtype=bool)
    s, k, mult = num("spot"), num("strike"), num("multiplier")
    is_call = legs.is_call
    with np.errstate(invalid="ignore"):
        otm = np.where(is_call, np.maximum(k - s, 0.0), np.maximum(s - k, 0.0))
        floor = NAKED_MIN_PCT * np.where(is_call, s, k)
        naked = np.maximum(pct * s - otm, floor) * mult
    legs.spot, legs.strike, legs.mult = s, k, mult
    legs.naked_unit = np.where(legs.option, naked, 0.0)
    legs.value = num("value")
    legs.mv_unit = legs.value * mult
    t = num("t")
    legs.long_rate = np.where(t > LONG_TERM_YEARS, LONG_OPTION_LONG_TERM, LONG_OPTION_SHORT_TERM)
    _set_quantity(legs, positions["quantity"].to_numpy())
    expiry = positions["expiry"]
    if not (isinstance(expiry.dtype, np.dtype) and expiry.dtype.kind == "M"):
        expiry = pd.to_datetime(expiry)
        if isinstance(expiry.dtype, pd.DatetimeTZDtype):  # compare the instants
            expiry = expiry.dt.tz_convert("UTC").dt.tz_localize(None)
    exp = expiry.to_numpy().astype("datetime64[ns]")
    legs.exp_nat = np.isnat(exp)
    legs.exp = exp.view(np.int64)
    legs.mult_code = _codes(mult)
    legs.n_mult = int(legs.mult_code.max()) + 1 if n else 1
    return legs


#: Per-row fields of prepared legs that do not depend on the quantity held or the account.
_ROW_FIELDS = (
    "pid_rank", "und", "trk", "option", "stock", "future", "is_call", "spot", "strike", "mult", "naked_unit",
    "value", "mv_unit", "long_rate", "exp_nat", "exp", "mult_code",
)  # fmt: skip


def _set_quantity(legs: SimpleNamespace, quantity: np.ndarray) -> None:
    """The per-row fields that follow from the signed quantity held."""
    qf = np.asarray(quantity, dtype=np.float64)
    legs.sign = np.sign(qf)
    legs.long_ = quantity > 0
    legs.short = quantity < 0
    legs.absq = np.abs(qf)


def _set_order(legs: SimpleNamespace, pid_bound: int, ranked: bool = False) -> None:
    """``rank`` (each row's place in (account, position_id) order), ``pos`` (its place in its account), ``n_pos``.

    ``legs.pid_rank`` orders the rows by ``position_id``; its values are below ``pid_bound``.
    ``ranked``: ``pid_rank`` is each row's place in (account, position_id) order already (a permutation
    of ``0..n-1``, accounts numbered in sorted order), which is then the rank with no sort.
    """
    n, acct = legs.n, legs.acct
    if ranked:
        rank = legs.pid_rank
    else:
        order = np.argsort(acct * max(pid_bound, 1) + legs.pid_rank) if n else np.zeros(0, np.int64)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n, dtype=np.int64)
    legs.rank = rank
    per_acct = np.bincount(acct, minlength=legs.n_acc)
    legs.pos = rank - (np.cumsum(per_acct) - per_acct)[acct]  # place within its account
    legs.n_pos = int(per_acct.max()) if n else 1


def _as_str(series: pd.Series) -> pd.Series:
    """``series.astype(str)``, skipped where the values are strings already."""
    return series if isinstance(series.dtype, pd.StringDtype) else series.astype(str)


def _factorize(columns: list[pd.Series], values: bool = False) -> tuple[np.ndarray, object]:
    """Integer codes of the concatenated ``columns``: equal strings equal codes, -1 missing.

    Returns the codes (``int64``) and the number of distinct values, or with
    ``values`` the distinct values themselves (a list). String columns go
    through Arrow's ``dictionary_encode``; anything else through ``pd.factorize``.
    """
    try:
        arrays = [_large_strings(c) for c in columns]
    except (TypeError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        codes, uniques = pd.factorize(pd.concat(columns, ignore_index=True) if len(columns) > 1 else columns[0])
        codes = np.asarray(codes, dtype=np.int64)
        return codes, (list(uniques) if values else len(uniques))
    arr = arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)
    enc = pc.dictionary_encode(arr)
    codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, (enc.dictionary.to_pylist() if values else len(enc.dictionary))


def _large_strings(series: pd.Series) -> pa.Array:
    """A column of strings (or missing values) as one Arrow ``large_string`` array; TypeError otherwise."""
    arr = pa.array(series, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_null(arr.type) or pa.types.is_string(arr.type):
        return arr.cast(pa.large_string())
    if pa.types.is_large_string(arr.type):
        return arr
    raise TypeError(f"not strings: {arr.type}")


def _raise_duplicate(positions: pd.DataFrame) -> None:
    ids = positions["position_id"]
    dup = ids.duplicated(keep=False)
    if not dup.any():  # equal only as strings
        ids = ids.astype(str)
        dup = ids.duplicated(keep=False)
    raise InputFileError(
        f"positions: 'position_id' must be unique (got {ids[dup].iloc[0]!r} "
        "more than once); give each position its own id"
    )


def _codes(x: np.ndarray) -> np.ndarray:
    """Equal values get equal ``int64`` codes (NaN and NaT included, as in a pandas merge)."""
    return np.asarray(pd.factorize(x, use_na_sentinel=False)[0], dtype=np.int64)


def _key(*parts: tuple[np.ndarray, int]) -> np.ndarray:
    """One ``int64`` key, equal where every ``(codes, n_codes)`` part is equal."""
    key = np.zeros(parts[0][0].shape[0], dtype=np.int64)
    card = 1
    for codes, n in parts:
        n = max(int(n), 1)
        if card * n >= _KEY_LIMIT:
            key = _codes(key)
            card = int(key.max()) + 1 if key.size else 1
        key = key * n + codes
        card *= n
    return key


def _split_key(n_a: int, *parts: tuple[np.ndarray, int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_key` of both sides of a join at once (``parts`` hold side ``a``'s ``n_a`` rows first)."""
    key = _key(*parts)
    return key[:n_a], key[n_a:]


def _dense_rank(x: np.ndarray) -> tuple[np.ndarray, int]:
    """0-based ranks of ``x`` with equal values (NaN with NaN, -0.0 with 0.0) sharing a rank, and their count.

    One hash pass and a sort of the distinct values (``pd.factorize(sort=True)``),
    not a sort of every value: candidates share few distinct savings.
    """
    if x.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    codes, uniques = pd.factorize(x, sort=True, use_na_sentinel=False)  # NaN is a value, sorted last
    return np.asarray(codes, dtype=np.int64), len(uniques)


def _lex_order(floats: list[np.ndarray], ints: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Indices that sort by the keys ``floats`` then ``ints`` (primary first).

    ``ints`` are ``(codes, n_codes)`` with codes in ``0..n_codes-1``. One
    ``argsort`` of a packed ``int64`` key made of the dense ranks of the floats
    (small whole numbers are their own rank) and the codes; rows with equal
    keys come in no particular order.
    """
    combined = np.zeros((floats[0] if floats else ints[0][0]).shape[0], dtype=np.int64)
    card = 1
    for k in floats:
        parts = _float_codes(k)
        for r, n in [parts] if parts[1] > 1 else []:
            if card * n >= _KEY_LIMIT:
                combined, card = _dense_rank(combined)
            combined = combined * n + r
            card *= n
    for r, n in ints:
        n = max(int(n), 1)
        if n > 1:
            if card * n >= _KEY_LIMIT:
                combined, card = _dense_rank(combined)
            combined = combined * n + r
            card *= n
    return np.argsort(combined)


def _float_codes(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Order-preserving ``int64`` codes of ``x`` (equal values equal codes) and their bound."""
    if x.size == 0:
        return np.zeros(0, dtype=np.int64), 1
    lo, hi = x.min(), x.max()
    if lo == hi:  # constant (NaN compares unequal and is ranked below)
        return np.zeros(x.size, dtype=np.int64), 1
    if lo >= 0 and hi < 1 << 20:
        as_int = x.astype(np.int64)
        if np.array_equal(as_int, x):  # small whole numbers: their own codes
            return as_int, int(hi) + 1
    return _dense_rank(x)


def _join(ka: np.ndarray, kb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``(i, j)`` with ``ka[i] == kb[j]`` (an inner join on one integer key)."""
    ob = np.argsort(kb)
    sb = kb[ob]
    lo = np.searchsorted(sb, ka, "left")
    cnt = np.searchsorted(sb, ka, "right") - lo
    total = int(cnt.sum())
    i = np.repeat(np.arange(ka.shape[0], dtype=np.int64), cnt)
    start = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt)
    j = ob[start + np.arange(total, dtype=np.int64)]
    return i, j


# --------------------------------------------------------------------------- #
# candidate pairs; every builder returns ia, ib, rb, integral, cost_{a,b}_{i,m}
# (per pair unit), strategy code, tie-break arrays (tie1, tie2, smaller is better)


def _edges(ia, ib, rb, integral, ca_i, ca_m, cb_i, cb_m, strat, tie1, tie2) -> SimpleNamespace:
    return SimpleNamespace(
        ia=ia, ib=ib, rb=rb, integral=integral, ca_i=ca_i, ca_m=ca_m, cb_i=cb_i, cb_m=cb_m,
        strat=strat, tie1=tie1, tie2=tie2,
    )  # fmt: skip


def _concat_edges(parts: list[SimpleNamespace]) -> SimpleNamespace | None:
    parts = [p for p in parts if p.ia.size]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return SimpleNamespace(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in vars(parts[0])})


def _cover_edges(legs: SimpleNamespace, rem: np.ndarray) -> SimpleNamespace | None:
    """Short call vs long shares (own or tracking ETF); short put vs short shares."""
    alive = rem > 0
    au = _key((legs.acct, legs.n_acc), (legs.und, legs.n_und))
    out = []
    for call, stock_long in ((True, True), (False, False)):
        opt_mask = legs.option & legs.short & (legs.is_call == call)
        stk_mask = legs.stock & (legs.long_ == stock_long)
        a = np.flatnonzero(opt_mask & alive)
        b = np.flatnonzero(stk_mask & alive)
        if a.size == 0 or b.size == 0:
            continue
        i, j = _join(au[a], au[b])
        own_a, own_b = a[i], b[j]
        own_rb = legs.mult[own_a] / legs.mult[own_b]
        bt = b[legs.trk[b] >= 0]
        i, j = _join(*_split_key(a.size, (np.concatenate([legs.acct[a], legs.acct[bt]]), legs.n_acc),
                                 (np.concatenate([legs.und[a], legs.trk[bt]]), legs.n_und)))  # fmt: skip
        etf_a, etf_b = a[i], bt[j]
        other = legs.und[etf_b] != legs.und[etf_a]
        etf_a, etf_b = etf_a[other], etf_b[other]
        # ETF shares whose value equals the call's aggregate index value per contract
        etf_rb = legs.spot[etf_a] * legs.mult[etf_a] / (legs.value[etf_b] * legs.mult[etf_b])
        ia = np.concatenate([own_a, etf_a])
        if ia.size == 0:
            continue
        ib = np.concatenate([own_b, etf_b])
        rb = np.concatenate([own_rb, etf_rb])
        tie1 = np.concatenate([np.zeros(own_a.size), np.ones(etf_a.size)])  # own shares before ETF shares
        mv = rb * legs.value[ib] * legs.mult[ib]  # stock value per contract covered
        ratio = legs.strike[ia] / legs.spot[ia]
        # the stock earns no credit beyond the strike: valued at min(S, K) behind a
        # call, at max(S, K) behind a put (equal to the plain rule when OTM)
        v_star = mv * (np.minimum(1.0, ratio) if call else np.maximum(1.0, ratio))
        rates = LONG_STOCK if stock_long else SHORT_STOCK
        excess = np.abs(mv - v_star)
        prem = -legs.mv_unit[ia]
        strat = np.full(ia.size, _S["covered_call" if call else "covered_put"], dtype=np.int64)
        out.append(_edges(
            ia, ib, rb, np.ones(ia.size, dtype=bool), prem, prem,
            rates[0] * v_star + excess, rates[1] * v_star + excess, strat, tie1, np.zeros(ia.size),
        ))  # fmt: skip
    return _concat_edges(out)


def _spread_edges(legs: SimpleNamespace, rem: np.ndarray) -> SimpleNamespace | None:
    """Short option vs long option, same underlying, right and multiplier, long expiring no earlier."""
    alive = rem > 0
    a = np.flatnonzero(legs.option & legs.short & alive)
    b = np.flatnonzero(legs.option & legs.long_ & alive)
    if a.size == 0 or b.size == 0:
        return None
    key = _key((legs.acct, legs.n_acc), (legs.und, legs.n_und), (legs.is_call.astype(np.int64), 2),
               (legs.mult_code, legs.n_mult))  # fmt: skip
    i, j = _join(key[a], key[b])
    ia, ib = a[i], b[j]
    ok = (legs.exp[ib] >= legs.exp[ia]) & ~legs.exp_nat[ia] & ~legs.exp_nat[ib]
    ia, ib = ia[ok], ib[ok]
    if ia.size == 0:
        return None
    ka, kb = legs.strike[ia], legs.strike[ib]
    risk_width = np.where(legs.is_call[ia], kb - ka, ka - kb)
    short_cost = np.maximum(risk_width, 0.0) * legs.mult[ia] - legs.mv_unit[ia]
    # the long leg of a spread is paid for in full, also beyond nine months
    long_cost = legs.mv_unit[ib]
    strat = np.where(risk_width > 0, _S["credit_spread"], _S["debit_spread"]).astype(np.int64)
    days = ((legs.exp[ib] - legs.exp[ia]) // 86_400_000_000_000).astype(np.float64)
    return _edges(
        ia, ib, np.ones(ia.size), np.zeros(ia.size, dtype=bool), short_cost, short_cost,
        long_cost, long_cost, strat, np.abs(kb - ka), days,
    )  # fmt: skip


def _straddle_edges(legs: SimpleNamespace, rem: np.ndarray) -> SimpleNamespace | None:
    """Short call vs short put, same underlying, expiry and multiplier."""
    alive = rem > 0
    short_opt = legs.option & legs.short & alive
    a = np.flatnonzero(short_opt & legs.is_call)
    b = np.flatnonzero(short_opt & ~legs.is_call)
    if a.size == 0 or b.size == 0:
        return None
    exp_code = _codes(legs.exp)
    key = _key((legs.acct, legs.n_acc), (legs.und, legs.n_und), (exp_code, legs.n), (legs.mult_code, legs.n_mult))
    i, j = _join(key[a], key[b])
    if i.size == 0:
        return None
    ia, ib = a[i], b[j]
    # the greater naked requirement counted with its own premium, plus the other
    # premium; on NLV both premiums come off: the greater leg's naked amount
    na, nb = legs.naked_unit[ia], legs.naked_unit[ib]
    call_greater = (na + legs.mv_unit[ia]) >= (nb + legs.mv_unit[ib])
    cost_a = np.where(call_greater, na, 0.0)
    cost_b = np.where(call_greater, 0.0, nb)
    ka, kb = legs.strike[ia], legs.strike[ib]
    strat = np.where(ka == kb, _S["straddle"], _S["strangle"]).astype(np.int64)
    return _edges(
        ia, ib, np.ones(ia.size), np.zeros(ia.size, dtype=bool), cost_a, cost_a, cost_b, cost_b,
        strat, np.abs(ka - kb), np.zeros(ia.size),
    )  # fmt: skip


def _rank(
    edges: SimpleNamespace, legs: SimpleNamespace, stand_i: np.ndarray, stand_m: np.ndarray
) -> SimpleNamespace | None:
    """Keep candidates that lower both I and M; sort best first (largest initial saving per pair unit).

    Ties go to the smaller ``tie1``, ``tie2``, then the two legs' ``position_id``:
    ``legs.pos`` numbers the legs of an account in ``position_id`` order, and
    a candidate pairs legs of one account; candidates of different accounts
    share no leg, so their relative order does not change any result.
    """
    ia, ib, rb = edges.ia, edges.ib, edges.rb
    save_i = stand_i[ia] + stand_i[ib] * rb - edges.ca_i - edges.cb_i
    save_m = stand_m[ia] + stand_m[ib] * rb - edges.ca_m - edges.cb_m
    ok = np.flatnonzero(np.minimum(save_i, save_m) > _MIN_SAVING)
    if ok.size == 0:
        return None
    ia, ib = ia[ok], ib[ok]
    order = _lex_order(
        [-save_i[ok], edges.tie1[ok], edges.tie2[ok]], [(legs.pos[ia], legs.n_pos), (legs.pos[ib], legs.n_pos)]
    )
    take = ok[order]
    # what the greedy walks, in rank order; the amounts are taken later for the formed pairs only
    return SimpleNamespace(ia=ia[order], ib=ib[order], rb=rb[take], integral=edges.integral[take],
                           take=take, src=edges)


# --------------------------------------------------------------------------- #
# output rows


def _pair_parts(edges: SimpleNamespace, t: np.ndarray, q: np.ndarray, sign: np.ndarray) -> list[tuple]:
    """Two row blocks (one per side) for the formed pairs ``t`` of ranked candidates (:func:`_rank`);
    amounts per pair unit times units."""
    src, e = edges.take[t], edges.src
    ia, ib, strat = edges.ia[t], edges.ib[t], e.strat[src]
    qb = q * edges.rb[t]
    side_a = (ia, ib, strat, sign[ia] * q, e.ca_i[src] * q, e.ca_m[src] * q)
    side_b = (ib, ia, strat, sign[ib] * qb, e.cb_i[src] * q, e.cb_m[src] * q)
    return [side_a, side_b]


def _standalone_parts(
    legs: SimpleNamespace, rem: np.ndarray, stand_i: np.ndarray, stand_m: np.ndarray
) -> tuple:
    """Rows for what is left of every leg after pairing, margined alone."""
    keep = np.flatnonzero(rem > 0)
    long_ = legs.long_[keep]
    stock = legs.stock[keep]
    strategy = np.select(
        [legs.future[keep], stock & long_, stock, long_, legs.is_call[keep]],
        [_S["future"], _S["long_stock"], _S["short_stock"], _S["long_option"], _S["naked_call"]],
        default=_S["naked_put"],
    ).astype(np.int64)
    r = rem[keep]
    return (keep, np.full(keep.size, -1, dtype=np.int64), strategy,
            legs.sign[keep] * r, stand_i[keep] * r, stand_m[keep] * r)  # fmt: skip


def _accounts_frame(legs: SimpleNamespace, rows: tuple[np.ndarray, ...]) -> pd.DataFrame:
    """Per account (sorted), the sums of its rows' requirements in row order (``rows`` of :func:`_sorted_rows`)."""
    leg, ri, rm = rows[0], rows[4], rows[5]
    sums = group_sum(legs.acct[leg], np.column_stack([ri, rm]), legs.n_acc)
    return pd.DataFrame({
        "account_id": str_column(legs.acct_names, False),
        "regt_initial": sums[:, 0], "regt_maintenance": sums[:, 1],
    })  # fmt: skip


def _sorted_rows(legs: SimpleNamespace, parts: list[tuple]) -> tuple[np.ndarray, ...]:
    """The row blocks concatenated and sorted by (account, position_id, strategy, paired_with).

    That is the order of the ``regt_legs`` output (strategy names
    alphabetically, the partner's ``position_id``, no partner last), so the
    frame needs no string sort later; an account's requirement is summed over
    its rows in this order. The key is unique: a leg has one row per strategy
    and partner.
    """
    leg, partner, strat, pq, ri, rm = (np.concatenate(c) for c in zip(*parts))
    rank = legs.rank[leg]
    n = legs.pid_bound + 1  # partner ranks are pid ranks (below pid_bound); no partner ranks last
    partner_rank = np.where(partner >= 0, legs.pid_rank[np.maximum(partner, 0)], legs.pid_bound)
    strat_rank = _STRATEGY_RANK[strat]
    if legs.n * len(STRATEGIES) * n < _KEY_LIMIT:
        o = np.argsort((rank * len(STRATEGIES) + strat_rank) * n + partner_rank)
    else:
        o = np.lexsort((partner_rank, strat_rank, rank))
    return leg[o], partner[o], strat[o], pq[o], ri[o], rm[o]


def group_sum(labels: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group sums of the columns of ``values`` ``(n, k)``, rows added in order, ``(n_groups, k)``.

    Compensated (Kahan) summation that skips NaN (an all-NaN group sums to
    0), in one compiled loop that holds no interpreter lock. The Reg T totals
    and the liquidation engine's reruns both sum this way, so an account's
    requirement is the same number wherever it is computed.
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    out = np.zeros((int(n_groups), values.shape[1]), dtype=np.float64)
    if values.shape[0]:
        _group_sum_loop()(np.asarray(labels, dtype=np.int64), values, out, np.zeros_like(out))
    return out


def _group_sum_py(labels, values, out, comp):  # noqa: ANN001, ANN202  (compiled by Numba)
    for i in range(values.shape[0]):
        g = labels[i]
        for j in range(values.shape[1]):
            v = values[i, j]
            if v == v:  # pandas skips NaN
                y = v - comp[g, j]
                t = out[g, j] + y
                c = t - out[g, j] - y
                comp[g, j] = 0.0 if c != c else c  # an infinite value: keep the sum infinite, not NaN
                out[g, j] = t


@functools.lru_cache(maxsize=1)
def _group_sum_loop():
    import numba  # noqa: PLC0415

    return numba.njit(cache=True, nogil=True)(_group_sum_py)


def _empty_result() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frames for no positions (with the dtypes they have always had)."""
    obj = np.zeros(0, dtype=object)
    flt = np.zeros(0, dtype=np.float64)
    accounts = pd.DataFrame({"account_id": obj, "regt_initial": flt, "regt_maintenance": flt})
    legs = pd.DataFrame({
        "position_id": obj, "account_id": obj, "strategy": pd.Series(np.zeros(0, dtype="<U11")),
        "paired_with": obj, "paired_quantity": flt, "regt_initial": flt, "regt_maintenance": flt,
    })  # fmt: skip
    return accounts, legs
