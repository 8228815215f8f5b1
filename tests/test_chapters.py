"""Chapter splitting on the structures real reports use."""

from __future__ import annotations

from deepmoney.config import ChapterConfig
from deepmoney.data.chapters import split_chapters
from deepmoney.data.document import Document


def _titles(text: str, **config: int) -> list[str]:
    return [c.title for c in split_chapters(Document("x", text, title="Doc"), ChapterConfig(**config))]


def test_markdown_headings_split_at_the_repeated_level() -> None:
    text = "# Title\n\nIntro paragraph.\n\n## One\nA.\n### One.a\nB.\n## Two\nC.\n"
    assert _titles(text, min_chars=0) == ["Doc", "One", "Two"]


def test_numbered_headings() -> None:
    text = "Overview text.\n\n1. Overview\nSome text about this.\n\n1.1 Demand\nDemand grew.\n\n2. Valuation\nValue.\n"
    assert _titles(text, min_chars=0) == ["Doc", "1. Overview", "2. Valuation"]


def test_chinese_chapter_and_list_headings() -> None:
    law = "总则说明。\n第一章 总则\n第一条 内容。\n第二章 证券发行\n第二条 内容。\n第一节 一般规定\n第三条 内容。\n"
    assert _titles(law, min_chars=0) == ["Doc", "第一章 总则", "第二章 证券发行"]
    report = "一、行业概览\n需求回暖。\n二、风险提示\n价格波动。\n"
    assert _titles(report, min_chars=0) == ["一、行业概览", "二、风险提示"]


def test_sentences_ending_in_a_period_are_not_headings() -> None:
    text = "1. We expect margins to widen.\nMore.\n2. Costs fall.\nMore.\n"
    assert _titles(text, min_chars=0) == ["Doc"]


def test_unstructured_text_is_cut_at_sentences_within_the_bound() -> None:
    text = " ".join(f"Sentence number {i} talks about rates." for i in range(400))
    chapters = split_chapters(Document("x", text, title="Minutes"), ChapterConfig(max_chars=1000))
    assert len(chapters) > 10
    assert all(len(c.text) <= 1000 for c in chapters)
    assert all(c.text.endswith(".") for c in chapters)
    assert " ".join(c.text for c in chapters).split() == text.split()
    assert chapters[0].title.startswith("Minutes (part 1/")


def test_short_sections_merge_into_neighbours() -> None:
    text = "## A\nx\n## B\n" + "long text. " * 20 + "\n## C\n" + "more text. " * 20
    assert _titles(text, min_chars=50) == ["B", "C"]
