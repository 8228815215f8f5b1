"""The news chain reading a market database: real dated Wikinews items, and no value published after the news."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from deepmoney.analysis.chain import NewsItem, run_chain
from deepmoney.analysis.market import MarketSeries, label
from deepmoney.analysis.prompts import Messages
from deepmoney.marketdata.embedded import FILE_NAME, build_embedded
from deepmoney.marketdata.source import MarketData

REQUESTED = ["WTI crude oil price", "S&P 500 index", "core CPI", "unemployment rate", "real GDP"]
WINDOW = 6


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("marketdata") / FILE_NAME
    build_embedded(path)
    return path


def _wikinews(shared: Path, count: int) -> list[NewsItem]:
    """Real dated items about oil, prices or jobs, spread over 2005-2017 (one per year, the first of each)."""
    items, years = [], set()
    for line in (shared / "wikinews_economy" / "wikinews_economy.jsonl").open(encoding="utf-8"):
        record = json.loads(line)
        date = record.get("date")
        text = record.get("text") or ""
        if not date or len(text) < 300 or not any(w in text.lower() for w in ("oil", "inflation", "unemployment")):
            continue
        day = dt.date.fromisoformat(date[:10])
        if 2005 <= day.year <= 2017 and day.year not in years:
            years.add(day.year)
            items.append(NewsItem(record["id"], "en", text, {}, date=day))
    return items[:count]


class ScriptedAnalyst:
    """Answers each step the same way and keeps every prompt (the LLM is not what this test is about)."""

    def __init__(self, requested: list[str]) -> None:
        self.requested = requested
        self.calls: list[list[Messages]] = []

    def __call__(self, batch: list[Messages]) -> list[str]:
        self.calls.append(batch)
        step = len(self.calls)
        if step == 1:
            return ['["Energy", "Banks"]'] * len(batch)
        if step == 2:
            return [json.dumps({"method": "event study of returns", "data": self.requested})] * len(batch)
        return ["The data show a change."] * len(batch)


def _published(database: Path, series_id: str, as_of: dt.date | None) -> list[tuple[str, float]]:
    """What was public on `as_of`, read straight from the file (independently of MarketData)."""
    with sqlite3.connect(database) as conn:
        rows = conn.execute(
            "SELECT period_end, value FROM observations WHERE series_id = ? AND (? IS NULL OR available_at <= ?) "
            "ORDER BY period_end DESC LIMIT ?",
            (series_id, None if as_of is None else as_of.isoformat(), None if as_of is None else as_of.isoformat(),
             WINDOW),
        ).fetchall()  # fmt: skip
    return [(str(end)[:10], float(value)) for end, value in reversed(rows)]


def test_no_value_after_the_news_date_reaches_a_prompt_or_the_data(shared_data: Path, database: Path) -> None:
    news = _wikinews(shared_data, 10)
    assert len(news) == 10
    analyst = ScriptedAnalyst(REQUESTED)
    with MarketData.open(f"sqlite:///{database}") as market:
        results = run_chain(news, analyst, MarketSeries(market, WINDOW))
        infos = {label(info, "en"): info for info in market.catalogue()}
    prompts = [json.dumps(messages, ensure_ascii=False) for messages in analyst.calls[2]]
    seen: dict[str, int] = {}
    for result, prompt in zip(results, prompts, strict=True):
        day = result.item.date
        assert result.data_passed and not result.data_fallback
        for name, points in result.data_passed.items():
            info = infos[name]
            seen[info.id] = seen.get(info.id, 0) + 1
            assert points == _published(database, info.id, day)  # exactly the latest values public on that day
            for period, _ in points:  # and each one was public: its period ended release_lag_days before
                assert dt.date.fromisoformat(period) + dt.timedelta(days=info.release_lag_days) <= day
            assert name in prompt
        later = [(n, p) for n, pts in result.data_passed.items() for p, _ in pts if p > day.isoformat()]
        assert not later, (result.item.id, later)
    # every requested series reached some items (S&P to 2018, CPI to 2018, unemployment and GDP to 2009)
    assert {"us.oil.wti.daily", "us.sp500.close", "us.cpi.core", "us.unemployment", "us.gdp.real"} <= set(seen)


def test_a_series_that_did_not_exist_yet_is_left_out_and_an_undated_item_reads_the_latest(database: Path) -> None:
    early = NewsItem("early", "en", "Oil prices rose sharply today.", {}, date=dt.date(1990, 6, 1))
    undated = NewsItem("undated", "en", "Oil prices rose sharply today.", {})
    with MarketData.open(f"sqlite:///{database}") as market:
        early_result, undated_result = run_chain([early, undated], ScriptedAnalyst(REQUESTED),
                                                 MarketSeries(market, WINDOW))  # fmt: skip
    assert {label_ for label_ in early_result.data_passed if "S&P 500" in label_} == set()  # starts in 1999
    wti = next(name for name in early_result.data_passed if name.startswith("WTI crude oil spot"))
    assert early_result.data_passed[wti] == _published(database, "us.oil.wti.daily", early.date)
    assert undated_result.data_passed[wti] == _published(database, "us.oil.wti.daily", None)  # the latest
    with sqlite3.connect(database) as conn:
        (last,) = conn.execute(
            "SELECT MAX(period_end) FROM observations WHERE series_id = 'us.oil.wti.daily'"
        ).fetchone()
    assert undated_result.data_passed[wti][-1][0] == str(last)[:10]  # the last day the package ships


def test_names_that_match_nothing_fall_back_to_the_top_sectors_series(database: Path) -> None:
    item = NewsItem("x", "zh", "油价大涨。", {}, date=dt.date(2010, 3, 1))
    with MarketData.open(f"sqlite:///{database}") as market:
        (result,) = run_chain([item], ScriptedAnalyst(["完全无关的名称"]), MarketSeries(market, WINDOW))
        energy = [label(i, "zh") for i in market.catalogue() if "Energy" in i.sectors]
    assert result.data_fallback and result.data_passed
    assert set(result.data_passed) <= set(energy)  # the top sector is Energy (step 1's first answer)
    assert all("（" in name for name in result.data_passed)  # labelled in the item's language
