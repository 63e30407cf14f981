"""The fast Reg T implementation (gpu_margin._regt) gives exactly the results of the
previous one, kept as an oracle in tests/_regt_reference.py: on seeded synthetic
books run through the pipeline, on hypothesis-generated books, and for the
greedy matching on its own (including the event-driven rounds).

Set GPU_MARGIN_REGT_200K=1 to also compare on the 200,000-position book of the
benchmark (about a minute).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib

import _regt_reference as reference
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_regt import EXP, EXP_LATE, books, frame, fut, opt, stk

from gpu_margin import _regt
from gpu_margin._exceptions import InputFileError

STRING_COLUMNS = ["account_id", "position_id", "underlying", "kind", "product_group", "tracks"]


def assert_same(df: pd.DataFrame) -> None:
    """Both implementations: the same frames (rows, order, dtypes, strings; numbers to 1e-12)."""
    want_acc, want_legs = reference.regt_requirements(df)
    got_acc, got_legs = _regt.regt_requirements(df)
    for want, got in ((want_acc, got_acc), (want_legs, got_legs)):
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12, atol=1e-12)
        for col in want.columns:  # strings and None exactly, also inside object columns
            if not pd.api.types.is_float_dtype(want[col].dtype):
                assert got[col].tolist() == want[col].tolist(), col
    assert_same_tables(df, got_acc, got_legs)


def assert_same_tables(df: pd.DataFrame, acc: pd.DataFrame, legs: pd.DataFrame) -> None:
    """``regt_tables`` (what the run writes): the same accounts, and the legs as the output table, in its order."""
    from gpu_margin._outputs import SORT_KEYS, is_sorted, to_table

    t_acc, t_legs, _ = _regt.regt_tables(df)
    pd.testing.assert_frame_equal(t_acc, acc, check_exact=True)
    assert t_legs.equals(to_table("regt_legs", legs))
    assert is_sorted(t_legs, SORT_KEYS["regt_legs"])


def pipeline_positions(path) -> pd.DataFrame:
    """The valid positions frame that the pipeline hands to regt_requirements for a book folder."""
    from gpu_margin._backend import select_backend
    from gpu_margin._compute import margin_frames
    from gpu_margin._io import read_accounts, read_market, read_positions
    from gpu_margin._methodology import load_methodology
    from gpu_margin._validate import validate_positions

    with open(path / "job.toml", "rb") as f:
        job = tomllib.load(f)
    market = read_market(path / job["market"]).frame
    valid, rejects = validate_positions(
        read_positions(path / job["positions"]).frame, market,
        asof=dt.date.fromisoformat(job["asof"]), rate=job["rate"],
    )  # fmt: skip
    acc = read_accounts(path / job["accounts"]).frame
    res = margin_frames(valid, rejects, market, acc, load_methodology(job["methodology"]), select_backend("cpu"))
    res["positions"].attrs["und_names"] = tuple(res["_book"].und_names)  # what its ``_und`` codes index
    return res["positions"]


@pytest.fixture(scope="module")
def book_20k(tmp_path_factory):
    from gpu_margin._synth import write_book

    path = tmp_path_factory.mktemp("regt_book") / "book"
    write_book(path, 20000, seed=3)
    return pipeline_positions(path)


# --------------------------------------------------------------------------- #
# synthetic books


@pytest.mark.slow
def test_synthetic_book_20k_seed3(book_20k):
    assert len(book_20k) > 19000
    assert_same(book_20k)
    assert_same_with_book_codes(book_20k)


def assert_same_with_book_codes(book_pos: pd.DataFrame) -> None:
    """A prepared book's frame coded from its account and kind codes gives the same tables and legs."""
    acc, table, legs = _regt.regt_tables(book_pos)
    und_names = book_pos.attrs["und_names"]
    for names in (None, und_names):  # the book's underlying codes too
        b_acc, b_table, b_legs = _regt.regt_tables(book_pos, book=True, und_names=names)
        pd.testing.assert_frame_equal(b_acc, acc, check_exact=True)
        assert b_table.equals(table)
        for name in ("acct", "rank", "pos", "option", "stock", "future"):
            assert np.array_equal(getattr(b_legs, name), getattr(legs, name)), name
        # the same underlying and ETF links, whatever the numbering
        pairs = np.unique(np.column_stack([b_legs.und, legs.und]), axis=0)
        assert len(np.unique(pairs[:, 0])) == len(np.unique(pairs[:, 1])) == len(pairs)
        # an ETF leg links to the legs of the underlying it tracks (a name nobody holds links to none)
        b_link = np.where(np.isin(b_legs.trk, b_legs.und), b_legs.trk, -1)
        link = np.where(np.isin(legs.trk, legs.und), legs.trk, -1)
        assert np.array_equal(b_link >= 0, link >= 0)
        if (link >= 0).any():
            assert len(np.unique(np.column_stack([b_link, link])[link >= 0], axis=0)) == len(np.unique(link[link >= 0]))


def test_synthetic_book_shuffled_and_as_object_columns(book_20k):
    rng = np.random.default_rng(5)
    df = book_20k.iloc[rng.permutation(len(book_20k))[:6000]].reset_index(drop=True)
    assert_same(df)
    assert_same(df.astype({c: object for c in STRING_COLUMNS}))


@pytest.mark.parametrize("seed", [1, 11])
def test_small_synthetic_books(tmp_path, seed):
    from gpu_margin._synth import write_book

    write_book(tmp_path / "book", 3000, seed=seed)
    book_pos = pipeline_positions(tmp_path / "book")
    assert_same(book_pos)
    assert_same_with_book_codes(book_pos)
    # ids out of order within accounts: the book path sorts them instead of finding them in order
    reversed_ids = [f"q{len(book_pos) - i:07d}" for i in range(len(book_pos))]
    assert_same_with_book_codes(book_pos.assign(position_id=reversed_ids).drop(columns="_pid_rank"))


@pytest.mark.skipif(not os.environ.get("GPU_MARGIN_REGT_200K"), reason="set GPU_MARGIN_REGT_200K=1 (slow)")
def test_synthetic_book_200k_seed2(tmp_path):
    from gpu_margin._synth import write_book

    write_book(tmp_path / "book", 200000, seed=2)
    assert_same(pipeline_positions(tmp_path / "book"))


def test_single_accounts_of_the_book(book_20k):
    """Small frames, as the liquidation planner passes them (one account or component at a time)."""
    sizes = book_20k.groupby("account_id").size().sort_values()
    for acct in list(sizes.index[-5:]) + list(sizes.index[::997]):
        assert_same(book_20k[book_20k["account_id"] == acct])



@pytest.mark.parametrize("other_price", [None, 49.5])
def test_many_lots_covering_many_short_options(other_price):
    """Dozens of share lots and short options on one underlying: lots alike in price are paired as one block
    of candidates walked lot by lot, which must give the oracle's rows (odd lots, whole contracts, lots used
    up across calls); one lot at another price (``other_price``) leaves the lots as single candidates."""
    rows = []
    for acct in ("A", "B"):
        for i in range(30):  # long lots, odd sizes: a lot covers whole contracts only
            price = other_price if (other_price is not None and acct == "B" and i == 17) else 50.0
            rows.append(stk(f"{acct}s{i:03d}", "XYZ", 50 + 37 * (i % 5), price, acct=acct))
        for i in range(8):  # short lots cover short puts
            rows.append(stk(f"{acct}t{i:03d}", "XYZ", -(120 + 45 * i), 50.0, acct=acct))
        for i in range(40):
            rows.append(opt(f"{acct}c{i:03d}", "XYZ", "C", 45 + 5 * (i % 4), -(1 + i % 3), 50.0,
                            2.5 + 0.5 * (i % 3), acct=acct))
        for i in range(12):
            rows.append(opt(f"{acct}p{i:03d}", "XYZ", "P", 45 + 5 * (i % 3), -(1 + i % 2), 50.0, 1.5, acct=acct))
        for i in range(5):  # long calls: spreads take what cover leaves
            rows.append(opt(f"{acct}l{i:03d}", "XYZ", "C", 55, 2, 50.0, 1.0, acct=acct))
    df = frame(*rows)
    assert_same(df)
    _, legs = _regt.regt_requirements(df)
    covered = legs[legs["strategy"] == "covered_call"]
    assert covered["paired_with"].nunique() > 10  # the calls took many lots, lot by lot

# --------------------------------------------------------------------------- #
# hypothesis books

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(books(max_rows=12))
def test_books_of_test_regt(df):
    assert_same(df)


@st.composite
def wide_books(draw, max_rows=40):
    """Denser books: more accounts and lots, odd lots, ties in savings, zero
    quantities, futures, ETFs on two indexes, several expiries and multipliers."""
    n = draw(st.integers(1, max_rows))
    rows = []
    for j in range(n):
        acct = draw(st.sampled_from(["A", "A", "B", "a10"]))
        pid = draw(st.sampled_from(["p", "q", "x", "P"])) + f"{j:03d}"
        what = draw(st.sampled_from(["xyz", "spy", "qqq", "fut", "opt", "opt", "opt", "opt", "opt", "idx", "idx"]))
        if what == "xyz":
            q = draw(st.sampled_from([-300, -150, -100, 0, 50, 100, 100, 200, 250, 1000]))
            rows.append(stk(pid, "XYZ", q, draw(st.sampled_from([50.0, 49.5])), acct=acct))
        elif what in ("spy", "qqq"):
            q = draw(st.sampled_from([-2000, 500, 999, 1000, 2000, 5000]))
            und, trk, px = ("SPY", "SPX", 400.0) if what == "spy" else ("QQQ", "NDX", 350.0)
            rows.append(stk(pid, und, q, px, acct=acct, group="broad_index", tracks=trk))
        elif what == "fut":
            rows.append(fut(pid, "ES", draw(st.sampled_from([-2, 1, 3])), 4000.0, acct=acct))
        elif what == "opt":
            late = draw(st.sampled_from([0, 0, 1, 2]))
            rows.append(opt(
                pid, draw(st.sampled_from(["XYZ", "XYZ", "ABC"])), draw(st.sampled_from(["C", "P"])),
                draw(st.sampled_from([40, 45, 50, 50, 55, 60])), draw(st.sampled_from([-5, -3, -2, -1, 0, 1, 2, 3, 4])),
                50.0, draw(st.sampled_from([0.5, 1.0, 2.5, 2.5, 6.0])), acct=acct,
                t=(0.25, 1.0, 0.5)[late], expiry=(EXP, EXP_LATE, "2024-09-20")[late],
                mult=draw(st.sampled_from([100.0, 100.0, 100.0, 10.0])),
            ))  # fmt: skip
        else:
            und = draw(st.sampled_from(["SPX", "NDX"]))
            rows.append(opt(
                pid, und, draw(st.sampled_from(["C", "P"])), draw(st.sampled_from([3800, 4000, 4000, 4200])),
                draw(st.sampled_from([-3, -2, -1, 1, 2])), 4000.0, draw(st.sampled_from([10.0, 60.0, 150.0])),
                acct=acct, group=draw(st.sampled_from(["broad_index", "broad_index_high_cap", "narrow_index"])),
            ))  # fmt: skip
    df = frame(*rows)
    return df.drop_duplicates("position_id").reset_index(drop=True)


@PROPS
@given(wide_books(), st.randoms(use_true_random=False))
def test_wide_books(df, rnd):
    order = list(range(len(df)))
    rnd.shuffle(order)
    assert_same(df.iloc[order].reset_index(drop=True))


# --------------------------------------------------------------------------- #
# edge cases: dtypes of the frames, errors


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param((stk("s", "XYZ", 100, 50), opt("c", "XYZ", "C", 55, -1, 50, 2.00)), id="all-paired"),
        pytest.param((stk("s", "XYZ", 150, 50), opt("c", "XYZ", "C", 55, -1, 50, 2.00)), id="mixed"),
        pytest.param((stk("s", "XYZ", 100, 50),), id="none-paired"),
        pytest.param((stk("s", "XYZ", 0, 50),), id="zero-quantity"),
        pytest.param((stk("s", "XYZ", 0, 50), stk("t", "XYZ", 10, 50, acct="B")), id="zero-and-one"),
        pytest.param(
            (stk("spy", "SPY", 999, 400, group="broad_index", tracks="SPX"),
             opt("spx", "SPX", "C", 4100, -1, 4000, 50.0, group="broad_index")), id="cover-ranked-none-formed",
        ),  # fmt: skip
        pytest.param(
            (stk("spy", "SPY", 999, 400, group="broad_index", tracks="SPX"),
             opt("spx", "SPX", "C", 4100, -1, 4000, 50.0, group="broad_index"),
             opt("c", "XYZ", "C", 47, -1, 45, 2.10), opt("p", "XYZ", "P", 43, -1, 45, 1.20)), id="none-then-all",
        ),  # fmt: skip
        pytest.param((fut("f", "ES", 1, 4000, acct="B"),), id="future-only"),
    ],
)
def test_edge_cases(rows):
    assert_same(frame(*rows))


def test_missing_values_and_zoned_expiries():
    df = frame(
        stk("s", "XYZ", 100, 50), opt("c", "XYZ", "C", 55, -1, 50, 2.00), opt("c2", "XYZ", "C", 60, -1, 50, 1.00),
        stk("t", "ABC", 100, 10), opt("l", "XYZ", "C", 65, 1, 50, 0.5, expiry="2024-09-20"),
    )  # fmt: skip
    df.loc[1, "value"] = np.nan
    df.loc[3, "value"] = np.nan
    assert_same(df)
    assert_same(df.assign(expiry=df["expiry"].dt.tz_localize("America/New_York")))


def test_empty():
    assert_same(frame(stk("s", "XYZ", 100, 50)).iloc[:0])


def test_integer_ids_and_quantities():
    df = frame(stk("s", "XYZ", 100, 50), opt("c", "XYZ", "C", 55, -1, 50, 2.00), stk("t", "XYZ", 300, 50, acct="B"))
    assert_same(df.assign(account_id=[7, 7, 12], position_id=[3, 1, 2], quantity=df["quantity"].astype(np.int64)))


@pytest.mark.parametrize(
    "df",
    [
        pytest.param(frame(stk("s", "XYZ", 100, 50), stk("s", "XYZ", 100, 50, acct="B")), id="dup-across-accounts"),
        pytest.param(frame(stk("s", "XYZ", 100, 50), stk("s", "XYZ", 100, 50)), id="dup-in-account"),
        pytest.param(
            frame(stk("a", "XYZ", 1, 50), opt("z", "XYZ", "C", 55, -1, 50, 2.0, group="crypto"),
                  opt("y", "XYZ", "C", 55, -1, 50, 2.0, group="fx")), id="product-group",
        ),  # fmt: skip
        pytest.param(frame(stk("s", "XYZ", 100, 50)).drop(columns=["value", "tracks"]), id="missing-columns"),
    ],
)
def test_same_errors(df):
    with pytest.raises(InputFileError) as want:
        reference.regt_requirements(df)
    with pytest.raises(InputFileError) as got:
        _regt.regt_requirements(df)
    assert str(got.value) == str(want.value)


# --------------------------------------------------------------------------- #
# greedy matching on its own


def same_rows(a, b) -> None:
    for x, y in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(x.view(np.int64), y.view(np.int64))  # every bit, -0.0 and NaN too
    assert a[1:] == b[1:]


def test_pairing_buffers_grown_from_one_row(book_20k):
    """The compiled pairing stops and goes on when an account does not fit its buffers: from buffers of
    one row (every account's candidates, rows and output rows overflow) the rows are the same bits."""
    df = book_20k
    legs = _regt.prepare_legs(df)
    want = _regt._pair(legs)
    assert want[0][0].size > len(df) // 2
    same_rows(_regt._pair(legs, capacity=(1, 1, 1)), want)
    same_rows(_regt._pair(legs, capacity=(7, 3, len(df) // 3)), want)
    # fractional quantities: an account put back after a stop keeps its fractions
    legs = _regt.prepare_legs(df.assign(quantity=df["quantity"] * 1.5 + np.where(df["quantity"] > 0, 0.25, -0.25)))
    same_rows(_regt._pair(legs, capacity=(1, 1, 1)), _regt._pair(legs))


@pytest.mark.parametrize("rows", [
    pytest.param((opt("c", "SPX", "C", 4100, -1, 4000.0, 50.0, group="broad_index"),
                  stk("e", "SPY", 1000, 0.0, group="broad_index", tracks="SPX")), id="etf-price-0"),
    pytest.param((opt("c", "XYZ", "C", 55, -1, 0.0, 1.0), stk("s", "XYZ", 100, 50.0)), id="option-spot-0"),
    pytest.param((opt("c", "XYZ", "C", 55, -1, 50.0, 1.0), dict(stk("s", "XYZ", 100, 50.0), multiplier=0.0)),
                 id="share-multiplier-0"),
])  # fmt: skip
def test_zero_divisors_as_numpy(rows):
    """A zero divisor in a candidate's amounts gives inf or NaN, as in NumPy (a zero mark passes
    validation), and the candidate is dropped; the compiled pairing does not raise."""
    with np.errstate(divide="ignore", invalid="ignore"):  # the reference's NumPy warns on them
        assert_same(frame(*rows))


def test_radix_path_ranks_wide_tie_breaks_like_a_lexsort():
    """Above ``_MERGE_SORT`` candidates the savings are radix sorted and each run of equal savings sorted
    by the tie-breaks (up to 2**20 values each) and the legs: a lexsort of the five keys."""
    from gpu_margin._regt_pairing import _NF, _SI, _T1, _T2, _sort_candidates

    rng = np.random.default_rng(1)
    m, n = 200, 5000
    pairs = rng.choice(m * m, n, replace=False)
    ci = np.zeros((n, 4), np.int64)
    ci[:, 0], ci[:, 1] = pairs // m, pairs % m
    cf = np.zeros((n, _NF))
    cf[:, _SI] = rng.permutation(n) // 3 + 1.0  # runs of three equal savings
    cf[:, _T1] = rng.integers(0, 1 << 20, n).astype(float)
    cf[0, _T1] = (1 << 20) - 1
    cf[:, _T2] = rng.integers(0, 100001, n).astype(float)
    cf[0, _T2] = 100000
    idx = np.arange(n, dtype=np.int64)
    _sort_candidates(idx, n, ci, cf)
    np.testing.assert_array_equal(idx, np.lexsort((ci[:, 1], ci[:, 0], cf[:, _T2], cf[:, _T1], -cf[:, _SI])))


@pytest.mark.parametrize("seed", range(4))
def test_radix_path_orders_as_the_comparison_sort(seed):
    """The radix path (above ``_MERGE_SORT``) gives the comparison sort's order on candidates with long
    runs of equal savings (one short leg's debit spreads), -0.0 beside 0.0, and NaN tie-breaks (last,
    equal to each other)."""
    from gpu_margin._regt_pairing import _MERGE_SORT, _NF, _SI, _T1, _T2, _sort_by_before, _sort_candidates

    rng = np.random.default_rng(seed)
    m = 400
    n = _MERGE_SORT + int(rng.integers(1, 3000))
    pairs = rng.choice(m * m, n, replace=False)
    ci = np.zeros((n, 6), np.int64)
    ci[:, 0], ci[:, 1] = pairs // m, pairs % m
    cf = np.zeros((n, _NF))
    cf[:, _SI] = rng.choice([0.0, -0.0, 1.0, 2.5, 1e6, 1e-3], n) + rng.integers(0, 4, n) * (seed > 1)
    cf[:, _T1] = rng.choice([0.0, -0.0, 2.5, 5.0, np.nan], n)
    cf[:, _T2] = rng.choice([0.0, 28.0, 91.0, np.nan], n)
    radix, comparison = np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64)
    _sort_candidates(radix, n, ci, cf)
    _sort_by_before(comparison, 0, n, ci, cf)
    np.testing.assert_array_equal(radix, comparison)


@pytest.mark.parametrize("n_opt, n_lots", [(30, 25), (80, 60)])
def test_large_account_with_tied_savings(n_opt, n_lots):
    """One account whose passes rank hundreds (merge sort) or thousands (radix sort of packed ranks)
    of candidates with equal savings, not the insertion sort of small accounts: the reference's rows."""
    rows = []
    for i in range(n_opt):  # short calls at four strikes against lots of shares: many equal savings
        rows.append(opt(f"c{i:02d}", "XYZ", "C", 50 + 5 * (i % 4), -(1 + i % 3), 50.0, 1.0 + (i % 4)))
        rows.append(opt(f"p{i:02d}", "XYZ", "P", 45 - 5 * (i % 3), -(1 + i % 2), 50.0, 0.5 + (i % 3)))
        rows.append(opt(f"l{i:02d}", "XYZ", "C", 60 + 5 * (i % 5), 1 + i % 2, 50.0, 0.4,
                        expiry=EXP_LATE if i % 2 else EXP))
    # long calls below the short strikes: debit spreads, whose saving does not depend on the width, so
    # the tie-breaks (strike distance, then expiry gap) decide among them
    rows += [opt(f"d{i:02d}", "XYZ", "C", 40 + 5 * (i % 2), 1, 50.0, 0.4, expiry=EXP_LATE if i % 3 else EXP)
             for i in range(n_opt // 2)]
    rows += [stk(f"s{i:02d}", "XYZ", 100 * (1 + i % 3), 50.0) for i in range(n_lots)]
    rows += [stk(f"e{i:02d}", "XYE", 300, 25.0, tracks="XYZ") for i in range(5)]
    assert_same(frame(*rows))



def test_an_account_with_a_huge_pass_is_named_in_a_warning(monkeypatch, caplog):
    """An account whose pass ranks more than ``LARGE_PASS_CANDIDATES`` candidates (they grow as the square
    of its options on one underlying) is named in one warning with its count; the others are not."""
    monkeypatch.setattr(_regt, "LARGE_PASS_CANDIDATES", 100)
    rows = [opt(f"s{i:02d}", "XYZ", "C", 50 + 5 * (i % 4), -1, 50.0, 1.0, acct="MM") for i in range(12)]
    rows += [opt(f"l{i:02d}", "XYZ", "C", 45 + 5 * (i % 5), 1, 50.0, 2.0, acct="MM", expiry=EXP_LATE)
             for i in range(12)]  # 12 short calls x 12 long calls: 144 spread candidates
    rows += [opt(f"t{i:02d}", "XYZ", "C", 50 + 5 * (i % 4), (-1) ** i, 50.0, 1.0, acct=f"T{i:02d}", expiry=EXP_LATE)
             for i in range(24)]
    with caplog.at_level("WARNING", logger="gpu_margin"):
        _regt.regt_requirements(frame(*rows))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    found = re.fullmatch(r"Reg T: account MM ranks (\d+) candidate pairs in one pass \(24 legs\); an account's "
                         r'candidates grow as the square of its options on one underlying \(docs/regt.md, "Large '
                         r'accounts"\)', warnings[0])
    assert found and 100 < int(found[1]) <= 144, warnings  # those of the 144 spreads that save
    caplog.clear()
    monkeypatch.setattr(_regt, "LARGE_PASS_CANDIDATES", int(found[1]))  # more than this warns
    with caplog.at_level("WARNING", logger="gpu_margin"):
        _regt.regt_requirements(frame(*rows))
    assert not caplog.records
