"""Reading the sectors (step 1) and the method and data series (step 2) out of what a model returns.

Lists are read with deepmoney.llm.parse.parse_list (JSON, fenced JSON, trailing commas, numbered or bulleted
lists); on top of it a single line separated by commas or 顿号 (、) is read as a list, and step 2 also accepts a JSON
object or a "Method: / Data:" ("方法：/ 数据：") layout. Neither parser raises on bad output: it returns empty values.
"""

from __future__ import annotations

import ast
import json
import re

from deepmoney.llm.parse import FENCE, REFUSAL, TRAILING_COMMA, parse_list

_SEPARATORS = frozenset(",，、;；")
_NOT_A_NAME = re.compile(r"[{}\[\]<>=]")
_AND = re.compile(r"\s+(?:and|or)\s+", re.IGNORECASE)
_LABEL = re.compile(r"^[^:：]{1,30}[:：]\s*")
_EXPLANATION = re.compile(r"\s*(?:[:：]|\s[-–—]\s|——)\s*")
_WRAPPERS = "\"'“”‘’「」『』《》`*_ \t"
_TRAILING = ".。;；,，!！?？ \t"
_METHOD_KEYS = ("method", "methodology", "approach", "方法", "量化方法")
_DATA_KEYS = ("data", "series", "data_series", "required_data", "数据", "数据序列", "所需数据")
_LABEL_TAIL = r"\s*\**\s*[:：]\s*\**[ \t]*"
_METHOD_LABEL = re.compile(
    rf"^[ \t#>*-]*(?:quantitative\s+)?(?:method(?:ology)?|approach|(?:量化)?方法){_LABEL_TAIL}", re.I | re.M
)
_DATA_LABEL = re.compile(
    rf"^[ \t#>*-]*(?:(?:required|needed)\s+)?(?:data(?:\s+series)?|series|(?:所需)?数据(?:序列)?){_LABEL_TAIL}",
    re.I | re.M,
)
MAX_SECTOR_CHARS = 80


def _clean(item: str, cut_explanation: bool) -> str:
    item = item.strip().strip(_WRAPPERS).rstrip(_TRAILING).strip(_WRAPPERS)
    if cut_explanation:  # "Banks: margins compress" -> "Banks"
        head = _EXPLANATION.split(item, maxsplit=1)[0].strip(_WRAPPERS).rstrip(_TRAILING)
        item = head or item
    return item


def dedupe_names(items: list[str], cut_explanation: bool, max_chars: int | None = None) -> list[str]:
    """`items` cleaned (quotes, trailing punctuation, explanations cut), without empty or repeated names."""
    out: dict[str, str] = {}
    for raw in items:
        item = _clean(str(raw), cut_explanation)
        if not any(c.isalpha() for c in item) or (max_chars and len(item) > max_chars):
            continue
        out.setdefault(item.casefold(), item)
    return list(out.values())


def _split(line: str) -> list[str]:
    """Pieces of a line separated by commas, 顿号 or semicolons (not inside parentheses), and 'and'/'or'."""
    pieces, current, depth = [], [], 0
    for char in line:
        if char in "(（[":
            depth += 1
        elif char in ")）]":
            depth -= 1
        if char in _SEPARATORS and depth <= 0:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return [p.strip() for piece in pieces for p in _AND.split(piece) if p.strip()]


def _short(piece: str, max_words: int, max_chars: int) -> bool:
    return len(piece) <= max_chars and len(piece.split()) <= max_words and not _NOT_A_NAME.search(piece)


def _separated(text: str, max_words: int = 4, max_chars: int = 40) -> list[str]:
    """A list written on one line ("Banks, insurers and property" or "银行、保险、地产"), or []."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        if REFUSAL.search(line):
            return []
        unlabelled = _split(_LABEL.sub("", line, count=1))  # "Sectors: banks, insurers" -> the part after the label
        pieces = unlabelled if len(unlabelled) >= 2 else _split(line)
        if not all(_short(p, max_words, max_chars) for p in pieces):
            continue
        if len(pieces) >= 2 or (len(lines) == 1 and not line.endswith(("?", "？", "!", "！"))):
            return pieces
    return []


def parse_sectors(text: str) -> list[str]:
    """The sectors or targets named in a step-1 answer, in order and without duplicates; [] when there are none."""
    if not isinstance(text, str) or not text.strip():
        return []
    items = parse_list(text)
    if items is None or (len(items) == 1 and items[0].endswith(("?", "？"))):
        items = _separated(text)
    return dedupe_names(items, cut_explanation=True, max_chars=MAX_SECTOR_CHARS)


def find_object(text: str) -> dict | None:
    """The JSON (or Python-literal) object between the first '{' and the last '}' of `text`, or None."""
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end <= start:
        return None
    candidate = text[start : end + 1]
    for attempt in (candidate, TRAILING_COMMA.sub(r"\1", candidate)):
        try:
            value = json.loads(attempt)
        except ValueError:
            try:
                value = ast.literal_eval(attempt)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
        if isinstance(value, dict):
            return value
    return None


def _pick(obj: dict, keys: tuple[str, ...], kind: type) -> object:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    for key in keys:
        if key in lowered:
            return lowered[key]
    return next((v for v in obj.values() if isinstance(v, kind)), None)


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return " ".join(_as_text(v) for v in value).strip()
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


def _names(value: object) -> list[str]:
    if isinstance(value, str):
        return parse_list(value) or _split(value)
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        if isinstance(item, dict):  # [{"name": "CPI", "unit": "%"}]
            item = _pick(item, ("name", "series", "名称", "序列"), str)
        if isinstance(item, (str, int, float)) and str(item).strip():
            out.append(str(item).strip())
    return out


def _labelled(text: str) -> tuple[str, list[str]] | None:
    method_label, data_label = _METHOD_LABEL.search(text), _DATA_LABEL.search(text)
    if data_label is None:
        return None
    if method_label is None:  # prose, then "Data:"
        method, section = text[: data_label.start()], text[data_label.end() :]
    elif method_label.start() > data_label.start():  # "Data:" first, then "Method:"
        method, section = text[method_label.end() :], text[data_label.end() : method_label.start()]
    else:
        method, section = text[method_label.end() : data_label.start()], text[data_label.end() :]
    names = parse_list(section)
    if names is None:
        first = next((line for line in section.splitlines() if line.strip()), "")
        names = _split(first)
    return method.strip(), dedupe_names(names, cut_explanation=False)


def parse_method(text: str) -> tuple[str, list[str]]:
    """The method and the data series named in a step-2 answer; ("", []) or ("text", []) when there is no list."""
    if not isinstance(text, str) or not text.strip():
        return "", []
    for block in [*FENCE.findall(text), text]:
        obj = find_object(block)
        if obj is not None:
            method = _as_text(_pick(obj, _METHOD_KEYS, str))
            data = dedupe_names(_names(_pick(obj, _DATA_KEYS, list)), cut_explanation=False)
            if method or data:
                return method, data
    labelled = _labelled(text)
    if labelled is not None:
        return labelled
    return text.strip(), dedupe_names(parse_list(text) or [], cut_explanation=False)
