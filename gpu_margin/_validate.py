"""Validation of the input tables: every position row ends valid or rejected with a code (SPEC 3, 4, 8).

:func:`validate_positions` is vectorised (pandas and NumPy, no loop over
rows). Checks run in the order of :data:`gpu_margin._schema.REJECT_CODES`; a
row gets the code of the first check it fails. Valid rows come back with the
columns of :data:`gpu_margin._schema.VALID_COLUMNS` (defaults filled, market
data joined, the volatility to price with chosen), then extra input columns.

:func:`validate_market` and :func:`validate_accounts` check the small tables;
a bad row there is fatal (:class:`InputFileError`, one line naming the file,
the column and the underlying or account).
"""

from __future__ import annotations

import datetime as _dt
import math
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ._exceptions import InputFileError, JobError
from ._io import conform_table, frame_to_table, strictly_increasing, to_frame
from ._schema import (
    ACCOUNT_COLUMNS,
    ACCOUNT_TYPES,
    DAYS_PER_YEAR,
    DEFAULT_ACCOUNT_TYPE,
    DEFAULT_OPTION_MULTIPLIER,
    DEFAULT_OPTION_STYLE,
    DEFAULT_STOCK_MULTIPLIER,
    KINDS,
    MARKET_COLUMNS,
    POSITION_COLUMNS,
    REJECT_CODE_NAMES,
    REJECTS_SCHEMA,
    RIGHTS,
    STYLES,
    VALID_COLUMN_NAMES,
    VALID_COLUMNS,
    VOL_SOURCES,
)

# the latest expiry a datetime64[ns] holds, with margin
_LAST_EXPIRY = np.datetime64("2261-12-31", "D")
_SHOW_CHARS = 40


# ---------------------------------------------------------------- small helpers


def _as_asof(asof: Any) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(asof)
    except (ValueError, TypeError):
        ts = pd.NaT
    if ts is pd.NaT or pd.isna(ts) or ts.tzinfo is not None or not (1900 <= ts.year <= 2200):
        raise JobError(f"asof {asof!r} is not a usable date; give it as YYYY-MM-DD")
    return ts.normalize()


def _as_rate(rate: Any) -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError):
        r = math.nan
    if not math.isfinite(r):
        raise JobError(f"rate {rate!r} is not a finite number; give the continuous risk-free rate, e.g. 0.05")
    return r


def _bool(values: pd.Series | np.ndarray) -> np.ndarray:
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype=bool, na_value=False)
    return np.asarray(values, dtype=bool)


def _show_text(s: pd.Series) -> np.ndarray:
    """``'value'`` (shortened) or ``missing`` for each string."""
    shown = "'" + s.str.slice(0, _SHOW_CHARS) + "'"
    return shown.fillna("missing").to_numpy(dtype=object)


def _show_number(s: pd.Series) -> np.ndarray:
    text = s.astype("str")
    return np.where(s.isna().to_numpy(), "missing", text.to_numpy(dtype=object)).astype(object)


def _show_date(s: pd.Series) -> np.ndarray:
    return s.dt.strftime("%Y-%m-%d").astype(object).fillna("missing").to_numpy(dtype=object)


def _arrow_text(s: pd.Series) -> pa.Array | pa.ChunkedArray:
    """The strings of a text column as Arrow: no copy for the Arrow-backed ``str`` columns of the reader.

    Chunked where the column is in pieces (e.g. after ``pd.concat``).
    """
    return pa.array(s.array)


def _whole(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One Arrow array, for the arguments Arrow takes unchunked only (value sets, replacements)."""
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _index_in(s: pd.Series, values: Any) -> np.ndarray:
    """Position of each string of ``s`` in the distinct strings ``values``, -1 where missing or not there.

    What ``pd.Index(values).get_indexer(s)`` gives (exact matches), found in
    Arrow without making Python strings: a low-cardinality column (kind, right,
    style, underlying) becomes small integer codes compared as NumPy arrays.
    """
    arr = _arrow_text(s)
    found = pc.index_in(arr, value_set=_whole(pa.array(values, type=arr.type)))
    return np.asarray(pc.fill_null(found, -1), dtype=np.int64)


def _blank(s: pd.Series) -> np.ndarray:
    """Missing or only whitespace: ``s.isna() | (s.str.strip() == "")`` as a bool array.

    Trimmed by the Arrow kernel pandas itself uses for Arrow-backed strings,
    without the pandas wrapping; its whitespace is Python's (every code point).
    """
    blank = pc.equal(pc.utf8_trim_whitespace(_arrow_text(s)), "")
    return np.asarray(pc.fill_null(blank, True), dtype=bool)


def _text_of_codes(values: Any, codes: np.ndarray) -> pd.Series:
    """A ``str`` Series of ``values[code]`` for each code, missing where the code is -1."""
    strings = pa.array(values, type=pa.large_string())
    return pd.Series(pd.array(strings.take(pa.array(codes, mask=codes < 0)), dtype="str"))


def _unique(s: pd.Series) -> bool:
    """Whether the strings of ``s`` are all distinct (missing values are equal, as in ``duplicated``).

    Strings in strictly increasing order are distinct: ids in a file written in
    id order cost one comparison per row. Otherwise one hash pass in Arrow,
    cheaper than ``duplicated``, which is left for the (rare) duplicates.
    """
    arr = _arrow_text(s)
    return strictly_increasing(arr) or len(arr.unique()) == len(arr)


def _is_text(dtype: Any) -> bool:
    return isinstance(dtype, pd.StringDtype)


def _dtype_ok(s: pd.Series, arrow_type: Any) -> bool:
    if arrow_type == pa.string():
        return _is_text(s.dtype)
    if arrow_type == pa.float64():
        return s.dtype == np.float64
    return s.dtype.kind == "M" and getattr(s.dtype, "tz", None) is None


# ---------------------------------------------------------------- positions


def conform_positions(positions: pd.DataFrame, source: str = "positions") -> pd.DataFrame:
    """``positions`` with the contract's columns in canonical dtypes, ``source`` and ``row`` first.

    Frames from :func:`gpu_margin._io.read_positions` pass through; other
    frames (the Python API) are cast like a file, named ``source`` in errors.
    Without ``source``/``row`` columns, rows are ``source`` rows 0..n-1.
    """
    has_src = "source" in positions.columns and "row" in positions.columns
    body = positions.drop(columns=["source", "row"]) if has_src else positions
    fast = all(c.name in body.columns and _dtype_ok(body[c.name], c.type) for c in POSITION_COLUMNS)
    if not fast:
        table, _ = conform_table(frame_to_table(body, source), POSITION_COLUMNS, source)
        body = to_frame(table)
        body.index = positions.index
    n = len(body)
    if has_src:
        try:
            src = positions["source"].astype("str")
            row = positions["row"].astype(np.int64)
        except (ValueError, TypeError):
            raise InputFileError(
                f"{source}: columns 'source' and 'row' must be a file name and an integer row number; "
                "drop them to let the reader number the rows"
            ) from None
    else:
        src = pd.Series([source] * n, dtype="str", index=body.index)
        row = pd.Series(np.arange(n, dtype=np.int64), index=body.index)
    out = body.copy() if body is positions else body
    out = out.drop(columns=["source", "row"], errors="ignore")
    out.insert(0, "row", row.to_numpy())
    out.insert(0, "source", src)
    return out.reset_index(drop=True)


class _Rejector:
    """Assigns each row the first failing check's code and a message (vectorised)."""

    def __init__(self, n: int) -> None:
        self.code = np.zeros(n, dtype=np.int16)  # 0 = valid, else 1 + index in REJECT_CODE_NAMES
        self.message = np.empty(n, dtype=object)  # set for every rejected row, None elsewhere

    @property
    def ok(self) -> np.ndarray:
        return self.code == 0

    def check(self, name: str, bad: np.ndarray, message: Callable[[np.ndarray], Any]) -> None:
        mask = bad & (self.code == 0)
        if not mask.any():
            return
        self.code[mask] = REJECT_CODE_NAMES.index(name) + 1
        self.message[mask] = message(mask)


def _implied(
    rows: np.ndarray,
    mark: np.ndarray,
    is_call: np.ndarray,
    spot: np.ndarray,
    strike: np.ndarray,
    days: np.ndarray,
    rate: np.ndarray,
    q: np.ndarray,
    american: np.ndarray,
    m_idx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Implied vol of ``rows``, solved once per distinct contract and mark: ``(vol, ok)`` per row."""
    from .kernels import implied_vol  # noqa: PLC0415

    keys = pd.MultiIndex.from_arrays(
        [m_idx[rows], is_call[rows], strike[rows], days[rows], american[rows], mark[rows]]
    )
    codes, uniques = keys.factorize()
    rep = np.empty(len(uniques), dtype=np.int64)
    rep[codes] = rows  # a representative row per distinct key (all share the key)
    t = days[rep].astype(np.float64) / DAYS_PER_YEAR
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        vol, ok = implied_vol(
            mark[rep], is_call[rep], spot[rep], strike[rep], t, rate[rep], q[rep], american[rep]
        )
    vol = np.asarray(vol, dtype=np.float64)
    ok = np.asarray(ok, dtype=bool) & np.isfinite(vol) & (vol > 0)
    return vol[codes], ok[codes]


def validate_positions(
    positions: pd.DataFrame,
    market: pd.DataFrame,
    *,
    asof: Any,
    rate: float,
    source: str = "positions",
    duplicates: Mapping[str, int] | None = None,
    columns: Collection[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split positions into ``(valid, rejects)``: every input row is in exactly one of them.

    ``positions`` as read by :func:`gpu_margin._io.read_positions` (or any
    frame with the contract's columns: then ``source`` names it and rows are
    numbered 0..n-1). ``market`` as read by :func:`read_market` (validated
    again here, cheaply). ``asof`` a date, ``rate`` the run's continuous rate.

    ``valid`` has the columns of ``VALID_COLUMNS`` and then the extra input
    columns (``input_<name>`` where the name is taken, e.g. ``vol``), in input
    order with a fresh index; ``rejects`` the columns of
    ``REJECTS_SCHEMA``. Duplicates of ``position_id`` are found within the
    frame given; ``duplicates`` adds ids known to be repeated elsewhere (the
    pipeline's partitions are parts of one book), with their count in the book.
    ``columns``: build only these columns of ``valid`` (in the same order; the
    extra columns only where named): what the pipeline's engine reads, without
    making text columns nobody reads there.
    """
    asof_ts = _as_asof(asof)
    run_rate = _as_rate(rate)
    pos = conform_positions(positions, source)
    mkt = validate_market(market, "market")
    n = len(pos)
    known = {c.name for c in POSITION_COLUMNS} | {"source", "row"}
    extras = [c for c in pos.columns if c not in known]

    # the low-cardinality text columns as codes: positions in KINDS, RIGHTS, STYLES, market rows (-1: none)
    kind = pos["kind"]
    kind_code = _index_in(kind, KINDS)
    is_opt = kind_code == KINDS.index("option")
    is_fut = kind_code == KINDS.index("future")
    is_stock = kind_code == KINDS.index("stock")
    dated = is_opt | is_fut
    m_idx = _index_in(pos["underlying"], mkt["underlying"])
    m_ok = m_idx >= 0
    m_safe = np.where(m_ok, m_idx, 0)

    right = pos["right"]
    right_code = _index_in(right, RIGHTS)
    is_call = (right_code == RIGHTS.index("C")) & is_opt
    strike = pos["strike"].to_numpy(dtype=np.float64)
    expiry = pos["expiry"].to_numpy().astype("datetime64[D]")
    has_expiry = ~np.isnat(expiry)
    asof_d = np.datetime64(asof_ts.date(), "D")
    days = np.where(has_expiry, (np.where(has_expiry, expiry, asof_d) - asof_d).astype(np.int64), 0)
    mult = pos["multiplier"].to_numpy(dtype=np.float64)
    qty = pos["quantity"].to_numpy(dtype=np.float64)
    mark = pos["mark"].to_numpy(dtype=np.float64)
    iv = pos["iv"].to_numpy(dtype=np.float64)
    style_given = pos["style"]
    style_missing = _bool(style_given.isna())
    market_style_code = _index_in(mkt["option_style"], STYLES)  # all found: validate_market checked them
    style_code = np.where(style_missing, market_style_code[m_safe], _index_in(style_given, STYLES))
    american = (style_code == STYLES.index("A")) & is_opt

    with np.errstate(invalid="ignore"):
        r = _Rejector(n)
        acct = pos["account_id"]
        r.check(
            "account_missing",
            _blank(acct),
            lambda m: "account_id is missing or blank (got " + _show_text(acct[m]) + "); give every row an account",
        )
        und = pos["underlying"]
        r.check(
            "unknown_underlying",
            ~m_ok,
            lambda m: "underlying " + _show_text(und[m]) + " is not in the market file; add a market row for it",
        )
        r.check(
            "bad_kind",
            ~(is_opt | is_fut | is_stock),
            lambda m: "kind must be 'stock', 'option' or 'future' (got " + _show_text(kind[m]) + ")",
        )
        r.check(
            "bad_right",
            is_opt & (right_code < 0),
            lambda m: "right must be 'C' or 'P' for an option (got " + _show_text(right[m]) + ")",
        )
        strike_s = pos["strike"]
        r.check(
            "strike_not_positive",
            is_opt & ~(np.isfinite(strike) & (strike > 0)),
            lambda m: "strike must be a finite number > 0 for an option (got " + _show_number(strike_s[m]) + ")",
        )
        exp_s = pos["expiry"]
        too_late = has_expiry & (expiry > _LAST_EXPIRY)
        r.check(
            "expiry_missing",
            dated & (~has_expiry | too_late),
            lambda m: np.where(
                too_late[m],
                "expiry " + _show_date(exp_s[m]) + " is after 2261-12-31 and unusable; "
                "give the contract's expiry date",
                "expiry is missing; an option or future needs its expiry date",
            ),
        )
        r.check(
            "expired",
            dated & has_expiry & (days < 0),
            lambda m: "expiry "
            + _show_date(exp_s[m])
            + f" is before the as-of date {asof_ts.date()}; remove expired positions",
        )
        r.check(
            "bad_style",
            is_opt & ~style_missing & (style_code < 0),
            lambda m: "style must be 'A' or 'E' (got " + _show_text(style_given[m]) + ")",
        )
        mult_s = pos["multiplier"]
        mult_given = ~np.isnan(mult)
        r.check(
            "multiplier_not_positive",
            (mult_given & ~(np.isfinite(mult) & (mult > 0))) | (is_fut & ~mult_given),
            lambda m: "multiplier must be a finite number > 0 (got "
            + _show_number(mult_s[m])
            + "); futures need their contract multiplier",
        )
        qty_s = pos["quantity"]
        r.check(
            "quantity_missing",
            ~np.isfinite(qty) | (qty == 0),
            lambda m: "quantity must be a finite non-zero number (got " + _show_number(qty_s[m]) + ")",
        )
        mark_s = pos["mark"]
        mark_given = ~np.isnan(mark)
        r.check(
            "mark_invalid",
            mark_given & ~(np.isfinite(mark) & (mark >= 0)),
            lambda m: "mark must be a finite number >= 0 (got " + _show_number(mark_s[m]) + ")",
        )
        iv_s = pos["iv"]
        iv_given = ~np.isnan(iv) & is_opt
        r.check(
            "iv_invalid",
            iv_given & ~(np.isfinite(iv) & (iv > 0)),
            lambda m: "iv must be a finite number > 0 (got " + _show_number(iv_s[m]) + ")",
        )

    spot = mkt["spot"].to_numpy(dtype=np.float64)[m_safe]
    q = mkt["dividend_yield"].to_numpy(dtype=np.float64)[m_safe]
    m_rate = mkt["rate"].to_numpy(dtype=np.float64)[m_safe]
    row_rate = np.where(np.isnan(m_rate), run_rate, m_rate)
    vol_market = mkt["vol"].to_numpy(dtype=np.float64)[m_safe]

    vol = vol_market.copy()
    vol_source = np.full(n, VOL_SOURCES.index("market"), dtype=np.int8)  # a position in VOL_SOURCES
    use_iv = r.ok & iv_given
    vol[use_iv] = iv[use_iv]
    vol_source[use_iv] = VOL_SOURCES.index("iv")
    solve = np.flatnonzero(r.ok & is_opt & ~iv_given & mark_given & (days > 0))
    if len(solve):
        solved, solved_ok = _implied(solve, mark, is_call, spot, strike, days, row_rate, q, american, m_idx)
        good = solve[solved_ok]
        vol[good] = solved[solved_ok]
        vol_source[good] = VOL_SOURCES.index("implied")
        failed = np.zeros(n, dtype=bool)
        failed[solve[~solved_ok]] = True
        r.check(
            "no_implied_vol",
            failed,
            lambda m: "mark "
            + _show_number(mark_s[m])
            + " admits no implied volatility (right "
            + _show_text(right[m])
            + ", strike "
            + _show_number(strike_s[m])
            + "); give the option's iv or check its mark",
        )

    pid_given = pos["position_id"]
    no_pid = _bool(pid_given.isna())
    if no_pid.any():  # the default id "source:row", built for the rows that need it only
        default_pid = pos["source"][no_pid] + ":" + pos["row"][no_pid].astype("str")
        given = _arrow_text(pid_given)
        filled = pc.replace_with_mask(given, pa.array(no_pid), _whole(_arrow_text(default_pid)).cast(given.type))
        pid = pd.Series(pd.array(filled, dtype="str"))
    else:
        pid = pid_given.astype("str")
    dup = np.zeros(n, dtype=bool) if _unique(pid) else _bool(pid.duplicated(keep=False))
    book_counts = pd.Series(duplicates, dtype=np.int64) if duplicates else None
    if book_counts is not None:
        dup = dup | _bool(pid.isin(book_counts.index))

    def dup_message(m: np.ndarray) -> np.ndarray:
        ids = pid[m]
        counts = ids.map(pid[dup].value_counts())
        if book_counts is not None:
            counts = np.maximum(counts, ids.map(book_counts).fillna(0)).astype(np.int64)
        return "position_id " + _show_text(ids) + " appears " + counts.astype("str").to_numpy(dtype=object) + (
            " times; make position_id unique"
        )

    r.check("duplicate_position_id", dup, dup_message)

    rejects = _rejects_frame(pos, pid, r)
    ok = r.ok
    all_ok = bool(ok.all())
    keep = slice(None) if all_ok else np.flatnonzero(ok)  # no copies here when every row is valid

    def take(values: np.ndarray) -> np.ndarray:
        return values[keep]

    def take_s(s: pd.Series) -> pd.Series:
        return s.iloc[keep].reset_index(drop=True)

    def text(values: Any, codes: np.ndarray) -> pd.Series:  # values[code] of the valid rows, -1 missing
        return _text_of_codes(values, take(codes))

    nan = np.float64(np.nan)
    mult_default = np.where(is_opt, DEFAULT_OPTION_MULTIPLIER, DEFAULT_STOCK_MULTIPLIER)
    expiry_ns = pos["expiry"].to_numpy()
    # NaT in the column's own unit (a generic NaT is deprecated in NumPy 2.5; one in ns would overflow a far date)
    nat = np.array("NaT", dtype=expiry_ns.dtype) if expiry_ns.dtype.kind == "M" else np.datetime64("NaT", "ns")
    expiry_ns = np.where(dated & has_expiry & ok, expiry_ns, nat).astype("datetime64[ns]")
    # a valid option's right and style are in RIGHTS and STYLES (checked): rebuilt from their codes
    build: dict[str, Any] = {  # each column made only when asked for
        "source": lambda: take_s(pos["source"]),
        "row": lambda: take(pos["row"].to_numpy(dtype=np.int64)),
        "account_id": lambda: take_s(pos["account_id"]),
        "position_id": lambda: take_s(pid),
        "underlying": lambda: take_s(pos["underlying"]),
        "kind": lambda: take_s(kind),
        "right": lambda: text(RIGHTS, np.where(is_opt, right_code, -1)),
        "is_call": lambda: take(is_call),
        "strike": lambda: take(np.where(is_opt, strike, nan)),
        "expiry": lambda: take(expiry_ns),
        "t": lambda: take(np.where(dated, days / DAYS_PER_YEAR, 0.0)),
        "style": lambda: text(STYLES, np.where(is_opt, style_code, -1)),
        "american": lambda: take(american),
        "multiplier": lambda: take(np.where(mult_given, mult, mult_default)),
        "quantity": lambda: take(qty),
        "mark": lambda: take(mark),
        "iv": lambda: take(np.where(iv_given, iv, nan)),
        "spot": lambda: take(spot),
        "dividend_yield": lambda: take(q),
        "rate": lambda: take(row_rate),
        "product_group": lambda: text(mkt["product_group"], m_idx),
        "tracks": lambda: text(mkt["tracks"], m_idx),
        "vol_market": lambda: take(vol_market),
        "vol": lambda: take(vol),
        "vol_source": lambda: text(VOL_SOURCES, vol_source),
    }
    wanted = VALID_COLUMN_NAMES if columns is None else [c for c in VALID_COLUMN_NAMES if c in columns]
    cols = {name: build[name]() for name in wanted}
    valid = pd.DataFrame(cols, index=pd.RangeIndex(n if all_ok else len(keep)))
    valid = valid.astype({name: dtype for name, dtype in VALID_COLUMNS if name in cols})
    for e in extras:  # an extra column named like a valid column is carried as input_<name>
        name = e if e not in VALID_COLUMN_NAMES else f"input_{e}"
        if columns is None or name in columns:
            valid[name] = take_s(pos[e])
    assert tuple(valid.columns[: len(wanted)]) == tuple(wanted)
    return valid, rejects


def _rejects_frame(pos: pd.DataFrame, pid: pd.Series, r: _Rejector) -> pd.DataFrame:
    bad = np.flatnonzero(~r.ok)
    names = np.asarray(REJECT_CODE_NAMES, dtype=object)
    frame = pd.DataFrame(
        {
            "source": pos["source"].iloc[bad].reset_index(drop=True),
            "row": pos["row"].to_numpy(dtype=np.int64)[bad],
            "account_id": pos["account_id"].iloc[bad].reset_index(drop=True),
            "position_id": pid.iloc[bad].reset_index(drop=True),
            "code": names[r.code[bad] - 1],
            "message": r.message[bad],
        }
    )
    return frame.astype({f.name: ("int64" if f.name == "row" else "str") for f in REJECTS_SCHEMA})


# ---------------------------------------------------------------- market and accounts


def _conform_small(frame: pd.DataFrame, columns: Any, source: str) -> pd.DataFrame:
    table, _ = conform_table(frame_to_table(frame, source), columns, source)
    return to_frame(table)


def _first_bad(
    df: pd.DataFrame, bad: np.ndarray, column: str, key: str, source: str, expected: str, remedy: str
) -> None:
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    value = df[column].iloc[i]
    shown = "missing" if pd.isna(value) else repr(value.item() if hasattr(value, "item") else value)
    who = df[key].iloc[i]
    who_s = f"{key} {who!r}" if not pd.isna(who) else f"row {i}"
    more = int(bad.sum()) - 1
    also = f" and {more} more row{'s' if more > 1 else ''}" if more else ""
    raise InputFileError(f"{source}: column '{column}' must be {expected} (got {shown} for {who_s}{also}); {remedy}")


def _check_key(df: pd.DataFrame, key: str, source: str, what: str) -> None:
    k = df[key]
    blank = _blank(k)
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        raise InputFileError(f"{source}: column '{key}' is empty in row {i}; give every {what} row its {key}")
    if len(pc.unique(_arrow_text(k))) == len(k):  # one hash pass in Arrow; the message needs pandas only if not
        return
    dup = k.duplicated(keep=False)
    if dup.any():
        value = k[dup].iloc[0]
        times = int((k == value).sum())
        raise InputFileError(
            f"{source}: column '{key}' has {value!r} {times} times; keep one row per {key}"
        )


def _positive_finite(s: pd.Series) -> np.ndarray:
    v = s.to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(v) & (v > 0))


def validate_market(market: pd.DataFrame, source: str = "market") -> pd.DataFrame:
    """The market table checked and with defaults: one row per underlying; fatal on any bad row.

    Rules: ``underlying`` non-empty and unique; ``spot`` and ``vol`` finite and
    > 0; ``dividend_yield`` finite (missing = 0); ``rate`` finite or missing
    (= the run's rate); ``product_group`` non-empty; ``option_style`` 'A' or
    'E' (missing = 'E'); ``tracks`` optional.
    """
    df = _conform_small(market, MARKET_COLUMNS, source)
    _check_key(df, "underlying", source, "market")
    u = "underlying"
    _first_bad(df, _positive_finite(df["spot"]), "spot", u, source, "a finite number > 0", "fix the market row")
    _first_bad(
        df, _positive_finite(df["vol"]), "vol", u, source, "a finite number > 0, e.g. 0.25", "fix the market row"
    )
    q = df["dividend_yield"].fillna(0.0)
    df["dividend_yield"] = q
    _first_bad(
        df, ~np.isfinite(q.to_numpy(dtype=np.float64)), "dividend_yield", u, source, "a finite number",
        "give a continuous yield or leave it empty for 0",
    )
    rt = df["rate"].to_numpy(dtype=np.float64)
    _first_bad(
        df, ~np.isnan(rt) & ~np.isfinite(rt), "rate", u, source, "a finite number or empty",
        "leave it empty to use the run's rate",
    )
    pg = df["product_group"]
    _first_bad(
        df, _bool(pg.isna() | (pg.str.strip() == "")), "product_group", u, source, "a product group name",
        "give e.g. 'equity' or 'broad_index'",
    )
    df["option_style"] = df["option_style"].fillna(DEFAULT_OPTION_STYLE)
    _first_bad(
        df, ~_bool(df["option_style"].isin(STYLES)), "option_style", u, source, "'A' or 'E'",
        "leave it empty for European",
    )
    tracks = df["tracks"]
    df["tracks"] = tracks.where(~_bool(tracks.str.strip() == ""))
    return df.reset_index(drop=True)


def validate_accounts(accounts: pd.DataFrame, source: str = "accounts") -> pd.DataFrame:
    """The accounts table checked and with defaults (cash 0, account_type 'portfolio'); fatal on a bad row."""
    df = _conform_small(accounts, ACCOUNT_COLUMNS, source)
    _check_key(df, "account_id", source, "accounts")
    df["cash"] = df["cash"].fillna(0.0)
    _first_bad(
        df, ~np.isfinite(df["cash"].to_numpy(dtype=np.float64)), "cash", "account_id", source, "a finite number",
        "give the cash balance or leave it empty for 0",
    )
    df["account_type"] = df["account_type"].fillna(DEFAULT_ACCOUNT_TYPE)
    _first_bad(
        df, ~_bool(df["account_type"].isin(ACCOUNT_TYPES)), "account_type", "account_id", source,
        "'portfolio' or 'regt'", "leave it empty for 'portfolio'",
    )
    return df.reset_index(drop=True)


def as_date(value: Any) -> _dt.date:
    """A run's as-of date from a string, date or timestamp; :class:`JobError` if it is not one."""
    return _as_asof(value).date()
