"""The Arrow helpers of validate_positions agree with the pandas expressions they replace."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_validate import market

from gpu_margin._validate import _blank, _index_in, _text_of_codes, _unique, validate_positions

TEXT_DTYPES = ["str", "string[pyarrow]", "string[python]"]

# whitespace that Python and Arrow may see differently, zero-width characters that are not whitespace
TRICKY = ["", " ", "  ", "\t\n", "\u3000", "\xa0", "\u2003\u2003", "\u200b", "\x1c", "\x85", "\ufeff",
          " a ", "a", "é", "\u3000x\u3000", None]


def _series(values, dtype: str) -> pd.Series:
    return pd.Series(values, dtype=object).astype(dtype)


def _chunked(values, dtype: str) -> pd.Series:
    """The values as a Series of two pieces (two Arrow chunks for Arrow-backed strings)."""
    half = len(values) // 2
    return pd.concat([_series(values[:half], dtype), _series(values[half:], dtype)], ignore_index=True)


def _pandas_blank(s: pd.Series) -> np.ndarray:
    return (s.isna() | (s.str.strip() == "")).to_numpy(dtype=bool, na_value=False)


@pytest.mark.parametrize("dtype", TEXT_DTYPES)
def test_blank_is_the_pandas_strip_check(dtype):
    for s in (_series(TRICKY, dtype), _chunked(TRICKY, dtype)):
        got = _blank(s)
        assert got.dtype == bool
        np.testing.assert_array_equal(got, _pandas_blank(s))
    assert _blank(_series(["", None, " ", "a"], dtype)).tolist() == [True, True, True, False]


def test_arrow_whitespace_is_python_whitespace():
    """Every code point: blank for Arrow's trim exactly when blank for Python's ``str.strip``."""
    chars = [chr(i) for i in range(0x110000) if not 0xD800 <= i < 0xE000]
    got = _blank(pd.Series(chars, dtype="str"))
    np.testing.assert_array_equal(got, [c.strip() == "" for c in chars])


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.text(alphabet=st.characters(codec="utf-8"), max_size=4)),
                       max_size=20))
def test_blank_and_unique_on_any_strings(values):
    for dtype in TEXT_DTYPES:
        s = _series(values, dtype)
        np.testing.assert_array_equal(_blank(s), _pandas_blank(s))
        assert _unique(s) == (not s.duplicated(keep=False).any())
        ordered = _series(sorted(v for v in values if v is not None), dtype)
        assert _unique(ordered) == (not ordered.duplicated(keep=False).any())


@pytest.mark.parametrize("dtype", TEXT_DTYPES)
@pytest.mark.parametrize(
    "values",
    [
        [],
        ["a"],
        [None],
        ["a", "b", "c"],  # increasing: the comparison path
        ["c", "a", "b"],  # not ordered: the hash path
        ["a", "b", "b", "c"],
        ["b", "a", "b"],
        ["a", None, "b"],  # one missing value is distinct
        ["a", None, "b", None],  # two are duplicates, as in duplicated()
        [None, None],
        ["A-1", "A-10", "A-2", "a-1"],
        ["é", "e", "É"],
    ],
)
def test_unique_is_no_duplicated(values, dtype):
    for s in (_series(values, dtype), _chunked(values, dtype)):
        assert _unique(s) == (not s.duplicated(keep=False).any()), values


def test_unique_compares_across_chunks():
    ordered = _chunked(["a", "b", "c", "d", "e"], "str")
    repeated = _chunked(["a", "b", "c", "c", "d"], "str")  # the repeat straddles the chunks
    assert _unique(ordered)
    assert not _unique(repeated)
    assert not _unique(pd.concat([ordered, ordered], ignore_index=True))


@pytest.mark.parametrize("dtype", TEXT_DTYPES)
def test_index_in_is_get_indexer(dtype):
    values = pd.Series(["SPY", "spy", "SPX", "é", " SPY"], dtype="str")
    strings = ["SPY", "SPY ", "spy", "SPX", None, "", "é", "e", " SPY", "QQQ", "SPX"]
    for s in (_series(strings, dtype), _chunked(strings, dtype)):
        got = _index_in(s, values)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, pd.Index(values).get_indexer(s.astype(object)))
    np.testing.assert_array_equal(_index_in(_series(["option", "stock", None, "x"], dtype), ("stock", "option")),
                                  [1, 0, -1, -1])


def test_text_of_codes():
    got = _text_of_codes(("iv", "implied", "market"), np.array([2, 0, -1, 1, 2], dtype=np.int8))
    pd.testing.assert_series_equal(got, pd.Series(["market", "iv", None, "implied", "market"], dtype="str"))
    with_missing = _text_of_codes(pd.Series(["a", None], dtype="str"), np.array([1, 0, -1]))
    assert with_missing.isna().tolist() == [True, False, True]
    assert str(_text_of_codes(("a",), np.array([], dtype=np.int64)).dtype) == "str"


@pytest.mark.parametrize("dtype", TEXT_DTYPES)
def test_codes_rebuild_the_text_columns_of_a_chunked_frame(dtype):
    """right/style/product_group/tracks/vol_source from codes; ids filled, compared and rejected across chunks."""
    base = {"account_id": "A1", "kind": "option", "strike": 100.0, "expiry": pd.Timestamp("2024-12-20"),
            "quantity": 1.0, "iv": 0.2}
    rows = [
        dict(base, position_id="P3", underlying="XYZ", right="C", style=None),  # style from the market: A
        dict(base, position_id="P1", underlying="IDX", right="P", style="A"),
        dict(base, position_id=None, underlying="ETF", right="C", style=None, iv=None),  # market vol, ETF: E
        dict(base, position_id="P1", underlying="XYZ", right="P", style="E"),  # a duplicate across the chunks
        dict(base, position_id="P9", underlying="XYZ", kind="stock", right="C", style="Q", strike=None,
             expiry=None, iv=None),  # a stock's right and style are ignored
        dict(base, position_id="P7", underlying="XYZ", kind="stock", right=None, style=None, strike=None,
             expiry=None, iv=None),  # no style from the market for a stock
        dict(base, position_id="positions:2", underlying="IDX", right="C", style=None),  # clashes with the default
        dict(base, position_id="P8", underlying="ETF", right="C", style=" A"),
        dict(base, position_id=None, underlying="ETF", right="P", style="E"),  # a default id in the second chunk
    ]
    df = pd.DataFrame(rows)
    for c in ["account_id", "position_id", "underlying", "kind", "right", "style"]:
        df[c] = df[c].astype(object).astype(dtype)
    df["expiry"] = pd.to_datetime(df["expiry"]).astype("datetime64[s]")
    df.insert(0, "row", np.arange(len(df), dtype=np.int64))
    df.insert(0, "source", pd.Series(["positions"] * len(df), dtype="str"))  # as a reader gives it
    chunked = pd.concat([df.iloc[:3], df.iloc[3:]], ignore_index=True)
    mkt = market()
    mkt = pd.concat([mkt.iloc[:2], mkt.iloc[2:]], ignore_index=True)  # in pieces too
    valid, rejects = validate_positions(chunked, mkt, asof="2024-06-03", rate=0.05)

    assert rejects["code"].tolist() == ["duplicate_position_id"] * 4 + ["bad_style"]
    assert rejects["position_id"].tolist() == ["P1", "positions:2", "P1", "positions:2", "P8"]
    assert rejects["row"].tolist() == [1, 2, 3, 6, 7]
    assert "'positions:2' appears 2 times" in rejects["message"].iloc[1]
    assert valid["position_id"].tolist() == ["P3", "P9", "P7", "positions:8"]
    assert valid["right"].tolist()[::3] == ["C", "P"] and valid["right"].iloc[1:3].isna().all()
    assert valid["style"].tolist()[::3] == ["A", "E"] and valid["style"].iloc[1:3].isna().all()
    assert valid["american"].tolist() == [True, False, False, False]
    assert valid["product_group"].tolist() == ["equity"] * 4
    assert valid["tracks"].tolist()[3] == "IDX" and valid["tracks"].iloc[:3].isna().all()
    assert valid["vol_source"].tolist() == ["iv", "market", "market", "iv"]
    for c in ["right", "style", "product_group", "tracks", "vol_source", "position_id", "kind"]:
        assert str(valid[c].dtype) == "str", c


def test_vol_source_tracks_and_default_ids_without_rejects():
    base = {"account_id": "A1", "kind": "option", "strike": 100.0, "expiry": pd.Timestamp("2024-12-20"),
            "quantity": 1.0}
    df = pd.DataFrame([
        dict(base, underlying="ETF", right="C", iv=0.2),
        dict(base, underlying="ETF", right="P", mark=5.0),
        dict(base, underlying="IDX", right="C"),
    ])
    df["expiry"] = pd.to_datetime(df["expiry"])
    valid, rejects = validate_positions(df, market(), asof="2024-06-03", rate=0.05)
    assert rejects.empty
    assert valid["vol_source"].tolist() == ["iv", "implied", "market"]
    assert valid["tracks"].tolist()[:2] == ["IDX", "IDX"] and pd.isna(valid["tracks"].iloc[2])
    assert valid["style"].tolist() == ["E", "E", "E"]
    assert valid["position_id"].tolist() == ["positions:0", "positions:1", "positions:2"]
