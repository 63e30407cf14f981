"""Job files (TOML, SPEC section 9): what to run, on which inputs, with which parameters.

Paths are relative to the job file. Unknown keys are errors naming the key.
"""

from __future__ import annotations

import datetime as _dt
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._exceptions import JobError

SCHEDULERS = ("threads", "sync", "processes")


@dataclass(frozen=True)
class Job:
    """A validated job."""

    path: Path | None
    asof: _dt.date
    rate: float
    positions: Path
    market: Path
    accounts: Path | None = None
    methodology: str = "finra"
    out: Path = Path("out")
    device: str = "auto"
    scheduler: str = "threads"
    scenarios: Path | None = None
    multipliers: tuple[float, ...] = (1.0,)
    partition_rows: int = 500_000
    due_days: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def methodology_file(self) -> Path | None:
        """The methodology TOML this job reads (``None`` for a preset)."""
        from ._methodology import PRESETS  # noqa: PLC0415

        return None if self.methodology in PRESETS else Path(self.methodology)

    def with_overrides(self, **kw: Any) -> "Job":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def params(self) -> dict[str, Any]:
        """Parameters for the manifest (paths as strings)."""
        return {
            "asof": self.asof.isoformat(), "rate": self.rate, "methodology": self.methodology,
            "device": self.device, "scheduler": self.scheduler, "multipliers": list(self.multipliers),
            "partition_rows": self.partition_rows, "due_days": self.due_days,
            "scenarios": str(self.scenarios) if self.scenarios else None,
        }


_KEYS = {
    "asof": "a date, e.g. 2024-03-15",
    "rate": "a number (continuous risk-free rate, e.g. 0.05)",
    "positions": "a path to a Parquet file or directory",
    "market": "a path to a Parquet file",
    "accounts": "a path to a Parquet file",
    "methodology": "a preset name (finra, house, span16) or a path to a methodology TOML",
    "out": "an output directory",
    "device": "auto, cpu or gpu",
    "scheduler": "threads, sync, processes or tcp://HOST:PORT",
    "scenarios": "a path to a scenario file (Parquet or CSV)",
    "multipliers": "a list of positive finite numbers, e.g. [1, 2, 5]",
    "partition_rows": "a positive integer (positions per partition)",
    "due_days": "a non-negative integer (business days until a margin call is due)",
}


def load_job(path: str | Path) -> Job:
    """Read and validate a job file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))  # TOML is UTF-8 whatever the locale
    except FileNotFoundError:
        raise JobError(f"{path}: job file not found; check the path") from None
    except OSError as exc:
        raise JobError(f"{path}: cannot be read ({exc.strerror}); check the path and permissions") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    except UnicodeDecodeError as exc:
        raise JobError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                       "save it as UTF-8, as TOML requires") from None
    return parse_job(doc, path)


def parse_job(doc: dict[str, Any], path: Path | None = None) -> Job:
    name = str(path) if path else "job"
    base = path.parent if path else Path.cwd()
    for key in doc:
        if key not in _KEYS:
            raise JobError(f"{name}: unknown key {key!r}; valid keys are {', '.join(_KEYS)}")
    for key in ("asof", "rate", "positions", "market"):
        if key not in doc:
            raise JobError(f"{name}: required key {key!r} is missing; add it ({_KEYS[key]})")

    def bad(key: str) -> JobError:
        return JobError(f"{name}: key {key!r} must be {_KEYS[key]} (got {doc[key]!r})")

    asof = doc["asof"]
    if isinstance(asof, str):
        try:
            asof = _dt.date.fromisoformat(asof)
        except ValueError:
            raise bad("asof") from None
    if isinstance(asof, _dt.datetime):
        asof = asof.date()
    if not isinstance(asof, _dt.date):
        raise bad("asof")
    rate = doc["rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise bad("rate")

    def p(key: str) -> Path | None:
        if key not in doc:
            return None
        if not isinstance(doc[key], str) or not doc[key]:
            raise bad(key)
        v = Path(doc[key])
        return v if v.is_absolute() else Path(os.path.normpath(base / v))

    kw: dict[str, Any] = {}
    if "methodology" in doc:
        m = doc["methodology"]
        if not isinstance(m, str):
            raise bad("methodology")
        from ._methodology import PRESETS  # noqa: PLC0415

        kw["methodology"] = m if m in PRESETS else str(p("methodology"))
    if "device" in doc:
        if doc["device"] not in ("auto", "cpu", "gpu"):
            raise bad("device")
        kw["device"] = doc["device"]
    if "scheduler" in doc:
        kw["scheduler"] = check_scheduler(doc["scheduler"], name)
    if "multipliers" in doc:
        ms = doc["multipliers"]
        if not isinstance(ms, list) or not ms or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                       or not 0 < x < float("inf") for x in ms):  # NaN fails too
            raise bad("multipliers")
        kw["multipliers"] = tuple(float(x) for x in ms)
    for key in ("partition_rows", "due_days"):
        if key in doc:
            v = doc[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "partition_rows" else 0):
                raise bad(key)
            kw[key] = v
    return Job(
        path=path, asof=asof, rate=float(rate), positions=p("positions"), market=p("market"),
        accounts=p("accounts"), out=p("out") or Path(os.path.normpath(base / "out")), scenarios=p("scenarios"), **kw,
    )


def check_scheduler(value: Any, where: str = "--scheduler") -> str:
    if isinstance(value, str) and (value in SCHEDULERS or value.startswith(("tcp://", "tls://", "ucx://"))):
        return value
    raise JobError(f"{where}: scheduler must be threads, sync, processes or a dask.distributed address "
                   f"like tcp://HOST:8786 (got {value!r})")
