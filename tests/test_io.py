"""Readers: required columns, safe casts, directories and hive folders, one-line fatal errors."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpu_margin._exceptions import InputFileError
from gpu_margin._io import list_input_files, read_accounts, read_market, read_positions
from gpu_margin._schema import ACCOUNT_COLUMNS, MARKET_COLUMNS, POSITION_COLUMNS


def positions_table(**overrides) -> pa.Table:
    cols = {
        "account_id": pa.array(["A1", "A1", "A2"]),
        "underlying": pa.array(["XYZ", "XYZ", "IDX"]),
        "kind": pa.array(["stock", "option", "option"]),
        "right": pa.array([None, "C", "P"]),
        "strike": pa.array([None, 100.0, 4000.0]),
        "expiry": pa.array([None, dt.date(2024, 9, 20), dt.date(2024, 12, 20)], type=pa.date32()),
        "quantity": pa.array([100.0, -1.0, 2.0]),
    }
    cols.update(overrides)
    cols = {k: v for k, v in cols.items() if v is not None}
    return pa.table(cols)


def market_table(**overrides) -> pa.Table:
    cols = {
        "underlying": pa.array(["XYZ", "IDX"]),
        "spot": pa.array([100.0, 4100.0]),
        "vol": pa.array([0.3, 0.15]),
        "product_group": pa.array(["equity", "broad_index"]),
    }
    cols.update(overrides)
    return pa.table({k: v for k, v in cols.items() if v is not None})


def write(table: pa.Table, path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


def assert_one_line(exc: InputFileError, *words: str) -> None:
    msg = str(exc)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


# ---------------------------------------------------------------- positions


def test_positions_columns_and_dtypes(tmp_path):
    f = write(positions_table(), tmp_path / "positions.parquet")
    got = read_positions(f)
    df = got.frame
    assert list(df.columns) == ["source", "row"] + [c.name for c in POSITION_COLUMNS]
    assert df["source"].tolist() == ["positions.parquet"] * 3
    assert df["row"].tolist() == [0, 1, 2]
    assert df["row"].dtype == np.int64
    assert df["quantity"].dtype == np.float64
    assert isinstance(df["account_id"].dtype, pd.StringDtype)
    assert df["expiry"].dtype.kind == "M"
    assert df["mark"].isna().all() and df["position_id"].isna().all()  # absent optional columns
    assert got.notes == () and got.extra_columns == ()


def test_safe_casts_int_dictionary_large_string(tmp_path):
    t = positions_table(
        account_id=pa.array([1, 2, 3], type=pa.int64()),
        underlying=pa.array(["XYZ", "XYZ", "IDX"]).dictionary_encode(),
        kind=pa.array(["stock", "option", "option"], type=pa.large_string()),
        quantity=pa.array([100, -1, 2], type=pa.int32()),
        strike=pa.array([None, 100, 4000], type=pa.int64()),
        expiry=pa.array([None, "2024-09-20", "2024-12-20"]),
    )
    df = read_positions(write(t, tmp_path / "p.parquet")).frame
    assert df["account_id"].tolist() == ["1", "2", "3"]
    assert df["underlying"].tolist() == ["XYZ", "XYZ", "IDX"]
    assert df["quantity"].tolist() == [100.0, -1.0, 2.0]
    assert df["expiry"].iloc[1] == pd.Timestamp("2024-09-20")


def test_timestamp_expiry_keeps_local_date(tmp_path):
    ts = pa.array(
        [None, dt.datetime(2024, 9, 20, 16, 0), dt.datetime(2024, 12, 20, 23, 30)],
        type=pa.timestamp("us", tz="America/New_York"),
    )
    df = read_positions(write(positions_table(expiry=ts), tmp_path / "p.parquet")).frame
    assert df["expiry"].iloc[2] == pd.Timestamp("2024-12-20")


def test_extra_columns_kept_and_noted(tmp_path):
    t = positions_table().append_column("desk", pa.array(["x", "y", "z"]))
    got = read_positions(write(t, tmp_path / "p.parquet"))
    assert got.frame.columns[-1] == "desk"
    assert got.extra_columns == ("desk",)
    assert len(got.notes) == 1 and "desk" in got.notes[0]


@pytest.mark.parametrize("column", ["account_id", "underlying", "kind", "quantity"])
def test_missing_required_column_is_one_line(tmp_path, column):
    f = write(positions_table(**{column: None}), tmp_path / "positions.parquet")
    with pytest.raises(InputFileError) as e:
        read_positions(f)
    assert_one_line(e.value, "positions.parquet", f"'{column}'", "missing", "add it")


def test_quantity_message_matches_contract(tmp_path):
    f = write(positions_table(quantity=None), tmp_path / "positions.parquet")
    with pytest.raises(InputFileError, match=r"required column 'quantity' is missing; add it \(float64, signed"):
        read_positions(f)


@pytest.mark.parametrize(
    ("column", "array"),
    [
        ("quantity", pa.array(["1", "2", "3"])),
        ("strike", pa.array([True, False, True])),
        ("expiry", pa.array([1.0, 2.0, 3.0])),
        ("expiry", pa.array(["soon", None, None])),
        ("kind", pa.array([1, 2, 3])),
        ("quantity", pa.array([2**53 + 1, 1, 1], type=pa.int64())),
        ("mark", pa.array([[1.0], [2.0], [3.0]])),
    ],
)
def test_wrong_type_is_fatal_naming_file_and_column(tmp_path, column, array):
    f = write(positions_table(**{column: array}), tmp_path / "positions.parquet")
    with pytest.raises(InputFileError) as e:
        read_positions(f)
    assert_one_line(e.value, "positions.parquet", f"'{column}'", "store it as")


def test_reserved_column_is_fatal(tmp_path):
    t = positions_table().append_column("row", pa.array([1, 2, 3]))
    with pytest.raises(InputFileError) as e:
        read_positions(write(t, tmp_path / "p.parquet"))
    assert_one_line(e.value, "p.parquet", "'row'", "reserved", "rename")


def test_nonexistent_path_is_fatal(tmp_path):
    with pytest.raises(InputFileError) as e:
        read_positions(tmp_path / "nope.parquet")
    assert_one_line(e.value, "nope.parquet", "no such file")


def test_unreadable_file_is_fatal(tmp_path):
    bad = tmp_path / "positions.parquet"
    bad.write_bytes(b"not parquet at all\n" * 10)
    with pytest.raises(InputFileError) as e:
        read_positions(bad)
    assert_one_line(e.value, "positions.parquet", "cannot be read as Parquet")


def test_truncated_file_is_fatal(tmp_path):
    f = tmp_path / "positions.parquet"
    write(positions_table(), f)
    f.write_bytes(f.read_bytes()[:-20])
    with pytest.raises(InputFileError) as e:
        read_positions(f)
    assert_one_line(e.value, "positions.parquet")


def test_empty_directory_is_fatal(tmp_path):
    (tmp_path / "positions").mkdir()
    with pytest.raises(InputFileError) as e:
        read_positions(tmp_path / "positions")
    assert_one_line(e.value, "positions", "no Parquet files")


def test_directory_of_files_numbers_rows_per_file(tmp_path):
    d = tmp_path / "positions"
    write(positions_table(), d / "part-1.parquet")
    write(positions_table().append_column("desk", pa.array(["a", "b", "c"])), d / "part-0.parquet")
    (d / "_SUCCESS").write_text("")
    (d / ".part-0.parquet.crc").write_text("")
    got = read_positions(d)
    df = got.frame
    assert df["source"].tolist() == ["positions/part-0.parquet"] * 3 + ["positions/part-1.parquet"] * 3
    assert df["row"].tolist() == [0, 1, 2, 0, 1, 2]
    assert df["desk"].tolist()[:3] == ["a", "b", "c"] and df["desk"].iloc[3:].isna().all()
    assert [f.source for f in got.files] == ["positions/part-0.parquet", "positions/part-1.parquet"]


def test_directory_names_the_bad_file(tmp_path):
    d = tmp_path / "positions"
    write(positions_table(), d / "part-0.parquet")
    write(positions_table(kind=None), d / "part-1.parquet")
    with pytest.raises(InputFileError) as e:
        read_positions(d)
    assert_one_line(e.value, "part-1.parquet", "'kind'")


def test_hive_partitions_become_columns(tmp_path):
    d = tmp_path / "positions"
    t = positions_table()
    write(t.drop(["kind"]).slice(0, 1), d / "kind=stock" / "multiplier=1" / "part-0.parquet")
    write(t.drop(["kind"]).slice(1, 2), d / "kind=option" / "multiplier=100" / "part-0.parquet")
    got = read_positions(d)
    df = got.frame
    assert sorted(df["kind"]) == ["option", "option", "stock"]
    assert df["multiplier"].dtype == np.float64
    assert set(df["multiplier"]) == {1.0, 100.0}
    assert df["source"].nunique() == 2  # same file name in two folders: distinct sources


def test_list_input_files_is_sorted_and_skips_hidden(tmp_path):
    d = tmp_path / "p"
    for name in ["b.parquet", "a.parquet", "_meta", ".hidden"]:
        write(positions_table(), d / name)
    assert [f.source for f in list_input_files(d)] == ["p/a.parquet", "p/b.parquet"]


# ---------------------------------------------------------------- market


def test_market_defaults(tmp_path):
    got = read_market(write(market_table(), tmp_path / "market.parquet"))
    df = got.frame
    assert list(df.columns) == [c.name for c in MARKET_COLUMNS]
    assert df["dividend_yield"].tolist() == [0.0, 0.0]
    assert df["option_style"].tolist() == ["E", "E"]
    assert df["rate"].isna().all() and df["tracks"].isna().all()


def test_market_duplicate_underlying_is_fatal(tmp_path):
    t = market_table(underlying=pa.array(["XYZ", "XYZ"]))
    with pytest.raises(InputFileError) as e:
        read_market(write(t, tmp_path / "market.parquet"))
    assert_one_line(e.value, "market.parquet", "'underlying'", "'XYZ'", "one row per")


@pytest.mark.parametrize(
    ("column", "array", "words"),
    [
        ("spot", pa.array([100.0, -1.0]), ("'spot'", "'IDX'", "-1.0")),
        ("vol", pa.array([0.0, 0.2]), ("'vol'", "'XYZ'")),
        ("vol", pa.array([float("nan"), 0.2]), ("'vol'", "'XYZ'")),
        ("option_style", pa.array(["A", "X"]), ("'option_style'", "'IDX'")),
        ("product_group", pa.array(["equity", None]), ("'product_group'", "'IDX'")),
        ("dividend_yield", pa.array([float("inf"), 0.0]), ("'dividend_yield'", "'XYZ'")),
        ("underlying", pa.array(["XYZ", None]), ("'underlying'", "row 1")),
    ],
)
def test_bad_market_row_is_fatal(tmp_path, column, array, words):
    t = market_table(**{column: array})
    with pytest.raises(InputFileError) as e:
        read_market(write(t, tmp_path / "market.parquet"))
    assert_one_line(e.value, "market.parquet", *words)


def test_market_missing_product_group_is_fatal(tmp_path):
    with pytest.raises(InputFileError) as e:
        read_market(write(market_table(product_group=None), tmp_path / "market.parquet"))
    assert_one_line(e.value, "market.parquet", "'product_group'", "missing")


# ---------------------------------------------------------------- accounts


def test_accounts_none_is_empty_with_columns():
    df = read_accounts(None).frame
    assert list(df.columns) == [c.name for c in ACCOUNT_COLUMNS] and len(df) == 0


def test_accounts_defaults(tmp_path):
    t = pa.table({"account_id": ["A1", "A2"], "cash": [None, 5.0], "account_type": [None, "regt"]})
    df = read_accounts(write(t, tmp_path / "accounts.parquet")).frame
    assert df["cash"].tolist() == [0.0, 5.0]
    assert df["account_type"].tolist() == ["portfolio", "regt"]


def test_accounts_duplicate_is_fatal(tmp_path):
    t = pa.table({"account_id": ["A1", "A1"], "cash": [1.0, 2.0]})
    with pytest.raises(InputFileError) as e:
        read_accounts(write(t, tmp_path / "accounts.parquet"))
    assert_one_line(e.value, "accounts.parquet", "'account_id'", "'A1'")


def test_accounts_bad_type_is_fatal(tmp_path):
    t = pa.table({"account_id": ["A1", "A2"], "account_type": ["portfolio", "margin"]})
    with pytest.raises(InputFileError) as e:
        read_accounts(write(t, tmp_path / "accounts.parquet"))
    assert_one_line(e.value, "accounts.parquet", "'account_type'", "'margin'", "'A2'")


def test_a_stored_nan_cash_is_an_error_and_a_missing_one_is_zero(tmp_path):
    """NaN and null look alike once in pandas; a stored NaN (a failed upstream computation, perhaps a large
    debit) must not become a cash of 0, while a null is the documented 'missing = 0'."""
    path = tmp_path / "accounts.parquet"
    cash = pa.array([1000.0, float("nan"), None, float("nan")], type=pa.float64(), from_pandas=False)
    pq.write_table(pa.table({"account_id": ["A", "B", "C", "D"], "cash": cash}), path)
    with pytest.raises(InputFileError) as e:
        read_accounts(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: column 'cash'") and "NaN for account_id 'B' and 1 more row" in msg
    assert "\n" not in msg
    pq.write_table(pa.table({"account_id": ["A", "C"], "cash": pa.array([1000.0, None], pa.float64())}), path)
    assert read_accounts(path).frame.set_index("account_id")["cash"].to_dict() == {"A": 1000.0, "C": 0.0}
