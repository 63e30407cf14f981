"""Readers of the input tables: positions, market and accounts, from Parquet (SPEC section 3).

Each input is a Parquet file or a directory of Parquet files (hive-partitioned
directories too: ``key=value`` folders become columns). A reader checks the
required columns, casts every known column safely to its canonical type
(:mod:`gpu_margin._schema`) and keeps extra columns, listed in a note. A fatal
problem raises :class:`InputFileError` with one line naming the file, the
column and the remedy.

Row-level problems of positions are not fatal: they are rejects, decided by
:func:`gpu_margin._validate.validate_positions`. Market and accounts rows are
checked here (a bad market row is fatal).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._exceptions import InputFileError
from ._schema import (
    ACCOUNT_COLUMNS,
    MARKET_COLUMNS,
    POSITION_COLUMNS,
    POSITIONS_RESERVED,
    Column,
)

_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


@dataclass(frozen=True)
class InputFile:
    """One Parquet file of an input: its path, the name used in ``source``, and its hive keys."""

    path: Path
    source: str
    partition: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True)
class InputTable:
    """A read input: the frame, the files it came from, and notes for the manifest.

    ``extra_columns`` are the columns the contract does not name; they are kept
    in ``frame`` after the known ones.
    """

    frame: pd.DataFrame
    files: tuple[InputFile, ...]
    notes: tuple[str, ...] = ()
    extra_columns: tuple[str, ...] = field(default=())


# ---------------------------------------------------------------- files


def list_input_files(path: str | os.PathLike[str]) -> list[InputFile]:
    """The Parquet files of an input path, in a deterministic (sorted) order.

    A file is itself; a directory is every file below it whose name and folders
    do not start with ``.`` or ``_`` (``_SUCCESS``, ``.crc``), sorted by path.
    ``source`` is the path relative to the input's parent folder
    (``positions/part-00000.parquet``; a single file is its name).
    """
    p = Path(path)
    if p.is_file():
        return [InputFile(p, p.name)]
    if not p.exists():
        raise InputFileError(f"{p}: no such file or directory; check the path (relative paths are from the job file)")
    if not p.is_dir():
        raise InputFileError(f"{p}: not a regular file or directory; give a Parquet file or a directory of them")
    found: list[InputFile] = []
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        rel_dir = Path(dirpath).relative_to(p)
        keys = []
        for part in rel_dir.parts:
            if "=" in part:
                k, v = part.split("=", 1)
                v = unquote(v)
                keys.append((unquote(k), None if v == _HIVE_NULL else v))
        for name in sorted(filenames):
            if name.startswith((".", "_")):
                continue
            fp = Path(dirpath) / name
            found.append(InputFile(fp, (Path(p.name) / rel_dir / name).as_posix(), tuple(keys)))
    found.sort(key=lambda f: f.source)
    if not found:
        raise InputFileError(f"{p}: directory holds no Parquet files; write the table there as *.parquet")
    return found


def _read_parquet(f: InputFile, row_groups: tuple[int, int] | None = None) -> pa.Table:
    """The file's table (row groups ``[start, stop)`` only, when given) with its hive columns."""
    try:
        if row_groups is None:
            table = pq.read_table(f.path)
        else:
            table = pq.ParquetFile(f.path).read_row_groups(range(*row_groups))
    except (OSError, pa.ArrowException, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError(
            f"{f.path}: cannot be read as Parquet ({reason}); check that it is a complete Parquet file"
        ) from None
    for key, value in f.partition:
        if key in table.column_names:
            continue  # the file's own column wins over its folder name
        table = table.append_column(key, pa.array([value] * table.num_rows, type=pa.string()))
    return table


# ---------------------------------------------------------------- casting


def _fatal_type(label: str, col: Column, got: pa.DataType, detail: str = "") -> InputFileError:
    extra = f" ({detail})" if detail else ""
    return InputFileError(
        f"{label}: column '{col.name}' has type {got}{extra} that cannot be read safely; store it as {col.hint}"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def cast_column(
    arr: pa.ChunkedArray | pa.Array, col: Column, label: str, *, from_text: bool = False
) -> pa.ChunkedArray:
    """``arr`` cast safely to the canonical type of ``col``; :class:`InputFileError` if it cannot be.

    Accepted: any string type or dictionary of strings for strings (integers
    too for id columns); integers, floats and decimals for float64 (integers
    beyond 2**53 are refused); dates, timestamps and ISO date strings for dates.
    ``from_text`` (hive partition values) also parses numbers from strings.
    """
    if isinstance(arr, pa.Array):
        arr = pa.chunked_array([arr], type=arr.type)
    t = arr.type
    target = col.type
    if pa.types.is_dictionary(t):
        try:
            arr = arr.cast(t.value_type)
        except pa.ArrowException as exc:
            raise _fatal_type(label, col, t, _first_line(exc)) from None
        t = arr.type
    if pa.types.is_null(t) or (arr.null_count == len(arr) and not pa.types.is_nested(t)):
        # no values at all (e.g. an all-NaN pandas column): nothing to cast
        return pa.chunked_array([pa.nulls(len(arr), type=target)], type=target)
    is_text = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    ok = False
    safe = True
    if target == pa.string():
        ok = is_text or (col.id_like and pa.types.is_integer(t))
    elif target == pa.float64():
        ok = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or (from_text and is_text)
    elif target == pa.date32():
        ok = pa.types.is_date(t) or pa.types.is_timestamp(t) or is_text
        if pa.types.is_timestamp(t):
            safe = False  # a time of day is dropped: an expiry is a date
            if t.tz is not None:
                arr = pc.local_timestamp(arr)
    if not ok:
        raise _fatal_type(label, col, t)
    if arr.type == target:
        return arr
    try:
        return arr.cast(target, safe=safe)
    except (pa.ArrowException, ValueError, OverflowError) as exc:
        raise _fatal_type(label, col, t, _first_line(exc)) from None


def conform_table(
    table: pa.Table,
    columns: Sequence[Column],
    label: str,
    *,
    reserved: Sequence[str] = (),
    text_columns: Sequence[str] = (),
) -> tuple[pa.Table, list[str]]:
    """``table`` with the known ``columns`` first (cast, absent optional ones as nulls), then extras.

    Returns the table and the names of its extra columns. ``text_columns`` are
    columns that came from folder names (parsed from text).
    """
    names = table.column_names
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputFileError(f"{label}: column '{name}' appears more than once; keep one column of that name")
        seen.add(name)
    for name in reserved:
        if name in seen:
            raise InputFileError(
                f"{label}: column '{name}' is reserved (the reader adds the file name and row number); rename it"
            )
    for col in columns:
        if col.required and col.name not in seen:
            raise InputFileError(f"{label}: required column '{col.name}' is missing; add it ({col.hint})")
    arrays, fields = [], []
    for col in columns:
        if col.name in seen:
            arr = cast_column(table.column(col.name), col, label, from_text=col.name in text_columns)
        else:
            arr = pa.chunked_array([pa.nulls(table.num_rows, type=col.type)], type=col.type)
        arrays.append(arr)
        fields.append(pa.field(col.name, col.type))
    known = {c.name for c in columns}
    extras = [n for n in names if n not in known]
    for n in extras:
        arrays.append(table.column(n))
        fields.append(pa.field(n, table.schema.field(n).type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields)), extras


def to_frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow table as pandas: strings as ``str``, dates as ``datetime64[s]`` (any year 1-9999)."""
    df = table.to_pandas(date_as_object=False, split_blocks=True)
    for name, typ in zip(table.column_names, table.schema.types, strict=True):
        if pa.types.is_date(typ):
            df[name] = df[name].astype("datetime64[s]")
    return df


def frame_to_table(df: pd.DataFrame, label: str) -> pa.Table:
    """A pandas frame as Arrow, or :class:`InputFileError` naming the column Arrow cannot convert."""
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError):
        pass
    arrays = []
    for name in df.columns:
        try:
            arrays.append(pa.array(df[name], from_pandas=True))
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise InputFileError(
                f"{label}: column '{name}' holds values of mixed or unsupported types ({_first_line(exc)}); "
                "give it one type"
            ) from None
    return pa.Table.from_arrays(arrays, names=[str(c) for c in df.columns])


def positions_table(f: InputFile, row_groups: tuple[int, int] | None = None) -> tuple[pa.Table, list[str]]:
    """One positions file as a conformed Arrow table with ``source`` and ``row`` first; its extra columns.

    ``row_groups``: read only the Parquet row groups ``[start, stop)`` (``row``
    still counts from the file's first row).
    """
    first = 0
    if row_groups is not None and row_groups[0] > 0:
        md = pq.ParquetFile(f.path).metadata
        first = sum(md.row_group(i).num_rows for i in range(row_groups[0]))
    table, extras = conform_table(
        _read_parquet(f, row_groups),
        POSITION_COLUMNS,
        str(f.path),
        reserved=POSITIONS_RESERVED,
        text_columns=[k for k, _ in f.partition],
    )
    n = table.num_rows
    table = table.add_column(0, "row", pa.array(np.arange(first, first + n, dtype=np.int64)))
    table = table.add_column(0, "source", pa.array([f.source], type=pa.string()).take(np.zeros(n, dtype=np.int64)))
    return table, extras


def _read_input(
    path: str | os.PathLike[str], what: str, read_one
) -> tuple[pa.Table, list[InputFile], list[str]]:
    """Every file of an input conformed by ``read_one(file) -> (table, extras)`` and concatenated."""
    files = list_input_files(path)
    tables: list[pa.Table] = []
    extras: list[str] = []
    for f in files:
        table, ex = read_one(f)
        tables.append(table)
        extras += [e for e in ex if e not in extras]
    if len(tables) == 1:
        return tables[0], files, extras
    try:
        combined = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as exc:
        raise InputFileError(
            f"{path}: the {what} files disagree on the type of an extra column ({_first_line(exc)}); "
            "give every file the same columns and types"
        ) from None
    return combined, files, extras


def _conformed(columns: Sequence[Column]):
    def read_one(f: InputFile) -> tuple[pa.Table, list[str]]:
        raw = _read_parquet(f)
        return conform_table(raw, columns, str(f.path), text_columns=[k for k, _ in f.partition])

    return read_one


def _extras_note(what: str, extras: Sequence[str]) -> tuple[str, ...]:
    if not extras:
        return ()
    return (f"{what}: extra columns kept and carried through: {', '.join(extras)}",)


# ---------------------------------------------------------------- public readers


def read_positions_file(f: InputFile) -> tuple[pd.DataFrame, list[str]]:
    """One positions file as a frame with ``source`` and ``row`` first; and its extra column names.

    For pipelines that read a directory file by file (one partition per file).
    """
    table, extras = positions_table(f)
    return to_frame(table), extras


def read_positions(path: str | os.PathLike[str]) -> InputTable:
    """All positions of a file or directory: ``source``, ``row``, the contract's columns, extras.

    ``source`` is the file (relative to the input's folder) and ``row`` the
    0-based row in that file; together they identify a row in rejects and make
    the default ``position_id``. Extra columns a file lacks are missing values.
    """
    table, files, extras = _read_input(path, "positions", positions_table)
    return InputTable(to_frame(table), tuple(files), _extras_note("positions", extras), tuple(extras))


def read_market(path: str | os.PathLike[str]) -> InputTable:
    """The market table, one validated row per underlying (:func:`validate_market`); fatal on a bad row."""
    from ._validate import validate_market  # noqa: PLC0415

    table, files, extras = _read_input(path, "market", _conformed(MARKET_COLUMNS))
    label = str(files[0].path) if len(files) == 1 else str(path)
    frame = validate_market(to_frame(table), label)
    return InputTable(frame, tuple(files), _extras_note("market", extras), tuple(extras))


def _no_nan_cash(table: pa.Table, label: str) -> None:
    """A stored NaN cash (a number that is not one, unlike a missing value, which counts as 0) is an error:
    once in pandas the two look alike, and NaN would become a cash of 0."""
    cash = table.column("cash")
    if not pa.types.is_floating(cash.type):
        return
    nan = pc.fill_null(pc.is_nan(cash), False).to_numpy(zero_copy_only=False)
    if nan.any():
        i = int(np.flatnonzero(nan)[0])
        who = table.column("account_id")[i].as_py()
        more = int(nan.sum()) - 1
        also = f" and {more} more row{'s' if more > 1 else ''}" if more else ""
        raise InputFileError(f"{label}: column 'cash' must be a finite number (got NaN for account_id {who!r}{also}); "
                             "give the cash balance or leave it empty (null) for 0")


def read_accounts(path: str | os.PathLike[str] | None) -> InputTable:
    """The accounts table with defaults filled (cash 0, type 'portfolio'); an empty table for ``None``."""
    from ._validate import validate_accounts  # noqa: PLC0415

    if path is None:
        empty = pa.Table.from_arrays(
            [pa.array([], type=c.type) for c in ACCOUNT_COLUMNS], names=[c.name for c in ACCOUNT_COLUMNS]
        )
        return InputTable(validate_accounts(to_frame(empty), "accounts"), ())
    table, files, extras = _read_input(path, "accounts", _conformed(ACCOUNT_COLUMNS))
    label = str(files[0].path) if len(files) == 1 else str(path)
    _no_nan_cash(table, label)
    frame = validate_accounts(to_frame(table), label)
    return InputTable(frame, tuple(files), _extras_note("accounts", extras), tuple(extras))


def run_starts(values: pa.Array) -> np.ndarray:
    """``(n,) bool``: where a run of equal values starts (row 0 starts one; two nulls are equal)."""
    n = len(values)
    new = np.ones(n, dtype=bool)
    if n > 1:
        prev, nxt = values.slice(0, n - 1), values.slice(1)
        if values.null_count == 0:
            new[1:] = pc.not_equal(nxt, prev).to_numpy(zero_copy_only=False)
        else:
            same = pc.or_(pc.fill_null(pc.equal(nxt, prev), False), pc.and_(pc.is_null(nxt), pc.is_null(prev)))
            new[1:] = ~same.to_numpy(zero_copy_only=False)
    return new


def is_sorted(table: pa.Table, keys: list[str]) -> bool:
    """Whether the rows are in ascending order of ``keys`` (nulls last, as ``sort_by`` puts them).

    One pass of comparisons between neighbouring rows (far cheaper than a
    sort): the tables a partition writes mostly come out of the engine in
    order already, and position files are often written in account order.
    """
    n = table.num_rows
    if n < 2:
        return True
    tied = pa.array(np.ones(n - 1, dtype=bool))  # rows equal on every key so far
    for key in keys:
        col = table.column(key)
        prev, nxt = col.slice(0, n - 1), col.slice(1)
        p_null, n_null = pc.is_null(prev), pc.is_null(nxt)
        # nxt < prev: a value after a null, or both present and smaller
        before = pc.or_(pc.and_(p_null, pc.invert(n_null)), pc.fill_null(pc.less(nxt, prev), False))
        if pc.any(pc.and_(tied, before)).as_py():
            return False
        same = pc.or_(pc.and_(p_null, n_null), pc.fill_null(pc.equal(nxt, prev), False))
        tied = pc.and_(tied, same)
        if not pc.any(tied).as_py():
            return True
    return True


def strictly_increasing(values: pa.Array | pa.ChunkedArray) -> bool:
    """Whether every value is below the next and none is missing (vacuously true below two values):
    one comparison per row, the cheap test that ids written in order are distinct."""
    n = len(values)
    return n < 2 or bool(pc.all(pc.less(values.slice(0, n - 1), values.slice(1)), skip_nulls=False).as_py())


def arrow_strings(values: Any) -> pa.Array:
    """Strings (a pandas column, NumPy or Python strings, or Arrow) as one Arrow string array.

    No copy for an Arrow-backed pandas column in one chunk (``string`` or
    ``large_string``, as it is); Python strings are encoded. Sorting and
    matching ids on it compares bytes, which orders UTF-8 strings as Python
    orders ``str``.
    """
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_null(arr.type):
        arr = arr.cast(pa.string())
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise TypeError(f"ids must be strings (got {arr.type})")
    return arr


#: The dtype pandas gives a column of Python strings (``str`` with pandas 3, ``object`` before).
STR_DTYPE = pd.Series(np.array(["x"], dtype=object)).dtype


def str_column(arr: pa.Array, as_object: bool = False) -> Any:
    """Arrow strings as the column pandas builds from the same Python strings (or an ``object`` column),
    with no Python string made where pandas keeps strings in Arrow."""
    if as_object or STR_DTYPE == np.dtype(object):
        return pd.Series(np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object), dtype=object, copy=False)
    return pd.array(arr, dtype=STR_DTYPE)


def positions_in(values: pa.Array, keys: Any) -> np.ndarray:
    """Where each of ``values`` is in ``keys`` (``int64``; -1 where it is not)."""
    found = pc.index_in(values, value_set=arrow_strings(keys).cast(values.type))
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
