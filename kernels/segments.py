"""Segment reductions: sums of rows that share a segment id, in any array namespace."""

from __future__ import annotations

from typing import Any

from ._compat import sorted_segment_sum
from ._xp import namespace


def segment_sum(values: Any, segment_ids: Any, n_segments: int) -> Any:
    """Sum the rows of ``values`` by ``segment_ids``.

    ``values``: ``(n, m)`` float64; ``segment_ids``: ``(n,)`` integer, sorted
    ascending, each in ``[0, n_segments)``. Returns ``(n_segments, m)``; a
    segment without rows sums to 0. Each segment is summed on its own (no
    running total across segments), so a small class next to a large one keeps
    full precision.
    """
    xp = namespace(values, segment_ids)
    return sorted_segment_sum(xp, values, segment_ids, n_segments)
