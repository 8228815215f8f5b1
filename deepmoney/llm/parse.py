"""Reading what real models return: lists, and refusals.

Models wrap JSON in code fences, leave trailing commas, answer with a numbered or bulleted list
instead, or add prose before and after. `parse_list` accepts all of these and returns None only
when there is no list to be found (the caller then asks once more with a repair prompt).
`REFUSAL` spots an answer that declines instead of answering (English and Chinese).
"""

from __future__ import annotations

import ast
import json
import re

FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
TRAILING_COMMA = re.compile(r",\s*([\]}])")
REFUSAL = re.compile(
    r"\b(?:I(?:'m| am) sorry|I cannot|I can't|as an AI|I do not have|does not (?:contain|provide|mention)|"
    r"not (?:mentioned|provided|stated) in the (?:excerpt|text))\b|无法回答|抱歉|未提及|没有提供|节选中没有|没有提到",
    re.IGNORECASE,
)
_ITEM = re.compile(r"^\s*(?:\d{1,3}\s*[.)、:：]|[（(]\d{1,3}[)）]|[-*•·]|[一二三四五六七八九十]+、)\s*(.+?)\s*$")


def _strings(value: object) -> list[str] | None:
    if isinstance(value, dict):  # {"questions": [...]} and the like: the first list inside
        value = next((v for v in value.values() if isinstance(v, list)), None)
    if not isinstance(value, list):
        return None
    out = []
    for item in value:
        if isinstance(item, dict):  # [{"question": "..."}]
            item = next((v for v in item.values() if isinstance(v, str)), None)
        if isinstance(item, (str, int, float)) and str(item).strip():
            out.append(str(item).strip())
    return out or None


def _json_like(text: str) -> list[str] | None:
    for start_char, end_char in (("[", "]"), ("{", "}")):
        start, end = text.find(start_char), text.rfind(end_char)
        if start == -1 or end <= start:
            continue
        candidate = text[start : end + 1]
        for attempt in (candidate, TRAILING_COMMA.sub(r"\1", candidate)):
            try:
                return _strings(json.loads(attempt))
            except ValueError:
                pass
            try:  # Python-literal lists with single quotes
                return _strings(ast.literal_eval(attempt))
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                pass
    return None


def parse_list(text: str) -> list[str] | None:
    """A list of strings from a model's answer, or None when there is none to be found."""
    if not text or not text.strip():
        return None
    for block in [*FENCE.findall(text), text]:
        found = _json_like(block)
        if found:
            return found
    items = [m.group(1).strip().strip('"“”') for line in text.splitlines() if (m := _ITEM.match(line))]
    items = [i for i in items if i]
    if items:
        return items
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) == 1 and lines[0].endswith(("?", "？")):
        return lines
    return None
