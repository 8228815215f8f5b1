"""Near-duplicate news over a sliding window: planted near-duplicates of real English and Chinese
texts are caught and name the kept item; items past the window are forgotten."""

from __future__ import annotations

import json
import re

import pytest

from deepmoney.config import DedupConfig
from deepmoney.intake.dedup import WindowDeduplicator
from tests.conftest import SHARED_DATA

WIKINEWS = SHARED_DATA / "wikinews_economy" / "wikinews_economy.jsonl"
LAWS = SHARED_DATA / "cn_financial_laws"


def _wikinews(count: int) -> list[dict]:
    if not WIKINEWS.is_file():
        pytest.skip(f"{WIKINEWS} not present")
    rows = [json.loads(line) for line in WIKINEWS.open(encoding="utf-8")]
    return [r for r in rows if len(r["text"].split()) > 150][:count]


def _rewrite(text: str) -> str:
    """A wire rewrite: a new first sentence, one word changed, a line added."""
    words = text.split()
    words[len(words) // 2] = "reportedly"
    return "UPDATE: " + " ".join(words) + " More details are expected later today."


def test_a_rewritten_story_is_a_near_duplicate_of_the_kept_one() -> None:
    items = _wikinews(30)
    dedup = WindowDeduplicator(DedupConfig(), window=100)
    assert all(dedup.check(r["id"], r["text"]) is None for r in items)  # distinct stories are all kept
    original = items[7]
    found = dedup.check("rewrite", _rewrite(original["text"]))
    assert found is not None and found.kept_id == original["id"] and found.kind == "near"
    assert found.similarity >= DedupConfig().threshold
    again = dedup.check("resent", "  " + original["text"].upper() + "\n")  # case and spacing only
    assert again is not None and again.kind == "exact" and again.kept_id == original["id"]
    assert len(dedup) == 30  # duplicates are not kept


def test_chinese_near_duplicates_by_character_shingles() -> None:
    laws = sorted(LAWS.glob("*.md")) if LAWS.is_dir() else []
    if not laws:
        pytest.skip(f"{LAWS} not present")
    article = re.compile(r"\n(?=第[一二三四五六七八九十百]+条)")
    articles = [a.strip() for law in laws for a in article.split(law.read_text("utf-8")) if len(a.strip()) > 200][:40]
    assert len(articles) == 40
    dedup = WindowDeduplicator(DedupConfig(), window=100)
    assert all(dedup.check(f"a{i}", text) is None for i, text in enumerate(articles))
    variant = articles[12].replace("，", "、", 1) + "（本报记者）"
    found = dedup.check("variant", variant)
    assert found is not None and found.kept_id == "a12" and found.kind == "near"


def test_items_older_than_the_window_are_forgotten() -> None:
    items = _wikinews(12)
    dedup = WindowDeduplicator(DedupConfig(), window=5)
    for r in items[:6]:
        assert dedup.check(r["id"], r["text"]) is None
    assert len(dedup) == 5  # the first item has left the window
    assert dedup.check("late-rewrite-0", _rewrite(items[0]["text"])) is None  # news again: kept
    found = dedup.check("rewrite-5", _rewrite(items[5]["text"]))
    assert found is not None and found.kept_id == items[5]["id"]
    assert dedup.check("resent-0", items[0]["text"]) is not None  # the rewrite kept above now stands for it


def test_disabled_and_bad_settings() -> None:
    dedup = WindowDeduplicator(DedupConfig(enabled=False), window=3)
    assert dedup.check("a", "same text") is None and dedup.check("b", "same text") is None
    with pytest.raises(ValueError, match="at least one item"):
        WindowDeduplicator(DedupConfig(), window=0)
    live = WindowDeduplicator(DedupConfig(), window=3)
    live.check("a", "Copper rose three percent on Monday as Chinese demand recovered strongly.")
    with pytest.raises(ValueError, match="already kept"):
        live.check("a", "An unrelated story about wheat harvests in Kansas this year.")
