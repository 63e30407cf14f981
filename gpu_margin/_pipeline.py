"""The overnight run: Dask partitions of whole accounts, margined on the chosen device.

    plan    which files (or hash buckets of accounts in them) form each partition
    run     ``dd.from_map`` reads a Dask DataFrame whose partitions hold whole
            accounts; ``map_partitions`` margins each: validate → price →
            methodology → Reg T → calls and liquidation → part files
    finish  concatenate the parts in account order, write the manifest, rename
            the finished directory into place

Outputs are written under ``OUT.partial/`` and renamed into place only when
complete, so a crashed run never leaves a directory that looks finished; a
partition's part files are reused by ``--resume`` when the run's fingerprint
(inputs, parameters) is unchanged.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import operator
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._exceptions import JobError
from ._job import Job
from ._outputs import merge_order, read_part, sha256_file, sort_table, to_table, write_part, write_table

log = logging.getLogger("gpu_margin")

TABLES = ("accounts", "classes", "rejects", "regt_legs", "margin_calls", "liquidation")


def _lanes(work: Path, n_lanes: int) -> list[list[str]]:
    """The output tables in at most ``n_lanes`` groups of about equal part bytes, largest table first
    (each group is written one table after the other, the groups side by side)."""
    size = {name: sum(p.stat().st_size for p in (work / "parts" / name).glob("part-*.arrow")) for name in TABLES}
    lanes: list[list[str]] = [[] for _ in range(max(1, min(n_lanes, len(TABLES))))]
    load = [0] * len(lanes)
    for name in sorted(TABLES, key=lambda t: (-size[t], t)):
        i = load.index(min(load))
        lanes[i].append(name)
        load[i] += size[name]
    return [lane for lane in lanes if lane]


def firm_pnl(partition_sums: list[list[float] | None], index: pd.DataFrame) -> pa.Table:
    """Firm-wide P/L per scenario × multiplier: the partitions' account sums added in partition order."""
    sums = [np.asarray(s, dtype=np.float64) for s in partition_sums if s is not None]
    total = np.sum(sums, axis=0) if sums else np.zeros(len(index))
    df = index[["scenario_id", "multiplier", "label", "weight"]].assign(pnl=total)
    return pa.Table.from_pandas(df, schema=FIRM_PNL_SCHEMA, preserve_index=False)


FIRM_PNL_SCHEMA = pa.schema([("scenario_id", pa.string()), ("multiplier", pa.float64()), ("label", pa.string()),
                             ("weight", pa.float64()), ("pnl", pa.float64())])


@dataclass(frozen=True)
class Partition:
    """Input files that form one partition: ``(file index, bucket)`` pieces, where bucket ``None``
    takes the whole file and bucket ``b`` the rows whose account hashes to ``b`` of ``n_buckets``;
    or one file's Parquet row groups ``[start, stop)`` (``row_groups``) when no account spans them."""

    number: int
    pieces: tuple[tuple[int, int | None], ...]
    n_rows: int
    n_buckets: int = 1
    row_groups: tuple[int, int] | None = None


def account_bucket(account_id: Any, n_buckets: int) -> np.ndarray:
    """Deterministic bucket of every row's account (pandas' fixed-key SipHash; same on every machine).

    ``account_id``: strings as a pandas Series, NumPy array or Arrow array (a
    missing id hashes as ""). Each distinct id is hashed once.
    """
    arr = account_id if isinstance(account_id, pa.ChunkedArray | pa.Array) else \
        pa.array(np.asarray(account_id, dtype=object), type=pa.string(), from_pandas=True)
    enc = pc.dictionary_encode(pc.fill_null(arr.cast(pa.string()), ""))
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks() if enc.num_chunks != 1 else enc.chunk(0)
    uniq = enc.dictionary.to_numpy(zero_copy_only=False).astype(object)
    bucket = (pd.util.hash_array(uniq) % np.uint64(n_buckets)).astype(np.int64)
    return bucket[enc.indices.to_numpy(zero_copy_only=False)]


@dataclass
class Plan:
    files: list[Any]  # gpu_margin._io.InputFile
    rows_per_file: list[int]
    partitions: list[Partition]
    how: str  # a sentence for the log and manifest
    duplicates: dict[str, int] = field(default_factory=dict)  # position ids given more than once in the book


def _key_columns(f: Any) -> tuple[pa.ChunkedArray, pa.ChunkedArray | None]:
    """The ``account_id`` and ``position_id`` columns of one positions file, as Arrow strings.

    ``position_id`` is ``None`` when the file has no such column.
    """
    from ._io import positions_table  # noqa: PLC0415

    try:
        names = pq.read_schema(f.path).names
        if "account_id" in names and not f.partition:
            cols = ["account_id"] + (["position_id"] if "position_id" in names else [])
            t = pq.read_table(f.path, columns=cols)
            pid = t.column("position_id").cast(pa.string()) if "position_id" in names else None
            return t.column("account_id").cast(pa.string()), pid
    except Exception:  # noqa: BLE001  (the full reader below gives the one-line error)
        pass
    t = positions_table(f)[0]
    return t.column("account_id"), t.column("position_id")


def book_duplicates(position_ids: list[pa.ChunkedArray | None]) -> dict[str, int]:
    """Position ids given more than once in the whole book, with their counts.

    Partitions see only their own rows; these are passed to every partition so
    that a duplicate split across partitions is rejected as it would be in one.
    """
    given = [c.drop_null() for c in position_ids if c is not None]
    total = sum(len(c) for c in given)
    if total == 0:
        return {}
    if _sorted_apart(given):
        return {}
    ids = pa.chunked_array([ch for c in given for ch in c.chunks], type=pa.string())
    if len(pc.unique(ids)) == total:
        return {}
    vc = pc.value_counts(ids)
    counts = vc.field("counts")
    rep = pc.greater(counts, 1)
    return dict(zip(vc.field("values").filter(rep).to_pylist(), counts.filter(rep).to_pylist(), strict=True))


def default_ids_given(files: list[Any], keys: list[tuple[pa.ChunkedArray, pa.ChunkedArray | None]]
                      ) -> list[pa.ChunkedArray]:
    """The default ids (``"{source}:{row}"``) of the rows without a ``position_id`` that some row of the
    book gives as its id, one column per file, for :func:`book_duplicates` to count with the given ids.

    A partition fills in its rows' defaults and finds the repeats among its own
    rows; a default repeated by a given id in another partition is found here.
    One pass over the given ids finds those shaped like a default (``...:digits``)
    and the sources they name; only those files' defaults are spelled out, so a
    book with ids of its own (or none) builds no string.
    """
    named = set()
    for _, pid in keys:
        if pid is None or len(pid) == pid.null_count:
            continue
        shaped = pid.filter(pc.fill_null(pc.match_substring_regex(pid, r":[0-9]+$"), False))
        if len(shaped):
            named.update(pc.unique(pc.replace_substring_regex(shaped, r"[0-9]+$", "")).to_pylist())
    out = []
    for f, (acc, pid) in zip(files, keys):
        prefix = f"{f.source}:"
        if prefix not in named or (pid is not None and pid.null_count == 0):
            continue
        missing = np.arange(len(acc)) if pid is None else np.flatnonzero(pid.is_null().to_numpy(zero_copy_only=False))
        rows = pa.array(missing.astype(np.int64)).cast(pa.string())
        out.append(pa.chunked_array([pc.binary_join_element_wise(prefix, rows, "")], type=pa.string()))
    return out


def _sorted_apart(columns: list[pa.ChunkedArray]) -> bool:
    """Whether every column's ids are strictly increasing and the columns' ranges do not overlap.

    Then no id repeats, found with one comparison per id instead of hashing
    every id (files written in id order, as books usually are, pass).
    """
    from ._io import strictly_increasing  # noqa: PLC0415

    ranges = []
    for c in columns:
        n = len(c)
        if n == 0:
            continue
        if not strictly_increasing(c):
            return False
        ranges.append((c[0].as_py(), c[n - 1].as_py()))
    return _apart(ranges)


def row_group_split(path: Path, account_id: pa.ChunkedArray, k: int) -> list[tuple[tuple[int, int], int]] | None:
    """About ``k`` ranges of a file's Parquet row groups, cut only where no account has rows on both sides.

    Returns ``[((start, stop), n_rows), ...]`` covering every row group, or
    ``None`` when the file cannot be cut so (one row group, or accounts
    spanning every boundary): then the file is split by account hash.
    """
    md = pq.ParquetFile(path).metadata
    n_rg = md.num_row_groups
    if n_rg < 2:
        return None
    sizes = np.array([md.row_group(i).num_rows for i in range(n_rg)], dtype=np.int64)
    if int(sizes.sum()) != len(account_id):
        return None
    clean = _clean_boundaries((pc.fill_null(account_id, "") if account_id.null_count else account_id).combine_chunks(),
                              sizes, np.cumsum(sizes))
    return _cut_row_groups(sizes, clean, k)


def _cut_row_groups(sizes: np.ndarray, clean: np.ndarray, k: int) -> list[tuple[tuple[int, int], int]] | None:
    """About ``k`` ranges of row groups of ``sizes`` rows, cut at some of the ``clean`` boundaries (``None``: none)."""
    if clean.size == 0:
        return None
    ends = np.cumsum(sizes)
    at = ends[clean - 1]  # rows before each clean boundary
    cuts = sorted({int(clean[np.argmin(np.abs(at - j * ends[-1] / k))]) for j in range(1, k)})
    bounds = [0, *cuts, sizes.size]
    return [((a, b), int(sizes[a:b].sum())) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@dataclass(frozen=True)
class KeyStatistics:
    """A positions file's row groups as its Parquet footer describes them: rows, and the smallest and largest
    ``account_id`` (UTF-8 bytes) of each."""

    sizes: np.ndarray
    acc_min: list[bytes]
    acc_max: list[bytes]

    def clean_boundaries(self) -> np.ndarray:
        """Boundaries ``b`` (before row group ``b``) with every account before it below every account after
        it: no account spans them (the ranges come in order, so the neighbours' bounds decide)."""
        return np.array([b for b in range(1, self.sizes.size) if self.acc_max[b - 1] < self.acc_min[b]],
                        dtype=np.int64)


def key_statistics(files: list[Any]) -> list[KeyStatistics] | None:
    """What the plan needs to know about the key columns, from the files' footers alone, when they show
    a book written in order (as books usually are); ``None`` otherwise (then the columns are read).

    Every row group of every file must have min/max statistics of ``account_id``
    and ``position_id`` as strings with no missing value, each file's account
    ranges must come in order and the files' ranges lie apart (so no account
    is in two files, and the row-group boundaries that no account spans are
    those where one row group's largest id is below the next one's smallest),
    and the ``position_id`` ranges of all row groups must lie apart (so no id
    is in two row groups: a partition of whole row groups finds the repeats
    within them itself; a file split by account hash has its repeats found
    when the plan reads its columns for the hash).
    Statistics are bounds of the values (a writer may shorten them), which
    keeps each of these conclusions sound.
    """
    out, pid_ranges, file_ranges = [], [], []
    for f in files:
        try:
            got = None if f.partition else _file_key_statistics(f.path)
        except Exception:  # noqa: BLE001  (an unreadable footer: the readers give the one-line error)
            got = None
        if got is None:
            return None
        stats, pids = got
        out.append(stats)
        pid_ranges += pids
        if stats.sizes.size:
            file_ranges.append((stats.acc_min[0], stats.acc_max[-1]))
    if not _apart(file_ranges) or not _apart(pid_ranges):
        return None
    return out


def _file_key_statistics(path: Path) -> tuple[KeyStatistics, list[tuple[bytes, bytes]]] | None:
    """One file's :class:`KeyStatistics` and its row groups' ``position_id`` ranges, or ``None`` where its
    footer does not give them (see :func:`key_statistics`) or its account ranges are out of order."""
    md = pq.ParquetFile(path).metadata
    paths = [md.schema.column(j).path for j in range(md.num_columns)]  # top-level columns only, not fields
    if paths.count("account_id") != 1 or paths.count("position_id") != 1:
        return None
    if md.num_rows == 0:  # an empty file: nothing to place (its row groups, if any, are empty; any types)
        return KeyStatistics(np.zeros(0, dtype=np.int64), [], []), []
    cols = paths.index("account_id"), paths.index("position_id")
    if any(getattr(md.schema.column(j).logical_type, "type", None) != "STRING" for j in cols):
        return None
    sizes, lo, hi, pids = [], [], [], []
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        if rg.num_rows == 0:
            return None
        st = [rg.column(j).statistics for j in cols]
        if any(s is None or not s.has_min_max or not s.has_null_count or s.null_count for s in st):
            return None
        sizes.append(rg.num_rows)
        lo.append(st[0].min_raw)
        hi.append(st[0].max_raw)
        pids.append((st[1].min_raw, st[1].max_raw))
    if not sizes or any(hi[i] > lo[i + 1] for i in range(len(sizes) - 1)):
        return None
    return KeyStatistics(np.array(sizes, dtype=np.int64), lo, hi), pids


def _apart(ranges: list[tuple[Any, Any]]) -> bool:
    """Whether the closed ranges ``[lo, hi]`` overlap nowhere."""
    ranges = sorted(ranges)
    return all(hi < lo for (_, hi), (lo, _) in zip(ranges[:-1], ranges[1:], strict=True))


def _clean_boundaries(acc: pa.Array, sizes: np.ndarray, ends: np.ndarray, *, general: bool = False) -> np.ndarray:
    """The row-group boundaries ``b`` (before row group ``b``, ``1 <= b < n_rg``) that no account spans.

    A file whose accounts each come in one run of rows (files written account
    by account) needs only a comparison of neighbours: a boundary is clean
    where a new account starts. Otherwise (or with ``general``) each account's
    first and last row group are found and the spans counted.
    """
    from ._io import run_starts  # noqa: PLC0415

    n_rg = sizes.size
    starts = np.r_[run_starts(acc), True]  # a boundary at the end of the rows (empty row groups after) is clean
    if not general and len(pc.unique(acc.filter(pa.array(starts[:-1])))) == int(starts[:-1].sum()):  # one run each
        return np.flatnonzero(starts[ends[:-1]]) + 1
    enc = pc.dictionary_encode(acc)
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    rg = np.repeat(np.arange(n_rg), sizes)
    n_acc = int(codes.max()) + 1 if codes.size else 0
    lo = np.full(n_acc, n_rg, np.int64)
    hi = np.full(n_acc, -1, np.int64)
    np.minimum.at(lo, codes, rg)
    np.maximum.at(hi, codes, rg)
    # boundary b is clean when no account has lo < b <= hi
    span = np.zeros(n_rg + 1, np.int64)
    np.add.at(span, lo + 1, 1)
    np.add.at(span, hi + 1, -1)
    return np.flatnonzero(np.cumsum(span)[1:n_rg] == 0) + 1


def distinct_accounts(ids: pa.ChunkedArray) -> pa.Array:
    """The distinct non-null ids of a file in order of first appearance (``pc.unique``), hashing only
    the first id of each run of equal ids (files written account by account have one run each)."""
    from ._io import run_starts  # noqa: PLC0415

    arr = (ids.drop_null() if ids.null_count else ids).combine_chunks()
    return pc.unique(arr.filter(pa.array(run_starts(arr)))) if len(arr) else arr


MIN_PARTITION_ROWS = 50_000  # below this a partition's fixed costs dominate: no split for parallelism


def plan_partitions(positions: Path, partition_rows: int, n_partitions: int | None = None,
                    workers: int | None = None) -> Plan:
    """Partitions of whole accounts: the files themselves when no account spans two files, each
    fits in a partition and there are enough of them to keep every core busy; otherwise a hash
    repartition by ``account_id``.

    What it needs to know of the ``account_id`` and ``position_id`` columns
    comes from the files' Parquet statistics when they prove the book is
    written in order (:func:`key_statistics`: no column is read, 1.6 s less
    for 10M positions); otherwise the two columns are read.
    """
    from ._io import list_input_files  # noqa: PLC0415

    files = list_input_files(positions)
    stats = key_statistics(files)
    keys: list[tuple[pa.ChunkedArray, pa.ChunkedArray | None] | None] = [None] * len(files)

    def hashed(i: int) -> pa.ChunkedArray:
        """The account ids of file ``i``, which is split by account hash (its columns read once). Its row
        groups are then split too, so a repeated id the footers could not see (within one row group)
        may reach two partitions: planned from the footers, the file's repeats are found here."""
        if keys[i] is None:
            keys[i] = _key_columns(files[i])
            if stats is not None:  # no id is in two row groups, so none is in two files: one file at a time
                duplicates.update(book_duplicates([keys[i][1]]))
        return keys[i][0]

    if stats is not None:  # a book written in order: rows, accounts and repeats from the footers alone
        rows = [int(s.sizes.sum()) for s in stats]
        duplicates: dict[str, int] = {}
        disjoint = True
    else:
        keys = [_key_columns(f) for f in files]
        duplicates = book_duplicates([k[1] for k in keys] + default_ids_given(files, keys))
        rows = [len(k[0]) for k in keys]
        uniq = [distinct_accounts(k[0]) for k in keys]
        # no account in two files: files each in account order with ranges apart, else a hash of them all
        disjoint = _sorted_apart([pa.chunked_array([u], type=pa.string()) for u in uniq]) or \
            sum(len(u) for u in uniq) == len(pc.unique(pa.chunked_array(uniq, type=pa.string())))
    total = sum(rows)
    workers = workers or os.cpu_count() or 1
    wanted = max(-(-total // partition_rows), min(workers, total // MIN_PARTITION_ROWS), 1)
    if n_partitions is None and disjoint and all(r <= partition_rows for r in rows) and len(files) >= wanted:
        parts = [Partition(i, ((i, None),), r) for i, r in enumerate(rows)]
        return Plan(files, rows, parts, f"{len(files)} file(s), each holding whole accounts: one partition per file",
                    duplicates)
    if n_partitions is None and disjoint:
        # every file holds whole accounts: split only the large ones, each by its own accounts' hash
        per_file = [max(1, -(-r // partition_rows)) for r in rows]
        while sum(per_file) < wanted and max(rows) >= 2 * MIN_PARTITION_ROWS:
            i = int(np.argmax([r / k for r, k in zip(rows, per_file)]))
            per_file[i] += 1
        parts = []
        by_hash = 0
        for fi, k in enumerate(per_file):
            if k == 1:
                parts.append(Partition(len(parts), ((fi, None),), rows[fi]))
                continue
            if stats is not None:
                ranges = _cut_row_groups(stats[fi].sizes, stats[fi].clean_boundaries(), k)
            else:
                ranges = row_group_split(files[fi].path, hashed(fi), k) if not files[fi].partition else None
            if ranges:  # contiguous row groups: each partition reads only its own part of the file
                for (start, stop), n in ranges:
                    parts.append(Partition(len(parts), ((fi, None),), n, 1, (start, stop)))
                continue
            by_hash += 1
            counts = np.bincount(account_bucket(hashed(fi), k), minlength=k)
            for b in np.flatnonzero(counts):
                parts.append(Partition(len(parts), ((fi, int(b)),), int(counts[b]), k))
        how = "by account hash" if by_hash == sum(k > 1 for k in per_file) else \
            "by row groups where no account spans them, else by account hash" if by_hash else \
            "by row groups (no account spans two parts)"
        return Plan(files, rows, parts, f"{len(files)} file(s), each holding whole accounts, split {how} "
                                        f"within each file into {len(parts)} partition(s)", duplicates)
    if n_partitions is None:
        n_partitions = wanted
        why = ("accounts span files" if not disjoint else "files are larger than partition_rows"
               if any(r > partition_rows for r in rows) else f"{len(files)} file(s) for {workers} cores")
    else:
        why = f"{n_partitions} partitions requested"
    n = n_partitions
    counts = np.zeros(n, dtype=np.int64)
    for fi in range(len(files)):
        counts += np.bincount(account_bucket(hashed(fi), n), minlength=n)
    buckets = np.flatnonzero(counts) if counts.any() else np.zeros(1, np.int64)  # no rows: one empty partition
    parts = [Partition(i, tuple((fi, int(b)) for fi in range(len(files))), int(counts[b]), n)
             for i, b in enumerate(buckets)]
    return Plan(files, rows, parts, f"{len(files)} file(s) repartitioned by account_id into {len(parts)} "
                                    f"partition(s) ({why})", duplicates)


@dataclass
class Context:
    """What every partition task needs (small; shipped to workers)."""

    job: Job
    files: list[Any]
    market: pd.DataFrame
    accounts_key: str  # digest of the accounts files' paths and digests: see accounts_table
    scenarios: pd.DataFrame | None
    work: Path
    device: str
    duplicates: dict[str, int] = field(default_factory=dict)  # position ids repeated in the book (usually none)


_ACCOUNTS: dict[str, tuple[pd.DataFrame, pa.Array, bool]] = {}


def accounts_table(ctx: Context) -> tuple[pd.DataFrame, pa.Array, bool]:
    """The run's accounts table, its ``account_id`` column as one Arrow array, and whether the ids are in
    ascending order (then a partition's accounts are found in the window of its smallest to largest id);
    read once per process.

    The accounts table can be as long as the book has accounts, so it is not
    shipped inside every task: the process that plans the run holds it already,
    and a ``dask.distributed`` worker reads it from the job's path the first
    time one of its tasks needs it (keyed by the file's sha256).
    """
    hit = _ACCOUNTS.get(ctx.accounts_key)
    if hit is None:
        from ._io import read_accounts  # noqa: PLC0415

        hit = remember_accounts(ctx.accounts_key, read_accounts(ctx.job.accounts).frame)
    return hit


def remember_accounts(key: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, pa.Array, bool]:
    from ._io import arrow_strings, strictly_increasing  # noqa: PLC0415

    _ACCOUNTS.clear()
    ids = arrow_strings(frame["account_id"])
    _ACCOUNTS[key] = (frame, ids, strictly_increasing(ids))
    return _ACCOUNTS[key]


def rows_of_accounts(ids: pa.Array, ordered: bool, wanted: pa.Array) -> np.ndarray:
    """Rows of the accounts ``ids`` (file order) whose id is one of ``wanted``.

    With ``ordered`` ids only the rows between the smallest and the largest
    wanted id are compared (a partition holds a slice of a book written in
    account order), found by bisection; otherwise every row is.
    """
    lo, hi = 0, len(ids)
    if ordered and len(wanted):
        bounds = pc.min_max(wanted)
        as_py = operator.methodcaller("as_py")  # only the probed ids become Python strings
        lo = bisect.bisect_left(ids, bounds["min"].as_py(), key=as_py)
        hi = bisect.bisect_right(ids, bounds["max"].as_py(), key=as_py)
    window = ids.slice(lo, max(hi - lo, 0))
    found = pc.is_in(window, value_set=wanted.cast(ids.type))
    return lo + np.flatnonzero(found.to_numpy(zero_copy_only=False))


def accounts_without_positions(work: Path, accounts: pd.DataFrame, summaries: list[dict[str, Any]]) -> pa.Array:
    """The accounts file's ids that no partition reported (no position and no rejected row), in file order.

    When the partitions' reported accounts found in the accounts file add up to
    its rows (ids are unique), every account is covered and nothing is read;
    otherwise the ids are matched against the partitions' ``accounts`` parts
    (those of ``summaries`` only: a resumed run's part of these accounts is not one).
    """
    from ._io import arrow_strings  # noqa: PLC0415

    if sum(int(s.get("accounts_in_file", -1)) for s in summaries) == len(accounts):
        return pa.array([], pa.string())
    ids = arrow_strings(accounts["account_id"])
    parts = [read_part(work / "parts" / "accounts" / f"part-{s['partition']:05d}.arrow").column("account_id")
             for s in summaries]
    if not parts:
        return ids
    seen = pa.chunked_array([c for p in parts for c in p.chunks], type=pa.string()).combine_chunks()
    return ids.filter(pc.invert(pc.is_in(ids, value_set=seen.cast(ids.type))))


def _done_marker(ctx: Context, part: Partition) -> Path:
    return ctx.work / "parts" / "done" / f"part-{part.number:05d}.json"


def read_partition(part: Partition, ctx: Context) -> pd.DataFrame:
    """The positions of one partition, whole accounts (nothing when an earlier run finished it)."""
    from ._io import positions_table, to_frame  # noqa: PLC0415

    if _done_marker(ctx, part).exists():
        return pd.DataFrame()
    t0 = time.perf_counter()
    frames = []
    for fi, bucket in part.pieces:
        table, _ = positions_table(ctx.files[fi], part.row_groups)
        if bucket is not None:  # this partition's accounts, chosen in Arrow before any pandas conversion
            table = table.filter(pa.array(account_bucket(table.column("account_id"), part.n_buckets) == bucket))
        frames.append(to_frame(table))
    pos = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    pos.attrs["read_seconds"] = time.perf_counter() - t0
    return pos


SUMMARY_META = pd.DataFrame({"summary": pd.Series(dtype=object)})


def margin_partition(pos: pd.DataFrame, ctx: Context, parts: list[Partition],
                     partition_info: dict[str, Any] | None = None) -> pd.DataFrame:
    """``map_partitions`` body: margin one partition of positions; one row holding its summary."""
    part = parts[partition_info["number"]] if partition_info else parts[0]
    return pd.DataFrame({"summary": [run_partition(ctx, part, pos)]})


def run_partition(ctx: Context, part: Partition, pos: pd.DataFrame | None = None,
                  ids: pa.Array | None = None) -> dict[str, Any]:
    """Margin one partition and write its part files; returns counts and stage timings.

    ``ids``: the accounts to report (by default those of the partition's rows, rejected ones included);
    the accounts of the accounts file that hold no position are margined this way, with no rows.
    """
    from ._backend import select_backend  # noqa: PLC0415
    from ._calls import margin_calls_and_plans  # noqa: PLC0415
    from ._compute import ENGINE_COLUMNS, margin_frames  # noqa: PLC0415
    from ._io import arrow_strings  # noqa: PLC0415
    from ._methodology import load_methodology  # noqa: PLC0415
    from ._validate import validate_positions  # noqa: PLC0415

    done = _done_marker(ctx, part)
    if done.exists():
        return json.loads(done.read_text()) | {"resumed": True}
    if pos is None:
        pos = read_partition(part, ctx)
    t = {"read": float(pos.attrs.get("read_seconds", 0.0))}
    t0 = time.perf_counter()
    valid, rejects = validate_positions(pos, ctx.market, asof=ctx.job.asof, rate=ctx.job.rate,
                                        duplicates=ctx.duplicates, columns=ENGINE_COLUMNS)
    t["validate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    backend = select_backend(ctx.device)
    meth = load_methodology(ctx.job.methodology)
    # the partition's accounts (rejected rows' too), matched in Arrow: no Python string per row
    if ids is None:
        ids = distinct_accounts(pa.chunked_array([arrow_strings(pos["account_id"])])) if len(pos) else \
            pa.array([], pa.string())
    accounts, account_ids, ordered = accounts_table(ctx)
    rows = rows_of_accounts(account_ids, ordered, ids)
    # the accounts of a book written in account order are one block of the accounts file: a view of it
    # (read only: margin_frames never writes to it, and the cached table stays as read)
    acc = accounts.iloc[rows[0]:rows[-1] + 1] if rows.size and rows[-1] - rows[0] + 1 == rows.size else \
        accounts.take(rows)
    res = margin_frames(valid, rejects, ctx.market, acc, meth, backend, scenarios=ctx.scenarios,
                        multipliers=ctx.job.multipliers, account_ids=ids)
    t["margin"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    calls, plans = margin_calls_and_plans(res, meth, backend, asof=ctx.job.asof, due_days=ctx.job.due_days)
    res["margin_calls"], res["liquidation"] = calls, plans
    t["calls"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    counts = {}
    for name in TABLES:
        table = to_table(name, res[name])
        if name != "regt_legs":  # the Reg T legs come out of the engine in their output order
            table = sort_table(name, table)
        write_part(table, ctx.work / "parts" / name / f"part-{part.number:05d}.arrow")
        counts[name] = table.num_rows
    firm = None
    if "_scenario_pnl" in res:  # written in its final form: one file per partition, accounts in order
        sp = res["_scenario_pnl"]
        sp.write(ctx.work / "parts" / "scenario_pnl" / f"part-{part.number:05d}.parquet")
        counts["scenario_pnl"] = int(sp.matrix.size)
        firm = sp.matrix.sum(axis=0).tolist()
    t["write"] = time.perf_counter() - t0
    summary = {"partition": part.number, "rows_in": len(pos), "valid": len(valid), "rejected": len(rejects),
               "counts": counts, "seconds": t, "resumed": False, "firm_pnl": firm,
               "accounts_in_file": int(rows.size)}  # reported accounts that have a row in the accounts file
    done.parent.mkdir(parents=True, exist_ok=True)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary))
    tmp.rename(done)
    return summary


def _distributed_compute(client: Any, collection: Any, progress: bool) -> Any:
    future = client.compute(collection)
    if progress:
        from distributed import progress as show_progress  # noqa: PLC0415

        show_progress(future)
    return future.result()


def _local_get(name: str) -> Any:
    """Dask's local scheduler function for ``threads`` or ``sync``."""
    if name == "sync":
        from dask.local import get_sync  # noqa: PLC0415

        return get_sync
    from dask.threaded import get  # noqa: PLC0415

    return get


@contextlib.contextmanager
def dask_scheduler(name: str, gpu: bool, progress: bool = False):
    """Yield ``(compute(collection) -> result, description)`` for a scheduler name or a dask.distributed address.

    ``threads`` and ``sync`` are Dask's local schedulers; ``processes`` starts a
    ``LocalCluster`` on 127.0.0.1 (``dask_cuda.LocalCUDACluster`` for ``--device
    gpu`` when installed); anything else is the address of a running scheduler.
    """
    import dask  # noqa: PLC0415

    if name in ("threads", "sync"):
        # the scheduler function itself, not its name: a name makes Dask import dask.distributed (0.2 s)
        # to look for a running client
        get = _local_get(name)

        def compute(collection):
            if progress:
                from dask.diagnostics import ProgressBar  # noqa: PLC0415

                with ProgressBar(out=sys.stderr):
                    return dask.compute(collection, scheduler=get)[0]
            return dask.compute(collection, scheduler=get)[0]

        yield compute, f"dask local {'threaded' if name == 'threads' else 'synchronous'} scheduler"
        return
    from distributed import Client, LocalCluster  # noqa: PLC0415

    if name == "processes":
        cluster = None
        workers = os.cpu_count() or 1
        if gpu:  # the backend chosen (--device gpu, or auto that found one): one worker per GPU
            try:
                from dask_cuda import LocalCUDACluster  # noqa: PLC0415

                cluster = LocalCUDACluster(ip="127.0.0.1", dashboard_address="127.0.0.1:0")
            except Exception as exc:  # not installed, or no usable NVML: one process, so one CUDA context
                workers = 1
                log.warning("scheduler: dask_cuda.LocalCUDACluster unavailable (%s: %s); one worker process "
                            "drives the GPU (install gpu-margin[gpu] for one worker per GPU)",
                            type(exc).__name__, exc)
        if cluster is None:
            # The nanny's default MALLOC_TRIM_THRESHOLD_ hands freed memory back to the OS at once; a
            # partition allocates and frees large arrays all the time, so every one is page-faulted
            # in afresh (4.5x the page faults of the threaded run). glibc's own policy keeps them.
            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0")
        with cluster, Client(cluster) as client:
            yield (lambda coll: _distributed_compute(client, coll, progress)), \
                f"dask.distributed {type(cluster).__name__} ({len(cluster.workers)} workers on 127.0.0.1)"
        return
    try:
        client = Client(name, timeout="10s")
    except OSError as exc:
        raise JobError(f"--scheduler {name}: cannot reach the dask.distributed scheduler ({exc}); "
                       "start it or pass --scheduler threads") from None
    with client:
        yield (lambda coll: _distributed_compute(client, coll, progress)), f"dask.distributed cluster at {name}"


def _fingerprint(job: Job, input_digests: dict[str, str], plan: Plan, meth: Any) -> str:
    """What a finished partition's parts depend on: inputs, parameters (not the scheduler, which runs the same
    partitions to the same parts, so a run resumed on another scheduler keeps them), the methodology's every
    value (a methodology file edited between a crash and --resume changes it) and the plan."""
    params = {k: v for k, v in job.params().items() if k != "scheduler"}
    doc = {"params": params, "inputs": input_digests, "methodology": meth.as_dict(),
           "plan": [(p.number, list(p.pieces), p.n_buckets, p.row_groups) for p in plan.partitions]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata as md  # noqa: PLC0415

    out = {}
    for pkg in ("gpu-margin", "numpy", "pandas", "pyarrow", "dask", "distributed", "numba", "cupy-cuda12x",
                "exchange-calendars"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    out["python"] = sys.version.split()[0]
    return out


@dataclass
class RunResult:
    out: Path
    manifest: dict[str, Any]
    accounts: pd.DataFrame
    margin_calls: pd.DataFrame
    liquidation: pd.DataFrame
    seconds: float
    device: str
    scheduler: str
    notes: list[str] = field(default_factory=list)


def _scenario_provenance(path: Path | None) -> dict[str, Any] | None:
    """Where a replay's scenarios came from, as the scenario file records it (``gpu-margin scenarios
    from-history`` writes the command, its arguments and its inputs' sha256 into a Parquet file): a
    scenario_pnl row traces back to the market history behind it. ``None`` when the file says nothing."""
    from ._history import PROVENANCE_KEY  # noqa: PLC0415

    if path is None or Path(path).suffix.lower() == ".csv" or not Path(path).is_file():
        return None
    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[PROVENANCE_KEY]) if PROVENANCE_KEY in meta else None
    except (OSError, ValueError, pa.ArrowException):  # read already; a bad record is no provenance
        return None


def _positions_notes(plan: Plan, summaries: list[dict[str, Any]], job: Job) -> list[str]:
    """Manifest notes on the positions: extra columns the run does not use (SPEC 3: ignored with a note), and
    accounts of the positions that have no row in the accounts file (margined on a cash of 0 as portfolio
    accounts: an id spelled differently in the two files shows here)."""
    from ._schema import POSITION_COLUMNS, POSITIONS_RESERVED  # noqa: PLC0415

    known = {c.name for c in POSITION_COLUMNS} | set(POSITIONS_RESERVED) | {"__index_level_0__"}  # pandas' index
    extras: list[str] = []
    for f in plan.files:
        hive = {k for k, _ in f.partition}
        extras += [n for n in pq.read_schema(f.path).names if n not in known and n not in hive and n not in extras]
    notes = [f"positions: extra columns not used by the run (not in its outputs): {', '.join(extras)}"] \
        if extras else []
    if job.accounts and all("accounts_in_file" in s for s in summaries):
        parts = [s for s in summaries if s["rows_in"] or s["counts"].get("accounts")]
        missing = sum(s["counts"].get("accounts", 0) - s["accounts_in_file"] for s in parts)
        if missing > 0:
            notes.append(f"accounts: {missing} account(s) of the positions have no row in {job.accounts}; "
                         "margined on a cash of 0 as portfolio accounts")
    return notes


def _check_out(job: Job) -> None:
    """``--out`` must be a directory that neither holds nor lies inside an input (``--force`` would delete the
    input, or the next run would read the outputs as positions), and not an existing plain file."""
    out = Path(job.out)
    if out.exists() and not out.is_dir():
        raise JobError(f"{out}: exists and is not a directory; choose another --out")
    here = out.resolve()
    inputs = [("positions", job.positions), ("market", job.market), ("accounts", job.accounts),
              ("scenarios", job.scenarios), ("job file", job.path), ("methodology", job.methodology_file)]
    for what, path in inputs:
        if path is None:
            continue
        there = Path(path).resolve()
        if here == there or here.is_relative_to(there) or there.is_relative_to(here):
            raise JobError(f"{out}: the output directory would {'hold' if there.is_relative_to(here) else 'lie in'} "
                           f"the {what} input {path}; choose an --out outside the inputs")


@contextlib.contextmanager
def _out_lock(out: Path):
    """Hold an exclusive lock on ``out`` for the run (a hidden ``.NAME.lock`` beside it): a second run on the
    same ``--out`` stops at once instead of sharing, or deleting, the first one's work. The operating system
    drops the lock when the process ends, however it ends."""
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:  # pragma: no cover (not POSIX: no lock)
        yield
        return
    lock = out.parent / f".{out.name}.lock"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise JobError(f"{out}: cannot create {lock} ({exc.strerror}); choose an --out in a folder you can write "
                       "to") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobError(f"{out}: another gpu-margin run is writing it (it holds {lock}); wait for that run to "
                           "end or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_job(job: Job, *, force: bool = False, resume: bool = False, n_partitions: int | None = None,
            progress: bool | None = None) -> RunResult:
    """Run a job end to end; see the module docstring."""
    _check_out(job)
    with _out_lock(Path(job.out)):
        return _run_job(job, force=force, resume=resume, n_partitions=n_partitions, progress=progress)


def _run_job(job: Job, *, force: bool, resume: bool, n_partitions: int | None, progress: bool | None) -> RunResult:
    from ._backend import select_backend  # noqa: PLC0415
    from ._io import list_input_files, read_accounts, read_market  # noqa: PLC0415
    from ._methodology import load_methodology  # noqa: PLC0415
    from ._scenarios import read_scenario_file  # noqa: PLC0415

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(job.out)
    if out.exists() and not force:
        raise JobError(f"{out}: output directory exists; pass --force to replace it or choose another --out")
    backend = select_backend(job.device)
    log.info("device: %s", backend.description)
    meth = load_methodology(job.methodology)  # fail fast on a bad methodology
    if meth.kind == "scenarios" and job.scenarios is None:
        raise JobError(f"{job.path or 'job'}: methodology {job.methodology!r} is a scenarios methodology; "
                       "add scenarios = FILE to the job or pass --scenarios")

    t0 = time.perf_counter()
    market_in = read_market(job.market)
    accounts_in = read_accounts(job.accounts)
    scenarios = read_scenario_file(job.scenarios) if job.scenarios else None
    plan = plan_partitions(job.positions, job.partition_rows, n_partitions)
    log.info("partitions: %s", plan.how)
    timings["plan"] = time.perf_counter() - t0
    scenarios_index = None
    scenario_notes: list[str] = []
    if scenarios is not None:
        from ._scenarios import joint_table, unshocked_underlyings  # noqa: PLC0415

        # resolve once on the host: a bad selector fails here, before any work (no OUT.partial left behind)
        _, scenarios_index = joint_table(scenarios, market_in.frame, job.multipliers, source=str(job.scenarios),
                                         vol_mode=meth.defaults.vol_shock_mode)
        unshocked = unshocked_underlyings(scenarios, market_in.frame)
        if unshocked:
            shown = ", ".join(unshocked[:10]) + (f" and {len(unshocked) - 10} more" if len(unshocked) > 10 else "")
            scenario_notes.append(f"scenarios: {len(unshocked)} underlying(s) of the market are named by no row of "
                                  f"{job.scenarios} (not by name, group: or *) and stay unshocked: {shown}")
            log.info("%s", scenario_notes[-1])

    t0 = time.perf_counter()
    # every file read (an input given as a directory: each of its files)
    read = [*plan.files, *market_in.files, *accounts_in.files]
    inputs = {str(f.path): sha256_file(f.path) for f in read}
    if job.scenarios:
        inputs.update({str(f.path): sha256_file(f.path) for f in list_input_files(job.scenarios)})
    timings["hash_inputs"] = time.perf_counter() - t0
    if job.methodology_file:  # its bytes too
        inputs[str(job.methodology_file)] = sha256_file(job.methodology_file)
    fingerprint = _fingerprint(job, inputs, plan, meth)

    work = out.with_name(out.name + ".partial")
    fp_file = work / "fingerprint"
    if work.exists() and not (resume and fp_file.exists() and fp_file.read_text() == fingerprint):
        if resume:
            log.info("resume: %s is from other inputs or parameters; starting afresh", work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    fp_file.write_text(fingerprint)

    # the accounts' identity: every file read for them (a directory is several) by path and digest; a cache
    # key of a long-lived worker, which must never hand one run another run's accounts
    accounts_key = hashlib.sha256(json.dumps(sorted((str(f.path), inputs[str(f.path)]) for f in accounts_in.files))
                                  .encode()).hexdigest() if accounts_in.files else "no accounts file"
    remember_accounts(accounts_key, accounts_in.frame)
    ctx = Context(job, plan.files, market_in.frame, accounts_key, scenarios, work, job.device, plan.duplicates)
    import dask.dataframe as dd  # noqa: PLC0415

    # a Dask DataFrame whose partitions are whole accounts, margined partition by partition

    positions = dd.from_map(read_partition, plan.partitions, ctx=ctx, meta=pd.DataFrame(),
                            enforce_metadata=False, label="read-positions")
    results = positions.map_partitions(margin_partition, ctx=ctx, parts=plan.partitions, meta=SUMMARY_META,
                                       enforce_metadata=False, align_dataframes=False)
    t0 = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    with dask_scheduler(job.scheduler, backend.is_gpu, show) as (compute, sched_desc):
        log.info("scheduler: %s", sched_desc)
        summaries = list(compute(results)["summary"])
        # accounts of the accounts file with no position in the book (cash only): one more part, no rows
        cash_only = accounts_without_positions(work, accounts_in.frame, summaries)
        if len(cash_only):
            log.info("accounts: %d in the accounts file hold no position; margined on their cash", len(cash_only))
            from ._io import positions_table, to_frame  # noqa: PLC0415

            empty = to_frame(positions_table(plan.files[0], (0, 0))[0])
            summaries.append(run_partition(ctx, Partition(len(plan.partitions), (), 0), empty, ids=cash_only))
    timings["partitions_wall"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    final = work / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir()
    outputs = {}
    tables: dict[str, pd.DataFrame] = {}

    def finish_table(name: str) -> tuple[str, dict[str, Any], pd.DataFrame | None]:
        parts = sorted((work / "parts" / name).glob("part-*.arrow"))
        table, order = merge_order(name, [read_part(p) for p in parts])  # memory-mapped parts
        target = final / f"{name}.parquet"
        write_table(table, target, order)
        frame = table.take(pa.array(order)).to_pandas() if name in ("accounts", "margin_calls", "liquidation") \
            else None
        return name, {"sha256": sha256_file(target), "rows": table.num_rows}, frame

    import dask  # noqa: PLC0415

    def finish_lane(names: list[str]) -> list[tuple[str, dict[str, Any], pd.DataFrame | None]]:
        return [finish_table(name) for name in names]

    # the tables are merged and written side by side (Arrow and Parquet work outside the GIL), in lanes
    # of about equal bytes with the largest first, so the longest write starts at once (Dask's threads
    # would take single tables in an order of its own)
    done = {}
    for lane in dask.compute(*[dask.delayed(finish_lane)(names) for names in _lanes(work, os.cpu_count() or 1)],
                             scheduler=_local_get("threads")):
        done.update({name: (info, frame) for name, info, frame in lane})
    for name in TABLES:
        info, frame = done[name]
        outputs[f"{name}.parquet"] = info
        if frame is not None:
            tables[name] = frame
    sp_parts = sorted((work / "parts" / "scenario_pnl").glob("part-*.parquet"))
    if sp_parts:
        (final / "scenario_pnl").mkdir()
        for i, src in enumerate(sp_parts):  # partitions hold disjoint accounts
            target = final / "scenario_pnl" / f"part-{i:05d}.parquet"
            shutil.copyfile(src, target)
            outputs[str(target.relative_to(final))] = {"sha256": sha256_file(target),
                                                       "rows": pq.ParquetFile(target).metadata.num_rows}
        firm = firm_pnl([s["firm_pnl"] for s in sorted(summaries, key=lambda s: s["partition"])], scenarios_index)
        target = final / "firm_pnl.parquet"
        write_table(firm, target)
        outputs["firm_pnl.parquet"] = {"sha256": sha256_file(target), "rows": firm.num_rows}
    timings["finish"] = time.perf_counter() - t0

    rows_in = sum(s["rows_in"] for s in summaries)
    valid = sum(s["valid"] for s in summaries)
    rejected = sum(s["rejected"] for s in summaries)
    stage = {k: float(sum(s["seconds"].get(k, 0.0) for s in summaries)) for k in
             ("read", "validate", "margin", "calls", "write")}
    elapsed = time.perf_counter() - t_start
    manifest = {
        "gpu_margin": _versions().get("gpu-margin"),
        "job": str(job.path) if job.path else None,
        "parameters": job.params(),
        "methodology": meth.as_dict(),
        "inputs": {k: {"sha256": v} for k, v in inputs.items()},
        "input_files_rows": {str(f.path): r for f, r in zip(plan.files, plan.rows_per_file)},
        "notes": list(market_in.notes) + list(accounts_in.notes) + _positions_notes(plan, summaries, job)
        + scenario_notes,
        "scenarios_provenance": _scenario_provenance(job.scenarios),
        "device": backend.description,
        "scheduler": job.scheduler,
        "partitions": {"count": len(plan.partitions), "how": plan.how, "cash_only_part": bool(len(cash_only)),
                       "resumed": sum(1 for s in summaries if s.get("resumed"))},
        "counts": {"positions_in": rows_in, "positions_priced": valid, "positions_rejected": rejected,
                   "reconciles": rows_in == valid + rejected == sum(plan.rows_per_file),
                   "accounts_out": outputs["accounts.parquet"]["rows"],
                   "accounts_without_positions": len(cash_only),
                   "margin_calls": outputs["margin_calls.parquet"]["rows"]},
        "timings_seconds": {**timings, "stages_summed_over_partitions": stage, "total": elapsed},
        "versions": _versions(),
        "outputs": outputs,
        "fingerprint": fingerprint,
    }
    if not manifest["counts"]["reconciles"]:  # pragma: no cover (a bug, not a user error)
        raise RuntimeError(f"row counts do not reconcile: {rows_in} in, {valid} priced, {rejected} rejected")
    (final / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    _replace_dir(final, out, force)
    shutil.rmtree(work, ignore_errors=True)
    return RunResult(out, manifest, tables["accounts"], tables["margin_calls"], tables["liquidation"],
                     elapsed, backend.description, job.scheduler)


def _replace_dir(src: Path, dst: Path, force: bool) -> None:
    """Move the finished ``src`` to ``dst``; an existing ``dst`` is replaced only with ``force``."""
    if dst.exists():
        if not force:
            raise JobError(f"{dst}: output directory exists; pass --force to replace it")
        old = dst.with_name(dst.name + f".old-{os.getpid()}")
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old)
    else:
        src.rename(dst)
