"""Sub-commands of the ``gpu-margin`` CLI, registered with :func:`gpu_margin._main.command`."""

from __future__ import annotations

import argparse

from ._main import command


def _no_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "gpu"], help="array backend (default auto)"
    )


@command("devices", "Say which array backend --device auto would choose here, and why.", _no_args)
def _devices(args: argparse.Namespace) -> int:
    from ._backend import gpu_status, select_backend  # noqa: PLC0415

    ok, reason = gpu_status()
    print(f"GPU: {'yes' if ok else 'no'} — {reason}")
    print(f"--device {args.device}: {select_backend(args.device).description}")
    return 0


def _synth_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write the book to (must be new)")
    parser.add_argument("--positions", required=True, type=int, metavar="N", help="number of positions to write")
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="random seed (default 0); same seed, same book"
    )
    parser.add_argument("--force", action="store_true", help="replace a book already in DIR")


@command(
    "synth",
    "Write a realistic synthetic firm book (positions, market, accounts, scenarios, job.toml).",
    _synth_args,
)
def _synth(args: argparse.Namespace) -> int:
    from ._synth import write_book  # noqa: PLC0415

    print(write_book(args.out, args.positions, args.seed, force=args.force))
    return 0
