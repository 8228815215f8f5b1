"""Cleaning: control characters, whitespace, page furniture, footnote debris, CJK punctuation."""

from __future__ import annotations

import re
from collections import Counter

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u200c\u200d\u2060\ufeff\ufffe]")
# Runs of 2+ blanks, or one unusual blank: a lone ASCII space is left alone (matching it costs time).
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]{2,}|[\t\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_BLANK_LINES = re.compile(r"\n{3,}")
_SPACE_BEFORE_PUNCT = re.compile(r" +(?=[,.;:!?%)](?:\s|$))")

# FOMC minutes (and many central-bank PDFs rendered to text) end with footnotes such as
# "3. Attended Tuesday's session only. Return to text"; the links' labels survive as debris.
_FOOTNOTE_WITH_BACKLINK = re.compile(
    r"(?:(?<=\s)|^)\d{1,3}\.\s(?:(?!Return to text).){0,1500}?\s?Return to text", re.DOTALL
)
_BACKLINK = re.compile(r"\s*(?:Return to text|Back to text|↩)\s*")

_PAGE_NUMBER = re.compile(
    r"^\s*(?:(?:page|p\.)\s*\d+(?:\s*(?:of|/)\s*\d+)?|[-–—]?\s*\d{1,4}\s*[-–—]?|第\s*\d+\s*页(?:\s*共\s*\d+\s*页)?|\d+\s*/\s*\d+)\s*$",
    re.IGNORECASE,
)

_FULLWIDTH_ALNUM = {c: c - 0xFEE0 for c in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B)]}
_CJK_CHAR = r"[\u3400-\u4dbf\u4e00-\u9fff]"
_ANY_WIDE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uff10-\uff5a﹐﹑﹔﹕﹖﹗｡､]")
_ASCII_TO_CJK_PUNCT = {",": "，", ";": "；", ":": "：", "?": "？", "!": "！", "(": "（", ")": "）"}
# Between a Chinese character and a Chinese character or digit: "增长:5%" -> "增长：5%".
_ASCII_PUNCT_IN_CJK = re.compile(rf"(?<={_CJK_CHAR})\s*([,;:?!])\s*(?={_CJK_CHAR}|\d)")
_NEEDS_WIDTH_FIX = re.compile("[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a﹐﹑﹔﹕﹖﹗｡､]")
_VARIANT_PUNCT = str.maketrans(
    {"﹐": "，", "﹑": "、", "﹔": "；", "﹕": "：", "﹖": "？", "﹗": "！", "｡": "。", "､": "、"}
)


def strip_page_furniture(pages: list[str], min_pages: int = 3) -> list[str]:
    """Remove running headers/footers (lines repeated at the top or bottom of most pages) and page numbers."""
    split = [page.split("\n") for page in pages]
    repeated: set[str] = set()
    if len(pages) >= min_pages:
        edges: Counter[str] = Counter()
        for lines in split:
            candidates = {re.sub(r"\d+", "#", line.strip()) for line in lines[:2] + lines[-2:] if line.strip()}
            edges.update(candidates)
        repeated = {line for line, count in edges.items() if count >= max(2, len(pages) // 2)}
    cleaned = []
    for lines in split:
        kept = []
        for i, line in enumerate(lines):
            at_edge = i < 2 or i >= len(lines) - 2
            if at_edge and (_PAGE_NUMBER.match(line) or re.sub(r"\d+", "#", line.strip()) in repeated):
                continue
            kept.append(line)
        cleaned.append("\n".join(kept))
    return cleaned


def remove_footnote_debris(text: str) -> str:
    """Drop footnotes that carry a "Return to text" back-link, and any stray back-link labels."""
    if "Return to text" not in text and "Back to text" not in text and "↩" not in text:
        return text
    text = _FOOTNOTE_WITH_BACKLINK.sub(" ", text)
    return _BACKLINK.sub(" ", text)


def normalize_cjk_punctuation(text: str) -> str:
    """Full-width letters/digits to ASCII; ASCII punctuation between Chinese characters to full width."""
    if not _ANY_WIDE.search(text):  # one scan settles it for most English text
        return text
    if _NEEDS_WIDTH_FIX.search(text):  # str.translate is slow; only pay for it when needed
        text = text.translate(_FULLWIDTH_ALNUM).translate(_VARIANT_PUNCT)
    return _ASCII_PUNCT_IN_CJK.sub(lambda m: _ASCII_TO_CJK_PUNCT[m.group(1)], text)


def clean_text(text: str) -> str:
    """The full cleaning pass applied to every document before dedup and chapter splitting."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = remove_footnote_debris(text)
    text = normalize_cjk_punctuation(text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub("", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return "\n".join(line.strip() if not line.startswith("    ") else line for line in text.split("\n")).strip()
