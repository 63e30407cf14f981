"""Futures (forward) values under a flat rate and continuous yield."""

from __future__ import annotations

from typing import Any

from ._xp import broadcast_float, namespace


def forward_price(spot: Any, t: Any, rate: Any, dividend_yield: Any = 0.0) -> Any:
    """``F = S·exp((r − q)·T)``, elementwise, float64 (``T`` clipped at 0)."""
    xp = namespace(spot, t, rate, dividend_yield)
    spot, t, rate, q = broadcast_float(xp, spot, t, rate, dividend_yield)
    return spot * xp.exp((rate - q) * xp.maximum(t, 0.0))
