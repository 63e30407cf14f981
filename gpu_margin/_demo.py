"""``gpu-margin demo``: portfolio margin and Reg T of a small built-in sample book.

The sample is a handful of accounts, one per common strategy, priced as of a
fixed date, so a newcomer sees the requirements side by side in a second.
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
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"], help="array backend")
    parser.add_argument("--methodology", default="finra", help="preset name or methodology TOML (default finra)")


@command("demo", "Margin a built-in sample book (one account per strategy) and print the results.", _args)
def _demo(args: argparse.Namespace) -> int:
    from ._backend import select_backend  # noqa: PLC0415
    from ._compute import compute  # noqa: PLC0415

    backend = select_backend(args.device)
    print(f"device: {backend.description}")
    pos, market, accounts = sample_book()
    res = compute(pos, market, accounts, asof=ASOF, rate=RATE, methodology=args.methodology, device=backend)
    acc = res["accounts"]
    cols = ["account_id", "account_type", "pm_requirement", "regt_initial", "regt_maintenance", "nlv", "excess",
            "worst_scenario"]
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:,.2f}".format):
        print(acc[cols].to_string(index=False))
    short = acc[acc["excess"] < 0]
    print(f"\n{len(acc)} accounts as of {ASOF} ({args.methodology}); total PM requirement "
          f"{acc['pm_requirement'].sum():,.2f}, Reg T maintenance {acc['regt_maintenance'].sum():,.2f}; "
          f"{len(short)} in deficit ({-short['excess'].sum():,.2f}); {len(res['rejects'])} rejected rows")
    return 0
