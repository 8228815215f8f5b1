"""Quality filters for synthesized question-answer pairs; each returns a reason or None."""

from __future__ import annotations

import re

from deepmoney.data.text import detect_language
from deepmoney.llm.parse import REFUSAL

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9.%\-]*|[\u4e00-\u9fff]")
_STOP = frozenset(
    "a an the and or of to in on for by with at from as is are was were be been has have had it its this that "
    "these those which who what how why when where will would can could may might should than then there their "
    "they we our you your not no but if so such into over about after before between during per also".split()
)


def tokens(text: str) -> list[str]:
    """Lower-cased words for Latin text, single characters for Chinese (which has no spaces)."""
    return [t.lower() for t in _WORD.findall(text)]


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 of two short texts (longest common subsequence of tokens)."""
    x, y = tokens(a), tokens(b)
    if not x or not y:
        return 0.0
    previous = [0] * (len(y) + 1)
    for xi in x:
        current = [0]
        for j, yj in enumerate(y, 1):
            current.append(previous[j - 1] + 1 if xi == yj else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(x), lcs / len(y)
    return 2 * precision * recall / (precision + recall)


def grounding(answer: str, chapter: str) -> float:
    """Share of the answer's content words (or characters, for Chinese) that occur in the chapter."""
    content = [t for t in tokens(answer) if t not in _STOP]
    if not content:
        return 0.0
    vocabulary = set(tokens(chapter))
    return sum(t in vocabulary for t in content) / len(content)


def question_problem(question: str, earlier: list[str], language: str | None, max_similarity: float) -> str | None:
    """Why a question is not kept, or None."""
    if not 8 <= len(question) <= 500:
        return f"question length {len(question)} outside 8..500 characters"
    if language and detect_language(question) != language:
        return f"question language {detect_language(question)} differs from the chapter's {language}"
    for other in earlier:
        similarity = rouge_l(question, other)
        if similarity > max_similarity:
            return f"near-duplicate question (ROUGE-L {similarity:.2f} > {max_similarity:g}) of: {other[:80]}"
    return None


def answer_problem(answer: str, chapter: str, language: str | None, min_grounding: float) -> str | None:
    """Why an answer is not kept, or None."""
    if not answer.strip():
        return "empty answer"
    if REFUSAL.search(answer):
        return "refusal or 'not in the excerpt'"
    if not 20 <= len(answer) <= 4000:
        return f"answer length {len(answer)} outside 20..4000 characters"
    if language and detect_language(answer) != language:
        return f"answer language {detect_language(answer)} differs from the chapter's {language}"
    score = grounding(answer, chapter)
    if score < min_grounding:
        return f"not grounded in the chapter (lexical overlap {score:.2f} < {min_grounding:g})"
    return None
