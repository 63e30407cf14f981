"""Margin calls (SPEC section 6): every account whose NLV falls short, with a due date.

A portfolio account is called for ``pm_deficit`` when NLV < its PM requirement,
and for ``min_equity`` when NLV is below the methodology's ``min_equity`` (the
larger deficit is the reason); a Reg T account for ``regt_deficit`` when NLV <
its Reg T maintenance requirement. Due dates are ``due_days`` NYSE sessions
after the as-of date (``exchange_calendars``' XNYS calendar).
"""

from __future__ import annotations

import datetime as _dt
import functools
from typing import Any

import numpy as np
import pandas as pd

from ._backend import Backend
from ._methodology import Methodology


@functools.lru_cache(maxsize=1)
def _nyse() -> Any:
    import exchange_calendars as xcals  # noqa: PLC0415

    return xcals.get_calendar("XNYS", start="2000-01-01")


def due_date(asof: _dt.date, business_days: int) -> _dt.date:
    """``business_days`` NYSE sessions after ``asof`` (from the next session if ``asof`` is a holiday)."""
    cal = _nyse()
    ts = pd.Timestamp(asof)
    session = cal.date_to_session(ts, direction="next")
    if session != ts and business_days > 0:  # asof was not a session: the next session counts as day 1
        business_days -= 1
    return cal.session_offset(session, business_days).date()


def margin_calls(accounts: pd.DataFrame, meth: Methodology, asof: _dt.date, due_days: int) -> pd.DataFrame:
    """One call per account in deficit: ``account_id, reason, requirement, nlv, deficit, asof, due``."""
    a = accounts
    portfolio = (a["account_type"] == "portfolio").to_numpy()
    req = a["requirement"].to_numpy(np.float64)
    nlv = a["nlv"].to_numpy(np.float64)
    deficit = req - nlv
    min_eq = float(meth.min_equity)
    has_positions = (a["n_positions"].to_numpy() > 0)
    eq_def = np.where(portfolio & has_positions, min_eq - nlv, -np.inf)
    use_eq = eq_def > np.maximum(deficit, 0.0)
    reason = np.where(use_eq, "min_equity", np.where(portfolio, "pm_deficit", "regt_deficit"))
    called = (deficit > 0.0) | (eq_def > 0.0)
    calls = pd.DataFrame({
        "account_id": a["account_id"].to_numpy(object)[called],
        "reason": reason[called],
        "requirement": np.where(use_eq, min_eq, req)[called],
        "nlv": nlv[called],
        "deficit": np.where(use_eq, eq_def, deficit)[called],
    })
    calls["asof"] = asof
    calls["due"] = due_date(asof, due_days)
    return calls.sort_values("account_id", kind="stable").reset_index(drop=True)


def margin_calls_and_plans(res: dict[str, Any], meth: Methodology, backend: Backend, *, asof: _dt.date,
                           due_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calls for the accounts of ``res`` (from ``margin_frames``) and their liquidation plans."""
    from ._liquidation import liquidation_plans  # noqa: PLC0415

    calls = margin_calls(res["accounts"], meth, asof, due_days)
    plans = liquidation_plans(res, calls, meth, backend)
    return calls, plans
