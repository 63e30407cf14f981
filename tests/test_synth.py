"""gpu-margin synth: deterministic, exactly N positions, whole accounts per file, a realistic valid book."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gpu_margin import _synth
from gpu_margin._io import read_accounts, read_market, read_positions
from gpu_margin._schema import SCENARIOS_SCHEMA
from gpu_margin._validate import validate_positions

N_BOOK = 20_000


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "book"
    summary = _synth.write_book(out, N_BOOK, seed=7)
    return out, summary


@pytest.fixture(scope="module")
def validated(book):
    out, _ = book
    job = tomllib.loads((out / "job.toml").read_text())
    positions = read_positions(out / job["positions"])
    market = read_market(out / job["market"])
    valid, rejects = validate_positions(positions.frame, market.frame, asof=job["asof"], rate=job["rate"])
    return positions, market, valid, rejects


def files_of(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())


def test_layout_and_job_file(book):
    out, summary = book
    assert files_of(out) == [
        "accounts.parquet", "job.toml", "market.parquet", "positions/part-00000.parquet", "scenarios.parquet",
    ]
    job = tomllib.loads((out / "job.toml").read_text())
    assert job == {
        "asof": _synth.ASOF.isoformat(), "rate": _synth.RATE, "positions": "positions",
        "market": "market.parquet", "accounts": "accounts.parquet", "methodology": "finra", "out": "out",
    }
    assert summary.positions == N_BOOK and "job.toml" in str(summary)
    assert not list(out.parent.glob(".book.tmp-*"))


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    _synth.write_book(tmp_path / "a", 3000, seed=11)
    _synth.write_book(tmp_path / "b", 3000, seed=11)
    _synth.write_book(tmp_path / "c", 3000, seed=12)
    for name in files_of(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    a = (tmp_path / "a" / "positions" / "part-00000.parquet").read_bytes()
    assert a != (tmp_path / "c" / "positions" / "part-00000.parquet").read_bytes()


@pytest.mark.parametrize("n", [1, 7, 1234])
def test_exactly_n_positions(tmp_path, n):
    s = _synth.write_book(tmp_path / "b", n, seed=3)
    assert pq.read_metadata(tmp_path / "b" / "positions" / "part-00000.parquet").num_rows == n == s.positions
    accounts = pd.read_parquet(tmp_path / "b" / "accounts.parquet")
    positions = pd.read_parquet(tmp_path / "b" / "positions")
    assert set(accounts["account_id"]) == set(positions["account_id"])


def test_several_files_hold_whole_accounts(tmp_path, monkeypatch):
    monkeypatch.setattr(_synth, "ROWS_PER_FILE", 2_000)
    monkeypatch.setattr(_synth, "ACCOUNTS_PER_BATCH", 150)
    s = _synth.write_book(tmp_path / "b", 9_000, seed=5)
    parts = sorted((tmp_path / "b" / "positions").glob("part-*.parquet"))
    assert s.files == len(parts) >= 3
    owners = {}
    total = 0
    for i, p in enumerate(parts):
        df = pd.read_parquet(p, columns=["account_id"])
        total += len(df)
        for a in df["account_id"].unique():
            assert owners.setdefault(a, i) == i, f"account {a} spans two files"
    assert total == 9_000


def test_every_position_is_valid(validated):
    positions, _, valid, rejects = validated
    assert len(rejects) == 0, rejects.head().to_string()
    assert len(valid) == N_BOOK
    assert (valid["vol_source"] != "market").sum() == (valid["kind"] == "option").sum()  # every option has iv
    assert positions.extra_columns == ("strategy",)


def test_mix_of_kinds_and_short_options(validated):
    _, _, valid, _ = validated
    share = valid["kind"].value_counts(normalize=True)
    assert 0.4 < share["option"] < 0.8 and 0.2 < share["stock"] < 0.5 and 0.005 < share["future"] < 0.1
    opts = valid[valid["kind"] == "option"]
    assert 0.3 < (opts["quantity"] < 0).mean() < 0.8
    assert 0.2 < opts["is_call"].mean() < 0.8
    assert (valid.loc[valid["kind"] == "stock", "quantity"] < 0).any()


def test_archetypes_present(validated, book):
    _, _, valid, _ = validated
    assert set(valid["strategy"]) == set(_synth.ARCHETYPES)
    accounts = read_accounts(book[0] / "accounts.parquet").frame
    assert accounts["archetype"].nunique() >= 10


def test_account_sizes_are_heavy_tailed(validated):
    _, _, valid, _ = validated
    per_account = valid.groupby("account_id").size()
    assert per_account.median() <= 4 and per_account.max() >= 50 * per_account.median()


def test_market_is_realistic(validated):
    _, market, _, _ = validated
    m = market.frame
    assert 250 <= len(m) <= 400
    assert set(m["product_group"]) == {"equity", "broad_index_high_cap", "broad_index", "narrow_index"}
    idx = m[m["product_group"] != "equity"]
    assert (idx["option_style"] == "E").all()
    assert (m.loc[m["product_group"] == "equity", "option_style"] == "A").all()
    assert m.set_index("underlying").loc["SPY", "tracks"] == "SPX"
    assert set(m["tracks"].dropna()) <= set(idx["underlying"])
    assert m["spot"].between(1, 30_000).all() and m["vol"].between(0.03, 1.6).all()
    assert m["dividend_yield"].between(0, 0.07).all() and (m["dividend_yield"] == 0).any()


def test_options_have_listed_strikes_monthly_expiries_and_a_smile(validated):
    _, market, valid, _ = validated
    opts = valid[valid["kind"] == "option"]
    exp = pd.DatetimeIndex(opts["expiry"])
    assert (exp.day_of_week == 4).all() and exp.day.isin(range(15, 22)).all()
    assert (opts["t"] > 0).all() and (opts["t"] <= 2.0).all()
    inc = pd.Series(_synth._increment(market.frame["spot"].to_numpy(), _synth.build_universe(7).cls),
                    index=market.frame["underlying"])
    ratio = opts["strike"].to_numpy() / inc.loc[opts["underlying"]].to_numpy()
    assert np.allclose(ratio, np.round(ratio))
    assert (opts.loc[opts["product_group"] != "equity", "style"] == "E").all()
    assert (opts.loc[opts["product_group"] == "equity", "style"] == "A").all()
    # the smile: out-of-the-money puts richer than the market vol, far calls cheaper
    spx = opts[(opts["underlying"] == "SPX") & (opts["t"] > 0.1)]
    k = np.log(spx["strike"] / spx["spot"])
    assert spx.loc[k < -0.1, "iv"].mean() > spx["vol_market"].iloc[0] > spx.loc[k > 0.1, "iv"].mean()


def test_marks_agree_with_the_model(validated):
    from gpu_margin import option_price

    _, _, valid, _ = validated
    o = valid[valid["kind"] == "option"].head(200)
    model = option_price(np.where(o["is_call"], "C", "P"), o["spot"].to_numpy(), o["strike"].to_numpy(),
                         o["t"].to_numpy(), o["iv"].to_numpy(), o["rate"].to_numpy(), o["dividend_yield"].to_numpy(),
                         np.where(o["american"], "A", "E"))
    assert np.allclose(model, o["mark"], rtol=1e-9, atol=1e-9)
    stock = valid[valid["kind"] == "stock"]
    assert (stock["mark"] == stock["spot"]).all()


def test_a_few_percent_of_accounts_in_deficit_under_the_proxy(validated, book):
    _, _, valid, _ = validated
    accounts = read_accounts(book[0] / "accounts.parquet").frame.set_index("account_id")
    v = valid
    notional = v["quantity"].abs() * v["multiplier"] * v["spot"]
    counted = (v["kind"] != "option") | (v["quantity"] < 0)
    proxy = (_synth.PROXY_RATE * notional.where(counted, 0.0)).groupby(v["account_id"]).sum()
    value = (v["quantity"] * v["multiplier"] * v["mark"]).where(v["kind"] != "future", 0.0)
    nlv = accounts["cash"] + value.groupby(v["account_id"]).sum().reindex(accounts.index)
    deficit = (nlv < proxy.reindex(accounts.index) - 1.0).mean()
    assert 0.01 < deficit < 0.08
    assert set(accounts["account_type"]) == {"portfolio", "regt"}


def test_scenarios_file(book):
    t = pq.read_table(book[0] / "scenarios.parquet")
    assert t.schema.equals(SCENARIOS_SCHEMA)
    df = t.to_pandas()
    assert df["scenario_id"].nunique() >= 5
    assert (df["underlying"] == "*").any() and df["underlying"].str.startswith("group:").any()
    assert df["price_shock"].between(-1, 1).all()


# ---------------------------------------------------------------- the command line


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "gpu_margin", "synth", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_cli_writes_a_book(tmp_path):
    res = cli("--out", str(tmp_path / "bk"), "--positions", "300", "--seed", "2")
    assert res.returncode == 0, res.stderr
    assert "300 positions" in res.stdout
    assert (tmp_path / "bk" / "job.toml").is_file()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--positions", "0"], ["--positions"]),
        (["--positions", "-5"], ["--positions"]),
        (["--positions", "10", "--seed", "-1"], ["--seed"]),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(tmp_path, args, words):
    res = cli("--out", str(tmp_path / "bk"), *args)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    for w in words:
        assert w in res.stderr
    assert not (tmp_path / "bk").exists()


def test_cli_bad_arguments_exit_2_without_traceback(tmp_path):
    res = cli("--out", str(tmp_path / "bk"), "--positions", "many")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--positions" in res.stderr
    res = cli("--positions", "5")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--out" in res.stderr


def test_cli_refuses_a_non_empty_directory_unless_force(tmp_path):
    out = tmp_path / "bk"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = cli("--out", str(out), "--positions", "5")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--force" in res.stderr
    res = cli("--out", str(out), "--positions", "5", "--force")
    assert res.returncode == 2 and (out / "notes.txt").exists()  # not a previous book: kept
    (out / "notes.txt").unlink()
    assert cli("--out", str(out), "--positions", "5").returncode == 0  # empty folder is fine
    res = cli("--out", str(out), "--positions", "9", "--force")
    assert res.returncode == 0, res.stderr
    assert pq.read_metadata(out / "positions" / "part-00000.parquet").num_rows == 9


def test_cli_unwritable_parent_is_a_user_error(tmp_path):
    res = cli("--out", str(tmp_path / "missing" / "bk"), "--positions", "5")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
