"""``gpu-margin bench BOOK_OR_JOB``: the same book on every available device, timed and compared."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from ._exceptions import JobError
from ._main import command


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("book", help="a job file, or a directory written by `gpu-margin synth` (its job.toml)")
    parser.add_argument("--scheduler", default=None, help="threads (default), sync, processes or an address")
    parser.add_argument("--repeat", type=int, default=1, help="runs per device; the median is reported")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs per device first (CUDA context, CuPy and Numba kernels; default 1)")


def _job_path(book: str) -> Path:
    p = Path(book)
    if p.is_dir():
        p = p / "job.toml"
    if not p.exists():
        raise JobError(f"{book}: no job file found; pass a job TOML or a directory written by gpu-margin synth")
    return p


@command("bench", "Time the same book on NumPy and (when present) CuPy, and compare the requirements.", _args)
def _bench(args: argparse.Namespace) -> int:
    from ._backend import gpu_status  # noqa: PLC0415
    from ._job import check_scheduler, load_job  # noqa: PLC0415
    from ._pipeline import run_job  # noqa: PLC0415

    job = load_job(_job_path(args.book))
    if args.scheduler:
        job = job.with_overrides(scheduler=check_scheduler(args.scheduler))
    ok, reason = gpu_status()
    devices = ["cpu"] + (["gpu"] if ok else [])
    if not ok:
        print(f"GPU: none ({reason}); timing NumPy only")
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu-margin-bench-") as tmp:
        for dev in devices:
            for i in range(max(0, args.warmup)):  # not timed: first-use costs are not the device's speed
                run_job(job.with_overrides(device=dev, out=Path(tmp) / f"{dev}-warmup-{i}"), force=True,
                        progress=False)
            runs = []
            for i in range(max(1, args.repeat)):
                out = Path(tmp) / f"{dev}-{i}"
                runs.append(run_job(job.with_overrides(device=dev, out=out), force=True, progress=False))
            runs.sort(key=lambda r: r.seconds)
            results[dev] = runs[len(runs) // 2]
    n = results["cpu"].manifest["counts"]["positions_in"]
    print(f"book: {job.positions} ({n:,} positions), methodology {job.methodology}, scheduler {job.scheduler}")
    stages = ["read", "validate", "margin", "calls", "write"]
    print(f"{'device':8s} {'total s':>9s} {'positions/s':>13s}  " + " ".join(f"{s + ' s':>10s}" for s in stages))
    for dev, r in results.items():
        t = r.manifest["timings_seconds"]
        st = t["stages_summed_over_partitions"]
        print(f"{dev:8s} {t['total']:9.2f} {n / t['total']:13,.0f}  " + " ".join(f"{st[s]:10.2f}" for s in stages))
    if "gpu" in results:
        a = results["cpu"].accounts.set_index("account_id")
        b = results["gpu"].accounts.set_index("account_id").reindex(a.index)
        cols = ["pm_requirement", "regt_initial", "regt_maintenance"]
        x, y = a[cols].to_numpy(), b[cols].to_numpy()
        diff = np.abs(x - y)
        rel = diff / np.maximum(np.maximum(np.abs(x), np.abs(y)), 1.0)  # SPEC 8: within 1e-9 relative
        speed = results["cpu"].seconds / results["gpu"].seconds
        print(f"GPU/CPU speed-up {speed:.2f}x; largest difference in any account's requirement: "
              f"{np.max(diff):.3e} dollars, {np.max(rel):.1e} relative")
    return 0
