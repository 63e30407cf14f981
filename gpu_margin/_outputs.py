"""Output tables: explicit Arrow schemas, deterministic Parquet writes, digests.

Every table is written with its schema (partitions whose columns are all null
would otherwise write mismatched schemas) and without pandas metadata that
varies, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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


def to_table(name: str, df: pd.DataFrame) -> pa.Table:
    """``df`` as an Arrow table of the named schema (columns selected and cast, nulls kept)."""
    schema = SCHEMAS[name]
    cols = []
    for f in schema:
        if f.name in df.columns:
            s = df[f.name]
        else:
            s = pd.Series([None] * len(df), dtype=object)
        if pa.types.is_string(f.type):
            vals = s.astype(object).where(s.notna(), None)
            cols.append(pa.array(vals.to_numpy(dtype=object), type=f.type, from_pandas=True))
        elif pa.types.is_date32(f.type):
            cols.append(pa.array(pd.to_datetime(s).dt.date.to_numpy(dtype=object), type=f.type))
        else:
            cols.append(pa.array(s.to_numpy(), type=f.type, from_pandas=True))
    return pa.Table.from_arrays(cols, schema=schema)


def write_table(table: pa.Table, path: Path) -> None:
    """Deterministic Parquet: fixed compression, no statistics that depend on timing, one row group per 1M rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", row_group_size=1_000_000, write_statistics=True,
                   store_schema=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sort_table(name: str, table: pa.Table) -> pa.Table:
    keys = [(k, "ascending") for k in SORT_KEYS[name]]
    return table.sort_by(keys) if table.num_rows else table
