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
