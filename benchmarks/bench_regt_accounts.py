"""Reg T pairing of one large account: how its cost grows with the options it holds on one underlying.

A market maker's account holds ``N`` options on one underlying (short and long,
calls and puts, 160 strikes × 6 expiries) and ``N/10`` share lots. Every pass
of the pairing lists every candidate pair of the kinds it pairs within an
underlying (short calls × long calls, ...), so that account's candidates grow
as ``N²``. The baseline, measured in the same run, is the same legs dealt into
accounts of 20 (each a copy of 20 of the large account's legs): what the same
number of positions costs spread over ordinary accounts.

Each size runs in a fresh process (Numba's compiled loop loaded from its cache)
that prints the median of ``--repeat`` timings of ``regt_requirements`` and its
peak resident memory.

    python benchmarks/bench_regt_accounts.py [--options 1000,2000,4000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import machine  # noqa: E402

EXPIRIES = pd.to_datetime(["2024-06-21", "2024-07-19", "2024-08-16", "2024-09-20", "2024-12-20", "2025-03-21"])
ASOF = pd.Timestamp("2024-06-03")
SPOT = 500.0


def positions(n_options: int, legs_per_account: int | None, seed: int = 0) -> pd.DataFrame:
    """The large account's legs (``legs_per_account=None``), or the same legs dealt into accounts of that many."""
    rng = np.random.default_rng(seed)
    n_lots = n_options // 10
    n = n_options + n_lots
    option = np.arange(n) < n_options
    i = np.arange(n)
    strike = np.where(option, rng.choice(np.arange(300.0, 700.0, 2.5), n), np.nan)
    expiry = pd.DatetimeIndex(np.where(option, EXPIRIES.to_numpy()[rng.integers(0, len(EXPIRIES), n)],
                                       np.datetime64("NaT", "ns")))
    t = np.where(option, (expiry - ASOF).days.to_numpy(dtype=float) / 365.0, 0.0)
    quantity = np.where(option, np.where(i % 2 == 1, 1.0, -1.0) * rng.integers(1, 20, n),
                        rng.integers(100, 1000, n).astype(float))
    call = option & (i % 4 < 2)  # legs alternate short and long, calls and puts
    intrinsic = np.where(call, np.maximum(SPOT - strike, 0.0), np.maximum(strike - SPOT, 0.0))
    value = np.where(option, intrinsic + rng.uniform(0.5, 10.0, n), SPOT)
    account = np.zeros(n, np.int64) if legs_per_account is None else rng.permutation(n) // legs_per_account
    return pd.DataFrame({
        "account_id": [f"A{a:06d}" for a in account],
        "position_id": [f"P{k:07d}" for k in i],
        "underlying": "SPY",
        "kind": np.where(option, "option", "stock"),
        "is_call": call,
        "strike": strike,
        "expiry": expiry,
        "t": t,
        "multiplier": np.where(option, 100.0, 1.0),
        "quantity": quantity,
        "spot": SPOT,
        "product_group": "broad_index",
        "tracks": None,
        "value": value,
    })  # fmt: skip


def child(n_options: int, split: bool, repeat: int) -> None:
    """One size in this process: the median seconds of ``regt_requirements`` and the peak memory, as JSON."""
    from gpu_margin._regt import regt_requirements

    pos = positions(n_options, 20 if split else None)
    regt_requirements(pos.head(50))  # load the compiled loop before timing
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        acc, _ = regt_requirements(pos)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": statistics.median(times), "legs": len(pos), "accounts": len(acc),
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def sizes(text: str) -> list[int]:
    """``--options``: comma-separated whole numbers of options, each at least 10."""
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        out = []
    if not out or min(out) < 10:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 10 separated by commas, e.g. 1000,2000 "
                                         f"(got {text!r})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--options", type=sizes, default="1000,2000,4000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1] == "split", args.repeat)
        return
    print(f"machine: {machine()}")
    print(f"median of {args.repeat} runs, each size in a fresh process; baseline: the same legs in accounts of 20")
    print(f"{'options':>8} {'legs':>7} {'baseline s':>11} {'one account s':>14} {'x baseline':>11} "
          f"{'peak MiB (one account)':>23}")
    for n in args.options:
        res = {}
        for mode in ("split", "one"):
            out = subprocess.run([sys.executable, __file__, "--repeat", str(args.repeat), "--child", str(n), mode],
                                 check=True, capture_output=True, text=True).stdout
            res[mode] = json.loads(out.strip().splitlines()[-1])
        if res["one"]["accounts"] != 1 or res["one"]["legs"] != res["split"]["legs"]:
            raise SystemExit(f"bench_regt_accounts: the books differ from what they should be: {res}")
        base, one = res["split"]["seconds"], res["one"]["seconds"]
        print(f"{n:>8,} {res['one']['legs']:>7,} {base:>11.3f} {one:>14.3f} {one / base:>11.1f} "
              f"{res['one']['peak_mib']:>23,.0f}")


if __name__ == "__main__":
    main()
