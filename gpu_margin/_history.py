"""``gpu-margin scenarios from-history``: joint-scenario files (SPEC 5.2) from market history.

For each chosen date ``d`` every underlying's ``h``-day return ending on ``d``,
``close[d] / close[d - h] - 1`` with ``d - h`` counted in trading rows of that
underlying's own history, becomes its ``price_shock`` in scenario ``d``; the
relative change of its implied volatility over the same window, where known,
becomes its ``vol_shock`` (else 0). An underlying without a return on ``d`` (no
close on ``d``, fewer than ``h`` closes before it, or no history at all) gets
the average move of the present underlyings of its product group, or of all
present underlyings when none of its group is present; such rows are flagged
(``proxy``) and explained (``note``). See docs/replays.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ._exceptions import InputFileError, JobError
from ._main import command

# Cells that mean "no value" in a CSV (FRED-style files write "." on holidays).
MISSING_MARKERS = frozenset({"", ".", "na", "n/a", "nan", "null", "none", "#n/a"})

OUTPUT_COLUMNS = ("scenario_id", "underlying", "price_shock", "vol_shock", "vol_shock_mode", "weight", "label", "date",
                  "proxy", "note")

_WORST = re.compile(r"^worst:(\d+)(?:@(.+))?$", re.IGNORECASE)
_MAX_NAMES = 8  # peer names listed in a proxy note; more are counted


# --------------------------------------------------------------------------- reading


def _is_csv(path: Path) -> bool:
    return ".csv" in [s.lower() for s in path.suffixes]


def _read_table(path: str | os.PathLike[str], what: str) -> pd.DataFrame:
    """A Parquet file/directory or a CSV (optionally compressed) as a frame; CSV cells stay text."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: {what} file not found; check the path")
    csv = _is_csv(path)
    try:
        if csv:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            df = pd.read_parquet(path)
    except Exception as exc:  # unreadable: one line, no traceback
        kind = "CSV" if csv else "Parquet"
        raise InputFileError(f"{path}: {what} file cannot be read as {kind} ({type(exc).__name__}); "
                             "write it as Parquet, or as CSV with a .csv name") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _where(path: Path, i: int) -> str:
    """Row ``i`` (0-based data row) as a user finds it: a CSV line number or a Parquet row."""
    return f"line {i + 2}" if _is_csv(path) else f"row {i}"


def _require(df: pd.DataFrame, cols: Iterable[str], path: Path, what: str, hint: str) -> None:
    for col in cols:
        if col not in df.columns:
            raise InputFileError(f"{path}: required column {col!r} is missing from the {what} file; {hint}")


def _as_number(s: pd.Series, col: str, path: Path, *, positive: bool) -> pd.Series:
    """Column ``s`` as float64; missing markers become NaN, any other text is an error."""
    if pd.api.types.is_bool_dtype(s.dtype):
        raise InputFileError(f"{path}: column {col!r} must be numeric (it is boolean); fix the column")
    if pd.api.types.is_numeric_dtype(s.dtype):
        num = pd.Series(s.to_numpy(dtype=np.float64, na_value=np.nan))
        bad = pd.Series(False, index=num.index)
    else:
        text = s.astype(object).where(s.notna(), "").astype(str).str.strip().reset_index(drop=True)
        missing = text.str.lower().isin(MISSING_MARKERS)
        num = pd.to_numeric(text.where(~missing, None), errors="coerce").astype(np.float64)
        bad = num.isna() & ~missing
        num = _correctly_rounded(num, text)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputFileError(f"{path}: {_where(path, i)}: column {col!r} must be a number (got {s.iloc[i]!r}); "
                             "fix the value, or leave the cell empty for a missing value")
    arr = num.to_numpy()
    bad = ~np.isnan(arr) & (~np.isfinite(arr) | ((arr <= 0.0) if positive else False))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputFileError(f"{path}: {_where(path, i)}: column {col!r} must be a finite number > 0 "
                             f"(got {arr[i]!r}); fix the value")
    return num


def _correctly_rounded(num: pd.Series, text: pd.Series) -> pd.Series:
    """``num`` (``pd.to_numeric`` of ``text``) with every value it parsed read again by NumPy, which rounds
    a decimal string to the nearest double as Python's ``float`` does: pandas before 3.1 can be one unit in
    the last place off, and a CSV must give the same shocks as the Parquet file it was written from."""
    ok = num.notna().to_numpy()
    if not ok.any():
        return num
    values = num.to_numpy(dtype=np.float64, copy=True)
    try:
        values[ok] = np.asarray(text.to_numpy(dtype=object)[ok], dtype=np.float64)
    except ValueError:  # a form only pandas reads: keep its values
        return num
    return pd.Series(values, index=num.index)


def _as_dates(s: pd.Series, path: Path) -> pd.Series:
    """Column ``date`` as tz-naive midnight timestamps; anything unparsable is an error."""
    s = s.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        d = s
    else:
        text = s.astype(object).where(s.notna(), "").astype(str).str.strip()
        d = pd.to_datetime(text.where(text != "", None), errors="coerce", format="ISO8601")
    if getattr(d.dt, "tz", None) is not None:
        d = d.dt.tz_localize(None)
    bad = d.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputFileError(f"{path}: {_where(path, i)}: column 'date' must be a date like 2008-10-15 "
                             f"(got {s.iloc[i]!r}); fix the value")
    return d.dt.normalize().astype("datetime64[ns]")


def _check_unique(df: pd.DataFrame, path: Path, what: str) -> None:
    dup = df.duplicated(["date", "underlying"], keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise InputFileError(f"{path}: {_where(path, i)}: {what} of {df['underlying'].iat[i]!r} on "
                             f"{df['date'].iat[i]:%Y-%m-%d} is given twice; keep one row per date and underlying")


def read_prices(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Daily closes, long format: ``date``, ``underlying``, ``close`` and optional ``iv``, checked.

    Returns a frame with exactly those four columns (``iv`` NaN where absent). A
    missing close (empty cell, ``.``, ``NA``) means no close on that date.
    """
    path = Path(path)
    raw = _read_table(path, "prices")
    _require(raw, ("date", "underlying", "close"), path, "prices",
             "the prices file needs date, underlying, close (and optionally iv), one row per date and underlying")
    df = pd.DataFrame({
        "date": _as_dates(raw["date"], path),
        "underlying": _underlyings(raw["underlying"], path),
        "close": _as_number(raw["close"], "close", path, positive=True),
        "iv": (_as_number(raw["iv"], "iv", path, positive=True) if "iv" in raw.columns
               else pd.Series(np.nan, index=range(len(raw)))),
    })
    _check_unique(df, path, "the close")
    return df


def _underlyings(s: pd.Series, path: Path) -> pd.Series:
    s = s.reset_index(drop=True)
    text = s.astype(object).where(s.notna(), "").astype(str).str.strip()
    bad = (text == "").to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputFileError(f"{path}: {_where(path, i)}: column 'underlying' is empty; name the underlying")
    return text.astype(object)


def read_vols(path: str | os.PathLike[str], vols_for: Sequence[str] | None = None) -> pd.DataFrame:
    """Implied-volatility levels as ``date``, ``underlying``, ``iv``.

    The file is either long (``date``, ``underlying``, ``iv``) or a single index
    series (``date``, ``vix``) that applies to every underlying named in
    ``vols_for``. Levels are used only through relative changes, so their unit
    (0.25 or 25 vol points) does not matter.
    """
    path = Path(path)
    raw = _read_table(path, "vols")
    if "underlying" in raw.columns:
        _require(raw, ("date", "iv"), path, "vols", "a per-underlying vols file has date, underlying, iv")
        if vols_for:
            raise JobError(f"{path}: --vols-for applies only to a (date, vix) file; this one names its underlyings "
                           "in column 'underlying': drop --vols-for")
        df = pd.DataFrame({
            "date": _as_dates(raw["date"], path),
            "underlying": _underlyings(raw["underlying"], path),
            "iv": _as_number(raw["iv"], "iv", path, positive=True),
        })
        _check_unique(df, path, "the iv")
        return df.dropna(subset=["iv"]).reset_index(drop=True)
    _require(raw, ("date", "vix"), path, "vols",
             "give date, underlying, iv per underlying, or date, vix with --vols-for U1,U2")
    if not vols_for:
        raise JobError(f"{path}: a (date, vix) vols file needs the underlyings it applies to; "
                       "add --vols-for SPX,COMP (comma-separated underlyings)")
    d = _as_dates(raw["date"], path)
    dup = d.duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise InputFileError(f"{path}: {_where(path, i)}: date {d.iat[i]:%Y-%m-%d} is given twice; "
                             "keep one row per date")
    one = pd.DataFrame({"date": d, "iv": _as_number(raw["vix"], "vix", path, positive=True)}).dropna(subset=["iv"])
    names = list(dict.fromkeys(vols_for))
    df = pd.DataFrame({
        "date": np.tile(one["date"].to_numpy(), len(names)),
        "underlying": np.repeat(np.asarray(names, dtype=object), len(one)),
        "iv": np.tile(one["iv"].to_numpy(), len(names)),
    })
    return df


def read_groups(path: str | os.PathLike[str]) -> pd.Series:
    """``underlying -> product_group`` from the engine's market file (SPEC 3)."""
    path = Path(path)
    raw = _read_table(path, "market")
    _require(raw, ("underlying", "product_group"), path, "market",
             "use the engine's market file (underlying, product_group, ...)")
    und = _underlyings(raw["underlying"], path)
    dup = und.duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise InputFileError(f"{path}: {_where(path, i)}: underlying {und.iat[i]!r} is listed twice; "
                             "keep one row per underlying")
    grp = raw["product_group"].reset_index(drop=True).astype(object)
    grp = grp.where(grp.notna(), "").astype(str).str.strip()
    return pd.Series(grp.where(grp != "", None).to_numpy(dtype=object), index=pd.Index(und, name="underlying"),
                     name="product_group")


# --------------------------------------------------------------------------- returns


def _check_horizon(horizon) -> int:
    if isinstance(horizon, str):
        try:
            horizon = int(horizon.strip())
        except ValueError:
            raise JobError(f"--horizon must be a whole number of trading days >= 1 (got {horizon!r}); "
                           "use e.g. --horizon 1") from None
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise JobError(f"--horizon must be a whole number of trading days >= 1 (got {horizon!r}); "
                       "use e.g. --horizon 1")
    return int(horizon)


def history_returns(prices: pd.DataFrame, horizon: int, vols: pd.DataFrame | None = None) -> pd.DataFrame:
    """``h``-day returns of every underlying on every date it has a close.

    Each underlying is shifted by ``h`` rows of its own history (the closes it
    has, sorted by date): equivalent to pivoting to a date × underlying matrix
    and shifting each column by ``h`` non-missing rows. Columns: ``date``,
    ``underlying``, ``start`` (the date ``h`` closes earlier, NaT if none),
    ``price_shock`` (NaN without a start), ``vol_shock`` (0 without iv at both
    ends), ``has_iv``.
    """
    h = _check_horizon(horizon)
    p = prices.loc[prices["close"].notna(), ["date", "underlying", "close", "iv"]]
    p = p.sort_values(["underlying", "date"], kind="stable").reset_index(drop=True)
    g = p.groupby("underlying", sort=False)
    start = g["date"].shift(h)
    ret = p["close"] / g["close"].shift(h) - 1.0
    iv = p["iv"]
    if vols is not None and len(vols):
        # an underlying the vols file names takes its iv from there alone, both ends of every window (a gap
        # there is no iv, never the prices file's iv in another unit: 13.76 / 0.14 - 1 is no vol shock)
        v = vols.set_index(["underlying", "date"])["iv"]
        key = pd.MultiIndex.from_arrays([p["underlying"], p["date"]])
        covered = p["underlying"].isin(set(vols["underlying"])).to_numpy()
        iv = pd.Series(v.reindex(key).to_numpy(), index=p.index).where(covered, iv)
    iv_key = pd.Series(iv.to_numpy(), index=pd.MultiIndex.from_arrays([p["underlying"], p["date"]]))
    iv_key = iv_key[iv_key.notna()]
    iv0 = pd.Series(iv_key.reindex(pd.MultiIndex.from_arrays([p["underlying"], start])).to_numpy(), index=p.index)
    has_iv = iv.notna() & iv0.notna() & ret.notna()
    vol_shock = (iv / iv0 - 1.0).where(has_iv, 0.0)
    return pd.DataFrame({"date": p["date"], "underlying": p["underlying"], "start": start,
                         "price_shock": ret, "vol_shock": vol_shock.astype(np.float64), "has_iv": has_iv})


# --------------------------------------------------------------------------- dates


def _fmt(d) -> str:
    return pd.Timestamp(d).strftime("%Y-%m-%d")


def select_dates(spec: str | Sequence, prices: pd.DataFrame, *,
                 source: str = "prices") -> list[tuple[pd.Timestamp, str]]:
    """Resolve ``--dates``: ISO dates and ``worst:N@REF`` items, in order, without repeats.

    Returns ``(date, tag)`` pairs; ``tag`` is ``""`` for a named date and e.g.
    ``"SPX worst #2"`` for a date picked by ``worst:N@SPX``. Every date must be a
    date of the history (some underlying has a close on it).
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    items = [s for s in items if not (isinstance(s, str) and s == "")]
    if not items:
        raise JobError("--dates is empty; give ISO dates (2008-10-15,2008-12-01) or worst:N@UNDERLYING")
    have = prices.loc[prices["close"].notna()]
    known = pd.DatetimeIndex(np.sort(have["date"].unique()))
    out: dict[pd.Timestamp, str] = {}
    for item in items:
        m = _WORST.match(item) if isinstance(item, str) else None
        if m:
            for d, tag in _worst(m, item, have, source):
                out.setdefault(d, tag)
            continue
        try:
            if isinstance(item, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", item):
                raise ValueError(item)
            d = pd.Timestamp(item)
            d = (d.tz_localize(None) if d.tz is not None else d).normalize()
        except (ValueError, TypeError):
            raise JobError(f"--dates: {item!r} is neither an ISO date (YYYY-MM-DD) nor worst:N@UNDERLYING; "
                           "fix the list") from None
        if d not in known:
            raise JobError(f"{source}: date {_fmt(d)} is not in the history (no close on it{_nearest(known, d)}); "
                           "choose a trading date of the file")
        out.setdefault(d, "")
    return list(out.items())


def _nearest(known: pd.DatetimeIndex, d: pd.Timestamp) -> str:
    if known.empty:
        return ""
    if d < known[0] or d > known[-1]:
        return f"; the history runs {_fmt(known[0])} to {_fmt(known[-1])}"
    i = int(known.searchsorted(d))
    return f"; nearest trading dates {_fmt(known[i - 1])} and {_fmt(known[i])}"


def _worst(m: re.Match, item: str, have: pd.DataFrame, source: str) -> list[tuple[pd.Timestamp, str]]:
    n = int(m.group(1))
    ref = m.group(2)
    names = pd.unique(have["underlying"])
    if ref is None:
        if len(names) != 1:
            raise JobError(f"--dates: {item!r} needs a reference underlying; write e.g. worst:{n}@{names[0]}")
        ref = names[0]
    ref = ref.strip()
    if n < 1:
        raise JobError(f"--dates: {item!r} asks for no dates; use worst:N@{ref} with N >= 1")
    r = history_returns(have.loc[have["underlying"] == ref], 1).dropna(subset=["price_shock"])
    if r.empty:
        raise JobError(f"--dates: {item!r}: {source} has fewer than two closes of {ref!r}; "
                       "name an underlying of the file with a history")
    if n > len(r):
        raise JobError(f"--dates: {item!r}: {ref} has only {len(r)} one-day returns in {source}; use a smaller N")
    worst = r.sort_values(["price_shock", "date"], kind="stable").head(n)
    return [(d, f"{ref} worst #{k + 1}") for k, d in enumerate(worst["date"])]


# --------------------------------------------------------------------------- scenarios


def _group_series(groups: pd.Series | pd.DataFrame | Mapping | None) -> pd.Series | None:
    if groups is None:
        return None
    if isinstance(groups, pd.DataFrame):
        return pd.Series(groups["product_group"].to_numpy(dtype=object),
                         index=groups["underlying"].astype(str).to_numpy(dtype=object))
    return pd.Series(groups, dtype=object)


def _names(names: Sequence[str]) -> str:
    names = list(names)
    if len(names) > _MAX_NAMES:
        return f"{len(names)} underlyings"
    return ", ".join(names)


def _exact_means(values: np.ndarray) -> np.ndarray:
    """Each row's mean of its non-NaN values (NaN where it has none), the sum exactly rounded (``math.fsum``):
    the same bits whatever the order of the columns and the NumPy or pandas version, so a scenario file is
    reproducible from its inputs anywhere (a pairwise sum's last bit depends on both)."""
    out = np.full(values.shape[0], np.nan)
    for i, row in enumerate(values):
        v = row[~np.isnan(row)]
        if v.size:
            out[i] = math.fsum(v.tolist()) / v.size
    return out


def scenarios_from_history(prices: pd.DataFrame, dates: str | Sequence, horizon: int = 1, *,
                           groups: pd.Series | pd.DataFrame | Mapping | None = None,
                           vols: pd.DataFrame | None = None, source: str = "prices") -> pd.DataFrame:
    """Joint scenarios (one per date) from daily closes; the frame of a scenario file.

    ``prices``: ``date``, ``underlying``, ``close`` (optional ``iv``), as
    :func:`read_prices` returns. ``dates``: ISO dates and ``worst:N@REF`` items
    (a comma-separated string or a list). ``groups``: ``underlying ->
    product_group`` (a Series, mapping, or the market frame); when given, the
    scenarios cover exactly the market's underlyings, otherwise those of
    ``prices``. ``vols``: ``date``, ``underlying``, ``iv`` (for the underlyings it
    names it replaces ``prices.iv`` entirely, so a window never mixes the two).

    Columns: ``scenario_id`` (ISO date), ``underlying``, ``price_shock``,
    ``vol_shock``, ``weight`` (1.0), ``label`` (``"2008-10-15 1d"``), ``date``,
    ``proxy``, ``note``; rows by scenario then underlying.
    """
    h = _check_horizon(horizon)
    if "iv" not in prices.columns:
        prices = prices.assign(iv=np.nan)
    chosen = select_dates(dates, prices, source=source)
    grp = _group_series(groups)
    universe = np.asarray(sorted(grp.index if grp is not None else pd.unique(prices["underlying"])), dtype=object)
    days = pd.DatetimeIndex([d for d, _ in chosen])
    n, k = days.size, universe.size
    if k == 0:
        raise JobError(f"{source}: no underlyings to build scenarios for; check the prices and market files")
    if grp is not None and not prices["underlying"].isin(universe).any():
        raise JobError(f"{source}: none of the market's underlyings ({_names(list(universe))}) has a history here; "
                       "give PRICES that hold at least one of them")

    ret = history_returns(prices.loc[prices["underlying"].isin(universe)], h, vols)
    ret = ret.loc[ret["date"].isin(days)]

    def matrix(col: str) -> pd.DataFrame:
        return ret.pivot(index="date", columns="underlying", values=col).reindex(index=days, columns=universe)

    R = matrix("price_shock")  # noqa: N806 - dates x underlyings
    V = matrix("vol_shock").where(R.notna())  # noqa: N806
    S = matrix("start")  # noqa: N806
    ret = ret.assign(has_iv=ret["has_iv"].astype(np.float64), closed=1.0)
    IV = matrix("has_iv").fillna(0.0) > 0  # noqa: N806
    closed = matrix("closed").notna()
    present = R.notna()
    empty = ~present.any(axis=1)
    if empty.any():
        d = days[int(np.flatnonzero(empty.to_numpy())[0])]
        raise JobError(f"{source}: date {_fmt(d)}: no underlying has a close on it and {h} trading day(s) before; "
                       "choose a later date or a shorter --horizon")

    # proxies: mean over present underlyings of the same product group, else over all present
    col_group = (grp.reindex(universe) if grp is not None else pd.Series(None, index=universe, dtype=object))
    col_group = col_group.where(col_group.notna(), None)
    has_group = col_group.notna().to_numpy()

    def group_fill(frame: pd.DataFrame) -> np.ndarray:
        out = np.full((n, k), np.nan)
        if has_group.any():
            values = frame.to_numpy(dtype=np.float64)
            cols = np.flatnonzero(has_group)
            codes = pd.factorize(col_group.to_numpy()[cols])[0]
            for c in range(int(codes.max()) + 1):
                members = cols[codes == c]
                out[:, members] = _exact_means(values[:, members])[:, None]
        return out

    g_price, g_vol = group_fill(R), group_fill(V)
    all_price = _exact_means(R.to_numpy(dtype=np.float64))[:, None]
    all_vol = _exact_means(V.to_numpy(dtype=np.float64))[:, None]
    own = present.to_numpy()
    use_group = ~own & ~np.isnan(g_price)
    price = np.where(own, R.to_numpy(), np.where(use_group, g_price, all_price))
    vol = np.where(own, V.to_numpy(), np.where(use_group, g_vol, all_vol))

    # notes (strings per requested date x underlying: a few thousand at most per date)
    pres_long = present.stack()
    pres_long = pres_long[pres_long]
    pres_names = pd.Series(pres_long.index.get_level_values(1), index=pres_long.index.get_level_values(0))
    all_names = pres_names.groupby(level=0).agg(_names).reindex(days).to_numpy(dtype=object)
    grp_names = pd.Series(pres_names.to_numpy(), index=pd.MultiIndex.from_arrays(
        [pres_names.index, col_group.reindex(pres_names.to_numpy()).to_numpy()]))
    grp_names = grp_names[grp_names.index.get_level_values(1).notna()].groupby(level=[0, 1]).agg(_names)

    day_s = np.repeat(np.asarray([_fmt(d) for d in days], dtype=object), k)
    und_l = np.tile(universe, n)
    grp_l = np.tile(col_group.to_numpy(dtype=object), n)
    own_l = own.ravel()
    start_l = S.to_numpy().ravel()
    iv_l = IV.to_numpy().ravel()
    closed_l = closed.to_numpy().ravel()
    ug_l = use_group.ravel()
    all_l = np.repeat(all_names, k)
    known = set(prices.loc[prices["close"].notna(), "underlying"])
    notes = np.empty(n * k, dtype=object)
    for i in range(n * k):  # one string per output row; no arithmetic here
        if own_l[i]:
            iv_txt = "iv change over the window" if iv_l[i] else "no iv, vol_shock 0"
            notes[i] = f"own history: close {_fmt(start_l[i])} -> {day_s[i]}; {iv_txt}"
            continue
        if und_l[i] not in known:
            why = "no price history"
        elif not closed_l[i]:
            why = f"no close on {day_s[i]}"
        else:
            why = f"fewer than {h + 1} closes up to {day_s[i]}"
        if ug_l[i]:
            peers = grp_names.get((pd.Timestamp(day_s[i]), grp_l[i]), "")
            how = f"mean of product group {grp_l[i]} ({peers})"
        elif grp_l[i] is not None:
            how = f"no {grp_l[i]} underlying present, mean of all present ({all_l[i]})"
        else:
            how = f"no product group known, mean of all present ({all_l[i]})"
        notes[i] = f"proxy: {why}; {how}"

    tags = dict(chosen)
    labels = np.asarray([f"{_fmt(d)} {h}d" + (f" ({tags[d]})" if tags[d] else "") for d in days], dtype=object)
    out = pd.DataFrame({
        "scenario_id": day_s,
        "underlying": und_l,
        "price_shock": price.ravel().astype(np.float64),
        "vol_shock": vol.ravel().astype(np.float64),
        "vol_shock_mode": "relative",  # iv[d] / iv[d - h] - 1: a replay checks its methodology agrees
        "weight": np.ones(n * k),
        "label": np.repeat(labels, k),
        "date": np.repeat(np.asarray([d.date() for d in days], dtype=object), k),
        "proxy": ~own_l,
        "note": notes,
    })
    return out


#: Parquet key of the scenario file's provenance (JSON): the command, its arguments, its input files' sha256.
PROVENANCE_KEY = b"gpu_margin.provenance"


def write_scenarios(frame: pd.DataFrame, out: str | os.PathLike[str], *, force: bool = False,
                    provenance: dict | None = None) -> Path:
    """Write a scenario frame as Parquet (``.parquet``/``.pq``) or CSV (``.csv``), atomically; ``provenance``
    goes into a Parquet file's metadata (a replay copies it into its manifest)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise JobError(f"--out {out}: unknown file type {out.suffix or '(none)'!r}; name it .parquet or .csv")
    if out.exists() and not force:
        raise JobError(f"--out {out}: file exists; choose another name or add --force to replace it")
    if out.is_dir():
        raise JobError(f"--out {out}: is a directory; name a .parquet or .csv file")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if provenance is not None:
                meta = dict(table.schema.metadata or {})
                meta[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True).encode()
                table = table.replace_schema_metadata(meta)
            pq.write_table(table, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# --------------------------------------------------------------------------- CLI


def _args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser(
        "from-history",
        help="one joint scenario per chosen date from daily closes (h-day returns ending on the date)",
        description="Build a joint-scenario file (SPEC 5.2): for each chosen date, every underlying's h-day "
        "return ending on that date is its price shock; missing underlyings get their product group's "
        "average move (flagged proxy). See docs/replays.md.",
    )
    p.add_argument("prices", metavar="PRICES",
                   help="daily closes, Parquet or CSV, long format: date, underlying, close [, iv]")
    p.add_argument("--dates", required=True, metavar="D1,D2,...",
                   help="ISO dates and/or worst:N@UNDERLYING (the N largest one-day falls of UNDERLYING)")
    p.add_argument("--horizon", default="1", metavar="DAYS",
                   help="return horizon in trading days of each underlying's history (default 1)")
    p.add_argument("--out", required=True, metavar="FILE", help="scenario file to write, .parquet or .csv")
    p.add_argument("--market", metavar="MARKET",
                   help="the engine's market file (underlying, product_group): scenarios cover its underlyings "
                   "and proxies use product groups")
    p.add_argument("--vols", metavar="VOLS",
                   help="implied vols: date, underlying, iv; or date, vix with --vols-for")
    p.add_argument("--vols-for", metavar="U1,U2", default=None,
                   help="underlyings a (date, vix) VOLS file applies to")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")


@command("scenarios", "Build joint-scenario files (from-history: one scenario per date of market history).", _args)
def _scenarios(args: argparse.Namespace) -> int:
    if args.action == "from-history":
        return _from_history(args)
    raise JobError(f"scenarios: unknown action {args.action!r}; use from-history")  # pragma: no cover


def _from_history(args: argparse.Namespace) -> int:
    h = _check_horizon(args.horizon)
    out = Path(args.out)
    if out.exists() and not args.force:  # fail before reading anything
        raise JobError(f"--out {out}: file exists; choose another name or add --force to replace it")
    prices = read_prices(args.prices)
    vols_for = [s.strip() for s in args.vols_for.split(",") if s.strip()] if args.vols_for else None
    if vols_for and not args.vols:
        raise JobError("--vols-for needs --vols FILE (a date, vix table); add --vols or drop --vols-for")
    if vols_for:
        held = set(prices["underlying"])
        unknown = [u for u in vols_for if u not in held]
        if unknown:
            raise JobError(f"--vols-for: {_names(unknown)} not in {args.prices} (its underlyings: "
                           f"{_names(sorted(held))}); check the names")
    vols = read_vols(args.vols, vols_for) if args.vols else None
    groups = read_groups(args.market) if args.market else None
    frame = scenarios_from_history(prices, args.dates, h, groups=groups, vols=vols, source=str(args.prices))
    from . import __version__  # noqa: PLC0415
    from ._outputs import sha256_file  # noqa: PLC0415

    files = {k: v for k, v in (("prices", args.prices), ("vols", args.vols), ("market", args.market)) if v}
    provenance = {
        "command": "gpu-margin scenarios from-history", "gpu_margin": __version__,
        "arguments": {"dates": args.dates, "horizon": h, "vols_for": vols_for},
        "inputs": {k: {"path": str(v), "sha256": sha256_file(Path(v)) if Path(v).is_file() else None}
                   for k, v in files.items()},
    }
    write_scenarios(frame, out, force=args.force, provenance=provenance)
    n_s = frame["scenario_id"].nunique()
    n_u = frame["underlying"].nunique()
    print(f"wrote {out}: {n_s} scenario(s) x {n_u} underlying(s), horizon {h}d, "
          f"{int(frame['proxy'].sum())} proxy row(s), {int((frame['vol_shock'] != 0).sum())} with a vol shock")
    if groups is not None:
        extra = sorted(set(prices["underlying"]) - set(groups.index))
        if extra:
            print(f"note: {len(extra)} underlying(s) of {args.prices} are not in {args.market} and were left out: "
                  f"{_names(extra)}")
    return 0
