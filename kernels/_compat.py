"""The kernels' only backend-specific branches, each with a generic Array API fallback.

Like SciPy's ``_lib/_array_api.py``: a kernel asks for an operation the Array
API standard lacks (a segmented sum) and this module picks the fastest exact
implementation its namespace offers. Backends are recognised through
``array_api_compat``; no backend module is imported here unless its arrays are
already in hand. Tests check every branch against the generic one.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import is_cupy_namespace, is_numpy_namespace


def sorted_segment_sum(xp: Any, values: Any, segment_ids: Any, n_segments: int) -> Any:
    """Row sums of ``values`` ``(n, m)`` per sorted segment id, ``(n_segments, m)``."""
    if is_numpy_namespace(xp):
        return _segment_sum_numpy(values, segment_ids, n_segments)
    if is_cupy_namespace(xp):
        return _segment_sum_cupy(values, segment_ids, n_segments)
    return segment_sum_generic(xp, values, segment_ids, n_segments)


def _segment_sum_numpy(values: Any, segment_ids: Any, n_segments: int) -> Any:
    import numpy as np  # noqa: PLC0415

    from ._fused_cpu import HAVE_NUMBA  # noqa: PLC0415

    if HAVE_NUMBA and values.dtype == np.float64:
        from ._fused_cpu import segment_sum_fused  # noqa: PLC0415

        return segment_sum_fused(values, segment_ids, n_segments)
    n, m = values.shape
    out = np.zeros((n_segments, m), dtype=np.float64)
    if n == 0:
        return out
    starts = np.flatnonzero(np.r_[True, segment_ids[1:] != segment_ids[:-1]])
    sums = np.add.reduceat(values, starts, axis=0)
    out[segment_ids[starts]] = sums
    return out


_SEGMENT_SUM_CUDA = r"""
extern "C" __global__ void segment_sum_rows(const double* values, const long long* first, const long long* seg,
                                            const long long n_runs, const long long m, double* out) {
    // one thread per (run of a segment's rows, column): the rows added in order, the first copied
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_runs * m) return;
    long long r = t / m, j = t - r * m;
    long long i = first[r], end = first[r + 1];
    double acc = values[i * m + j];
    for (++i; i < end; ++i) acc += values[i * m + j];
    out[seg[r] * m + j] = acc;
}
"""
_segment_sum_kernel: Any = None


def _segment_sum_cupy(values: Any, segment_ids: Any, n_segments: int) -> Any:  # pragma: no cover (GPU)
    """The NumPy branch's arithmetic on the GPU: each segment's rows added in row order (the first
    copied), one thread per segment and column, so the same bits on every run and as the compiled
    NumPy loop (no atomics, no tree order; ``O(n·m)`` work and one pass over ``values``)."""
    import cupy  # noqa: PLC0415

    global _segment_sum_kernel  # noqa: PLW0603  (compiled once per process, on first use)
    n, m = values.shape
    out = cupy.zeros((n_segments, m), dtype=cupy.float64)
    if n == 0 or m == 0:
        return out
    if _segment_sum_kernel is None:
        _segment_sum_kernel = cupy.RawKernel(_SEGMENT_SUM_CUDA, "segment_sum_rows")
    values = cupy.ascontiguousarray(values, dtype=cupy.float64)
    seg = cupy.asarray(segment_ids, dtype=cupy.int64)
    starts = cupy.flatnonzero(cupy.concatenate([cupy.ones(1, dtype=bool), seg[1:] != seg[:-1]]))
    first = cupy.concatenate([starts, cupy.full(1, n, dtype=cupy.int64)]).astype(cupy.int64)
    n_runs = int(starts.size)
    threads = 256
    blocks = (n_runs * m + threads - 1) // threads
    _segment_sum_kernel((blocks,), (threads,), (values, first, seg[starts].copy(), cupy.int64(n_runs),
                                                cupy.int64(m), out))
    return out


def _scan_totals(xp: Any, values: Any, segment_ids: Any) -> tuple[Any, Any]:
    """Each segment's total and its id, by a segmented inclusive scan (rows sorted by segment)."""
    n = values.shape[0]
    acc = values
    seg = segment_ids
    shift = 1
    while shift < n:
        same = seg[shift:] == seg[:-shift]
        moved = xp.where(same[:, None], acc[:-shift, :], 0.0)
        acc = xp.concat([acc[:shift, :], acc[shift:, :] + moved], axis=0)
        shift *= 2
    # the last row of each segment holds its total
    is_last = xp.concat([seg[1:] != seg[:-1], xp.ones((1,), dtype=xp.bool)])
    last_rows = xp.nonzero(is_last)[0]
    return xp.take(acc, last_rows, axis=0), xp.take(seg, last_rows)


def segment_sum_generic(xp: Any, values: Any, segment_ids: Any, n_segments: int) -> Any:
    """Array API only: a segmented inclusive scan (log₂ n shifted adds within a segment).

    Only rows of the same segment are ever added, so no running total crosses
    a segment boundary. ``O(n·m·log n)``: the reference path for namespaces
    without a scatter-add.
    """
    n, m = values.shape
    out = xp.zeros((n_segments, m), dtype=xp.float64)
    if n == 0:
        return out
    totals, seg_of_last = _scan_totals(xp, values, segment_ids)
    # place totals at their segment ids: one-hot (n_segments, k) @ (k, m)
    onehot = xp.astype(
        xp.arange(n_segments, dtype=seg_of_last.dtype)[:, None] == seg_of_last[None, :], xp.float64
    )
    return out + onehot @ totals

