"""Write the random joint-scenario file used by the replay benchmark in RESULTS.md.

    python benchmarks/make_scenarios.py --out /tmp/scen1000.parquet [--scenarios 1000] [--seed 0]

Each scenario shocks every underlying (``*``) by a normal price move (σ 5%) and
relative vol shock (σ 20%, clipped to [−0.5, 2]), and the high-cap indices
(``group:broad_index_high_cap``) by their own price move (σ 4%).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenarios", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n = args.scenarios
    ids = [f"S{i:04d}" for i in range(n)]
    pd.DataFrame({
        "scenario_id": ids * 2,
        "underlying": ["*"] * n + ["group:broad_index_high_cap"] * n,
        "price_shock": np.r_[rng.normal(0, 0.05, n), rng.normal(0, 0.04, n)],
        "vol_shock": np.r_[rng.normal(0, 0.2, n).clip(-0.5, 2), np.zeros(n)],
    }).to_parquet(args.out)


if __name__ == "__main__":
    main()
