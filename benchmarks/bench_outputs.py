"""Encoding the run's output tables: the writer as it is against statistics on every column.

Usage: ``python benchmarks/bench_outputs.py OUT_DIR [--tables regt_legs,classes,accounts] [--repeat 3]``
where ``OUT_DIR`` is a finished ``gpu-margin run`` output. Each table is read
back and written to memory with ``gpu_margin._outputs.write_table`` (row-group
statistics on its first column and non-text columns only) and, as the
baseline, with statistics on every column; the two alternate, and the median
of ``--repeat`` runs of each is printed with their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import machine  # noqa: E402

import gpu_margin._outputs as outputs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tables", default="regt_legs,classes,accounts")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"median of {args.repeat} runs; baseline: statistics on every column")
    print(f"{'table':>10} {'rows':>11} {'baseline s':>11} {'now s':>7} {'x baseline':>11}")
    target = Path("/dev/shm" if Path("/dev/shm").is_dir() else args.out) / "bench_outputs.parquet"
    current = outputs.statistics_columns
    for name in args.tables.split(","):
        table = pq.read_table(args.out / f"{name}.parquet")
        times: dict[str, list[float]] = {"baseline": [], "now": []}
        for _ in range(args.repeat):
            for mode in times:
                outputs.statistics_columns = current if mode == "now" else (lambda schema: True)
                t0 = time.perf_counter()
                outputs.write_table(table, target)
                times[mode].append(time.perf_counter() - t0)
        outputs.statistics_columns = current
        base, now = (statistics.median(times[k]) for k in ("baseline", "now"))
        print(f"{name:>10} {table.num_rows:>11,} {base:>11.2f} {now:>7.2f} {now / base:>11.2f}")
    target.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
