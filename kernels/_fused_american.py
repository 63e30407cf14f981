"""A fused CPU path (Numba) for the American part of the scenario grid, checked against the ``xp`` kernel.

``kernels/american.py`` is the one statement of the method (Andersen–Lake–Offengelt).
This module imports its scheme — ``N_NODES``, ``N_FP_POINTS``, ``N_FP_ITER``,
``N_PRICE_POINTS``, ``N_QD_ITER``, the quadrature and interpolation tables of
``_scheme``, the short Mills ratio's coefficients (Hart's from ``kernels/normal.py``),
the boundary floor and the rate threshold — and evaluates the same formulas in the
same order, with the intermediates of a few dozen options in cache instead of
those of every option going through memory once per array operation:

(a) :func:`_solve_tile` is ``AmericanPut.__init__`` (``_solve``, ``_QdPlus``,
    ``_bjerksund_stensland_boundary``, ``_FixedPoint``) for a tile of ``LANES``
    (contract, volatility level) options, each stage a loop over the tile's
    lanes so that it compiles to SIMD code;
(b) :func:`_value_gathered` is ``AmericanPut.value`` for ``LANES`` valuations whose
    options' state :func:`_gather` has put in the lanes of a table: in rows with at
    least ``OPTION_MAJOR`` scenarios per vol level (a plain grid of price moves) a
    tile of ``LANES`` options is gathered once and valued at each of its scenarios in
    turn; in other rows each (contract, scenario) lane gathers its option's state.

:func:`american_grid_fused` is ``kernels.grid._american_grid`` for NumPy inputs.
Contracts are taken in blocks (a ``prange`` loop); a block solves the boundaries
of its (contract, level) options into a block-local state table and values its
(contract, scenario) pairs from it, so memory stays ``O(block)`` however many
levels there are. Two savings leave the values as they are: a contract solves
only the levels of its own shock row (the ``xp`` path solves every level of the
whole table for every contract), and expired contracts and contracts where early
exercise never pays (rate ≤ ``_RATE_MIN`` in the put picture) solve no boundary
(the ``xp`` path solves one with stand-in inputs and discards it).

Numerics. The exponential and logarithm are written out (:func:`_exp`,
:func:`_log`, :func:`_expm1`: Cody–Waite reduction and polynomials; within 1, 1
and 2 ulp of NumPy's on millions of arguments) because, without a vector math
library, LLVM cannot vectorise a loop that calls ``exp``; ``error_model="numpy"``
drops Python's zero-division checks, whose branches would also stop it. Everything
else is the ``xp`` code's arithmetic, under the fastmath flags of
``kernels._fused_cpu``: no ``reassoc`` (the range reductions and the ``xp``
code's order of operations must stand) and no ``nsz``, so a zero value is +0.0;
LLVM is asked for 512-bit vectors (``kernels._fused_cpu._wide_vectors``). Every tile and chunk has a compile-time number of lanes (a short one
is padded with copies of a real lane) and the valuation path is chosen per shock
row, so each value is computed by the same instructions wherever its contract sits
in the book: results do not depend on the order of the contracts, on the blocks
or on the thread count. ``tests/kernels/test_fused_american.py`` checks agreement
with ``price_grid(..., fused=False)`` to 1e-12 relative.

Threading: as in ``kernels._fused_cpu``, the block loop runs on every core
(``numba.prange``, blocks handed out one at a time) when called from the main
thread, and serially from any other thread (a Dask worker thread, which already
provides the parallelism).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .american import (
    _B_FLOOR,
    _INV_SQRT_2PI,
    _MILLS_P,
    _MILLS_Q,
    _RATE_MIN,
    N_FP_ITER,
    N_FP_POINTS,
    N_NODES,
    N_PRICE_POINTS,
    N_QD_ITER,
    _scheme,
)
from .normal import _P, _Q

try:  # Numba is a dependency; keep the xp path usable if it is broken on a platform.
    import numba

    from ._fused_cpu import _from_bits, _inline, _log_mk, _loop, _to_bits, _wide_vectors

    HAVE_NUMBA = True
except Exception:  # pragma: no cover
    numba = None
    HAVE_NUMBA = False

# --- the scheme, from kernels/american.py -------------------------------------------------
_NODE, _FP_G, _FP_W, _FP_INTERP, _PR_S, _PR_W, _PR_H, _PR_INTERP = (
    np.array(a, dtype=np.float64) for a in _scheme(N_NODES, N_FP_POINTS, N_PRICE_POINTS)
)
_FP_SQ1G = np.array([math.sqrt(1.0 - g) for g in _FP_G])  # xp.sqrt(1 - g), correctly rounded both ways
_PR_INV_S = np.array([1.0 / s for s in _PR_S])
NP, NL, NN = N_PRICE_POINTS, N_FP_POINTS, N_NODES

MP0, MP1, MP2, MP3 = _MILLS_P
_, MQ1, MQ2, MQ3, MQ4 = _MILLS_Q
HP0, HP1, HP2, HP3, HP4, HP5, HP6 = _P
HQ0, HQ1, HQ2, HQ3, HQ4, HQ5, HQ6, HQ7 = _Q

# --- the per-option state table (a row per (contract, level) option of a block) ------------
F_EARLY, F_BOUNDARY, F_V, F_INV_V, F_MU, F_DR, F_DQ, F_FWD, F_IS_BS = range(9)
F_C = 9  # pr_c, then pr_w1, pr_w1g, pr_w2: N_PRICE_POINTS columns each
F_W1 = F_C + NP
F_W1G = F_W1 + NP
F_W2 = F_W1G + NP
N_FIELDS = F_W2 + NP

LANES = 64  # options of a boundary tile and valuations of a value chunk: a compile-time trip count
BLOCK_OPTIONS = 1024  # (contract, level) options per block of contracts, at least one contract

# --- the boundary tile's scratch rows (wk[row, lane]) ---------------------------------------
W_TAU, W_R, W_Q, W_VOL, W_XMAX, W_LNX, W_SQRT_T, W_EARLY = range(8)
W_NI, W_DI, W_LNB, W_HU = 8, 9, 10, 11
W_QV, W_QDR, W_QDQ, W_QALPHA, W_QBETA = 12, 13, 14, 15, 16  # QD+ constants of the current node
W_SJ = 17  # per node: s_j, tau_j, b, h², v_j, drift_j, fwd_j
W_TAUJ = W_SJ + NN
W_B = W_TAUJ + NN
W_H = W_B + NN
W_VJ = W_H + NN
W_DRIFTJ = W_VJ + NN
W_FWDJ = W_DRIFTJ + NN
W_VREM = W_FWDJ + NN  # per (node, point): v_rem, drift, wn, wd
W_DRIFT = W_VREM + NN * NL
W_WN = W_DRIFT + NN * NL
W_WD = W_WN + NN * NL
W_OUT = W_WD + NN * NL  # the tile's state rows, one per field, before they are scattered to st
N_WORK = W_OUT + N_FIELDS

# --- the value chunk's lane table (g[row, lane]): the gathered state, then these --------------
G_YV, G_EURO, G_SP, G_SN = range(N_FIELDS, N_FIELDS + 4)
N_G = N_FIELDS + 4
OPTION_MAJOR = 8  # value by option where a row has at least this many scenarios per distinct level

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
_INV_FACT = [1.0 / math.factorial(i) for i in range(18)]  # Taylor coefficients of expm1
E2, E3, E4, E5, E6, E7, E8, E9, E10, E11, E12, E13, E14, E15, E16, E17 = _INV_FACT[2:18]
_MANT = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000
_DBL_MAX = 1.7976931348623157e308
_X_TINY = -708.3964185322641  # ln 2^-1022: below it e^x is subnormal


def _exp_impl(x):
    """``e^x`` within 1 ulp of ``np.exp`` for ``x <= 709``, no calls: vectorises.

    Results that would be subnormal (``x`` below ``ln 2^-1022``) are 0, never computed
    (gradual underflow costs a microcode assist per lane). ``x`` is clamped at 709: the
    arguments here stay far below (the largest, ``(r - q)·t - ln B``, is under about 60).
    """
    tiny = x < _X_TINY
    x = min(max(x, _X_TINY), 709.0)
    n = np.floor(x * _LOG2E + 0.5)
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO  # |r| <= ln2 / 2
    p = X11 * r + X10
    p = p * r + X9
    p = p * r + X8
    p = p * r + X7
    p = p * r + X6
    p = p * r + X5
    p = p * r + X4
    p = p * r + X3
    p = p * r + X2
    p = p * r + X1
    p = p * r + 1.0
    out = p * _from_bits((np.int64(n) + 1023) << 52)  # 2^n, a normal number for n in [-1022, 1023]
    return 0.0 if tiny else out


def _expm1_impl(x):
    """``e^x - 1`` to a few ulp: Taylor to degree 17 for |x| < 0.5, else ``_exp(x) - 1``."""
    p = E17 * x + E16
    p = p * x + E15
    p = p * x + E14
    p = p * x + E13
    p = p * x + E12
    p = p * x + E11
    p = p * x + E10
    p = p * x + E9
    p = p * x + E8
    p = p * x + E7
    p = p * x + E6
    p = p * x + E5
    p = p * x + E4
    p = p * x + E3
    p = p * x + E2
    p = p * x + 1.0
    p = p * x
    big = _exp(x) - 1.0
    return p if abs(x) < 0.5 else big


def _log_impl(x):
    """``ln x`` for positive normal ``x`` (and +inf) within 1 ulp (fdlibm's kernel), no calls."""
    bits = _to_bits(x)
    out = _log_mk((bits >> 52) - 1023, _from_bits((bits & _MANT) | _ONE_BITS))
    return x if x > _DBL_MAX else out


# --- the normal tails of kernels/american.py -----------------------------------------------------
def _mills_short_impl(a):
    """``_mills_ratio_short``: ``Φ(-a)·exp(a²/2)`` by the degree 3/4 rational."""
    p = ((MP3 * a + MP2) * a + MP1) * a + MP0
    q = (((MQ4 * a + MQ3) * a + MQ2) * a + MQ1) * a + 1.0
    return p / q


def _mills_hart_impl(a):
    """``mills_ratio_hart`` (Hart's degree 6/7 rational)."""
    p = (((((HP0 * a + HP1) * a + HP2) * a + HP3) * a + HP4) * a + HP5) * a + HP6
    q = ((((((HQ0 * a + HQ1) * a + HQ2) * a + HQ3) * a + HQ4) * a + HQ5) * a + HQ6) * a + HQ7
    return p / q


def _lower_tail_impl(d):
    """``_lower_tail``: ``(Φ(-d), exp(-d²/2))`` with the short Mills ratio."""
    a = abs(d)
    e = _exp(a * a * -0.5)
    tail = e * _mills_short(a)
    return (tail if d > 0.0 else 1.0 - tail), e


def _clip_impl(x, lo, hi):
    """``xp.clip``: ``min(max(x, lo), hi)``."""
    x = x if x > lo else lo
    return x if x < hi else hi


# --- (a) the boundary: AmericanPut's constructor for LANES options ---------------------------------
# Every loop below runs over the LANES lanes innermost, with a straight-line body and no calls, so
# that LLVM vectorises it; per-lane intermediates live in rows of the scratch table ``wk``.
def _solve_tile(src, tau_in, r_in, q_in, vol_in, st, wk):
    """Boundary and premium constants of options ``src[l]`` into rows ``src[l]`` of ``st``.

    ``kernels.american._solve`` for the put picture ``(tau, r, q, vol)`` of each lane, in the
    same order of operations; ``wk`` is an ``(N_WORK, LANES)`` scratch table.
    """
    _wide_vectors()
    # the boundary's inputs, with the xp path's stand-ins where early exercise never pays
    for l in range(LANES):
        o = src[l]
        wk[W_TAU, l] = tau_in[o]
        wk[W_R, l] = r_in[o]
        wk[W_Q, l] = q_in[o]
        wk[W_VOL, l] = vol_in[o]
    for l in range(LANES):
        tau, r, q, vol = wk[W_TAU, l], wk[W_R, l], wk[W_Q, l], wk[W_VOL, l]
        early = (r > _RATE_MIN) & (tau > 0.0) & (vol > 0.0)
        tau = tau if early else 1.0
        r = r if early else 0.05
        q = q if early else 0.0
        vol = vol if early else 0.2
        qq = q if q > 0.0 else 1.0
        rq = r / qq
        x_max = (rq if rq < 1.0 else 1.0) if q > 0.0 else 1.0
        wk[W_TAU, l] = tau
        wk[W_R, l] = r
        wk[W_Q, l] = q
        wk[W_VOL, l] = vol
        wk[W_XMAX, l] = x_max
        wk[W_LNX, l] = _log(x_max)
        wk[W_SQRT_T, l] = math.sqrt(tau)
        wk[W_EARLY, l] = 1.0 if early else 0.0

    # collocation nodes: Bjerksund–Stensland start, then N_QD_ITER Halley steps on QD+
    for j in range(NN):
        for l in range(LANES):
            r, q, vol, x_max = wk[W_R, l], wk[W_Q, l], wk[W_VOL, l], wk[W_XMAX, l]
            s_j = wk[W_SQRT_T, l] * _NODE[j]
            tau = s_j * s_j
            wk[W_SJ + j, l] = s_j
            wk[W_TAUJ + j, l] = tau
            # _bjerksund_stensland_boundary
            s2 = vol * vol
            b_c = q - r
            g = b_c / s2 - 0.5
            beta = (0.5 - b_c / s2) + math.sqrt(g * g + 2.0 * q / s2)
            inv_inf = 1.0 - 1.0 / beta
            inv_inf = inv_inf if inv_inf > 0.0 else 0.0
            gap = x_max - inv_inf
            gap = gap if gap > 1e-300 else 1e-300
            sqrt_tau = math.sqrt(tau)
            hb = -(b_c * tau + 2.0 * vol * sqrt_tau) * inv_inf / gap
            hb = hb if hb < 0.0 else 0.0
            den = x_max + (inv_inf - x_max) * _exp(hb)
            den = den if den > 1e-300 else 1e-300
            wk[W_B + j, l] = _clip(x_max * inv_inf / den, 1e-10 * x_max, x_max)
            # _QdPlus.__init__
            v = vol * sqrt_tau
            dr = _exp(-r * tau)
            dq = _exp(-q * tau)
            h = -_expm1(-r * tau)
            omega = 2.0 * (r - q) / s2
            om1 = omega - 1.0
            disc = math.sqrt(om1 * om1 + 8.0 * r / (s2 * h))
            lam = 0.5 * (-om1 - disc)
            lam_prime = 2.0 * r / (s2 * h * h * disc)
            alpha = -2.0 * dr * r / (s2 * disc)
            wk[W_QV, l] = v
            wk[W_QDR, l] = dr
            wk[W_QDQ, l] = dq
            wk[W_QALPHA, l] = alpha
            wk[W_QBETA, l] = alpha * (1.0 / h - lam_prime / disc) - lam
        for _ in range(N_QD_ITER):
            for l in range(LANES):
                r, q, vol, x_max = wk[W_R, l], wk[W_Q, l], wk[W_VOL, l], wk[W_XMAX, l]
                tau = wk[W_TAUJ + j, l]
                v, dr, dq = wk[W_QV, l], wk[W_QDR, l], wk[W_QDQ, l]
                alpha, beta = wk[W_QALPHA, l], wk[W_QBETA, l]
                b = wk[W_B + j, l]
                # _QdPlus._derivatives
                dp = _log(b * dq / dr) / v + 0.5 * v
                dm = dp - v
                n_dp, e = _lower_tail(dp)
                n_dm, _e = _lower_tail(dm)
                phi = e * _INV_SQRT_2PI
                npv = dr * n_dm - b * dq * n_dp
                theta = r * dr * n_dm - q * b * dq * n_dp - vol * vol * b / (2.0 * v) * dq * phi
                one_m = 1.0 - dq * n_dp
                ar = alpha / (r * dr)
                f = one_m * b - beta * (1.0 - b - npv) + ar * theta
                charm = -dq * (phi * ((r - q) / v - dm / (2.0 * tau)) + q * n_dp)
                df = one_m + dq * phi / v + beta * one_m + ar * charm
                gamma = phi * dq / (v * b)
                colour = gamma * (q + (r - q) * dp / v + (1.0 - dp * dm) / (2.0 * tau))
                d2f = gamma * (1.0 - dp / v) + beta * gamma + ar * colour
                # _QdPlus.boundary: Halley, or Newton where it would blow up
                flat = df == 0.0
                df = 1.0 if flat else df
                den = 1.0 - 0.5 * f * d2f / (df * df)
                step = f / df / (den if den > 0.1 else 1.0)
                wk[W_B + j, l] = _clip(b - (0.0 if flat else step), 1e-10 * x_max, x_max)
        for l in range(LANES):
            x_max = wk[W_XMAX, l]
            wk[W_B + j, l] = _clip(wk[W_B + j, l], _B_FLOOR * x_max, x_max)

    # _FixedPoint.__init__
    for j in range(NN):
        for k in range(NL):
            jk = j * NL + k
            for l in range(LANES):
                r, q, vol = wk[W_R, l], wk[W_Q, l], wk[W_VOL, l]
                tau_j = wk[W_TAUJ + j, l]
                u = tau_j * _FP_G[k]
                rem = tau_j - u
                wk[W_VREM + jk, l] = vol * wk[W_SJ + j, l] * _FP_SQ1G[k]
                wk[W_DRIFT + jk, l] = (r - q) * rem
                wt = tau_j * _FP_W[k]
                wk[W_WN + jk, l] = wt * r * _exp(r * u)
                wk[W_WD + jk, l] = wt * q * _exp(q * u)
        for l in range(LANES):
            r, q, vol = wk[W_R, l], wk[W_Q, l], wk[W_VOL, l]
            wk[W_VJ + j, l] = vol * wk[W_SJ + j, l]
            drift_j = (r - q) * wk[W_TAUJ + j, l]
            wk[W_DRIFTJ + j, l] = drift_j
            wk[W_FWDJ + j, l] = _exp(-drift_j)

    # fixed-point iterations of FP-B, the first a Jacobi–Newton step; H = ln(B/B(0+))²
    for it in range(N_FP_ITER):
        for j in range(NN):
            for l in range(LANES):
                hh = _log(wk[W_B + j, l]) - wk[W_LNX, l]
                wk[W_H + j, l] = hh * hh
        for j in range(NN):
            for l in range(LANES):
                wk[W_LNB, l] = wk[W_LNX, l] - math.sqrt(wk[W_H + j, l])
                wk[W_NI, l] = 0.0
                wk[W_DI, l] = 0.0
            for k in range(NL):
                jk = j * NL + k
                for l in range(LANES):  # H at the point, through the Chebyshev interpolant
                    wk[W_HU, l] = wk[W_H, l] * _FP_INTERP[0, jk]
                for a in range(1, NN):
                    c = _FP_INTERP[a, jk]
                    for l in range(LANES):
                        wk[W_HU, l] += wk[W_H + a, l] * c
                for l in range(LANES):
                    h_u = wk[W_HU, l]
                    ln_bu = wk[W_LNX, l] - math.sqrt(h_u if h_u > 0.0 else 0.0)
                    v_rem = wk[W_VREM + jk, l]
                    dp = (wk[W_LNB, l] - ln_bu + wk[W_DRIFT + jk, l]) / v_rem + 0.5 * v_rem
                    n_dp, _e = _lower_tail(dp)
                    n_dm, _e = _lower_tail(dp - v_rem)
                    wk[W_NI, l] += wk[W_WN + jk, l] * (1.0 - n_dm)
                    wk[W_DI, l] += wk[W_WD + jk, l] * (1.0 - n_dp)
            newton = it == 0  # FP-B': a partial Jacobi–Newton step
            for l in range(LANES):
                ln_b = wk[W_LNB, l]
                v_j = wk[W_VJ + j, l]
                fwd_j = wk[W_FWDJ + j, l]
                d0 = (ln_b + wk[W_DRIFTJ + j, l]) / v_j + 0.5 * v_j
                t0p, e0 = _lower_tail(d0)
                t0m, e1 = _lower_tail(d0 - v_j)
                num = (1.0 - t0m) + wk[W_NI, l]
                den = (1.0 - t0p) + wk[W_DI, l]
                den = den if den > 1e-100 else 1e-100
                ratio = num / den
                f = fwd_j * ratio
                b = _exp(ln_b)
                scale = _INV_SQRT_2PI / (b * v_j)
                fd = fwd_j * scale * (e1 - e0 * ratio) / den
                slope = fd - 1.0
                steep = slope < -1e-3
                jn = b - (f - b) / (slope if steep else -1.0)
                f = jn if (newton & steep & (jn > 0.0)) else f
                x_max = wk[W_XMAX, l]
                wk[W_B + j, l] = _clip(f, _B_FLOOR * x_max, x_max)

    # the state: boundary at T and the premium constants at t_k = T·h_k
    for j in range(NN):
        for l in range(LANES):
            hh = _log(wk[W_B + j, l]) - wk[W_LNX, l]
            wk[W_H + j, l] = hh * hh
    for l in range(LANES):
        early = wk[W_EARLY, l]
        wk[W_OUT + F_EARLY, l] = early
        wk[W_OUT + F_BOUNDARY, l] = wk[W_B + NN - 1, l] if early != 0.0 else 0.0
    for k in range(NP):
        for l in range(LANES):
            wk[W_HU, l] = wk[W_H, l] * _PR_INTERP[0, k]
        for a in range(1, NN):
            c = _PR_INTERP[a, k]
            for l in range(LANES):
                wk[W_HU, l] += wk[W_H + a, l] * c
        for l in range(LANES):
            tau, r, q, vol = wk[W_TAU, l], wk[W_R, l], wk[W_Q, l], wk[W_VOL, l]
            h_k = wk[W_HU, l]
            ln_b = wk[W_LNX, l] - math.sqrt(h_k if h_k > 0.0 else 0.0)
            t_k = tau * _PR_H[k]
            v_k = (vol * wk[W_SQRT_T, l]) * _PR_S[k]
            w = tau * _PR_W[k]
            wk[W_OUT + F_C + k, l] = ((r - q) * t_k - ln_b) / v_k + 0.5 * v_k
            w1 = w * r * _exp(-r * t_k)
            wk[W_OUT + F_W1 + k, l] = w1
            wk[W_OUT + F_W1G + k, l] = w1 * _exp((r - q) * t_k - ln_b)
            wk[W_OUT + F_W2 + k, l] = w * q * _exp(-q * t_k)
    for l in range(LANES):  # to the options' rows (the European columns are left as they are)
        o = src[l]
        st[o, F_EARLY] = wk[W_OUT + F_EARLY, l]
        st[o, F_BOUNDARY] = wk[W_OUT + F_BOUNDARY, l]
        for f in range(F_C, N_FIELDS):
            st[o, f] = wk[W_OUT + f, l]


def _european_state(st, o, tau, r, q, vol):
    """``_solve``'s European constants of option row ``o``, from the true inputs."""
    tau_pos = tau if tau > 0.0 else 0.0
    v = vol * math.sqrt(tau_pos)
    is_bs = v > 0.0
    v = v if is_bs else 1.0
    inv_v = 1.0 / v
    dr = math.exp(-r * tau_pos)
    dq = math.exp(-q * tau_pos)
    st[o, F_IS_BS] = 1.0 if is_bs else 0.0
    st[o, F_V] = v
    st[o, F_INV_V] = inv_v
    st[o, F_DR] = dr
    st[o, F_DQ] = dq
    st[o, F_MU] = (r - q) * tau_pos * inv_v + 0.5 * v
    st[o, F_FWD] = dq / dr


# --- (b) the valuation: AmericanPut.value ------------------------------------------------------
def _european_unit_impl(x, v, inv_v, mu, dr, dq, fwd_ratio, is_bs):
    """The European part of ``AmericanPut.value`` at spot ratio ``x``: ``(euro, y / v)``."""
    y = _log(x if x > 1e-300 else 1e-300)
    d1 = y * inv_v + mu  # one exponential serves both tails
    a = abs(d1)
    e = _exp(a * a * -0.5)
    t1 = e * _mills_hart(a)
    n1 = t1 if d1 > 0.0 else 1.0 - t1
    d2 = d1 - v
    t2 = e * (x * fwd_ratio) * _mills_hart(abs(d2))
    n2 = t2 if d2 > 0.0 else 1.0 - t2
    euro = dr * n2 - x * dq * n1
    euro = euro if euro > 0.0 else 0.0
    frozen = dr - x * dq
    frozen = frozen if frozen > 0.0 else 0.0
    return (euro if is_bs != 0.0 else frozen), y * inv_v


def _premium_point_impl(yv, x, v, k, c, w1, w1g, w2):
    """Premium point ``k``: ``(w1 Φ(-d₋), w2 Φ(-d₊))``, again one exponential."""
    dp = yv * _PR_INV_S[k] + c
    a = abs(dp)
    e = _exp(a * a * -0.5)
    tail = e * _mills_short(a)
    n_p = tail if dp > 0.0 else 1.0 - tail
    dm = dp - v * _PR_S[k]
    part = e * _mills_short(abs(dm))
    part = part * w1g
    part = part * x
    part = part if dm > 0.0 else w1 - part
    return part, n_p * w2


def _american_unit_impl(x, euro, s_part, s_np, boundary, early):
    """European value plus premium, floored at the European and intrinsic values."""
    premium = s_part - x * s_np
    intrinsic = 1.0 - x
    value = euro + premium if x > boundary else intrinsic
    floor = euro if euro > intrinsic else intrinsic
    value = value if value > floor else floor
    return value if early != 0.0 else floor


def _gather(opt, st, g):
    """Rows ``0:N_FIELDS`` of ``g``: the state of option row ``opt[l]`` of ``st`` in lane ``l``."""
    for f in range(N_FIELDS):
        for l in range(LANES):
            g[f, l] = st[opt[l], f]


def _value_gathered(x_in, g, out):
    """``out[l]``: unit-put value at spot ratio ``x_in[l]`` of the option whose state is in lane ``l`` of ``g``.

    ``g`` is an ``(N_G, LANES)`` table: the state (rows ``0:N_FIELDS``, see :func:`_gather`,
    left as they are) and scratch rows. Lanes innermost as in :func:`_solve_tile`.
    """
    _wide_vectors()
    for l in range(LANES):
        x = x_in[l]
        euro, yv = _european_unit(x, g[F_V, l], g[F_INV_V, l], g[F_MU, l], g[F_DR, l], g[F_DQ, l],
                                  g[F_FWD, l], g[F_IS_BS, l])
        g[G_EURO, l] = euro
        g[G_YV, l] = yv
        g[G_SP, l] = 0.0
        g[G_SN, l] = 0.0
    for k in range(NP):
        for l in range(LANES):
            part, n_p = _premium_point(g[G_YV, l], x_in[l], g[F_V, l], k, g[F_C + k, l], g[F_W1 + k, l],
                                       g[F_W1G + k, l], g[F_W2 + k, l])
            g[G_SP, l] += part
            g[G_SN, l] += n_p
    for l in range(LANES):
        out[l] = _american_unit(x_in[l], g[G_EURO, l], g[G_SP, l], g[G_SN, l], g[F_BOUNDARY, l], g[F_EARLY, l])


# --- the grid: blocks of contracts ---------------------------------------------------------------
def _flush(n_lane, opt, xs, ci, cj, st, g, unit, call, spot, strike, row, u_tab, out):
    """Values the ``n_lane`` pending (contract, scenario) lanes; the rest are copies of lane 0."""
    for p in range(n_lane, LANES):
        opt[p] = opt[0]
        xs[p] = xs[0]
    _gather(opt, st, g)
    _value_gathered(xs, g, unit)
    for p in range(n_lane):
        i, j = ci[p], cj[p]
        s_u = spot[i] * u_tab[row[i], j]
        out[i, j] = (s_u if call[i] else strike[i]) * unit[p]


def _block(c0, c1, call, spot, strike, t, vol, rate, q, row, u_tab, slot_tab, row_levels, n_slots,
           by_option, scen_order, slot_start, relative, floor, out):
    """``_american_grid`` for contracts ``c0:c1``, into their rows of ``out``."""
    m = out.shape[1]
    # option rows: (contract, slot) for live contracts, a slot per distinct level of the row
    base = np.empty(c1 - c0, dtype=np.int64)
    n_opt = 0
    for i in range(c0, c1):
        base[i - c0] = n_opt
        if t[i] > 0.0:
            n_opt += n_slots[row[i]]
    st = np.zeros((max(n_opt, 1), N_FIELDS))
    o_tau = np.empty(n_opt)
    o_r = np.empty(n_opt)
    o_q = np.empty(n_opt)
    o_vol = np.empty(n_opt)
    solve = np.empty(n_opt + LANES, dtype=np.int64)
    n_solve = 0
    for i in range(c0, c1):
        if not t[i] > 0.0:
            continue
        r_eff = q[i] if call[i] else rate[i]  # the put picture (McDonald–Schroder for calls)
        q_eff = rate[i] if call[i] else q[i]
        rr = row[i]
        for s in range(n_slots[rr]):
            o = base[i - c0] + s
            vs = row_levels[rr, s]
            sig = vol[i] * (1.0 + vs) if relative else vol[i] + vs
            sig = sig if sig > floor else floor
            o_tau[o] = t[i]
            o_r[o] = r_eff
            o_q[o] = q_eff
            o_vol[o] = sig
            _european_state(st, o, t[i], r_eff, q_eff, sig)
            if r_eff > _RATE_MIN:  # elsewhere early exercise never pays: no boundary
                solve[n_solve] = o
                n_solve += 1
    # (a) boundaries, LANES options a tile (the last tile padded with copies of its last option)
    if n_solve > 0:
        for p in range(n_solve, n_solve + LANES):
            solve[p] = solve[n_solve - 1]
        wk = np.empty((N_WORK, LANES))
        for lo in range(0, n_solve, LANES):
            _solve_tile(solve[lo:lo + LANES], o_tau, o_r, o_q, o_vol, st, wk)
    # (b) valuations. Rows with many scenarios per level: LANES options a tile (their state
    # gathered once), valued at their scenarios in turn; other rows: LANES (contract, scenario)
    # pairs a chunk, each gathering its option's state. Both value with _value_gathered, so a
    # value does not depend on the path. Expired contracts are intrinsic.
    opt = np.empty(LANES, dtype=np.int64)
    xs = np.empty(LANES)
    unit = np.empty(LANES)
    g = np.empty((N_G, LANES))
    ci = np.empty(LANES, dtype=np.int64)
    cj = np.empty(LANES, dtype=np.int64)
    bo_o = np.empty(n_opt + 1, dtype=np.int64)  # by-option rows' options: row of st, contract, slot
    bo_i = np.empty(n_opt + 1, dtype=np.int64)
    bo_s = np.empty(n_opt + 1, dtype=np.int64)
    n_bo = 0
    for i in range(c0, c1):
        rr = row[i]
        if t[i] > 0.0 and by_option[rr]:
            for s in range(n_slots[rr]):
                bo_o[n_bo] = base[i - c0] + s
                bo_i[n_bo] = i
                bo_s[n_bo] = s
                n_bo += 1
    lane_lo = np.empty(LANES, dtype=np.int64)
    lane_n = np.empty(LANES, dtype=np.int64)
    for lo in range(0, n_bo, LANES):
        n_l = min(LANES, n_bo - lo)
        p_max = 0
        for l in range(LANES):  # a short tile: copies of its first option
            b = lo + l if l < n_l else lo
            i = bo_i[b]
            rr = row[i]
            opt[l] = bo_o[b]
            ci[l] = i
            lane_lo[l] = slot_start[rr, bo_s[b]]
            lane_n[l] = slot_start[rr, bo_s[b] + 1] - lane_lo[l]
            p_max = max(p_max, lane_n[l])
        _gather(opt, st, g)
        for p in range(p_max):
            for l in range(LANES):  # a lane out of scenarios repeats its first
                i = ci[l]
                rr = row[i]
                j = scen_order[rr, lane_lo[l] + (p if p < lane_n[l] else 0)]
                cj[l] = j
                s_u = spot[i] * u_tab[rr, j]
                xs[l] = strike[i] / s_u if call[i] else s_u / strike[i]
            _value_gathered(xs, g, unit)
            for l in range(n_l):
                if p < lane_n[l]:
                    i, j = ci[l], cj[l]
                    s_u = spot[i] * u_tab[row[i], j]
                    out[i, j] = (s_u if call[i] else strike[i]) * unit[l]
    n_lane = np.int64(0)  # (a literal 0 would compile _flush once more, for n_lane == 0)
    for i in range(c0, c1):
        rr = row[i]
        if not t[i] > 0.0:
            for j in range(m):
                s_u = spot[i] * u_tab[rr, j]
                x = s_u - strike[i] if call[i] else strike[i] - s_u
                out[i, j] = x if x > 0.0 else 0.0
            continue
        if by_option[rr]:
            continue
        for j in range(m):
            s_u = spot[i] * u_tab[rr, j]
            opt[n_lane] = base[i - c0] + slot_tab[rr, j]
            xs[n_lane] = strike[i] / s_u if call[i] else s_u / strike[i]
            ci[n_lane] = i
            cj[n_lane] = j
            n_lane += 1
            if n_lane == LANES:
                _flush(n_lane, opt, xs, ci, cj, st, g, unit, call, spot, strike, row, u_tab, out)
                n_lane = np.int64(0)
    if n_lane > 0:
        _flush(n_lane, opt, xs, ci, cj, st, g, unit, call, spot, strike, row, u_tab, out)


def _grid_loop(call, spot, strike, t, vol, rate, q, row, u_tab, slot_tab, row_levels, n_slots,
               by_option, scen_order, slot_start, relative, floor, block_lo, out):
    """All blocks of contracts ``block_lo[b]:block_lo[b+1]``, one per ``prange`` step."""
    for bk in numba.prange(block_lo.shape[0] - 1):  # noqa: B023
        _block(block_lo[bk], block_lo[bk + 1], call, spot, strike, t, vol, rate, q, row, u_tab, slot_tab,
               row_levels, n_slots, by_option, scen_order, slot_start, relative, floor, out)


def _row_slots(vol_shock: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each row's distinct volatility shocks, for all rows at once (no loop over the rows).

    ``vol_shock`` ``(k, m)``. Returns ``slot_tab`` (scenario ``j``'s place among its row's distinct
    levels, ascending), ``row_levels`` (row ``r``'s levels in its first ``n_slots[r]`` places, 0 after),
    ``n_slots``, ``scen_order`` (each row's scenarios by slot, stable) and ``slot_start``
    (``slot_start[r, s]:slot_start[r, s + 1]`` are slot ``s``'s scenarios in ``scen_order[r]``, for
    ``s < n_slots[r]``; 0 after the last slot's end). One stable sort of each row's level codes: memory
    of order ``k * m`` whatever the number of distinct levels (a replay's table has about one per cell).
    """
    k, m = vol_shock.shape
    levels = np.unique(vol_shock.reshape(-1))
    level_idx = np.searchsorted(levels, vol_shock)  # (k, m), codes of the levels, ascending
    scen_order = np.argsort(level_idx, axis=1, kind="stable").astype(np.int64)  # = by slot, stably
    srt = np.take_along_axis(level_idx, scen_order, axis=1)
    new = np.ones((k, m), dtype=bool)  # where a row's sorted codes start a new level
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    slot_sorted = np.cumsum(new, axis=1) - 1
    slot_tab = np.empty((k, m), dtype=np.int64)
    np.put_along_axis(slot_tab, scen_order, slot_sorted, axis=1)
    n_slots = new.sum(axis=1).astype(np.int64)
    row_levels = np.zeros((k, m), dtype=np.float64)
    r, c = np.nonzero(new)
    row_levels[r, slot_sorted[r, c]] = levels[srt[r, c]]
    slot_start = np.zeros((k, m + 1), dtype=np.int64)
    last = np.ones((k, m), dtype=bool)  # where a level's run ends: the next slot starts after it
    last[:, :-1] = new[:, 1:]
    r, c = np.nonzero(last)
    slot_start[r, slot_sorted[r, c] + 1] = c + 1
    return slot_tab, row_levels, n_slots, scen_order, slot_start


def american_grid_fused(
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
) -> np.ndarray:
    """Same contract as ``kernels.grid._american_grid`` for NumPy inputs; ``(n, m)`` float64."""
    n = spot.shape[0]
    m = spot_shock.shape[1]
    # each row's distinct volatility shocks (a contract solves only its own row's levels),
    # sorted as the xp path's levels are; slot_tab[r, j] is scenario j's level among them, and
    # scen_order[r, slot_start[r, s]:slot_start[r, s + 1]] the scenarios of level s
    slot_tab, row_levels, n_slots, scen_order, slot_start = _row_slots(vol_shock)
    by_option = m >= OPTION_MAJOR * n_slots  # a row's rule, so a value never depends on its neighbours
    # blocks of contracts: about BLOCK_OPTIONS options each, and at least 32 blocks where the book
    # allows, handed to the threads one at a time so that a core slowed by other work takes fewer
    # (results do not depend on the blocks)
    per_block = max(1, min(BLOCK_OPTIONS // int(n_slots.max()), -(-n // 32)))
    block_lo = np.append(np.arange(0, n, per_block, dtype=np.int64), np.int64(n))
    out = np.empty((n, m), dtype=np.float64)
    f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
    args = (
        np.ascontiguousarray(call, dtype=np.bool_), f64(spot), f64(strike), f64(t), f64(vol), f64(rate), f64(q),
        np.ascontiguousarray(shock_row, dtype=np.int64), f64(1.0 + spot_shock), slot_tab, row_levels, n_slots,
        by_option, scen_order, slot_start, vol_mode == "relative", float(vol_floor), block_lo, out,
    )
    if threading.current_thread() is threading.main_thread():
        with numba.parallel_chunksize(1):
            _grid_parallel(*args)
    else:
        _grid_serial(*args)
    return out


# The compile options are _fused_cpu's (fastmath without "reassoc", IEEE divisions, LLVM
# inlining of helpers), so that the lane loops vectorise the same way there and here.
if HAVE_NUMBA:
    _exp = _inline(_exp_impl)
    _expm1 = _inline(_expm1_impl)
    _log = _inline(_log_impl)
    _mills_short = _inline(_mills_short_impl)
    _mills_hart = _inline(_mills_hart_impl)
    _lower_tail = _inline(_lower_tail_impl)
    _european_unit = _inline(_european_unit_impl)
    _premium_point = _inline(_premium_point_impl)
    _american_unit = _inline(_american_unit_impl)
    _clip = _inline(_clip_impl)
    _kernel = numba.njit(**_loop)
    _solve_tile = _kernel(_solve_tile)
    _european_state = _kernel(_european_state)
    _gather = _kernel(_gather)
    _value_gathered = _kernel(_value_gathered)
    _flush = _kernel(_flush)
    _block = _kernel(_block)
    _grid_parallel = numba.njit(parallel=True, **_loop)(_grid_loop)
    _grid_serial = numba.njit(parallel=False, **_loop)(_grid_loop)
