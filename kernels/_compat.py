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


def _segment_sum_cupy(values: Any, segment_ids: Any, n_segments: int) -> Any:  # pragma: no cover (GPU)
    import cupy  # noqa: PLC0415
    import cupyx  # noqa: PLC0415

    out = cupy.zeros((n_segments, values.shape[1]), dtype=cupy.float64)
    cupyx.scatter_add(out, segment_ids, values)
    return out


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
    totals = xp.take(acc, last_rows, axis=0)
    seg_of_last = xp.take(seg, last_rows)
    # place totals at their segment ids: one-hot (n_segments, k) @ (k, m)
    onehot = xp.astype(
        xp.arange(n_segments, dtype=seg.dtype)[:, None] == seg_of_last[None, :], xp.float64
    )
    return out + onehot @ totals
