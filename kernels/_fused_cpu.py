"""Fused CPU loops (Numba) for European values: the scenario grid and ``option_price``.

The ``xp`` code of ``kernels.grid`` and ``kernels.black_scholes`` is the one
statement of the math; NumPy runs it at about 17 million valuations a second a
core because every one of its ~80 array operations makes a trip through memory.
This module evaluates the same formula — the same Hart coefficients, the same
shared exponential, the same vol floor and intrinsic value at expiry — in
registers, eight valuations at a time (AVX-512) and in parallel over contracts.
``tests/kernels/test_fused_cpu.py`` checks it against the ``xp`` path to 1e-12
on random books, and ``price_grid(..., fused=False)`` forces the ``xp`` path.

Vectorisation. Without a vector math library (llvmlite has no SVML here), a loop
that calls ``math.exp`` or ``math.log`` stays scalar. So the exponential and the
logarithm are written out (:func:`_exp`, :func:`_log`: Cody–Waite reduction and
polynomials, within 1 ulp of the C library's on the arguments the kernels see;
``tests/kernels/test_fused_elementary.py``), the normal tails are Hart's rational
with selects instead of branches, and the grid is computed in tiles of ``LANES``
contracts: a pass over the tile computes what does not change across scenarios
(``ln(F/K)``, ``F/K``, ``K·e^{-rT}``, ``√T``) into the rows of a small table,
then for each scenario a loop over the tile's contracts — the scenario's terms
(``ln u``, ``u``, the vol shock) broadcast, or gathered first where contracts use
different shock rows — values them with a straight-line body that LLVM vectorises
(asked for 512-bit vectors: :func:`_wide_vectors`), and the tile's values are
then copied into the output rows. A short tile is padded with copies of a real
contract, so every value is computed by the same vector instructions wherever its
contract sits in the book: results do not depend on the order of the contracts,
on the tiles or on the thread count (``tests/kernels/test_fused_elementary.py``).

Threading: called from the main thread, the loop runs on every core
(``numba.prange`` over chunks of tiles, handed out one at a time); called from
another thread (a Dask worker thread, which already provides the parallelism) it
runs serially, so two Dask threads never enter Numba's thread pool at once.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from .normal import _ABS_MAX, _P, _Q

try:  # Numba is a dependency; keep the xp path usable if it is broken on a platform.
    import numba
    from llvmlite import ir as _llvm_ir
    from numba.core import types as _nb_types
    from numba.extending import intrinsic as _intrinsic

    HAVE_NUMBA = True
except Exception:  # pragma: no cover
    numba = None
    HAVE_NUMBA = False


LANES = 64  # contracts of a grid tile: a compile-time trip count, so every value takes the same code
SCEN = 32  # scenarios of a tile valued before they are written out: the tile's values stay in L1
CHUNK = 8192  # contracts of an independent-inputs chunk (a multiple of 64)
# rows of a grid tile's scratch table: its contracts' inputs, then their per-contract terms
G_W, G_S, G_K, G_T, G_V, G_R, G_Q, G_LN, G_FK, G_KDR, G_SQT, G_BX, G_BS, G_BFKU = range(14)
N_G = 14
S_LNU, S_U, S_VMUL, S_VADD = range(4)  # the stacked shock tables: ln(1 + m), 1 + m, vol factor, vol term

# --- elementary functions that vectorise -------------------------------------------------------
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93145751953125e-1  # Cody–Waite: 16 significant bits, so n·_LN2_HI is exact
_LN2_LO = 1.42860682030941723212e-6
# e^r on |r| <= ln2/2: minimax (Remez, relative error 1.8e-17) of degree 11 with c0 = 1
X1, X2, X3, X4, X5, X6, X7, X8, X9, X10, X11 = (
    1.0000000000000007, 0.5000000000000006, 0.166666666666573, 0.041666666666573635, 0.00833333333771546,
    0.0013888888932340796, 0.000198412614913928, 2.480150451103708e-05, 2.7564254929439036e-06,
    2.762629655421717e-07, 2.2981311538834364e-08,
)
_X_TINY = -708.3964185322641  # ln 2^-1022: below it e^x is subnormal, returned as 0
_X_HUGE = 709.782712893384  # ln DBL_MAX: above it e^x overflows to inf
_LOG_LN2_HI = 6.93147180369123816490e-01  # fdlibm's split for the logarithm
_LOG_LN2_LO = 1.90821492927058770002e-10
_SQRT2 = 1.4142135623730951
_LG1, _LG2, _LG3, _LG4, _LG5, _LG6, _LG7 = (
    6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01, 2.222219843214978396e-01,
    1.818357216161805012e-01, 1.531383769920937332e-01, 1.479819860511658591e-01,
)
_MANT = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000
_DBL_MIN = 2.2250738585072014e-308  # smallest normal
_TWO54 = 18014398509481984.0

# The coefficients as a table that the kernels receive as an argument. Written as literals,
# LLVM rematerialises every constant in every vector iteration (a 64-bit immediate moved to a
# general register, then broadcast: two instructions; JIT code cannot address a constant
# pool directly), and the valuation loop holds more constants than there are vector
# registers. Read from a table, they are memory operands of the FMAs ({1to8} broadcasts):
# about 15% faster here, the same results. ``_exp`` and ``_norm_cdf`` read the same table as
# a frozen global.
C_P, C_Q, C_X = 0, 7, 15  # Hart's P (7) and Q (8), then the exponential's X1..X11
C_LOG2E, C_LN2_HI, C_LN2_LO, C_X_TINY, C_X_HUGE = 26, 27, 28, 29, 30
COEF = np.array([*_P, *_Q, X1, X2, X3, X4, X5, X6, X7, X8, X9, X10, X11, _LOG2E, _LN2_HI, _LN2_LO, _X_TINY, _X_HUGE])


def _exp_c_impl(x, c):
    """``e^x`` within 1 ulp of ``math.exp``, branch-free: vectorises; ``c`` is :data:`COEF`.

    Results that would be subnormal (``x`` below ``ln 2^-1022``, about -708.4) are
    0, never computed (gradual underflow costs a microcode assist per lane); ``+inf``
    above ``ln DBL_MAX``; ``nan`` in, ``nan`` out.
    """
    tiny = c[C_X_TINY]
    huge = c[C_X_HUGE]
    xc = x if x > tiny else tiny  # nan goes to tiny here and is restored below
    xc = xc if xc < huge else huge
    n = np.floor(xc * c[C_LOG2E] + 0.5)  # [-1022, 1024]
    r = xc - n * c[C_LN2_HI]  # Cody–Waite: n·_LN2_HI is exact
    r = r - n * c[C_LN2_LO]  # |r| <= ln2 / 2
    p = c[C_X + 10] * r + c[C_X + 9]
    p = p * r + c[C_X + 8]
    p = p * r + c[C_X + 7]
    p = p * r + c[C_X + 6]
    p = p * r + c[C_X + 5]
    p = p * r + c[C_X + 4]
    p = p * r + c[C_X + 3]
    p = p * r + c[C_X + 2]
    p = p * r + c[C_X + 1]
    p = p * r + c[C_X]
    p = p * r + 1.0
    ni = np.int64(n)
    n1 = ni >> 1  # 2^n as 2^n1 · 2^n2, both normal numbers, so that n = 1024 works too
    out = p * _from_bits((n1 + 1023) << 52)
    out = out * _from_bits((ni - n1 + 1023) << 52)
    out = 0.0 if x < tiny else out
    out = math.inf if x > huge else out
    return x if x != x else out


def _exp_impl(x):
    """:func:`_exp_c` with the coefficients as constants."""
    return _exp_c(x, COEF)


def _log_mk_impl(k, m):
    """``ln(m·2^k)`` for ``m`` in [1, 2) within 1 ulp: fdlibm's kernel, branch-free (shared with
    the American loops)."""
    big = m > _SQRT2
    m = m * 0.5 if big else m
    k = k + 1 if big else k
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    rr = t2 + t1
    hfsq = 0.5 * f * f
    dk = np.float64(k)
    return dk * _LOG_LN2_HI - ((hfsq - (s * (hfsq + rr) + dk * _LOG_LN2_LO)) - f)


def _log_impl(x):
    """``ln x`` within 1 ulp (fdlibm's kernel), branch-free: vectorises.

    ``-inf`` at 0, ``nan`` below 0 and at ``nan``, ``inf`` at ``inf``; subnormal
    arguments are scaled into range first.
    """
    sub = x < _DBL_MIN
    xs = x * _TWO54 if sub else x
    bits = _to_bits(xs)
    k = (bits >> 52) - 1023
    k = k - 54 if sub else k
    out = _log_mk(k, _from_bits((bits & _MANT) | _ONE_BITS))
    out = -math.inf if x == 0.0 else out
    out = math.nan if x < 0.0 else out
    return x if not x < math.inf else out  # inf and nan


def _mills_c_impl(a, c):
    """``mills_ratio_hart``: ``Φ(-a)·exp(a²/2)`` (Hart's degree 6/7 rational) for ``a ≥ 0``."""
    p = ((((((c[C_P] * a + c[C_P + 1]) * a + c[C_P + 2]) * a + c[C_P + 3]) * a + c[C_P + 4]) * a
          + c[C_P + 5]) * a + c[C_P + 6])
    q = (((((((c[C_Q] * a + c[C_Q + 1]) * a + c[C_Q + 2]) * a + c[C_Q + 3]) * a + c[C_Q + 4]) * a
           + c[C_Q + 5]) * a + c[C_Q + 6]) * a + c[C_Q + 7])
    return p / q


def _norm_cdf_impl(x):
    """``kernels.normal.norm_cdf`` for one float64, branch-free (``nan`` in, ``nan`` out)."""
    a = abs(x)
    a = _ABS_MAX if a > _ABS_MAX else a
    tail = _exp_c(a * a * -0.5, COEF) * _mills_c(a, COEF)
    return 1.0 - tail if x > 0.0 else tail


def _euro_impl(w, x, s, fku, k_dr, c):
    """One European value ``K·e^{-rT}·w·(F·u/K·Φ(w·d1) − Φ(w·d2))``, floored at 0.

    ``w`` is +1 (call) or -1 (put), ``x = ln(F·u/K)``, ``s = σ√T > 0``, ``fku = F·u/K``,
    ``c`` is :data:`COEF`; ``φ(d2)/φ(d1) = F·u/K`` lets one exponential serve both tails
    (the ``xp`` grid's form).
    """
    d1 = x / s + 0.5 * s
    d2 = d1 - s
    a = abs(d1)
    a = _ABS_MAX if a > _ABS_MAX else a  # Φ(-40) underflows; keeps P/Q finite (nan stays nan)
    e1 = _exp_c(a * a * -0.5, c)
    t1 = e1 * _mills_c(a, c)
    a = abs(d2)
    a = _ABS_MAX if a > _ABS_MAX else a
    t2 = e1 * fku * _mills_c(a, c)
    n1 = 1.0 - t1 if w * d1 > 0.0 else t1
    n2 = 1.0 - t2 if w * d2 > 0.0 else t2
    v = k_dr * (w * (fku * n1 - n2))
    return 0.0 if v <= 0.0 else v  # +0.0, never -0.0; nan stays nan


# --- the scenario grid ---------------------------------------------------------------------
def _grid_chunk(c_lo, c_hi, call, spot, strike, t, vol, rate, q, row, sc, single, floor, cf, out):
    """Rows ``c_lo:c_hi`` of ``out``, ``LANES`` contracts a tile.

    ``sc`` holds the shock tables ``(S_LNU, S_U, S_VMUL, S_VADD)`` stacked, ``(4, k, m)``;
    ``cf`` is :data:`COEF`.
    One scratch table ``g`` holds the tile's inputs and per-contract terms, so that the
    valuation loop reads three arrays (``g``, ``gr``, ``sc``) and writes one (``tv``): few
    enough for LLVM's run-time alias checks, so it vectorises.
    """
    _wide_vectors()
    m = out.shape[1]
    g = np.empty((N_G, LANES))  # the tile's contracts (a short tile: copies of its first)
    gr = np.empty(LANES, dtype=np.uint64)  # offsets of the contracts' shock rows (unsigned: no wraparound)
    k_m = np.uint64(sc.shape[1] * m)
    sc_f = sc.reshape(-1)
    o_lnu = np.uint64(S_LNU) * k_m
    o_u = np.uint64(S_U) * k_m
    o_vmul = np.uint64(S_VMUL) * k_m
    o_vadd = np.uint64(S_VADD) * k_m
    tv = np.empty((SCEN, LANES))  # values, scenario-major
    for c0 in range(c_lo, c_hi, LANES):
        nb = min(LANES, c_hi - c0)
        for l in range(LANES):
            i = c0 + l if l < nb else c0
            g[G_W, l] = 1.0 if call[i] else -1.0
            g[G_S, l] = spot[i]
            g[G_K, l] = strike[i]
            g[G_T, l] = t[i]
            g[G_V, l] = vol[i]
            g[G_R, l] = rate[i]
            g[G_Q, l] = q[i]
            gr[l] = np.uint64(row[i] * m)
        # (1) what does not change across scenarios, once per contract (vectorises)
        for l in range(LANES):
            ti = g[G_T, l]
            ln_fk = _log(g[G_S, l] / g[G_K, l]) + (g[G_R, l] - g[G_Q, l]) * ti
            g[G_LN, l] = ln_fk
            g[G_FK, l] = _exp_c(ln_fk, cf)
            g[G_KDR, l] = g[G_K, l] * _exp_c(-g[G_R, l] * ti, cf)
            g[G_SQT, l] = math.sqrt(ti) if ti > 0.0 else 1.0
        for j0 in range(0, m, SCEN):
            nj = min(SCEN, m - j0)
            # (2) the valuations, LANES contracts at a time (vectorises)
            for jj in range(nj):
                j = j0 + jj
                if single:  # one shock row: the scenario's terms are scalars
                    lu = sc[S_LNU, 0, j]
                    uu = sc[S_U, 0, j]
                    va = sc[S_VMUL, 0, j]
                    vb = sc[S_VADD, 0, j]
                    for l in range(LANES):
                        sig = g[G_V, l] * va + vb  # σ·(1 + v) + 0 or σ·1 + v: exactly the xp path's
                        sig = floor if sig < floor else sig  # xp.maximum: nan stays nan
                        tv[jj, l] = _euro(g[G_W, l], g[G_LN, l] + lu, sig * g[G_SQT, l], g[G_FK, l] * uu,
                                          g[G_KDR, l], cf)
                else:  # a shock row per contract: gather the scenario's terms first (LLVM cannot
                    # bound gathered addresses for its alias checks, so this loop stays scalar)
                    uj = np.uint64(j)
                    for l in range(LANES):
                        o = gr[l] + uj
                        sig = g[G_V, l] * sc_f[o_vmul + o] + sc_f[o_vadd + o]
                        sig = floor if sig < floor else sig
                        g[G_BX, l] = g[G_LN, l] + sc_f[o_lnu + o]
                        g[G_BS, l] = sig * g[G_SQT, l]
                        g[G_BFKU, l] = g[G_FK, l] * sc_f[o_u + o]
                    for l in range(LANES):
                        tv[jj, l] = _euro(g[G_W, l], g[G_BX, l], g[G_BS, l], g[G_BFKU, l], g[G_KDR, l], cf)
            # (3) into the output rows; expired contracts are intrinsic at the shocked spot
            for l in range(nb):
                i = c0 + l
                if t[i] > 0.0:
                    for jj in range(nj):
                        out[i, j0 + jj] = tv[jj, l]
                else:
                    r = row[i]
                    wi = g[G_W, l]
                    for jj in range(nj):
                        x = wi * (spot[i] * sc[S_U, r, j0 + jj] - strike[i])
                        out[i, j0 + jj] = x if x > 0.0 else 0.0


def _grid_loop(chunk_lo, call, spot, strike, t, vol, rate, q, row, sc, single, floor, cf, out):
    for c in numba.prange(chunk_lo.shape[0] - 1):  # noqa: B023
        _grid_chunk(chunk_lo[c], chunk_lo[c + 1], call, spot, strike, t, vol, rate, q, row, sc, single, floor, cf,
                    out)


def european_grid_fused(
    call: np.ndarray,
    spot: np.ndarray,
    strike: np.ndarray,
    t: np.ndarray,
    vol: np.ndarray,
    rate: np.ndarray,
    q: np.ndarray,
    shock_row: np.ndarray,
    spot_shock: np.ndarray,
    vol_shock: np.ndarray,
    vol_mode: str,
    vol_floor: float,
) -> Any:
    """Same contract as ``kernels.grid._european_grid`` for NumPy inputs; ``(n, m)`` float64."""
    n = spot.shape[0]
    m = spot_shock.shape[1]
    u = 1.0 + np.asarray(spot_shock, dtype=np.float64)
    out = np.empty((n, m), dtype=np.float64)
    if n == 0 or m == 0:
        return out
    vs = np.asarray(vol_shock, dtype=np.float64)
    sc = np.empty((4, *u.shape))
    sc[S_LNU] = np.log(u)
    sc[S_U] = u
    if vol_mode == "relative":  # the shocked vol is σ·v_mul + v_add
        sc[S_VMUL], sc[S_VADD] = 1.0 + vs, 0.0
    else:
        sc[S_VMUL], sc[S_VADD] = 1.0, vs
    main = threading.current_thread() is threading.main_thread()
    # chunks of whole tiles, several per thread so that a core slowed by other work takes fewer
    n_tiles = -(-n // LANES)
    n_chunks = min(n_tiles, 8 * numba.config.NUMBA_NUM_THREADS) if main else 1
    chunk_lo = np.minimum(np.arange(n_chunks + 1, dtype=np.int64) * (-(-n_tiles // n_chunks) * LANES), n)
    f64 = [np.ascontiguousarray(a, dtype=np.float64) for a in (spot, strike, t, vol, rate, q)]
    args = (
        chunk_lo, np.ascontiguousarray(call, dtype=np.bool_), *f64, np.ascontiguousarray(shock_row, dtype=np.int64),
        sc, u.shape[0] == 1, float(vol_floor), COEF, out,
    )
    if main:
        with numba.parallel_chunksize(1):
            _grid_parallel(*args)
    else:
        _grid_serial(*args)
    return out


# --- independent inputs (option_price) -----------------------------------------------------
def _price_chunk(lo, hi, call, spot, strike, t, vol, rate, q, cf, out):
    _wide_vectors()
    for i in range(lo, hi):
        ti = t[i]
        w = 1.0 if call[i] else -1.0
        v = vol[i] * math.sqrt(ti if ti > 0.0 else 0.0)
        live = v > 0.0
        v = v if live else 1.0
        k_dr = strike[i] * _exp_c(-rate[i] * ti, cf)
        ln_fk = _log(spot[i] / strike[i]) + (rate[i] - q[i]) * ti
        value = _euro(w, ln_fk, v, _exp_c(ln_fk, cf), k_dr, cf)
        x = w * (spot[i] * _exp_c(-q[i] * ti, cf) - k_dr)  # the discounted forward's intrinsic value
        x = 0.0 if x <= 0.0 else x
        out[i] = value if live else x


def _price_loop(n_chunks, call, spot, strike, t, vol, rate, q, cf, out):
    n = spot.shape[0]
    for c in numba.prange(n_chunks):  # noqa: B023
        _price_chunk(c * CHUNK, min(n, (c + 1) * CHUNK), call, spot, strike, t, vol, rate, q, cf, out)


def european_price_fused(call, spot, strike, t, vol, rate, q) -> np.ndarray:
    """European values of independent contracts (1-D NumPy arrays), the ``bsm_price`` formula."""
    n = spot.shape[0]
    out = np.empty(n, dtype=np.float64)
    args = [np.ascontiguousarray(call, dtype=np.bool_)]
    args += [np.ascontiguousarray(a, dtype=np.float64) for a in (spot, strike, t, vol, rate, q)]
    if threading.current_thread() is threading.main_thread():
        with numba.parallel_chunksize(1):
            _price_parallel(-(-n // CHUNK), *args, COEF, out)
    else:
        _price_serial(-(-n // CHUNK), *args, COEF, out)
    return out


# Contraction to FMA, fast reciprocals and approximate library functions; not "reassoc" (the
# Cody–Waite reductions and the xp code's order of operations must stand), "nnan"/"ninf" (nan
# and inf inputs propagate as the xp path's do) or "nsz" (a zero value stays +0.0). Helpers are
# inlined by LLVM and divisions follow IEEE (error_model="numpy"), so that the valuation loops
# have no calls and no branches out: LLVM vectorises them.
_FASTMATH = {"contract", "arcp", "afn"}

if HAVE_NUMBA:

    @_intrinsic
    def _from_bits(typingctx, bits):
        """The float64 with IEEE-754 bit pattern ``bits`` (an int64)."""
        sig = _nb_types.float64(_nb_types.int64)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _llvm_ir.DoubleType())

        return sig, codegen

    @_intrinsic
    def _to_bits(typingctx, x):
        """The IEEE-754 bit pattern of float64 ``x``, as an int64."""
        sig = _nb_types.int64(_nb_types.float64)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _llvm_ir.IntType(64))

        return sig, codegen

    @_intrinsic
    def _wide_vectors(typingctx):
        """Asks LLVM for 512-bit vectors in the calling function (where the CPU has them).

        LLVM's tuning for recent Xeons prefers 256-bit vectors; for these straight-line
        float64 loops 512-bit ones are faster and give the same results (every lane runs the
        same instructions). The string attribute is LLVM's ``prefer-vector-width``, which
        llvmlite's attribute set does not list, so it is added past its check; if that ever
        fails, the function keeps LLVM's default width.
        """

        def codegen(context, builder, signature, args):
            try:
                set.add(builder.function.attributes, '"prefer-vector-width"="512"')
            except Exception:  # pragma: no cover
                pass
            return context.get_dummy_value()

        return _nb_types.void(), codegen

    from numba.core.cpu import CPUTargetOptions as _Options

    # LLVM inlining where this Numba has it (cheaper to compile), else Numba's own
    _inline_kw = {"forceinline": True} if hasattr(_Options, "forceinline") else {"inline": "always"}
    _inline = numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy", **_inline_kw)
    _exp_c = _inline(_exp_c_impl)
    _exp = _inline(_exp_impl)
    _log_mk = _inline(_log_mk_impl)
    _log = _inline(_log_impl)
    _mills_c = _inline(_mills_c_impl)
    _norm_cdf = _inline(_norm_cdf_impl)
    _euro = _inline(_euro_impl)
    _loop = {"cache": True, "nogil": True, "fastmath": _FASTMATH, "error_model": "numpy"}
    _grid_chunk = numba.njit(**_loop)(_grid_chunk)
    _grid_parallel = numba.njit(parallel=True, **_loop)(_grid_loop)
    _grid_serial = numba.njit(parallel=False, **_loop)(_grid_loop)
    _price_chunk = numba.njit(**_loop)(_price_chunk)
    _price_parallel = numba.njit(parallel=True, **_loop)(_price_loop)
    _price_serial = numba.njit(parallel=False, **_loop)(_price_loop)

    @numba.njit(cache=True, nogil=True)
    def _segment_sum_loop(values, seg, out):
        # rows in order: the first row of a segment is copied, the others added
        n, m = values.shape
        for i in range(n):
            s = seg[i]
            if i == 0 or s != seg[i - 1]:
                for j in range(m):
                    out[s, j] = values[i, j]
            else:
                for j in range(m):
                    out[s, j] += values[i, j]

    def segment_sum_fused(values: np.ndarray, segment_ids: np.ndarray, n_segments: int) -> np.ndarray:
        """Row sums of float64 ``values`` ``(n, m)`` per sorted segment id, ``(n_segments, m)``.

        Each segment's rows are added in row order (the first copied, so a
        segment of ``-0.0`` sums to ``-0.0``), in one pass that releases the
        GIL (partitions run on threads; ``np.add.reduceat`` holds it).
        """
        out = np.zeros((n_segments, values.shape[1]), dtype=np.float64)
        _segment_sum_loop(np.asarray(values, dtype=np.float64), np.asarray(segment_ids, dtype=np.int64), out)
        return out

    @numba.njit(cache=True, nogil=True)
    def _pnl_segment_loop(con, und, lin, size, v, v0, move, cover, seg, out):
        n = con.shape[0]
        m = out.shape[1]
        for i in range(n):
            s = seg[i]
            first = i == 0 or s != seg[i - 1]
            c, u = con[i], und[i]
            for j in range(m):
                unit = v[c, j] - v0[c] if c >= 0 else lin[i] * move[u, j]
                x = unit * size[i] * cover[u, j]
                if first:
                    out[s, j] = x
                else:
                    out[s, j] += x

    def pnl_segment_sum_fused(con: np.ndarray, und: np.ndarray, lin: np.ndarray, size: np.ndarray, v: np.ndarray,
                              v0: np.ndarray, move: np.ndarray, cover: np.ndarray, segment_ids: np.ndarray,
                              n_segments: int) -> np.ndarray:
        """Per-segment sums of position scenario P/L without materialising the ``(n, m)`` P/L.

        Row ``i`` of the P/L is ``unit · size[i] · cover[und[i]]`` with ``unit``
        the option's value change ``v[con[i]] - v0[con[i]]`` (``con[i] >= 0``) or
        the linear move ``lin[i] · move[und[i]]``; segments (sorted ids) are
        summed row by row as :func:`segment_sum_fused` does, so the result is
        bit for bit that of materialising the P/L and summing it. One pass,
        GIL released.
        """
        out = np.zeros((n_segments, move.shape[1]), dtype=np.float64)
        if con.shape[0]:
            _pnl_segment_loop(np.asarray(con, dtype=np.int64), np.asarray(und, dtype=np.int64),
                              np.asarray(lin, dtype=np.float64), np.asarray(size, dtype=np.float64),
                              np.ascontiguousarray(v, dtype=np.float64), np.asarray(v0, dtype=np.float64),
                              np.ascontiguousarray(move, dtype=np.float64),
                              np.ascontiguousarray(cover, dtype=np.float64),
                              np.asarray(segment_ids, dtype=np.int64), out)
        return out

    def _vectorized(fn):
        """A NumPy-facing loop over a scalar helper (for tests and checks; not used by the kernels)."""

        @numba.njit(fastmath=_FASTMATH, error_model="numpy")
        def loop(x, out):
            for i in range(x.shape[0]):
                out[i] = fn(x[i])

        def call(x):
            x = np.ascontiguousarray(x, dtype=np.float64)
            out = np.empty_like(x)
            loop(x.reshape(-1), out.reshape(-1))
            return out

        return call

    exp_vec = _vectorized(_exp)
    log_vec = _vectorized(_log)
    norm_cdf_vec = _vectorized(_norm_cdf)
