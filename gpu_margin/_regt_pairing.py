"""The Reg T pairing as one compiled pass over the accounts (``gpu_margin._regt``'s engine).

Each account is paired on its own: accounts share no leg, so the greedy b-matching over all
candidates in rank order (SPEC 5.3, ``docs/regt.md``) is the same as one greedy run per account. Per
account, and per strategy pass in the fixed order (covered, vertical spread, straddle/strangle), the
kernel lists every candidate pair among the legs still holding quantity (joined on the underlying
through the account's legs sorted by underlying code), keeps those that lower both the initial and
the maintenance requirement by more than ``min_saving``, sorts them best first (largest initial
saving, then ``tie1``, ``tie2``, then the two legs' places in ``position_id`` order) and forms them
greedily. Each pass pairs only the kinds it pairs (an underlying's legs are bucketed once per
account: short calls, short puts, long calls, long puts, long shares, short shares). When the own
share lots a short option could be covered by are all alike (price, multiplier, standalone
requirements, bit for bit), its candidates with them have one saving and sort together lot after
lot, so one candidate stands for them all and the greedy walks its lots in that order: the same
pairs, with a sort of options rather than options × lots (a liquidation plan reruns an account with
dozens of lots hundreds of times). What is left of every leg is margined alone. The account's output
rows are then sorted by (leg, strategy name, partner) and appended, so the rows come out in the
order of the ``regt_legs`` output.

The formulas are written exactly as the NumPy expressions they replace (same
operations in the same order, no fast-math), so every amount is bit-for-bit
what a vectorised evaluation gives; ``tests/test_regt_perf.py`` checks the
rows against the reference implementation on random books.

The loop holds no interpreter lock: two partitions pair in parallel threads. Division follows
NumPy (``error_model="numpy"``: a zero divisor gives inf or NaN, whose candidate the saving test
drops), not Python (which would raise).
"""

from __future__ import annotations

import numba
import numpy as np

from ._regt import STRATEGIES

# strategy codes: places in STRATEGIES (compile-time constants of the loop)
_COVERED_CALL, _COVERED_PUT, _CREDIT_SPREAD, _DEBIT_SPREAD, _STRADDLE, _STRANGLE, _FUTURE, _LONG_STOCK, \
    _SHORT_STOCK, _LONG_OPTION, _NAKED_CALL, _NAKED_PUT = (STRATEGIES.index(name) for name in (
        "covered_call", "covered_put", "credit_spread", "debit_spread", "straddle", "strangle", "future",
        "long_stock", "short_stock", "long_option", "naked_call", "naked_put"))
_N_STRATEGIES = len(STRATEGIES)
_NS_PER_DAY = 86_400_000_000_000

# candidate columns: ints (a, b: local leg numbers; integral; strategy; the lots kb[ci[., 4]:ci[., 5]] of a block
# of alike lots, ci[., 4] = -1 for the one lot b), floats (below)
_RB, _CAI, _CAM, _CBI, _CBM, _T1, _T2, _SI = 0, 1, 2, 3, 4, 5, 6, 7
_NF = 8
_SMALL_SORT = 24  # insertion sort up to this many items
_MERGE_SORT = 4096  # merge sort up to this many, radix sort above
_ROWS_PER_LEG = 4  # output rows an account's work is given room for before it starts, per leg
_DIGIT_BITS = 11  # radix sort digits: 2,048 counters, which stay in cache
_DIGITS = 6  # of 11 bits: 66 >= 64


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _before(sx, sy, ux, uy, vx, vy, ax, ay, bx, by):  # noqa: ANN001, ANN202, PLR0913
    """Candidate x ranks before y: larger initial saving ``s``, then smaller tie1 ``u``, tie2 ``v``
    (NaN last and equal to NaN), then the legs ``a``, ``b`` (scalars: no array crosses the call)."""
    if sx != sy:
        return sx > sy
    if not (ux == uy or (ux != ux and uy != uy)):
        return (uy != uy if ux == ux else False) or ux < uy
    if not (vx == vy or (vx != vx and vy != vy)):
        return (vy != vy if vx == vx else False) or vx < vy
    if ax != ay:
        return ax < ay
    return bx < by


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _leg_kind(x, rem, option, stock, short, long_, is_call):  # noqa: ANN001, ANN202, PLR0913
    """The pairing kind of leg ``x``: 0 short call, 1 short put, 2 long call, 3 long put, 4 long shares,
    5 short shares; -1 when it pairs with nothing (no quantity left, or a future)."""
    if not rem[x] > 0:
        return -1
    if option[x]:
        if short[x]:
            return 0 if is_call[x] else 1
        if long_[x]:
            return 2 if is_call[x] else 3
        return -1
    if stock[x]:
        return 4 if long_[x] else 5
    return -1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _alike_lots(kb, b0, b1, rows, value, mult, stand_i, stand_m):  # noqa: ANN001, ANN202, PLR0913
    """Whether the share lots ``rows[kb[b0:b1]]`` have the same price, multiplier and standalone
    requirements, bit for bit (``-0.0`` is not ``0.0``; a NaN is like nothing): then a short option's
    covered candidate with each lot has the same amounts and saving."""
    f = rows[kb[b0]]
    for xb in range(b0 + 1, b1):
        x = rows[kb[xb]]
        if not (_same_bits(value[x], value[f]) and _same_bits(mult[x], mult[f])
                and _same_bits(stand_i[x], stand_i[f]) and _same_bits(stand_m[x], stand_m[f])):
            return False
    return True


@numba.njit(cache=True, nogil=True, inline="always")
def _same_bits(x, y):  # noqa: ANN001, ANN202
    return x == y and np.float64(x).view(np.int64) == np.float64(y).view(np.int64)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sort_candidates(idx, n, ci, cf):  # noqa: ANN001, ANN202
    """Sort candidates ``idx[:n]`` best first (:func:`_before`): a comparison sort
    (:func:`_sort_by_before`) up to ``_MERGE_SORT``; above, a radix sort of the savings (largest first,
    as order-preserving bits, each moved with its candidate), then each run of equal savings by the
    comparison sort (which then decides on the tie-breaks and the legs)."""
    if n <= _MERGE_SORT:
        _sort_by_before(idx, 0, n, ci, cf)
        return
    o = np.empty(n, dtype=np.int64)
    key = np.empty(n, dtype=np.uint64)
    for k in range(n):  # no saving is NaN here (the saving test keeps none), which would sort first
        o[k] = idx[k]
        key[k] = ~_float_key(cf[idx[k], _SI])
    _radix_sort_pairs(o, key)
    for k in range(n):
        idx[k] = o[k]
    i = 0
    while i < n:
        j = i + 1
        while j < n and key[j] == key[i]:
            j += 1
        if j - i > 1:
            _sort_by_before(idx, i, j, ci, cf)
        i = j


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sort_by_before(idx, lo, hi, ci, cf):  # noqa: ANN001, ANN202
    """Sort candidates ``idx[lo:hi]`` by :func:`_before`: an insertion sort up to ``_SMALL_SORT``, a
    merge sort above."""
    n = hi - lo
    if n <= _SMALL_SORT:
        for i in range(lo + 1, hi):
            x = idx[i]
            j = i - 1
            while j >= lo:
                y = idx[j]
                if not _before(cf[x, _SI], cf[y, _SI], cf[x, _T1], cf[y, _T1], cf[x, _T2], cf[y, _T2],
                               ci[x, 0], ci[y, 0], ci[x, 1], ci[y, 1]):
                    break
                idx[j + 1] = y
                j -= 1
            idx[j + 1] = x
        return
    src = np.empty(n, dtype=np.int64)
    for k in range(n):
        src[k] = idx[lo + k]
    dst = np.empty(n, dtype=np.int64)
    width = 1
    while width < n:
        start = 0
        while start < n:
            mid = min(start + width, n)
            end = min(start + 2 * width, n)
            i, j, k = start, mid, start
            while i < mid and j < end:
                x, y = src[j], src[i]
                if _before(cf[x, _SI], cf[y, _SI], cf[x, _T1], cf[y, _T1], cf[x, _T2], cf[y, _T2],
                           ci[x, 0], ci[y, 0], ci[x, 1], ci[y, 1]):
                    dst[k] = x
                    j += 1
                else:
                    dst[k] = y
                    i += 1
                k += 1
            _merge_tails(src, dst, i, mid, j, end, k)
            start = end
        src, dst = dst, src
        width *= 2
    for k in range(n):
        idx[lo + k] = src[k]


@numba.njit(cache=True, nogil=True, inline="always")
def _merge_tails(src, dst, i, mid, j, end, k):  # noqa: ANN001, ANN202, PLR0913
    """The end of one merge of a merge sort: what is left of either run, ``src[i:mid]`` or
    ``src[j:end]``, copied to ``dst[k:]``."""
    while i < mid:
        dst[k] = src[i]
        i += 1
        k += 1
    while j < end:
        dst[k] = src[j]
        j += 1
        k += 1


@numba.njit(cache=True, nogil=True, inline="always")
def _float_key(v):  # noqa: ANN001, ANN202
    """Unsigned bits of float ``v`` in its order: NaN last (every NaN one key), -0.0 as 0.0."""
    if v != v:
        return np.uint64(0xFFFFFFFFFFFFFFFF)
    b = np.int64(np.float64(v + 0.0).view(np.int64))  # -0.0 + 0.0 is 0.0
    return np.uint64(b ^ np.int64(-1)) if b < 0 else np.uint64(b) | np.uint64(1 << 63)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _argsort_keys(keys):  # noqa: ANN001, ANN202
    """Indices that sort unsigned 64-bit ``keys``, stable (``np.argsort(keys, kind="stable")``): a merge
    sort up to ``_MERGE_SORT`` keys, :func:`_radix_argsort` above. Written out rather than
    ``np.argsort``, whose compilation costs more than a second per call site."""
    n = keys.shape[0]
    if n > _MERGE_SORT:
        return _radix_argsort(keys)
    src = np.empty(n, dtype=np.int64)
    for i in range(n):
        src[i] = i
    dst = np.empty(n, dtype=np.int64)
    width = 1
    while width < n:
        lo = 0
        while lo < n:
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                if keys[src[j]] < keys[src[i]]:
                    dst[k] = src[j]
                    j += 1
                else:
                    dst[k] = src[i]
                    i += 1
                k += 1
            _merge_tails(src, dst, i, mid, j, hi, k)
            lo = hi
        src, dst = dst, src
        width *= 2
    return src


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _radix_argsort(keys):  # noqa: ANN001, ANN202
    """Indices that sort unsigned 64-bit ``keys``, stable (:func:`_radix_sort_pairs` of ``0, 1, 2, ...``
    and a copy of the keys; Numba's comparison sorts cost about 150 ns per key on these machines)."""
    n = keys.shape[0]
    o = np.empty(n, dtype=np.int64)
    k = np.empty(n, dtype=np.uint64)
    for i in range(n):
        o[i] = i
        k[i] = keys[i]
    _radix_sort_pairs(o, k)
    return o


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _radix_sort_pairs(o, k):  # noqa: ANN001, ANN202
    """Sort ``k`` (unsigned 64-bit keys) and reorder ``o`` with it, stably, in place: an LSD radix sort on
    11-bit digits that moves each key with its item, so the sorted keys come back beside the order
    (:func:`_sort_candidates` reads the runs of equal savings off them); one counting pass for all
    digits, and a digit every key shares is skipped. On a large account's 3.67M candidates the savings'
    sort and its runs took 1.0 s with it, 1.5-1.7 s with the 16-bit sort that read ``keys[o[i]]`` and
    gathered the sorted keys after; on random 62-bit keys alone that one was 20-40% faster
    (benchmarks/RESULTS.md, eleventh session)."""
    n = o.shape[0]
    if n < 2:
        return
    radix = 1 << _DIGIT_BITS
    mask = np.uint64(radix - 1)
    count = np.zeros((_DIGITS, radix), dtype=np.int64)
    for i in range(n):
        v = k[i]
        for d in range(_DIGITS):
            count[d, (v >> np.uint64(d * _DIGIT_BITS)) & mask] += 1
    o_in, k_in = o, k  # the caller's arrays
    swapped = False
    o2 = np.empty(n, dtype=np.int64)
    k2 = np.empty(n, dtype=np.uint64)
    for d in range(_DIGITS):
        sh = np.uint64(d * _DIGIT_BITS)
        if count[d, (k[0] >> sh) & mask] == n:
            continue
        total = 0
        for b in range(radix):
            c = count[d, b]
            count[d, b] = total
            total += c
        for i in range(n):
            b = (k[i] >> sh) & mask
            j = count[d, b]
            o2[j] = o[i]
            k2[j] = k[i]
            count[d, b] = j + 1
        o, o2 = o2, o
        k, k2 = k2, k
        swapped = not swapped
    if swapped:  # an odd number of passes: the result is in the other buffers
        for i in range(n):
            o_in[i] = o[i]
            k_in[i] = k[i]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _put_back(rem, rows, saved, counts, counts_before):  # noqa: ANN001, ANN202
    """An account's remainders and the counts as they were before it: it is done again from the start."""
    for i in range(rows.shape[0]):
        rem[rows[i]] = saved[i]
    for k in range(counts.shape[0]):
        counts[k] = counts_before[k]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _pair_accounts(g0, n_out, order, starts, und, trk, option, stock, future, is_call, long_, short, spot,  # noqa: ANN001, ANN202, C901, PLR0912, PLR0913, PLR0915
                   strike, mult, mult_code, value, mv_unit, exp, exp_nat, naked_unit, sign, absq, stand_i,
                   stand_m, strat_rank, rates, tol, min_saving,
                   rem, counts, by_und, und_sorted, kb, saved, grp, ci, cf, idx, ri, rf, rkey, ro, out_i, out_f):
    """Pair accounts ``g0, g0 + 1, ...`` into the buffers, the output rows from ``out_*[n_out]`` on.

    Stops before an account whose work does not fit one of the buffers (its remainders ``rem`` put
    back as they were): returns ``(next account, rows written, buffer, rows it needs)``, buffer 0
    when every account is done (1 candidates ``ci``/``cf``/``idx``, 2 the account's rows
    ``ri``/``rf``/``rkey``/``ro``, 3 the output). The buffers are never reallocated here: an array
    variable that may be rebound inside the loop costs a reference count update on every use.
    """
    n_acc = starts.shape[0] - 1
    counts_before = np.empty(counts.shape[0], dtype=np.int64)
    at = np.empty(6, dtype=np.int64)  # where each kind's next leg goes in kb
    for g in range(g0, n_acc):
        s = starts[g]
        m = starts[g + 1] - s
        if m == 0:
            continue
        # room for ROWS_PER_LEG rows a leg before the work (a restart after it would redo the sorts): an
        # account rarely needs more (a pass forms at most about one pair a leg), and the checks below
        # make room when it does
        if _ROWS_PER_LEG * m > ri.shape[0]:
            return g, n_out, 2, _ROWS_PER_LEG * m
        if n_out + _ROWS_PER_LEG * m > out_i.shape[0]:
            return g, n_out, 3, n_out + _ROWS_PER_LEG * m
        rows = order[s:s + m]
        for i in range(m):
            saved[i] = rem[rows[i]]
        for k in range(counts.shape[0]):
            counts_before[k] = counts[k]
        # the account's legs by underlying (stable: ties keep position_id order)
        if m <= 64:
            for i in range(m):
                u = und[rows[i]]
                j = i - 1
                while j >= 0 and und_sorted[j] > u:
                    und_sorted[j + 1] = und_sorted[j]
                    by_und[j + 1] = by_und[j]
                    j -= 1
                und_sorted[j + 1] = u
                by_und[j + 1] = i
        else:
            keys = np.empty(m, dtype=np.uint64)
            for i in range(m):
                keys[i] = np.uint64(und[rows[i]])  # codes >= 0
            o = _argsort_keys(keys)
            for i in range(m):
                by_und[i] = o[i]
                und_sorted[i] = und[rows[o[i]]]
        nr = 0
        if m > 1:
            # each underlying's legs (by_und[gs:ge]) and its legs holding quantity by kind, once: short
            # calls, short puts, long calls, long puts, long shares, short shares, each in by_und order in
            # kb[gs:...] (grp[k, 5 + j]: how many of kind j). The products of the counts bound every pass's
            # candidates in the group (later passes have fewer legs left); each pass pairs only the kinds it
            # pairs, not every leg with every leg.
            n_grp = 0
            gs = 0
            while gs < m:
                ge = gs + 1
                while ge < m and und_sorted[ge] == und_sorted[gs]:
                    ge += 1
                for j in range(6):
                    grp[n_grp, 5 + j] = 0
                for xa in range(gs, ge):
                    x = rows[by_und[xa]]
                    j = _leg_kind(x, rem, option, stock, short, long_, is_call)
                    if j >= 0:
                        grp[n_grp, 5 + j] += 1
                at[0] = gs
                for j in range(1, 6):
                    at[j] = at[j - 1] + grp[n_grp, 4 + j]
                for xa in range(gs, ge):
                    x = rows[by_und[xa]]
                    j = _leg_kind(x, rem, option, stock, short, long_, is_call)
                    if j >= 0:
                        kb[at[j]] = by_und[xa]
                        at[j] += 1
                n_sc, n_sp, n_lc, n_lp, n_sl, n_ss = (grp[n_grp, 5], grp[n_grp, 6], grp[n_grp, 7], grp[n_grp, 8],
                                                      grp[n_grp, 9], grp[n_grp, 10])
                grp[n_grp, 0], grp[n_grp, 1], grp[n_grp, 2] = gs, ge, n_sc * n_sl + n_sp * n_ss
                grp[n_grp, 3], grp[n_grp, 4] = n_sc * n_lc + n_sp * n_lp, n_sc * n_sp
                n_grp += 1
                gs = ge
            for p in range(3):
                ne = 0
                for k in range(n_grp):
                    gs, ge, bound = grp[k, 0], grp[k, 1], grp[k, 2 + p]
                    if bound == 0:
                        continue
                    if ne + bound > ci.shape[0]:
                        _put_back(rem, rows, saved, counts, counts_before)  # the caller makes room
                        return g, n_out, 1, ne + bound
                    sc = gs  # kb[sc:sp] short calls, [sp:lc] short puts, [lc:lp] long calls, [lp:sl] long
                    sp = sc + grp[k, 5]  # puts, [sl:ss] long shares, [ss:ss + grp[k, 10]] short shares
                    lc = sp + grp[k, 6]
                    lp = lc + grp[k, 7]
                    sl = lp + grp[k, 8]
                    ss = sl + grp[k, 9]
                    for side in range(1 if p == 2 else 2):  # calls, then puts
                        a0, a1 = (sc, sp) if side == 0 else (sp, lc)
                        if p == 0:  # covered: short call vs long shares, short put vs short shares (own)
                            b0, b1 = (sl, ss) if side == 0 else (ss, ss + grp[k, 10])
                        elif p == 1:  # vertical spreads: short vs long option, same right and multiplier
                            b0, b1 = (lc, lp) if side == 0 else (lp, sl)
                        else:  # straddle / strangle: short call vs short put, same expiry and multiplier
                            b0, b1 = sp, lc
                        # covered by own shares whose lots are all alike (price, multiplier, standalone
                        # requirements, bit for bit): every lot gives a short option the same saving, so its
                        # candidates sort together, lot after lot; one candidate stands for them all (ci[., 4:6]:
                        # its lots kb[b0:b1]) and the greedy walks the lots in that order
                        block = p == 0 and b1 - b0 > 1 and _alike_lots(kb, b0, b1, rows, value, mult, stand_i, stand_m)
                        for xa in range(a0, a1):
                            la = kb[xa]
                            a = rows[la]
                            if not rem[a] > 0:
                                continue
                            if p == 0 and block:
                                lb = kb[b0]
                                b = rows[lb]
                                ci[ne, 0], ci[ne, 1], ci[ne, 2], ci[ne, 4], ci[ne, 5] = la, lb, 1, b0, b1
                                cf[ne, _RB], cf[ne, _T1] = mult[a] / mult[b], 0.0
                                ne += 1
                            elif p == 0:
                                for xb in range(b0, b1):
                                    lb = kb[xb]
                                    b = rows[lb]
                                    if rem[b] > 0:
                                        ci[ne, 0], ci[ne, 1], ci[ne, 2], ci[ne, 4] = la, lb, 1, -1
                                        cf[ne, _RB], cf[ne, _T1] = mult[a] / mult[b], 0.0
                                        ne += 1
                            elif p == 1:
                                if exp_nat[a]:
                                    continue
                                for xb in range(b0, b1):
                                    lb = kb[xb]
                                    b = rows[lb]
                                    if not (rem[b] > 0 and mult_code[b] == mult_code[a] and not exp_nat[b]
                                            and exp[b] >= exp[a]):
                                        continue
                                    ka, kb_ = strike[a], strike[b]
                                    width = kb_ - ka if side == 0 else ka - kb_
                                    w0 = width if (width > 0.0 or width != width) else 0.0  # np.maximum(width, 0)
                                    short_cost = w0 * mult[a] - mv_unit[a]
                                    long_cost = mv_unit[b]  # the long leg is paid for in full
                                    ci[ne, 0], ci[ne, 1], ci[ne, 2], ci[ne, 4] = la, lb, 0, -1
                                    ci[ne, 3] = _CREDIT_SPREAD if width > 0 else _DEBIT_SPREAD
                                    cf[ne, _RB] = 1.0
                                    cf[ne, _CAI], cf[ne, _CAM] = short_cost, short_cost
                                    cf[ne, _CBI], cf[ne, _CBM] = long_cost, long_cost
                                    cf[ne, _T1] = abs(kb_ - ka)
                                    cf[ne, _T2] = float((exp[b] - exp[a]) // _NS_PER_DAY)
                                    ne += 1
                            else:
                                for xb in range(b0, b1):
                                    lb = kb[xb]
                                    b = rows[lb]
                                    if not (rem[b] > 0 and exp[b] == exp[a] and mult_code[b] == mult_code[a]):
                                        continue
                                    # the greater naked requirement; on NLV both premiums come off
                                    na, nb = naked_unit[a], naked_unit[b]
                                    call_greater = (na + mv_unit[a]) >= (nb + mv_unit[b])
                                    ca = na if call_greater else 0.0
                                    cb = 0.0 if call_greater else nb
                                    ka, kb_ = strike[a], strike[b]
                                    ci[ne, 0], ci[ne, 1], ci[ne, 2], ci[ne, 4] = la, lb, 0, -1
                                    ci[ne, 3] = _STRADDLE if ka == kb_ else _STRANGLE
                                    cf[ne, _RB] = 1.0
                                    cf[ne, _CAI], cf[ne, _CAM], cf[ne, _CBI], cf[ne, _CBM] = ca, ca, cb, cb
                                    cf[ne, _T1], cf[ne, _T2] = abs(ka - kb_), 0.0
                                    ne += 1
                if p == 0:
                    for lb in range(m):  # shares of an ETF that tracks the option's underlying
                        b = rows[lb]
                        t = trk[b]
                        if not (stock[b] and rem[b] > 0 and t >= 0 and t != und[b]):
                            continue
                        lo, hi = 0, m  # the legs of underlying t: und_sorted[lo:hi]
                        while lo < hi:
                            mid = (lo + hi) // 2
                            if und_sorted[mid] < t:
                                lo = mid + 1
                            else:
                                hi = mid
                        hi = lo
                        while hi < m and und_sorted[hi] == t:
                            hi += 1
                        if ne + hi - lo > ci.shape[0]:
                            _put_back(rem, rows, saved, counts, counts_before)  # the caller makes room
                            return g, n_out, 1, ne + hi - lo
                        for xa in range(lo, hi):
                            la = by_und[xa]
                            a = rows[la]
                            if option[a] and short[a] and rem[a] > 0 and long_[b] == is_call[a]:
                                ci[ne, 0], ci[ne, 1], ci[ne, 2], ci[ne, 4] = la, lb, 1, -1
                                # ETF shares whose value equals the call's aggregate index value per contract
                                cf[ne, _RB] = spot[a] * mult[a] / (value[b] * mult[b])
                                cf[ne, _T1] = 1.0  # own shares before ETF shares
                                ne += 1
                    for e in range(ne):  # the covered amounts, own and ETF shares alike
                        a, b = rows[ci[e, 0]], rows[ci[e, 1]]
                        call = is_call[a]
                        rb = cf[e, _RB]
                        mv = rb * value[b] * mult[b]  # stock value per contract covered
                        ratio = strike[a] / spot[a]
                        # the stock earns no credit beyond the strike: min(S, K) behind a call, max behind a put
                        if call:
                            f = ratio if (ratio != ratio or ratio < 1.0) else 1.0
                        else:
                            f = ratio if (ratio != ratio or ratio > 1.0) else 1.0
                        v_star = mv * f
                        excess = abs(mv - v_star)
                        prem = -mv_unit[a]
                        k = 0 if long_[b] else 2
                        ci[e, 3] = _COVERED_CALL if call else _COVERED_PUT
                        cf[e, _CAI], cf[e, _CAM] = prem, prem
                        cf[e, _CBI] = rates[k] * v_star + excess
                        cf[e, _CBM] = rates[k + 1] * v_star + excess
                        cf[e, _T2] = 0.0
                if ne == 0:
                    continue
                # keep what lowers both requirements; rank best first
                nk = np.int64(0)  # (a literal 0 would compile _sort_candidates once more, for n == 0)
                n_pairs = 0  # the (leg, leg) pairs they stand for (a block: one per lot)
                for e in range(ne):
                    a, b = rows[ci[e, 0]], rows[ci[e, 1]]
                    rb = cf[e, _RB]
                    save_i = stand_i[a] + stand_i[b] * rb - cf[e, _CAI] - cf[e, _CBI]
                    save_m = stand_m[a] + stand_m[b] * rb - cf[e, _CAM] - cf[e, _CBM]
                    if save_i > min_saving and save_m > min_saving:
                        cf[e, _SI] = save_i
                        idx[nk] = e
                        nk += 1
                        n_pairs += ci[e, 5] - ci[e, 4] if ci[e, 4] >= 0 else 1
                if nk == 0:
                    continue
                counts[p] += n_pairs
                if nk > counts[7]:  # the most candidates one pass of one account ranks, and the account
                    counts[7], counts[8] = nk, g
                _sort_candidates(idx, nk, ci, cf)
                # greedy: each candidate in turn takes what both its legs still allow (a block: lot by lot)
                for k in range(nk):
                    e = idx[k]
                    x0, x1 = (ci[e, 4], ci[e, 5]) if ci[e, 4] >= 0 else (0, 1)
                    for xb in range(x0, x1):
                        lb = kb[xb] if ci[e, 4] >= 0 else ci[e, 1]
                        a, b = rows[ci[e, 0]], rows[lb]
                        r = cf[e, _RB]
                        cap_b = rem[b] / r
                        if ci[e, 2]:  # shares cover whole contracts
                            cap_b = np.floor(cap_b + 1e-9)
                        cap = min(rem[a], cap_b)
                        if cap > 0.0:
                            if nr + 2 > ri.shape[0]:  # checked as pairs form, which few candidates do
                                _put_back(rem, rows, saved, counts, counts_before)  # the caller makes room
                                return g, n_out, 2, 2 * ri.shape[0]
                            rem[a] -= cap
                            rem[b] -= cap * r
                            if rem[a] <= tol * absq[a]:
                                rem[a] = 0.0
                            if rem[b] <= tol * absq[b]:
                                rem[b] = 0.0
                            counts[3 + p] += 1
                            st = ci[e, 3]
                            ri[nr, 0], ri[nr, 1], ri[nr, 2] = ci[e, 0], lb, st
                            rf[nr, 0], rf[nr, 1], rf[nr, 2] = sign[a] * cap, cf[e, _CAI] * cap, cf[e, _CAM] * cap
                            ri[nr + 1, 0], ri[nr + 1, 1], ri[nr + 1, 2] = lb, ci[e, 0], st
                            rf[nr + 1, 0] = sign[b] * (cap * r)
                            rf[nr + 1, 1], rf[nr + 1, 2] = cf[e, _CBI] * cap, cf[e, _CBM] * cap
                            nr += 2
        # what is left of every leg, margined alone
        if nr + m > ri.shape[0]:
            _put_back(rem, rows, saved, counts, counts_before)  # the caller makes room
            return g, n_out, 2, nr + m
        for la in range(m):
            x = rows[la]
            left = rem[x]
            if left > 0:
                if future[x]:
                    st = _FUTURE
                elif stock[x]:
                    st = _LONG_STOCK if long_[x] else _SHORT_STOCK
                elif long_[x]:
                    st = _LONG_OPTION
                else:
                    st = _NAKED_CALL if is_call[x] else _NAKED_PUT
                ri[nr, 0], ri[nr, 1], ri[nr, 2] = la, -1, st
                rf[nr, 0], rf[nr, 1], rf[nr, 2] = sign[x] * left, stand_i[x] * left, stand_m[x] * left
                nr += 1
                counts[6] += 1
        # the account's rows by (leg, strategy name, partner; none last): a unique key
        for j in range(nr):
            partner = ri[j, 1] if ri[j, 1] >= 0 else m
            rkey[j] = np.uint64((ri[j, 0] * _N_STRATEGIES + strat_rank[ri[j, 2]]) * (m + 1) + partner)
        if nr <= _SMALL_SORT:
            for j in range(nr):
                key = rkey[j]
                i = j - 1
                while i >= 0 and rkey[ro[i]] > key:
                    ro[i + 1] = ro[i]
                    i -= 1
                ro[i + 1] = j
        else:
            o = _argsort_keys(rkey[:nr])
            for j in range(nr):
                ro[j] = o[j]
        if n_out + nr > out_i.shape[0]:
            _put_back(rem, rows, saved, counts, counts_before)  # the caller makes room
            return g, n_out, 3, n_out + nr
        for j in range(nr):
            q = ro[j]
            out_i[n_out, 0] = rows[ri[q, 0]]
            out_i[n_out, 1] = rows[ri[q, 1]] if ri[q, 1] >= 0 else -1
            out_i[n_out, 2] = ri[q, 2]
            out_f[n_out, 0], out_f[n_out, 1], out_f[n_out, 2] = rf[q, 0], rf[q, 1], rf[q, 2]
            n_out += 1
    return n_acc, n_out, 0, 0


def pair_accounts(order, starts, und, trk, option, stock, future, is_call, long_, short, spot, strike,  # noqa: ANN001, ANN201, PLR0913
                  mult, mult_code, value, mv_unit, exp, exp_nat, naked_unit, sign, absq, stand_i, stand_m,
                  strat_rank, rates, tol, min_saving, capacity=None):
    """Pair every account; the output rows in output order and per-pass counts.

    ``order``: the legs in (account, position_id) order; ``starts``: where each account begins in it
    (``n_acc + 1``). Returns ``(ints (n_rows, 3): leg, partner (-1: none), strategy; floats (n_rows, 3):
    paired_quantity, initial, maintenance; counts (9,): candidates ranked per pass, pairs formed per
    pass, standalone rows, the most candidates one pass of one account ranked and that account)``.
    Runs :func:`_pair_accounts`, making room and going on when it stops; ``capacity``: the first sizes
    of its buffers (candidates, an account's rows, output rows).
    """
    n = order.shape[0]
    max_m = int(np.diff(starts).max()) if starts.shape[0] > 1 else 1
    rem = absq.copy()
    counts = np.zeros(9, dtype=np.int64)
    by_und, und_sorted, kb = (np.empty(max(max_m, 1), dtype=np.int64) for _ in range(3))
    saved = np.empty(max(max_m, 1), dtype=np.float64)  # an account's remainders, put back when it stops
    grp = np.empty((max(max_m, 1), 11), dtype=np.int64)  # an account's underlyings: start, end, bounds, kinds
    n_cand, n_rows, n_all = capacity or (1024, max(1024, _ROWS_PER_LEG * max_m), n + n // 4 + 16)
    out_i = np.empty((n_all, 3), dtype=np.int64)
    out_f = np.empty((n_all, 3), dtype=np.float64)
    g, n_out = 0, 0
    while True:
        ci, cf, idx = np.empty((n_cand, 6), np.int64), np.empty((n_cand, _NF)), np.empty(n_cand, np.int64)
        ri, rf = np.empty((n_rows, 3), np.int64), np.empty((n_rows, 3))
        rkey, ro = np.empty(n_rows, np.uint64), np.empty(n_rows, np.int64)
        while True:
            g, n_out, full, need = _pair_accounts(
                g, n_out, order, starts, und, trk, option, stock, future, is_call, long_, short, spot, strike,
                mult, mult_code, value, mv_unit, exp, exp_nat, naked_unit, sign, absq, stand_i, stand_m,
                strat_rank, rates, tol, min_saving, rem, counts, by_und, und_sorted, kb, saved, grp,
                ci, cf, idx, ri, rf, rkey, ro, out_i, out_f)  # fmt: skip
            if full != 3:
                break
            n_all = max(need, 2 * n_all)
            out_i = np.concatenate([out_i[:n_out], np.empty((n_all - n_out, 3), np.int64)])
            out_f = np.concatenate([out_f[:n_out], np.empty((n_all - n_out, 3))])
        if full == 0:
            return out_i[:n_out], out_f[:n_out], counts
        if full == 1:
            n_cand = max(int(need), 2 * n_cand)
        else:
            n_rows = max(int(need), 2 * n_rows)
