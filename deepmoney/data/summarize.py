"""The context header of each pt record: title, publisher, date, subject, key figures and a summary.

The Deepmoney recipe prefixes every report with an LLM-written summary of its context, so that the
model learns *who* said *what* and *when*. The summarizer is pluggable: the offline default is
extractive (no model needed); an LLM summarizer plugs in through the `summarizer` role once the LLM
clients exist (see `deepmoney.data.llm_summary.make_summarizer`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from deepmoney.config import SummaryConfig
from deepmoney.data.document import Chapter, Document
from deepmoney.data.text import split_sentences

_STOPWORDS = frozenset(
    "a an the and or of to in on for by with at from as is are was were be been has have had it its this that these "
    "those which who whom will would can could may might should than then there their they we our you your not no "
    "but if so such into over under about after before between during per also more most other some any all each "
    "both while where when what how said says percent year years quarter".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z\-]{2,}|[\u4e00-\u9fff]{2}")
_FIGURE = re.compile(
    r"(?=[$€£¥+\-\d])"  # cheap first-character test; halves the scan time
    r"(?:[$€£¥]\s?\d[\d,]*(?:\.\d+)?\s?(?:bn|billion|million|mn|trillion|tn|k)?"
    r"|[-+]?\d[\d,]*(?:\.\d+)?\s?(?:%|percent|per cent|bp|bps|basis points|bn|billion|million|trillion"
    r"|亿元|万亿元|万亿|亿|万元|元|美元|个基点|倍|x)(?![A-Za-z]))"
)
_HEAD_CHARS = 8_000
_FIGURES_CHARS = 4_000  # the figures a report leads with are the ones worth a place in the header
_CLAUSE_END = re.compile(r"[。；;！？!?\n]|(?<=\.)\s")
_ZH_COMMA = re.compile(r"[，,、：:]")
_YEAR = re.compile(r"(19|20)\d{2}")
_LABELS = {
    "en": ("Title", "Publisher", "Date", "Subject", "Key figures", "Summary"),
    "zh": ("标题", "发布机构", "日期", "主题", "关键数据", "摘要"),
}


@dataclass
class ContextSummary:
    """What the header says about a document."""

    title: str | None
    publisher: str | None
    date: str | None
    subject: str | None
    key_figures: list[str] = field(default_factory=list)
    summary: str = ""
    source: str = "extractive"

    def render(self, language: str | None) -> str:
        """The header as it is written before the document text, labelled in the document's language."""
        labels = _LABELS["zh" if language == "zh" else "en"]
        sep = "：" if language == "zh" else ": "
        values = [
            self.title,
            self.publisher,
            self.date,
            self.subject,
            ("；" if language == "zh" else "; ").join(self.key_figures),
            self.summary,
        ]
        return "\n".join(f"{label}{sep}{value}" for label, value in zip(labels, values, strict=True) if value)


class Summarizer(Protocol):
    """Anything that can describe a document's context (extractive, or an LLM role)."""

    name: str

    def summarize(self, doc: Document, chapters: list[Chapter]) -> ContextSummary:
        """Describe `doc`; `chapters` are its already-split chapters."""
        ...


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


def key_figures(text: str, limit: int, language: str | None) -> list[str]:
    """The first `limit` distinct figures with units, each with a few words of what it measures."""
    found: list[str] = []
    seen: set[str] = set()
    for match in _FIGURE.finditer(text):
        figure = match.group(0).strip()
        if figure in seen or _YEAR.fullmatch(figure):
            continue
        seen.add(figure)
        before = text[max(0, match.start() - 60) : match.start()]
        before = _CLAUSE_END.split(before)[-1]
        if language == "zh":
            found.append(_ZH_COMMA.split(before)[-1][-16:].strip() + figure)
        else:
            found.append(f"{' '.join(before.split()[-4:])} {figure}".strip())
        if len(found) >= limit:
            break
    return found


class ExtractiveSummarizer:
    """Offline summaries: the lead sentences of the document body, plus regex key figures.

    Research notes, central-bank statements and news put their thesis first, which is why the
    lead is the standard extractive baseline for news summarization (LEAD-3). It is also the
    cheapest choice: the whole corpus passes through here, and an LLM summarizer replaces it
    when quality matters more than cost.
    """

    name = "extractive"

    def __init__(self, config: SummaryConfig) -> None:
        self.config = config

    def summarize(self, doc: Document, chapters: list[Chapter]) -> ContextSummary:
        """The first `max_sentences` body sentences (headings, tables and fragments skipped)."""
        text = doc.text[:_HEAD_CHARS]  # who, what and when are said at the start of a report
        body = "\n".join(line for line in text.split("\n") if not line.lstrip().startswith(("#", "|", "- ")))
        lead: list[str] = []
        # Sentence-splitting the first couple of thousand characters is usually enough for the lead.
        for region in (body[:2500], body) if len(body) > 2500 else (body,):
            pieces = split_sentences(region)
            if len(region) < len(body):
                pieces = pieces[:-1]  # the cut may fall inside the last one
            lead = [s for s in pieces if 20 <= len(s) <= 400][: self.config.max_sentences]
            if len(lead) == self.config.max_sentences:
                break
        summary = ("" if doc.language == "zh" else " ").join(lead)
        if len(summary) > self.config.max_chars:
            summary = summary[: self.config.max_chars].rsplit(" ", 1)[0] + "…"
        subject = doc.subject
        if not subject:
            top = [t for t, _ in Counter(_terms(body[:1500])).most_common(5)]
            subject = ", ".join(top) if doc.language != "zh" else "、".join(top)
        return ContextSummary(
            title=doc.title,
            publisher=doc.publisher,
            date=doc.date,
            subject=subject or None,
            key_figures=key_figures(text[:_FIGURES_CHARS], self.config.key_figures, doc.language),
            summary=summary,
        )


def pt_text(doc: Document, summary: ContextSummary | None) -> str:
    """The text of one pt record: the context header, a blank line, then the document."""
    if summary is None:
        return doc.text
    return f"{summary.render(doc.language)}\n\n{doc.text}"
