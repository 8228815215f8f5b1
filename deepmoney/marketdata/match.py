"""Map the names a news analysis asks for ("标普500", "WTI crude oil price (USD/bbl)") to dictionary entries.

Two passes: an exact match of the normalised text against a series' id, names and aliases; then a
fuzzy match by the Dice coefficient of character n-grams. Normalising applies NFKC (full-width
letters and digits become ASCII), folds case and drops parenthesised parts, which are units or
asides. For the fuzzy pass, an ASCII word becomes the trigrams of `#word#` (so one typo costs only
a few of them) and a run of CJK characters becomes its character bigrams, since Chinese has no
spaces between words.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

from deepmoney.marketdata.dictionary import SeriesInfo

DEFAULT_THRESHOLD = 0.6  # "unemploymnet rate" scores 0.75 against "unemployment rate"; unrelated names < 0.4
_PARENTHESISED = re.compile(r"\([^()]*\)|\[[^\[\]]*\]")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]+|[a-z0-9&]+")


def normalise(text: str) -> str:
    """`text` as the matcher compares it: NFKC, case-folded, parentheses dropped, words joined by one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    previous = None
    while previous != text:  # nested parentheses, innermost first
        previous, text = text, _PARENTHESISED.sub(" ", text)
    return " ".join(_TOKEN.findall(text))


def ngrams(text: str) -> Counter[str]:
    """The character n-grams of normalised `text`: trigrams of each ASCII word, bigrams of each CJK run."""
    grams: Counter[str] = Counter()
    for token in normalise(text).split():
        if re.fullmatch(f"[{_CJK}]+", token):
            grams.update([token] if len(token) == 1 else (token[i : i + 2] for i in range(len(token) - 1)))
        else:
            padded = f"#{token}#"
            grams.update(padded[i : i + 3] for i in range(len(padded) - 2))
    return grams


def dice(a: Counter[str], b: Counter[str]) -> float:
    """The Dice coefficient 2|A∩B| / (|A| + |B|) of two n-gram multisets (0 when both are empty)."""
    total = sum(a.values()) + sum(b.values())
    return 2 * sum((a & b).values()) / total if total else 0.0


def _names(info: SeriesInfo) -> Iterable[str]:
    return (info.id, info.name_en, info.name_zh, *info.aliases)


class NameIndex:
    """A catalogue's names, normalised and split into n-grams once, for matching many requests against it."""

    def __init__(self, catalogue: list[SeriesInfo]) -> None:
        self.exact: dict[str, SeriesInfo] = {}
        for info in catalogue:
            for name in _names(info):
                self.exact.setdefault(normalise(name), info)
        self.grams = [(info, [ngrams(name) for name in _names(info)]) for info in catalogue]

    def match(self, requested: list[str], threshold: float = DEFAULT_THRESHOLD) -> dict[str, SeriesInfo]:
        """`match_names` against this index's catalogue."""
        found: dict[str, SeriesInfo] = {}
        for name in requested:
            key = normalise(name)
            if not key:
                continue
            if key in self.exact:
                found[name] = self.exact[key]
                continue
            wanted = ngrams(name)
            best, best_score = None, 0.0
            for info, options in self.grams:
                score = max(dice(wanted, option) for option in options)
                if score > best_score:
                    best, best_score = info, score
            if best is not None and best_score >= threshold:
                found[name] = best
        return found


def match_names(
    requested: list[str], catalogue: list[SeriesInfo], threshold: float = DEFAULT_THRESHOLD
) -> dict[str, SeriesInfo]:
    """Each requested name -> the catalogue entry it names best; names that match nothing well enough are left out.

    An exact match (id, English or Chinese name, or alias, after `normalise`) wins; otherwise the entry
    with the highest n-gram Dice similarity to any of its names, if that reaches `threshold`. Ties go
    to the entry listed first in `catalogue`.
    """
    return NameIndex(catalogue).match(requested, threshold)
