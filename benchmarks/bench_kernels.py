"""Kernel benchmark: contract × scenario valuations per second, CPU (and GPU when present).

Prints the machine (and its load average: timings on a shared machine vary), the
sizes, the median and the best of several runs, and the ratio of each kernel's
median against the median of a plain NumPy + ``scipy.special.ndtr``
Black–Scholes baseline measured in the same run on the same inputs.

    python benchmarks/bench_kernels.py [--contracts 200000] [--scenarios 11] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba

    return (
        f"{cpu}; {os.cpu_count()} logical cores; Python {platform.python_version()}; "
        f"NumPy {np.__version__}; Numba {numba.__version__} ({numba.config.NUMBA_NUM_THREADS} threads)"
    )


def book(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    spot = rng.uniform(20.0, 500.0, n)
    return dict(
        is_call=rng.random(n) < 0.5,
        spot=spot,
        strike=np.round(spot * np.exp(rng.uniform(-0.3, 0.3, n)), 0),
        t=rng.integers(1, 730, n) / 365.0,
        vol=rng.uniform(0.08, 0.9, n),
        rate=np.full(n, 0.045),
        dividend_yield=rng.uniform(0.0, 0.04, n),
    )


def baseline_numpy_ndtr(is_call, spot, strike, t, vol, rate, dividend_yield):
    """Plain NumPy Black–Scholes–Merton with scipy.special.ndtr: the reference."""
    from scipy.special import ndtr

    sqrt_t = np.sqrt(t)
    v = vol * sqrt_t
    d1 = (np.log(spot / strike) + (rate - dividend_yield + 0.5 * vol * vol) * t) / v
    d2 = d1 - v
    w = np.where(is_call, 1.0, -1.0)
    return w * (spot * np.exp(-dividend_yield * t) * ndtr(w * d1) - strike * np.exp(-rate * t) * ndtr(w * d2))


def timed(fn, repeat: int) -> tuple[float, float]:
    """(median, best) wall-clock seconds of ``repeat`` runs after a warm-up run."""
    fn()  # warm-up (JIT compilation, caches)
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), min(runs)


def load_average() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:  # pragma: no cover
        return "load average unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contracts", type=int, default=200_000)
    ap.add_argument("--scenarios", type=int, default=11)
    ap.add_argument("--american-contracts", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    import gpu_margin
    from gpu_margin._backend import gpu_status
    from gpu_margin.kernels import bsm_price, price_grid

    n, m = args.contracts, args.scenarios
    total = n * m
    grid_book = book(n)
    flat_book = book(total, seed=1)  # independent inputs, same number of valuations
    shocks = np.linspace(-0.15, 0.15, m)[None, :]
    zero = np.zeros_like(shocks)

    print(f"machine: {machine()}; {load_average()}")
    ok, reason = gpu_status()
    print(f"gpu: {reason}")
    print(f"sizes: grid {n:,} contracts x {m} scenarios = {total:,} valuations; "
          f"independent inputs {total:,} contracts; American grid {args.american_contracts:,} x {m}; "
          f"median and best of {args.repeat} runs")

    rows = []
    t_base = timed(lambda: baseline_numpy_ndtr(**flat_book), args.repeat)
    rows.append(("baseline: NumPy + scipy.special.ndtr, independent inputs", total, t_base))
    rights = np.where(flat_book["is_call"], "C", "P")  # the caller's input, built outside the timing
    rows.append(("option_price (European), independent inputs",
                 total, timed(lambda: gpu_margin.option_price(
                     rights, flat_book["spot"], flat_book["strike"],
                     flat_book["t"], flat_book["vol"], flat_book["rate"], flat_book["dividend_yield"]),
                     args.repeat)))
    rows.append(("kernels.bsm_price (xp path on NumPy, 1 thread), independent inputs",
                 total, timed(lambda: bsm_price(**flat_book), args.repeat)))
    rows.append(("price_grid European (fused CPU loop)", total,
                 timed(lambda: price_grid(*grid_book.values(), False, shocks, zero), args.repeat)))
    rows.append(("price_grid European (xp path on NumPy, 1 thread)", total,
                 timed(lambda: price_grid(*grid_book.values(), False, shocks, zero, fused=False), args.repeat)))
    na = args.american_contracts
    am_book = {k: v[:na] for k, v in grid_book.items()}
    rows.append(("price_grid American (ALO, fused; boundary reused across price moves)", na * m,
                 timed(lambda: price_grid(*am_book.values(), True, shocks, zero), args.repeat)))

    if ok:  # pragma: no cover (GPU machines)
        import cupy as cp

        g = {k: cp.asarray(v) for k, v in grid_book.items()}
        gs, gz = cp.asarray(shocks), cp.asarray(zero)

        def gpu_grid():
            price_grid(*g.values(), False, gs, gz)
            cp.cuda.Device().synchronize()

        rows.append(("price_grid European on the GPU (CuPy, xp path)", total, timed(gpu_grid, args.repeat)))

    print(f"{'kernel':72s} {'valuations':>12s} {'median s':>9s} {'M val/s':>9s} {'best M/s':>9s} {'x baseline':>10s}")
    base_rate = total / t_base[0]
    for name, count, (med, best) in rows:
        rate = count / med
        print(f"{name:72s} {count:12,d} {med:9.4f} {rate / 1e6:9.1f} {count / best / 1e6:9.1f} {rate / base_rate:10.2f}")
    print(load_average())


if __name__ == "__main__":
    main()
