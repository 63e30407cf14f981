"""``gpu_margin.compute``: in-memory frames in, the result tables of SPEC section 7 out."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ._backend import Backend, select_backend
from ._io import arrow_strings, positions_in
from ._methodology import Methodology, load_methodology
from ._pm import Book, grid_margin, kind_array, option_values, prepare_book, require_finite, scenario_pnl_by_account
from ._scenarios import check_scenarios, grid_table, joint_table
from ._schema import VALID_COLUMN_NAMES

#: The validated columns margin_frames and the calls and plans read: the valid frame without the input's
#: file and row, its right and style (as is_call and american), iv and the vols' sources (as vol), and
#: extra input columns. What the pipeline asks validation for (compute() returns the whole frame).
ENGINE_COLUMNS = tuple(c for c in VALID_COLUMN_NAMES
                       if c not in ("source", "row", "right", "style", "iv", "vol_market", "vol_source"))


def value_positions(book: Book, backend: Backend, v0: Any = None) -> pd.DataFrame:
    """Add ``value0`` (model value per unit) and ``market_value`` (signed, for NLV) to the book.

    ``v0``: the contracts' base values when already priced (device array).
    """
    p = book.pos
    if v0 is None:
        v0, _ = option_values(book, None, backend)
    v0_h = backend.to_host(v0)
    con = p["_con"].to_numpy(np.int64)
    kind = kind_array(p)
    value0 = np.where(con >= 0, v0_h[np.where(con >= 0, con, 0)] if v0_h.size else 0.0,
                      np.where(kind == "stock", p["spot"].to_numpy(np.float64), 0.0))
    mark = p["mark"].to_numpy(np.float64)
    unit = np.where(np.isnan(mark), value0, mark)
    mv = np.where(kind == "future", 0.0, p["quantity"].to_numpy(np.float64) * p["multiplier"].to_numpy(np.float64) * unit)
    book.pos = p.assign(value0=value0, value=unit, market_value=mv)
    return book.pos


def compute(
    positions: pd.DataFrame,
    market: pd.DataFrame,
    accounts: pd.DataFrame | None = None,
    *,
    asof: Any,
    rate: float,
    methodology: str | Methodology = "finra",
    device: str | Backend = "auto",
    scenarios: pd.DataFrame | None = None,
    multipliers: tuple[float, ...] = (1.0,),
    source: str = "positions",
    due_days: int = 1,
) -> dict[str, pd.DataFrame]:
    """Margin every account of in-memory frames (SPEC section 9).

    Returns the result tables of SPEC section 7 as pandas frames: ``accounts``,
    ``classes``, ``rejects``, ``regt_legs`` (the Reg T strategy of every leg),
    ``positions`` (the valid positions with model values), ``margin_calls``
    (due ``due_days`` NYSE sessions after ``asof``), ``liquidation``, and
    ``scenario_pnl`` for a ``scenarios`` methodology.
    """
    from ._validate import as_date, validate_accounts, validate_market, validate_positions  # noqa: PLC0415

    day = as_date(asof)  # a bad date is a one-line JobError, before any work
    backend = select_backend(device) if isinstance(device, str) else device
    meth = methodology if isinstance(methodology, Methodology) else load_methodology(methodology)
    market = validate_market(market, source="market")
    if accounts is None:
        accounts = pd.DataFrame({"account_id": pd.Series(dtype=str), "cash": pd.Series(dtype=float),
                                 "account_type": pd.Series(dtype=str)})
    acc = validate_accounts(accounts, source="accounts")
    valid, rejects = validate_positions(positions, market, asof=day, rate=rate, source=source)
    if scenarios is not None:
        scenarios = check_scenarios(scenarios, "scenarios")
    res = margin_frames(valid, rejects, market, acc, meth, backend, scenarios=scenarios, multipliers=multipliers)
    from ._calls import margin_calls_and_plans  # noqa: PLC0415

    res["margin_calls"], res["liquidation"] = margin_calls_and_plans(
        res, meth, backend, asof=day, due_days=due_days)
    from ._regt import legs_frame  # noqa: PLC0415

    res["regt_legs"] = legs_frame(res["regt_legs"], res["_regt_prepared"])  # the frame regt_requirements gives
    if "_scenario_pnl" in res:
        res["scenario_pnl"] = res["_scenario_pnl"].frame()
    return {k: v for k, v in res.items() if not k.startswith("_")}


def margin_frames(
    valid: pd.DataFrame,
    rejects: pd.DataFrame,
    market: pd.DataFrame,
    acc: pd.DataFrame,
    meth: Methodology,
    backend: Backend,
    *,
    scenarios: pd.DataFrame | None = None,
    multipliers: tuple[float, ...] = (1.0,),
    account_ids: Any = None,
) -> dict[str, pd.DataFrame]:
    """The result tables for validated positions of whole accounts (one partition, or a whole book).

    ``account_ids`` restricts the accounts reported (a partition reports its own
    accounts; ``None`` = every account of positions, rejects and ``acc``).
    The tables are pandas frames except ``regt_legs``, the Arrow table of the
    ``regt_legs`` output (:func:`gpu_margin._regt.regt_tables`).
    """
    und_names = np.sort(market["underlying"].to_numpy(dtype=object))
    book = prepare_book(valid, und_names)
    grid_values = None
    if meth.kind == "grid":
        table = grid_table(market, meth)
        v0, v = option_values(book, table, backend)
        grid_values = (v0, v, table)
        value_positions(book, backend, v0)
    else:
        value_positions(book, backend)
    p = book.pos

    if account_ids is None:
        account_ids = set(book.accounts) | set(acc["account_id"]) | set(rejects["account_id"].dropna())
    # the reported accounts, sorted; ids are matched in Arrow (hashes of the bytes, no Python strings)
    ids_pa = arrow_strings(list(account_ids) if isinstance(account_ids, set) else account_ids)
    ids_pa = pc.unique(ids_pa)
    ids_pa = ids_pa.take(pc.sort_indices(ids_pa))
    all_ids = pd.Index(ids_pa.to_numpy(zero_copy_only=False), name="account_id", dtype=object)
    acc_i = acc.drop_duplicates("account_id")
    at = positions_in(ids_pa, acc_i["account_id"])  # -1: not in the accounts file
    cash = pd.Series(_pick(acc_i["cash"].to_numpy(np.float64), at, np.nan), index=all_ids).fillna(0.0)
    atype = pd.Series(_pick(acc_i["account_type"].to_numpy(dtype=object), at, None), index=all_ids,
                      dtype=acc_i["account_type"].dtype).fillna("portfolio")
    # per book account (positions are sorted by account: sums of runs), then on every reported account
    held = positions_in(ids_pa, book.account_ids)
    acc_code = p["_acc"].to_numpy()
    acc_runs = np.flatnonzero(np.r_[True, acc_code[1:] != acc_code[:-1]]) if len(p) else np.zeros(0, np.int64)
    mv_acc = np.add.reduceat(p["market_value"].to_numpy(np.float64), acc_runs) if len(p) else np.zeros(0)
    n_pos = np.diff(np.r_[acc_runs, len(p)])
    nlv = cash + _pick(mv_acc, held, 0.0)

    out: dict[str, pd.DataFrame] = {}
    if meth.kind == "grid":
        res = grid_margin(book, market, meth, nlv, backend, values=grid_values)
        ra = res.accounts  # one row per book account, in book order
        pm = {c: _pick(ra[c].to_numpy(), held, np.nan if c != "worst_scenario" else None) for c in ra.columns}
        out["classes"] = res.classes
        out["_grid"] = res
    else:
        pm_frame, out["_scenario_pnl"] = _scenario_margin(book, market, meth, scenarios, multipliers, backend,
                                                          all_ids)
        pm = {c: pm_frame[c].to_numpy() for c in pm_frame.columns}  # indexed by all_ids already
        # lets liquidation plans re-price the called accounts' positions exactly
        out["_scenario_inputs"] = {"market": market, "scenarios": scenarios, "multipliers": multipliers}
        out["classes"] = res_classes_empty()
    for col in PM_COLUMNS:
        pm[col] = np.nan_to_num(pm[col].astype(np.float64), nan=0.0) if col in pm else np.zeros(len(all_ids))

    from ._regt import regt_tables  # noqa: PLC0415

    # the legs as the Arrow table the run writes
    regt_acc, regt_legs, prepared = regt_tables(p, book=True, und_names=book.und_names)
    # Reg T reports the book's accounts in the book's order (both the sorted ids of the same positions),
    # so the book's indexer ``held`` places its rows too
    assert len(regt_acc) == len(book.accounts)
    out["regt_legs"] = regt_legs

    n_rej = rejects.groupby("account_id").size().reindex(all_ids).fillna(0).astype(np.int64).to_numpy()
    regt_m = _pick(regt_acc["regt_maintenance"].to_numpy(np.float64), held, 0.0)
    is_regt = (atype == "regt").to_numpy()
    requirement = np.where(is_regt, regt_m, pm["pm_requirement"])
    nlv_h = nlv.to_numpy(np.float64)
    worst = pm.get("worst_scenario")
    out["accounts"] = pd.DataFrame({
        "account_id": all_ids.to_numpy(dtype=object),
        "account_type": atype.to_numpy(),
        "pm_requirement": pm["pm_requirement"],
        **{col: pm[col] for col in PM_COLUMNS[:-1]},
        "regt_initial": _pick(regt_acc["regt_initial"].to_numpy(np.float64), held, 0.0),
        "regt_maintenance": regt_m,
        "nlv": nlv_h,
        "requirement": requirement,
        "excess": nlv_h - requirement,
        "worst_scenario": _missing_as_nan(worst, len(all_ids)),
        "n_positions": _pick(n_pos, held, 0).astype(np.int64),
        "n_rejected": n_rej,
        "has_rejects": n_rej > 0,
    })  # fmt: skip
    out["rejects"] = rejects
    out["positions"] = p
    out["_book"] = book  # for margin calls and liquidation plans (not a table)
    out["_account_ids"] = ids_pa  # the accounts table's ids as Arrow strings, in its row order
    out["_regt_prepared"] = prepared  # the book's positions coded for Reg T reruns (rows in book order)
    return out


def _missing_as_nan(labels: np.ndarray | None, n: int) -> pd.Series:
    """An ``object`` column of scenario labels with NaN (pandas' missing value) for none."""
    out = np.full(n, np.nan, dtype=object)
    if labels is not None:
        given = pd.notna(labels)
        out[given] = labels[given]
    return pd.Series(out, dtype=object, copy=False)


def _pick(values: np.ndarray, at: np.ndarray, fill: Any) -> np.ndarray:
    """``values[at]``, with ``fill`` where ``at`` is -1 (an account the values do not cover)."""
    if values.size == 0:
        out = np.empty(at.size, dtype=values.dtype if fill is not None else object)
        out[...] = fill
        return out
    got = values[np.maximum(at, 0)]
    if (at < 0).any():
        got = got.astype(object) if fill is None and got.dtype != object else got.copy()
        got[at < 0] = fill
    return got


PM_COLUMNS = ["pm_scenario_risk", "pm_minimum_excess", "pm_contingency", "pm_concentration", "pm_requirement"]


def res_classes_empty() -> pd.DataFrame:
    return pd.DataFrame({"account_id": pd.Series(dtype=object), "underlying": pd.Series(dtype=object),
                         "product_group": pd.Series(dtype=object), "class_risk": pd.Series(dtype=float)})


@dataclass
class ScenarioPnl:
    """Account × scenario P/L of a joint-scenario run: ``matrix`` ``(n_accounts, m)`` on the host."""

    matrix: np.ndarray
    accounts: np.ndarray  # account ids, row order
    index: pd.DataFrame  # scenario_id, multiplier, weight, label per column

    def frame(self) -> pd.DataFrame:
        """Long form: ``account_id, scenario_id, multiplier, pnl`` (account major)."""
        n, m = self.matrix.shape
        return pd.DataFrame({
            "account_id": np.repeat(self.accounts, m),
            "scenario_id": np.tile(self.index["scenario_id"].to_numpy(object), n),
            "multiplier": np.tile(self.index["multiplier"].to_numpy(np.float64), n),
            "pnl": self.matrix.reshape(-1),
        })

    def arrow_pieces(self, rows: int) -> Iterator[pa.Table]:
        """The long form as Arrow with dictionary-encoded ids (no per-row Python objects), in consecutive
        pieces of ``rows`` rows (the last shorter; one empty piece for no rows), each built on its own: a
        partition of 72k accounts under 1,000 scenarios is written one row group at a time instead of as
        a 72M-row table (24 bytes a row) beside its matrix."""
        n, m = self.matrix.shape
        accounts = pa.array(self.accounts.astype(str), type=pa.string())
        scenario_ids = pa.array(self.index["scenario_id"].astype(str).to_numpy(object), type=pa.string())
        multiplier = self.index["multiplier"].to_numpy(np.float64)
        flat = self.matrix.reshape(-1)
        for lo in range(0, max(n * m, 1), rows):
            r = np.arange(lo, min(lo + rows, n * m), dtype=np.int64)
            acc, sid = (r // m, r % m) if m else (r, r)
            yield pa.table({
                "account_id": pa.DictionaryArray.from_arrays(pa.array(acc.astype(np.int32)), accounts),
                "scenario_id": pa.DictionaryArray.from_arrays(pa.array(sid.astype(np.int32)), scenario_ids),
                "multiplier": multiplier[sid], "pnl": flat[lo:lo + r.size],
            })  # fmt: skip

    def write(self, path: Path) -> None:
        """The long form as one Parquet file, a row group at a time (the same file as :func:`write_table` of
        the pieces concatenated)."""
        from ._outputs import ROW_GROUP_ROWS, write_row_groups  # noqa: PLC0415

        pieces = self.arrow_pieces(ROW_GROUP_ROWS)
        first = next(pieces)
        write_row_groups(first.schema, itertools.chain([first], pieces), path)


def _scenario_margin(book, market, meth, scenarios, multipliers, backend, all_ids):
    """Joint-scenario risk per account (SPEC 5.2): ``max(0, max_s −weight_s·P/L_s)``, on the device."""
    if scenarios is None:
        from ._exceptions import JobError  # noqa: PLC0415

        raise JobError("a 'scenarios' methodology needs a scenario file; pass --scenarios FILE")
    xp = backend.xp
    table, index = joint_table(scenarios, market, multipliers, vol_mode=meth.defaults.vol_shock_mode)
    pnl = scenario_pnl_by_account(book, table, backend)  # (n_acc, m) on the device
    n_acc, m = len(book.accounts), len(index)
    if m and n_acc:
        loss = -(pnl * backend.asarray(index["weight"].to_numpy(np.float64))[None, :])
        worst = backend.to_host(xp.argmax(loss, axis=1))
        risk = backend.to_host(xp.maximum(xp.max(loss, axis=1), 0.0))
        require_finite(risk, lambda i: f"account {book.accounts[i]}")
    else:
        worst, risk = np.zeros(n_acc, np.int64), np.zeros(n_acc)
    names = (index["scenario_id"].astype(str) + "x" + index["multiplier"].map("{:g}".format)).to_numpy(object)
    pm = pd.DataFrame({"pm_scenario_risk": risk, "pm_requirement": risk,
                       "worst_scenario": np.where(risk > 0, names[worst] if m else None, None)},
                      index=pd.Index(book.accounts, name="account_id")).reindex(all_ids)
    # every reported account has its P/L rows (zero where it holds no valued position: cash only, or only
    # rejected rows), as the accounts table has a row for it
    held = pd.Index(all_ids).get_indexer(pd.Index(book.accounts))
    assert held.size == 0 or held.min() >= 0  # the reported accounts include the book's
    matrix = np.zeros((len(all_ids), m))
    matrix[held] = backend.to_host(pnl)
    return pm, ScenarioPnl(matrix, np.asarray(all_ids, dtype=object), index)
