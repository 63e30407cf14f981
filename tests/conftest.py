"""Shared fixtures: the array namespaces every kernel test runs on."""

from __future__ import annotations

import numpy as np
import pytest

from gpu_margin._backend import gpu_status


def _namespaces():
    import array_api_compat.numpy as xp_numpy
    import array_api_strict

    yield pytest.param(xp_numpy, id="numpy")
    yield pytest.param(array_api_strict, id="array_api_strict")
    ok, reason = gpu_status()
    if ok:
        import array_api_compat.cupy as xp_cupy

        yield pytest.param(xp_cupy, id="cupy", marks=pytest.mark.gpu)
    else:
        yield pytest.param(None, id="cupy", marks=[pytest.mark.gpu, pytest.mark.skip(reason=reason)])


@pytest.fixture(params=list(_namespaces()))
def xp(request):
    """An array namespace: NumPy, array_api_strict, and CuPy where a GPU is usable."""
    return request.param


def to_xp(xp, a, dtype=None):
    """Host NumPy data to namespace ``xp`` (float64 unless ``dtype`` is given)."""
    a = np.asarray(a)
    if dtype is None:
        dtype = xp.bool if a.dtype == bool else (xp.int64 if a.dtype.kind in "iu" else xp.float64)
    return xp.asarray(a, dtype=dtype)


def to_np(a):
    """Any namespace's array back to NumPy for comparison."""
    from gpu_margin._backend import to_host

    if type(a).__module__.startswith("array_api_strict"):
        return np.asarray(a._array)
    return to_host(a)
