"""Margin calls (SPEC section 6): every account whose NLV falls short, with a due date.

One call per account at most, with one reason:

- ``pm_deficit``: a ``portfolio`` account with ``excess < 0`` (NLV below its
  portfolio-margin requirement); ``deficit = -excess``.
- ``regt_deficit``: a ``regt`` account with ``excess < 0`` (NLV below its Reg T
  maintenance requirement); ``deficit = -excess``.
- ``min_equity``: a ``portfolio`` account that holds at least one valid
  position, has ``excess >= 0``, and whose NLV is below the methodology's
  ``min_equity`` (FINRA 4210(g): $100,000 in the ``finra`` and ``house``
  presets; 0 = off); ``requirement = min_equity``, ``deficit = min_equity - NLV``.

So the deficit calls are exactly the accounts with negative excess, and a
``min_equity`` call is a separate reason on an account that meets its margin
requirement. A ``portfolio`` account short of both is called for its
``pm_deficit`` (the amount liquidation can cure); its equity shortfall shows
as a ``min_equity`` call once the margin deficit is met. Reg T accounts have
no ``min_equity`` call. Due dates are ``due_days`` NYSE sessions after the
as-of date (``exchange_calendars``' XNYS calendar: weekends and NYSE holidays
are skipped). See ``docs/calls.md``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._backend import Backend
from ._exceptions import JobError
from ._methodology import Methodology

__all__ = ["CALL_COLUMNS", "due_date", "margin_calls", "margin_calls_and_plans", "nyse_sessions"]

CALL_COLUMNS = ["account_id", "reason", "requirement", "nlv", "deficit", "asof", "due"]
CALENDAR_START = "1990-01-01"
CALENDAR_END = "2075-12-31"


@functools.lru_cache(maxsize=1)
def nyse_sessions() -> np.ndarray:
    """NYSE sessions 1990–2075 (``exchange_calendars`` XNYS, special closures included), ``datetime64[D]``.

    Building the calendar costs about a second (the library's import and its
    holiday rules), so the sessions are kept in a file of the user's cache
    directory (``$XDG_CACHE_HOME/gpu-margin``, else ``~/.cache/gpu-margin``)
    named by the ``exchange-calendars`` version and the range: a new version
    builds them afresh. A cache that cannot be read or written is skipped.
    """
    path = _sessions_cache()
    if path is not None:
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.dtype == np.dtype("datetime64[D]") and cached.ndim == 1 and cached.size:
                return cached
        except (OSError, ValueError):
            pass
    import exchange_calendars as xcals  # noqa: PLC0415

    # exchange_calendars uses pandas APIs that newer pandas deprecates: not ours to act on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        cal = xcals.get_calendar("XNYS", start=CALENDAR_START, end=CALENDAR_END)
        sessions = np.asarray(cal.sessions.to_numpy(), dtype="datetime64[D]")
    if path is not None:
        try:  # written whole, then renamed into place: a reader never sees part of it
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, sessions, allow_pickle=False)
            os.replace(tmp, path)
        except OSError:
            pass
    return sessions


def _sessions_cache() -> Path | None:
    """The cache file of :func:`nyse_sessions`, or None where there is no cache directory to use."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        ver = version("exchange-calendars")
    except (RuntimeError, KeyError, PackageNotFoundError):
        return None
    return Path(base) / "gpu-margin" / f"xnys-sessions-{ver}-{CALENDAR_START}-{CALENDAR_END}.npy"


def due_date(asof: Any, business_days: int) -> _dt.date:
    """The date ``business_days`` NYSE sessions after ``asof``.

    An ``asof`` that is not a session (a weekend or holiday) counts from the
    next session, which is then business day 1 (``business_days = 0`` gives
    that session). Raises :class:`JobError` for a negative count or a due date
    outside the calendar's range (1990–2075).
    """
    if business_days < 0:
        raise JobError(f"due_days must be >= 0 (got {business_days}); give the number of business days to meet a call")
    sessions = nyse_sessions()
    day = np.datetime64(pd.Timestamp(asof).date(), "D")
    i = int(np.searchsorted(sessions, day, side="left"))  # the first session on or after asof
    if i < sessions.size and sessions[i] != day and business_days > 0:  # the next session is business day 1
        business_days -= 1
    j = i + business_days
    if day < sessions[0] or j >= sessions.size:
        raise JobError(f"asof {day} with due_days {business_days} falls outside the NYSE calendar used for due "
                       f"dates ({CALENDAR_START} to {CALENDAR_END}); use a date in that range")
    return sessions[j].astype(object)


def margin_calls(accounts: pd.DataFrame, meth: Methodology, asof: Any, due_days: int) -> pd.DataFrame:
    """One call per account short of its requirement or of the minimum equity.

    ``accounts`` is the accounts table of ``margin_frames`` (``account_id``,
    ``account_type``, ``requirement``, ``nlv``, ``excess``, ``n_positions``).
    Returns ``account_id, reason, requirement, nlv, deficit, asof, due``,
    sorted by ``account_id``; ``deficit > 0`` on every row.
    """
    a = accounts
    asof_d = pd.Timestamp(asof).date()
    portfolio = (a["account_type"] == "portfolio").to_numpy()
    req = a["requirement"].to_numpy(np.float64)
    nlv = a["nlv"].to_numpy(np.float64)
    excess = nlv - req
    min_eq = float(meth.min_equity)
    has_positions = a["n_positions"].to_numpy() > 0
    margin_deficit = excess < 0.0
    equity_short = portfolio & has_positions & ~margin_deficit & (nlv < min_eq)
    called = margin_deficit | equity_short
    reason = np.where(equity_short, "min_equity", np.where(portfolio, "pm_deficit", "regt_deficit"))
    requirement = np.where(equity_short, min_eq, req)
    calls = pd.DataFrame({
        "account_id": a["account_id"].to_numpy(object)[called],
        "reason": reason[called].astype(object),
        "requirement": requirement[called],
        "nlv": nlv[called],
        "deficit": (requirement - nlv)[called],
    })  # fmt: skip
    calls["asof"] = asof_d
    calls["due"] = due_date(asof_d, due_days)
    return calls.sort_values("account_id", kind="stable").reset_index(drop=True)[CALL_COLUMNS]


def margin_calls_and_plans(res: dict[str, Any], meth: Methodology, backend: Backend, *, asof: Any,
                           due_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calls for the accounts of ``res`` (from ``margin_frames``) and their liquidation plans.

    Returns ``(calls, plans)``: the ``margin_calls`` and ``liquidation`` tables
    of SPEC section 7 (see :func:`gpu_margin._liquidation.liquidation_plans`).
    """
    from ._liquidation import liquidation_plans  # noqa: PLC0415

    calls = margin_calls(res["accounts"], meth, asof, due_days)
    plans = liquidation_plans(res, calls, meth, backend)
    return calls, plans
