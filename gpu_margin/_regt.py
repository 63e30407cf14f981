"""Reg T strategy-based requirement (SPEC 5.3), per account and per leg, on NLV.

Every number here is a requirement on net liquidation value: premium received
is already in NLV, so a short option's requirement excludes its premium and an
account complies when ``NLV >= requirement``. Initial (I) and maintenance (M)
differ only for stock; see ``docs/regt.md`` for the formulas, worked examples
and the pairing order.

Pairing runs as a fixed sequence of strategy passes (covered, vertical spread,
straddle/strangle); whatever is left is margined standalone (naked). A
candidate is formed only if it lowers both the initial and the maintenance
requirement, so the result is never worse than margining every leg naked. The
passes run account by account in one compiled loop
(:mod:`gpu_margin._regt_pairing`): each lists its candidate pairs, ranks them
and forms them greedily in rank order.

Performance: the string columns (``account_id``, ``position_id``,
``underlying``, ``tracks``, ``kind``, ``product_group``) are turned into
integer codes once on entry; the pairing works on NumPy ``int64``/``float64``
arrays and holds no interpreter lock, and the two output frames are built once
at the end.
"""

from __future__ import annotations

import functools
import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ._exceptions import InputFileError
from ._io import arrow_strings, positions_in, str_column

__all__ = ["regt_requirements"]

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
#: An account whose pairing ranks more candidates than this in one pass is named in a warning (about
#: 120 bytes each; they grow as the square of its options on one underlying: docs/regt.md, "Large accounts").
LARGE_PASS_CANDIDATES = 2_000_000

log = logging.getLogger("gpu_margin")

#: Strategy names; legs carry an index into this tuple until the output is built.
STRATEGIES = (
    "covered_call", "covered_put", "credit_spread", "debit_spread", "straddle", "strangle",
    "future", "long_stock", "short_stock", "long_option", "naked_call", "naked_put",
)  # fmt: skip
_STRATEGY_RANK = np.argsort(np.argsort(np.array(STRATEGIES)))  # code -> place in alphabetical order


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
    rows, empty_pair_part, n_standalone = _pair(legs)
    n_cand, leg = legs.largest_pass
    if n_cand > LARGE_PASS_CANDIDATES:
        log.warning("Reg T: account %s ranks %s candidate pairs in one pass (%s legs); an account's "
                    "candidates grow as the square of its options on one underlying (docs/regt.md, "
                    "\"Large accounts\")", legs.acct_ids[leg].as_py(), f"{n_cand:,}",
                    f"{int(np.count_nonzero(legs.acct == legs.acct[leg])):,}")
    legs.object_ids = empty_pair_part or n_standalone == 0
    legs.object_strategy = empty_pair_part
    return legs, rows


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
    (leg, *_, rm), _, _ = _pair(legs)
    return group_sum(legs.acct[leg], rm[:, None], legs.n_acc)[:, 0]


def _pair(legs: SimpleNamespace, capacity: tuple[int, int, int] | None = None
          ) -> tuple[tuple[np.ndarray, ...], bool, int]:
    """Every account paired (:func:`gpu_margin._regt_pairing.pair_accounts`): the output rows in output order
    (leg, partner or -1, strategy code, paired_quantity, initial, maintenance), whether a pass ranked
    candidates but formed none (which decides the output dtypes of :func:`regt_requirements`), and the
    number of legs left standalone. ``capacity``: the kernel's first buffer sizes (tests)."""
    from ._regt_pairing import pair_accounts  # noqa: PLC0415

    stand_i, stand_m = standalone_requirements(legs)
    order = np.empty(legs.n, dtype=np.int64)
    order[legs.rank] = np.arange(legs.n, dtype=np.int64)
    starts = np.zeros(legs.n_acc + 1, dtype=np.int64)
    np.cumsum(np.bincount(legs.acct, minlength=legs.n_acc), out=starts[1:])
    rates = np.array([LONG_STOCK[0], LONG_STOCK[1], SHORT_STOCK[0], SHORT_STOCK[1]])

    def arg(x: np.ndarray, dtype: type) -> np.ndarray:  # one compiled signature: C order, writable
        x = np.ascontiguousarray(x, dtype=dtype)
        return x if x.flags.writeable else x.copy()

    b, i, f = np.bool_, np.int64, np.float64
    ints, floats, counts = pair_accounts(
        order, starts, arg(legs.und, i), arg(legs.trk, i), arg(legs.option, b), arg(legs.stock, b),
        arg(legs.future, b), arg(legs.is_call, b), arg(legs.long_, b), arg(legs.short, b), arg(legs.spot, f),
        arg(legs.strike, f), arg(legs.mult, f), arg(legs.mult_code, i), arg(legs.value, f), arg(legs.mv_unit, f),
        arg(legs.exp, i), arg(legs.exp_nat, b), arg(legs.naked_unit, f), arg(legs.sign, f), arg(legs.absq, f),
        arg(stand_i, f), arg(stand_m, f), _STRATEGY_RANK.astype(np.int64), rates, _REL_TOL, _MIN_SAVING,
        capacity=capacity,
    )  # fmt: skip
    empty_pair_part = bool(((counts[:3] > 0) & (counts[3:6] == 0)).any())
    # the most candidates one pass of one account ranked, and that account's first leg
    legs.largest_pass = (int(counts[7]), int(order[starts[counts[8]]]) if counts[7] else 0)
    rows = (ints[:, 0].copy(), ints[:, 1].copy(), ints[:, 2].copy(),
            floats[:, 0].copy(), floats[:, 1].copy(), floats[:, 2].copy())  # fmt: skip
    return rows, empty_pair_part, int(counts[6])


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
            f"market: underlying {positions['underlying'].iloc[row]!r} has product_group "
            f"{positions['product_group'].iloc[row]!r}, which has no Reg T naked-option rate (position "
            f"{pid_arr[row].as_py()!r} is an option on it); give the underlying one of {sorted(NAKED_PCT)} "
            "in the market file (SPEC 5.3)"
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


def _accounts_frame(legs: SimpleNamespace, rows: tuple[np.ndarray, ...]) -> pd.DataFrame:
    """Per account (sorted), the sums of its rows' requirements in row order (``rows`` of :func:`_sorted_rows`)."""
    leg, ri, rm = rows[0], rows[4], rows[5]
    sums = group_sum(legs.acct[leg], np.column_stack([ri, rm]), legs.n_acc)
    return pd.DataFrame({
        "account_id": str_column(legs.acct_names, False),
        "regt_initial": sums[:, 0], "regt_maintenance": sums[:, 1],
    })  # fmt: skip


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
