"""End-to-end benchmark of the overnight run on synthetic books.

For each size: generate the book once (``gpu-margin synth``, cached under
``--books``), then run ``gpu-margin run`` in a fresh process ``--repeat`` times
and report the median wall time per stage, positions per second, and the
peak resident memory of the run's process. The baseline, measured in the same
run, is reading the positions files with pyarrow alone (the I/O floor).

    python benchmarks/bench_pipeline.py --sizes 100000,1000000 [--methodology finra] [--repeat 3] [--seed 1]

Books are written with ``--seed 1`` unless ``--seed`` says otherwise (books of
another seed are cached beside them, ``book-SIZE-seedS``). Another seed gives
other accounts: seed 0's 1M book (``gpu-margin synth``'s default seed) called an
account whose liquidation plan cost 12 s until the tenth session
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def machine() -> str:
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}; {os.cpu_count()} logical cores; Python {platform.python_version()}"


def run_child(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak GiB of the resident memory of it and its children together).

    The processes' RSS is summed every 0.1 s (``psutil``), so a run with
    ``--scheduler processes`` counts its workers too; the largest single
    process's ``ru_maxrss`` (from ``wait4``) is the floor (it sees peaks shorter than 0.1 s).
    """
    import psutil  # noqa: PLC0415  (a dependency of dask.distributed)

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    top = psutil.Process(proc.pid)
    peak_sum = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        total = 0
        try:
            for p in [top, *top.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        except psutil.Error:
            pass
        peak_sum = max(peak_sum, total)
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{proc.stderr.read().decode()}")
    return wall, max(peak_sum, usage.ru_maxrss * 1024) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--methodology", default="finra")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--books", default=os.path.join(tempfile.gettempdir(), "gpu-margin-books"))
    ap.add_argument("--scheduler", default="threads")
    ap.add_argument("--seed", type=int, default=1, help="the synthetic books' seed (default 1)")
    args = ap.parse_args()
    py = sys.executable
    print(f"machine: {machine()}")
    print(f"methodology {args.methodology}, scheduler {args.scheduler}, books of seed {args.seed}, "
          f"median of {args.repeat} runs per size")
    header = (f"{'positions':>11s} {'read-only s':>11s} {'run s':>8s} {'x read':>7s} {'pos/s':>11s} "
              f"{'peak GiB':>8s}  stages (s, summed over partitions): read validate margin calls write")
    print(header)
    for size in (int(s) for s in args.sizes.split(",")):
        book = Path(args.books) / (f"book-{size}" if args.seed == 1 else f"book-{size}-seed{args.seed}")
        book.parent.mkdir(parents=True, exist_ok=True)
        if not (book / "job.toml").exists():
            subprocess.run([py, "-m", "gpu_margin", "synth", "--out", str(book), "--positions", str(size),
                            "--seed", str(args.seed), "--force"], check=True, stdout=subprocess.DEVNULL)
        job = book / f"job-{args.methodology}.toml"
        text = (book / "job.toml").read_text()
        lines = [ln for ln in text.splitlines() if not ln.startswith("methodology")]
        job.write_text("\n".join(lines + [f'methodology = "{args.methodology}"']) + "\n")
        files = sorted((book / "positions").glob("*.parquet"))
        read_code = ("import pyarrow.parquet as pq,sys; [pq.read_table(f) for f in sys.argv[1:]]")
        reads = [run_child([py, "-c", read_code, *map(str, files)])[0] for _ in range(args.repeat)]
        walls, peaks, manifests = [], [], []
        for _ in range(args.repeat):
            out = Path(tempfile.mkdtemp(prefix="gm-bench-")) / "out"
            wall, peak = run_child([py, "-m", "gpu_margin", "run", str(job), "--out", str(out),
                                    "--quiet", "--scheduler", args.scheduler])
            walls.append(wall)
            peaks.append(peak)
            manifests.append(json.loads((out / "manifest.json").read_text()))
            shutil.rmtree(out.parent)
        wall = statistics.median(walls)
        read = statistics.median(reads)
        st = manifests[walls.index(sorted(walls)[len(walls) // 2])]["timings_seconds"]["stages_summed_over_partitions"]
        stages = " ".join(f"{st[k]:.2f}" for k in ("read", "validate", "margin", "calls", "write"))
        print(f"{size:11,d} {read:11.2f} {wall:8.2f} {wall / read:7.1f} {size / wall:11,.0f} {max(peaks):8.2f}  {stages}")


if __name__ == "__main__":
    main()
