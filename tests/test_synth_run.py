"""The synthetic book behaves like a broker's book once margined (issue 3's realism after a run)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    py = [sys.executable, "-m", "gpu_margin"]
    subprocess.run([*py, "synth", "--out", str(d / "book"), "--positions", "6000", "--seed", "7"], check=True,
                   capture_output=True)
    subprocess.run([*py, "run", str(d / "book" / "job.toml"), "--out", str(d / "out"), "--quiet"], check=True,
                   capture_output=True)
    return d / "out"


def test_a_few_percent_of_accounts_are_in_deficit(run_dir):
    acc = pd.read_parquet(run_dir / "accounts.parquet")
    share = (acc["excess"] < 0).mean()
    assert 0.01 <= share <= 0.12, share
    calls = pd.read_parquet(run_dir / "margin_calls.parquet")
    deficit_calls = calls[calls["reason"].isin(["pm_deficit", "regt_deficit"])]
    assert set(deficit_calls["account_id"]) == set(acc.loc[acc["excess"] < 0, "account_id"])


def test_portfolio_margin_is_mostly_below_reg_t(run_dir):
    acc = pd.read_parquet(run_dir / "accounts.parquet")
    held = acc[acc["n_positions"] > 0]
    # risk-based margin recognises hedges that strategy-based rules do not
    assert (held["pm_requirement"] <= held["regt_maintenance"]).mean() > 0.7


def test_every_position_is_priced_and_strategies_are_varied(run_dir):
    import json

    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["counts"]["positions_rejected"] == 0 and m["counts"]["reconciles"]
    legs = pd.read_parquet(run_dir / "regt_legs.parquet")
    assert legs["strategy"].nunique() >= 6
