"""Namespace helpers shared by the kernels (no backend is named here)."""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, is_array_api_obj

FLOAT = "float64"


def namespace(*args: Any) -> Any:
    """The array namespace of the array arguments; Python scalars are ignored."""
    arrays = [a for a in args if is_array_api_obj(a)]
    if not arrays:
        import array_api_compat.numpy as xp  # noqa: PLC0415

        return xp
    return array_namespace(*arrays)


def as_float(xp: Any, a: Any, like: Any = None) -> Any:
    """``a`` as a float64 array of namespace ``xp`` (on ``like``'s device if given)."""
    if is_array_api_obj(a) and a.dtype == xp.float64:
        return a
    if like is not None and is_array_api_obj(like):
        from array_api_compat import device  # noqa: PLC0415

        return xp.asarray(a, dtype=xp.float64, device=device(like))
    return xp.asarray(a, dtype=xp.float64)


def as_bool(xp: Any, a: Any, like: Any = None) -> Any:
    """``a`` as a boolean array of namespace ``xp``."""
    if is_array_api_obj(a) and a.dtype == xp.bool:
        return a
    if like is not None and is_array_api_obj(like):
        from array_api_compat import device  # noqa: PLC0415

        return xp.asarray(a, dtype=xp.bool, device=device(like))
    return xp.asarray(a, dtype=xp.bool)


def broadcast_float(xp: Any, *args: Any) -> list[Any]:
    """Float64 arrays of ``args`` broadcast to one shape."""
    ref = next((a for a in args if is_array_api_obj(a)), None)
    arrs = [as_float(xp, a, like=ref) for a in args]
    return list(xp.broadcast_arrays(*arrs))
