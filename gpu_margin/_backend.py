"""Array backends: NumPy on the CPU, CuPy on a GPU.

This is the only module of gpu-margin that names CuPy. Kernels receive arrays
and take their namespace from them (``array_api_compat.array_namespace``); the
application picks a :class:`Backend` once per run and converts between host and
device here, on purpose, at partition boundaries.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._exceptions import DeviceError

DEVICES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class Backend:
    """A chosen array backend.

    ``name`` is ``"numpy"`` or ``"cupy"``; ``xp`` the array namespace kernels
    are called with; ``description`` says what runs the arrays and why it was
    chosen (logged and written to the manifest).
    """

    name: str
    xp: Any
    description: str

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Host array (or scalar) to this backend's device."""
        if self.name == "numpy":
            return np.asarray(a, dtype=dtype)
        return self.xp.asarray(np.asarray(a, dtype=dtype))

    def to_host(self, a: Any) -> np.ndarray:
        """This backend's array to a NumPy array on the host."""
        return to_host(a)


@functools.lru_cache(maxsize=1)
def _probe_cupy() -> tuple[Any, str]:
    """Import CuPy lazily and check for a usable device: ``(module or None, reason)``."""
    try:
        import cupy  # noqa: PLC0415  (lazy on purpose: no CUDA context at import)
    except Exception as exc:  # ImportError, or a broken CUDA install
        return None, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"CuPy sees no CUDA device ({type(exc).__name__}: {exc})"
    if n < 1:
        return None, "CuPy sees no CUDA device"
    try:
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    except Exception:
        name = "CUDA device 0"
    try:  # one small computation: a device is no use if CuPy cannot build or run a kernel on it (NVRTC, driver)
        if abs(float(cupy.exp(cupy.arange(3, dtype=cupy.float64)).sum()) - float(np.exp(np.arange(3.0)).sum())) > 1e-9:
            return None, f"CuPy computes wrong values on {name}"
    except Exception as exc:
        return None, f"CuPy cannot run a kernel on {name} ({type(exc).__name__}: {exc})"
    return cupy, f"{name} ({n} device{'s' if n > 1 else ''})"


def gpu_status() -> tuple[bool, str]:
    """Whether a GPU backend is usable here, and a sentence saying why or why not."""
    mod, reason = _probe_cupy()
    return mod is not None, reason


def select_backend(device: str = "auto") -> Backend:
    """Choose the array backend for ``device`` in ``auto``, ``cpu``, ``gpu``.

    ``auto`` takes CuPy when it imports and sees a device, NumPy otherwise;
    ``gpu`` without a usable GPU raises :class:`DeviceError` (no silent fallback).
    """
    if device not in DEVICES:
        raise DeviceError(
            f"--device {device!r} is not one of {', '.join(DEVICES)}; pass auto, cpu or gpu"
        )
    if device == "cpu":
        return Backend("numpy", _numpy_namespace(), "NumPy on the CPU (requested with device=cpu)")
    mod, reason = _probe_cupy()
    if mod is not None:
        import array_api_compat.cupy as xp_cupy  # noqa: PLC0415

        return Backend("cupy", xp_cupy, f"CuPy on {reason} (device={device})")
    if device == "gpu":
        raise DeviceError(
            f"device=gpu but no GPU is usable: {reason}; install gpu-margin[gpu] on a "
            "machine with a CUDA device, or pass --device cpu"
        )
    return Backend("numpy", _numpy_namespace(), f"NumPy on the CPU (device=auto: {reason})")


def _numpy_namespace() -> Any:
    import array_api_compat.numpy as xp_numpy  # noqa: PLC0415

    return xp_numpy


def to_host(a: Any) -> np.ndarray:
    """Any supported array (NumPy, CuPy, array-api-strict) to a NumPy array."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)  # CuPy
    if callable(get) and type(a).__module__.startswith("cupy"):
        return get()
    if hasattr(a, "__dlpack__"):  # any other Array API array on the CPU (array-api-strict in tests)
        return np.from_dlpack(a)
    return np.asarray(a)


def namespace_of(*arrays: Any) -> Any:
    """The array namespace of ``arrays`` (array-api-compat's wrapped namespaces)."""
    from array_api_compat import array_namespace  # noqa: PLC0415

    return array_namespace(*arrays)
