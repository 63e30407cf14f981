"""The overnight run end to end: determinism, partitions, schedulers, resume, atomic outputs."""

from __future__ import annotations

import filecmp
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from gpu_margin._backend import Backend, select_backend
from gpu_margin._compute import margin_frames
from gpu_margin._demo import sample_book
from gpu_margin._job import load_job
from gpu_margin._methodology import load_methodology
from gpu_margin._validate import validate_accounts, validate_market, validate_positions

RESULT_FILES = ["accounts.parquet", "classes.parquet", "rejects.parquet", "regt_legs.parquet",
                "margin_calls.parquet", "liquidation.parquet"]


def random_book(n_accounts=40, seed=0):
    """Positions of several archetypes over the sample market, with some bad rows."""
    pos0, market, _ = sample_book()
    rng = np.random.default_rng(seed)
    rows = []
    for a in range(n_accounts):
        acc = f"ACC{a:04d}"
        for _ in range(rng.integers(1, 7)):
            u = rng.choice(market["underlying"].to_numpy())
            spot = float(market.set_index("underlying").loc[u, "spot"])
            if rng.random() < 0.3:
                rows.append((acc, u, "stock", None, None, None, float(rng.integers(-300, 300) or 100)))
            else:
                strike = float(np.round(spot * rng.uniform(0.85, 1.15)))
                exp = pd.Timestamp("2024-03-15") + pd.Timedelta(days=int(rng.integers(5, 400)))
                rows.append((acc, u, "option", "C" if rng.random() < 0.5 else "P", strike, exp,
                             float(rng.integers(-5, 6) or -1)))
    pos = pd.DataFrame(rows, columns=pos0.columns)
    pos["expiry"] = pd.to_datetime(pos["expiry"])
    pos.loc[3, "strike"] = -5.0  # a reject
    pos.loc[7, "underlying"] = "NOPE"  # another
    accounts = pd.DataFrame({"account_id": [f"ACC{a:04d}" for a in range(n_accounts)],
                             "cash": rng.uniform(-2e4, 2e5, n_accounts),
                             "account_type": np.where(rng.random(n_accounts) < 0.3, "regt", "portfolio")})
    return pos, market, accounts


@pytest.fixture(scope="module")
def book_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("book")
    pos, market, accounts = random_book()
    (d / "positions").mkdir()
    ids = sorted(pos["account_id"].unique())
    for i, chunk in enumerate(np.array_split(np.array(ids, dtype=object), 3)):
        pos[pos["account_id"].isin(chunk)].to_parquet(d / "positions" / f"part-{i}.parquet")
    _write_job(d, market, accounts)
    return d


def _write_job(d: Path, market: pd.DataFrame, accounts: pd.DataFrame) -> None:
    """The market, the accounts and the job file (house preset) of a test book whose positions are in ``d``."""
    market.to_parquet(d / "market.parquet")
    accounts.to_parquet(d / "accounts.parquet")
    (d / "job.toml").write_text('asof = "2024-03-15"\nrate = 0.05\npositions = "positions"\n'
                                'market = "market.parquet"\naccounts = "accounts.parquet"\n'
                                'methodology = "house"\nout = "out"\n')


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gpu_margin", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def run(book_dir, out, *extra):
    res = cli("run", book_dir / "job.toml", "--out", out, "--quiet", *extra)
    assert res.returncode == 0, res.stderr
    return out


def same_files(a: Path, b: Path):
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in RESULT_FILES)


def tables(out: Path):
    return {f: pd.read_parquet(out / f) for f in RESULT_FILES}


def assert_equal_results(a: Path, b: Path):
    ta, tb = tables(a), tables(b)
    for f in RESULT_FILES:
        pd.testing.assert_frame_equal(ta[f], tb[f], rtol=1e-9, check_dtype=True)


def test_rerun_is_byte_identical_and_manifest_reconciles(book_dir, tmp_path):
    a = run(book_dir, tmp_path / "a")
    b = run(book_dir, tmp_path / "b")
    assert same_files(a, b)
    m = json.loads((a / "manifest.json").read_text())
    c = m["counts"]
    assert c["reconciles"] and c["positions_in"] == c["positions_priced"] + c["positions_rejected"]
    assert c["positions_rejected"] == 2
    acc = pd.read_parquet(a / "accounts.parquet")
    assert acc["has_rejects"].sum() == 2
    for name, info in m["outputs"].items():
        from gpu_margin._outputs import sha256_file

        assert sha256_file(a / name) == info["sha256"]


@pytest.mark.parametrize("parts", [1, 4, 16])
def test_partition_count_does_not_change_results(book_dir, tmp_path, parts):
    ref = run(book_dir, tmp_path / "ref")
    other = run(book_dir, tmp_path / f"p{parts}", "--partitions", parts)
    assert_equal_results(ref, other)


@pytest.mark.parametrize("layout", ["two_files", "one_row_group"])
def test_a_duplicate_position_id_split_across_partitions_is_rejected_whatever_the_partitions(tmp_path, layout):
    """Both rows of an id given twice under two accounts are rejected, as in one frame: in two files
    (accounts disjoint), or in one row group of a file split by account hash (planned from its footers)."""
    from gpu_margin._io import list_input_files
    from gpu_margin._pipeline import key_statistics

    pos, market, accounts = random_book(n_accounts=12, seed=3)
    pos = pos.sort_values("account_id", kind="stable").reset_index(drop=True)
    pos["position_id"] = [f"P{i:05d}" for i in range(len(pos))]
    first, last = pos["account_id"].min(), pos["account_id"].max()
    i_last = pos.index[pos["account_id"] == last][0]
    i_first = pos.index[pos["account_id"] == first][0]
    pos.loc[i_last, "position_id"] = pos.loc[i_first, "position_id"]  # same id, other account
    (tmp_path / "positions").mkdir()
    if layout == "two_files":
        pos[pos["account_id"] != last].to_parquet(tmp_path / "positions" / "part-0.parquet")
        pos[pos["account_id"] == last].to_parquet(tmp_path / "positions" / "part-1.parquet")
    else:
        _write_row_groups(pos, tmp_path / "positions" / "part-0.parquet", [len(pos)])
        assert key_statistics(list_input_files(tmp_path / "positions")) is not None
    _write_job(tmp_path, market, accounts)
    outs = [run(tmp_path, tmp_path / f"p{k}", "--partitions", k) for k in (1, 2, 5)]
    rej = pd.read_parquet(outs[0] / "rejects.parquet")
    dup = rej[rej["code"] == "duplicate_position_id"]
    assert sorted(dup["account_id"]) == sorted([first, last])
    assert dup["message"].str.contains("appears 2 times").all()
    for other in outs[1:]:
        assert_equal_results(outs[0], other)


@pytest.mark.parametrize("partitions", [None, 1, 3])
def test_a_book_of_no_positions_runs_to_empty_results(book_dir, tmp_path, partitions):
    """An empty positions file is a book of no positions, whatever partitions are asked for: every account
    of the accounts file reported with nothing held, no traceback."""
    pos = pd.read_parquet(next((book_dir / "positions").iterdir()))
    (tmp_path / "positions").mkdir()
    pos.iloc[:0].to_parquet(tmp_path / "positions" / "part-0.parquet")
    for name in ("market.parquet", "accounts.parquet"):
        shutil.copy(book_dir / name, tmp_path / name)
    shutil.copy(book_dir / "job.toml", tmp_path / "job.toml")
    out = run(tmp_path, tmp_path / "out", *(() if partitions is None else ("--partitions", partitions)))
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["positions_in"] == 0 and m["counts"]["reconciles"]
    acc = pd.read_parquet(out / "accounts.parquet")
    assert len(acc) == len(pd.read_parquet(book_dir / "accounts.parquet"))
    assert (acc["n_positions"] == 0).all() and (acc["pm_requirement"] == 0).all()
    assert len(pd.read_parquet(out / "regt_legs.parquet")) == 0


def _book_with_more_accounts(book_dir: Path, tmp_path: Path, extra: pd.DataFrame) -> pd.DataFrame:
    """The test book in ``tmp_path`` with the accounts ``extra`` (no positions) added to its accounts file;
    returns the book's own accounts."""
    shutil.copytree(book_dir / "positions", tmp_path / "positions")
    for name in ("market.parquet", "job.toml"):
        shutil.copy(book_dir / name, tmp_path / name)
    acc = pd.read_parquet(book_dir / "accounts.parquet")
    pd.concat([acc, extra], ignore_index=True).to_parquet(tmp_path / "accounts.parquet")
    return acc


@pytest.mark.parametrize("partitions", [1, 3])
def test_manifest_notes_extra_position_columns_and_accounts_missing_from_the_accounts_file(book_dir, tmp_path,
                                                                                           partitions):
    """SPEC 3: extra columns ignored with a note; and a position account without an accounts row (cash 0, an id
    spelled differently in the two files, say) is counted in a note rather than passing unseen."""
    pos = pd.concat([pd.read_parquet(f) for f in sorted((book_dir / "positions").glob("*.parquet"))])
    (tmp_path / "positions").mkdir()
    pos = pos.assign(desk="equities").set_axis(np.arange(len(pos)) * 2)  # not a range: pandas stores it
    pos.to_parquet(tmp_path / "positions" / "p.parquet")
    assert "__index_level_0__" in pq.read_schema(tmp_path / "positions" / "p.parquet").names
    shutil.copy(book_dir / "market.parquet", tmp_path / "market.parquet")
    shutil.copy(book_dir / "job.toml", tmp_path / "job.toml")
    acc = pd.read_parquet(book_dir / "accounts.parquet")
    held = sorted(set(pos["account_id"]) & set(acc["account_id"]))
    acc[~acc["account_id"].isin(held[:2])].to_parquet(tmp_path / "accounts.parquet")
    out = run(tmp_path, tmp_path / "o", "--partitions", partitions)
    notes = json.loads((out / "manifest.json").read_text())["notes"]
    assert "positions: extra columns not used by the run (not in its outputs): desk" in notes
    assert any(n.startswith(f"accounts: {2 + len(set(pos['account_id']) - set(acc['account_id']))} account(s) "
                            "of the positions have no row in") for n in notes), notes


def test_accounts_without_positions_are_margined_and_called(book_dir, tmp_path):
    """An account of the accounts file with no position (cash only) is reported, and called when its cash
    is negative, as ``compute`` does, whatever the partitions."""
    extra = pd.DataFrame({"account_id": ["AAA0", "ACC0010x", "ZZZ9"], "cash": [1e6, -2500.0, -40.0],
                          "account_type": ["regt", "portfolio", "regt"]})
    acc = _book_with_more_accounts(book_dir, tmp_path, extra)
    outs = [run(tmp_path, tmp_path / "a"), run(tmp_path, tmp_path / "b", "--partitions", 3)]
    assert_equal_results(*outs)
    got = pd.read_parquet(outs[0] / "accounts.parquet").set_index("account_id")
    assert len(got) == len(acc) + 3 and got.index.is_monotonic_increasing
    for _, e in extra.iterrows():
        row = got.loc[e["account_id"]]
        assert row["n_positions"] == 0 and row["nlv"] == e["cash"] and row["pm_requirement"] == 0.0
        assert row["regt_maintenance"] == 0.0 and row["account_type"] == e["account_type"]
    calls = pd.read_parquet(outs[0] / "margin_calls.parquet").set_index("account_id")
    assert calls.loc["ACC0010x", "reason"] == "pm_deficit" and calls.loc["ACC0010x", "deficit"] == 2500.0
    assert calls.loc["ZZZ9", "reason"] == "regt_deficit" and "AAA0" not in calls.index
    plans = pd.read_parquet(outs[0] / "liquidation.parquet")
    assert plans[plans["account_id"] == "ZZZ9"][["step", "cured"]].values.tolist() == [[0, False]]
    m = json.loads((outs[0] / "manifest.json").read_text())
    assert m["counts"]["accounts_without_positions"] == 3 and m["counts"]["reconciles"]
    # the same accounts table as the Python API's (every account of the accounts file, sorted)
    from gpu_margin import compute

    pos = pd.concat([pd.read_parquet(f) for f in sorted((tmp_path / "positions").iterdir())], ignore_index=True)
    api = compute(pos, pd.read_parquet(tmp_path / "market.parquet"), pd.read_parquet(tmp_path / "accounts.parquet"),
                  asof="2024-03-15", rate=0.05, methodology="house")
    want = api["accounts"].set_index("account_id").loc[extra["account_id"]]
    pd.testing.assert_frame_equal(got.loc[extra["account_id"], want.columns], want, check_dtype=False, rtol=1e-12)


def test_an_id_given_equal_to_another_files_default_id_is_rejected_whatever_the_partitions(tmp_path):
    """A row without a position_id takes ``"{source}:{row}"``; a row of another file (another partition)
    giving that same id as its own is a repeat, and both rows are rejected, as in one frame."""
    from gpu_margin._io import list_input_files

    pos, market, accounts = random_book(n_accounts=12, seed=5)
    pos = pos.sort_values("account_id", kind="stable").reset_index(drop=True)
    pos["position_id"] = [f"P{i:05d}" for i in range(len(pos))]
    last = pos["account_id"].max()
    a, b = pos[pos["account_id"] != last].reset_index(drop=True), pos[pos["account_id"] == last].copy()
    a.loc[4, "position_id"] = None  # takes its default id
    (tmp_path / "positions").mkdir()
    a.to_parquet(tmp_path / "positions" / "part-0.parquet")
    default = f"{list_input_files(tmp_path / 'positions')[0].source}:4"
    b.iloc[0, b.columns.get_loc("position_id")] = default  # given: the first file's default
    b.to_parquet(tmp_path / "positions" / "part-1.parquet")
    _write_job(tmp_path, market, accounts)
    outs = [run(tmp_path, tmp_path / f"p{k}", *(("--partitions", k) if k else ())) for k in (None, 1, 3)]
    m = json.loads((outs[0] / "manifest.json").read_text())
    assert m["partitions"]["count"] == 2  # one partition per file: the two rows never meet
    rej = pd.read_parquet(outs[0] / "rejects.parquet")
    dup = rej[rej["code"] == "duplicate_position_id"]
    assert sorted(dup["position_id"]) == [default, default]
    assert sorted(dup["account_id"]) == sorted([a.loc[4, "account_id"], last])
    for other in outs[1:]:
        assert_equal_results(outs[0], other)


def test_default_ids_are_spelled_out_only_where_a_given_id_could_be_one():
    from types import SimpleNamespace

    from gpu_margin._pipeline import default_ids_given

    def col(values):
        return pa.chunked_array([pa.array(values, type=pa.string())])

    files = [SimpleNamespace(source="a.parquet"), SimpleNamespace(source="b.parquet")]
    acc = col(["A", "A", "B"])
    got = default_ids_given(files, [(acc, col(["x", None, "y"])), (acc, col(["a.parquet:1", "z", None]))])
    assert [c.to_pylist() for c in got] == [["a.parquet:1"]]  # b's missing row: no id starts "b.parquet:"
    got = default_ids_given(files, [(acc, None), (acc, col(["a.parquet:7", "z", "w"]))])  # a has no id column
    assert [c.to_pylist() for c in got] == [["a.parquet:0", "a.parquet:1", "a.parquet:2"]]
    assert default_ids_given(files, [(acc, col(["x", "y", "w"])), (acc, col(["a.parquet:1", "z", "v"]))]) == []
    assert default_ids_given(files, [(acc, None), (acc, None)]) == []


@pytest.mark.parametrize("scheduler", ["sync", "processes"])
def test_schedulers_agree(book_dir, tmp_path, scheduler):
    ref = run(book_dir, tmp_path / "ref")
    other = run(book_dir, tmp_path / scheduler, "--scheduler", scheduler, "--partitions", 3)
    assert_equal_results(ref, other)


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_local_schedulers_do_not_import_dask_distributed(book_dir, tmp_path, scheduler):
    """The local schedulers are handed to Dask as functions: by name, Dask imports dask.distributed (about
    0.2 s of every run's start) to look for a client."""
    script = ("import sys; from gpu_margin._main import main; "
              f"rc = main(['run', {str(book_dir / 'job.toml')!r}, '--out', {str(tmp_path / 'out')!r}, '--quiet', "
              f"'--scheduler', {scheduler!r}]); "
              "print('distributed' in sys.modules); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False"


def test_processes_on_a_gpu_without_dask_cuda_use_one_worker_and_say_so(caplog, monkeypatch):
    """Without dask_cuda a GPU run's processes scheduler is one worker process (one CUDA context), not one
    per core all on GPU 0; the log says why."""
    import builtins
    import logging

    from gpu_margin._pipeline import dask_scheduler

    real_import = builtins.__import__

    def no_dask_cuda(name, *args, **kwargs):
        if name == "dask_cuda":
            raise ImportError("No module named 'dask_cuda'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask_cuda)
    with caplog.at_level(logging.WARNING, logger="gpu_margin"), dask_scheduler("processes", True) as (_, desc):
        assert "(1 workers on 127.0.0.1)" in desc
    assert any("LocalCUDACluster unavailable" in r.getMessage() for r in caplog.records)


def test_bench_times_the_book_on_every_device_after_an_untimed_warmup(book_dir, monkeypatch, capsys):
    """NumPy always; CuPy after it where a GPU is usable, else a line that says there is none."""
    from gpu_margin import _pipeline
    from gpu_margin._backend import gpu_status

    outs = []
    real = _pipeline.run_job
    monkeypatch.setattr(_pipeline, "run_job", lambda job, **kw: outs.append(job.out.name) or real(job, **kw))
    from gpu_margin._main import main

    assert main(["bench", str(book_dir / "job.toml"), "--repeat", "2", "--warmup", "1"]) == 0
    printed = capsys.readouterr().out
    assert "\ncpu " in printed and "positions/s" in printed
    if gpu_status()[0]:
        assert outs == ["cpu-warmup-0", "cpu-0", "cpu-1", "gpu-warmup-0", "gpu-0", "gpu-1"]
        assert "\ngpu " in printed and "GPU/CPU speed-up" in printed
    else:
        assert outs == ["cpu-warmup-0", "cpu-0", "cpu-1"]
        assert "GPU: none" in printed


def test_files_larger_than_a_partition_are_split_by_account(book_dir, tmp_path):
    from gpu_margin._pipeline import plan_partitions

    plan = plan_partitions(book_dir / "positions", partition_rows=20)
    assert [p.number for p in plan.partitions] == list(range(len(plan.partitions)))
    assert sum(p.n_rows for p in plan.partitions) == sum(plan.rows_per_file)
    assert len(plan.partitions) > len(plan.files)
    job = tmp_path / "job.toml"
    job.write_text((book_dir / "job.toml").read_text().replace('positions = "positions"',
                                                                f'positions = "{book_dir / "positions"}"')
                   .replace('market = "market.parquet"', f'market = "{book_dir / "market.parquet"}"')
                   .replace('accounts = "accounts.parquet"', f'accounts = "{book_dir / "accounts.parquet"}"')
                   + "partition_rows = 20\n")
    res = cli("run", job, "--out", tmp_path / "small", "--quiet")
    assert res.returncode == 0, res.stderr
    assert_equal_results(run(book_dir, tmp_path / "ref"), tmp_path / "small")


def _write_row_groups(pos: pd.DataFrame, path: Path, sizes: list[int], **writer_options) -> None:
    table = pa.Table.from_pandas(pos, preserve_index=False)
    with pq.ParquetWriter(path, table.schema, **writer_options) as w:
        start = 0
        for n in sizes:
            w.write_table(table.slice(start, n))
            start += n


def test_row_group_split_cuts_only_where_no_account_spans(tmp_path):
    from gpu_margin._pipeline import row_group_split

    acc = ["A"] * 3 + ["B"] * 2 + ["B", "C"] + ["D"] * 4 + ["E"] * 2  # B spans row groups 1 and 2
    pos = pd.DataFrame({"account_id": acc, "x": np.arange(len(acc))})
    _write_row_groups(pos, tmp_path / "f.parquet", [3, 2, 2, 4, 2])
    ids = pa.chunked_array([pa.array(acc)])
    ranges = row_group_split(tmp_path / "f.parquet", ids, 3)
    bounds = [r[0] for r in ranges]
    assert bounds[0][0] == 0 and bounds[-1][1] == 5
    assert all(a[1] == b[0] for a, b in zip(bounds[:-1], bounds[1:]))
    assert (1, 2) not in bounds and all(b != 2 for _, b in bounds[:-1])  # never between row groups 1 and 2
    assert sum(r[1] for r in ranges) == len(acc)
    assert row_group_split(tmp_path / "f.parquet", pa.chunked_array([pa.array(["Z"] * len(acc))]), 3) is None


@pytest.mark.parametrize("seed", range(6))
def test_clean_boundaries_of_files_written_account_by_account_need_no_hashing(seed):
    """The neighbour test for files with one run per account finds the boundaries the span count finds."""
    from gpu_margin._pipeline import _clean_boundaries

    rng = np.random.default_rng(seed)
    runs = rng.integers(1, 6, size=40)
    names = [f"A{i:03d}" for i in rng.permutation(40)]  # one run each, not in order
    acc = pa.array(np.repeat(names, runs).tolist())
    run_starts = np.cumsum(runs)[:-1]
    cuts = np.union1d(rng.choice(run_starts, size=3, replace=False), rng.choice(np.arange(1, len(acc)), size=4))
    sizes = np.diff(np.r_[0, cuts, len(acc)])  # row groups: some cut between accounts, some inside one
    ends = np.cumsum(sizes)
    fast = _clean_boundaries(acc, sizes, ends)
    assert fast.size and np.array_equal(fast, _clean_boundaries(acc, sizes, ends, general=True))
    # an account that comes back later spans every boundary between its runs: the general count is used
    back = pa.array(acc.to_pylist()[:-1] + [acc[0].as_py()])
    want = _clean_boundaries(back, sizes, ends, general=True)
    assert np.array_equal(_clean_boundaries(back, sizes, ends), want) and want.size < fast.size


@pytest.mark.parametrize("sizes", [[2, 2, 0], [0, 2, 2], [2, 0, 2], [0, 4, 0, 0], [1, 0, 1, 2, 0]])
def test_clean_boundaries_with_empty_row_groups(sizes, tmp_path):
    """Empty row groups (a writer's last empty batch) anywhere: the same cuts as the span count, no error."""
    from gpu_margin._pipeline import _clean_boundaries, plan_partitions

    acc = pa.array(["A", "A", "B", "C"])
    sizes = np.array(sizes)
    ends = np.cumsum(sizes)
    assert np.array_equal(_clean_boundaries(acc, sizes, ends), _clean_boundaries(acc, sizes, ends, general=True))
    pos = pd.DataFrame({"account_id": acc.to_pylist(), "x": np.arange(4)})
    (tmp_path / "p").mkdir()
    _write_row_groups(pos, tmp_path / "p" / "f.parquet", sizes.tolist())
    plan = plan_partitions(tmp_path / "p", partition_rows=2)
    assert sum(p.n_rows for p in plan.partitions) == 4


@pytest.mark.parametrize("values", [
    ["B", "B", "A", "A", "C"], ["B", None, "B", "A", None, "A", "B"], [None, None], [], ["X"], ["A", "B", "A"],
])
def test_distinct_accounts_is_unique_in_order_of_first_appearance(values):
    from gpu_margin._pipeline import distinct_accounts

    ids = pa.chunked_array([pa.array(values[:2], pa.string()), pa.array(values[2:], pa.string())])
    assert distinct_accounts(ids).to_pylist() == pc.unique(ids.drop_null()).to_pylist()


@pytest.mark.parametrize("seed", range(4))
def test_rows_of_accounts_in_order_search_only_the_window_and_find_the_same_rows(seed):
    from gpu_margin._pipeline import rows_of_accounts

    rng = np.random.default_rng(seed)
    names = sorted({f"{rng.choice(['A', 'b', 'É', 'z', '日'])}{i:03d}" for i in rng.integers(0, 500, 300)})
    ids = pa.array(names)
    wanted = pa.array(list(rng.choice(names, 20)) + ["not there", "A000", "日999"])
    want = np.flatnonzero(np.isin(np.array(names, dtype=object), wanted.to_pylist()))
    assert np.array_equal(rows_of_accounts(ids, True, wanted), want)
    assert np.array_equal(rows_of_accounts(ids, False, wanted), want)
    shuffled = rng.permutation(len(names))
    got = rows_of_accounts(ids.take(pa.array(shuffled)), False, wanted)
    assert sorted(shuffled[got].tolist()) == want.tolist()
    assert rows_of_accounts(ids, True, pa.array([], pa.string())).size == 0


def test_files_of_many_row_groups_are_split_by_row_groups(book_dir, tmp_path):
    """A file sorted by account with several row groups splits at row-group boundaries; same results."""
    from gpu_margin._pipeline import plan_partitions

    pos = pd.concat([pd.read_parquet(f) for f in sorted((book_dir / "positions").glob("*.parquet"))],
                    ignore_index=True).sort_values("account_id", kind="stable").reset_index(drop=True)
    (tmp_path / "positions").mkdir()
    # row groups of whole accounts (cut where the account changes), except one boundary inside an account
    change = np.flatnonzero(pos["account_id"].to_numpy()[1:] != pos["account_id"].to_numpy()[:-1]) + 1
    cuts = [int(c) for c in change[::6]] + [int(change[len(change) // 2]) + 1]
    bounds = sorted({0, *cuts, len(pos)})
    _write_row_groups(pos, tmp_path / "positions" / "all.parquet", list(np.diff(bounds)))
    for name in ("market.parquet", "accounts.parquet"):
        (tmp_path / name).write_bytes((book_dir / name).read_bytes())
    (tmp_path / "job.toml").write_text((book_dir / "job.toml").read_text() + "partition_rows = 40\n")
    plan = plan_partitions(tmp_path / "positions", partition_rows=40)
    assert len(plan.partitions) > 1 and all(p.row_groups is not None for p in plan.partitions)
    assert "row groups" in plan.how
    assert sum(p.n_rows for p in plan.partitions) == len(pos)
    out = run(tmp_path, tmp_path / "rg")
    ref = run(tmp_path, tmp_path / "one", "--partitions", 1)
    assert_equal_results(ref, out)
    rej = pd.read_parquet(out / "rejects.parquet")
    assert sorted(rej["row"]) == sorted(np.flatnonzero(pos["strike"].to_numpy() < 0).tolist()
                                        + np.flatnonzero(pos["underlying"].to_numpy() == "NOPE").tolist())


def test_existing_output_is_not_overwritten_without_force(book_dir, tmp_path):
    out = run(book_dir, tmp_path / "o")
    before = {f: (out / f).read_bytes() for f in RESULT_FILES}
    res = cli("run", book_dir / "job.toml", "--out", out, "--quiet")
    assert res.returncode == 2 and "--force" in res.stderr and "Traceback" not in res.stderr
    assert {f: (out / f).read_bytes() for f in RESULT_FILES} == before
    run(book_dir, out, "--force")


def test_an_out_that_is_a_file_or_overlaps_an_input_is_refused_even_with_force(book_dir, tmp_path):
    """--force never deletes an input or a plain file: one line, exit 2, the inputs untouched."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    for out in (a_file, a_file / "out", book_dir, book_dir / "positions", book_dir / "positions" / "out",
                book_dir / "market.parquet", book_dir / "accounts.parquet" / "x"):
        res = cli("run", book_dir / "job.toml", "--out", out, "--quiet", "--force")
        assert res.returncode == 2 and "Traceback" not in res.stderr, (out, res.stderr)
        assert res.stderr.strip().splitlines()[-1].count(str(out)) >= 1 and "--out" in res.stderr, res.stderr
    assert a_file.read_text() == "keep me"
    assert (book_dir / "market.parquet").is_file() and (book_dir / "accounts.parquet").is_file()
    assert len(list((book_dir / "positions").glob("*.parquet"))) == 3
    assert not (book_dir / "positions" / "out").exists()


def test_market_and_accounts_given_as_directories(book_dir, tmp_path):
    """SPEC 3 allows a directory for any input table: the run reads it and the manifest digests each file."""
    d = tmp_path / "book"
    shutil.copytree(book_dir / "positions", d / "positions")
    for name in ("market", "accounts"):
        (d / name).mkdir(parents=True)
        shutil.copy(book_dir / f"{name}.parquet", d / name / "part-0.parquet")
    (d / "job.toml").write_text((book_dir / "job.toml").read_text().replace(".parquet", ""))
    ref, out = run(book_dir, tmp_path / "ref"), run(d, tmp_path / "o")
    assert same_files(ref, out)
    inputs = json.loads((out / "manifest.json").read_text())["inputs"]
    for name in ("market", "accounts"):
        f = d / name / "part-0.parquet"
        assert inputs[str(f)]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()


def test_accounts_directories_have_their_own_cache_keys(book_dir, tmp_path, monkeypatch):
    """A long-lived worker caches the accounts by key: two accounts directories (and no accounts file) must
    have different keys, or one run is margined on another's cash."""
    from gpu_margin import _pipeline

    keys = []
    real = _pipeline.remember_accounts
    monkeypatch.setattr(_pipeline, "remember_accounts", lambda key, frame: keys.append(key) or real(key, frame))
    acc = pd.read_parquet(book_dir / "accounts.parquet")
    for i, cash in enumerate((1e9, -1e6)):
        d = tmp_path / f"b{i}"
        shutil.copytree(book_dir / "positions", d / "positions")
        shutil.copy(book_dir / "market.parquet", d / "market.parquet")
        (d / "accounts").mkdir()
        acc.assign(cash=cash).to_parquet(d / "accounts" / "part-0.parquet")
        (d / "job.toml").write_text((book_dir / "job.toml").read_text().replace("accounts.parquet", "accounts"))
        run(d, d / "out")
    (tmp_path / "b2").mkdir()
    for name in ("positions", "market.parquet"):
        (shutil.copytree if name == "positions" else shutil.copy)(book_dir / name, tmp_path / "b2" / name)
    (tmp_path / "b2" / "job.toml").write_text(
        "\n".join(line for line in (book_dir / "job.toml").read_text().splitlines() if "accounts" not in line))
    job = load_job(tmp_path / "b2" / "job.toml").with_overrides(out=tmp_path / "b2" / "out")
    for i in (0, 1):
        _pipeline.run_job(load_job(tmp_path / f"b{i}" / "job.toml").with_overrides(out=tmp_path / f"o{i}"),
                          progress=False)
    _pipeline.run_job(job, progress=False)
    assert len(set(keys[-3:])) == 3 and "" not in keys, keys


def test_a_second_run_on_the_same_out_stops_while_the_first_holds_it(book_dir, tmp_path):
    """Two runs on one --out never share or delete each other's work: the second stops at once."""
    import fcntl

    out = tmp_path / "o"
    with open(tmp_path / ".o.lock", "a") as fh:  # what a running run holds
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = cli("run", book_dir / "job.toml", "--out", out, "--quiet")
        assert res.returncode == 2 and "another gpu-margin run" in res.stderr and "Traceback" not in res.stderr
        assert not out.exists() and not (tmp_path / "o.partial").exists()
    run(book_dir, out)  # the lock released: it runs


def _crash_at_partition_2(job) -> None:
    """Run ``job`` in 4 partitions until partition 2 dies (on the sync scheduler, some finish before)."""
    from gpu_margin import _pipeline

    real = _pipeline.run_partition

    def dies_on_third(ctx, part, pos=None, ids=None):
        if part.number == 2:
            raise RuntimeError("killed")
        return real(ctx, part, pos, ids)

    _pipeline.run_partition = dies_on_third
    try:
        with pytest.raises(RuntimeError, match="killed"):
            _pipeline.run_job(job, n_partitions=4, progress=False)
    finally:
        _pipeline.run_partition = real


def test_resume_after_the_methodology_file_changed_starts_afresh(book_dir, tmp_path):
    """The methodology's values are in the fingerprint (and its file's digest in the manifest): parts made
    under the old file are not reused."""
    from gpu_margin import _pipeline

    meth = tmp_path / "m.toml"
    text = "[product_groups.equity]\ndown = 0.15\nup = 0.15\n[product_groups.broad_index_high_cap]\n" \
           "down = 0.08\nup = 0.06\n[product_groups.broad_index]\ndown = 0.1\nup = 0.1\n"
    meth.write_text(text)
    job = load_job(book_dir / "job.toml").with_overrides(out=tmp_path / "r", scheduler="sync", methodology=str(meth))
    _crash_at_partition_2(job)
    assert list((tmp_path / "r.partial" / "parts" / "done").glob("*.json"))
    meth.write_text(text.replace("down = 0.15\nup = 0.15", "down = 0.30\nup = 0.30"))
    res = _pipeline.run_job(job, resume=True, n_partitions=4, progress=False)
    assert res.manifest["partitions"]["resumed"] == 0
    assert res.manifest["inputs"][str(meth)]["sha256"] == hashlib.sha256(meth.read_bytes()).hexdigest()
    assert res.manifest["methodology"]["product_groups"]["equity"]["down"] == 0.30
    clean = _pipeline.run_job(job.with_overrides(out=tmp_path / "clean"), n_partitions=4, progress=False)
    assert same_files(clean.out, tmp_path / "r")


def test_resume_after_a_crash_gives_the_clean_result(book_dir, tmp_path):
    from gpu_margin import _pipeline

    clean = run(book_dir, tmp_path / "clean")
    # the synchronous scheduler runs one partition at a time: some finish before 2 dies
    job = load_job(book_dir / "job.toml").with_overrides(out=tmp_path / "crash", scheduler="sync")
    _crash_at_partition_2(job)
    assert not (tmp_path / "crash").exists()  # nothing that looks complete
    finished = list((tmp_path / "crash.partial" / "parts" / "done").glob("*.json"))
    assert finished
    # resumed on another scheduler: the finished partitions are kept (their parts do not depend on it)
    res = _pipeline.run_job(job.with_overrides(scheduler="threads"), resume=True, n_partitions=4, progress=False)
    assert res.manifest["partitions"]["resumed"] == len(finished)
    assert_equal_results(clean, tmp_path / "crash")
    assert same_files(clean, tmp_path / "crash")


def test_resume_after_a_crash_in_the_finish_keeps_the_cash_only_accounts(book_dir, tmp_path, monkeypatch):
    """Every part done, the accounts without positions' included, then a crash while writing the outputs:
    the resumed run reuses every part and gives the clean run's files and counts."""
    from gpu_margin import _pipeline

    extra = pd.DataFrame({"account_id": ["AAA0", "ZZZ9"], "cash": [-1.0, 2.0], "account_type": ["regt", "regt"]})
    _book_with_more_accounts(book_dir, tmp_path, extra)
    clean = run(tmp_path, tmp_path / "clean", "--partitions", 3)
    job = load_job(tmp_path / "job.toml").with_overrides(out=tmp_path / "crash", scheduler="sync")
    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as m:
        m.setattr(_pipeline, "write_table", killed)
        with pytest.raises(RuntimeError, match="killed"):
            _pipeline.run_job(job, n_partitions=3, progress=False)
    res = _pipeline.run_job(job, resume=True, n_partitions=3, progress=False)
    assert res.manifest["partitions"]["resumed"] == 4  # three partitions and the cash-only part
    assert res.manifest["partitions"]["cash_only_part"] and res.manifest["partitions"]["count"] == 3
    assert res.manifest["counts"]["accounts_without_positions"] == 2
    assert same_files(clean, tmp_path / "crash")


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_compute_gives_the_legs_frame_of_regt_requirements(seed):
    """compute() returns the Reg T legs as regt_requirements builds them (columns, dtypes, None partners),
    although the run itself keeps them as the Arrow table it writes."""
    from gpu_margin import compute
    from gpu_margin._regt import regt_requirements

    pos, market, accounts = random_book(n_accounts=12, seed=seed)
    res = compute(pos, market, accounts, asof="2024-03-15", rate=0.05, methodology="house")
    want = regt_requirements(res["positions"])[1]
    pd.testing.assert_frame_equal(res["regt_legs"], want, check_exact=True)
    assert list(want.columns[:4]) == ["position_id", "account_id", "strategy", "paired_with"]
    alone = res["regt_legs"]["paired_with"].isna()
    assert alone.any() and all(v is None for v in res["regt_legs"]["paired_with"][alone])


def test_numpy_and_array_api_strict_agree():
    import array_api_strict

    pos, market, accounts = random_book(n_accounts=12, seed=3)
    market = validate_market(market)
    acc = validate_accounts(accounts)
    valid, rejects = validate_positions(pos, market, asof="2024-03-15", rate=0.05)
    house = load_methodology("house")
    # and with the product groups' vol shocks in different modes (one pricing call per mode)
    mixed = replace(house, product_groups={**house.product_groups, "equity": replace(
        house.product_groups["equity"], vol_shock_mode="absolute", vol_shocks=(-0.1, 0.0, 0.1))})
    for meth in (house, mixed):
        a = margin_frames(valid, rejects, market, acc, meth, select_backend("cpu"))
        strict = Backend("array_api_strict", array_api_strict, "array-api-strict (tests)")
        b = margin_frames(valid, rejects, market, acc, meth, strict)
        pd.testing.assert_frame_equal(a["accounts"], b["accounts"], rtol=1e-9)
        pd.testing.assert_frame_equal(a["classes"], b["classes"], rtol=1e-9)


def test_bad_job_key_is_one_line(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('asof = "2024-03-15"\nrate = 0.05\npositions = "p"\nmarket = "m.parquet"\nmethodlogy = "finra"\n')
    res = cli("run", job)
    assert res.returncode == 2
    assert "methodlogy" in res.stderr and res.stderr.count("\n") == 1


@pytest.mark.parametrize("which", ["job", "methodology"])
def test_a_toml_file_that_is_not_utf8_is_one_line(tmp_path, which):
    """A Latin-1 comment (byte 0xe9) in the job or the methodology file: one line naming the file, exit 2."""
    meth = tmp_path / "m.toml"
    meth.write_bytes(("# caf\xe9\n" if which == "methodology" else "").encode("latin-1")
                     + b"[product_groups.equity]\ndown = 0.15\nup = 0.15\n")
    job = tmp_path / "job.toml"
    job.write_bytes(("# caf\xe9\n" if which == "job" else "").encode("latin-1")
                    + f'asof = "2024-03-15"\nrate = 0.05\npositions = "p"\nmarket = "m.parquet"\n'
                      f'methodology = "{meth}"\n'.encode())
    res = cli("run", job)
    assert res.returncode == 2, res.stderr
    bad = job if which == "job" else meth
    last = res.stderr.strip().splitlines()[-1]  # (a log line about the device may come first)
    assert "Traceback" not in res.stderr and str(bad) in last and "UTF-8" in last, res.stderr


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_partitions_below_one_are_a_one_line_error(book_dir, tmp_path, value):
    res = cli("run", book_dir / "job.toml", "--out", tmp_path / "out", "--partitions", value)
    assert res.returncode == 2 and "--partitions" in res.stderr and "at least 1" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("shuffle", [False, True])
def test_write_table_in_order_is_the_file_of_the_reordered_table(tmp_path, monkeypatch, shuffle):
    """Row-group streaming (and its copy-free path for rows already in order) writes the same bytes
    as writing the reordered table in one go."""
    import gpu_margin._outputs as outputs

    monkeypatch.setattr(outputs, "ROW_GROUP_ROWS", 1000)
    parts = [pa.table({"account_id": [f"A{i:05d}" for i in range(j * 700, (j + 1) * 700)],
                       "x": np.arange(700.0) + j}) for j in range(5)]
    table = pa.concat_tables(parts)  # several chunks, as merged part files are
    order = np.random.default_rng(0).permutation(table.num_rows) if shuffle else np.arange(table.num_rows)
    outputs.write_table(table, tmp_path / "streamed.parquet", order)
    outputs.write_table(table.take(pa.array(order)), tmp_path / "whole.parquet")
    assert pq.ParquetFile(tmp_path / "streamed.parquet").metadata.num_row_groups == 4
    assert (tmp_path / "streamed.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()

def test_outputs_have_statistics_where_they_prune(tmp_path):
    """Every output's leading sort key and non-text columns carry min/max statistics (a reader's filter
    on the account skips row groups); the other text columns, sorted only within an account, carry none."""
    import datetime

    from gpu_margin._outputs import SCHEMAS, SORT_KEYS, statistics_columns, write_table

    value = {pa.string(): ["A1", "A2"], pa.float64(): [1.5, 2.5], pa.int64(): [1, 2], pa.bool_(): [False, True],
             pa.date32(): [datetime.date(2024, 6, 3), datetime.date(2024, 6, 5)]}
    for name, schema in SCHEMAS.items():
        assert schema.names[0] == SORT_KEYS[name][0]
        write_table(pa.table({f.name: value[f.type] for f in schema}, schema=schema), tmp_path / f"{name}.parquet")
        rg = pq.ParquetFile(tmp_path / f"{name}.parquet").metadata.row_group(0)
        have = {rg.column(i).path_in_schema for i in range(rg.num_columns) if rg.column(i).is_stats_set}
        assert have == set(statistics_columns(schema)), name
        stats = rg.column(0).statistics
        assert (stats.min, stats.max) == tuple(value[schema[0].type])
    assert statistics_columns(SCHEMAS["regt_legs"]) == [
        "account_id", "paired_quantity", "regt_initial", "regt_maintenance"]
    assert statistics_columns(SCHEMAS["classes"]) == [
        "account_id", "class_risk", "worst_price_move", "worst_vol_shock", "minimum", "contingency",
        "concentration", "n_positions", "group_risk", "group_requirement"]
    # text in any layout, as the replays' scenario_pnl writes its ids (dictionary-encoded)
    text = pa.schema([("account_id", pa.dictionary(pa.int32(), pa.string())), ("a", pa.large_string()),
                      ("b", pa.dictionary(pa.int32(), pa.string())), ("c", pa.string_view()), ("pnl", pa.float64())])
    assert statistics_columns(text) == ["account_id", "pnl"]


def test_is_sorted_agrees_with_a_stable_sort():
    """The shortcut of sort_table: a table counts as sorted exactly when sorting it changes nothing."""
    import random

    from gpu_margin._outputs import is_sorted

    rnd = random.Random(0)
    for _ in range(2000):
        n = rnd.randint(0, 8)
        table = pa.table({
            "a": pa.array([rnd.choice([None, "a", "b", "ab"]) for _ in range(n)], type=pa.string()),
            "b": pa.array([rnd.choice([None, 1, 2]) for _ in range(n)], type=pa.int64()),
            "c": pa.array([rnd.choice([None, "x", "y"]) for _ in range(n)], type=pa.string()),
        })  # fmt: skip
        keys = ["a", "b", "c"][: rnd.randint(1, 3)]
        assert is_sorted(table, keys) == table.equals(table.sort_by([(k, "ascending") for k in keys]))


@pytest.mark.parametrize(("files", "want"), [
    ([["a1", "a2"], ["b1", "b2"]], {}),  # each file in order, ranges apart: no hashing needed
    ([["b1", "b2"], ["a1", "a2"]], {}),  # ... whatever the file order
    ([["a1", "b1"], ["a2", "b2"]], {}),  # in order but overlapping ranges: hashed, no repeat
    ([["a1", "b1"], ["a2", "b1"]], {"b1": 2}),  # overlapping, with a repeat
    ([["a1", "a2"], ["a2", "a3"]], {"a2": 2}),  # one file ends where the next begins
    ([["a2", "a1", "a2"]], {"a2": 3 - 1}),  # not in order
    ([["a1", None, "a1"], None], {"a1": 2}),  # missing ids (the reader's defaults) do not count
])  # fmt: skip
def test_book_duplicates(files, want):
    from gpu_margin._pipeline import book_duplicates

    cols = [None if f is None else pa.chunked_array([pa.array(f, type=pa.string())]) for f in files]
    assert book_duplicates(cols) == want


def _ordered_book(tmp_path: Path, seed: int, n_files: int = 3) -> tuple[Path, pd.DataFrame]:
    """Positions written account by account with ids increasing, over files of several row groups."""
    rng = np.random.default_rng(seed)
    runs = rng.integers(1, 9, size=60)
    acc = np.repeat([f"A{i:04d}" for i in range(runs.size)], runs)
    pos = pd.DataFrame({"account_id": acc, "position_id": [f"P{i:06d}" for i in range(acc.size)],
                        "x": np.arange(acc.size)})
    d = tmp_path / f"book{seed}"
    d.mkdir()
    bounds = np.sort(rng.choice(np.flatnonzero(np.r_[True, acc[1:] != acc[:-1]])[1:], n_files - 1, replace=False))
    for i, (a, b) in enumerate(zip(np.r_[0, bounds], np.r_[bounds, acc.size])):
        part = pos.iloc[a:b]
        cuts = np.sort(rng.choice(np.arange(1, len(part)), size=min(4, len(part) - 1), replace=False))
        _write_row_groups(part, d / f"part-{i}.parquet", np.diff(np.r_[0, cuts, len(part)]).tolist())
    return d, pos


def _plan_rows(plan):
    return plan.how, [(p.pieces, p.n_rows, p.n_buckets, p.row_groups) for p in plan.partitions], plan.duplicates


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("partition_rows", [40, 90, 1000])
def test_plan_from_the_footers_is_the_plan_from_the_columns(tmp_path, monkeypatch, seed, partition_rows):
    """A book written in order is planned from its Parquet statistics alone, to the same partitions (an
    empty file among its files included)."""
    import gpu_margin._pipeline as pl
    from gpu_margin._io import list_input_files

    d, pos = _ordered_book(tmp_path, seed)
    if seed % 2:  # an empty file, with the book's column types (seed 1) or none (seed 3: null columns)
        empty = pos.iloc[:0] if seed == 1 else pd.DataFrame({c: pd.Series(dtype=object) for c in pos.columns})
        pq.write_table(pa.Table.from_pandas(empty, preserve_index=False), d / f"part-{seed}-empty.parquet")
    assert pl.key_statistics(list_input_files(d)) is not None
    read = []
    key_columns = pl._key_columns
    monkeypatch.setattr(pl, "_key_columns", lambda f: read.append(f) or key_columns(f))
    fast = pl.plan_partitions(d, partition_rows)
    # only files split by account hash (no row-group boundary free of accounts) have their columns read
    assert len(read) == len({p.pieces[0][0] for p in fast.partitions if p.n_buckets > 1})
    monkeypatch.setattr(pl, "key_statistics", lambda files: None)
    assert _plan_rows(fast) == _plan_rows(pl.plan_partitions(d, partition_rows))


@pytest.mark.parametrize("case", ["no_statistics", "ids_overlap", "accounts_out_of_order", "account_in_two_files",
                                  "missing_id", "integer_ids", "no_position_id", "nested_ids", "hive",
                                  "not_parquet"])
def test_footers_that_do_not_prove_the_order_are_not_used(tmp_path, case):
    """Footers are used only when they prove what the plan needs; otherwise the columns are read, and the
    plan still finds a repeated id or an account in two files."""
    from gpu_margin._io import list_input_files
    from gpu_margin._pipeline import key_statistics, plan_partitions

    d, _ = _ordered_book(tmp_path, 7, n_files=2)
    f0, f1 = sorted(d.glob("*.parquet"))
    a = pq.read_table(f0).to_pandas()
    b = pq.read_table(f1).to_pandas()
    if case == "no_statistics":
        _write_row_groups(b, f1, [len(b)], write_statistics=False)
    elif case == "ids_overlap":  # the second file's last id is the first file's first: a repeat
        b.loc[len(b) - 1, "position_id"] = a["position_id"].iloc[0]
        _write_row_groups(b, f1, [len(b) - 1, 1])
    elif case == "accounts_out_of_order":  # the file's row groups swapped
        n = len(b[b["account_id"] == b["account_id"].iloc[0]])
        _write_row_groups(pd.concat([b.iloc[n:], b.iloc[:n]]), f1, [len(b) - n, n])
    elif case == "account_in_two_files":
        b.loc[0, "account_id"] = a["account_id"].iloc[-1]
        _write_row_groups(b, f1, [len(b)])
    elif case == "missing_id":
        b.loc[0, "position_id"] = None
        _write_row_groups(b, f1, [len(b)])
    elif case == "integer_ids":
        _write_row_groups(b.assign(position_id=np.arange(len(b)) + 10**6), f1, [len(b)])
    elif case == "no_position_id":
        _write_row_groups(b.drop(columns="position_id"), f1, [len(b)])
    elif case == "nested_ids":  # a field named position_id inside a struct is not the column
        nested = b.drop(columns="position_id").assign(meta=[{"position_id": v} for v in b["position_id"]])
        _write_row_groups(nested, f1, [len(b)])
    elif case == "hive":  # hive folders: the file's own columns are not all there is to it
        (d / "region=x").mkdir()
        f1.rename(d / "region=x" / f1.name)
    else:  # no footer at all: the reader's one-line error, naming the file
        f1.write_bytes(b"not a parquet file")
    assert key_statistics(list_input_files(d)) is None
    if case == "not_parquet":
        from gpu_margin._exceptions import InputFileError

        with pytest.raises(InputFileError, match=f1.name) as err:
            plan_partitions(d, 1000)
        assert "\n" not in str(err.value)
        return
    if case == "hive":  # read whole by the positions reader, which wants a real book
        return
    plan = plan_partitions(d, 1000)
    if case == "ids_overlap":
        assert plan.duplicates == {a["position_id"].iloc[0]: 2}
    if case == "account_in_two_files":
        assert "repartitioned by account_id" in plan.how


def test_an_id_repeated_within_one_row_group_is_rejected_as_when_the_columns_are_read(tmp_path):
    """The footers cannot see a repeat inside one row group; the partition's validation rejects both rows
    with the same message as when the plan reads the columns (files without statistics)."""
    from gpu_margin._io import list_input_files
    from gpu_margin._pipeline import key_statistics

    pos, market, accounts = random_book(n_accounts=12, seed=5)
    pos = pos.sort_values("account_id", kind="stable").reset_index(drop=True)
    pos["position_id"] = [f"P{i:05d}" for i in range(len(pos))]
    pos.loc[11, "position_id"] = pos.loc[10, "position_id"]
    outs = []
    for name, kw in (("stats", {}), ("plain", {"write_statistics": False})):
        d = tmp_path / name
        (d / "positions").mkdir(parents=True)
        _write_row_groups(pos, d / "positions" / "part-0.parquet", [len(pos)], **kw)
        _write_job(d, market, accounts)
        assert (key_statistics(list_input_files(d / "positions")) is None) == (name == "plain")
        outs.append(run(d, tmp_path / f"out-{name}"))
    rej = pd.read_parquet(outs[0] / "rejects.parquet")
    dup = rej[rej["code"] == "duplicate_position_id"]
    assert len(dup) == 2 and dup["message"].str.contains("appears 2 times").all()
    assert_equal_results(outs[0], outs[1])


@pytest.mark.parametrize("n_lanes", [1, 2, 3, 16])
def test_finish_lanes_start_with_the_largest_tables(tmp_path, n_lanes):
    """The finish writes the tables in lanes of about equal bytes, the largest first in its lane."""
    from gpu_margin._pipeline import TABLES, _lanes

    sizes = {"accounts": 300, "classes": 500, "rejects": 0, "regt_legs": 900, "margin_calls": 20, "liquidation": 30}
    for name, size in sizes.items():
        (tmp_path / "parts" / name).mkdir(parents=True)
        for i in range(2):  # two parts of each
            (tmp_path / "parts" / name / f"part-{i:05d}.arrow").write_bytes(b"x" * (size // 2))
    lanes = _lanes(tmp_path, n_lanes)
    assert sorted(n for lane in lanes for n in lane) == sorted(TABLES)
    assert len(lanes) == min(n_lanes, len(TABLES))
    assert lanes[0][0] == "regt_legs"
    for lane in lanes:
        assert [sizes[n] for n in lane] == sorted((sizes[n] for n in lane), reverse=True)
    if n_lanes == 2:
        assert lanes == [["regt_legs"], ["classes", "accounts", "liquidation", "margin_calls", "rejects"]]


@pytest.mark.parametrize("shuffle_parts", [False, True])
def test_merge_order_sorts_parts_of_disjoint_accounts(shuffle_parts):
    """Parts of disjoint accounts, each sorted: the merge order is the stable sort by account, whether the
    parts come in account order (no sort needed) or not; rows of one account keep their order."""
    from gpu_margin._outputs import SCHEMAS, merge_order

    rng = np.random.default_rng(7)
    names = sorted({f"Å{rng.integers(10**6):06d}" if rng.random() < 0.2 else f"A{rng.integers(10**6):06d}"
                    for _ in range(300)})
    cuts = np.sort(rng.choice(np.arange(1, len(names)), 6, replace=False))
    groups = np.split(np.array(names, dtype=object), cuts)
    if shuffle_parts:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    parts = []
    for g in groups + [np.array([], dtype=object)]:  # an empty part too
        acc = np.repeat(g, rng.integers(1, 4, len(g))) if len(g) else g
        n = len(acc)
        cols = {f.name: pa.nulls(n, f.type) for f in SCHEMAS["margin_calls"]}
        cols["account_id"] = pa.array(acc.tolist(), type=pa.string())
        cols["nlv"] = pa.array(rng.normal(size=n))
        parts.append(pa.table(cols, schema=SCHEMAS["margin_calls"]))
    table, order = merge_order("margin_calls", parts)
    want = pc.sort_indices(table, sort_keys=[("account_id", "ascending")]).to_numpy()  # stable
    assert order.tolist() == want.tolist()
    if not shuffle_parts:
        assert order.tolist() == list(range(table.num_rows))
