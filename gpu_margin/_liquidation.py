"""Liquidation plans (SPEC section 6): which positions to close, in which order, to cure a call.

For every account called for ``pm_deficit`` or ``regt_deficit`` a greedy plan:
at each step close the position with the largest margin relief (requirement
decrease) per dollar of market value traded (``|market value|``, floored at
``MV_FLOOR`` so a future or a worthless option ranks by its relief), recompute
the requirement exactly, and repeat until ``NLV >= requirement`` or no
position lowers the requirement. When closing the chosen position in full
would cure the account, the step is a partial close instead: the smallest
whole number of contracts or shares (found by linear interpolation and
bisection over exact evaluations, so the quantity written is one that was
verified to cure). An account where no single close lowers the requirement
(legs hedging each other, such as a short straddle on the grid) closes a whole
class (underlying) instead, or as a last resort everything it holds, leg by leg.

Closing at the mark turns a position's market value into cash, so NLV does not
change from step to step; only the requirement does (a future has no market
value and closing it moves nothing into cash either).

Relief is exact, never re-estimated:

- grid methodologies (:class:`GridEngine`): the stored per-position scenario
  P/L (``GridResult.pnl``, built for the called accounts' rows) is linear in the quantity held, so
  removing ``d`` units of a position subtracts ``d/q`` of its P/L row from its
  class; the class, its product group (offsets at every scenario, worst loss,
  minimums) and the class add-ons (contingency, concentration) are recomputed
  with the formulas of :func:`gpu_margin._pm.grid_margin`. Every candidate of
  every called account is evaluated at once on the device (``backend.xp``).
- ``scenarios`` methodologies: the same engine with one class per account,
  full netting and the scenario weights, on per-position P/L of the called
  accounts re-priced from ``res['_scenario_inputs']`` (market, scenario frame,
  multipliers). Without those inputs no plan can be computed exactly and the
  accounts' plans are left out (documented in ``docs/calls.md``).
- Reg T (:class:`RegTEngine`): :func:`gpu_margin._regt.regt_requirements` is
  rerun without the position. Pairing never crosses an underlying except an
  ETF covering its index, so an account's requirement is the sum over its
  *components* (underlyings linked by ``tracks``) and only the candidate's
  component is recomputed; all candidates' reduced components go through one
  call as pseudo-accounts.

Every plan has at most ``MAX_STEPS`` rows. A called account that no close can
help (nothing held, or every close raises the requirement) and a
``min_equity`` call (closing at the mark cannot raise NLV) get one row,
``step = 0``, no position, ``cured = False``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ._backend import Backend
from ._io import arrow_strings, positions_in
from ._methodology import Methodology
from ._pm import kind_array
from .kernels import segment_sum

__all__ = ["MAX_STEPS", "MV_FLOOR", "PLAN_COLUMNS", "GridEngine", "RegTEngine", "greedy_plans", "liquidation_plans"]

PLAN_COLUMNS = ["account_id", "step", "position_id", "close_quantity", "requirement_after", "nlv_after",
                "deficit_after", "cured"]
#: Most rows of one plan (full closes, the partial close included).
MAX_STEPS = 50
#: Dollars: the smallest market value a close is ranked by (relief per dollar traded).
MV_FLOOR = 1.0
#: A close must lower the requirement by more than this (dollars, plus a relative part) to count.
RELIEF_ABS = 1e-6
RELIEF_REL = 1e-12
#: Significant bits of relief per dollar that rank candidates (about 9 decimal digits; see _ratio_key).
RATIO_BITS = 30
#: Device elements per chunk of candidate evaluations (candidates × scenarios).
CHUNK_ELEMENTS = 1 << 22
#: Rows of pseudo-accounts per Reg T evaluation call.
REGT_CHUNK_ROWS = 1 << 20


def liquidation_plans(res: dict[str, Any], calls: pd.DataFrame, meth: Methodology, backend: Backend) -> pd.DataFrame:
    """Liquidation plans for the called accounts of one ``margin_frames`` result.

    ``calls`` from :func:`gpu_margin._calls.margin_calls`. Returns the
    ``liquidation`` table: ``account_id, step, position_id, close_quantity``
    (signed quantity traded: negative sells a long), ``requirement_after``,
    ``nlv_after``, ``deficit_after`` (``max(requirement - NLV, 0)``),
    ``cured`` (``NLV >= requirement`` after the step), sorted by account and step.
    """
    book = res["_book"]
    pos = book.pos
    frames = []
    for reason, make in (("pm_deficit", _pm_engine), ("regt_deficit", _regt_engine)):
        c = calls[calls["reason"] == reason]
        if c.empty:
            continue
        # by the book's account codes; the calls' few ids are hashed, each book account looked up in them
        called = positions_in(book.account_ids, arrow_strings(c["account_id"])) >= 0
        rows = np.flatnonzero(called[pos["_acc"].to_numpy()])
        if rows.size == 0:  # called for negative cash alone: nothing to close
            frames.append(_no_action_rows(c))
            continue
        engine = make(res, meth, backend, rows)
        if engine is None:  # no exact relief available (scenarios methodology without its inputs)
            continue
        held = pos[["quantity", "market_value", "position_id"]].iloc[rows].reset_index(drop=True)  # greedy's
        frames.append(greedy_plans(engine, c, held))
    c = calls[calls["reason"] == "min_equity"]
    if not c.empty:
        frames.append(_no_action_rows(c))
    frames = [f for f in frames if not f.empty]
    if not frames:
        return empty_plans()
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["account_id", "step"], kind="stable").reset_index(drop=True)[PLAN_COLUMNS]


def empty_plans() -> pd.DataFrame:
    return pd.DataFrame({
        "account_id": pd.Series(dtype=object), "step": pd.Series(dtype=np.int64),
        "position_id": pd.Series(dtype=object), "close_quantity": pd.Series(dtype=np.float64),
        "requirement_after": pd.Series(dtype=np.float64), "nlv_after": pd.Series(dtype=np.float64),
        "deficit_after": pd.Series(dtype=np.float64), "cured": pd.Series(dtype=bool),
    })  # fmt: skip


def _no_action_rows(calls: pd.DataFrame) -> pd.DataFrame:
    n = len(calls)
    return pd.DataFrame({
        "account_id": calls["account_id"].to_numpy(object), "step": np.zeros(n, np.int64),
        "position_id": np.full(n, None, dtype=object), "close_quantity": np.zeros(n),
        "requirement_after": calls["requirement"].to_numpy(np.float64), "nlv_after": calls["nlv"].to_numpy(np.float64),
        "deficit_after": calls["deficit"].to_numpy(np.float64), "cured": np.zeros(n, dtype=bool),
    })  # fmt: skip


# --------------------------------------------------------------------------- #
# the greedy, common to every engine (host bookkeeping, device evaluations)


def greedy_plans(engine: Any, calls: pd.DataFrame, pos: pd.DataFrame) -> pd.DataFrame:
    """Greedy plans for the called accounts whose positions ``pos`` the engine was built on.

    The engine (:class:`GridEngine` or :class:`RegTEngine`) gives each
    position's account (``engine.account``, an index into ``engine.accounts``)
    and class (``engine.cls_h``: the positions of one underlying, or of one
    account for joint scenarios), and evaluates exactly, for every account at
    once: ``requirement(q)`` at holdings ``q`` ``(n,)``; ``evaluate(q, cand,
    new_q)`` the requirement of the account of position ``cand[j]`` if it held
    ``new_q[j]`` of it instead; ``evaluate_classes(q, cls)`` the requirement of
    the account of class ``cls[j]`` with that whole class closed.

    Each iteration takes one step in every account still short. An account
    where no single close lowers the requirement (legs that hedge each other,
    such as a short straddle on the grid) closes a whole class instead (the
    class with the most relief per dollar), or as a last resort everything
    it holds; the legs of such a composite close are consecutive steps, each
    with its exact requirement after (which may rise before the last leg).
    """
    acc_names = np.asarray(engine.accounts, dtype=object)
    n_acc = acc_names.size
    nlv = calls.set_index("account_id")["nlv"].reindex(acc_names).to_numpy(np.float64)
    # called accounts without a valid position are not in the engine; they get a no-action row
    orphan = calls[positions_in(arrow_strings(calls["account_id"]), acc_names) < 0]
    q0 = pos["quantity"].to_numpy(np.float64)
    mv0 = pos["market_value"].to_numpy(np.float64)
    pid = arrow_strings(pos["position_id"].astype(str))
    pid_rank = pc.rank(pid, sort_keys="ascending", tiebreaker="first").to_numpy().astype(np.int64)  # 1, 2, ...
    acc = engine.account
    q = q0.copy()

    req = engine.requirement(q)
    active = req > nlv
    rec: list[tuple[np.ndarray, ...]] = []  # (account, step, position, close, requirement after, cured) per step
    steps = np.zeros(n_acc, np.int64)
    queue = np.zeros(0, np.int64)  # legs of composite closes still to take, per account queue[qs:qe]
    qs = np.zeros(n_acc, np.int64)
    qe = np.zeros(n_acc, np.int64)
    for it in range(MAX_STEPS):
        pend = active & (qs < qe)
        free = active & ~pend
        cand = np.flatnonzero((q != 0.0) & free[acc])
        ca = acc[cand]
        req_new = engine.evaluate(q, cand, np.zeros(cand.size))
        if it:  # the state after last iteration's full closes, exactly, from scratch (same engine call)
            req = engine.requirement(q)
        relief = req[ca] - req_new
        ok = relief > _relief_floor(req[ca])
        traded = np.maximum(np.abs(mv0[cand] * (q[cand] / q0[cand])), MV_FLOOR)
        sel = np.flatnonzero(ok)
        order = sel[np.lexsort((pid_rank[cand[sel]], -_ratio_key(relief[sel] / traded[sel]), ca[sel]))]
        _, first = np.unique(ca[order], return_index=True)
        best = order[first]  # one candidate per account: the most relief per dollar traded
        chosen_pos, chosen_acc, chosen_req = [cand[best]], [ca[best]], [req_new[best]]

        # accounts where no single close helps: a whole class, else everything held
        has = np.zeros(n_acc, dtype=bool)
        has[ca[best]] = True
        stuck = np.flatnonzero(free & ~has)
        if stuck.size:
            legs, n_new = _composites(engine, q, stuck, req, mv0, q0, cand, relief, pid_rank)
            got = n_new > 0
            active[stuck[~got]] = False  # nothing lowers the requirement: not curable by liquidation
            starts = queue.size + np.concatenate([[0], np.cumsum(n_new)[:-1]])
            qs[stuck], qe[stuck] = starts, starts + n_new
            queue = np.concatenate([queue, legs])
            pend = active & (qs < qe)
        # the next leg of every composite close under way
        pa = np.flatnonzero(pend)
        if pa.size:
            pp = queue[qs[pa]]
            qs[pa] += 1
            chosen_pos.append(pp)
            chosen_acc.append(pa)
            chosen_req.append(engine.evaluate(q, pp, np.zeros(pp.size)))
        b_pos, b_acc, b_req = (np.concatenate(x) for x in (chosen_pos, chosen_acc, chosen_req))
        if b_pos.size == 0:
            break
        steps[b_acc] += 1
        cures = b_req <= nlv[b_acc]

        # a full close would cure: close the smallest whole number of units that does
        p_pos, p_acc = b_pos[cures], b_acc[cures]
        if p_pos.size:
            k, req_k = _smallest_cure(engine, q, p_pos, req[p_acc], b_req[cures], nlv[p_acc])
            new_q = np.where(k >= np.abs(q[p_pos]), 0.0, q[p_pos] - np.sign(q[p_pos]) * k)
            rec.append((p_acc, steps[p_acc], p_pos, new_q - q[p_pos], req_k, np.ones(p_pos.size, dtype=bool)))
            q[p_pos] = new_q
            req[p_acc] = req_k
            active[p_acc] = False

        # the others close in full; the new state is recomputed from scratch
        f_pos, f_acc = b_pos[~cures], b_acc[~cures]
        if f_pos.size:
            rec.append((f_acc, steps[f_acc], f_pos, -q[f_pos], b_req[~cures], np.zeros(f_pos.size, dtype=bool)))
            q[f_pos] = 0.0

    cols = ["_a", "step", "_p", "close_quantity", "requirement_after", "cured"]
    dtypes = (np.int64, np.int64, np.int64, np.float64, np.float64, bool)
    out = pd.DataFrame({c: (np.concatenate([r[i] for r in rec]) if rec else np.zeros(0)).astype(dt)
                        for i, (c, dt) in enumerate(zip(cols, dtypes))})
    out["account_id"] = acc_names[out["_a"].to_numpy()]
    out["position_id"] = pid.take(out["_p"].to_numpy()).to_numpy(zero_copy_only=False).astype(object)
    out["nlv_after"] = nlv[out["_a"].to_numpy()]
    out["deficit_after"] = np.maximum(out["requirement_after"] - out["nlv_after"], 0.0)
    # a called account with no step: no close lowers its requirement
    none = np.flatnonzero(steps == 0)
    marker = pd.DataFrame({
        "account_id": acc_names[none], "step": np.zeros(none.size, np.int64),
        "position_id": np.full(none.size, None, dtype=object), "close_quantity": np.zeros(none.size),
        "requirement_after": req[none], "nlv_after": nlv[none],
        "deficit_after": np.maximum(req[none] - nlv[none], 0.0), "cured": req[none] <= nlv[none],
    })  # fmt: skip
    parts = [p for p in (out[PLAN_COLUMNS], marker, _no_action_rows(orphan)) if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else empty_plans()


def _ratio_key(ratio: np.ndarray) -> np.ndarray:
    """Relief per dollar rounded to ``RATIO_BITS`` significant bits, the key candidates are ranked by.

    Relief is a difference of account requirements, each a sum over many legs
    or scenarios, so it carries rounding noise of about 1e-16 of the account's
    requirement; candidates whose ratios are equal in exact arithmetic (two
    long stock positions: 25% of value each) would otherwise be ordered by
    that noise, which moves with the summation order. Rounded, they tie and
    the position id decides.
    """
    m, e = np.frexp(ratio)
    return np.ldexp(np.round(m * float(1 << RATIO_BITS)), e - RATIO_BITS)


def _relief_floor(req: np.ndarray) -> np.ndarray:
    """Least requirement decrease that counts as relief (float noise is not relief)."""
    return RELIEF_ABS + RELIEF_REL * np.abs(req)


def _composites(engine: Any, q: np.ndarray, stuck: np.ndarray, req: np.ndarray, mv0: np.ndarray, q0: np.ndarray,
                cand: np.ndarray, relief: np.ndarray, pid_rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Legs of the composite close of each ``stuck`` account, and their count per account (0: none helps).

    A composite is the whole class (held positions of one underlying) with the
    most relief per dollar traded, or, when no class helps, everything the
    account holds (requirement 0 after). Legs are ordered by their own relief
    (largest first), then position id.
    """
    acc, cls = engine.account, engine.cls_h
    is_stuck = np.zeros(engine.n_acc, dtype=bool)
    is_stuck[stuck] = True
    held = np.flatnonzero((q != 0.0) & is_stuck[acc])
    cc = np.unique(cls[held])
    c_acc = acc[held][np.unique(cls[held], return_index=True)[1]]
    req_c = engine.evaluate_classes(q, cc)
    c_relief = req[c_acc] - req_c
    mv_c = np.bincount(np.searchsorted(cc, cls[held]), weights=np.abs(mv0[held] * (q[held] / q0[held])),
                       minlength=cc.size)
    ok = c_relief > _relief_floor(req[c_acc])
    sel = np.flatnonzero(ok)
    order = sel[np.lexsort((cc[sel], -_ratio_key(c_relief[sel] / np.maximum(mv_c[sel], MV_FLOOR)), c_acc[sel]))]
    _, first = np.unique(c_acc[order], return_index=True)
    best_cls = np.full(engine.n_acc, -1, np.int64)
    best_cls[c_acc[order[first]]] = cc[order[first]]
    # everything held, where no class helps but closing out lowers the requirement (to 0)
    whole = is_stuck & (best_cls < 0) & (req > _relief_floor(req))
    take = held[(cls[held] == best_cls[acc[held]]) | whole[acc[held]]]
    own = np.zeros(q.size)
    own[cand] = relief  # this iteration's single-close relief of every held position of the account
    legs = take[np.lexsort((pid_rank[take], -own[take], acc[take]))]
    n_new = np.bincount(acc[legs], minlength=engine.n_acc)[stuck]
    return legs, n_new


def _smallest_cure(engine: Any, q: np.ndarray, cand: np.ndarray, req0: np.ndarray, req_full: np.ndarray,
                   nlv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest whole number of units of ``cand`` to close that cures, from exact evaluations.

    Holding it all does not cure (requirement ``req0 > nlv``); closing all of
    it does (``req_full <= nlv``). Each round evaluates, for every account at
    once, the linear interpolation between the closest known non-curing and
    curing counts, one unit less, and the midpoint, and narrows the bracket:
    a requirement linear in the quantity is settled in one round, any other
    at least halves the bracket. The count returned was always evaluated and
    cures; it is the smallest one wherever the requirement falls monotonically
    as the position shrinks (a convex requirement, as on the grid without the
    concentration add-on). Returns ``(units, requirement after)``; a count
    reaching ``|q|`` closes the position in full (fractional holdings included).
    """
    absq = np.abs(q[cand])
    sign = np.sign(q[cand])
    lo = np.zeros(cand.size)  # closing lo units is known not to cure ...
    req_lo = req0.astype(np.float64).copy()
    hi = np.ceil(absq - 1e-9)  # ... and closing hi units is known to cure
    req_hi = req_full.astype(np.float64).copy()
    while True:
        j = np.flatnonzero(hi - lo > 1.0)
        if j.size == 0:
            return np.minimum(hi, absq), req_hi
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.clip(np.nan_to_num((req_lo[j] - nlv[j]) / (req_lo[j] - req_hi[j]), nan=0.5), 0.0, 1.0)
        guess = np.clip(np.ceil(lo[j] + share * (hi[j] - lo[j]) - 1e-9), lo[j] + 1.0, hi[j] - 1.0)
        mid = np.floor((lo[j] + hi[j]) / 2.0)
        k = np.concatenate([guess, guess - 1.0, mid])
        jj = np.concatenate([j, j, j])
        use = (k > lo[jj]) & (k < hi[jj])
        k, jj = k[use], jj[use]
        r = engine.evaluate(q, cand[jj], np.where(k >= absq[jj], 0.0, q[cand[jj]] - sign[jj] * k))
        good = r <= nlv[jj]
        # the smallest curing count, then the largest non-curing count below it
        o = np.lexsort((k, ~good, jj))
        g1 = o[good[o]]
        first = g1[np.unique(jj[g1], return_index=True)[1]]
        better = k[first] < hi[jj[first]]
        hi[jj[first[better]]], req_hi[jj[first[better]]] = k[first[better]], r[first[better]]
        bad = np.flatnonzero(~good & (k < hi[jj]))
        o = bad[np.lexsort((-k[bad], jj[bad]))]
        top = o[np.unique(jj[o], return_index=True)[1]]
        worse = k[top] > lo[jj[top]]
        lo[jj[top[worse]]], req_lo[jj[top[worse]]] = k[top[worse]], r[top[worse]]


# --------------------------------------------------------------------------- #
# portfolio margin: exact relief from stored per-position scenario vectors


class GridEngine:
    """Requirements of a fixed set of accounts as their holdings shrink, on the device.

    Built from the per-position scenario P/L of the positions of those accounts
    (rows in book order: sorted by account, product group, underlying), the
    class and group structure, and the per-position linear amounts (minimums,
    option sizes). Every quantity enters linearly: a position holding ``f`` of
    its original quantity contributes ``f`` times its P/L row, minimum and
    option size. ``wide`` (concentration re-stress P/L) may be ``None``.
    """

    def __init__(self, backend: Backend, *, accounts: np.ndarray, account: np.ndarray, cls: np.ndarray,
                 cls_grp: np.ndarray, grp_acc: np.ndarray, q0: np.ndarray, pnl: Any, valid: np.ndarray,
                 offset: np.ndarray, mins: np.ndarray, opt_size: np.ndarray, cont_rate: np.ndarray,
                 spot: np.ndarray, wide: Any = None, valid_w: np.ndarray | None = None,
                 conc_thr: np.ndarray | None = None, nlv: np.ndarray | None = None) -> None:
        xp = backend.xp
        self.b, self.xp = backend, xp
        self.accounts, self.account = accounts, account.astype(np.int64)
        self.n_acc = len(accounts)
        self.cls_h = cls.astype(np.int64)
        self.n_cls = int(cls_grp.size)
        self.n_grp = int(grp_acc.size)
        self.cls_grp_h = cls_grp.astype(np.int64)
        cls_acc = grp_acc[cls_grp]
        self.cls_acc_h = cls_acc.astype(np.int64)
        a = backend.asarray
        self.q0 = q0
        self.cls = a(self.cls_h)
        self.cls_grp = a(self.cls_grp_h)
        self.grp_acc = a(grp_acc.astype(np.int64))
        self.cls_acc = a(self.cls_acc_h)
        self.pnl = pnl
        self.valid = a(valid.astype(bool))
        first_cls = np.unique(self.cls_grp_h, return_index=True)[1]
        self.gvalid = xp.take(self.valid, a(first_cls.astype(np.int64)), axis=0)
        self.offset = a(offset.astype(np.float64))
        self.mins = a(mins.astype(np.float64))
        self.short = a(np.where(opt_size < 0, -opt_size, 0.0))
        self.long = a(np.where(opt_size > 0, opt_size, 0.0))
        self.rate = a(cont_rate.astype(np.float64))
        self.spot = a(spot.astype(np.float64))
        self.wide = wide
        if wide is not None:
            self.valid_w = a(valid_w.astype(bool))
            self.thr = a(conc_thr.astype(np.float64))
            self.nlv_cls = a(np.maximum(nlv[self.cls_acc_h], 0.0))
        self._state: tuple[bytes, dict[str, Any]] | None = None

    # -- helpers
    def _seg(self, values: Any, ids: Any, n: int) -> Any:
        return segment_sum(values, ids, n)

    def _worst(self, loss: Any, valid: Any) -> Any:
        xp = self.xp
        return xp.maximum(xp.max(xp.where(valid, loss, -xp.inf), axis=1), 0.0)

    def _combine(self, cp: Any, off: Any) -> Any:
        xp = self.xp
        return xp.minimum(cp, 0.0) + off[:, None] * xp.maximum(cp, 0.0)

    def _addons(self, cp: Any, short: Any, long_: Any, cpw: Any, rate: Any, spot: Any, valid: Any,
                valid_w: Any, thr: Any, nlv_cls: Any) -> Any:
        xp = self.xp
        add = rate * xp.maximum(short - long_, 0.0) * spot
        if self.wide is not None:
            risk = self._worst(-cp, valid)
            risk_w = self._worst(-cpw, valid_w)
            hit = (thr > 0.0) & (risk > thr * nlv_cls)
            add = add + xp.where(hit, xp.maximum(risk_w - risk, 0.0), 0.0)
        return add

    def state(self, q: np.ndarray) -> dict[str, Any]:
        """Class, group and account amounts at holdings ``q`` ``(n,)`` (device arrays)."""
        key = q.tobytes()
        if self._state is not None and self._state[0] == key:
            return self._state[1]
        xp, a = self.xp, self.b.asarray
        frac = a(q / self.q0)
        held = a((q != 0.0).astype(np.float64))[:, None]
        s: dict[str, Any] = {}
        s["cp"] = self._seg(self.pnl * frac[:, None], self.cls, self.n_cls)
        s["comb"] = self._combine(s["cp"], self.offset)
        s["gp"] = self._seg(s["comb"], self.cls_grp, self.n_grp)
        s["cmin"] = self._seg((self.mins * frac)[:, None], self.cls, self.n_cls)
        s["gmin"] = self._seg(s["cmin"], self.cls_grp, self.n_grp)[:, 0]
        s["cmin"] = s["cmin"][:, 0]
        s["greq"] = xp.maximum(self._worst(-s["gp"], self.gvalid), s["gmin"])
        s["short"] = self._seg((self.short * frac)[:, None], self.cls, self.n_cls)[:, 0]
        s["long"] = self._seg((self.long * frac)[:, None], self.cls, self.n_cls)[:, 0]
        s["cpw"] = self._seg(self.wide * frac[:, None], self.cls, self.n_cls) if self.wide is not None else None
        s["add"] = self._addons(s["cp"], s["short"], s["long"], s["cpw"], self.rate, self.spot, self.valid,
                                getattr(self, "valid_w", None), getattr(self, "thr", None),
                                getattr(self, "nlv_cls", None))
        s["n_cls"] = self._seg(held, self.cls, self.n_cls)[:, 0]
        s["n_grp"] = self._seg(s["n_cls"][:, None], self.cls_grp, self.n_grp)[:, 0]
        s["req"] = self._seg(s["greq"][:, None], self.grp_acc, self.n_acc)[:, 0] + \
            self._seg(s["add"][:, None], self.cls_acc, self.n_acc)[:, 0]
        self._state = (key, s)
        return s

    def requirement(self, q: np.ndarray) -> np.ndarray:
        """Requirement of every account at holdings ``q``, ``(n_accounts,)`` float64 on the host."""
        return self.b.to_host(self.state(q)["req"])

    def evaluate(self, q: np.ndarray, cand: np.ndarray, new_q: np.ndarray) -> np.ndarray:
        """Requirement of the account of each ``cand[j]`` if that position held ``new_q[j]``, ``(k,)`` host."""
        s = self.state(q)
        m = int(self.pnl.shape[1]) + (int(self.wide.shape[1]) if self.wide is not None else 0)
        step = max(1, CHUNK_ELEMENTS // max(m, 1))
        out = [self._evaluate(s, q, cand[i:i + step], new_q[i:i + step]) for i in range(0, cand.size, step)]
        return np.concatenate(out) if out else np.zeros(0)

    def evaluate_classes(self, q: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Requirement of the account of each class ``classes[j]`` with the whole class closed, ``(k,)`` host."""
        xp, a = self.xp, self.b.asarray
        s = self.state(q)
        c_h = classes.astype(np.int64)
        g_h = self.cls_grp_h[c_h]
        c, g, acc = a(c_h), a(g_h), a(self.cls_acc_h[c_h])
        grp_empty = (xp.take(s["n_grp"], g) - xp.take(s["n_cls"], c)) < 0.5
        gp = xp.where(grp_empty[:, None], 0.0, xp.take(s["gp"], g, axis=0) - xp.take(s["comb"], c, axis=0))
        gmin = xp.where(grp_empty, 0.0, xp.take(s["gmin"], g) - xp.take(s["cmin"], c))
        greq = xp.maximum(self._worst(-gp, xp.take(self.gvalid, g, axis=0)), gmin)
        req = xp.take(s["req"], acc) - xp.take(s["greq"], g) + greq - xp.take(s["add"], c)
        return self.b.to_host(req)

    def _evaluate(self, s: dict[str, Any], q: np.ndarray, cand: np.ndarray, new_q: np.ndarray) -> np.ndarray:
        xp, a = self.xp, self.b.asarray
        c_h = self.cls_h[cand]
        g_h = self.cls_grp_h[c_h]
        acc_h = self.cls_acc_h[c_h]
        cand_d, c, g, acc = a(cand.astype(np.int64)), a(c_h), a(g_h), a(acc_h)
        drop = a((q[cand] - new_q) / self.q0[cand])  # fraction of the original position removed
        gone = a((new_q == 0.0).astype(np.float64))  # the position leaves the class
        n_cls_after = xp.take(s["n_cls"], c) - gone
        n_grp_after = xp.take(s["n_grp"], g) - gone
        cls_empty = (n_cls_after < 0.5)[:, None]
        grp_empty = n_grp_after < 0.5

        cp_old = xp.take(s["cp"], c, axis=0)
        cp = xp.where(cls_empty, 0.0, cp_old - xp.take(self.pnl, cand_d, axis=0) * drop[:, None])
        off = xp.take(self.offset, c)
        gp = xp.take(s["gp"], g, axis=0) - xp.take(s["comb"], c, axis=0) + self._combine(cp, off)
        gp = xp.where(grp_empty[:, None], 0.0, gp)
        gmin = xp.where(grp_empty, 0.0, xp.take(s["gmin"], g) - xp.take(self.mins, cand_d) * drop)
        greq = xp.maximum(self._worst(-gp, xp.take(self.gvalid, g, axis=0)), gmin)

        empty1 = cls_empty[:, 0]
        short = xp.where(empty1, 0.0, xp.take(s["short"], c) - xp.take(self.short, cand_d) * drop)
        long_ = xp.where(empty1, 0.0, xp.take(s["long"], c) - xp.take(self.long, cand_d) * drop)
        valid = xp.take(self.valid, c, axis=0)
        if self.wide is not None:
            cpw = xp.where(cls_empty, 0.0, xp.take(s["cpw"], c, axis=0) - xp.take(self.wide, cand_d, axis=0)
                           * drop[:, None])
            add = self._addons(cp, short, long_, cpw, xp.take(self.rate, c), xp.take(self.spot, c), valid,
                               xp.take(self.valid_w, c, axis=0), xp.take(self.thr, c), xp.take(self.nlv_cls, c))
        else:
            add = self._addons(cp, short, long_, None, xp.take(self.rate, c), xp.take(self.spot, c), valid,
                               None, None, None)
        req = xp.take(s["req"], acc) - xp.take(s["greq"], g) + greq - xp.take(s["add"], c) + add
        return self.b.to_host(req)


def _pm_engine(res: dict[str, Any], meth: Methodology, backend: Backend, rows: np.ndarray) -> GridEngine | None:
    """The grid (or joint-scenario) engine for the positions ``rows`` of ``res['_book']``."""
    book = res["_book"]
    p = book.pos.iloc[rows]
    codes, account = _accounts_of(book, rows)
    accounts = book.accounts[codes]
    at = _rows_of(book.account_ids.take(codes), res["_account_ids"])  # rows of res["accounts"]
    nlv = np.where(at >= 0, res["accounts"]["nlv"].to_numpy(np.float64)[np.maximum(at, 0)], np.nan)
    q0 = p["quantity"].to_numpy(np.float64)
    if "_grid" in res:
        return _grid_engine(res["_grid"], p, meth, backend, rows, accounts, account, nlv, q0)
    inputs = res.get("_scenario_inputs")
    if inputs is None:
        return None
    pnl = scenario_position_pnl(book, rows, meth, backend, **inputs)  # weights applied
    n, m = len(p), int(pnl.shape[1])
    return GridEngine(
        backend, accounts=accounts, account=account, cls=account, cls_grp=np.arange(accounts.size),
        grp_acc=np.arange(accounts.size), q0=q0, pnl=pnl, valid=np.ones((accounts.size, m), dtype=bool),
        offset=np.ones(accounts.size), mins=np.zeros(n), opt_size=np.zeros(n), cont_rate=np.zeros(accounts.size),
        spot=np.zeros(accounts.size),
    )  # fmt: skip


def _grid_engine(grid: Any, p: pd.DataFrame, meth: Methodology, backend: Backend, rows: np.ndarray,
                 accounts: np.ndarray, account: np.ndarray, nlv: np.ndarray, q0: np.ndarray) -> GridEngine:
    """The grid engine from a ``GridResult``: its stored P/L rows ``rows`` and the methodology's parameters."""
    pnl = grid.pnl(rows, backend)
    wide = grid.pnl(rows, backend, wide=True) if grid.wide_table is not None else None
    # local classes and groups, in book order (ids sorted ascending as segment sums need)
    cls = pd.factorize(p["_cls"].to_numpy(np.int64), sort=True)[0].astype(np.int64)
    grp_of_pos = pd.factorize(p["_grp"].to_numpy(np.int64), sort=True)[0].astype(np.int64)
    first = np.unique(cls, return_index=True)[1]
    cls_grp = grp_of_pos[first]
    grp_first = np.unique(grp_of_pos, return_index=True)[1]
    grp_acc = account[grp_first]
    und_idx = pd.Index(grid.table.underlyings).get_indexer(p["underlying"].to_numpy(object)[first])
    valid = grid.table.valid[und_idx]
    pg_cls = p["product_group"].iloc[first]

    def per_group(series: pd.Series, key: str) -> np.ndarray:
        table = {g: float(getattr(meth.group(g), key)) for g in pd.unique(series)}
        return series.map(table).to_numpy(np.float64)

    kind = kind_array(p)
    qty = q0
    mult = p["multiplier"].to_numpy(np.float64)
    minc = per_group(p["product_group"], "min_charge_per_contract")
    mins = np.where(kind != "stock", minc * mult * np.abs(qty), 0.0)
    long_opt = (kind == "option") & (qty > 0)
    mins = np.where(long_opt, np.minimum(mins, np.abs(p["market_value"].to_numpy(np.float64))), mins)
    opt_size = np.where(kind == "option", qty * mult, 0.0)
    kw: dict[str, Any] = {}
    if wide is not None:
        kw = dict(wide=wide, valid_w=grid.wide_table.valid[und_idx],
                  conc_thr=per_group(pg_cls, "concentration_threshold"), nlv=nlv)
    return GridEngine(
        backend, accounts=accounts, account=account, cls=cls, cls_grp=cls_grp, grp_acc=grp_acc, q0=q0, pnl=pnl,
        valid=valid, offset=per_group(pg_cls, "offset"), mins=mins, opt_size=opt_size,
        cont_rate=per_group(pg_cls, "contingency_rate"), spot=p["spot"].to_numpy(np.float64)[first], **kw,
    )  # fmt: skip


def scenario_position_pnl(book: Any, rows: np.ndarray, meth: Methodology, backend: Backend, *, market: pd.DataFrame,
                          scenarios: pd.DataFrame, multipliers: Any) -> Any:
    """Weighted joint-scenario P/L ``(len(rows), m)`` of the positions ``rows`` of ``book`` (device).

    Re-prices only those positions (the called accounts'), with the table and
    column order of :func:`gpu_margin._compute.margin_frames`; column ``s`` is
    multiplied by the scenario's weight, so an account's requirement is
    ``max(0, max_s -Σ pnl)`` as in SPEC 5.2.
    """
    from ._pm import option_values, position_pnl, prepare_book  # noqa: PLC0415
    from ._scenarios import joint_table  # noqa: PLC0415

    table, index = joint_table(scenarios, market, tuple(multipliers), vol_mode=meth.defaults.vol_shock_mode)
    sub = book.pos.iloc[rows].drop(columns=["_acc", "_cls", "_grp", "_con", "_und"]).assign(_row=np.arange(len(rows)))
    sb = prepare_book(sub, book.und_names)
    v0, v = option_values(sb, table, backend)
    pnl = position_pnl(sb, table, v0, v, backend)
    back = np.argsort(sb.pos["_row"].to_numpy(np.int64), kind="stable")  # prepare_book keeps the order; be sure
    w = backend.asarray(index["weight"].to_numpy(np.float64))
    return backend.xp.take(pnl, backend.asarray(back.astype(np.int64)), axis=0) * w[None, :]


# --------------------------------------------------------------------------- #
# Reg T: exact relief by rerunning the strategy pairing without the position


class RegTEngine:
    """Reg T maintenance requirements of a fixed set of accounts as their holdings shrink.

    An account's requirement is the sum over its components (underlyings
    linked by ETF ``tracks``), since no strategy pairs legs across components;
    a candidate change reruns :func:`regt_requirements` on its component only.
    Results are kept per component: when the holdings change, only the
    components whose holdings changed are rerun, and the requirement after
    closing a position in full is reused until its component changes (in a
    greedy step every account changes one component; the others stay put).
    """

    def __init__(self, pos: pd.DataFrame, accounts: np.ndarray, account: np.ndarray, prepared: Any,
                 rows: np.ndarray) -> None:
        """``pos``: the positions; ``account``: each one's index into ``accounts``; ``prepared``: the
        legs of the whole book as :func:`gpu_margin._regt.regt_tables` prepared them, of which the
        positions are the ``rows``: every rerun takes rows of them, with no string coded again."""
        from ._regt import subset_legs  # noqa: PLC0415

        self.accounts, self.account = accounts, account.astype(np.int64)
        self.n_acc = len(accounts)
        self.legs = subset_legs(prepared, rows, pos["quantity"].to_numpy(np.float64), self.account, self.n_acc)
        # components and classes from the legs' codes of the underlying and what it tracks (-1: nothing)
        comp = _components(self.legs.und, self.legs.trk)
        self.ck = _pair_codes(self.account, comp)
        self.cls_h = _pair_codes(self.account, self.legs.und)
        self.n_ck = int(self.ck.max()) + 1 if self.ck.size else 0
        self.ck_acc = np.zeros(self.n_ck, np.int64)
        self.ck_acc[self.ck] = self.account
        n = len(pos)
        self._q: np.ndarray | None = None  # the holdings comp_req is for
        self.comp_req = np.zeros(self.n_ck)  # requirement of every component at holdings _q
        self._pending = np.zeros(self.n_ck, dtype=bool)  # components whose comp_req is out of date
        self._close_req = np.zeros(n)  # requirement of a position's component with it closed in full
        self._close_ok = np.zeros(n, dtype=bool)  # ... still valid (its component unchanged since)

    def _run(self, idx: np.ndarray, qty: np.ndarray, key: np.ndarray, n_keys: int) -> np.ndarray:
        """Maintenance requirement per key of the engine's positions ``idx`` holding ``qty``, ``(n_keys,)``."""
        from ._regt import maintenance_by_account, subset_legs  # noqa: PLC0415

        keep = qty != 0.0  # a position may be under several keys (pseudo-accounts)
        return maintenance_by_account(subset_legs(self.legs, idx[keep], qty[keep], key[keep], n_keys))

    def _note(self, q: np.ndarray) -> None:
        """Mark the components whose holdings differ from the cached state (all of them the first time)."""
        if self._q is None:
            self._pending[:] = True
        else:
            diff = np.flatnonzero(q != self._q)
            if diff.size == 0:
                return
            self._pending[self.ck[diff]] = True
        self._close_ok &= ~self._pending[self.ck]
        self._q = q.copy()

    def _account_req(self) -> np.ndarray:
        return np.bincount(self.ck_acc, weights=self.comp_req, minlength=self.n_acc)

    def _with(self, ck: np.ndarray, new: np.ndarray) -> np.ndarray:
        """Requirement of the account of component ``ck[j]`` if that component required ``new[j]``."""
        return self._account_req()[self.ck_acc[ck]] - self.comp_req[ck] + new

    def requirement(self, q: np.ndarray) -> np.ndarray:
        """Requirement of every account at holdings ``q``, ``(n_accounts,)``."""
        self._note(q)
        if self._pending.any():
            self._evaluate(q, np.zeros(0, np.int64), None)
        return self._account_req()

    def evaluate(self, q: np.ndarray, cand: np.ndarray, new_q: np.ndarray) -> np.ndarray:
        """Requirement of the account of each ``cand[j]`` if that position held ``new_q[j]``, ``(k,)``."""
        self._note(q)
        ck_c = self.ck[cand]
        if np.any(new_q != 0.0):
            new = self._evaluate(q, ck_c, lambda idx, j: np.where(idx == cand[j], new_q[j], q[idx]))
        else:  # full closes: rerun only those whose component changed since they were last evaluated
            need = np.unique(cand[~self._close_ok[cand]])
            got = self._evaluate(q, self.ck[need], lambda idx, j: np.where(idx == need[j], 0.0, q[idx]))
            self._close_req[need], self._close_ok[need] = got, True
            new = self._close_req[cand]
        return self._with(ck_c, new)

    def evaluate_classes(self, q: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Requirement of the account of each class ``classes[j]`` with the whole class closed, ``(k,)``."""
        self._note(q)
        first = np.full(int(self.cls_h.max()) + 1, -1, np.int64)
        first[self.cls_h[::-1]] = np.arange(self.cls_h.size)[::-1]
        ck = self.ck[first[classes]]
        new = self._evaluate(q, ck, lambda idx, j: np.where(self.cls_h[idx] == classes[j], 0.0, q[idx]))
        return self._with(ck, new)

    def _evaluate(self, q: np.ndarray, ck_c: np.ndarray, qty_of: Any) -> np.ndarray:
        """Requirement of component ``ck_c[j]`` with its rows held as ``qty_of(rows, j)``, for every ``j``.

        Each change reruns the pairing on that component alone, as a
        pseudo-account of the held rows of the component; components marked
        out of date by :meth:`_note` are rerun as held in the same call
        (keys ``0..n_ck-1``) and ``comp_req`` updated.
        """
        stale = bool(self._pending.any())
        held = np.flatnonzero(q != 0.0)
        members = held[np.argsort(self.ck[held], kind="stable")]
        counts = np.bincount(self.ck[held], minlength=self.n_ck)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        size = counts[ck_c]
        new = np.empty(ck_c.size)
        lo = 0
        while lo < ck_c.size or stale:  # chunks of at most REGT_CHUNK_ROWS rows (at least one change)
            csum = np.cumsum(size[lo:])
            hi = lo + max(1, int(np.searchsorted(csum, REGT_CHUNK_ROWS, side="right"))) if lo < ck_c.size else lo
            j = np.arange(lo, hi)
            rep = np.repeat(j, size[j])
            first = np.repeat(np.cumsum(size[j]) - size[j], size[j])
            idx = members[starts[ck_c[rep]] + np.arange(rep.size) - first]
            qty = qty_of(idx, rep) if rep.size else np.zeros(0)
            base = self.n_ck if stale else 0
            keys = rep - lo + base
            if stale:
                rows = held[self._pending[self.ck[held]]]
                idx, qty, keys = np.concatenate([rows, idx]), np.concatenate([q[rows], qty]), \
                    np.concatenate([self.ck[rows], keys])
            r = self._run(idx, qty, keys, base + hi - lo)
            if stale:
                self.comp_req[self._pending] = r[:base][self._pending]
                self._pending[:] = False
                stale = False
            new[lo:hi] = r[base:]
            lo = hi
        return new


def _rows_of(ids: pa.Array, table_ids: pa.Array) -> np.ndarray:
    """Where each of the distinct ``ids`` is in the distinct ``table_ids`` (-1: not there), hashing ``ids``
    (the called accounts, usually few) rather than ``table_ids`` (every account of the partition)."""
    where = positions_in(table_ids, ids)  # for each table row: its place in ids
    at = np.full(len(ids), -1, dtype=np.int64)
    hit = np.flatnonzero(where >= 0)
    at[where[hit]] = hit
    return at


def _pair_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Codes of the distinct ``(a, b)`` pairs of non-negative integers, numbered in order of first appearance."""
    if a.size == 0:
        return np.zeros(0, np.int64)
    return pd.factorize(a.astype(np.int64) * (int(b.max()) + 1) + b)[0].astype(np.int64)


def _components(underlying: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """Component id per row: underlyings joined by ``tracks`` (an ETF and its index), union-find.

    Integer codes of the underlying and of what it tracks (-1: nothing), equal where the names are.
    """
    names = pd.unique(np.concatenate([underlying, tracks[tracks >= 0]]))
    parent = {u: u for u in names}

    def root(u: Any) -> Any:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    pairs = pd.DataFrame({"u": underlying, "t": tracks})[tracks >= 0].drop_duplicates()
    for u, t in zip(pairs["u"], pairs["t"]):  # distinct (ETF, index) pairs, not positions
        ru, rt = root(u), root(t)
        if ru != rt:
            parent[max(ru, rt)] = min(ru, rt)
    roots = {u: root(u) for u in names}
    return pd.factorize(pd.Series(underlying).map(roots).to_numpy(object))[0].astype(np.int64)


def _regt_engine(res: dict[str, Any], meth: Methodology, backend: Backend, rows: np.ndarray) -> RegTEngine:
    del meth, backend
    p = res["_book"].pos[["quantity"]].iloc[rows].reset_index(drop=True)  # what the engine reads
    codes, account = _accounts_of(res["_book"], rows)
    return RegTEngine(p, res["_book"].accounts[codes], account, res["_regt_prepared"], rows)


def _accounts_of(book: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct accounts of the book's positions ``rows`` as book account codes (so in sorted order
    of the ids), and each row's index into them: no string is compared."""
    codes, account = np.unique(book.pos["_acc"].to_numpy(np.int64)[rows], return_inverse=True)
    return codes, account.astype(np.int64)
