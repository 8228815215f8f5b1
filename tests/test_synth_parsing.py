"""Parsing model answers and filtering question-answer pairs: table-driven."""

from __future__ import annotations

import pytest

from deepmoney.llm.parse import parse_list
from deepmoney.synth.filters import answer_problem, grounding, question_problem, rouge_l
from deepmoney.synth.prompts import render, templates_digest

Q1, Q2 = "What drove copper prices higher?", "How large was the inventory draw?"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f'["{Q1}", "{Q2}"]', [Q1, Q2]),
        (f'Sure! Here are the questions:\n```json\n["{Q1}", "{Q2}",]\n```\nHope this helps.', [Q1, Q2]),
        (f'{{"questions": ["{Q1}", "{Q2}"]}}', [Q1, Q2]),
        (f'[{{"question": "{Q1}"}}, {{"question": "{Q2}"}}]', [Q1, Q2]),
        (f"1. {Q1}\n2) {Q2}\n", [Q1, Q2]),
        (f"Questions:\n- {Q1}\n* {Q2}", [Q1, Q2]),
        (f"['{Q1}', '{Q2}']", [Q1, Q2]),
        ("1、铜价为何上涨？\n2、库存下降了多少？", ["铜价为何上涨？", "库存下降了多少？"]),
        ("一、铜价为何上涨？\n二、库存下降了多少？", ["铜价为何上涨？", "库存下降了多少？"]),
        (Q1, [Q1]),
        ("I cannot help with that.", None),
        ("", None),
        ("[]", None),
    ],
)
def test_parse_list(text: str, expected: list[str] | None) -> None:
    assert parse_list(text) == expected


def test_rouge_l() -> None:
    assert rouge_l("what drove copper prices", "what drove copper prices") == 1.0
    assert rouge_l("a b c d", "e f g h") == 0.0
    assert rouge_l("铜价为何上涨", "铜价为什么上涨") == pytest.approx(2 * (5 / 6) * (5 / 7) / (5 / 6 + 5 / 7))


CHAPTER = "Copper rose 4.1% in March as Cerro Alto strikes cut supply; exchange inventories fell to 85,000 tonnes."


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("Copper rose 4.1% in March because strikes at Cerro Alto cut supply.", None),
        ("", "empty answer"),
        ("I'm sorry, the excerpt does not contain that information.", "refusal"),
        ("Short.", "length"),
        ("铜价在三月上涨了百分之四点一，原因是罢工导致供应减少。", "language"),
        ("The Federal Reserve raised rates to fight inflation across the global economy last year.", "not grounded"),
    ],
)
def test_answer_problems(answer: str, reason: str | None) -> None:
    problem = answer_problem(answer, CHAPTER, "en", min_grounding=0.5)
    assert (problem is None) if reason is None else (reason in problem)


def test_question_problems() -> None:
    assert question_problem(Q1, [], "en", 0.7) is None
    assert "near-duplicate" in question_problem("What drove the copper prices higher?", [Q1], "en", 0.7)
    assert "length" in question_problem("Why?", [], "en", 0.7)
    assert "language" in question_problem("铜价为什么上涨？", [], "en", 0.7)


def test_grounding_counts_chinese_characters() -> None:
    assert grounding("铜价上涨", "本月铜价上涨百分之四") == 1.0


def test_prompt_templates_render_in_both_languages() -> None:
    en = render("questioner", "en", title="T", publisher=None, date="2026-01-01", n=3, chapter="Text.")
    zh = render("questioner", "zh", title="标题", publisher="机构", date=None, n=3, chapter="正文。")
    assert "3 distinct questions" in en and "Publisher: unknown" in en
    assert "3个不同的问题" in zh and "日期：unknown" in zh
    assert len(templates_digest()) == 16
