"""``gpu-margin replay`` (a regulator's scenario set against the book) and ``gpu-margin verify``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._exceptions import JobError, UserInputError
from ._main import command
from ._run_cli import add_run_options, configure_logging, job_from_args, print_summary


def _replay_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job file (TOML): the book, as of its date")
    parser.add_argument("--scenarios", required=True, help="scenario file (Parquet or CSV, SPEC 5.2)")
    parser.add_argument("--multipliers", default=None, help="scale every shock by each of these, e.g. 1,2,5")
    add_run_options(parser)


def parse_multipliers(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        vals = ()
    if not vals or any(not 0 < v < float("inf") for v in vals):  # NaN fails too
        raise JobError(f"--multipliers {text!r}: give positive finite numbers separated by commas, e.g. 1,2,5")
    return vals


@command("replay", "Replay a scenario set against the book: P/L of every account under every scenario.",
         _replay_args)
def _replay(args: argparse.Namespace) -> int:
    from ._methodology import load_methodology  # noqa: PLC0415
    from ._pipeline import run_job  # noqa: PLC0415

    configure_logging(args.quiet)
    job = job_from_args(args, scenarios=Path(args.scenarios), multipliers=parse_multipliers(args.multipliers))
    if load_methodology(job.methodology).kind != "scenarios":
        job = job.with_overrides(methodology="scenarios")
    res = run_job(job, force=args.force, resume=args.resume, n_partitions=args.partitions,
                  progress=False if args.quiet else None)
    print_summary(res)
    firm = __import__("pandas").read_parquet(res.out / "firm_pnl.parquet")
    worst = firm.sort_values("pnl").head(5)
    print("  worst firm-wide scenarios (P/L):")
    for r in worst.itertuples():
        print(f"    {r.scenario_id} x{r.multiplier:g}  {r.label}  {r.pnl:,.2f}")
    return 0


def verify_run(run_dir: Path) -> list[str]:
    """Differences between a run directory and its manifest (empty when every output matches)."""
    from ._outputs import sha256_file  # noqa: PLC0415

    man_path = run_dir / "manifest.json"
    try:
        manifest = json.loads(man_path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"{man_path}: no manifest; pass the directory of a finished run") from None
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{man_path}: unreadable manifest ({type(exc).__name__}); it was altered or truncated") \
            from None
    problems = []
    listed = manifest.get("outputs", {})
    for name, info in sorted(listed.items()):
        f = run_dir / name
        if not f.exists():
            problems.append(f"{name}: missing")
        elif sha256_file(f) != info["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest")
    for f in sorted(run_dir.rglob("*")):
        rel = str(f.relative_to(run_dir))
        if f.is_file() and rel != "manifest.json" and rel not in listed:
            problems.append(f"{rel}: not in the manifest")
    return problems


def _verify_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the output directory of a run or replay")


@command("verify", "Re-hash every output of a run against its manifest and report any difference.", _verify_args)
def _verify(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    problems = verify_run(run_dir)
    if problems:
        for p in problems:
            print(f"DIFFERS  {p}")
        raise UserInputError(f"{run_dir}: {len(problems)} output(s) differ from manifest.json; "
                             "the results were altered after the run — rerun the job to regenerate them")
    n = len(json.loads((run_dir / "manifest.json").read_text())["outputs"])
    print(f"verified {n} outputs of {run_dir} against manifest.json")
    return 0
