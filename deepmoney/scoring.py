"""Scoring a generated answer against a reference answer: ROUGE-L, token F1 and numeric exact match (English, Chinese).

Text is normalised as in SQuAD, but CJK-aware: NFKC (full-width letters, digits and punctuation become ASCII),
lowercase, punctuation dropped, the English articles a/an/the dropped, thousands separators removed (1,234 -> 1234),
decimals kept whole (3.5), and every CJK character (Han, kana, hangul) a token of its own.

Numbers are read with one regular expression and a Chinese-numeral parser, and become plain floats:
- percent (%, ％, percent, per cent, pct, 百分之, 个百分点, percentage points) -> 3.5% = 0.035; 千分之 and ‰ per mille;
  成 tenths (三成 = 0.3); basis points (bp, bps, basis points, 个基点) -> 25bp = 0.0025;
- scales: thousand/k, million/mn/m, billion/bn, trillion/tn, and 十百千万亿 (1.2万 = 12000, 2万亿 = 2e12);
  k and m count only when attached ("3m", not "3 m", which is more often metres);
- Chinese numerals, formal ones too (壹贰叁...拾佰仟): 两千三百万, 一百零五, 三点五, 一万二 (12000), 二〇二五 (2025);
- currency symbols and codes are ignored; a minus sign must not follow a digit or letter (2026-03-15 -> 2026, 3, 15);
  digits glued to a letter are not numbers (M2, Q3); a lone 一 is not a number in free text (一些, 统一, 之一).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from decimal import Decimal

_CJK = "\u3007\u3041-\u3096\u30a1-\u30fa\u30fc\u1100-\u11ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff"
_CJK += "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002ffff"
_TOKEN = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+(?:\.\d+)*")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ARTICLES = frozenset({"a", "an", "the"})

_DIGIT_CHARS = ["零〇", "一壹", "二两俩贰", "三叁", "四肆", "五伍", "六陆", "七柒", "八捌", "九玖"]
_CN_DIGITS = {c: value for value, chars in enumerate(_DIGIT_CHARS) for c in chars}
_CN_UNITS = {c: exp for chars, exp in [("十拾", 1), ("百佰", 2), ("千仟", 3), ("万萬", 4), ("亿億", 8)] for c in chars}
_FRACTIONS = {"百分之": -2, "千分之": -3, "万分之": -4}
_SUFFIXES = {  # power of ten each suffix applies
    **dict.fromkeys(["%", "percent", "per cent", "pct", "percentage point", "percentage points"], -2),
    **dict.fromkeys(["百分点", "个百分点"], -2),
    **dict.fromkeys(["‰"], -3),
    **dict.fromkeys(["bp", "bps", "basis point", "basis points", "基点", "个基点"], -4),
    **dict.fromkeys(["成"], -1),
    **dict.fromkeys(["k", "thousand"], 3),
    **dict.fromkeys(["m", "mn", "million"], 6),
    **dict.fromkeys(["bn", "billion"], 9),
    **dict.fromkeys(["tn", "trillion"], 12),
}
_D, _U = "".join(_CN_DIGITS), "".join(_CN_UNITS)
# A number starts after neither a digit, a letter nor a dot, except a glued currency code: RMB5亿, USD3m.
_START = r"(?:(?<![0-9a-z.])|(?<=usd|rmb|cny|eur|gbp|hkd|jpy))"
_NUMBER = re.compile(
    rf"""(?P<sign>{_START}[-+\u2212]|负)? (?:[$¥€£]\s*)? (?P<frac>百分之|千分之|万分之)?
    (?: (?P<num>{_START}\d+(?:,\d{{3}}(?!\d))*(?:\.\d+)?) (?P<units>(?:[{_U}](?!分))*)
      | (?P<cnint>[{_D}十拾][{_D}{_U}]*) (?:点(?P<cndec>[{_D}]+)(?P<cnunits>[{_U}]*))? )
    (?P<suffix>\s*(?:percent(?:age\s+points?)?|per\s+cent|pct|bps?|basis\s+points?|thousand|[mb]illion|trillion|[mbt]n)
                (?![a-z])
      | [mk](?![a-z]) | \s*[%‰] | 个?百分点 | 个?基点 | 成)?""",
    re.VERBOSE,
)
_CURRENCY = re.compile(r"usd|rmb|cny|eur|gbp|hkd|jpy|人民币|美元|港元|欧元|日元|英镑|元")


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def tokens(text: str) -> list[str]:
    """Lowercased word tokens: Latin/digit runs (decimals whole, 1,234 -> 1234), one token per CJK character.

    Punctuation and whitespace are dropped, and so are the English articles a, an and the.
    """
    text = _THOUSANDS.sub("", _normalise(text))
    return [t for t in _TOKEN.findall(text) if t not in _ARTICLES]


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    if n_pred == 0 or n_ref == 0:
        return float(n_pred == n_ref)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 of the bags of tokens; 1.0 when both are empty, 0.0 when only one is."""
    pred, ref = tokens(prediction), tokens(reference)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    return _f1(overlap, len(pred), len(ref))


def _lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a  # one row as long as the shorter sequence: O(min(n, m)) memory
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) over tokens(): F1 of LCS precision and recall; 1.0 when both are empty."""
    pred, ref = tokens(prediction), tokens(reference)
    return _f1(_lcs_length(pred, ref), len(pred), len(ref))


def _cn_int(text: str) -> int:
    if all(c in _CN_DIGITS for c in text):  # digit by digit: 二〇二五 -> 2025
        return int("".join(str(_CN_DIGITS[c]) for c in text))
    done = wan = small = digit = last = 0  # whole 亿 groups, the 万 part, the part below 万, pending digit, last unit
    for c in text:
        if c in _CN_DIGITS:
            digit = _CN_DIGITS[c]
            last = last if digit else 0  # 一百零五: after 零 the 5 is units, not tens
            continue
        exp = _CN_UNITS[c]
        if exp < 4:
            small += (digit or 1) * 10**exp  # 十二: a bare 十 is ten
        elif exp == 4:
            wan, small = (small + digit or 1) * 10**4, 0
        else:
            done, wan, small = (done + wan + small + digit or 1) * 10**8, 0, 0
        digit, last = 0, exp
    if last >= 2:  # 一万二 = 12000, 三百五 = 350: a trailing digit is one unit below the last
        digit *= 10 ** (last - 1)
    return done + wan + small + digit


def _value(match: re.Match[str]) -> float:
    if match["num"] is not None:
        value, units = Decimal(match["num"].replace(",", "")), match["units"]
    else:
        decimals = "".join(str(_CN_DIGITS[c]) for c in match["cndec"] or "")
        value, units = Decimal(f"{_cn_int(match['cnint'])}.{decimals or 0}"), match["cnunits"] or ""
    exponent = sum(_CN_UNITS[c] for c in units) + _FRACTIONS.get(match["frac"] or "", 0)
    if match["suffix"]:
        exponent += _SUFFIXES[" ".join(match["suffix"].split())]
    value = value.scaleb(exponent)
    return float(-value if match["sign"] in ("-", "\u2212", "负") else value)


def parse_number(text: str) -> float | None:
    """The value of one number expression (currency and punctuation around it allowed), or None."""
    text = _normalise(text)
    matches = list(_NUMBER.finditer(text))
    if len(matches) != 1:
        return None
    rest = _CURRENCY.sub("", text[: matches[0].start()] + " " + text[matches[0].end() :])
    return None if re.search(r"\w", rest) else _value(matches[0])


def extract_numbers(text: str) -> list[float]:
    """Every number expression in free text, in order, read as parse_number() reads one."""
    return [_value(m) for m in _NUMBER.finditer(_normalise(text)) if m[0] != "一"]


def numbers_match(prediction: str, reference: str, rel_tol: float = 1e-3) -> bool | None:
    """Whether every number of the reference is among the prediction's numbers; None when the reference has none."""
    wanted = extract_numbers(reference)
    if not wanted:
        return None
    found = extract_numbers(prediction)
    return all(any(math.isclose(w, f, rel_tol=rel_tol, abs_tol=1e-9) for f in found) for w in wanted)


def score_answer(prediction: str, reference: str) -> dict[str, float | None]:
    """ROUGE-L, token F1 and numeric exact match (1.0, 0.0, or None without a number in the reference)."""
    match = numbers_match(prediction, reference)
    return {
        "rouge_l": rouge_l(prediction, reference),
        "token_f1": token_f1(prediction, reference),
        "numeric_em": None if match is None else float(match),
    }


def mean_scores(rows: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Mean of each score over the rows where it is not None (None if none), and numeric_count: rows with a number."""
    keys = dict.fromkeys(["rouge_l", "token_f1", "numeric_em"])
    for row in rows:
        keys.update(dict.fromkeys(row))
    means: dict[str, float | None] = {}
    for key in keys:
        values = [v for row in rows if (v := row.get(key)) is not None]
        means[key] = sum(values) / len(values) if values else None
    means["numeric_count"] = sum(row.get("numeric_em") is not None for row in rows)
    return means
