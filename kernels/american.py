"""American option values by the Andersen–Lake–Offengelt method, in any array namespace.

Method: L. Andersen, M. Lake and D. Offengelt (2016), "High-performance
American option pricing", Journal of Computational Finance 20(1), in the form of
QuantLib's ``QdFpAmericanEngine``, for a unit-strike put:

1. the exercise boundary ``B(τ)`` is first approximated at ``n`` Chebyshev
   nodes in ``√τ`` (plus ``τ = 0``, where ``B(0+) = min(1, r/q)``) by Li's
   (2010) QD+ equation, solved by a few Halley steps from the
   Bjerksund–Stensland (1993) flat boundary; it is stored as
   ``H = ln(B / B(0+))²``, a smooth function of ``√τ``;
2. the nodes are refined by ``m`` fixed-point iterations of ALO's integral
   equation "FP-B", ``B(τ) = e^{-(r-q)τ} N(τ, B) / D(τ, B)``, the first a partial
   Jacobi–Newton step ("FP-B'"), each integral by ``l``-point quadrature with
   ``B`` between nodes given by the Chebyshev interpolant of ``H``;
3. the value is the European value plus the early-exercise premium
   ``∫_0^T [r e^{-rt} Φ(-d₋) - q x e^{-qt} Φ(-d₊)] dt`` (``d±`` of the spot
   ratio ``x/B(T-t)`` over time ``t``), by ``p``-point quadrature.

Both integrals are Gauss–Legendre in ``θ`` with ``u = τ (1 - cos θ)/2``, which
smooths the square-root behaviour of the boundary at ``u = 0`` and of the
diffusion at ``u = τ``: a handful of points suffices. Every node and
quadrature point is a fixed fraction of ``T``, so the Chebyshev interpolation
is a product with a constant matrix. Scheme parameters (the ``N_*`` constants
below), their cost and their measured accuracy against QuantLib's 2,001-step
Leisen–Reimer tree: ``docs/pricing.md``.

A put of strike ``K`` on spot ``S`` is ``K · v(S/K; r, q)``; a call is priced
by the McDonald–Schroder symmetry ``C(S, K; r, q) = P(K, S; q, r) = S · v(K/S; q, r)``.
The boundary depends on ``(τ, r, q, σ)`` only, not on the spot, so a scenario
grid builds :class:`AmericanPut` (boundary and premium-quadrature constants)
once per contract and volatility level and calls :meth:`AmericanPut.value` for
every price move (``kernels.grid``); ``value`` costs about ten European
prices, the constructor about 120.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from array_api_compat import is_cupy_namespace

from ._xp import as_bool, as_float, broadcast_float, namespace
from .normal import mills_ratio_hart

_INV_SQRT_2PI = 0.3989422804014327

# --- the scheme (docs/pricing.md) --------------------------------------------
N_NODES = 5  # n: Chebyshev collocation nodes in √τ on (0, T] (plus τ = 0)
N_FP_POINTS = 4  # l: Gauss–Legendre points of each fixed-point integral
N_FP_ITER = 3  # m: fixed-point iterations (the first a Jacobi–Newton step)
N_PRICE_POINTS = 10  # p: Gauss–Legendre points of the premium integral
N_QD_ITER = 2  # Halley iterations on the QD+ equation (from Bjerksund–Stensland) at the nodes

_B_FLOOR = 1e-12  # boundary floor, relative to B(0+)
_RATE_MIN = 1e-12  # below this rate early exercise is worth < 1e-12·T of the strike: European
_CHUNK = 2048  # options solved at a time in the constructor (keeps its temporaries in cache)
_GPU_CHUNK = 1 << 18  # ... on a GPU


# --- constants of the scheme, in plain Python --------------------------------
def _gauss_legendre(n: int) -> tuple[list[float], list[float]]:
    """Nodes and weights of ``n``-point Gauss–Legendre quadrature on ``[-1, 1]``."""
    nodes, weights = [], []
    for i in range(1, n + 1):
        x = math.cos(math.pi * (i - 0.25) / (n + 0.5))
        for _ in range(100):
            p0, p1 = 1.0, x
            for k in range(2, n + 1):
                p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
            dp = n * (x * p1 - p0) / (x * x - 1.0)
            dx = p1 / dp
            x -= dx
            if abs(dx) < 1e-15:
                break
        p0, p1 = 1.0, x
        for k in range(2, n + 1):
            p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
        dp = n * (x * p1 - p0) / (x * x - 1.0)
        nodes.append(x)
        weights.append(2.0 / ((1.0 - x * x) * dp * dp))
    order = sorted(range(n), key=nodes.__getitem__)
    return [nodes[i] for i in order], [weights[i] for i in order]


def _cosine_rule(n: int) -> tuple[list[float], list[float]]:
    """``(g_k, w_k)`` with ``∫_0^1 f(g) dg ≈ Σ w_k f(g_k)``, ``g = (1 - cos θ)/2``, θ by Gauss–Legendre."""
    y, w = _gauss_legendre(n)
    g, wg = [], []
    for yk, wk in zip(y, w):
        theta = 0.5 * math.pi * (1.0 + yk)
        g.append(0.5 * (1.0 - math.cos(theta)))
        wg.append(wk * 0.25 * math.pi * math.sin(theta))
    return g, wg


def _chebyshev_row(n: int, z: float) -> list[float]:
    """Barycentric weights of the interpolant through the nodes ``z_j = -cos(jπ/n)``, j = 1..n, at ``z``.

    The node ``z_0 = -1`` (``τ = 0``, where ``H = 0``) contributes nothing and is left out.
    """
    nodes = [-math.cos(j * math.pi / n) for j in range(n + 1)]
    for j, zj in enumerate(nodes):
        if abs(z - zj) < 1e-15:
            return [1.0 if i == j else 0.0 for i in range(1, n + 1)]
    c = [(-1.0) ** j * (0.5 if j in (0, n) else 1.0) / (z - zj) for j, zj in enumerate(nodes)]
    total = sum(c)
    return [cj / total for cj in c[1:]]


@lru_cache(maxsize=8)
def _scheme(n: int, l: int, p: int):
    """Constants of the scheme (plain Python lists).

    ``node``: ``√(τ_j/T)`` of the nodes j = 1..n. Fixed point: ``fp_g`` ``u/τ_j``
    and ``fp_w`` weights of the ``l`` points, ``fp_interp`` the ``(n, n·l)``
    matrix from node values of ``H`` to its values at ``u_jk``. Premium:
    ``pr_s`` ``√(t_k/T)``, ``pr_w`` weights, ``pr_h`` ``t_k/T`` and
    ``pr_interp`` ``(n, p)`` to ``H`` at ``τ = T - t_k``.
    """
    node = [0.5 * (1.0 - math.cos(j * math.pi / n)) for j in range(1, n + 1)]
    fp_g, fp_w = _cosine_rule(l)
    rows = []
    for c in node:
        for g in fp_g:
            rows.append(_chebyshev_row(n, 2.0 * c * math.sqrt(g) - 1.0))
    fp_interp = [list(col) for col in zip(*rows)]
    pr_h, pr_w = _cosine_rule(p)
    pr_s = [math.sqrt(h) for h in pr_h]
    rows = [_chebyshev_row(n, 2.0 * math.sqrt(1.0 - h) - 1.0) for h in pr_h]
    pr_interp = [list(col) for col in zip(*rows)]
    return node, fp_g, fp_w, fp_interp, pr_s, pr_w, pr_h, pr_interp


# --- normal distribution -----------------------------------------------------
# The quadrature terms (boundary equations, premium integral) use a short rational for the
# Mills ratio Φ(-a)·e^{a²/2}, a ≥ 0: degree 3 over 4, fitted for relative error by Lawson's
# reweighted least squares against scipy's erfcx; at most 1.7e-6 on [0, 1e30] (checked against
# mpmath by tests/kernels/test_american.py), with the right tail 1/(a√(2π)). That is far inside
# those terms' own error budget, and it costs 15 operations where Hart's double-precision form
# (kept for the European part) costs 27.
_MILLS_P = (0.49999916780026277, 0.3934645395898574, 0.1384635639020277, 0.021777491450517307)
_MILLS_Q = (1.0, 1.5847407881324316, 1.0418714688329451, 0.34705204754923785, 0.054588168091491446)


def _mills_ratio_short(a: Any) -> Any:
    """``Φ(-a)·exp(a²/2)`` for ``a ≥ 0`` to 1.7e-6 relative, same shape as ``a``."""
    p0, p1, p2, p3 = _MILLS_P
    _, q1, q2, q3, q4 = _MILLS_Q
    p = a * p3
    p += p2
    p *= a
    p += p1
    p *= a
    p += p0
    q = a * q4
    q += q3
    q *= a
    q += q2
    q *= a
    q += q1
    q *= a
    q += 1.0
    p /= q
    return p


def _lower_tail(xp: Any, d: Any, mills: Any = _mills_ratio_short):
    """``(Φ(-d), exp(-d²/2))`` from one exponential (by default to 1.7e-6 relative in the tail)."""
    a = xp.abs(d)
    e = xp.exp(a * a * -0.5)
    tail = e * mills(a)
    return xp.where(d > 0.0, tail, 1.0 - tail), e


# --- QD+ (the starting boundary) ---------------------------------------------
class _QdPlus:
    """Li's QD+ boundary equation for a unit-strike put (QuantLib's ``QdPlusBoundaryEvaluator``)."""

    def __init__(self, xp: Any, tau: Any, r: Any, q: Any, vol: Any) -> None:
        self.xp = xp
        self.tau, self.r, self.q, self.vol = tau, r, q, vol
        s2 = vol * vol
        self.v = vol * xp.sqrt(tau)
        self.dr = xp.exp(-r * tau)
        self.dq = xp.exp(-q * tau)
        h = -xp.expm1(-r * tau)
        omega = 2.0 * (r - q) / s2
        disc = xp.sqrt((omega - 1.0) ** 2 + 8.0 * r / (s2 * h))
        self.lam = 0.5 * (-(omega - 1.0) - disc)
        lam_prime = 2.0 * r / (s2 * h * h * disc)
        # 2λ + ω − 1 = −disc
        self.alpha = -2.0 * self.dr * r / (s2 * disc)
        self.beta = self.alpha * (1.0 / h - lam_prime / disc) - self.lam

    def _derivatives(self, b: Any):
        """The QD+ boundary function at ``b`` and its first two derivatives."""
        xp = self.xp
        dp = xp.log(b * self.dq / self.dr) / self.v + 0.5 * self.v
        dm = dp - self.v
        n_dp, e = _lower_tail(xp, dp)
        n_dm, _ = _lower_tail(xp, dm)
        phi = e * _INV_SQRT_2PI
        npv = self.dr * n_dm - b * self.dq * n_dp
        theta = (
            self.r * self.dr * n_dm
            - self.q * b * self.dq * n_dp
            - self.vol * self.vol * b / (2.0 * self.v) * self.dq * phi
        )
        one_m = 1.0 - self.dq * n_dp
        ar = self.alpha / (self.r * self.dr)
        f = one_m * b - self.beta * (1.0 - b - npv) + ar * theta
        charm = -self.dq * (phi * ((self.r - self.q) / self.v - dm / (2.0 * self.tau)) + self.q * n_dp)
        df = one_m + self.dq * phi / self.v + self.beta * one_m + ar * charm
        gamma = phi * self.dq / (self.v * b)
        colour = gamma * (self.q + (self.r - self.q) * dp / self.v + (1.0 - dp * dm) / (2.0 * self.tau))
        d2f = gamma * (1.0 - dp / self.v) + self.beta * gamma + ar * colour
        return f, df, d2f

    def boundary(self, start: Any, x_max: Any, iterations: int) -> Any:
        """Halley iterations from ``start``, kept in ``[1e-10·x_max, x_max]``."""
        xp = self.xp
        x = start
        for _ in range(iterations):
            f, df, d2f = self._derivatives(x)
            flat = df == 0.0
            df = xp.where(flat, 1.0, df)
            den = 1.0 - 0.5 * f * d2f / (df * df)
            step = f / df / xp.where(den > 0.1, den, 1.0)  # Halley, or Newton where it would blow up
            x = xp.clip(x - xp.where(flat, 0.0, step), 1e-10 * x_max, x_max)
        return x


def _bjerksund_stensland_boundary(xp: Any, tau: Any, r: Any, q: Any, vol: Any, x_max: Any) -> Any:
    """Bjerksund–Stensland (1993) flat exercise boundary of the unit put (via put–call symmetry).

    The call with rate ``q`` and yield ``r`` has perpetual boundary ``β/(β-1)``
    and ``B(0+) = max(1, q/r)``; the put's boundary is the reciprocal.
    """
    s2 = vol * vol
    b_c = q - r
    beta = (0.5 - b_c / s2) + xp.sqrt((b_c / s2 - 0.5) ** 2 + 2.0 * q / s2)
    inv_inf = xp.maximum(1.0 - 1.0 / beta, 0.0)  # 1 / (β/(β-1)); 0 where q = 0
    inv_0 = x_max  # 1 / max(1, q/r)
    # h = -(b_c τ + 2σ√τ) · B0 / (B∞ - B0), written with the reciprocals
    gap = xp.maximum(inv_0 - inv_inf, 1e-300)
    h = xp.minimum(-(b_c * tau + 2.0 * vol * xp.sqrt(tau)) * inv_inf / gap, 0.0)
    inv_trigger = inv_0 * inv_inf / xp.maximum(inv_0 + (inv_inf - inv_0) * xp.exp(h), 1e-300)
    return xp.clip(inv_trigger, 1e-10 * x_max, x_max)


# --- the American put ---------------------------------------------------------
class AmericanPut:
    """Spot-independent state of unit-strike American puts: exercise boundary and quadrature constants.

    Built from 1-D arrays ``(tau, r, q, vol)`` of one shape (the options).
    ``boundary`` is the critical spot/strike ratio at ``tau`` below which the
    put is exercised. ``early`` marks options for which early exercise can pay
    (positive rate, time and volatility); elsewhere the value is European.
    :meth:`take` gathers options, :meth:`value` values them at spot/strike ratios.
    """

    # per-option fields, shape (...); per-option-and-point fields, shape (..., p)
    _FIELDS = ("early", "boundary", "v", "inv_v", "mu", "dr", "dq", "fwd_ratio", "is_bs")
    _POINT_FIELDS = ("pr_c", "pr_w1", "pr_w1g", "pr_w2")

    def __init__(self, xp: Any, tau: Any, r: Any, q: Any, vol: Any) -> None:
        self.xp = xp
        n_opt = tau.shape[0]
        parts = []
        chunk = _GPU_CHUNK if is_cupy_namespace(xp) else _CHUNK  # on a GPU an operation is a kernel launch
        for lo in range(0, max(n_opt, 1), chunk):
            hi = min(lo + chunk, n_opt)
            parts.append(_solve(xp, tau[lo:hi], r[lo:hi], q[lo:hi], vol[lo:hi]))
        for name in self._FIELDS + self._POINT_FIELDS:
            arrays = [part[name] for part in parts]
            setattr(self, name, arrays[0] if len(arrays) == 1 else xp.concat(arrays, axis=0))
        # at premium point k: d₊ = ln x / (v·s_k) + pr_c and d₋ = d₊ - v·s_k, with v = σ√T
        pr_s = _scheme(N_NODES, N_FP_POINTS, N_PRICE_POINTS)[4]
        self.pr_s = as_float(xp, pr_s, like=self.v)
        self.pr_inv_s = as_float(xp, [1.0 / s for s in pr_s], like=self.v)

    def take(self, index: Any) -> "AmericanPut":
        """A copy holding the options at ``index`` (integer array of any shape); fields take its shape."""
        xp = self.xp
        flat = xp.reshape(index, (-1,))
        new = object.__new__(AmericanPut)
        new.xp = xp
        new.pr_inv_s, new.pr_s = self.pr_inv_s, self.pr_s
        for name in self._FIELDS:
            setattr(new, name, xp.reshape(xp.take(getattr(self, name), flat, axis=0), index.shape))
        for name in self._POINT_FIELDS:
            a = getattr(self, name)
            setattr(new, name, xp.reshape(xp.take(a, flat, axis=0), (*index.shape, a.shape[-1])))
        return new

    def value(self, x: Any) -> Any:
        """Unit-strike American put value at spot/strike ratio ``x`` (broadcasts with the state's shape)."""
        xp = self.xp
        x = as_float(xp, x, like=self.v)
        y = xp.log(xp.maximum(x, 1e-300))
        # European: one exponential serves both tails
        d1 = y * self.inv_v + self.mu
        n1, e = _lower_tail(xp, d1, mills_ratio_hart)
        d2 = d1 - self.v
        a = xp.abs(d2)
        t2 = e * (x * self.fwd_ratio) * mills_ratio_hart(a)
        n2 = xp.where(d2 > 0.0, t2, 1.0 - t2)
        euro = xp.maximum(self.dr * n2 - x * self.dq * n1, 0.0)
        euro = xp.where(self.is_bs, euro, xp.maximum(self.dr - x * self.dq, 0.0))
        # early-exercise premium: Σ_k w1_k Φ(-d₋) - x Σ_k w2_k Φ(-d₊), again one exponential a point
        dp = (y * self.inv_v)[..., None] * self.pr_inv_s + self.pr_c
        n_p, e = _lower_tail(xp, dp)
        dm = dp - self.v[..., None] * self.pr_s
        part = e * _mills_ratio_short(xp.abs(dm))
        part *= self.pr_w1g
        part *= x[..., None]
        part = xp.where(dm > 0.0, part, self.pr_w1 - part)
        n_p *= self.pr_w2
        premium = xp.sum(part, axis=-1) - x * xp.sum(n_p, axis=-1)
        intrinsic = 1.0 - x
        value = xp.where(x > self.boundary, euro + premium, intrinsic)
        value = xp.maximum(value, xp.maximum(euro, intrinsic))
        return xp.where(self.early, value, xp.maximum(euro, intrinsic))


def _solve(xp: Any, tau: Any, r: Any, q: Any, vol: Any) -> dict[str, Any]:
    """The per-option fields of :class:`AmericanPut` for 1-D inputs (one chunk of options)."""
    n, l, p = N_NODES, N_FP_POINTS, N_PRICE_POINTS
    node, fp_g, fp_w, fp_interp, pr_s, pr_w, pr_h, pr_interp = _scheme(n, l, p)

    def const(a: Any) -> Any:
        return as_float(xp, a, like=tau)

    # European constants, from the true inputs: d₊ = ln x / v + mu, φ(d₋)/φ(d₊) = x · dq/dr
    tau_pos = xp.maximum(tau, 0.0)
    v = vol * xp.sqrt(tau_pos)
    is_bs = v > 0.0
    v = xp.where(is_bs, v, 1.0)
    inv_v = 1.0 / v
    dr = xp.exp(-r * tau_pos)
    dq = xp.exp(-q * tau_pos)
    out = {"is_bs": is_bs, "v": v, "inv_v": inv_v, "dr": dr, "dq": dq}
    out["mu"] = (r - q) * tau_pos * inv_v + 0.5 * v
    out["fwd_ratio"] = dq / dr

    # the boundary, with harmless stand-ins where early exercise never pays
    early = (r > _RATE_MIN) & (tau > 0.0) & (vol > 0.0)
    out["early"] = early
    tau = xp.where(early, tau, 1.0)
    r = xp.where(early, r, 0.05)
    q = xp.where(early, q, 0.0)
    vol = xp.where(early, vol, 0.2)
    x_max = xp.where(q > 0.0, xp.minimum(1.0, r / xp.where(q > 0.0, q, 1.0)), 1.0)
    ln_xmax = xp.log(x_max)
    lo_b, hi_b = _B_FLOOR * x_max[:, None], x_max[:, None]

    # collocation nodes √τ_j = √T · node_j (j = 1..n): QD+ from Bjerksund–Stensland
    sqrt_t = xp.sqrt(tau)
    s_j = sqrt_t[:, None] * const(node)[None, :]  # (N, n)
    tau_j = s_j * s_j
    r2, q2, vol2 = r[:, None], q[:, None], vol[:, None]
    b = _bjerksund_stensland_boundary(xp, tau_j, r2, q2, vol2, hi_b)
    b = xp.clip(_QdPlus(xp, tau_j, r2, q2, vol2).boundary(b, hi_b, N_QD_ITER), lo_b, hi_b)

    # fixed-point iterations of FP-B, the first a Jacobi–Newton step; H = ln(B/B(0+))²
    fp = _FixedPoint(xp, tau_j, s_j, r, q, vol, const(fp_g), const(fp_w), const(fp_interp), n, l)
    for it in range(N_FP_ITER):
        h = xp.log(b) - ln_xmax[:, None]
        b = xp.clip(fp.step(h * h, ln_xmax, newton=(it == 0)), lo_b, hi_b)
    out["boundary"] = xp.where(early, b[:, -1], 0.0)
    h = xp.log(b) - ln_xmax[:, None]

    # premium constants at t_k = T·h_k, the boundary taken at τ = T - t_k
    h_k = xp.matmul(h * h, const(pr_interp))  # (N, p)
    ln_b = ln_xmax[:, None] - xp.sqrt(xp.maximum(h_k, 0.0))
    t_k = tau[:, None] * const(pr_h)[None, :]
    v_k = (vol * sqrt_t)[:, None] * const(pr_s)[None, :]
    w = tau[:, None] * const(pr_w)[None, :]
    out["pr_c"] = ((r - q)[:, None] * t_k - ln_b) / v_k + 0.5 * v_k
    out["pr_w1"] = w * r[:, None] * xp.exp(-r[:, None] * t_k)
    out["pr_w1g"] = out["pr_w1"] * xp.exp((r - q)[:, None] * t_k - ln_b)
    out["pr_w2"] = w * q[:, None] * xp.exp(-q[:, None] * t_k)
    return out


class _FixedPoint:
    """One fixed-point sweep of ALO's FP-B equation at the collocation nodes, vectorised."""

    def __init__(self, xp, tau_j, s_j, r, q, vol, g, w, interp, n, l):
        self.xp = xp
        self.interp = interp  # (n, n·l): node values of H to its values at u_jk
        rq = (r - q)[:, None, None]
        r3, q3 = r[:, None, None], q[:, None, None]
        u = tau_j[:, :, None] * g[None, None, :]  # (N, n, l)
        rem = tau_j[:, :, None] - u  # τ_j - u > 0
        self.v_rem = vol[:, None, None] * s_j[:, :, None] * xp.sqrt(1.0 - g)[None, None, :]
        self.drift = rq * rem
        wt = tau_j[:, :, None] * w[None, None, :]
        self.wn = wt * r3 * xp.exp(r3 * u)
        self.wd = wt * q3 * xp.exp(q3 * u)
        self.v_j = vol[:, None] * s_j
        self.drift_j = (r - q)[:, None] * tau_j
        self.fwd_j = xp.exp(-self.drift_j)
        self.ln_shape = (tau_j.shape[0], n, l)

    def step(self, h: Any, ln_xmax: Any, newton: bool) -> Any:
        xp = self.xp
        ln_b = ln_xmax[:, None] - xp.sqrt(h)  # (N, n)
        h_u = xp.reshape(xp.matmul(h, self.interp), self.ln_shape)
        ln_bu = ln_xmax[:, None, None] - xp.sqrt(xp.maximum(h_u, 0.0))
        dp = (ln_b[:, :, None] - ln_bu + self.drift) / self.v_rem + 0.5 * self.v_rem
        n_dp, _ = _lower_tail(xp, dp)
        n_dm, _ = _lower_tail(xp, dp - self.v_rem)
        ni = xp.sum(self.wn * (1.0 - n_dm), axis=-1)
        di = xp.sum(self.wd * (1.0 - n_dp), axis=-1)
        d0 = (ln_b + self.drift_j) / self.v_j + 0.5 * self.v_j
        t0p, e0 = _lower_tail(xp, d0)
        t0m, e1 = _lower_tail(xp, d0 - self.v_j)
        num = (1.0 - t0m) + ni
        den = xp.maximum((1.0 - t0p) + di, 1e-100)
        ratio = num / den
        f = self.fwd_j * ratio
        if not newton:
            return f
        b = xp.exp(ln_b)
        scale = _INV_SQRT_2PI / (b * self.v_j)
        fd = self.fwd_j * scale * (e1 - e0 * ratio) / den
        slope = fd - 1.0
        jn = b - (f - b) / xp.where(slope < -1e-3, slope, -1.0)
        return xp.where((slope < -1e-3) & (jn > 0.0), jn, f)


# --- public functions ----------------------------------------------------------
def _symmetric_inputs(xp: Any, is_call: Any, spot: Any, strike: Any, rate: Any, q: Any):
    """Unit-put inputs: ``(x, scale, r_eff, q_eff)`` with value = scale · v(x; r_eff, q_eff)."""
    x = xp.where(is_call, strike / spot, spot / strike)
    scale = xp.where(is_call, spot, strike)
    return x, scale, xp.where(is_call, q, rate), xp.where(is_call, rate, q)


def _prepare(is_call, spot, strike, t, vol, rate, dividend_yield):
    xp = namespace(is_call, spot, strike, t, vol, rate, dividend_yield)
    spot, strike, t, vol, rate, q = broadcast_float(xp, spot, strike, t, vol, rate, dividend_yield)
    call = xp.broadcast_to(as_bool(xp, is_call, like=spot), spot.shape)
    return xp, call, spot, strike, t, vol, rate, q


def american_price(
    is_call: Any, spot: Any, strike: Any, t: Any, vol: Any, rate: Any, dividend_yield: Any = 0.0
) -> Any:
    """American option value per unit of underlying, broadcast over the inputs, float64.

    ``t <= 0`` gives the intrinsic value; at zero volatility the value is the
    best discounted intrinsic value of the forward over exercise times. Calls
    on non-dividend-paying underlyings equal their European value, as do puts
    at rates ≤ 0.
    """
    xp, call, spot, strike, t, vol, rate, q = _prepare(is_call, spot, strike, t, vol, rate, dividend_yield)
    shape = spot.shape
    x, scale, r_eff, q_eff = _symmetric_inputs(xp, call, spot, strike, rate, q)
    live = (t > 0.0) & (vol > 0.0)
    flat = [xp.reshape(a, (-1,)) for a in (xp.where(live, t, 1.0), r_eff, q_eff, xp.where(live, vol, 0.2))]
    state = AmericanPut(xp, *flat)
    unit = xp.reshape(state.value(xp.reshape(x, (-1,))), shape)
    intrinsic = xp.maximum(1.0 - x, 0.0)
    # zero volatility: the best of e^{-rs} - x e^{-qs} over exercise times s in [0, t],
    # at s = 0, s = t or the stationary point s* = ln(r / (q x)) / (r - q)
    tt = xp.maximum(t, 0.0)
    ratio = r_eff / xp.where(q_eff * x > 0.0, q_eff * x, 1.0)
    ok = (r_eff != q_eff) & (q_eff * x > 0.0) & (ratio > 0.0)
    s_star = xp.log(xp.where(ok, ratio, 1.0)) / xp.where(ok, r_eff - q_eff, 1.0)
    s_star = xp.where(ok & (s_star > 0.0) & (s_star < tt), s_star, 0.0)
    frozen = xp.maximum(
        xp.exp(-r_eff * tt) - x * xp.exp(-q_eff * tt), xp.exp(-r_eff * s_star) - x * xp.exp(-q_eff * s_star)
    )
    unit = xp.where(live, unit, xp.where(t > 0.0, xp.maximum(frozen, intrinsic), intrinsic))
    exercise = xp.maximum(xp.where(call, spot - strike, strike - spot), 0.0)
    return xp.where(t > 0.0, xp.maximum(scale * unit, exercise), exercise)


def american_boundary(
    is_call: Any, spot: Any, strike: Any, t: Any, vol: Any, rate: Any, dividend_yield: Any = 0.0
) -> Any:
    """Critical spot of immediate exercise now, with ``t`` years to expiry, float64.

    A put is exercised at spots at or below it, a call at or above it; ``inf``
    (calls) or 0 (puts) where early exercise never pays.
    """
    xp, call, spot, strike, t, vol, rate, q = _prepare(is_call, spot, strike, t, vol, rate, dividend_yield)
    shape = spot.shape
    _, _, r_eff, q_eff = _symmetric_inputs(xp, call, spot, strike, rate, q)
    live = (t > 0.0) & (vol > 0.0)
    flat = [xp.reshape(a, (-1,)) for a in (xp.where(live, t, 1.0), r_eff, q_eff, xp.where(live, vol, 0.2))]
    state = AmericanPut(xp, *flat)
    early = xp.reshape(state.early, shape) & live
    b = xp.reshape(state.boundary, shape)
    put_b = xp.where(early, strike * b, 0.0)
    call_b = xp.where(early, strike / xp.where(early, b, 1.0), xp.inf)
    return xp.where(call, call_b, put_b)
