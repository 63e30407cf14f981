"""gpu-margin scenarios from-history: joint scenarios from daily closes (gpu_margin._history)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpu_margin._exceptions import InputFileError, JobError
from gpu_margin._history import read_prices, read_vols, scenarios_from_history, select_dates
from gpu_margin._main import main
from gpu_margin._scenarios import joint_table, read_scenario_file

DATA = Path(__file__).parents[2] / "shared" / "data"
CLOSES = DATA / "index_closes_1999_2018.csv.gz"
VIX = DATA / "vix_close_2014_2019.csv.gz"
real = pytest.mark.skipif(not (CLOSES.exists() and VIX.exists()), reason="shared market history not present")

DAYS = pd.bdate_range("2020-01-01", periods=10)


def synth_prices() -> pd.DataFrame:
    """AAA, BBB (equity), IDX (index, with iv), SOLO (narrow); BBB has no close on day 5, SOLO none on day 6."""
    rng = np.random.default_rng(7)
    rows = []
    for u, s0 in (("AAA", 100.0), ("BBB", 50.0), ("IDX", 3000.0), ("SOLO", 20.0)):
        closes = s0 * np.cumprod(1 + rng.normal(0, 0.02, DAYS.size))
        for i, d in enumerate(DAYS):
            if (u == "BBB" and i == 5) or (u == "SOLO" and i == 6):
                continue
            rows.append((d, u, closes[i], 0.20 + 0.01 * i if u == "IDX" else np.nan))
    return pd.DataFrame(rows, columns=["date", "underlying", "close", "iv"])


GROUPS = pd.Series({"AAA": "equity", "BBB": "equity", "IDX": "index", "SOLO": "narrow", "NEW": "equity"})


def close(p: pd.DataFrame, u: str, d) -> float:
    return float(p.loc[(p["underlying"] == u) & (p["date"] == pd.Timestamp(d)), "close"].iloc[0])


def row(out: pd.DataFrame, sid, u: str) -> pd.Series:
    return out.loc[(out["scenario_id"] == pd.Timestamp(sid).strftime("%Y-%m-%d")) & (out["underlying"] == u)].iloc[0]


# ------------------------------------------------------------------ synthetic


def test_one_day_returns_and_format():
    p = synth_prices()
    out = scenarios_from_history(p, [DAYS[3], DAYS[8]], 1)
    assert list(out.columns) == ["scenario_id", "underlying", "price_shock", "vol_shock", "vol_shock_mode", "weight",
                                 "label", "date", "proxy", "note"]
    assert len(out) == 2 * 4 and not out["proxy"].any()
    for d, prev in ((DAYS[3], DAYS[2]), (DAYS[8], DAYS[7])):
        for u in ("AAA", "IDX"):
            assert row(out, d, u)["price_shock"] == close(p, u, d) / close(p, u, prev) - 1
    r = row(out, DAYS[3], "IDX")
    assert r["vol_shock"] == pytest.approx(0.23 / 0.22 - 1, rel=1e-15)
    assert row(out, DAYS[3], "AAA")["vol_shock"] == 0.0
    assert r["label"] == f"{DAYS[3]:%Y-%m-%d} 1d" and r["weight"] == 1.0
    assert r["date"] == DAYS[3].date()
    assert "own history" in r["note"] and f"{DAYS[2]:%Y-%m-%d}" in r["note"]


def test_multi_day_horizon_counts_each_underlyings_own_rows():
    p = synth_prices()
    out = scenarios_from_history(p, f"{DAYS[8]:%Y-%m-%d}", 3)
    assert row(out, DAYS[8], "AAA")["price_shock"] == close(p, "AAA", DAYS[8]) / close(p, "AAA", DAYS[5]) - 1
    # BBB has no close on day 5: three of its own trading rows before day 8 reach back to day 4
    assert row(out, DAYS[8], "BBB")["price_shock"] == close(p, "BBB", DAYS[8]) / close(p, "BBB", DAYS[4]) - 1
    assert row(out, DAYS[8], "IDX")["vol_shock"] == pytest.approx(0.28 / 0.25 - 1)
    assert row(out, DAYS[8], "AAA")["label"].endswith(" 3d")


def test_proxy_uses_product_group_then_all_present():
    p = synth_prices()
    out = scenarios_from_history(p, [DAYS[5], DAYS[6]], 1, groups=GROUPS)
    assert sorted(out["underlying"].unique()) == ["AAA", "BBB", "IDX", "NEW", "SOLO"]
    aaa = row(out, DAYS[5], "AAA")
    bbb = row(out, DAYS[5], "BBB")  # no close on day 5: the equity group's present members (AAA)
    assert bbb["proxy"] and not aaa["proxy"]
    assert bbb["price_shock"] == aaa["price_shock"]
    assert "no close on" in bbb["note"] and "product group equity (AAA)" in bbb["note"]
    new = row(out, DAYS[6], "NEW")  # no history at all: equity mean of AAA and BBB
    assert new["proxy"] and "no price history" in new["note"]
    assert new["price_shock"] == pytest.approx((row(out, DAYS[6], "AAA")["price_shock"]
                                                + row(out, DAYS[6], "BBB")["price_shock"]) / 2)
    solo = row(out, DAYS[6], "SOLO")  # alone in its group: mean of all present
    present = out[(out["scenario_id"] == f"{DAYS[6]:%Y-%m-%d}") & ~out["proxy"]]
    assert solo["proxy"] and "mean of all present" in solo["note"]
    assert solo["price_shock"] == pytest.approx(present["price_shock"].mean())
    assert solo["vol_shock"] == pytest.approx(present["vol_shock"].mean())


def test_proxy_rows_flagged_exactly():
    out = scenarios_from_history(synth_prices(), [DAYS[5], DAYS[6]], 1, groups=GROUPS)
    flagged = set(zip(out.loc[out["proxy"], "scenario_id"], out.loc[out["proxy"], "underlying"]))
    d5, d6 = f"{DAYS[5]:%Y-%m-%d}", f"{DAYS[6]:%Y-%m-%d}"
    assert flagged == {(d5, "BBB"), (d5, "NEW"), (d6, "NEW"), (d6, "SOLO")}
    assert out.loc[out["proxy"], "note"].str.startswith("proxy: ").all()
    assert out.loc[~out["proxy"], "note"].str.startswith("own history: ").all()


def test_proxy_without_market_and_short_history():
    p = synth_prices()
    with pytest.raises(JobError, match="no underlying has a close on it and 3 trading day"):
        scenarios_from_history(p, [DAYS[2]], 3)  # no one has three closes before day 2
    out = scenarios_from_history(p, [DAYS[5]], 1)  # BBB absent, no groups: mean of all present
    bbb = row(out, DAYS[5], "BBB")
    others = out[~out["proxy"]]
    assert bbb["proxy"] and "no product group known" in bbb["note"]
    assert bbb["price_shock"] == pytest.approx(others["price_shock"].mean())
    late = p[~((p["underlying"] == "AAA") & (p["date"] < DAYS[4]))]  # AAA's history starts on day 4
    out = scenarios_from_history(late, [DAYS[5]], 2)
    assert row(out, DAYS[5], "AAA")["proxy"]
    assert "fewer than 3 closes up to" in row(out, DAYS[5], "AAA")["note"]


def test_vols_tables():
    p = synth_prices().drop(columns="iv")
    vols = pd.DataFrame({"date": DAYS, "underlying": "AAA", "iv": np.linspace(0.3, 0.4, DAYS.size)})
    out = scenarios_from_history(p, [DAYS[4]], 2, vols=vols)
    assert row(out, DAYS[4], "AAA")["vol_shock"] == pytest.approx(vols["iv"][4] / vols["iv"][2] - 1)
    assert "iv change" in row(out, DAYS[4], "AAA")["note"]
    assert row(out, DAYS[4], "BBB")["vol_shock"] == 0.0


def test_a_vols_file_replaces_the_prices_iv_of_its_underlyings_at_both_ends_of_a_window():
    """Prices carry iv 0.14 (a fraction); the vols file, in vol points, misses the window's start: no vol
    shock, not 13.76 / 0.14 - 1. An underlying the vols file does not name keeps the prices' iv."""
    p = synth_prices().assign(iv=0.14)
    p.loc[p["underlying"] == "BBB", "iv"] = np.linspace(0.2, 0.3, (p["underlying"] == "BBB").sum())
    vols = pd.DataFrame({"date": DAYS[3:], "underlying": "AAA", "iv": 13.76})
    out = scenarios_from_history(p, [DAYS[3], DAYS[4]], 1, vols=vols)
    assert row(out, DAYS[3], "AAA")["vol_shock"] == 0.0  # no vols-file iv on DAYS[2]
    assert row(out, DAYS[4], "AAA")["vol_shock"] == 0.0  # 13.76 -> 13.76
    bbb = p.loc[p["underlying"] == "BBB"].set_index("date")["iv"]
    assert row(out, DAYS[4], "BBB")["vol_shock"] == pytest.approx(bbb[DAYS[4]] / bbb[DAYS[3]] - 1)


def test_vix_file_applies_to_named_underlyings(tmp_path):
    f = tmp_path / "vix.csv"
    f.write_text("date,vix\n" + "".join(f"{d:%Y-%m-%d},{'.' if i == 1 else 20 + i}\n" for i, d in enumerate(DAYS)))
    vols = read_vols(f, ["AAA", "IDX"])
    assert set(vols["underlying"]) == {"AAA", "IDX"} and len(vols) == 2 * (DAYS.size - 1)
    out = scenarios_from_history(synth_prices().drop(columns="iv"), [DAYS[4], DAYS[2]], 1, vols=vols)
    assert row(out, DAYS[4], "IDX")["vol_shock"] == pytest.approx(24 / 23 - 1)
    assert row(out, DAYS[2], "IDX")["vol_shock"] == 0.0  # "." on day 1: no iv at the window's start
    assert row(out, DAYS[4], "BBB")["vol_shock"] == 0.0
    with pytest.raises(JobError, match="--vols-for"):
        read_vols(f, None)
    g = tmp_path / "novix.csv"
    g.write_text("date,level\n2020-01-01,20\n")
    with pytest.raises(InputFileError, match="novix.csv: required column 'vix'"):
        read_vols(g, ["AAA"])


def test_worst_picks_largest_falls():
    p = synth_prices()
    aaa = p[p["underlying"] == "AAA"].set_index("date")["close"].pct_change().dropna()
    expect = list(aaa.sort_values().index[:3])
    chosen = select_dates("worst:3@AAA", p)
    assert [d for d, _ in chosen] == expect
    assert [t for _, t in chosen] == ["AAA worst #1", "AAA worst #2", "AAA worst #3"]
    other = next(d for d in DAYS[1:] if d not in expect)
    out = scenarios_from_history(p, f"worst:3@AAA,{other:%Y-%m-%d},worst:1@AAA", 1)
    assert list(pd.unique(out["scenario_id"])) == [f"{d:%Y-%m-%d}" for d in expect] + [f"{other:%Y-%m-%d}"]
    with pytest.raises(JobError, match="needs a reference underlying"):
        select_dates("worst:2", p)
    with pytest.raises(JobError, match="ZZZ"):
        select_dates("worst:2@ZZZ", p)


def test_api_errors():
    p = synth_prices()
    with pytest.raises(JobError, match=r"date 2020-01-04 is not in the history.*2020-01-03 and 2020-01-06"):
        scenarios_from_history(p, "2020-01-04", 1)
    with pytest.raises(JobError, match="history runs 2020-01-01 to"):
        scenarios_from_history(p, "2021-01-04", 1)
    with pytest.raises(JobError, match="neither an ISO date"):
        scenarios_from_history(p, "15/10/2008", 1)
    for h in (0, -1, 1.5, "x"):
        with pytest.raises(JobError, match="--horizon"):
            scenarios_from_history(p, [DAYS[5]], h)


# ------------------------------------------------------------------ files and CLI


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    df.assign(date=df["date"].dt.strftime("%Y-%m-%d")).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_cli_writes_a_file_the_engine_reads(tmp_path, capsys, ext):
    prices = write_csv(tmp_path / "prices.csv", synth_prices())
    market = tmp_path / "market.parquet"
    GROUPS.rename("product_group").rename_axis("underlying").reset_index().to_parquet(market)
    out = tmp_path / f"scen.{ext}"
    rc = main(["scenarios", "from-history", str(prices), "--dates", f"{DAYS[5]:%Y-%m-%d},worst:2@IDX",
               "--horizon", "1", "--market", str(market), "--out", str(out)])
    assert rc == 0 and out.exists()
    assert "3 scenario(s) x 5 underlying(s)" in capsys.readouterr().out
    from gpu_margin._pipeline import _scenario_provenance

    prov = _scenario_provenance(out)  # what a replay's manifest records of the file
    if ext == "csv":
        assert prov is None
    else:
        import hashlib

        assert prov["command"] == "gpu-margin scenarios from-history"
        assert prov["arguments"] == {"dates": f"{DAYS[5]:%Y-%m-%d},worst:2@IDX", "horizon": 1, "vols_for": None}
        assert prov["inputs"]["prices"] == {"path": str(prices),
                                            "sha256": hashlib.sha256(prices.read_bytes()).hexdigest()}
        assert prov["inputs"]["market"]["sha256"] == hashlib.sha256(market.read_bytes()).hexdigest()
    scen = read_scenario_file(out)
    expect = scenarios_from_history(synth_prices(), f"{DAYS[5]:%Y-%m-%d},worst:2@IDX", 1, groups=GROUPS)
    np.testing.assert_array_equal(scen["price_shock"].to_numpy(), expect["price_shock"].to_numpy())
    assert scen["proxy"].astype(bool).tolist() == expect["proxy"].tolist()
    mk = GROUPS.rename("product_group").rename_axis("underlying").reset_index()
    table, index = joint_table(scen, mk, (1.0, 2.0))
    assert list(index["scenario_id"].unique()) == list(pd.unique(expect["scenario_id"]))
    j = list(table.underlyings).index("BBB")
    assert table.price_move[j, 0] == row(expect, DAYS[5], "BBB")["price_shock"]
    assert table.price_move[j, 1] == 2 * row(expect, DAYS[5], "BBB")["price_shock"]
    # an existing file is kept unless --force
    assert main(["scenarios", "from-history", str(prices), "--dates", f"{DAYS[5]:%Y-%m-%d}", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["scenarios", "from-history", str(prices), "--dates", f"{DAYS[5]:%Y-%m-%d}", "--out", str(out),
                 "--force"]) == 0


def _cli_error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("gpu-margin: error: ") and "Traceback" not in err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    p = synth_prices()
    good = write_csv(tmp_path / "prices.csv", p)
    out = str(tmp_path / "s.parquet")
    d5 = f"{DAYS[5]:%Y-%m-%d}"

    def run(prices, *extra):
        return _cli_error(capsys, ["scenarios", "from-history", str(prices), "--out", out, *extra])

    err = run(good, "--dates", "2020-01-04")
    assert "prices.csv" in err and "2020-01-04" in err and "not in the history" in err
    assert "--horizon" in run(good, "--dates", d5, "--horizon", "0")
    assert "--horizon" in run(good, "--dates", d5, "--horizon", "two")
    no_close = write_csv(tmp_path / "noclose.csv", p.drop(columns="close"))
    err = run(no_close, "--dates", d5)
    assert "noclose.csv" in err and "'close'" in err and "missing" in err
    bad = p.astype({"close": object})
    bad.loc[3, "close"] = "abc"
    err = run(write_csv(tmp_path / "bad.csv", bad), "--dates", d5)
    assert "bad.csv: line 5: column 'close' must be a number (got 'abc')" in err
    neg = p.copy()
    neg.loc[2, "close"] = -1.0
    assert "> 0" in run(write_csv(tmp_path / "neg.csv", neg), "--dates", d5)
    dup = pd.concat([p, p.iloc[[4]]], ignore_index=True)
    assert "twice" in run(write_csv(tmp_path / "dup.csv", dup), "--dates", d5)
    assert "not found" in run(tmp_path / "missing.parquet", "--dates", d5)
    assert "neither an ISO date" in run(good, "--dates", "yesterday")
    market = tmp_path / "market.csv"
    market.write_text("underlying,spot\nAAA,1\n")
    assert "'product_group'" in run(good, "--dates", d5, "--market", str(market))
    assert "--vols-for" in run(good, "--dates", d5, "--vols-for", "AAA")
    vix = tmp_path / "vix.csv"
    vix.write_text("date,vix\n" + "".join(f"{d:%Y-%m-%d},{20 + i}\n" for i, d in enumerate(DAYS)))
    err = run(good, "--dates", d5, "--vols", str(vix), "--vols-for", "AAA,SPXX")  # a typo: not a vol-less run
    assert "--vols-for: SPXX not in" in err and "check the names" in err
    other = tmp_path / "other_market.csv"
    other.write_text("underlying,product_group\nNDX,index\nRUT,index\n")
    err = run(good, "--dates", d5, "--market", str(other))
    assert "none of the market's underlyings (NDX, RUT) has a history" in err
    assert ".parquet or .csv" in _cli_error(capsys, ["scenarios", "from-history", str(good), "--dates", d5,
                                                     "--out", str(tmp_path / "s.txt")])
    assert not (tmp_path / "s.parquet").exists()


def test_missing_close_cells_mean_no_close(tmp_path):
    p = synth_prices()
    text = p.astype({"close": object})
    text.loc[(text["underlying"] == "AAA") & (text["date"] == DAYS[5]), "close"] = "."
    got = read_prices(write_csv(tmp_path / "p.csv", text))
    assert got["close"].isna().sum() == 1
    out = scenarios_from_history(got, [DAYS[5]], 1, groups=GROUPS)
    assert row(out, DAYS[5], "AAA")["proxy"] and "no close on" in row(out, DAYS[5], "AAA")["note"]


# ------------------------------------------------------------------ real market history


@real
def test_real_2008_10_15_one_day_move_is_exact():
    raw = pd.read_csv(CLOSES)
    spx = raw[raw["underlying"] == "SPX"].set_index("date")["close"]
    out = scenarios_from_history(read_prices(CLOSES), "2008-10-15", 1)
    r = row(out, "2008-10-15", "SPX")
    assert r["price_shock"] == spx["2008-10-15"] / spx["2008-10-14"] - 1
    assert r["price_shock"] == pytest.approx(-0.0903498, abs=1e-7)
    assert not out["proxy"].any() and r["label"] == "2008-10-15 1d"


@real
def test_real_multi_day_and_worst(tmp_path, capsys):
    prices = read_prices(CLOSES)
    raw = pd.read_csv(CLOSES)
    comp = raw[raw["underlying"] == "COMP"].set_index("date")["close"]
    out = scenarios_from_history(prices, "2008-10-15", 5)
    i = comp.index.get_loc("2008-10-15")
    assert row(out, "2008-10-15", "COMP")["price_shock"] == comp.iloc[i] / comp.iloc[i - 5] - 1
    chosen = [f"{d:%Y-%m-%d}" for d, _ in select_dates("worst:3@SPX", prices)]
    assert chosen == ["2008-10-15", "2008-12-01", "2008-09-29"]
    spx = raw[raw["underlying"] == "SPX"].set_index("date")["close"].pct_change()
    assert chosen == list(spx.nsmallest(3).index)
    # end to end with the VIX as SPX's vol and a market with an index without history (proxied)
    market = tmp_path / "market.csv"
    market.write_text("underlying,product_group\nSPX,broad_index_high_cap\nCOMP,broad_index\nNDX,broad_index\n")
    f = tmp_path / "replay.parquet"
    assert main(["scenarios", "from-history", str(CLOSES), "--dates", "worst:3@SPX,2018-02-05", "--out", str(f),
                 "--market", str(market), "--vols", str(VIX), "--vols-for", "SPX"]) == 0
    capsys.readouterr()
    scen = read_scenario_file(f)
    assert len(scen) == 4 * 3
    assert row(scen, "2018-02-05", "SPX")["vol_shock"] == pytest.approx(37.32 / 17.31 - 1)
    assert row(scen, "2008-10-15", "SPX")["vol_shock"] == 0.0  # VIX file starts in 2014
    ndx = row(scen, "2008-12-01", "NDX")
    assert ndx["proxy"] and ndx["price_shock"] == row(scen, "2008-12-01", "COMP")["price_shock"]
    mk = pd.read_csv(market)
    table, index = joint_table(scen, mk)
    assert table.price_move.shape == (3, 4) and list(index["label"])[0] == "2008-10-15 1d (SPX worst #1)"


def test_from_history_vol_shocks_say_they_are_relative_and_an_absolute_methodology_is_refused():
    """iv[d] / iv[d-h] - 1 is a relative change: the file says so (vol_shock_mode), and a replay under a
    methodology that applies vol shocks as absolute stops with one line instead of adding +116% as 116 vol
    points."""
    from gpu_margin._scenarios import check_scenarios

    out = scenarios_from_history(synth_prices(), [DAYS[4]], 1, groups=GROUPS)
    assert set(out["vol_shock_mode"]) == {"relative"}
    market = pd.DataFrame({"underlying": ["AAA", "IDX"], "spot": [100.0, 3000.0], "vol": [0.3, 0.2],
                           "dividend_yield": [0.0, 0.0], "product_group": ["equity", "index"]})
    scen = check_scenarios(out.loc[out["underlying"].isin(["AAA", "IDX"])], "s.parquet")
    table, _ = joint_table(scen, market)  # relative, the default
    assert table.vol_mode == "relative"
    with pytest.raises(InputFileError, match=r"^s\.parquet: its vol shocks are relative changes .* as absolute"):
        joint_table(scen, market, source="s.parquet", vol_mode="absolute")
    with pytest.raises(InputFileError, match="vol_shock_mode"):
        check_scenarios(scen.assign(vol_shock_mode="points"), "s.parquet")
    gap = scen.astype({"vol_shock_mode": object})
    gap.loc[gap.index[0], "vol_shock_mode"] = None  # an empty cell of a CSV
    with pytest.raises(InputFileError, match=r"vol_shock_mode.*\(missing\)"):
        check_scenarios(gap, "s.csv")


def test_proxy_means_are_exactly_rounded_whatever_the_column_order():
    """A proxy is the exactly rounded mean of its peers, so a scenario file has the same bits on any
    platform and in any column order (a left-to-right or pairwise sum's last bit depends on both)."""
    import math

    from gpu_margin._history import _exact_means

    rows = np.array([[0.1, 0.2, 0.3, np.nan], [0.3, 0.2, np.nan, 0.1], [np.nan] * 4])
    assert np.nanmean(rows[0]) != np.nanmean(rows[1])  # the order shows in a plain mean
    got = _exact_means(rows)
    assert got[0] == got[1] == math.fsum([0.1, 0.2, 0.3]) / 3
    assert np.isnan(got[2])


def test_csv_numbers_are_the_nearest_double_to_their_text(tmp_path):
    """Closes read from a CSV are what Python's float makes of the text (pandas' parser before 3.1 could be
    one unit in the last place off, so a CSV gave other shocks than the Parquet file of the same prices)."""
    from gpu_margin._history import _as_number

    rng = np.random.default_rng(11)
    x = 100.0 * np.cumprod(1.0 + rng.normal(0.0, 0.02, 20_000))
    text = pd.Series([repr(float(v)) for v in x] + ["", "NA"])
    got = _as_number(text, "close", tmp_path / "prices.csv", positive=True).to_numpy()
    assert np.array_equal(got[:-2], x) and np.isnan(got[-2:]).all()
