"""A realistic synthetic firm book: positions, market, accounts, scenarios and a job file (SPEC 9).

``write_book(out, n_positions, seed)`` writes, deterministically for a seed:

- ``positions/part-00000.parquet`` ... : exactly ``n_positions`` rows, whole
  accounts per file, about :data:`ROWS_PER_FILE` rows a file; an extra column
  ``strategy`` names the archetype each position belongs to;
- ``market.parquet``: ~300 underlyings: single stocks and ETFs (``equity``;
  ETFs that track an index say so in ``tracks``), broad indexes (high-cap and
  other) and narrow (sector) indexes; realistic spots, yields and vols;
- ``accounts.parquet``: cash chosen so that a few percent of accounts are in
  deficit under a simple proxy requirement (15% of the gross notional of
  stock, short options and futures); ``archetype`` names the account's main
  strategy;
- ``scenarios.parquet``: sample joint scenarios (SPEC 5.2);
- ``job.toml``: a job that runs the book (``gpu-margin run DIR/job.toml``).

Accounts are generated and written in batches (about 200k positions), so a
book of 10M positions never sits in memory at once. Option ivs follow a smile
by moneyness around each underlying's market vol; marks are model values
(:func:`gpu_margin.option_price`) at those ivs, so marks and ivs agree.
Index options are European, equity and ETF options American; strikes sit on
listed increments; expiries are monthly third Fridays up to two years out
(futures: quarterly).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._exceptions import JobError
from ._schema import ACCOUNTS_SCHEMA, DAYS_PER_YEAR, MARKET_SCHEMA, POSITIONS_SCHEMA, SCENARIOS_SCHEMA

ASOF = _dt.date(2024, 6, 3)
RATE = 0.045
ROWS_PER_FILE = 1_000_000
ACCOUNTS_PER_BATCH = 25_000
MAX_POSITIONS = 2_000_000_000
DEFICIT_SHARE = 0.03
PROXY_RATE = 0.15
_PRICE_CHUNK = 8192

POSITIONS_OUT_SCHEMA = POSITIONS_SCHEMA.append(pa.field("strategy", pa.string()))
ACCOUNTS_OUT_SCHEMA = ACCOUNTS_SCHEMA.append(pa.field("archetype", pa.string()))
_PARQUET = {"compression": "zstd", "use_dictionary": True}

# ---------------------------------------------------------------- the universe

STOCK, ETF, INDEX = 0, 1, 2
# name, product group, spot, vol, dividend yield, futures multiplier (0 = no future)
_INDEXES = (
    ("SPX", "broad_index_high_cap", 5280.0, 0.14, 0.013, 50.0),
    ("NDX", "broad_index_high_cap", 18500.0, 0.18, 0.008, 20.0),
    ("RUT", "broad_index_high_cap", 2070.0, 0.21, 0.014, 50.0),
    ("DJX", "broad_index_high_cap", 387.0, 0.13, 0.019, 500.0),
    ("OEX", "broad_index", 2500.0, 0.15, 0.014, 0.0),
    ("MID", "broad_index", 2900.0, 0.17, 0.016, 0.0),
    ("SML", "broad_index", 1330.0, 0.20, 0.017, 0.0),
    ("NYA", "broad_index", 17800.0, 0.13, 0.020, 0.0),
    ("SOX", "narrow_index", 5100.0, 0.32, 0.007, 0.0),
    ("BKX", "narrow_index", 95.0, 0.22, 0.032, 0.0),
    ("XAU", "narrow_index", 140.0, 0.33, 0.015, 0.0),
    ("OSX", "narrow_index", 88.0, 0.30, 0.025, 0.0),
    ("UTY", "narrow_index", 930.0, 0.16, 0.033, 0.0),
)
# ETFs that track one of the indexes: name, index, spot/index ratio
_TRACKING_ETFS = (
    ("SPY", "SPX", 0.1), ("IVV", "SPX", 0.1005), ("QQQ", "NDX", 0.02417), ("IWM", "RUT", 0.1),
    ("DIA", "DJX", 1.0), ("MDY", "MID", 0.1824), ("IJR", "SML", 0.0805), ("SMH", "SOX", 0.0478),
    ("KBE", "BKX", 0.49), ("GDX", "XAU", 0.245), ("OIH", "OSX", 3.4), ("XLU", "UTY", 0.074),
)
# other ETFs: name, spot, vol, yield
_OTHER_ETFS = (
    ("XLF", 41.0, 0.16, 0.017), ("XLE", 92.0, 0.22, 0.033), ("XLK", 220.0, 0.20, 0.007),
    ("XLV", 145.0, 0.13, 0.015), ("EEM", 43.0, 0.17, 0.022), ("EFA", 79.0, 0.14, 0.030),
    ("TLT", 91.0, 0.16, 0.038), ("HYG", 77.0, 0.06, 0.058), ("GLD", 215.0, 0.15, 0.0),
    ("SLV", 27.0, 0.30, 0.0), ("USO", 78.0, 0.32, 0.0), ("XBI", 92.0, 0.30, 0.001),
    ("ARKK", 48.0, 0.45, 0.0), ("KRE", 50.0, 0.30, 0.030), ("XOP", 145.0, 0.30, 0.025),
)
N_STOCKS = 270


@dataclass(frozen=True)
class Universe:
    """The underlyings of a book, as parallel arrays indexed by underlying number."""

    names: np.ndarray  # object
    cls: np.ndarray  # STOCK, ETF, INDEX
    group: np.ndarray  # object
    spot: np.ndarray
    vol: np.ndarray
    q: np.ndarray
    tracks: np.ndarray  # object, None where none
    american: np.ndarray  # bool
    increment: np.ndarray  # listed strike increment
    skew: np.ndarray
    convexity: np.ndarray
    fut_mult: np.ndarray  # 0 where no future
    popularity: np.ndarray
    hedge_pairs: np.ndarray  # (n, 2) [etf, index] of tracking ETFs


def _tickers(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    out: list[str] = []
    while len(out) < n:
        length = int(rng.choice([2, 3, 3, 4, 4, 4]))
        name = "".join(rng.choice(letters, size=length))
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def _increment(spot: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Listed strike increments: $1 below $25, $2.50 to $200, $5 to $500, $10 above (ETFs $1); indexes by level."""
    stock = np.select([spot < 25, spot < 200, spot < 500], [1.0, 2.5, 5.0], 10.0)
    etf = np.where(spot < 25, 0.5, 1.0)
    index = np.select([spot < 500, spot < 10000], [1.0, 5.0], 25.0)
    return np.select([cls == STOCK, cls == ETF], [stock, etf], index)


def build_universe(seed: int) -> Universe:
    """The underlyings of the book for ``seed``: fixed indexes and ETFs, ~270 random single stocks."""
    rng = np.random.default_rng([seed, 7_000_001])
    names: list[str] = []
    cls: list[int] = []
    group: list[str] = []
    spot: list[float] = []
    vol: list[float] = []
    q: list[float] = []
    tracks: list[str | None] = []
    fut: list[float] = []
    pop: list[float] = []
    index_no = {}
    for name, grp, s, v, y, fm in _INDEXES:
        index_no[name] = len(names)
        names.append(name), cls.append(INDEX), group.append(grp), spot.append(s), vol.append(v)
        q.append(y), tracks.append(None), fut.append(fm)
        pop.append({"SPX": 30.0, "NDX": 8.0, "RUT": 6.0}.get(name, 1.0))
    pairs = []
    for name, idx, ratio in _TRACKING_ETFS:
        i = index_no[idx]
        pairs.append((len(names), i))
        names.append(name), cls.append(ETF), group.append("equity"), spot.append(round(spot[i] * ratio, 2))
        vol.append(round(vol[i] * 1.02, 4)), q.append(q[i]), tracks.append(idx), fut.append(0.0)
        pop.append({"SPY": 40.0, "QQQ": 20.0, "IWM": 10.0}.get(name, 2.0))
    for name, s, v, y in _OTHER_ETFS:
        names.append(name), cls.append(ETF), group.append("equity"), spot.append(s), vol.append(v)
        q.append(y), tracks.append(None), fut.append(0.0), pop.append(2.0)
    taken = set(names)
    st_names = _tickers(rng, N_STOCKS, taken)
    st_spot = np.round(np.clip(np.exp(rng.normal(np.log(80.0), 0.9, N_STOCKS)), 2.0, 3000.0), 2)
    st_vol = np.clip(np.exp(rng.normal(np.log(0.32), 0.35, N_STOCKS)) * (80.0 / st_spot) ** 0.08, 0.12, 1.5)
    payer = (rng.random(N_STOCKS) < 0.6) & (st_vol < 0.5)
    st_q = np.where(payer, rng.uniform(0.003, 0.045, N_STOCKS), 0.0)
    st_pop = 12.0 / np.arange(1, N_STOCKS + 1) ** 0.8  # a few mega caps, a long tail
    names += st_names
    cls += [STOCK] * N_STOCKS
    group += ["equity"] * N_STOCKS
    spot += st_spot.tolist()
    vol += np.round(st_vol, 4).tolist()
    q += np.round(st_q, 4).tolist()
    tracks += [None] * N_STOCKS
    fut += [0.0] * N_STOCKS
    pop += st_pop.tolist()
    cls_a = np.array(cls, dtype=np.int8)
    spot_a = np.array(spot, dtype=np.float64)
    grp = np.array(group, dtype=object)
    broad = np.isin(grp, ["broad_index_high_cap", "broad_index"])
    return Universe(
        names=np.array(names, dtype=object),
        cls=cls_a,
        group=grp,
        spot=spot_a,
        vol=np.array(vol, dtype=np.float64),
        q=np.array(q, dtype=np.float64),
        tracks=np.array(tracks, dtype=object),
        american=cls_a != INDEX,
        increment=_increment(spot_a, cls_a),
        skew=np.select([broad, cls_a == INDEX, cls_a == ETF], [-0.9, -0.6, -0.6], -0.35),
        convexity=np.select([broad, cls_a == INDEX], [0.9, 0.8], 0.7),
        fut_mult=np.array(fut, dtype=np.float64),
        popularity=np.array(pop, dtype=np.float64),
        hedge_pairs=np.array(pairs, dtype=np.int64),
    )


def third_friday(year: int, month: int) -> _dt.date:
    first = _dt.date(year, month, 1)
    return first + _dt.timedelta(days=(4 - first.weekday()) % 7 + 14)


def monthly_expiries(asof: _dt.date, years: float = 2.0) -> np.ndarray:
    """Third Fridays after ``asof`` up to ``years`` ahead, as ``datetime64[D]``."""
    out = []
    y, m = asof.year, asof.month
    last = asof + _dt.timedelta(days=int(round(365 * years)))
    while True:
        d = third_friday(y, m)
        if d > last:
            break
        if d > asof:
            out.append(d)
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return np.array(out, dtype="datetime64[D]")


def implied_vol_smile(u: Universe, und: np.ndarray, strike: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Option iv by moneyness: ``atm(T) · (1 + skew·x + convexity·x²)``, ``x = ln(K/F)/sqrt(T)``.

    ``atm(T)`` is the underlying's market vol with a gentle upward term
    structure; puts (x < 0) are richer than calls. Clipped to [0.35, 4] × atm.
    """
    vol = u.vol[und]
    tt = np.maximum(t, 1.0 / 52.0)
    fwd = u.spot[und] * np.exp((RATE - u.q[und]) * t)
    atm = vol * np.clip(1.0 + 0.03 * (np.sqrt(tt / 0.25) - 1.0), 0.9, 1.15)
    x = np.log(strike / fwd) / np.sqrt(tt)
    smile = 1.0 + u.skew[und] * x + u.convexity[und] * x * x
    return np.clip(atm * np.clip(smile, 0.35, 4.0), 0.03, 3.0)


# ---------------------------------------------------------------- strategies

ARCHETYPES = (
    "long_stock",
    "short_stock",
    "covered_call",
    "protective_put",
    "collar",
    "vertical_spread",
    "iron_condor",
    "naked_short_put",
    "naked_short_call",
    "short_straddle",
    "index_hedge",
    "futures",
    "concentrated",
)
_ARCHETYPE_WEIGHTS = np.array([24, 4, 12, 6, 5, 10, 6, 8, 3, 3, 6, 5, 7], dtype=np.float64)
_KIND_STOCK, _KIND_OPTION, _KIND_FUTURE = 0, 1, 2
_NO_RIGHT, _CALL, _PUT = 0, 1, 2


class _Batch:
    """Randomness and market context for one batch of accounts."""

    def __init__(self, u: Universe, rng: np.random.Generator, expiries: np.ndarray, fut_expiries: np.ndarray):
        self.u = u
        self.rng = rng
        self.expiries = expiries
        self.fut_expiries = fut_expiries
        self.t = (expiries - np.datetime64(ASOF, "D")).astype(np.int64) / DAYS_PER_YEAR
        self.fut_t = (fut_expiries - np.datetime64(ASOF, "D")).astype(np.int64) / DAYS_PER_YEAR
        pools = {
            "stock": u.cls == STOCK,
            "etf": u.cls == ETF,
            "equity": u.cls != INDEX,
            "index_etf": (u.cls == INDEX) | (u.tracks != None),  # noqa: E711
            "any": np.ones(len(u.names), dtype=bool),
            "future": u.fut_mult > 0,
        }
        self.pools = {}
        for name, mask in pools.items():
            idx = np.flatnonzero(mask)
            w = u.popularity[idx]
            self.pools[name] = (idx, np.cumsum(w) / w.sum())

    def pick(self, pool: str, n: int) -> np.ndarray:
        idx, cdf = self.pools[pool]
        return idx[np.minimum(np.searchsorted(cdf, self.rng.random(n), side="right"), len(idx) - 1)]

    def expiry(self, n: int, decay: float = 1.1) -> np.ndarray:
        w = 1.0 / np.arange(1, len(self.expiries) + 1) ** decay
        cdf = np.cumsum(w) / w.sum()
        return np.minimum(np.searchsorted(cdf, self.rng.random(n), side="right"), len(self.expiries) - 1)

    def strike(self, und: np.ndarray, exp: np.ndarray, z: np.ndarray) -> np.ndarray:
        """A listed strike ``z`` standard deviations from the forward."""
        u = self.u
        t = self.t[exp]
        fwd = u.spot[und] * np.exp((RATE - u.q[und]) * t)
        raw = fwd * np.exp(z * u.vol[und] * np.sqrt(t))
        inc = u.increment[und]
        return inc * np.maximum(1.0, np.round(raw / inc))

    def width(self, und: np.ndarray) -> np.ndarray:
        """A spread width: 1 to 10 strike increments, at least ~2% of spot."""
        inc = self.u.increment[und]
        k = self.rng.integers(1, 11, len(und))
        return inc * np.maximum(k, np.ceil(0.02 * self.u.spot[und] / inc))

    def uniform(self, lo: float, hi: float, n: int) -> np.ndarray:
        return self.rng.uniform(lo, hi, n)

    def shares(self, lots: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return np.maximum(1.0, np.round(lots * self.uniform(lo, hi, len(lots))) * 10.0)


@dataclass
class _Legs:
    """Legs of n strategies: leg ``j`` of every strategy, as parallel arrays."""

    kind: list[np.ndarray]
    und: list[np.ndarray]
    right: list[np.ndarray]
    exp: list[np.ndarray]  # index into monthly (options) or quarterly (futures) expiries; -1 stock
    strike: list[np.ndarray]
    qty: list[np.ndarray]
    present: list[np.ndarray]  # bool: whether the strategy has this leg


def _new_legs() -> _Legs:
    return _Legs([], [], [], [], [], [], [])


def _add(legs: _Legs, n: int, kind: int, und, right: int, exp, strike, qty, present=None) -> None:
    legs.kind.append(np.full(n, kind, dtype=np.int8))
    legs.und.append(np.broadcast_to(und, (n,)).astype(np.int64))
    legs.right.append(np.full(n, right, dtype=np.int8))
    legs.exp.append(np.broadcast_to(exp, (n,)).astype(np.int64))
    legs.strike.append(np.broadcast_to(strike, (n,)).astype(np.float64))
    legs.qty.append(np.broadcast_to(qty, (n,)).astype(np.float64))
    legs.present.append(np.ones(n, dtype=bool) if present is None else present)


def _stock(legs: _Legs, n: int, und, qty, present=None) -> None:
    _add(legs, n, _KIND_STOCK, und, _NO_RIGHT, -1, np.nan, qty, present)


def _option(legs: _Legs, n: int, und, right: int, exp, strike, qty, present=None) -> None:
    _add(legs, n, _KIND_OPTION, und, right, exp, strike, qty, present)


def _long_stock(b: _Batch, lots: np.ndarray) -> _Legs:
    n = len(lots)
    legs = _new_legs()
    _stock(legs, n, b.pick("equity", n), b.shares(lots, 2, 40))
    return legs


def _short_stock(b: _Batch, lots: np.ndarray) -> _Legs:
    n = len(lots)
    legs = _new_legs()
    _stock(legs, n, b.pick("equity", n), -b.shares(lots, 1, 20))
    return legs


def _covered_call(b: _Batch, lots: np.ndarray) -> _Legs:
    n = len(lots)
    und, exp = b.pick("equity", n), b.expiry(n, 1.5)
    legs = _new_legs()
    _stock(legs, n, und, 100.0 * lots)
    _option(legs, n, und, _CALL, exp, b.strike(und, exp, b.uniform(0.2, 1.2, n)), -lots)
    return legs


def _protective_put(b: _Batch, lots: np.ndarray) -> _Legs:
    n = len(lots)
    und, exp = b.pick("equity", n), b.expiry(n, 0.8)
    legs = _new_legs()
    _stock(legs, n, und, 100.0 * lots)
    _option(legs, n, und, _PUT, exp, b.strike(und, exp, -b.uniform(0.3, 1.2, n)), lots)
    return legs


def _collar(b: _Batch, lots: np.ndarray) -> _Legs:
    n = len(lots)
    und, exp = b.pick("equity", n), b.expiry(n, 1.0)
    legs = _new_legs()
    _stock(legs, n, und, 100.0 * lots)
    _option(legs, n, und, _PUT, exp, b.strike(und, exp, -b.uniform(0.5, 1.2, n)), lots)
    _option(legs, n, und, _CALL, exp, b.strike(und, exp, b.uniform(0.5, 1.2, n)), -lots)
    return legs


def _vertical_spread(b: _Batch, lots: np.ndarray) -> _Legs:
    """Debit or credit spreads of calls or puts; the second strike further out of the money."""
    n = len(lots)
    und, exp = b.pick("any", n), b.expiry(n, 1.2)
    call = b.rng.random(n) < 0.5
    debit = b.rng.random(n) < 0.5
    w = b.width(und)
    k1 = b.strike(und, exp, b.uniform(-0.5, 0.5, n))
    k1 = np.where(call, k1, np.maximum(k1, w + b.u.increment[und]))
    k2 = np.where(call, k1 + w, k1 - w)
    sign = np.where(debit, 1.0, -1.0) * lots
    legs = _new_legs()
    _option(legs, n, und, _CALL, exp, k1, sign, present=call)
    _option(legs, n, und, _CALL, exp, k2, -sign, present=call)
    _option(legs, n, und, _PUT, exp, k1, sign, present=~call)
    _option(legs, n, und, _PUT, exp, k2, -sign, present=~call)
    return legs


def _iron_condor(b: _Batch, lots: np.ndarray) -> _Legs:
    n = len(lots)
    und, exp = b.pick("index_etf", n), b.expiry(n, 1.6)
    w = b.width(und)
    kp = np.maximum(b.strike(und, exp, -b.uniform(0.6, 1.3, n)), w + b.u.increment[und])
    kc = np.maximum(b.strike(und, exp, b.uniform(0.6, 1.3, n)), kp + b.u.increment[und])
    legs = _new_legs()
    _option(legs, n, und, _PUT, exp, kp - w, lots)
    _option(legs, n, und, _PUT, exp, kp, -lots)
    _option(legs, n, und, _CALL, exp, kc, -lots)
    _option(legs, n, und, _CALL, exp, kc + w, lots)
    return legs


def _naked_short_put(b: _Batch, lots: np.ndarray) -> _Legs:
    n = len(lots)
    und, exp = b.pick("any", n), b.expiry(n, 1.4)
    legs = _new_legs()
    _option(legs, n, und, _PUT, exp, b.strike(und, exp, -b.uniform(0.3, 1.5, n)), -lots)
    return legs


def _naked_short_call(b: _Batch, lots: np.ndarray) -> _Legs:
    n = len(lots)
    und, exp = b.pick("any", n), b.expiry(n, 1.4)
    legs = _new_legs()
    _option(legs, n, und, _CALL, exp, b.strike(und, exp, b.uniform(0.3, 1.5, n)), -lots)
    return legs


def _short_straddle(b: _Batch, lots: np.ndarray) -> _Legs:
    n = len(lots)
    und, exp = b.pick("any", n), b.expiry(n, 1.4)
    k = b.strike(und, exp, np.zeros(n))
    legs = _new_legs()
    _option(legs, n, und, _CALL, exp, k, -lots)
    _option(legs, n, und, _PUT, exp, k, -lots)
    return legs


def _index_hedge(b: _Batch, lots: np.ndarray) -> _Legs:
    """ETF shares with index puts bought against them, or index calls sold against them (ETF cover)."""
    n = len(lots)
    pair = b.u.hedge_pairs[b.rng.integers(0, len(b.u.hedge_pairs), n)]
    etf, index = pair[:, 0], pair[:, 1]
    exp = b.expiry(n, 1.2)
    contracts = np.maximum(1.0, np.round(lots / 4.0))
    cover = b.u.spot[index] * 100.0 * contracts / b.u.spot[etf]
    shares = np.ceil(cover * b.uniform(1.0, 1.3, n) / 100.0) * 100.0
    sell_calls = b.rng.random(n) < 0.4
    legs = _new_legs()
    _stock(legs, n, etf, shares)
    _option(legs, n, index, _PUT, exp, b.strike(index, exp, -b.uniform(0.3, 1.2, n)), contracts, present=~sell_calls)
    _option(legs, n, index, _CALL, exp, b.strike(index, exp, b.uniform(0.3, 1.2, n)), -contracts, present=sell_calls)
    return legs


def _futures(b: _Batch, lots: np.ndarray) -> _Legs:
    """Index futures, long or short, some with an index put bought or call sold beside them."""
    n = len(lots)
    und = b.pick("future", n)
    fexp = b.rng.integers(0, len(b.fut_expiries), n)
    contracts = np.maximum(1.0, np.round(lots / 2.0))
    side = np.where(b.rng.random(n) < 0.6, 1.0, -1.0)
    exp = b.expiry(n, 1.5)
    hedge = b.rng.random(n) < 0.4
    legs = _new_legs()
    _add(legs, n, _KIND_FUTURE, und, _NO_RIGHT, fexp, np.nan, side * contracts)
    right_put = side > 0
    z = np.where(right_put, -b.uniform(0.3, 1.0, n), b.uniform(0.3, 1.0, n))
    k = b.strike(und, exp, z)
    _option(legs, n, und, _PUT, exp, k, contracts, present=hedge & right_put)
    _option(legs, n, und, _CALL, exp, k, contracts, present=hedge & ~right_put)
    return legs


def _concentrated(b: _Batch, lots: np.ndarray) -> _Legs:
    """One large single-name holding, sometimes with calls written on part of it."""
    n = len(lots)
    und = b.pick("stock", n)
    exp = b.expiry(n, 1.2)
    shares = np.round(lots * b.uniform(30, 300, n)) * 100.0
    written = b.rng.random(n) < 0.3
    calls = np.maximum(1.0, np.floor(shares / 100.0 * b.uniform(0.1, 0.5, n)))
    legs = _new_legs()
    _stock(legs, n, und, shares)
    _option(legs, n, und, _CALL, exp, b.strike(und, exp, b.uniform(0.5, 1.5, n)), -calls, present=written)
    return legs


_BUILDERS: dict[str, Callable[[_Batch, np.ndarray], _Legs]] = {
    "long_stock": _long_stock,
    "short_stock": _short_stock,
    "covered_call": _covered_call,
    "protective_put": _protective_put,
    "collar": _collar,
    "vertical_spread": _vertical_spread,
    "iron_condor": _iron_condor,
    "naked_short_put": _naked_short_put,
    "naked_short_call": _naked_short_call,
    "short_straddle": _short_straddle,
    "index_hedge": _index_hedge,
    "futures": _futures,
    "concentrated": _concentrated,
}


# ---------------------------------------------------------------- one batch of accounts


class _ContractCache:
    """iv and model value of every option contract priced so far, by integer contract key (sorted)."""

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.int64)
        self.iv = np.empty(0, dtype=np.float64)
        self.mark = np.empty(0, dtype=np.float64)

    def lookup(
        self, key: np.ndarray, u: Universe, und: np.ndarray, call: np.ndarray, strike: np.ndarray, t: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(iv, mark)`` per row; contracts not seen before are priced now (once each)."""
        from ._api import option_price  # noqa: PLC0415

        uniq, first = np.unique(key, return_index=True)
        pos = np.minimum(np.searchsorted(self.keys, uniq), max(len(self.keys) - 1, 0))
        known = (len(self.keys) > 0) & (self.keys[pos] == uniq) if len(self.keys) else np.zeros(len(uniq), bool)
        new = first[~known]
        if len(new):
            n_iv = implied_vol_smile(u, und[new], strike[new], t[new])
            n_mark = np.empty(len(new), dtype=np.float64)
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                for lo in range(0, len(new), _PRICE_CHUNK):  # bounded kernel temporaries
                    c = new[lo : lo + _PRICE_CHUNK]
                    n_mark[lo : lo + len(c)] = np.asarray(
                        option_price(call[c], u.spot[und[c]], strike[c], t[c], n_iv[lo : lo + len(c)], RATE,
                                     u.q[und[c]], u.american[und[c]]),
                        dtype=np.float64,
                    )
            if not np.all(np.isfinite(n_mark)):  # pragma: no cover - the kernels price every realistic contract
                raise RuntimeError("synthetic book: an option could not be priced")
            keys = np.concatenate([self.keys, key[new]])
            order = np.argsort(keys, kind="stable")
            self.keys = keys[order]
            self.iv = np.concatenate([self.iv, n_iv])[order]
            self.mark = np.concatenate([self.mark, np.maximum(n_mark, 0.0)])[order]
        at = np.searchsorted(self.keys, key)
        return self.iv[at], self.mark[at]


@dataclass
class _BatchOut:
    positions: pa.Table
    accounts: pa.Table


def _batch(
    u: Universe, seed: int, batch_no: int, first_account: int, n_accounts: int, max_rows: int,
    expiries: np.ndarray, fut_expiries: np.ndarray, cache: _ContractCache,
) -> _BatchOut:
    """Accounts ``first_account ..`` of one batch: at most ``max_rows`` positions (the last account cut)."""
    rng = np.random.default_rng([seed, batch_no])
    b = _Batch(u, rng, expiries, fut_expiries)
    # heavy-tailed account sizes: strategies per account and lots per strategy
    w = rng.pareto(1.4, n_accounts)
    n_strat = 1 + np.minimum(np.floor(w * 1.5), 1500).astype(np.int64)
    size = (1.0 + rng.pareto(1.6, n_accounts)) * (1.0 + w) ** 0.3
    primary = np.searchsorted(np.cumsum(_ARCHETYPE_WEIGHTS) / _ARCHETYPE_WEIGHTS.sum(), rng.random(n_accounts), "right")
    primary = np.minimum(primary, len(ARCHETYPES) - 1)
    s_acct = np.repeat(np.arange(n_accounts), n_strat)
    s_first = np.r_[True, s_acct[1:] != s_acct[:-1]]
    other = np.searchsorted(np.cumsum(_ARCHETYPE_WEIGHTS) / _ARCHETYPE_WEIGHTS.sum(), rng.random(len(s_acct)), "right")
    other = np.minimum(other, len(ARCHETYPES) - 1)
    s_arch = np.where(s_first | (rng.random(len(s_acct)) < 0.6), primary[s_acct], other)
    s_lots = np.maximum(1.0, np.round(size[s_acct] * np.exp(rng.normal(0.0, 0.5, len(s_acct)))))

    parts = []
    for a, name in enumerate(ARCHETYPES):
        sel = np.flatnonzero(s_arch == a)
        if not len(sel):
            continue
        legs = _BUILDERS[name](b, s_lots[sel])
        for j in range(len(legs.kind)):
            keep = legs.present[j]
            parts.append(
                (
                    sel[keep], np.full(keep.sum(), j, dtype=np.int64), legs.kind[j][keep], legs.und[j][keep],
                    legs.right[j][keep], legs.exp[j][keep], legs.strike[j][keep], legs.qty[j][keep],
                    np.full(keep.sum(), a, dtype=np.int64),
                )
            )
    cols = [np.concatenate([p[i] for p in parts]) for i in range(9)]
    strat, leg, kind, und, right, exp, strike, qty, arch = cols
    order = np.lexsort((leg, strat))  # strategies are numbered in account order
    strat, kind, und, right, exp, strike, qty, arch = (
        x[order] for x in (strat, kind, und, right, exp, strike, qty, arch)
    )
    acct = s_acct[strat]
    if len(acct) > max_rows:  # exactly the requested number of positions: cut the last account
        acct, kind, und, right, exp, strike, qty, arch = (
            x[:max_rows] for x in (acct, kind, und, right, exp, strike, qty, arch)
        )
        n_accounts = int(acct[-1]) + 1
        primary = primary[:n_accounts]
    return _tables(u, rng, first_account, n_accounts, primary, acct, kind, und, right, exp, strike, qty, arch,
                   expiries, fut_expiries, cache)


def _tables(
    u: Universe, rng: np.random.Generator, first_account: int, n_accounts: int, primary: np.ndarray,
    acct: np.ndarray, kind: np.ndarray, und: np.ndarray, right: np.ndarray, exp: np.ndarray,
    strike: np.ndarray, qty: np.ndarray, arch: np.ndarray, expiries: np.ndarray, fut_expiries: np.ndarray,
    cache: _ContractCache,
) -> _BatchOut:
    n = len(acct)
    is_opt = kind == _KIND_OPTION
    is_fut = kind == _KIND_FUTURE
    asof_d = np.datetime64(ASOF, "D")
    exp_safe = np.maximum(exp, 0)
    fut_exp = fut_expiries[np.minimum(exp_safe, len(fut_expiries) - 1)]
    expiry = np.where(is_opt, expiries[exp_safe], np.where(is_fut, fut_exp, np.datetime64("NaT", "D")))
    dated = is_opt | is_fut
    t = np.where(dated, (np.where(dated, expiry, asof_d) - asof_d).astype(np.int64) / DAYS_PER_YEAR, 0.0)
    spot = u.spot[und]
    q = u.q[und]
    mult = np.where(is_opt, 100.0, np.where(is_fut, u.fut_mult[und], 1.0))
    iv = np.full(n, np.nan)
    mark = spot.copy()
    # options: each distinct contract is priced once per book (a cache across batches)
    o = np.flatnonzero(is_opt)
    if len(o):
        key = ((und[o] * 64 + exp[o]) * 4 + right[o]) * 100_000_000 + np.round(strike[o] * 100.0).astype(np.int64)
        c_iv, c_mark = cache.lookup(key, u, und[o], right[o] == _CALL, strike[o], t[o])
        iv[o] = c_iv
        mark[o] = c_mark
    mark = np.where(is_fut, spot * np.exp((RATE - q) * t), mark)

    # accounts: cash so that a few percent are in deficit under the proxy requirement
    notional = np.abs(qty) * mult * spot
    short_opt = is_opt & (qty < 0)
    proxy = PROXY_RATE * np.where((kind == _KIND_STOCK) | short_opt | is_fut, notional, 0.0)
    value = np.where(is_fut, 0.0, qty * mult * mark)
    req = np.bincount(acct, weights=proxy, minlength=n_accounts)
    mv = np.bincount(acct, weights=value, minlength=n_accounts)
    deficit = rng.random(n_accounts) < DEFICIT_SHARE
    comfortable = 1.05 + np.exp(rng.normal(np.log(2.5), 1.0, n_accounts))
    cushion = np.where(deficit, rng.uniform(0.5, 0.97, n_accounts), comfortable)
    nlv = np.where(req > 0, cushion * req, np.abs(mv) * rng.uniform(0.05, 1.0, n_accounts) + 1000.0)
    cash = np.round(nlv - mv, 2)
    pm = np.where(nlv >= 150_000.0, rng.random(n_accounts) < 0.85, rng.random(n_accounts) < 0.1)

    ids = pa.array(np.arange(first_account, first_account + n_accounts, dtype=np.int64)).cast(pa.string())
    acct_ids = pc.binary_join_element_wise("A", pc.utf8_lpad(ids, 9, "0"), "")
    start = np.r_[0, np.flatnonzero(acct[1:] != acct[:-1]) + 1]
    leg_no = np.arange(n) - np.repeat(start, np.diff(np.r_[start, n]))
    pos_acct = acct_ids.take(pa.array(acct))
    pos_ids = pc.binary_join_element_wise(
        pos_acct, pc.utf8_lpad(pa.array(leg_no).cast(pa.string()), 4, "0"), "-"
    )
    style_code = np.where(is_opt, np.where(u.american[und], 1, 2), 0)
    positions = pa.Table.from_arrays(
        [
            pos_acct,
            pos_ids,
            pa.array(u.names, type=pa.string()).take(pa.array(und)),
            pa.array(["stock", "option", "future"], type=pa.string()).take(pa.array(kind)),
            pa.array([None, "C", "P"], type=pa.string()).take(pa.array(right)),
            pa.array(np.where(is_opt, strike, np.nan), type=pa.float64(), from_pandas=True),
            pa.array(expiry.astype("datetime64[D]"), type=pa.date32(), from_pandas=True),
            pa.array([None, "A", "E"], type=pa.string()).take(pa.array(style_code)),
            pa.array(mult, type=pa.float64()),
            pa.array(qty, type=pa.float64()),
            pa.array(mark, type=pa.float64()),
            pa.array(iv, type=pa.float64(), from_pandas=True),
            pa.array(list(ARCHETYPES), type=pa.string()).take(pa.array(arch)),
        ],
        schema=POSITIONS_OUT_SCHEMA,
    )
    accounts = pa.Table.from_arrays(
        [
            acct_ids,
            pa.array(cash, type=pa.float64()),
            pa.array(np.where(pm, "portfolio", "regt"), type=pa.string()),
            pa.array(list(ARCHETYPES), type=pa.string()).take(pa.array(primary)),
        ],
        schema=ACCOUNTS_OUT_SCHEMA,
    )
    return _BatchOut(positions, accounts)


# ---------------------------------------------------------------- the other files


def market_table(u: Universe) -> pa.Table:
    """The market file of the universe (``rate`` left empty: the run's rate applies)."""
    return pa.Table.from_arrays(
        [
            pa.array(u.names, type=pa.string()),
            pa.array(u.spot),
            pa.array(u.vol),
            pa.array(u.q),
            pa.nulls(len(u.names), type=pa.float64()),
            pa.array(u.group, type=pa.string()),
            pa.array(np.where(u.american, "A", "E"), type=pa.string()),
            pa.array(u.tracks, type=pa.string()),
        ],
        schema=MARKET_SCHEMA,
    )


def scenarios_table(u: Universe) -> pa.Table:
    """Sample joint scenarios (SPEC 5.2): market crashes, sector moves, a single-name gap, vol shocks."""
    top_stock = str(u.names[np.flatnonzero(u.cls == STOCK)[0]])
    rows = [
        ("crash_1987", "*", -0.20, 0.50, "1987-style crash: everything -20%, vols +50%"),
        ("crash_1987", "group:broad_index_high_cap", -0.18, 0.40, "1987-style crash: high-cap indexes -18%"),
        ("gfc_2008", "*", -0.09, 0.30, "2008-style day: -9%, vols +30%"),
        ("gfc_2008", "group:narrow_index", -0.15, 0.35, "2008-style day: sector indexes -15%"),
        ("gfc_2008", "BKX", -0.25, 0.60, "2008-style day: banks -25%"),
        ("gfc_2008", "KBE", -0.25, 0.60, "2008-style day: bank ETF -25%"),
        ("tech_selloff", "*", -0.03, 0.10, "tech sell-off: broad market -3%"),
        ("tech_selloff", "NDX", -0.12, 0.35, "tech sell-off: Nasdaq-100 -12%"),
        ("tech_selloff", "QQQ", -0.12, 0.35, "tech sell-off: QQQ -12%"),
        ("tech_selloff", "SOX", -0.18, 0.40, "tech sell-off: semiconductors -18%"),
        ("tech_selloff", "SMH", -0.18, 0.40, "tech sell-off: semiconductor ETF -18%"),
        ("melt_up", "*", 0.08, -0.20, "melt-up: everything +8%, vols -20%"),
        ("vol_spike", "*", 0.0, 0.60, "vol spike: prices unchanged, vols +60%"),
        ("vol_crush", "*", 0.0, -0.30, "vol crush: prices unchanged, vols -30%"),
        ("single_name_gap", top_stock, -0.40, 0.80, f"single-name gap: {top_stock} -40%"),
        ("single_name_gap", "*", 0.0, 0.0, "single-name gap: rest unchanged"),
        ("squeeze", "group:equity", 0.15, 0.25, "short squeeze: equities +15%"),
        ("squeeze", "*", 0.05, 0.10, "short squeeze: indexes +5%"),
    ]
    cols = list(zip(*rows, strict=True))
    return pa.Table.from_arrays(
        [pa.array(cols[0]), pa.array(cols[1]), pa.array(cols[2], type=pa.float64()),
         pa.array(cols[3], type=pa.float64()), pa.array(cols[4])],
        schema=SCENARIOS_SCHEMA,
    )


def job_toml() -> str:
    """The job file beside a synthetic book (SPEC 9)."""
    return (
        "# A synthetic book written by `gpu-margin synth`; run it with `gpu-margin run job.toml`.\n"
        f'asof = "{ASOF.isoformat()}"\n'
        f"rate = {RATE}\n"
        'positions = "positions"\n'
        'market = "market.parquet"\n'
        'accounts = "accounts.parquet"\n'
        'methodology = "finra"\n'
        'out = "out"\n'
    )


# ---------------------------------------------------------------- the book


@dataclass(frozen=True)
class BookSummary:
    """What :func:`write_book` wrote."""

    out: Path
    positions: int
    accounts: int
    files: int
    underlyings: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"wrote {self.positions:,} positions in {self.accounts:,} accounts ({self.files} file"
            f"{'s' if self.files != 1 else ''}), {self.underlyings} underlyings, to {self.out} "
            f"in {self.seconds:.1f} s; run it with: gpu-margin run {self.out / 'job.toml'}"
        )


def _prepare_out(out: Path, force: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise JobError(f"--out {out}: exists and is not a directory; choose a new directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise JobError(f"--out {out}: directory is not empty; choose a new directory or pass --force")
        if not (out / "job.toml").is_file():
            raise JobError(f"--out {out}: --force replaces only a previous book (a folder with job.toml); "
                           "choose a new directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise JobError(f"--out {out}: parent directory {parent} does not exist; create it first")
    return parent / f".{out.name}.tmp-{os.getpid()}"


def write_book(out: str | os.PathLike[str], n_positions: int, seed: int = 0, *, force: bool = False) -> BookSummary:
    """Write a synthetic book of exactly ``n_positions`` positions to ``out`` (see the module doc).

    Deterministic for ``seed``: the same seed writes byte-identical files.
    The book is written to a temporary sibling folder and renamed into place.
    """
    t0 = time.perf_counter()
    if not isinstance(n_positions, int) or not 1 <= n_positions <= MAX_POSITIONS:
        raise JobError(f"--positions {n_positions}: give a whole number from 1 to {MAX_POSITIONS:,}")
    if not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise JobError(f"--seed {seed}: give a whole number >= 0")
    out = Path(out)
    tmp = _prepare_out(out, force)
    u = build_universe(seed)
    expiries = monthly_expiries(ASOF)
    fut_expiries = np.array(
        [d for d in monthly_expiries(ASOF, 1.0).astype(object) if d.month % 3 == 0], dtype="datetime64[D]"
    )
    cache = _ContractCache()
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "positions").mkdir(parents=True)
        written = accounts = files = batch_no = rows_in_file = 0
        writer: pq.ParquetWriter | None = None
        acct_writer = pq.ParquetWriter(tmp / "accounts.parquet", ACCOUNTS_OUT_SCHEMA, **_PARQUET)
        try:
            while written < n_positions:
                remaining = n_positions - written
                n_acc = int(min(ACCOUNTS_PER_BATCH, remaining // 6 + 1))
                batch = _batch(u, seed, batch_no, accounts, n_acc, remaining, expiries, fut_expiries, cache)
                batch_no += 1
                if batch.positions.num_rows == 0:  # pragma: no cover - every account has a position
                    continue
                if writer is None or rows_in_file >= ROWS_PER_FILE:
                    if writer is not None:
                        writer.close()
                    writer = pq.ParquetWriter(
                        tmp / "positions" / f"part-{files:05d}.parquet", POSITIONS_OUT_SCHEMA, **_PARQUET
                    )
                    files += 1
                    rows_in_file = 0
                writer.write_table(batch.positions, row_group_size=batch.positions.num_rows)
                acct_writer.write_table(batch.accounts, row_group_size=max(1, batch.accounts.num_rows))
                rows_in_file += batch.positions.num_rows
                written += batch.positions.num_rows
                accounts += batch.accounts.num_rows
        finally:
            if writer is not None:
                writer.close()
            acct_writer.close()
        pq.write_table(market_table(u), tmp / "market.parquet", **_PARQUET)
        pq.write_table(scenarios_table(u), tmp / "scenarios.parquet", **_PARQUET)
        (tmp / "job.toml").write_text(job_toml(), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = exc.strerror or str(exc)
        raise JobError(f"--out {out}: cannot write the book ({reason}); choose a writable directory") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BookSummary(out, written, accounts, files, len(u.names), time.perf_counter() - t0)
