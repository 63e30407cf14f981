"""``gpu-margin run JOB.toml``: the overnight margin run, and its one-screen summary."""

from __future__ import annotations

import argparse
import logging
import sys

from ._main import command


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output directory (default: the job's out)")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], help="array backend (default: the job's, auto)")
    parser.add_argument("--scheduler", help="threads (default), sync, processes, or a dask.distributed address "
                                            "like tcp://HOST:8786")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.add_argument("--resume", action="store_true", help="reuse the finished partitions of an interrupted run")
    parser.add_argument("--partitions", type=_positive_int,
                        help="repartition positions into this many partitions by account")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log lines")


def _positive_int(text: str) -> int:
    """``--partitions``: a whole number of at least 1 (argparse reports a bad one with the usage, as any bad option)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 (got {text!r})")
    return value


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job file (TOML)")
    add_run_options(parser)


def job_from_args(args: argparse.Namespace, **extra):
    from pathlib import Path  # noqa: PLC0415

    from ._job import check_scheduler, load_job  # noqa: PLC0415

    job = load_job(args.job)
    return job.with_overrides(
        out=Path(args.out) if args.out else None,
        device=args.device,
        scheduler=check_scheduler(args.scheduler) if args.scheduler else None,
        **extra,
    )


def configure_logging(quiet: bool) -> None:
    """gpu-margin's own log lines on stderr (Dask's loggers keep their own levels)."""
    log = logging.getLogger("gpu_margin")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("gpu-margin: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def print_summary(res) -> None:
    a = res.accounts
    m = res.manifest
    c = m["counts"]
    calls = res.margin_calls
    plans = res.liquidation
    cured = int(plans.groupby("account_id")["cured"].last().sum()) if len(plans) else 0
    t = m["timings_seconds"]
    print(f"gpu-margin run  {m['parameters']['asof']}  methodology {m['parameters']['methodology']}")
    print(f"  device        {res.device}")
    print(f"  scheduler     {res.scheduler}  ({m['partitions']['count']} partitions; {m['partitions']['how']})")
    print(f"  positions     {c['positions_in']:,} read, {c['positions_priced']:,} priced, "
          f"{c['positions_rejected']:,} rejected (reconciles: {c['reconciles']})")
    print(f"  accounts      {len(a):,} ({int((a['account_type'] == 'regt').sum()):,} Reg T), "
          f"{int(a['has_rejects'].sum()):,} flagged for rejected rows")
    print(f"  PM total      {a['pm_requirement'].sum():,.2f}")
    print(f"  Reg T total   initial {a['regt_initial'].sum():,.2f}, maintenance {a['regt_maintenance'].sum():,.2f}")
    print(f"  margin calls  {len(calls):,}, total deficit {calls['deficit'].sum():,.2f}; "
          f"liquidation plans cure {cured:,} of {calls['account_id'].nunique():,}")
    print(f"  time          {t['total']:.2f} s ({c['positions_in'] / max(t['total'], 1e-9):,.0f} positions/s)")
    print(f"  output        {res.out}")


@command("run", "Run a margin job (the overnight run): PM and Reg T for every account, calls and plans.", _args)
def _run(args: argparse.Namespace) -> int:
    from ._pipeline import run_job  # noqa: PLC0415

    configure_logging(args.quiet)
    job = job_from_args(args)
    res = run_job(job, force=args.force, resume=args.resume, n_partitions=args.partitions,
                  progress=False if args.quiet else None)
    print_summary(res)
    return 0
