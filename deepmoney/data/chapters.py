"""Chapter splitting: Markdown headings, numbered headings, or a size-bounded fallback.

Which structure a document has is decided per document: Markdown headings if it has them (CNXML
and HTML arrive as Markdown), else numbered headings (`1.`, `1.1`, `一、`, `第X章`), else none. The
split level is the shallowest heading level that occurs at least twice, so a lone title heading
does not swallow the document. Chapters above `max_chars` are cut at paragraph, then sentence,
boundaries; this is also the whole strategy for unstructured text such as FOMC minutes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deepmoney.config import ChapterConfig
from deepmoney.data.document import Chapter, Document
from deepmoney.data.text import split_sentences

_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_CN_NUM = "一二三四五六七八九十百零〇两"
# Ranked from coarsest to finest; a line must be short and not end like a sentence to count.
_NUMBERED = [
    re.compile(
        rf"^[ \t]*第[{_CN_NUM}\d]+[章编篇][ \t\u3000]*\S.*$|^[ \t]*第[{_CN_NUM}\d]+[章编篇][ \t]*$", re.MULTILINE
    ),
    re.compile(rf"^[ \t]*第[{_CN_NUM}\d]+节[ \t\u3000]*\S.*$", re.MULTILINE),
    re.compile(rf"^[ \t]*[{_CN_NUM}]+[、.．][ \t]*\S.*$", re.MULTILINE),
    re.compile(r"^[ \t]*\d{1,2}[.．)][ \t]+[^\d\s].*$", re.MULTILINE),
    re.compile(r"^[ \t]*\d{1,2}\.\d{1,2}\.?[ \t]+\S.*$", re.MULTILINE),
]
_SENTENCE_END = ("。", ".", ";", "；", "：", ":", ",", "，")


@dataclass(frozen=True)
class _Heading:
    start: int
    end: int
    level: int
    title: str


def _markdown_headings(text: str) -> list[_Heading]:
    if "#" not in text:
        return []
    return [_Heading(m.start(), m.end(), len(m.group(1)), m.group(2).strip()) for m in _MD_HEADING.finditer(text)]


def _numbered_headings(text: str) -> list[_Heading]:
    found: list[_Heading] = []
    if text.count("\n", 0, 200_000) < 2:  # a heading needs a line of its own
        return found
    for level, pattern in enumerate(_NUMBERED, start=1):
        for m in pattern.finditer(text):
            line = m.group(0).strip()
            if len(line) > 80 or line.endswith(_SENTENCE_END):
                continue
            found.append(_Heading(m.start(), m.end(), level, line))
    return sorted(found, key=lambda h: h.start)


def _split_level(headings: list[_Heading]) -> int | None:
    counts: dict[int, int] = {}
    for h in headings:
        counts[h.level] = counts.get(h.level, 0) + 1
    repeated = [level for level, count in sorted(counts.items()) if count >= 2]
    if repeated:
        return repeated[0]
    return None


def _sections(text: str, headings: list[_Heading], level: int) -> list[tuple[str, str]]:
    cuts = [h for h in headings if h.level == level]
    sections: list[tuple[str, str]] = []
    preamble = text[: cuts[0].start].strip()
    if preamble:
        sections.append(("", preamble))
    for i, h in enumerate(cuts):
        end = cuts[i + 1].start if i + 1 < len(cuts) else len(text)
        sections.append((h.title, text[h.start : end].strip()))
    return sections


def _bounded(text: str, max_chars: int) -> list[str]:
    """Cut text into pieces of at most max_chars at paragraph, then sentence, then hard boundaries."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    current = ""
    units: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        if len(paragraph) <= max_chars:
            units.append(paragraph)
            continue
        for sentence in split_sentences(paragraph):
            units.extend(sentence[i : i + max_chars] for i in range(0, len(sentence), max_chars))
    joiner = "\n\n"
    for unit in units:
        if current and len(current) + len(joiner) + len(unit) > max_chars:
            pieces.append(current)
            current = unit
        else:
            current = f"{current}{joiner}{unit}" if current else unit
    if current:
        pieces.append(current)
    return pieces


def split_chapters(doc: Document, config: ChapterConfig) -> list[Chapter]:
    """The chapters of a (cleaned) document, in order, each at most `config.max_chars` long."""
    text = doc.text
    headings = _markdown_headings(text) or _numbered_headings(text)
    level = _split_level(headings)
    sections = _sections(text, headings, level) if level is not None else [("", text)]

    merged: list[tuple[str, str]] = []
    for title, body in sections:
        # A preamble or stub section too short to ask questions about joins the next section.
        if merged and len(merged[-1][1]) < config.min_chars:
            prev_title, prev_body = merged.pop()
            title, body = title or prev_title, f"{prev_body}\n\n{body}"
        merged.append((title, body))
    if len(merged) > 1 and len(merged[-1][1]) < config.min_chars:
        title, body = merged.pop()
        merged[-1] = (merged[-1][0], f"{merged[-1][1]}\n\n{body}")

    chapters: list[Chapter] = []
    for title, body in merged:
        parts = _bounded(body, config.max_chars)
        base = title or doc.title or "Untitled"
        for k, part in enumerate(parts):
            name = base if len(parts) == 1 else f"{base} (part {k + 1}/{len(parts)})"
            chapters.append(Chapter(doc.doc_id, len(chapters), name, part))
    return chapters
