"""validate_positions: every row valid or rejected with one code; defaults; the valid-frame contract."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpu_margin import option_price
from gpu_margin._exceptions import InputFileError, JobError
from gpu_margin._io import read_market, read_positions
from gpu_margin._schema import REJECT_CODE_NAMES, REJECTS_SCHEMA, VALID_COLUMN_NAMES, VALID_COLUMNS
from gpu_margin._validate import validate_market, validate_positions

ASOF = "2024-06-03"
RATE = 0.05


def market() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "underlying": ["XYZ", "IDX", "ETF"],
            "spot": [100.0, 4000.0, 400.0],
            "vol": [0.30, 0.15, 0.16],
            "dividend_yield": [0.01, None, 0.015],
            "rate": [None, 0.04, None],
            "product_group": ["equity", "broad_index", "equity"],
            "option_style": ["A", "E", None],
            "tracks": [None, None, "IDX"],
        }
    )


def row(**kw) -> dict:
    base = {
        "account_id": "A1",
        "underlying": "XYZ",
        "kind": "option",
        "right": "C",
        "strike": 100.0,
        "expiry": pd.Timestamp("2024-12-20"),
        "quantity": -2.0,
    }
    base.update(kw)
    return base


def frame(*rows: dict) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    if "expiry" in df:
        df["expiry"] = pd.to_datetime(df["expiry"])
    return df


def run(*rows: dict, **kw):
    return validate_positions(frame(*rows), market(), asof=kw.pop("asof", ASOF), rate=RATE, **kw)


# ---------------------------------------------------------------- each code


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"account_id": None}, "account_missing", ["account_id"]),
        ({"account_id": "  "}, "account_missing", ["account_id", "'  '"]),
        ({"underlying": "NOPE"}, "unknown_underlying", ["underlying", "'NOPE'"]),
        ({"underlying": None}, "unknown_underlying", ["underlying", "missing"]),
        ({"kind": "Option"}, "bad_kind", ["kind", "'Option'"]),
        ({"right": "X"}, "bad_right", ["right", "'X'"]),
        ({"right": None}, "bad_right", ["right", "missing"]),
        ({"strike": -5.0}, "strike_not_positive", ["strike", "-5.0"]),
        ({"strike": 0.0}, "strike_not_positive", ["strike", "0.0"]),
        ({"strike": None}, "strike_not_positive", ["strike", "missing"]),
        ({"strike": math.inf}, "strike_not_positive", ["strike", "inf"]),
        ({"expiry": None}, "expiry_missing", ["expiry"]),
        ({"expiry": pd.Timestamp("2024-05-31")}, "expired", ["expiry", "2024-05-31", "2024-06-03"]),
        ({"kind": "future", "right": None, "strike": None, "expiry": None, "multiplier": 50.0}, "expiry_missing",
         ["expiry"]),
        ({"style": "B"}, "bad_style", ["style", "'B'"]),
        ({"multiplier": 0.0}, "multiplier_not_positive", ["multiplier", "0.0"]),
        ({"multiplier": -100.0}, "multiplier_not_positive", ["multiplier", "-100.0"]),
        ({"kind": "future", "right": None, "strike": None}, "multiplier_not_positive", ["multiplier", "missing"]),
        ({"quantity": 0.0}, "quantity_missing", ["quantity", "0.0"]),
        ({"quantity": None}, "quantity_missing", ["quantity", "missing"]),
        ({"quantity": math.inf}, "quantity_missing", ["quantity", "inf"]),
        ({"mark": -1.0}, "mark_invalid", ["mark", "-1.0"]),
        ({"mark": math.inf}, "mark_invalid", ["mark", "inf"]),
        ({"iv": 0.0}, "iv_invalid", ["iv", "0.0"]),
        ({"iv": -0.2}, "iv_invalid", ["iv", "-0.2"]),
        ({"iv": math.inf}, "iv_invalid", ["iv", "inf"]),
        ({"mark": 0.0}, "no_implied_vol", ["mark", "0.0", "iv"]),
        ({"mark": 500.0}, "no_implied_vol", ["mark", "500.0"]),
    ],
)
def test_each_reject_code(fields, code, words):
    valid, rejects = run(row(), row(**fields))
    assert len(valid) == 1 and len(rejects) == 1
    rej = rejects.iloc[0]
    assert rej["code"] == code
    assert rej["row"] == 1 and rej["source"] == "positions"
    for w in words:
        assert w in rej["message"], (w, rej["message"])
    assert "\n" not in rej["message"]


def test_duplicate_position_id_rejects_every_copy():
    valid, rejects = run(row(position_id="P1"), row(position_id="P1"), row(position_id="P2"))
    assert valid["position_id"].tolist() == ["P2"]
    assert rejects["code"].tolist() == ["duplicate_position_id"] * 2
    assert "'P1'" in rejects["message"].iloc[0] and "2 times" in rejects["message"].iloc[0]


def test_first_failing_check_wins():
    _, rejects = run(row(account_id=None, underlying="NOPE", kind="x"), row(underlying="NOPE", kind="x"),
                     row(kind="option", right="Q", strike=-1.0, quantity=0.0))
    assert rejects["code"].tolist() == ["account_missing", "unknown_underlying", "bad_right"]


def test_reject_codes_are_documented_in_order():
    assert REJECT_CODE_NAMES[0] == "account_missing" and REJECT_CODE_NAMES[-1] == "duplicate_position_id"
    assert len(set(REJECT_CODE_NAMES)) == 14


def test_rejects_columns():
    _, rejects = run(row(kind="bad"))
    assert list(rejects.columns) == REJECTS_SCHEMA.names
    assert rejects["row"].dtype == np.int64
    assert rejects["position_id"].tolist() == ["positions:0"]


# ---------------------------------------------------------------- defaults and the contract


def test_valid_columns_and_dtypes_are_the_contract():
    df = frame(
        row(),
        row(kind="stock", right=None, strike=None, expiry=None, quantity=100.0),
        row(kind="future", underlying="IDX", right=None, strike=None, multiplier=50.0, quantity=1.0),
    )
    df["desk"] = ["a", "b", "c"]
    df["vol"] = [9.0, 9.0, 9.0]  # an extra column named like an engine column
    valid, rejects = validate_positions(df, market(), asof=ASOF, rate=RATE)
    assert len(rejects) == 0
    assert tuple(valid.columns) == (*VALID_COLUMN_NAMES, "desk", "input_vol")
    assert valid["vol"].tolist() == [0.30, 0.30, 0.15] and valid["input_vol"].tolist() == [9.0] * 3
    for name, dtype in VALID_COLUMNS:
        assert str(valid[name].dtype) == dtype, name


def test_defaults_and_market_join():
    valid, _ = run(
        row(),
        row(kind="stock", right=None, strike=None, expiry=pd.Timestamp("2030-01-01"), quantity=100.0, iv=0.5),
        row(kind="option", underlying="IDX", right="P", strike=3900.0, style=None),
        row(kind="future", underlying="IDX", right="C", strike=10.0, multiplier=50.0, quantity=1.0),
        row(kind="option", underlying="ETF", right="P", strike=390.0),
    )
    opt, stock, idx, fut, etf = (valid.iloc[i] for i in range(5))
    assert opt["multiplier"] == 100.0 and opt["style"] == "A" and opt["american"]
    assert opt["position_id"] == "positions:0"
    assert opt["rate"] == RATE and idx["rate"] == 0.04  # market rate overrides the run's
    assert opt["t"] == pytest.approx((pd.Timestamp("2024-12-20") - pd.Timestamp(ASOF)).days / 365)
    assert stock["multiplier"] == 1.0 and stock["t"] == 0.0 and pd.isna(stock["expiry"])
    assert pd.isna(stock["right"]) and pd.isna(stock["style"]) and not stock["is_call"] and math.isnan(stock["iv"])
    assert idx["style"] == "E" and not idx["american"] and idx["dividend_yield"] == 0.0
    assert etf["style"] == "E" and etf["tracks"] == "IDX"  # market option_style missing: 'E'
    assert pd.isna(fut["right"]) and math.isnan(fut["strike"]) and fut["multiplier"] == 50.0 and fut["t"] > 0
    assert (valid["vol_source"] == "market").all()
    assert valid["vol"].tolist() == valid["vol_market"].tolist()


def test_vol_from_iv_then_implied_then_market():
    t = (pd.Timestamp("2024-12-20") - pd.Timestamp(ASOF)).days / 365
    mark_eu = float(option_price("P", 4000.0, 3900.0, t, 0.22, 0.04, 0.0, "E"))
    mark_am = float(option_price("C", 100.0, 105.0, t, 0.41, RATE, 0.01, "A"))
    valid, rejects = run(
        row(iv=0.33, mark=1.0),
        row(underlying="IDX", right="P", strike=3900.0, mark=mark_eu),
        row(right="C", strike=105.0, mark=mark_am),
        row(),
    )
    assert len(rejects) == 0
    assert valid["vol_source"].tolist() == ["iv", "implied", "implied", "market"]
    assert valid["vol"].tolist()[0] == 0.33
    assert valid["vol"].iloc[1] == pytest.approx(0.22, abs=1e-6)
    assert valid["vol"].iloc[2] == pytest.approx(0.41, abs=1e-6)
    assert valid["vol"].iloc[3] == 0.30
    assert math.isnan(valid["iv"].iloc[1])


def test_expiry_on_asof_is_valid_and_uses_market_vol():
    valid, rejects = run(row(expiry=pd.Timestamp(ASOF), mark=3.0))
    assert len(rejects) == 0
    assert valid["t"].iloc[0] == 0.0 and valid["vol_source"].iloc[0] == "market"


def test_far_expiry_beyond_datetime_range_is_rejected(tmp_path):
    t = pa.table(
        {
            "account_id": ["A", "A"],
            "underlying": ["XYZ", "XYZ"],
            "kind": ["option", "option"],
            "right": ["C", "C"],
            "strike": [100.0, 100.0],
            "expiry": pa.array([dt.date(3000, 1, 1), dt.date(2025, 1, 17)], type=pa.date32()),
            "quantity": [1.0, 1.0],
        }
    )
    pq.write_table(t, tmp_path / "p.parquet")
    valid, rejects = validate_positions(read_positions(tmp_path / "p.parquet").frame, market(), asof=ASOF, rate=RATE)
    assert rejects["code"].tolist() == ["expiry_missing"] and "3000-01-01" in rejects["message"].iloc[0]
    assert valid["expiry"].dtype == "datetime64[ns]"


def test_stock_ignores_option_fields():
    valid, rejects = run(row(kind="stock", right="Z", strike=-1.0, expiry=None, style="Q", iv=-1.0, quantity=5.0))
    assert len(rejects) == 0 and len(valid) == 1


def test_frame_without_optional_columns_and_bad_asof():
    df = pd.DataFrame({"account_id": ["A"], "underlying": ["XYZ"], "kind": ["stock"], "quantity": [3]})
    valid, rejects = validate_positions(df, market(), asof=dt.date(2024, 6, 3), rate=RATE, source="api")
    assert valid["position_id"].tolist() == ["api:0"] and valid["quantity"].dtype == np.float64
    with pytest.raises(JobError):
        validate_positions(df, market(), asof="not a date", rate=RATE)
    with pytest.raises(JobError):
        validate_positions(df, market(), asof=ASOF, rate=float("nan"))
    with pytest.raises(InputFileError, match="'quantity'"):
        validate_positions(df.drop(columns="quantity"), market(), asof=ASOF, rate=RATE)


def test_validate_market_is_idempotent():
    once = validate_market(market(), "market")
    twice = validate_market(once, "market")
    pd.testing.assert_frame_equal(once, twice)


def test_vectorised_on_a_large_frame():
    n = 60_000
    rng = np.random.default_rng(0)
    kinds = rng.choice(["stock", "option", "future", "bogus"], n)
    df = pd.DataFrame(
        {
            "account_id": rng.choice(["A", "B", None], n),
            "underlying": rng.choice(["XYZ", "IDX", "NOPE"], n),
            "kind": kinds,
            "right": rng.choice(["C", "P", "X"], n),
            "strike": rng.uniform(-10, 200, n),
            "expiry": pd.Timestamp(ASOF) + pd.to_timedelta(rng.integers(-30, 700, n), unit="D"),
            "multiplier": np.where(kinds == "future", 50.0, np.nan),
            "quantity": rng.integers(-3, 4, n).astype(float),
            "iv": rng.uniform(-0.1, 0.6, n),
        }
    )
    valid, rejects = validate_positions(df, market(), asof=ASOF, rate=RATE)
    assert len(valid) + len(rejects) == n
    assert set(rejects["code"]) <= set(REJECT_CODE_NAMES)
    assert sorted(np.r_[valid["row"], rejects["row"]].tolist()) == list(range(n))


# ---------------------------------------------------------------- property: malformed rows of every kind

_text = st.one_of(st.none(), st.sampled_from(["", " ", "A1", "XYZ", "IDX", "ETF", "nope", "é", "C", "P"]))
_num = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, -1.0, 1e-300, 1e300, math.inf, -math.inf, math.nan]),
    st.floats(-1e4, 1e4, allow_nan=False),
)
_dates = st.one_of(st.none(), st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)),
                   st.dates(dt.date(2024, 5, 1), dt.date(2026, 12, 31)))
_good = st.fixed_dictionaries(
    {
        "account_id": st.sampled_from(["A1", "A2", "A3"]),
        "position_id": st.one_of(st.none(), st.sampled_from(["P1", "P2", "P3"])),
        "underlying": st.sampled_from(["XYZ", "IDX", "ETF"]),
        "kind": st.sampled_from(["stock", "option", "option", "future"]),
        "right": st.sampled_from(["C", "P"]),
        "strike": st.sampled_from([95.0, 100.0, 110.0, 390.0, 3900.0, 4000.0]),
        "expiry": st.dates(dt.date(2024, 6, 3), dt.date(2026, 6, 30)),
        "style": st.sampled_from([None, "A", "E"]),
        "multiplier": st.sampled_from([None, 100.0, 50.0, 1.0]),
        "quantity": st.sampled_from([1.0, -3.0, 100.0, -0.5]),
        "mark": st.one_of(st.none(), st.sampled_from([2.0, 5.0, 10.0, 150.0]), st.floats(0.0, 600.0)),
        "iv": st.one_of(st.none(), st.floats(0.01, 2.0)),
    }
)
_bad = {
    "account_id": _text,
    "position_id": st.one_of(st.none(), st.sampled_from(["P1", "positions.parquet:0", "", " "])),
    "underlying": _text,
    "kind": st.one_of(st.none(), st.sampled_from(["Stock", "swap", "", "option "])),
    "right": _text,
    "strike": _num,
    "expiry": _dates,
    "style": st.one_of(st.none(), st.sampled_from(["a", "X", ""])),
    "multiplier": _num,
    "quantity": _num,
    "mark": _num,
    "iv": _num,
}
_rows = st.builds(
    lambda good, bad: {**good, **bad},
    _good,
    st.just({})
    | st.sampled_from(sorted(_bad)).flatmap(lambda k: st.fixed_dictionaries({k: _bad[k]}))
    | st.tuples(st.sampled_from(sorted(_bad)), st.sampled_from(sorted(_bad))).flatmap(
        lambda ks: st.fixed_dictionaries({k: _bad[k] for k in ks})
    ),
)
_types = {
    "account_id": st.sampled_from([pa.string(), pa.large_string()]),
    "underlying": st.sampled_from([pa.string(), "dict"]),
    "kind": st.sampled_from([pa.string(), "dict"]),
    "strike": st.sampled_from([pa.float64(), pa.float32()]),
    "expiry": st.sampled_from([pa.date32(), pa.date64(), pa.timestamp("ms")]),
}


def _array(values, typ):
    if typ == "dict":
        return pa.array(values, type=pa.string()).dictionary_encode()
    if typ == pa.float32():
        return pa.array([None if v is None else float(np.float32(np.clip(v, -3e38, 3e38))) for v in values],
                        type=typ, from_pandas=False)
    if typ == pa.timestamp("ms"):
        return pa.array([None if v is None else dt.datetime(v.year, v.month, v.day) for v in values], type=typ)
    return pa.array(values, type=typ)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(rows=st.lists(_rows, min_size=0, max_size=12), types=st.fixed_dictionaries(_types),
       drop=st.sets(st.sampled_from(["position_id", "right", "strike", "expiry", "style", "multiplier", "mark", "iv"]),
                    max_size=2))
def test_malformed_rows_end_valid_or_rejected(tmp_path_factory, rows, types, drop):
    path = tmp_path_factory.mktemp("prop") / "positions.parquet"
    columns = {}
    names = ["account_id", "position_id", "underlying", "kind", "right", "strike", "expiry", "style",
             "multiplier", "quantity", "mark", "iv"]
    for name in names:
        if name in drop:
            continue
        values = [r[name] for r in rows]
        typ = types.get(name, pa.float64() if name in ("multiplier", "quantity", "mark", "iv") else pa.string())
        columns[name] = _array(values, typ)
    columns["note"] = pa.array([f"n{i}" for i in range(len(rows))], type=pa.string())
    pq.write_table(pa.table(columns), path)

    m = pa.Table.from_pandas(market(), preserve_index=False)
    pq.write_table(m, path.with_name("market.parquet"))
    mkt = read_market(path.with_name("market.parquet")).frame
    positions = read_positions(path).frame
    valid, rejects = validate_positions(positions, mkt, asof=ASOF, rate=RATE)

    assert len(valid) + len(rejects) == len(rows)
    for code in set(rejects["code"]):
        event(code)
    for source in set(valid["vol_source"]):
        event(f"vol from {source}")
    assert sorted([*valid["row"].tolist(), *rejects["row"].tolist()]) == list(range(len(rows)))
    assert set(rejects["code"]) <= set(REJECT_CODE_NAMES)
    assert rejects["message"].str.len().min() > 0 if len(rejects) else True
    assert tuple(valid.columns) == (*VALID_COLUMN_NAMES, "note")
    assert valid["note"].tolist() == [f"n{i}" for i in valid["row"]]
    if len(valid):
        assert valid["kind"].isin(["stock", "option", "future"]).all()
        assert (valid["multiplier"] > 0).all() and np.isfinite(valid["quantity"]).all()
        assert (valid["quantity"] != 0).all()
        assert (np.isfinite(valid["vol"]) & (valid["vol"] > 0)).all()
        assert valid["position_id"].is_unique
        opt = valid[valid["kind"] == "option"]
        assert opt["right"].isin(["C", "P"]).all() and (opt["strike"] > 0).all()
        assert opt["style"].isin(["A", "E"]).all() and (opt["t"] >= 0).all()
        assert valid["vol_source"].isin(["iv", "implied", "market"]).all()


def test_valid_columns_asked_for_are_those_of_the_whole_frame():
    """``columns=`` builds only the named columns of ``valid`` (the pipeline's engine columns), each equal
    to the whole frame's; extra input columns only where named; the rejects are the same."""
    from gpu_margin._compute import ENGINE_COLUMNS

    rows = [row(position_id="p1", note="a"), row(position_id="p2", kind="stock", right=None, strike=None,
                                                  expiry=None, quantity=10.0, note="b"),
            row(position_id="p3", underlying="NOPE", note="c"), row(position_id="p4", iv=0.25, style="E", note="d")]
    full, full_rej = run(*rows)
    assert "note" in full.columns and len(full) == 3
    for columns in (ENGINE_COLUMNS, ("account_id", "note", "vol_source"), ()):
        got, rej = run(*rows, columns=columns)
        want = [c for c in full.columns if c in columns]
        assert list(got.columns) == want
        pd.testing.assert_frame_equal(got, full[want], check_column_type=False)  # (no columns: any Index)
        pd.testing.assert_frame_equal(rej, full_rej)
