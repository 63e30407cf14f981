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

from ._backend import Backend
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


_KINDS = np.array(["stock", "option", "future"])


def kind_array(pos: pd.DataFrame) -> np.ndarray:
    """The ``kind`` column as a NumPy string array (from the ``_kind`` codes of a prepared book).

    Comparing NumPy strings needs no Python objects (the column itself is
    Arrow-backed: ``to_numpy()`` would build one Python string per row).
    """
    if "_kind" in pos.columns:
        return _KINDS[pos["_kind"].to_numpy()]
    return pos["kind"].to_numpy(dtype=object).astype(str)


def _codes(s: pd.Series, sort: bool = True) -> np.ndarray:
    return pd.factorize(s, sort=sort)[0].astype(np.int64)


def _runs(*keys: np.ndarray) -> np.ndarray:
    """Run ids (0, 1, 2, ...) of sorted key columns: a new id wherever any key changes."""
    n = keys[0].shape[0]
    change = np.zeros(n, dtype=bool)
    if n:
        change[0] = True
        for k in keys:
            change[1:] |= k[1:] != k[:-1]
    return np.cumsum(change) - 1


def prepare_book(pos: pd.DataFrame, und_names: np.ndarray) -> Book:
    """Sort and index validated positions (SPEC 3 columns as produced by validation).

    Positions are ordered by account, product group, underlying and position id
    (integer codes and one ``lexsort``, no string sorts); classes and groups are
    runs of that order; option contracts are deduplicated on their pricing
    inputs.
    """
    acc, pg, und, pid = (_codes(pos[c]) for c in ("account_id", "product_group", "underlying", "position_id"))
    order = np.lexsort((pid, und, pg, acc))
    pos = pos.take(order).reset_index(drop=True)
    acc, pg, und = acc[order], pg[order], und[order]
    cls_codes = _runs(acc, pg, und)
    grp_codes = _runs(acc, pg)
    first_cls = np.flatnonzero(np.r_[True, np.diff(cls_codes) != 0]) if len(pos) else np.zeros(0, np.int64)
    first_grp = np.flatnonzero(np.r_[True, np.diff(grp_codes) != 0]) if len(pos) else np.zeros(0, np.int64)
    classes = pos.loc[first_cls, ["account_id", "product_group", "underlying"]].reset_index(drop=True)
    groups = pos.loc[first_grp, ["account_id", "product_group"]].reset_index(drop=True)
    accounts = pos["account_id"].to_numpy(dtype=object)[
        np.flatnonzero(np.r_[True, np.diff(acc) != 0])] if len(pos) else np.zeros(0, dtype=object)
    kind_code = pd.Index(_KINDS).get_indexer(pos["kind"]).astype(np.int8)  # validated: one of the three
    is_opt = kind_code == 1
    und_index = pd.Index(und_names)
    opt = pos.loc[is_opt, CONTRACT_KEY]
    # distinct contracts: combine per-column hash codes (first-appearance order: deterministic)
    ccodes = np.zeros(len(opt), dtype=np.int64)
    for col in CONTRACT_KEY:
        col_codes, uniques = pd.factorize(opt[col])
        ccodes = pd.factorize(ccodes * (len(uniques) + 1) + col_codes)[0]
    first = pd.Series(np.arange(len(opt))).groupby(ccodes, sort=True).first().to_numpy() if len(opt) \
        else np.zeros(0, np.int64)
    contract_idx = np.full(len(pos), -1, dtype=np.int64)
    contract_idx[is_opt] = ccodes
    contracts = opt.iloc[first].reset_index(drop=True)
    pos = pos.assign(
        _acc=_runs(acc).astype(np.int64),
        _cls=cls_codes.astype(np.int64),
        _grp=grp_codes.astype(np.int64),
        _con=contract_idx,
        _kind=kind_code,
        _und=und_index.get_indexer(pos["underlying"]).astype(np.int64),
    )
    contracts = contracts.assign(_und=und_index.get_indexer(contracts["underlying"]).astype(np.int64))
    return Book(pos, np.asarray(accounts, dtype=object), classes, groups, contracts, und_names)


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
    move = np.concatenate([table.price_move, np.zeros((k, 1))], axis=1)
    vols = np.concatenate([table.vol_shock, np.zeros((k, 1))], axis=1)
    v = price_grid(
        *args, amer, backend.asarray(move), backend.asarray(vols),
        shock_row=backend.asarray(c["_und"].to_numpy(np.int64)), vol_mode=table.vol_mode,
    )
    return v[:, m], v[:, :m]


def position_pnl(book: Book, table: ScenarioTable, v0: Any, v: Any, backend: Backend) -> Any:
    """P/L of every position under every scenario, ``(n_positions, m)``, coverage applied."""
    xp = backend.xp
    p = book.pos
    kind = kind_array(p)
    size = backend.asarray((p["quantity"] * p["multiplier"]).to_numpy(np.float64))
    und = backend.asarray(p["_und"].to_numpy(np.int64))
    move = xp.take(backend.asarray(table.price_move), und, axis=0)
    cover = xp.take(backend.asarray(table.coverage), und, axis=0)
    # linear instruments: stock moves with spot, a future with its forward
    fwd = forward_price(p["spot"].to_numpy(np.float64), p["t"].to_numpy(np.float64), p["rate"].to_numpy(np.float64),
                        p["dividend_yield"].to_numpy(np.float64))
    lin_base = np.where(kind == "future", fwd, np.where(kind == "stock", p["spot"].to_numpy(np.float64), 0.0))
    unit = backend.asarray(lin_base)[:, None] * move
    if v is not None and v.shape[0]:
        con = p["_con"].to_numpy(np.int64)
        is_opt = backend.asarray(con >= 0)
        idx = backend.asarray(np.where(con >= 0, con, 0))
        dv = xp.take(v, idx, axis=0) - xp.take(v0, idx)[:, None]
        unit = xp.where(is_opt[:, None], dv, unit)
    return unit * size[:, None] * cover


def _per_group(meth: Methodology, groups: pd.Series, key: str) -> np.ndarray:
    """A group parameter for every row, by mapping the few distinct groups (no loop over rows)."""
    codes, uniques = pd.factorize(groups)
    values = np.array([float(getattr(meth.group(g), key)) for g in uniques], dtype=np.float64)
    return values[codes]


@dataclass
class GridResult:
    """Account and class results, and the device arrays they came from (for liquidation plans)."""

    accounts: pd.DataFrame
    classes: pd.DataFrame
    table: ScenarioTable | None = None
    pnl: Any = None  # (n_positions, m) per-position scenario P/L, coverage applied, book.pos order
    pnl_wide: Any = None  # the same under the concentration re-stress table (None when off)
    wide_table: ScenarioTable | None = None


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
    pnl = position_pnl(book, table, v0, v, backend)
    p = book.pos
    n_cls, n_grp = len(book.classes), len(book.groups)
    cls_ids = backend.asarray(p["_cls"].to_numpy(np.int64))
    class_pnl = segment_sum(pnl, cls_ids, n_cls)  # (n_cls, m)
    cls_und = backend.asarray(pd.Index(book.und_names).get_indexer(book.classes["underlying"]).astype(np.int64))
    valid = xp.take(backend.asarray(table.valid), cls_und, axis=0)
    class_risk, class_worst = _masked_worst(xp, -class_pnl, valid)

    # product-group offsets at each scenario: losses in full, profits at the group's offset
    cls_grp = book.classes.groupby(["account_id", "product_group"], sort=True).ngroup().to_numpy(np.int64)
    offset = _per_group(meth, book.classes["product_group"], "offset")
    offset_d = backend.asarray(offset)[:, None]
    combined = xp.minimum(class_pnl, 0.0) + offset_d * xp.maximum(class_pnl, 0.0)
    cls_grp_d = backend.asarray(cls_grp)
    group_pnl = segment_sum(combined, cls_grp_d, n_grp)
    first_cls = np.unique(cls_grp, return_index=True)[1]
    grp_valid = xp.take(valid, backend.asarray(first_cls.astype(np.int64)), axis=0)
    group_risk, group_worst = _masked_worst(xp, -group_pnl, grp_valid)

    # minimums: per option/future contract, long options capped at market value
    kind = kind_array(p)
    qty = p["quantity"].to_numpy(np.float64)
    mult = p["multiplier"].to_numpy(np.float64)
    minc = _per_group(meth, p["product_group"], "min_charge_per_contract")
    mins = np.where(kind != "stock", minc * mult * np.abs(qty), 0.0)
    long_opt = (kind == "option") & (qty > 0)
    mins = np.where(long_opt, np.minimum(mins, np.abs(p["market_value"].to_numpy(np.float64))), mins)
    class_min = segment_sum(backend.asarray(mins)[:, None], cls_ids, n_cls)[:, 0]
    group_min = segment_sum(class_min[:, None], cls_grp_d, n_grp)[:, 0]
    group_req = xp.maximum(group_risk, group_min)

    # add-ons per class
    opt_size = np.where(kind == "option", qty * mult, 0.0)
    short = segment_sum(backend.asarray(np.where(opt_size < 0, -opt_size, 0.0))[:, None], cls_ids, n_cls)[:, 0]
    long_ = segment_sum(backend.asarray(np.where(opt_size > 0, opt_size, 0.0))[:, None], cls_ids, n_cls)[:, 0]
    spot_cls = backend.asarray(p.groupby("_cls", sort=True)["spot"].first().to_numpy(np.float64))
    rate_cls = backend.asarray(_per_group(meth, book.classes["product_group"], "contingency_rate"))
    contingency = rate_cls * xp.maximum(short - long_, 0.0) * spot_cls

    thr = _per_group(meth, book.classes["product_group"], "concentration_threshold")
    concentration = xp.zeros((n_cls,), dtype=xp.float64)
    pnl_w, wide = None, None
    if np.any(thr > 0):
        wide = grid_table(market, meth, wide=True)
        v0w, vw = option_values(book, wide, backend)
        pnl_w = position_pnl(book, wide, v0w, vw, backend)
        cls_pnl_w = segment_sum(pnl_w, cls_ids, n_cls)
        valid_w = xp.take(backend.asarray(wide.valid), cls_und, axis=0)
        risk_w, _ = _masked_worst(xp, -cls_pnl_w, valid_w)
        cls_acc = pd.Index(book.accounts).get_indexer(book.classes["account_id"])
        nlv_cls = backend.asarray(nlv.reindex(book.accounts).fillna(0.0).to_numpy(np.float64)[cls_acc])
        hit = (backend.asarray(thr) > 0.0) & (class_risk > backend.asarray(thr) * xp.maximum(nlv_cls, 0.0))
        concentration = xp.where(hit, xp.maximum(risk_w - class_risk, 0.0), 0.0)

    # ---- back to host once
    h = {k: to_host(a) for k, a in dict(
        class_risk=class_risk, class_worst=class_worst, class_min=class_min, contingency=contingency,
        concentration=concentration, group_risk=group_risk, group_worst=group_worst, group_min=group_min,
        group_req=group_req).items()}
    cls_und_h = pd.Index(book.und_names).get_indexer(book.classes["underlying"])
    classes = book.classes.assign(
        class_risk=h["class_risk"],
        worst_scenario=table.labels[cls_und_h, h["class_worst"]],
        worst_price_move=table.price_move[cls_und_h, h["class_worst"]],
        worst_vol_shock=table.vol_shock[cls_und_h, h["class_worst"]],
        minimum=h["class_min"],
        contingency=h["contingency"],
        concentration=h["concentration"],
        n_positions=np.bincount(p["_cls"].to_numpy(), minlength=n_cls),
    )
    grp_first_und = cls_und_h[first_cls]
    groups = book.groups.assign(
        group_risk=h["group_risk"], group_minimum=h["group_min"], group_requirement=h["group_req"],
        group_worst=table.labels[grp_first_und, h["group_worst"]],
    )
    classes = classes.merge(groups[["account_id", "product_group", "group_risk", "group_requirement"]],
                            on=["account_id", "product_group"], how="left")
    # account roll-up
    g = groups.groupby("account_id", sort=True)
    idx_max = groups.sort_values(["account_id", "group_requirement"], ascending=[True, False], kind="stable") \
        .drop_duplicates("account_id").set_index("account_id")
    cagg = classes.groupby("account_id", sort=True)[["contingency", "concentration"]].sum()
    acc = pd.DataFrame({"account_id": book.accounts}).set_index("account_id")
    acc["pm_scenario_risk"] = g["group_risk"].sum()
    acc["pm_minimum_excess"] = g["group_requirement"].sum() - acc["pm_scenario_risk"]
    acc["pm_contingency"] = cagg["contingency"]
    acc["pm_concentration"] = cagg["concentration"]
    acc["pm_requirement"] = g["group_requirement"].sum() + acc["pm_contingency"] + acc["pm_concentration"]
    acc["worst_scenario"] = idx_max["product_group"] + ":" + idx_max["group_worst"].astype(str)
    acc.loc[acc["pm_scenario_risk"] <= 0.0, "worst_scenario"] = None
    return GridResult(acc.reset_index(), classes, table, pnl, pnl_w, wide)


def scenario_pnl_by_account(book: Book, table: ScenarioTable, backend: Backend, block: int = 64) -> Any:
    """Account × scenario P/L ``(n_accounts, m)`` with full netting across underlyings (SPEC 5.2).

    Scenarios are valued ``block`` columns at a time, so memory stays bounded
    by ``positions × block`` whatever the number of scenarios.
    """
    xp = backend.xp
    acc = backend.asarray(book.pos["_acc"].to_numpy(np.int64))
    m = table.price_move.shape[1]
    parts = []
    for j0 in range(0, m, block):  # blocks of scenarios (not single scenarios)
        sub = table.columns(slice(j0, min(m, j0 + block)))
        v0, v = option_values(book, sub, backend)
        pnl = position_pnl(book, sub, v0, v, backend)
        parts.append(segment_sum(pnl, acc, len(book.accounts)))
    if not parts:
        return xp.zeros((len(book.accounts), 0), dtype=xp.float64)
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=1)
