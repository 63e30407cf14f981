"""Scenario tables: the grid of a product group, and joint scenario files (SPEC 5.1, 5.2).

A scenario table holds, for every underlying (row) and scenario (column), the
relative price move, the volatility shock and the share of the P/L that counts
(1, or the extreme-move coverage). Rows of different product groups are padded
to one width with zero scenarios, marked invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ._exceptions import InputFileError
from ._methodology import GroupParams, Methodology


@dataclass
class ScenarioTable:
    """Per-underlying scenario tables, host NumPy arrays of shape ``(n_underlyings, m)``."""

    underlyings: np.ndarray  # (k,) names, row order
    price_move: np.ndarray
    vol_shock: np.ndarray
    coverage: np.ndarray
    valid: np.ndarray  # bool
    labels: np.ndarray  # (k, m) object: scenario names
    vol_mode: str | np.ndarray  # "relative" / "absolute", or one of them per row ((k,) object) where groups differ

    def columns(self, cols: slice) -> "ScenarioTable":
        """The table restricted to scenario columns ``cols``."""
        return ScenarioTable(self.underlyings, self.price_move[:, cols], self.vol_shock[:, cols],
                             self.coverage[:, cols], self.valid[:, cols], self.labels[:, cols], self.vol_mode)


#: The largest fall in price any grid scenario tests (turbulence widening and extreme moves stop there).
MAX_DOWN = 0.99

#: Each CSV number the nearest double to its text, so a CSV replays as the Parquet file it was written
#: from: pandas' default parser before 3.1 can be a unit in the last place off (3.1 is exact by default
#: and deprecates the option).
_EXACT_CSV = {"float_precision": "round_trip"} if tuple(map(int, pd.__version__.split(".")[:2])) < (3, 1) else {}


def group_points(p: GroupParams, down: np.ndarray, up: np.ndarray):
    """Grid scenarios of one product group for underlyings with ranges ``down``/``up`` ``(k,)``.

    Returns ``(move, vol, coverage, labels)``, each ``(k, m)``: every price point
    (``points_per_side`` each way plus zero) × every vol shock, then the two
    extreme moves when ``extreme_multiple > 0``.
    """
    n = p.points_per_side
    frac = np.arange(-n, n + 1, dtype=np.float64) / n  # -1 ... 0 ... 1
    moves = np.where(frac[None, :] < 0, frac[None, :] * down[:, None], frac[None, :] * up[:, None])
    vols = np.asarray(p.vol_shocks, dtype=np.float64)
    k = down.shape[0]
    move = np.repeat(moves, vols.size, axis=1)
    vol = np.tile(vols, (k, frac.size))
    cov = np.ones_like(move)
    names = [f"{f:+.4g}R vol{v:+.4g}" for f in frac for v in vols]
    if p.extreme_multiple > 0:
        # a price cannot fall below zero: the extreme move down stops at the grid's floor (as the range does)
        ext = np.stack([np.maximum(-p.extreme_multiple * down, -MAX_DOWN), p.extreme_multiple * up], axis=1)
        move = np.concatenate([move, ext], axis=1)
        vol = np.concatenate([vol, np.zeros((k, 2))], axis=1)
        cov = np.concatenate([cov, np.full((k, 2), p.extreme_coverage)], axis=1)
        names += [f"-{p.extreme_multiple:g}R extreme", f"+{p.extreme_multiple:g}R extreme"]
    labels = np.tile(np.asarray(names, dtype=object), (k, 1))
    return move, vol, cov, labels


def grid_table(market: pd.DataFrame, meth: Methodology, *, wide: bool = False) -> ScenarioTable:
    """The grid methodology's table for every underlying of ``market`` (sorted by name).

    ``wide=True`` gives the concentration re-stress table: ranges
    ``±concentration_down/up``, the same points and vol shocks, no extremes.
    """
    mk = market.sort_values("underlying", kind="stable")
    und = mk["underlying"].to_numpy(dtype=object)
    groups = mk["product_group"].to_numpy(dtype=object)
    vol = mk["vol"].to_numpy(dtype=np.float64)
    parts = []
    row_mode = np.empty(und.size, dtype=object)
    for g in sorted(set(groups)):
        p = meth.group(g)
        rows = np.flatnonzero(groups == g)
        row_mode[rows] = p.vol_shock_mode
        if wide:
            from dataclasses import replace  # noqa: PLC0415

            p = replace(p, extreme_multiple=0.0)
            down = np.full(rows.size, p.concentration_down)
            up = np.full(rows.size, p.concentration_up)
        else:
            widen = p.vol_scaled_sigmas * vol[rows] * np.sqrt(p.vol_scaled_horizon_days / 252.0)
            down = np.minimum(np.maximum(p.down, widen), MAX_DOWN)
            up = np.maximum(p.up, widen)
        parts.append((rows, *group_points(p, down, up)))
    modes = set(row_mode.tolist())
    m = max(part[1].shape[1] for part in parts)
    k = und.size
    price_move = np.zeros((k, m))
    vol_shock = np.zeros((k, m))
    coverage = np.ones((k, m))
    valid = np.zeros((k, m), dtype=bool)
    labels = np.full((k, m), "", dtype=object)
    for rows, mv, vs, cv, lb in parts:
        w = mv.shape[1]
        price_move[rows, :w] = mv
        vol_shock[rows, :w] = vs
        coverage[rows, :w] = cv
        valid[rows, :w] = True
        labels[rows, :w] = lb
    # one mode for the table when the groups agree (the methodology's own when there are none), else each
    # underlying's own
    vol_mode = row_mode if len(modes) > 1 else next(iter(modes), meth.defaults.vol_shock_mode)
    return ScenarioTable(und, price_move, vol_shock, coverage, valid, labels, vol_mode)


SCENARIO_COLUMNS = ("scenario_id", "underlying", "price_shock")


def read_scenario_file(path: str | Path) -> pd.DataFrame:
    """A joint-scenario file (Parquet or CSV) with the columns of SPEC 5.2, checked."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            df = pd.read_csv(path, dtype={"scenario_id": str, "underlying": str, "label": str}, **_EXACT_CSV)
        else:
            df = pd.read_parquet(path)
    except FileNotFoundError:
        raise InputFileError(f"{path}: scenario file not found; check the path") from None
    except Exception as exc:  # unreadable: one line, no traceback
        raise InputFileError(f"{path}: cannot be read as {'CSV' if path.suffix.lower() == '.csv' else 'Parquet'} "
                             f"({type(exc).__name__}); write it as Parquet or CSV") from None
    return check_scenarios(df, path)


def check_scenarios(df: pd.DataFrame, path: str | Path = "scenarios") -> pd.DataFrame:
    """A joint-scenario frame with the columns of SPEC 5.2 checked and the optional ones filled in
    (``vol_shock`` 0, ``weight`` 1, ``label`` the id); ``path`` names it in errors."""
    for col in SCENARIO_COLUMNS:
        if col not in df.columns:
            raise InputFileError(f"{path}: required column {col!r} is missing; add it (SPEC 5.2)")
    if len(df) == 0:
        raise InputFileError(f"{path}: holds no scenarios; give at least one row (SPEC 5.2)")
    df = df.copy()
    df["scenario_id"] = df["scenario_id"].astype(str)
    df["underlying"] = df["underlying"].astype(str)
    for col, default in (("price_shock", None), ("vol_shock", 0.0), ("weight", 1.0)):
        if col not in df.columns:
            df[col] = default
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() | ~np.isfinite(num.fillna(0.0))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputFileError(
                f"{path}: row {i}: column {col!r} must be a finite number (got {df[col].iloc[i]!r}); fix the value"
            )
        df[col] = num.astype(np.float64)
    if "vol_shock_mode" in df.columns:  # what the vol shocks are, when the file says (from-history does)
        modes = set(df["vol_shock_mode"].fillna("(missing)").astype(str))
        if not modes <= {"relative", "absolute"} or len(modes) > 1:
            raise InputFileError(f"{path}: column 'vol_shock_mode' must be one of 'relative', 'absolute' on every "
                                 f"row (got {sorted(modes)}); fix the values")
    bad = df["price_shock"] <= -1.0
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputFileError(f"{path}: row {i}: price_shock must be > -1 (got {df['price_shock'].iloc[i]}); "
                             "a price cannot fall below zero")
    if "label" not in df.columns:
        df["label"] = df["scenario_id"]
    return df


def unshocked_underlyings(scen: pd.DataFrame, market: pd.DataFrame) -> list[str]:
    """The market's underlyings no row of ``scen`` names, by name, ``group:`` or ``*``: every scenario leaves
    them unshocked (SPEC 5.2), which a replay's manifest says rather than let pass unseen."""
    sel = set(scen["underlying"].astype(str))
    if "*" in sel:
        return []
    groups = {s[6:] for s in sel if s.startswith("group:")}
    und = market["underlying"].astype(str).to_numpy(dtype=object)
    grp = market["product_group"].astype(str).to_numpy(dtype=object)
    return sorted(u for u, g in zip(und, grp) if u not in sel and g not in groups)


def joint_table(scen: pd.DataFrame, market: pd.DataFrame, multipliers=(1.0,), *, source: str = "scenarios",
                vol_mode: str = "relative") -> tuple[ScenarioTable, pd.DataFrame]:
    """Per-underlying table of joint scenarios × multipliers, and the scenario index frame.

    Selector precedence within a scenario: an underlying's own name, then
    ``group:NAME`` of its product group, then ``*``; an underlying no row names
    is unshocked. Returns the table (columns = scenario × multiplier, scenario
    major) and a frame ``scenario_id, multiplier, weight, label`` per column.
    """
    if "vol_shock_mode" in scen.columns and len(scen):
        said = str(scen["vol_shock_mode"].iloc[0])
        if said != vol_mode:
            raise InputFileError(f"{source}: its vol shocks are {said} changes (column vol_shock_mode) but the "
                                 f"methodology applies vol shocks as {vol_mode}; set vol_shock_mode = \"{said}\" in "
                                 "the methodology, or give shocks of that kind")
    mk = market.sort_values("underlying", kind="stable")
    und = mk["underlying"].to_numpy(dtype=object)
    groups = mk["product_group"].astype(str).to_numpy(dtype=object)
    known = set(und)
    known_groups = set(groups)
    sel = scen["underlying"].to_numpy(dtype=object)
    is_group = np.array([s.startswith("group:") for s in sel], dtype=bool)
    is_star = sel == "*"
    for i, s in enumerate(sel):
        if is_star[i]:
            continue
        if is_group[i]:
            if s[6:] not in known_groups:
                raise InputFileError(f"{source}: row {i}: selector {s!r} names no product group of the market "
                                     f"({', '.join(sorted(known_groups))}); fix the group name")
        elif s not in known:
            raise InputFileError(f"{source}: row {i}: underlying {s!r} is not in the market file; "
                                 "use a market underlying, 'group:NAME' or '*'")
    ids = pd.unique(scen["scenario_id"])
    sid_code = pd.Index(ids).get_indexer(scen["scenario_id"])
    weights = scen.groupby("scenario_id", sort=False)["weight"].agg(["min", "max"])
    incons = weights["min"] != weights["max"]
    if incons.any():
        raise InputFileError(f"{source}: scenario {incons.index[incons][0]!r} has different weights on its rows; "
                             "give each scenario one weight")
    labels = scen.groupby("scenario_id", sort=False)["label"].first().reindex(ids).astype(str).to_numpy()
    wts = weights["max"].reindex(ids).to_numpy(np.float64)
    k, s_n = und.size, ids.size
    price = np.zeros((k, s_n))
    vol = np.zeros((k, s_n))
    rank = np.full((k, s_n), -1)
    und_pos = {u: i for i, u in enumerate(und)}
    # lower rank wins: 0 own name, 1 group, 2 star; a later row of the same rank is a duplicate
    for i in range(len(scen)):  # rows of the scenario file (a few thousand), not positions
        s = sel[i]
        j = sid_code[i]
        if is_star[i]:
            rows, r = np.arange(k), 2
        elif is_group[i]:
            rows, r = np.flatnonzero(groups == s[6:]), 1
        else:
            rows, r = np.array([und_pos[s]]), 0
        cur = rank[rows, j]
        if np.any(cur == r):
            raise InputFileError(f"{source}: row {i}: scenario {ids[j]!r} shocks {s!r} twice; keep one row")
        take = (cur == -1) | (cur > r)
        rows = rows[take]
        price[rows, j] = scen["price_shock"].iat[i]
        vol[rows, j] = scen["vol_shock"].iat[i]
        rank[rows, j] = r
    mults = np.asarray(list(multipliers), dtype=np.float64)
    price_m = (price[:, :, None] * mults[None, None, :]).reshape(k, -1)
    vol_m = (vol[:, :, None] * mults[None, None, :]).reshape(k, -1)
    if np.any(price_m <= -1.0):
        r, c = (int(x[0]) for x in np.nonzero(price_m <= -1.0))
        j, mi = divmod(c, mults.size)
        raise InputFileError(f"{source}: scenario {ids[j]!r} shocks {und[r]!r} by {price[r, j]:+g}, which the "
                             f"multiplier {mults[mi]:g} takes to {price_m[r, c]:+g} (-100% or below); "
                             "use smaller multipliers or shocks")
    index = pd.DataFrame({
        "scenario_id": np.repeat(ids.astype(str), mults.size),
        "multiplier": np.tile(mults, s_n),
        "weight": np.repeat(wts, mults.size),
        "label": np.repeat(labels, mults.size),
    })
    m = price_m.shape[1]
    lab = np.tile((index["scenario_id"] + "x" + index["multiplier"].map("{:g}".format)).to_numpy(dtype=object), (k, 1))
    table = ScenarioTable(und, price_m, vol_m, np.ones((k, m)), np.ones((k, m), dtype=bool), lab, vol_mode)
    return table, index
