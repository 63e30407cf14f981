"""Regulators' scenario replays end to end: the CLI, scenario files, multipliers, audit."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from gpu_margin import option_price

T_B = 45 / 365


@pytest.fixture()
def two_stock_book(tmp_path):
    """Long 100 A at 150, short 1 B 50 call (the founding two-stock example), plus a second account."""
    d = tmp_path / "book"
    d.mkdir()
    pd.DataFrame({
        "account_id": ["X", "X", "Y"],
        "underlying": ["A", "B", "A"],
        "kind": ["stock", "option", "stock"],
        "right": [None, "C", None],
        "strike": [None, 50.0, None],
        "expiry": pd.to_datetime([None, pd.Timestamp("2024-03-15") + pd.Timedelta(days=45), None]),
        "style": [None, "E", None],
        "quantity": [100.0, -1.0, -10.0],
    }).to_parquet(d / "positions.parquet")
    pd.DataFrame({"underlying": ["A", "B"], "spot": [150.0, 48.0], "vol": [0.25, 0.35],
                  "dividend_yield": [0.0, 0.0], "product_group": ["equity", "equity"]}).to_parquet(d / "market.parquet")
    pd.DataFrame({"scenario_id": ["s1", "s1", "s2"], "underlying": ["A", "B", "*"],
                  "price_shock": [-0.10, 0.20, -0.05], "vol_shock": [0.0, 0.30, 0.0],
                  "label": ["crash", "crash", "dip"]}).to_csv(d / "scen.csv", index=False)
    (d / "job.toml").write_text('asof = "2024-03-15"\nrate = 0.05\npositions = "positions.parquet"\n'
                                'market = "market.parquet"\nmethodology = "finra"\nout = "out"\n')
    return d


def replay(book, out, *extra, scen="scen.csv"):
    return subprocess.run([sys.executable, "-m", "gpu_margin", "replay", str(book / "job.toml"), "--scenarios",
                           str(book / scen), "--out", str(out), "--quiet", *map(str, extra)],
                          capture_output=True, text=True)


def expected_pnl(scenario, mult):
    v0 = float(option_price("C", 48.0, 50.0, T_B, 0.35, 0.05))
    if scenario == "s1":
        a, b, vs = -0.10 * mult, 0.20 * mult, 0.30 * mult
    else:
        a, b, vs = -0.05 * mult, -0.05 * mult, 0.0
    x = 100 * 150.0 * a - 100 * (float(option_price("C", 48.0 * (1 + b), 50.0, T_B, 0.35 * (1 + vs), 0.05)) - v0)
    y = -10 * 150.0 * a
    return x, y


def test_replay_matches_independent_per_position_calculation(two_stock_book, tmp_path):
    res = replay(two_stock_book, tmp_path / "r", "--multipliers", "1,2,5")
    assert res.returncode == 0, res.stderr
    import json

    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["scenarios_provenance"] is None  # a CSV
    spnl = pd.read_parquet(tmp_path / "r" / "scenario_pnl")
    assert len(spnl) == 2 * 2 * 3
    for r in spnl.itertuples():
        x, y = expected_pnl(r.scenario_id, r.multiplier)
        assert r.pnl == pytest.approx(x if r.account_id == "X" else y, rel=1e-10)
    acc = pd.read_parquet(tmp_path / "r" / "accounts.parquet").set_index("account_id")
    worst_x = max(-expected_pnl(s, m)[0] for s in ("s1", "s2") for m in (1, 2, 5))
    assert acc.loc["X", "pm_requirement"] == pytest.approx(worst_x, rel=1e-10)
    firm = pd.read_parquet(tmp_path / "r" / "firm_pnl.parquet")
    for r in firm.itertuples():
        assert r.pnl == pytest.approx(sum(expected_pnl(r.scenario_id, r.multiplier)), rel=1e-10)


def test_multipliers_scale_shocks_exactly(two_stock_book, tmp_path):
    assert replay(two_stock_book, tmp_path / "r", "--multipliers", "1,3").returncode == 0
    spnl = pd.read_parquet(tmp_path / "r" / "scenario_pnl")
    y = spnl[spnl["account_id"] == "Y"].set_index(["scenario_id", "multiplier"])["pnl"]
    # a stock's P/L is linear in the shock: 3x the shock is 3x the P/L
    np.testing.assert_allclose(y.xs(3.0, level="multiplier"), 3 * y.xs(1.0, level="multiplier"), rtol=1e-12)


def test_replay_reruns_are_byte_identical_and_verify_catches_a_changed_byte(two_stock_book, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert replay(two_stock_book, a).returncode == 0
    assert replay(two_stock_book, b).returncode == 0
    files = sorted(p.relative_to(a) for p in a.rglob("*.parquet"))
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    ok = subprocess.run([sys.executable, "-m", "gpu_margin", "verify", str(a)], capture_output=True, text=True)
    assert ok.returncode == 0
    for f in files:
        target = tmp_path / f"tamper-{f.name}"
        subprocess.run(["cp", "-r", str(a), str(target)], check=True)
        raw = bytearray((target / f).read_bytes())
        raw[len(raw) // 2] ^= 0x01
        (target / f).write_bytes(bytes(raw))
        bad = subprocess.run([sys.executable, "-m", "gpu_margin", "verify", str(target)], capture_output=True,
                             text=True)
        assert bad.returncode == 2 and str(f) in bad.stdout and "Traceback" not in bad.stderr


@pytest.mark.parametrize("rows, needle", [
    ({"underlying": ["ZZZ"], "price_shock": [0.1]}, "ZZZ"),
    ({"underlying": ["group:nope"], "price_shock": [0.1]}, "group:nope"),
    ({"underlying": ["A"], "price_shock": ["lots"]}, "price_shock"),
])
def test_bad_scenario_file_is_a_one_line_error_naming_the_row(two_stock_book, tmp_path, rows, needle):
    pd.DataFrame({"scenario_id": ["s"], **rows}).to_csv(two_stock_book / "bad.csv", index=False)
    res = replay(two_stock_book, tmp_path / "r", scen="bad.csv")
    assert res.returncode == 2
    assert needle in res.stderr and "row 0" in res.stderr and res.stderr.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("multipliers", ["1,inf", "1,nan", "0", "-1"])
def test_multipliers_must_be_positive_and_finite(two_stock_book, tmp_path, multipliers):
    res = replay(two_stock_book, tmp_path / "r", "--multipliers", multipliers)
    assert res.returncode == 2 and "--multipliers" in res.stderr and res.stderr.count("\n") == 1, res.stderr
    job = two_stock_book / "job.toml"
    job.write_text(job.read_text() + f"multipliers = [1.0, {multipliers.split(',')[-1]}]\n")
    res = replay(two_stock_book, tmp_path / "r")
    assert res.returncode == 2 and "multipliers" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_underlyings_no_scenario_names_are_noted_in_the_manifest(two_stock_book, tmp_path):
    import json

    pd.DataFrame({"scenario_id": ["s1"], "underlying": ["A"], "price_shock": [-0.1]}).to_csv(
        two_stock_book / "only_a.csv", index=False)
    res = replay(two_stock_book, tmp_path / "r", scen="only_a.csv")
    assert res.returncode == 0, res.stderr
    notes = json.loads((tmp_path / "r" / "manifest.json").read_text())["notes"]
    assert any(n.startswith("scenarios: 1 underlying(s) of the market are named by no row") and n.endswith(": B")
               for n in notes), notes
    res = replay(two_stock_book, tmp_path / "star")  # scen.csv has a '*' row: nothing to note
    notes = json.loads((tmp_path / "star" / "manifest.json").read_text())["notes"]
    assert not any(n.startswith("scenarios:") for n in notes)


def test_scenario_pnl_has_every_reported_account(two_stock_book, tmp_path):
    """A cash-only account and one whose only position is rejected are in the accounts table, so they are in
    scenario_pnl too, with P/L 0 under every scenario; the others' rows are unchanged."""
    ref = replay(two_stock_book, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    pos = pd.read_parquet(two_stock_book / "positions.parquet")
    bad = pos.iloc[[0]].assign(account_id="R", underlying="NOPE")
    pd.concat([pos, bad], ignore_index=True).to_parquet(two_stock_book / "positions.parquet")
    pd.DataFrame({"account_id": ["X", "Z"], "cash": [0.0, 5000.0]}).to_parquet(two_stock_book / "accounts.parquet")
    job = two_stock_book / "job.toml"
    job.write_text(job.read_text() + 'accounts = "accounts.parquet"\n')
    res = replay(two_stock_book, tmp_path / "r", "--partitions", 2)
    assert res.returncode == 0, res.stderr
    spnl = pd.read_parquet(tmp_path / "r" / "scenario_pnl")
    acc = pd.read_parquet(tmp_path / "r" / "accounts.parquet")
    assert sorted(spnl["account_id"].unique()) == sorted(acc["account_id"]) == ["R", "X", "Y", "Z"]
    assert (spnl.loc[spnl["account_id"].isin(["R", "Z"]), "pnl"] == 0.0).all()
    def rows(frame):
        frame = frame.astype({"account_id": str, "scenario_id": str})
        return frame.sort_values(["account_id", "scenario_id", "multiplier"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(rows(spnl[spnl["account_id"].isin(["X", "Y"])]),
                                  rows(pd.read_parquet(tmp_path / "ref" / "scenario_pnl")))


def test_a_multiplier_past_minus_100_percent_names_scenario_underlying_and_multiplier(two_stock_book, tmp_path):
    """s1 shocks A by -10%: x20 is -200%. The error names all three and leaves no OUT.partial behind."""
    res = replay(two_stock_book, tmp_path / "r", "--multipliers", "1,20")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "scenario 's1' shocks 'A' by -0.1" in res.stderr and "multiplier 20" in res.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()


def test_an_empty_scenario_file_is_a_one_line_error(two_stock_book, tmp_path):
    pd.DataFrame({"scenario_id": pd.Series(dtype=str), "underlying": pd.Series(dtype=str),
                  "price_shock": pd.Series(dtype=float)}).to_parquet(two_stock_book / "empty.parquet")
    res = replay(two_stock_book, tmp_path / "r", scen="empty.parquet")
    assert res.returncode == 2 and "no scenarios" in res.stderr and res.stderr.count("\n") == 1, res.stderr


@pytest.mark.parametrize(("n", "m", "rows"), [(7, 5, 6), (7, 5, 35), (7, 5, 1000), (1, 3, 1), (0, 4, 3), (3, 0, 3)])
def test_scenario_pnl_written_a_row_group_at_a_time_is_the_file_written_whole(tmp_path, monkeypatch, n, m, rows):
    """A partition's account × scenario P/L goes to Parquet one row group at a time (bounded memory): the same
    bytes as the whole long table written at once, and the values of the long frame."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import gpu_margin._outputs as outputs
    from gpu_margin._compute import ScenarioPnl

    rng = np.random.default_rng(n * 10 + m)
    index = pd.DataFrame({"scenario_id": [f"S{j}" for j in range(m)], "multiplier": rng.choice([1.0, 2.0], m),
                          "weight": np.ones(m), "label": [""] * m})
    sp = ScenarioPnl(rng.normal(size=(n, m)), np.array([f"A{i:03d}" for i in range(n)], dtype=object), index)
    monkeypatch.setattr(outputs, "ROW_GROUP_ROWS", rows)
    outputs.write_table(pa.concat_tables(sp.arrow_pieces(max(n * m, 1))), tmp_path / "whole.parquet")
    sp.write(tmp_path / "pieces.parquet")
    assert (tmp_path / "whole.parquet").read_bytes() == (tmp_path / "pieces.parquet").read_bytes()
    md = pq.ParquetFile(tmp_path / "pieces.parquet").metadata
    assert md.num_rows == n * m and md.num_row_groups == max(-(-n * m // rows), 1)
    got = pd.read_parquet(tmp_path / "pieces.parquet")
    want = sp.frame()
    for col in ("account_id", "scenario_id"):
        assert got[col].astype(str).tolist() == want[col].astype(str).tolist()
    np.testing.assert_array_equal(got["multiplier"].to_numpy(), want["multiplier"].to_numpy(np.float64))
    np.testing.assert_array_equal(got["pnl"].to_numpy(), want["pnl"].to_numpy(np.float64))


def test_a_scenario_loss_that_is_not_a_number_stops_the_replay_naming_the_account(monkeypatch):
    """Never a zero requirement from NaN, in replays too: a non-finite account loss is a one-line error."""
    from gpu_margin import _compute, compute
    from gpu_margin._exceptions import UserInputError

    original = _compute.scenario_pnl_by_account
    monkeypatch.setattr(_compute, "scenario_pnl_by_account", lambda *a, **k: original(*a, **k) * np.nan)
    positions = pd.DataFrame({"account_id": ["X"], "underlying": ["A"], "kind": ["stock"], "quantity": [100.0]})
    market = pd.DataFrame({"underlying": ["A"], "spot": [150.0], "vol": [0.25], "dividend_yield": [0.0],
                           "product_group": ["equity"]})
    scen = pd.DataFrame({"scenario_id": ["s1"], "underlying": ["A"], "price_shock": [-0.1]})  # weight 1 by default
    kwargs = dict(asof="2024-03-15", rate=0.05, methodology="scenarios", device="cpu", scenarios=scen)
    with pytest.raises(UserInputError, match=r"^account X: the largest loss .* not a finite") as e:
        compute(positions, market, **kwargs)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(_compute, "scenario_pnl_by_account", original)
    acc = compute(positions, market, **kwargs)["accounts"]
    assert acc["pm_requirement"].iloc[0] == pytest.approx(100 * 150.0 * 0.1, rel=1e-12)


def test_an_in_memory_scenario_frame_is_checked_as_a_file_is():
    """``compute(scenarios=frame)``: the optional columns default as in a file, bad values are one-line errors."""
    from gpu_margin import compute
    from gpu_margin._exceptions import InputFileError

    positions = pd.DataFrame({"account_id": ["X"], "underlying": ["A"], "kind": ["stock"], "quantity": [100.0]})
    market = pd.DataFrame({"underlying": ["A"], "spot": [150.0], "vol": [0.25], "dividend_yield": [0.0],
                           "product_group": ["equity"]})
    kwargs = dict(asof="2024-03-15", rate=0.05, methodology="scenarios", device="cpu")
    for frame, needle in (
        (pd.DataFrame({"scenario_id": ["s1"], "underlying": ["A"]}), "required column 'price_shock'"),
        (pd.DataFrame({"scenario_id": ["s1"], "underlying": ["A"], "price_shock": [-1.2]}), "must be > -1"),
        (pd.DataFrame({"scenario_id": ["s1"], "underlying": ["A"], "price_shock": ["x"]}), "finite number"),
    ):
        with pytest.raises(InputFileError, match=needle) as e:
            compute(positions, market, scenarios=frame, **kwargs)
        assert str(e.value).startswith("scenarios: ") and "\n" not in str(e.value)
