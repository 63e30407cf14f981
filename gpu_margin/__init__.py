"""gpu-margin: batch portfolio-margin and Reg T engine on CuPy or NumPy.

Public API (SPEC section 9): :func:`option_price`, :func:`implied_vol`,
:func:`compute`, :func:`select_backend`, and the exception hierarchy.
"""

from __future__ import annotations

from ._api import implied_vol, option_price
from ._backend import Backend, select_backend
from ._exceptions import (
    DeviceError,
    GpuMarginError,
    InputFileError,
    JobError,
    MethodologyError,
    UserInputError,
)

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "compute",
    "DeviceError",
    "GpuMarginError",
    "InputFileError",
    "JobError",
    "MethodologyError",
    "UserInputError",
    "__version__",
    "implied_vol",
    "option_price",
    "select_backend",
]


def __getattr__(name: str):  # noqa: ANN202  (PEP 562: imported on first use, so the CLI starts fast)
    if name == "compute":
        from ._compute import compute  # noqa: PLC0415

        return compute
    raise AttributeError(f"module 'gpu_margin' has no attribute {name!r}")
