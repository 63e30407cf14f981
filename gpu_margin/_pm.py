"""Portfolio margin of a set of whole accounts: the contract × scenario tensor to account results.

Host side (pandas): sort positions by account, product group, underlying; give
every position its class (account × underlying), group (account × product
group) and deduplicated contract. Device side (``xp``): one ``price_grid`` call
for every distinct option contract, position P/L rows gathered from it, class
P/L by segment sums, product-group offsets at each scenario, minimums and
add-ons — no Python loop over accounts, positions or scenarios.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ._backend import Backend
from ._io import is_sorted, run_starts, str_column, strictly_increasing
from ._methodology import Methodology
from ._scenarios import ScenarioTable, grid_table
from .kernels import forward_price, price_grid, segment_sum

CONTRACT_KEY = ["underlying", "is_call", "strike", "t", "american", "vol", "rate", "dividend_yield", "spot"]


@dataclass
class Book:
    """Positions of whole accounts, sorted and indexed for the device."""

    pos: pd.DataFrame  # sorted; columns of the validated frame + value0, market_value, class/group ids
    accounts: np.ndarray  # account ids, sorted
    classes: pd.DataFrame  # account_id, underlying, product_group (one row per class)
    groups: pd.DataFrame  # account_id, product_group (one row per group)
    contracts: pd.DataFrame  # distinct option contracts
    und_names: np.ndarray
    account_ids: pa.Array  # ``accounts`` as Arrow strings (matched without Python string hashing)


_KINDS = np.array(["stock", "option", "future"])
_KIND_CODE = {k: i for i, k in enumerate(_KINDS)}  # the ``_kind`` codes of a prepared book


def kind_array(pos: pd.DataFrame) -> np.ndarray:
    """The ``kind`` column as a NumPy string array (from the ``_kind`` codes of a prepared book).

    Comparing NumPy strings needs no Python objects (the column itself is
    Arrow-backed: ``to_numpy()`` would build one Python string per row).
    """
    if "_kind" in pos.columns:
        return _KINDS[pos["_kind"].to_numpy()]
    return pos["kind"].to_numpy(dtype=object).astype(str)


def _arrow(s: pd.Series) -> pa.Array:
    """A column as one Arrow array (zero-copy for Arrow-backed columns)."""
    arr = pa.array(s, from_pandas=True)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _runs(*starts: np.ndarray) -> np.ndarray:
    """Run ids (0, 1, 2, ...) of sorted rows: a new id wherever any of the keys starts a new run."""
    change = np.logical_or.reduce(starts) if starts[0].size else np.zeros(0, dtype=bool)
    return np.cumsum(change) - 1


def _contract_codes(columns: list[np.ndarray]) -> np.ndarray:
    """Codes of the distinct rows of ``columns`` (equal in every column), in first-appearance order.

    Per-column hash codes are packed into one ``int64`` while the product of
    the columns' cardinalities fits, and re-coded only when it would not.
    """
    n = columns[0].shape[0]
    key = np.zeros(n, dtype=np.int64)
    card = 1
    for col in columns:
        codes, uniques = pd.factorize(col, use_na_sentinel=False)
        k = len(uniques) + 1
        if card * k >= 1 << 62:
            key = pd.factorize(key)[0].astype(np.int64)
            card = int(key.max()) + 1 if n else 1
        key = key * k + codes
        card *= k
    return pd.factorize(key)[0].astype(np.int64)


def _sort_ranks(values: pa.Array) -> tuple[np.ndarray, int]:
    """Order-preserving ``int64`` codes of ``values`` (equal values equal codes, missing last) and their bound."""
    enc = pc.dictionary_encode(values)
    names = enc.dictionary
    n_names = len(names)
    rank = np.empty(n_names + 1, dtype=np.int64)
    rank[pc.sort_indices(names).to_numpy()] = np.arange(n_names, dtype=np.int64)
    rank[n_names] = n_names  # a missing value sorts last, as in Arrow's sort
    return rank[pc.fill_null(enc.indices, n_names).to_numpy(zero_copy_only=False).astype(np.int64)], n_names + 1


def book_order(pos: pd.DataFrame, und_rank: tuple[np.ndarray, int] | None = None) -> tuple[np.ndarray | None,
                                                                                         np.ndarray]:
    """The rows in book order (account, product group, underlying, position id) and each book row's rank
    in (account, position id) order (what Reg T ties and output rows follow).

    Position files are usually written account by account with ids in order
    (one pass over neighbouring rows says so): then both orders come from
    integer keys, the accounts' runs ranked by one sort of the distinct ids,
    with no string sort of the rows. Otherwise Arrow sorts of the strings:
    the four keys (skipped when the rows are in book order already), then
    account and id. The first item is ``None`` when the rows are in book order.
    ``und_rank``: order-preserving codes of every row's underlying and their bound (places in the sorted
    names of the market, which every valid underlying has), used instead of ranking the strings again.
    """
    n = len(pos)
    if n == 0:
        return None, np.zeros(0, np.int64)
    acc, pid = _arrow(pos["account_id"]), _arrow(pos["position_id"])
    new_acc = run_starts(acc)
    run = np.cumsum(new_acc) - 1
    starts = np.flatnonzero(new_acc)
    names = acc.take(pa.array(starts))
    name_order = pc.sort_indices(names).to_numpy()
    sorted_names = names.take(pa.array(name_order))
    fast = acc.null_count == 0 and pid.null_count == 0 and strictly_increasing(sorted_names)  # one run each
    if fast and n > 1:  # ids increase within every run
        later = pc.less(pid.slice(0, n - 1), pid.slice(1)).to_numpy(zero_copy_only=False)
        fast = bool(np.all(later | new_acc[1:]))
    if fast:
        acc_rank = np.empty(starts.size, dtype=np.int64)
        acc_rank[name_order] = np.arange(starts.size, dtype=np.int64)
        acc_code = acc_rank[run]
        pg, n_pg = _sort_ranks(_arrow(pos["product_group"]))
        und, n_und = und_rank if und_rank is not None else _sort_ranks(_arrow(pos["underlying"]))
        if starts.size * n_pg * n_und * n < 1 << 62:
            rows = np.arange(n, dtype=np.int64)  # the id order within an account
            order = np.argsort(((acc_code * n_pg + pg) * n_und + und) * n + rows)
            # rows in (account, id) order: as they come when the accounts do (ids increase within each)
            in_acc_pid = rows if bool(np.all(acc_code[1:] >= acc_code[:-1])) else np.argsort(acc_code * n + rows)
            back = np.empty(n, dtype=np.int64)
            back[order] = rows  # each row's place in the book
            pid_rank = np.empty(n, dtype=np.int64)
            pid_rank[back[in_acc_pid]] = rows
            return (None if np.array_equal(order, rows) else order), pid_rank
    key_cols = ("account_id", "product_group", "underlying", "position_id")
    keys = pa.table({c: _arrow(pos[c]) for c in key_cols})
    order = None if is_sorted(keys, list(key_cols)) else \
        pc.sort_indices(keys, sort_keys=[(c, "ascending") for c in key_cols]).to_numpy().astype(np.int64)
    acc_pid = pa.table({"a": acc, "p": pid}) if order is None else \
        pa.table({"a": acc.take(pa.array(order)), "p": pid.take(pa.array(order))})
    by_pid = pc.sort_indices(acc_pid, sort_keys=[("a", "ascending"), ("p", "ascending")]).to_numpy()
    pid_rank = np.empty(n, dtype=np.int64)
    pid_rank[by_pid] = np.arange(n, dtype=np.int64)
    return order, pid_rank


def prepare_book(pos: pd.DataFrame, und_names: np.ndarray) -> Book:
    """Sort and index validated positions (SPEC 3 columns as produced by validation).

    Positions are ordered by account, product group, underlying and position id
    (:func:`book_order`); classes and groups are runs of that order; option
    contracts are deduplicated on their pricing inputs. ``_pid_rank`` is each
    row's place in (account, position id) order. ``und_names``: the market's
    underlyings in ascending order (``np.sort``, as :func:`gpu_margin._compute.margin_frames`
    passes them); ``_und`` is each row's place among them (-1: not there).
    """
    n = len(pos)
    key_cols = ("account_id", "product_group", "underlying", "position_id")
    # each row's underlying as its place in the market's sorted names (-1: not there), coded once: it
    # orders the book and is the contracts' and the scenarios' underlying code
    names = np.asarray(und_names, dtype=object)
    und = pc.index_in(_arrow(pos["underlying"]), value_set=pa.array(names, type=pa.string()))
    und = pc.fill_null(und, -1).to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
    # codes order the rows as the names do when every row has one and the names ascend (then equal codes
    # are equal names); otherwise the names themselves are ranked
    known = bool(n) and int(und.min()) >= 0 and bool(np.all(names[1:] > names[:-1]))
    order, pid_rank = book_order(pos, (und, len(und_names)) if known else None)
    pos = (pos if order is None else pos.take(order)).reset_index(drop=True)
    und = und if order is None else und[order]
    skeys = {c: _arrow(pos[c]) for c in key_cols[:2]}  # the sorted keys (zero-copy from Arrow-backed columns)
    acc_new, pg_new = (run_starts(skeys[c]) for c in key_cols[:2])
    und_new = np.r_[True, und[1:] != und[:-1]] if known else run_starts(_arrow(pos["underlying"]))
    cls_codes = _runs(acc_new, pg_new, und_new)
    grp_codes = _runs(acc_new, pg_new)
    first_cls = np.flatnonzero(acc_new | pg_new | und_new)
    first_grp = np.flatnonzero(acc_new | pg_new)
    classes = pos.loc[first_cls, ["account_id", "product_group", "underlying"]].reset_index(drop=True)
    groups = pos.loc[first_grp, ["account_id", "product_group"]].reset_index(drop=True)
    account_ids = skeys["account_id"].take(pa.array(np.flatnonzero(acc_new)))
    accounts = account_ids.to_numpy(zero_copy_only=False).astype(object)
    # validated: every kind is one of the three
    kind_code = pc.index_in(_arrow(pos["kind"]), value_set=pa.array(_KINDS)).to_numpy(zero_copy_only=False)
    kind_code = kind_code.astype(np.int8)
    is_opt = kind_code == 1
    # distinct contracts on their pricing inputs (the underlying by its code)
    opt_rows = np.flatnonzero(is_opt)
    ccodes = _contract_codes([und[opt_rows]] + [pos[c].to_numpy()[opt_rows] for c in CONTRACT_KEY[1:]])
    first = np.zeros(int(ccodes.max()) + 1 if ccodes.size else 0, np.int64)  # each contract's first row
    first[ccodes[::-1]] = np.arange(ccodes.size - 1, -1, -1)
    contract_idx = np.full(n, -1, dtype=np.int64)
    contract_idx[opt_rows] = ccodes
    contracts = pos.loc[opt_rows[first], CONTRACT_KEY].reset_index(drop=True)
    pos = pos.assign(
        _acc=_runs(acc_new).astype(np.int64),
        _cls=cls_codes.astype(np.int64),
        _grp=grp_codes.astype(np.int64),
        _con=contract_idx,
        _kind=kind_code,
        _und=und,
        _pid_rank=pid_rank,
    )
    contracts = contracts.assign(_und=und[opt_rows[first]])
    return Book(pos, np.asarray(accounts, dtype=object), classes, groups, contracts, und_names, account_ids)


def option_values(book: Book, table: ScenarioTable | None, backend: Backend) -> tuple[Any, Any]:
    """``(V0 (c,), V (c, m))`` per unit for every distinct option contract, on the device.

    One ``price_grid`` call: the base value is an extra zero-shock column, so an
    American contract's exercise boundary is solved once for both.
    """
    c = book.contracts
    args = [backend.asarray(c[col].to_numpy(dtype=dt)) for col, dt in (
        ("is_call", bool), ("spot", np.float64), ("strike", np.float64), ("t", np.float64),
        ("vol", np.float64), ("rate", np.float64), ("dividend_yield", np.float64))]
    amer = backend.asarray(c["american"].to_numpy(dtype=bool))
    if table is None:
        zero = backend.asarray(np.zeros((1, 1)))
        return price_grid(*args, amer, zero, zero)[:, 0], None
    k, m = table.price_move.shape
    move = backend.asarray(np.concatenate([table.price_move, np.zeros((k, 1))], axis=1))
    vols = backend.asarray(np.concatenate([table.vol_shock, np.zeros((k, 1))], axis=1))
    row = c["_und"].to_numpy(np.int64)
    if isinstance(table.vol_mode, str) or row.size == 0:
        mode = table.vol_mode if isinstance(table.vol_mode, str) else "relative"  # (no contract: either mode)
        v = price_grid(*args, amer, move, vols, shock_row=backend.asarray(row), vol_mode=mode)
        return v[:, m], v[:, :m]
    # product groups with different vol shock modes: one call per mode, the rows put back in contract order
    # (a contract's values never depend on the other contracts of the call)
    xp = backend.xp
    contract_mode = np.asarray(table.vol_mode, dtype=object)[row]
    parts, order = [], []
    for mode in ("relative", "absolute"):
        idx = np.flatnonzero(contract_mode == mode)
        if idx.size:
            take = backend.asarray(idx)
            parts.append(price_grid(*(xp.take(a, take, axis=0) for a in args), xp.take(amer, take, axis=0), move,
                                    vols, shock_row=backend.asarray(row[idx]), vol_mode=mode))
            order.append(idx)
    back = np.empty(row.size, dtype=np.int64)
    back[np.concatenate(order)] = np.arange(row.size, dtype=np.int64)
    v = xp.take(xp.concat(parts, axis=0), backend.asarray(back), axis=0)
    return v[:, m], v[:, :m]


def position_pnl(book: Book, table: ScenarioTable, v0: Any, v: Any, backend: Backend,
                 rows: np.ndarray | None = None) -> Any:
    """P/L of every position (or of the positions ``rows``) under every scenario, ``(n, m)``, coverage applied."""
    xp = backend.xp
    con, und_h, lin_base, size_h = _pnl_inputs(book, rows)
    size = backend.asarray(size_h)
    und = backend.asarray(und_h)
    move = xp.take(backend.asarray(table.price_move), und, axis=0)
    cover = xp.take(backend.asarray(table.coverage), und, axis=0)
    unit = backend.asarray(lin_base)[:, None] * move
    if v is not None and v.shape[0]:
        is_opt = backend.asarray(con >= 0)
        idx = backend.asarray(np.where(con >= 0, con, 0))
        dv = xp.take(v, idx, axis=0) - xp.take(v0, idx)[:, None]
        unit = xp.where(is_opt[:, None], dv, unit)
    return unit * size[:, None] * cover


def _pnl_inputs(book: Book, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per position: contract (-1: not an option), underlying code, linear base value, size (quantity × multiplier).

    The linear base is what a unit moves with: a stock's spot, a future's
    forward, 0 for an option.
    """
    p = book.pos if rows is None else book.pos.iloc[rows]
    kind = p["_kind"].to_numpy()
    spot = p["spot"].to_numpy(np.float64)
    fwd = forward_price(spot, p["t"].to_numpy(np.float64), p["rate"].to_numpy(np.float64),
                        p["dividend_yield"].to_numpy(np.float64))
    lin_base = np.where(kind == _KIND_CODE["future"], fwd, np.where(kind == _KIND_CODE["stock"], spot, 0.0))
    size = p["quantity"].to_numpy(np.float64) * p["multiplier"].to_numpy(np.float64)
    return p["_con"].to_numpy(np.int64), p["_und"].to_numpy(np.int64), lin_base, size


def class_pnl(book: Book, table: ScenarioTable, v0: Any, v: Any, backend: Backend, n_cls: int,
              by: str = "_cls") -> Any:
    """Scenario P/L per class ``(n_cls, m)``: the positions' P/L summed by class (``_cls``, or ``_acc``
    for accounts: any sorted code column of the book).

    On NumPy with Numba, one fused pass that never holds the ``(n_positions,
    m)`` P/L (the same numbers, bit for bit); elsewhere the P/L is built and
    segment-summed.
    """
    from array_api_compat import is_numpy_namespace  # noqa: PLC0415

    from .kernels._fused_cpu import HAVE_NUMBA  # noqa: PLC0415

    cls = book.pos[by].to_numpy(np.int64)
    if HAVE_NUMBA and is_numpy_namespace(backend.xp):
        from .kernels._fused_cpu import pnl_segment_sum_fused  # noqa: PLC0415

        con, und, lin_base, size = _pnl_inputs(book, None)
        has_v = v is not None and v.shape[0]
        vv = np.asarray(v, dtype=np.float64) if has_v else np.zeros((0, table.price_move.shape[1]))
        vv0 = np.asarray(v0, dtype=np.float64) if has_v else np.zeros(0)
        return pnl_segment_sum_fused(con if has_v else np.full(con.size, -1), und, lin_base, size, vv, vv0,
                                     table.price_move, table.coverage, cls, n_cls)
    return segment_sum(position_pnl(book, table, v0, v, backend), backend.asarray(cls), n_cls)


@dataclass
class GridResult:
    """Account and class results, and what per-position scenario P/L is made of (for liquidation plans)."""

    accounts: pd.DataFrame
    classes: pd.DataFrame
    table: ScenarioTable | None = None
    wide_table: ScenarioTable | None = None  # the concentration re-stress table (None when off)
    book: Book | None = None
    backend: Backend | None = None  # the device the values below live on
    values: tuple[Any, Any] | None = None  # (V0, V) per contract under ``table``
    wide_values: tuple[Any, Any] | None = None  # (V0, V) under ``wide_table``

    def pnl(self, rows: np.ndarray, backend: Backend, wide: bool = False) -> Any:
        """Scenario P/L of the book positions ``rows`` ``(len(rows), m)``, coverage applied, on ``backend``.

        Built on demand for the rows asked for (the called accounts'), not
        kept for the whole book; ``wide`` for the concentration re-stress.
        """
        table, values = (self.wide_table, self.wide_values) if wide else (self.table, self.values)
        pnl = position_pnl(self.book, table, *values, self.backend, rows)
        return pnl if backend is self.backend else backend.asarray(self.backend.to_host(pnl))


def require_finite(risk: np.ndarray, where: Any) -> None:
    """Stop with a one-line error when a loss is not a finite number: NaN would otherwise become a zero
    requirement. ``where(i)`` names the ``i``-th entry (an account, a class)."""
    bad = np.flatnonzero(~np.isfinite(risk))
    if bad.size:
        from ._exceptions import UserInputError  # noqa: PLC0415

        raise UserInputError(
            f"{where(int(bad[0]))}: the largest loss over the scenarios is not a finite number ({risk[bad[0]]}; "
            f"{bad.size} such in all), so no requirement can be computed; check the market row of the "
            "underlying (spot, vol, dividend_yield) and the methodology's ranges")


def _masked_worst(xp: Any, loss: Any, valid: Any) -> tuple[Any, Any]:
    """Largest loss over valid scenarios (floored at 0) and its column."""
    masked = xp.where(valid, loss, -xp.inf)
    worst = xp.argmax(masked, axis=1)
    return xp.maximum(xp.max(masked, axis=1), 0.0), worst


def grid_margin(book: Book, market: pd.DataFrame, meth: Methodology, nlv: pd.Series, backend: Backend,
                values: tuple[Any, Any, ScenarioTable] | None = None) -> GridResult:
    """The grid methodology (SPEC 5.1) for every account of ``book``.

    ``values`` is ``(V0, V, table)`` from :func:`option_values` when the caller
    has priced the grid already.
    """
    xp = backend.xp
    to_host = backend.to_host
    if values is None:
        table = grid_table(market, meth)
        v0, v = option_values(book, table, backend)
    else:
        v0, v, table = values
    p = book.pos
    n_cls, n_grp = len(book.classes), len(book.groups)
    cls_h = p["_cls"].to_numpy(np.int64)
    cls_first = np.flatnonzero(np.r_[True, cls_h[1:] != cls_h[:-1]]) if cls_h.size else np.zeros(0, np.int64)
    cls_ids = backend.asarray(cls_h)
    cls_pnl = class_pnl(book, table, v0, v, backend, n_cls)  # (n_cls, m)
    cls_und_h = p["_und"].to_numpy(np.int64)[cls_first]
    valid = xp.take(backend.asarray(table.valid), backend.asarray(cls_und_h), axis=0)
    class_risk, class_worst = _masked_worst(xp, -cls_pnl, valid)
    # the methodology's parameters by class (the few distinct product groups looked up once)
    pg_code, pg_names = pd.factorize(book.classes["product_group"])

    def per_class(key: str) -> np.ndarray:
        return np.array([float(getattr(meth.group(g), key)) for g in pg_names], dtype=np.float64)[pg_code]

    # product-group offsets at each scenario: losses in full, profits at the group's offset
    cls_grp = p["_grp"].to_numpy(np.int64)[cls_first]
    offset_d = backend.asarray(per_class("offset"))[:, None]
    combined = xp.minimum(cls_pnl, 0.0) + offset_d * xp.maximum(cls_pnl, 0.0)
    cls_grp_d = backend.asarray(cls_grp)
    group_pnl = segment_sum(combined, cls_grp_d, n_grp)
    grp_first_cls = np.flatnonzero(np.r_[True, cls_grp[1:] != cls_grp[:-1]]) if n_cls else np.zeros(0, np.int64)
    grp_valid = xp.take(valid, backend.asarray(grp_first_cls), axis=0)
    group_risk, group_worst = _masked_worst(xp, -group_pnl, grp_valid)

    # minimums: per option/future contract, long options capped at market value
    kind = p["_kind"].to_numpy()
    is_stock, is_opt = kind == _KIND_CODE["stock"], kind == _KIND_CODE["option"]
    qty = p["quantity"].to_numpy(np.float64)
    mult = p["multiplier"].to_numpy(np.float64)
    minc = per_class("min_charge_per_contract")[cls_h]
    mins = np.where(~is_stock, minc * mult * np.abs(qty), 0.0)
    long_opt = is_opt & (qty > 0)
    mins = np.where(long_opt, np.minimum(mins, np.abs(p["market_value"].to_numpy(np.float64))), mins)
    class_min = segment_sum(backend.asarray(mins)[:, None], cls_ids, n_cls)[:, 0]
    group_min = segment_sum(class_min[:, None], cls_grp_d, n_grp)[:, 0]
    group_req = xp.maximum(group_risk, group_min)

    # add-ons per class
    opt_size = np.where(is_opt, qty * mult, 0.0)
    short = segment_sum(backend.asarray(np.where(opt_size < 0, -opt_size, 0.0))[:, None], cls_ids, n_cls)[:, 0]
    long_ = segment_sum(backend.asarray(np.where(opt_size > 0, opt_size, 0.0))[:, None], cls_ids, n_cls)[:, 0]
    spot_cls = backend.asarray(p["spot"].to_numpy(np.float64)[cls_first])
    rate_cls = backend.asarray(per_class("contingency_rate"))
    contingency = rate_cls * xp.maximum(short - long_, 0.0) * spot_cls

    thr = per_class("concentration_threshold")
    concentration = xp.zeros((n_cls,), dtype=xp.float64)
    wide, wide_values = None, None
    cls_acc = p["_acc"].to_numpy(np.int64)[cls_first]
    if np.any(thr > 0):
        wide = grid_table(market, meth, wide=True)
        wide_values = option_values(book, wide, backend)
        cls_pnl_w = class_pnl(book, wide, *wide_values, backend, n_cls)
        valid_w = xp.take(backend.asarray(wide.valid), backend.asarray(cls_und_h), axis=0)
        risk_w, _ = _masked_worst(xp, -cls_pnl_w, valid_w)
        nlv_cls = backend.asarray(nlv.reindex(book.accounts).fillna(0.0).to_numpy(np.float64)[cls_acc])
        hit = (backend.asarray(thr) > 0.0) & (class_risk > backend.asarray(thr) * xp.maximum(nlv_cls, 0.0))
        concentration = xp.where(hit, xp.maximum(risk_w - class_risk, 0.0), 0.0)

    # ---- back to host once
    h = {k: to_host(a) for k, a in dict(
        class_risk=class_risk, class_worst=class_worst, class_min=class_min, contingency=contingency,
        concentration=concentration, group_risk=group_risk, group_worst=group_worst, group_min=group_min,
        group_req=group_req).items()}
    cls_names = book.classes
    for key in ("class_risk", "concentration"):  # group risks are sums of class P/L: finite when these are
        require_finite(h[key], lambda i: f"account {cls_names['account_id'].iloc[i]}, "
                                         f"underlying {cls_names['underlying'].iloc[i]}")
    # scenario names by index into the table's (k, m) names: no Python string per class or account
    names = pa.array(table.labels.ravel(), type=pa.string())
    m_cols = table.labels.shape[1]

    def label_of(und_row: np.ndarray, worst_col: np.ndarray) -> pa.Array:
        return names.take(pa.array(und_row.astype(np.int64) * m_cols + worst_col.astype(np.int64)))

    classes = book.classes.assign(
        class_risk=h["class_risk"],
        worst_scenario=str_column(label_of(cls_und_h, h["class_worst"])) if n_cls else np.zeros(0, object),
        worst_price_move=table.price_move[cls_und_h, h["class_worst"]],
        worst_vol_shock=table.vol_shock[cls_und_h, h["class_worst"]],
        minimum=h["class_min"],
        contingency=h["contingency"],
        concentration=h["concentration"],
        n_positions=np.bincount(cls_h, minlength=n_cls),
        group_risk=h["group_risk"][cls_grp],
        group_requirement=h["group_req"][cls_grp],
    )

    # account roll-up: groups and classes are in account order
    grp_acc = cls_acc[grp_first_cls]
    n_acc = len(book.accounts)
    risk = _sum_runs(h["group_risk"], grp_acc, n_acc)
    greq = _sum_runs(h["group_req"], grp_acc, n_acc)
    cont = _sum_runs(h["contingency"], cls_acc, n_acc)
    conc = _sum_runs(h["concentration"], cls_acc, n_acc)
    # the account's worst scenario: that of its group with the largest requirement (the first on ties)
    top = _first_max_of_runs(h["group_req"], grp_acc)
    grp_pg = _arrow(book.groups["product_group"]).take(pa.array(top))
    label = label_of(cls_und_h[grp_first_cls][top], h["group_worst"][top]).cast(grp_pg.type)
    worst = pc.binary_join_element_wise(grp_pg, label, pa.scalar(":", grp_pg.type))  # "product_group:scenario"
    worst = pc.if_else(pa.array(risk > 0.0), worst, pa.scalar(None, worst.type))  # none without risk
    acc = pd.DataFrame({
        "account_id": book.accounts, "pm_scenario_risk": risk, "pm_minimum_excess": greq - risk,
        "pm_contingency": cont, "pm_concentration": conc, "pm_requirement": greq + cont + conc,
        # (an object column of None when no account has any risk, as pandas makes of the None values)
        "worst_scenario": str_column(worst) if np.any(risk > 0.0) else np.full(n_acc, None, dtype=object),
    })  # fmt: skip
    return GridResult(acc, classes, table, wide, book, backend, (v0, v), wide_values)


def _first_max_of_runs(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For each run of equal ``ids`` (sorted), the index of its largest value, the first on ties; NaN
    counts below any number (a run of NaN only gives its first). No sort: a max and a min per run."""
    n = values.size
    if n == 0:
        return np.zeros(0, np.int64)
    new = np.r_[True, ids[1:] != ids[:-1]]
    starts = np.flatnonzero(new)
    run = np.cumsum(new) - 1
    top = np.fmax.reduceat(values, starts)[run]  # NaN only where the whole run is NaN
    hit = (values == top) | (np.isnan(values) & np.isnan(top))
    return np.minimum.reduceat(np.where(hit, np.arange(n), n), starts)


def _sum_runs(values: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """Sums of ``values`` by ``ids`` (sorted ascending, every id in ``0..n-1`` present), ``(n,)``."""
    if n == 0:
        return np.zeros(0)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return np.add.reduceat(values, starts)


def scenario_pnl_by_account(book: Book, table: ScenarioTable, backend: Backend, block: int = 64) -> Any:
    """Account × scenario P/L ``(n_accounts, m)`` with full netting across underlyings (SPEC 5.2).

    Scenarios are valued ``block`` columns at a time, so memory stays bounded
    by ``contracts × block`` (and, off the fused CPU path, ``positions × block``)
    whatever the number of scenarios.
    """
    xp = backend.xp
    m = table.price_move.shape[1]
    parts = []
    for j0 in range(0, m, block):  # blocks of scenarios (not single scenarios)
        sub = table.columns(slice(j0, min(m, j0 + block)))
        v0, v = option_values(book, sub, backend)
        parts.append(class_pnl(book, sub, v0, v, backend, len(book.accounts), by="_acc"))
    if not parts:
        return xp.zeros((len(book.accounts), 0), dtype=xp.float64)
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=1)
