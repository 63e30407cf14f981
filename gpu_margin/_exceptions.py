"""The exceptions gpu-margin raises.

    GpuMarginError
    ├── UserInputError        a user's mistake: bad file, column, key or option (exit 2)
    │   ├── InputFileError    an input file cannot be read or has the wrong shape
    │   ├── MethodologyError  a methodology file or preset is invalid
    │   └── JobError          a job file or command-line option is invalid
    └── DeviceError           the requested device cannot be used (exit 2)

Every message is one line that names the file, the column or key, and the remedy.
"""

from __future__ import annotations


class GpuMarginError(Exception):
    """Base class of every error gpu-margin raises on purpose."""

    exit_code = 1


class UserInputError(GpuMarginError):
    """A user's mistake; the CLI prints the one-line message and exits 2."""

    exit_code = 2


class InputFileError(UserInputError):
    """An input file is unreadable, misses a column, or has a column of the wrong type."""


class MethodologyError(UserInputError):
    """A methodology file or preset has an unknown key, a wrong type or an impossible value."""


class JobError(UserInputError):
    """A job file or a command-line option is invalid."""


class DeviceError(UserInputError):
    """The requested device (``--device gpu``) is not usable on this machine."""
