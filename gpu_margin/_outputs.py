"""Output tables: explicit Arrow schemas, deterministic Parquet writes, digests.

Every table is written with its schema (partitions whose columns are all null
would otherwise write mismatched schemas) and without pandas metadata that
varies, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._io import is_sorted

S, F, I, B, D = pa.string(), pa.float64(), pa.int64(), pa.bool_(), pa.date32()

SCHEMAS: dict[str, pa.Schema] = {
    "accounts": pa.schema([
        ("account_id", S), ("account_type", S), ("pm_requirement", F), ("pm_scenario_risk", F),
        ("pm_minimum_excess", F), ("pm_contingency", F), ("pm_concentration", F), ("regt_initial", F),
        ("regt_maintenance", F), ("nlv", F), ("requirement", F), ("excess", F), ("worst_scenario", S),
        ("n_positions", I), ("n_rejected", I), ("has_rejects", B),
    ]),
    "classes": pa.schema([
        ("account_id", S), ("product_group", S), ("underlying", S), ("class_risk", F), ("worst_scenario", S),
        ("worst_price_move", F), ("worst_vol_shock", F), ("minimum", F), ("contingency", F), ("concentration", F),
        ("n_positions", I), ("group_risk", F), ("group_requirement", F),
    ]),
    "rejects": pa.schema([
        ("source", S), ("row", I), ("account_id", S), ("position_id", S), ("code", S), ("message", S),
    ]),
    "regt_legs": pa.schema([
        ("account_id", S), ("position_id", S), ("strategy", S), ("paired_with", S), ("paired_quantity", F),
        ("regt_initial", F), ("regt_maintenance", F),
    ]),
    "margin_calls": pa.schema([
        ("account_id", S), ("reason", S), ("requirement", F), ("nlv", F), ("deficit", F), ("asof", D), ("due", D),
    ]),
    "liquidation": pa.schema([
        ("account_id", S), ("step", I), ("position_id", S), ("close_quantity", F), ("requirement_after", F),
        ("nlv_after", F), ("deficit_after", F), ("cured", B),
    ]),
}

SORT_KEYS: dict[str, list[str]] = {
    "accounts": ["account_id"],
    "classes": ["account_id", "product_group", "underlying"],
    "rejects": ["source", "row"],
    "regt_legs": ["account_id", "position_id", "strategy", "paired_with"],
    "margin_calls": ["account_id"],
    "liquidation": ["account_id", "step"],
}


def to_table(name: str, df: pd.DataFrame | pa.Table) -> pa.Table:
    """``df`` (pandas, or Arrow) as an Arrow table of the named schema (columns selected and cast, nulls kept)."""
    schema = SCHEMAS[name]
    if isinstance(df, pa.Table):
        return df.select(schema.names).cast(schema)
    cols = []
    for f in schema:
        if f.name in df.columns:
            s = df[f.name]
        else:
            s = pd.Series([None] * len(df), dtype=object)
        if pa.types.is_string(f.type):
            cols.append(pa.array(s, type=f.type, from_pandas=True))
        elif pa.types.is_date32(f.type):
            cols.append(pa.array(pd.to_datetime(s).dt.date.to_numpy(dtype=object), type=f.type))
        else:
            cols.append(pa.array(s.to_numpy(), type=f.type, from_pandas=True))
    return pa.Table.from_arrays(cols, schema=schema)


#: Columns with about one distinct value per row: dictionary encoding costs time and saves nothing. The
#: ids, and the dollar amounts that differ in nearly every row (each writes about 20-50% faster plain, to
#: a file no larger: the writer's dictionary outgrows its page limit and falls back to plain after building
#: it; benchmarks/RESULTS.md, sixth session).
#: Amounts with few distinct values (minimums, add-ons that are mostly zero, paired quantities) keep it.
HIGH_CARDINALITY = frozenset({
    "account_id", "position_id", "paired_with", "message",
    "regt_initial", "regt_maintenance", "class_risk", "group_risk", "group_requirement",
    "pm_requirement", "pm_scenario_risk", "nlv", "requirement", "excess",
})  # fmt: skip


ROW_GROUP_ROWS = 1_000_000


def statistics_columns(schema: pa.Schema) -> list[str]:
    """The columns whose row groups get min/max statistics: the first (every table's leading sort key, so
    its row groups hold disjoint ranges a reader's filter can skip) and every column that is not text.

    A text column after the first is sorted only within its leading key, so every row group spans nearly
    its whole range and the statistics would prune nothing, while computing them compares every row's
    string (0.2-0.45 s per 11M rows and column, about a sixth of the encoding; benchmarks/RESULTS.md,
    seventh session).
    """
    return [f.name for i, f in enumerate(schema) if i == 0 or not _is_text(f.type)]


def _is_text(t: pa.DataType) -> bool:
    """Strings in any Arrow layout: plain, large, view, or dictionary-encoded."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def write_table(table: pa.Table, path: Path, order: np.ndarray | None = None) -> None:
    """Deterministic Parquet: fixed compression, no statistics that depend on timing, one row group per 1M rows.

    Dictionary encoding for the repetitive columns (strategy, underlying,
    reason, ...), plain for the ids. ``order``: write the rows of ``table`` in
    this order, one row group at a time (the reordered table is never whole
    in memory; the file is the same as writing ``table.take(order)``).
    """
    if order is None:
        write_row_groups(table.schema, [table], path)  # the writer cuts it into row groups
        return
    in_place = bool(order.size == 0 or (order[0] == 0 and np.all(np.diff(order) == 1)))
    # parts that come in account order already (a book written account by account) need no copy
    write_row_groups(table.schema, (
        table.slice(i, ROW_GROUP_ROWS) if in_place else table.take(pa.array(order[i:i + ROW_GROUP_ROWS]))
        for i in range(0, max(len(order), 1), ROW_GROUP_ROWS)), path)


def write_row_groups(schema: pa.Schema, row_groups: Iterable[pa.Table], path: Path) -> None:
    """:func:`write_table` of tables made one row group at a time (each of ``ROW_GROUP_ROWS`` rows but the last):
    the same file as writing them concatenated, never all in memory at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dictionary = [n for n in schema.names if n not in HIGH_CARDINALITY]
    with pq.ParquetWriter(path, schema, compression="zstd", write_statistics=statistics_columns(schema),
                          store_schema=True, use_dictionary=dictionary) as writer:
        for rows in row_groups:
            writer.write_table(rows, row_group_size=ROW_GROUP_ROWS)


def write_part(table: pa.Table, path: Path) -> None:
    """An intermediate part file (Arrow IPC, uncompressed: read back once by :func:`read_part`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    tmp.rename(path)


def read_part(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def merge_order(name: str, parts: list[pa.Table]) -> tuple[pa.Table, np.ndarray]:
    """The part tables concatenated, and the row order that sorts them by ``SORT_KEYS[name]``.

    Parts hold disjoint accounts, each sorted; when the first key is
    ``account_id`` only the accounts' runs of rows need ordering (a stable
    sort of the distinct accounts).
    """
    table = pa.concat_tables(parts) if parts else SCHEMAS[name].empty_table()
    if SORT_KEYS[name][0] != "account_id" or table.num_rows == 0:
        if table.num_rows == 0:
            return table, np.zeros(0, np.int64)
        return table, pc.sort_indices(table, sort_keys=_ascending(name)).to_numpy()
    if _parts_in_account_order(parts):  # partitions of an account-ordered book: already in order
        return table, np.arange(table.num_rows, dtype=np.int64)
    # sort the accounts' runs of rows, not the rows: one string sort of the distinct accounts
    acc = pc.fill_null(table.column("account_id"), "").combine_chunks()
    n = len(acc)
    change = pc.not_equal(acc.slice(1), acc.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)
    lengths = np.diff(np.append(starts, n))
    order = pc.sort_indices(acc.take(pa.array(starts))).to_numpy()
    s, ln = starts[order], lengths[order]
    return table, np.repeat(s - (np.cumsum(ln) - ln), ln) + np.arange(n, dtype=np.int64)


def _parts_in_account_order(parts: list[pa.Table]) -> bool:
    """Whether each part's accounts all come before the next part's (parts are sorted within): then the
    parts, one after the other, are in account order. Compares the parts' first and last ids only."""
    ends = []
    for part in parts:
        if part.num_rows == 0:
            continue
        acc = part.column("account_id")
        if acc.null_count:
            return False
        ends.append((acc[0].as_py(), acc[-1].as_py()))
    return all(prev[1] < nxt[0] for prev, nxt in zip(ends, ends[1:]))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _ascending(name: str) -> list[tuple[str, str]]:
    return [(k, "ascending") for k in SORT_KEYS[name]]


def sort_table(name: str, table: pa.Table) -> pa.Table:
    """The table sorted by ``SORT_KEYS[name]`` (nulls last); a table in that order already is returned as is."""
    if table.num_rows < 2 or is_sorted(table, SORT_KEYS[name]):
        return table
    return table.sort_by(_ascending(name))
