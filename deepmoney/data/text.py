"""Small text utilities shared by the data stages: decoding, scripts, sentences, dates."""

from __future__ import annotations

import re
from datetime import date

from deepmoney.errors import InputRejected

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff]")
_LETTER = re.compile(r"[^\W\d_]+")


def cjk_ratio(text: str, sample: int = 5_000) -> float:
    """Share of CJK characters among the letters of (a sample of) `text`."""
    head = text[:sample]
    cjk = len(_CJK.findall(head))
    if not cjk:  # the common case for English text, and the cheap one
        return 0.0
    letters = sum(map(len, _LETTER.findall(head)))
    return cjk / letters if letters else 0.0


def detect_language(text: str) -> str:
    """'zh' for mostly-CJK text, else 'en' (the corpus languages deepmoney targets)."""
    return "zh" if cjk_ratio(text) > 0.3 else "en"


def decode_text(data: bytes, source: str) -> str:
    """Decode a text file: UTF-8 (with or without BOM), UTF-16 with BOM, or GB18030/GBK.

    Raises InputRejected for binary content and for bytes that are none of these.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise InputRejected(source, "invalid UTF-16 text; convert it to UTF-8") from None
    if b"\x00" in data[:8192]:
        raise InputRejected(source, "binary content in a text file (NUL bytes); check the file type")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        utf8_error = exc
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        text = None
    # GB18030 maps most byte soup to *something*; accept it only when it reads as Chinese.
    if text is not None:
        non_ascii = [c for c in text[:20_000] if ord(c) > 127]
        if (
            non_ascii
            and sum(bool(_CJK.match(c)) or "\u3000" <= c <= "\u303f" or "\uff00" <= c <= "\uffef" for c in non_ascii)
            / len(non_ascii)
            > 0.9
        ):
            return text
    raise InputRejected(
        source,
        f"undecodable bytes at offset {utf8_error.start} (not UTF-8 or GB18030 text); convert it to UTF-8",
    )


_SENTENCE_END = re.compile(r"(?<=[。！？；!?])|(?<=[.!?])\s+(?=[\"“(（A-Z0-9\u4e00-\u9fff])|\n+")


def split_sentences(text: str) -> list[str]:
    """Sentences of English or Chinese text (linear time; good enough for summaries and chunking)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        [
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ]
    )
}
_DATE_PATTERNS = [
    re.compile(r"(?P<y>(?:19|20)\d{2})[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})"),
    re.compile(r"(?P<y>(?:19|20)\d{2})\s*年\s*(?P<m>\d{1,2})\s*月\s*(?P<d>\d{1,2})\s*日"),
    re.compile(
        r"(?P<mn>January|February|March|April|May|June|July|August|September|October|November|December)"
        r"\s+(?P<d>\d{1,2})(?:\s*[-–]\s*\d{1,2})?,\s*(?P<y>(?:19|20)\d{2})",
        re.IGNORECASE,
    ),
    re.compile(r"(?<!\d)(?P<y>(?:19|20)\d{2})(?P<m>[01]\d)(?P<d>[0-3]\d)(?!\d)"),
]


def find_date(text: str) -> str | None:
    """The first calendar date in `text` as YYYY-MM-DD, in any of the common report formats."""
    best: tuple[int, str] | None = None
    for pattern in _DATE_PATTERNS:
        for match in pattern.finditer(text):
            parts = match.groupdict()
            month = _MONTHS[parts["mn"].lower()] if parts.get("mn") else int(parts["m"])
            try:
                iso = date(int(parts["y"]), month, int(parts["d"])).isoformat()
            except ValueError:
                continue
            if best is None or match.start() < best[0]:
                best = (match.start(), iso)
            break
    return best[1] if best else None
