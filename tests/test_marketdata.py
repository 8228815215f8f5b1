"""The market-data database: the embedded build, as-of reads with no look-ahead, name matching, firm loads."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from deepmoney.errors import UserError
from deepmoney.marketdata import embedded
from deepmoney.marketdata.dictionary import SeriesInfo
from deepmoney.marketdata.embedded import EMBEDDED, FILE_NAME, build_embedded
from deepmoney.marketdata.load import load_table
from deepmoney.marketdata.match import match_names, normalise
from deepmoney.marketdata.source import MarketData, cache_dir
from tests.conftest import ROOT, assert_clean_error, run_cli


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("marketdata") / FILE_NAME
    assert build_embedded(path) is True
    return path


@pytest.fixture(scope="module")
def md(built: Path) -> MarketData:
    with MarketData.open(f"sqlite:///{built}") as opened:
        yield opened


def _source(dataset: str, column: str) -> pd.Series:
    """A column as the package's loader returns it, indexed by the period's end (computed here, independently)."""
    if dataset == "macrodata":
        from statsmodels.datasets import macrodata

        data = macrodata.load_pandas().data
        quarters = zip(data["year"].astype(int), data["quarter"].astype(int), strict=True)
        ends = [pd.Period(year=y, quarter=q, freq="Q").end_time.normalize() for y, q in quarters]
        return pd.Series(data[column].to_numpy(), index=pd.DatetimeIndex(ends)).dropna()
    data = importlib.import_module(f"arch.data.{dataset}").load()
    values = data[column].dropna()
    if dataset == "frenchdata":  # the index holds YYYYMM integers read as nanoseconds
        ints = values.index.as_unit("ns").asi8
        months = [pd.Period(f"{i // 100}-{i % 100:02d}", freq="M") for i in ints]
        values.index = pd.DatetimeIndex([month.end_time.normalize() for month in months])
    elif dataset in ("crude", "core_cpi", "default"):
        values.index = values.index + pd.offsets.MonthEnd(0)
    return values


def _published(info: SeriesInfo, values: pd.Series, as_of: str) -> pd.Series:
    """The values whose period ended at least release_lag_days before `as_of`."""
    return values[values.index + pd.Timedelta(days=info.release_lag_days) <= pd.Timestamp(as_of)]


# -- the embedded build ---------------------------------------------------------------------------


def test_embedded_holds_every_series_as_the_packages_ship_them(built: Path) -> None:
    conn = sqlite3.connect(built)
    ids = {row[0] for row in conn.execute("SELECT id FROM series")}
    assert ids == {info.id for info, _, _ in EMBEDDED} and len(ids) >= 25
    for info, dataset, column in EMBEDDED:
        expected = _source(dataset, column)
        count, first, last = conn.execute(
            "SELECT count(*), min(period_end), max(period_end) FROM observations WHERE series_id = ?", (info.id,)
        ).fetchone()
        assert count == len(expected) > 100, info.id
        assert (first, last) == (str(expected.index[0].date()), str(expected.index[-1].date())), info.id
        stored = conn.execute(
            "SELECT value FROM observations WHERE series_id = ? ORDER BY period_end", (info.id,)
        ).fetchall()
        assert [v for (v,) in stored] == pytest.approx(expected.to_list()), info.id
        lagged = conn.execute(
            "SELECT count(*) FROM observations WHERE series_id = ?"
            " AND julianday(available_at) - julianday(period_end) != ?",
            (info.id, info.release_lag_days),
        ).fetchone()[0]
        assert lagged == 0, info.id
    ff_first = conn.execute("SELECT min(period_start) FROM observations WHERE series_id = 'us.ff.mkt_rf'").fetchone()
    assert ff_first == ("1926-07-01",)  # 192607 is July 1926, not a 1970 timestamp
    assert conn.execute("SELECT value FROM marketdata_meta WHERE key = 'schema_version'").fetchone() == ("1",)


def test_citations_repeat_what_the_packages_say() -> None:
    from statsmodels.datasets import macrodata

    by_id = {info.id: info for info, _, _ in EMBEDDED}
    assert "public domain" in macrodata.COPYRIGHT and "public domain" in by_id["us.gdp.real"].citation
    for series_id, module in (("us.cpi.core", "core_cpi"), ("us.oil.wti.daily", "wti")):
        assert "FRED" in importlib.import_module(f"arch.data.{module}").load.__doc__
        assert "FRED" in by_id[series_id].source
    for info in by_id.values():
        assert info.name_zh and info.aliases and info.sectors and info.citation and info.unit, info.id
        assert any("\u4e00" <= ch <= "\u9fff" for alias in info.aliases for ch in alias), info.id


def test_a_rebuild_is_a_noop_and_a_changed_or_broken_file_is_rebuilt(built: Path, tmp_path: Path) -> None:
    before = built.stat()
    assert build_embedded(built) is False
    after = built.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    stale = tmp_path / FILE_NAME
    shutil.copy(built, stale)
    with sqlite3.connect(stale) as conn:
        conn.execute("UPDATE marketdata_meta SET value = 'an older build' WHERE key = 'build'")
    assert build_embedded(stale) is True
    assert embedded.built_digest(stale) == embedded.build_digest()

    stale.write_bytes(b"not a database")
    assert build_embedded(stale) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]  # no temporary file left behind


def test_a_failed_build_leaves_the_old_file(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / FILE_NAME
    shutil.copy(built, target)
    info, _, _ = EMBEDDED[0]
    monkeypatch.setattr(embedded, "EMBEDDED", (*EMBEDDED, (info, "vix", "no such column")))
    with pytest.raises(KeyError):
        build_embedded(target, force=True)
    assert target.read_bytes() == built.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]


def test_open_without_url_uses_the_cache_directory(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "deepmoney" / "marketdata"
    cache_dir().mkdir(parents=True)
    shutil.copy(built, cache_dir() / FILE_NAME)  # the same build: open() finds it and does not rebuild
    with MarketData.open() as opened:
        assert opened.fetch("us.vix", window=1).points[0].period_end == dt.date(2019, 1, 3)


def test_importing_the_package_stays_cheap() -> None:
    code = (
        "import sys, deepmoney.marketdata, deepmoney.marketdata.match\n"
        "heavy = [m for m in ('sqlalchemy', 'pandas', 'arch', 'statsmodels') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert deepmoney.marketdata.SeriesInfo.__name__ == 'SeriesInfo'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


# -- as-of reads ------------------------------------------------------------------------------------


def test_as_of_never_shows_a_later_close(md: MarketData) -> None:
    info, dataset, column = next(e for e in EMBEDDED if e[0].id == "us.sp500.close")
    obs = md.fetch("us.sp500.close", as_of=dt.date(2008, 9, 15), window=10)
    assert len(obs) == 10 and all(p.period_end <= dt.date(2008, 9, 15) for p in obs.points)
    assert obs.points[-1].period_end == dt.date(2008, 9, 15)  # the close of that day counts (lag 0)
    expected = _published(info, _source(dataset, column), "2008-09-15").tail(10)
    assert [p.value for p in obs.points] == pytest.approx(expected.to_list())
    assert md.fetch("us.sp500.close", as_of=dt.datetime(2008, 9, 15, 23, 59), window=10) == obs


def test_core_cpi_for_august_2008_appears_in_mid_september(md: MarketData) -> None:
    early = md.fetch("us.cpi.core", as_of=dt.date(2008, 9, 5), window=3)
    late = md.fetch("us.cpi.core", as_of=dt.date(2008, 9, 20), window=3)
    assert early.points[-1].period_end == dt.date(2008, 7, 31)
    assert late.points[-1].period_end == dt.date(2008, 8, 31)
    assert late.points[-1].value == pytest.approx(_source("core_cpi", "CPILFESL")["2008-08-31"])


def test_gdp_for_2008q3_is_not_known_in_mid_october(md: MarketData) -> None:
    assert md.fetch("us.gdp.real", as_of=dt.date(2008, 10, 15), window=1).points[-1].period_end == dt.date(2008, 6, 30)
    assert md.fetch("us.gdp.real", as_of=dt.date(2008, 11, 1), window=1).points[-1].period_end == dt.date(2008, 9, 30)


def test_undated_fetch_returns_the_latest_and_says_so(md: MarketData) -> None:
    obs = md.fetch("us.oil.wti.daily", window=5)
    assert obs.undated and obs.as_of is None
    expected = _source("wti", "DCOILWTICO").tail(5)
    assert [p.value for p in obs.points] == pytest.approx(expected.to_list())
    assert md.summary(obs)["undated"] is True


def test_as_of_before_the_first_value_is_empty(md: MarketData) -> None:
    obs = md.fetch("us.vix", as_of=dt.date(2013, 12, 31))
    assert obs.points == () and not obs.undated
    summary = md.summary(obs)
    assert summary["count"] == 0 and summary["last_value"] is None and summary["as_of"] == "2013-12-31"
    json.dumps(summary)


def test_summary_matches_figures_computed_from_the_loader(md: MarketData) -> None:
    for series_id, as_of, window in (("us.sp500.close", "2008-09-15", 20), ("us.unemployment", "2009-06-30", 8)):
        info, dataset, column = next(e for e in EMBEDDED if e[0].id == series_id)
        values = _published(info, _source(dataset, column), as_of).tail(window)
        summary = md.summary(md.fetch(series_id, as_of=dt.date.fromisoformat(as_of), window=window))
        first, last = float(values.iloc[0]), float(values.iloc[-1])
        assert summary["count"] == window
        assert summary["first_period"] == str(values.index[0].date())
        assert summary["last_period"] == str(values.index[-1].date())
        assert summary["last_value"] == pytest.approx(last)
        assert summary["change"] == pytest.approx(last - first)
        assert summary["pct_change"] == pytest.approx((last - first) / first * 100)
        assert summary["mean"] == pytest.approx(float(values.mean()))
        assert (summary["min"], summary["max"]) == pytest.approx((float(values.min()), float(values.max())))
        assert json.loads(json.dumps(summary)) == summary


def test_an_unknown_series_names_the_id_and_the_catalogue(md: MarketData) -> None:
    with pytest.raises(UserError) as caught:
        md.fetch("us.cpi.cor", as_of=dt.date(2008, 1, 1))
    message = str(caught.value)
    assert "'us.cpi.cor'" in message and "us.cpi.core" in message and "deepmoney marketdata list" in message
    assert "\n" not in message


# -- matching -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "series_id"),
    [
        ("S&P 500 index", "us.sp500.close"),
        ("标普500", "us.sp500.close"),
        ("ＳＰＸ", "us.sp500.close"),
        ("WTI crude oil price (USD/bbl)", "us.oil.wti.daily"),
        ("布伦特原油价格（美元/桶）", "global.oil.brent.monthly"),
        ("核心CPI", "us.cpi.core"),
        ("unemployment rate", "us.unemployment"),
        ("unemploymnet rate", "us.unemployment"),
        ("失业率", "us.unemployment"),
        ("恐慌指数", "us.vix"),
        ("纳斯达克指数收盘", "us.nasdaq.close"),
        ("穆迪AAA公司债收益率", "us.bond.aaa"),
        ("实际GDP", "us.gdp.real"),
        ("国库券利率", "us.tbill.3m"),
        ("us.cpi.core", "us.cpi.core"),
    ],
)
def test_names_match_in_english_and_chinese(md: MarketData, name: str, series_id: str) -> None:
    assert md.match([name])[name].id == series_id


def test_unrelated_names_match_nothing(md: MarketData) -> None:
    found = md.match(["比特币价格", "Bitcoin price", "黄金价格", "", "S&P 500"])
    assert list(found) == ["S&P 500"]


def test_normalise_folds_width_case_and_units() -> None:
    assert normalise("ＷＴＩ Crude Oil (USD/bbl)") == "wti crude oil"
    assert normalise("核心CPI（同比，%）") == "核心 cpi"
    catalogue = [SeriesInfo(id="a.b", name_en="Alpha beta", name_zh="阿尔法")]
    assert match_names(["alpha  BETA"], catalogue) == {"alpha  BETA": catalogue[0]}


# -- a firm's own database ----------------------------------------------------------------------------

FIRM_SERIES = [
    {
        "id": "cn.cpi.yoy",
        "name_en": "China CPI, year on year",
        "name_zh": "中国CPI同比",
        "aliases": json.dumps(["China CPI", "中国居民消费价格指数同比"], ensure_ascii=False),
        "unit": "%",
        "frequency": "monthly",
        "source": "NBS",
        "citation": "National Bureau of Statistics of China",
        "sectors": "Macro|Consumer",
        "release_lag_days": "10",
    },
    {
        "id": "firm.desk.flow",
        "name_en": "Desk flow",
        "name_zh": "交易台资金流",
        "aliases": "",
        "unit": "CNY mn",
        "frequency": "daily",
        "source": "",
        "citation": "",
        "sectors": "",
        "release_lag_days": "",
    },
]
FIRM_OBSERVATIONS = [
    {"series_id": "cn.cpi.yoy", "period_end": "2024-01-31", "value": "-0.8", "available_at": ""},
    {"series_id": "cn.cpi.yoy", "period_end": "2024-02-29", "value": "0.7", "available_at": "2024-03-09"},
    {"series_id": "firm.desk.flow", "period_end": "2024-03-01", "value": "12.5", "available_at": ""},
    {"series_id": "firm.desk.flow", "period_end": "2024-03-04", "value": "-3", "available_at": ""},
]


def _write(tmp_path: Path, dictionary: list[dict], rows: list[dict], suffix: str = ".csv") -> tuple[Path, Path]:
    dictionary_file, observations_file = tmp_path / "series.csv", tmp_path / f"observations{suffix}"
    pd.DataFrame(dictionary).to_csv(dictionary_file, index=False)
    frame = pd.DataFrame(rows)
    frame.to_csv(observations_file, index=False) if suffix == ".csv" else frame.to_parquet(observations_file)
    return dictionary_file, observations_file


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_load_table_round_trip(tmp_path: Path, suffix: str) -> None:
    url = f"sqlite:///{tmp_path / 'firm.sqlite'}"
    files = _write(tmp_path, FIRM_SERIES, FIRM_OBSERVATIONS, suffix)
    assert load_table(url, *files) == {"series": 2, "observations": 4, "replaced_series": 2}
    assert load_table(url, *files)["observations"] == 4  # a reload replaces, it does not add
    with MarketData.open(url) as firm:
        assert [i.id for i in firm.catalogue()] == ["cn.cpi.yoy", "firm.desk.flow"]
        china = firm.info("cn.cpi.yoy")
        assert china.aliases == ("China CPI", "中国居民消费价格指数同比") and china.sectors == ("Macro", "Consumer")
        assert firm.match(["中国CPI同比"])["中国CPI同比"].id == "cn.cpi.yoy"
        # January's value: period_end + 10 days = 2024-02-10; February's: available_at as given
        assert firm.fetch("cn.cpi.yoy", as_of=dt.date(2024, 2, 9)).points == ()
        assert [p.value for p in firm.fetch("cn.cpi.yoy", as_of=dt.date(2024, 3, 9)).points] == [-0.8, 0.7]
        assert [p.value for p in firm.fetch("firm.desk.flow").points] == [12.5, -3.0]
    with sqlite3.connect(tmp_path / "firm.sqlite") as conn:
        assert conn.execute(
            "SELECT period_start, available_at FROM observations WHERE series_id = 'cn.cpi.yoy' ORDER BY period_end"
        ).fetchall() == [("2024-01-01", "2024-02-10"), ("2024-02-01", "2024-03-09")]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"series_id": "cn.gdp", "period_end": "2024-03-31", "value": "1"}, "row 3: unknown series id 'cn.gdp'"),
        ({"series_id": "cn.cpi.yoy", "period_end": "2024-02-29", "value": "1"}, "row 3: a second value for"),
        ({"series_id": "cn.cpi.yoy", "period_end": "2024-03-31", "value": "inf"}, "row 3: value 'inf' is not a finite"),
        ({"series_id": "cn.cpi.yoy", "period_end": "2024-03-31", "value": "n/a"}, "row 3: value 'n/a' is not a finite"),
        ({"series_id": "cn.cpi.yoy", "period_end": "March", "value": "1"}, "row 3: period_end 'March' is not a date"),
        (
            {"series_id": "cn.cpi.yoy", "period_end": "2024-03-31", "value": "1", "available_at": "2024-03-30"},
            "row 3: available_at 2024-03-30 is before period_end 2024-03-31",
        ),
    ],
)
def test_load_table_rejects_a_bad_row_and_writes_nothing(tmp_path: Path, row: dict, message: str) -> None:
    url = f"sqlite:///{tmp_path / 'firm.sqlite'}"
    load_table(url, *_write(tmp_path, FIRM_SERIES, FIRM_OBSERVATIONS[:1]))
    rows = [*FIRM_OBSERVATIONS[:2], row, *FIRM_OBSERVATIONS[2:]]
    with pytest.raises(UserError) as caught:
        load_table(url, *_write(tmp_path, FIRM_SERIES, rows))
    assert f"observations.csv: {message}" in str(caught.value) and "\n" not in str(caught.value)
    with sqlite3.connect(tmp_path / "firm.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM observations").fetchone() == (1,)


def test_load_table_rejects_a_bad_dictionary(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'firm.sqlite'}"
    bad = [FIRM_SERIES[0], {**FIRM_SERIES[1], "frequency": "weekly"}]
    with pytest.raises(UserError, match=r"series.csv: row 2: frequency 'weekly' is not one of daily"):
        load_table(url, *_write(tmp_path, bad, FIRM_OBSERVATIONS))
    twice = [FIRM_SERIES[0], FIRM_SERIES[0]]
    with pytest.raises(UserError, match=r"row 2: series id 'cn.cpi.yoy' appears twice"):
        load_table(url, *_write(tmp_path, twice, FIRM_OBSERVATIONS[:2]))
    no_value = [{k: v for k, v in r.items() if k != "value"} for r in FIRM_OBSERVATIONS]
    with pytest.raises(UserError, match=r"observations.csv: missing column\(s\) value"):
        load_table(url, *_write(tmp_path, FIRM_SERIES, no_value))


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "sqlite:////nonexistent/dir/marketdata.sqlite",
        "postgresql://reader@127.0.0.1:9/marketdata",  # no driver here, or (with one) nothing listening
    ],
)
def test_a_bad_url_is_one_line(url: str) -> None:
    with pytest.raises(UserError) as caught:
        MarketData.open(url)
    assert "market-data database" in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_that_is_not_a_marketdata_database(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(UserError, match="cannot be read"):
        MarketData.open(f"sqlite:///{garbage}")
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    empty.touch()
    with pytest.raises(UserError, match="has no observations or series table; fill it with"):
        MarketData.open(f"sqlite:///{empty}")


def test_values_are_finite_everywhere(built: Path) -> None:
    with sqlite3.connect(built) as conn:
        values = [v for (v,) in conn.execute("SELECT value FROM observations")]
    assert values and all(math.isfinite(v) for v in values)
    assert os.path.getsize(built) < 32 << 20


def test_the_cli_shows_a_series_as_of_a_date_and_lists_the_dictionary(built: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "deepmoney" / "marketdata"
    cache.mkdir(parents=True)
    shutil.copy(built, cache / FILE_NAME)  # the embedded default, already built: the CLI reuses it
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    shown = run_cli("marketdata", "show", "us.cpi.core", "--as-of", "2008-09-05", "--window", "3", "-q", env=env)
    assert shown.returncode == 0, shown.stderr
    result = json.loads(shown.stdout)  # stdout is the JSON and nothing else
    cpi = _source("core_cpi", "CPILFESL")
    expected = cpi[(cpi.index >= "2008-05-01") & (cpi.index <= "2008-07-31")]  # August's value is not out yet
    assert [value for _, value in result["points"]] == pytest.approx(expected.tolist())
    assert result["as_of"] == "2008-09-05" and result["last_period"] == "2008-07-31"
    listed = run_cli("marketdata", "list", env=env)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == len(EMBEDDED)
    assert "us.cpi.core" in listed.stdout and "美国核心CPI" in listed.stdout
    assert_clean_error(run_cli("marketdata", "show", "us.cpi.core", "--as-of", "2008-13-01", env=env), "YYYY-MM-DD")
    assert_clean_error(run_cli("marketdata", "show", "us.cpi.cor", env=env), "did you mean us.cpi.core")
    missing = run_cli("marketdata", "list", "--url", f"sqlite:///{tmp_path / 'none.sqlite'}", env=env)
    assert_clean_error(missing, "no such file")


def test_the_cli_loads_a_firms_files_all_or_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'firm.sqlite'}"
    dictionary, observations = _write(tmp_path, FIRM_SERIES, FIRM_OBSERVATIONS)
    loaded = run_cli("marketdata", "load", "--url", url, "--dictionary", str(dictionary), "--observations",
                     str(observations))  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "loaded 2 series and 4 observations (2 series replaced)"
    (tmp_path / "bad").mkdir()
    bad = _write(tmp_path / "bad", FIRM_SERIES, [*FIRM_OBSERVATIONS, {"series_id": "nope", "period_end": "2024-01-31",
                                                                      "value": "1"}])  # fmt: skip
    refused = run_cli("marketdata", "load", "--url", url, "--dictionary", str(bad[0]), "--observations", str(bad[1]))
    assert_clean_error(refused, "unknown series id 'nope'")
    with MarketData.open(url) as firm:  # the first load is intact
        assert [p.value for p in firm.fetch("firm.desk.flow").points] == [12.5, -3.0]
