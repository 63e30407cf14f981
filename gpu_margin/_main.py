"""The ``gpu-margin`` command line.

Exit codes: 0 success, 2 user error (bad input, bad job, unusable device),
1 internal error. A user's mistake prints one line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ._exceptions import GpuMarginError

# name -> (help, add_arguments(parser), run(args) -> int); filled by _register().
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {}


def command(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn(args) -> int`` as the sub-command ``name``."""

    def wrap(fn: Callable[..., int]) -> Callable[..., int]:
        _COMMANDS[name] = (help_text, add_arguments, fn)
        return fn

    return wrap


def _register() -> None:
    """Import the modules that define sub-commands (each calls :func:`command`)."""
    from . import _bench_cli, _commands, _demo, _history, _replay_cli, _run_cli  # noqa: F401, PLC0415


def build_parser() -> argparse.ArgumentParser:
    from . import __version__  # noqa: PLC0415

    _register()
    parser = argparse.ArgumentParser(
        prog="gpu-margin",
        description="Portfolio margin (TIMS-style grid) and Reg T for every account of a book, "
        "on a GPU with CuPy or on CPUs with NumPy.",
    )
    parser.add_argument("--version", action="version", version=f"gpu-margin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _, _, run = _COMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except GpuMarginError as exc:
        print(f"gpu-margin: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gpu-margin: interrupted", file=sys.stderr)
        return 130

