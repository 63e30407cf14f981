"""``gpu-margin demo``: the overnight job on a built-in sample book.

The sample book is written by ``gpu-margin synth`` into ``./sample`` the first
time (20,000 positions, seed 1) and margined with the ``finra`` preset into
``./sample/out``. :func:`sample_book` is a second, tiny book — one account per
common strategy — for notebooks and tests.
"""

from __future__ import annotations

import argparse

import pandas as pd

from ._main import command

ASOF = "2024-03-15"
RATE = 0.05


def sample_book() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(positions, market, accounts)`` of the built-in sample (SPEC section 3 columns)."""
    market = pd.DataFrame({
        "underlying": ["XYZ", "ABC", "SPY", "SPX"],
        "spot": [95.0, 150.0, 510.0, 5100.0],
        "vol": [0.30, 0.25, 0.14, 0.14],
        "dividend_yield": [0.0, 0.01, 0.013, 0.013],
        "product_group": ["equity", "equity", "equity", "broad_index_high_cap"],
        "option_style": ["A", "A", "A", "E"],
        "tracks": [None, None, "SPX", None],
    })
    rows = [
        # account, underlying, kind, right, strike, expiry, quantity
        ("naked_call", "XYZ", "option", "C", 100.0, "2024-04-19", -1),
        ("covered_call", "ABC", "stock", None, None, None, 100),
        ("covered_call", "ABC", "option", "C", 160.0, "2024-04-19", -1),
        ("put_hedged", "XYZ", "option", "P", 90.0, "2024-05-17", -2),
        ("put_hedged", "XYZ", "stock", None, None, None, -100),
        ("index_spread", "SPX", "option", "P", 5000.0, "2024-04-19", -2),
        ("index_spread", "SPX", "option", "P", 4900.0, "2024-04-19", 2),
        ("straddle", "ABC", "option", "C", 150.0, "2024-04-19", -3),
        ("straddle", "ABC", "option", "P", 150.0, "2024-04-19", -3),
        ("long_stock", "SPY", "stock", None, None, None, 200),
    ]
    pos = pd.DataFrame(rows, columns=["account_id", "underlying", "kind", "right", "strike", "expiry", "quantity"])
    pos["expiry"] = pd.to_datetime(pos["expiry"])
    pos["quantity"] = pos["quantity"].astype(float)
    accounts = pd.DataFrame({
        "account_id": ["naked_call", "covered_call", "put_hedged", "index_spread", "straddle", "long_stock"],
        "cash": [2000.0, -5000.0, 15000.0, 10000.0, 3000.0, -60000.0],
        "account_type": ["portfolio", "regt", "portfolio", "portfolio", "portfolio", "regt"],
    })
    return pos, market, accounts


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default="sample", help="where the sample book lives (default ./sample)")
    parser.add_argument("--positions", type=int, default=20_000, help="size of the sample book if it is generated")
    parser.add_argument("--device", default=None, choices=["auto", "cpu", "gpu"], help="array backend")
    parser.add_argument("--quiet", action="store_true", help="no log lines")


@command("demo", "Run the overnight job on a built-in sample book (generated on the fly if absent).", _args)
def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from ._job import load_job  # noqa: PLC0415
    from ._pipeline import run_job  # noqa: PLC0415
    from ._run_cli import configure_logging, print_summary  # noqa: PLC0415
    from ._synth import write_book  # noqa: PLC0415

    configure_logging(args.quiet)
    book = Path(args.dir)
    if not (book / "job.toml").exists():
        summary = write_book(book, args.positions, seed=1)
        print(f"sample book: {summary}")
    job = load_job(book / "job.toml").with_overrides(out=book / "out", device=args.device)
    res = run_job(job, force=True, progress=False)
    print_summary(res)
    return 0
